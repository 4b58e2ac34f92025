"""``python -m bench.console``: the 1 KiB keep-alive figure headless vs with the console on.

Budget: with the console attached and events flowing, xps keeps at least 80% of its
headless requests/s. Three runs on the same files and config (with a control socket):
headless `xps-server`; `xps-server` with `xps-console --attach` subscribed to its events;
and `xps-console CONFIG`, the embedded mode `make run` uses (server thread and UI in one
process). The consoles run in a pseudo-terminal, rendering for real, drained by a thread.
Every process runs this checkout's code (`python -m xps_server`, `python -m xps_console` from
its root), whatever an installed `xps-server` would import.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.fixtures import write_fixtures
from bench.load import LoadSpec, find_wrk, run_load
from bench.servers import Server, ServerError, free_port

BUDGET = 0.8
_ROOT = Path(__file__).resolve().parent.parent
_TERM_SIZE = (50, 160)  # rows, columns
_READY_TIMEOUT = 15.0


def _module(name: str) -> list[str]:
    """Run `name` (xps_server, xps_console) from this checkout: cwd is its root."""
    return [sys.executable, "-m", name]


@contextmanager
def _in_pty(argv: list[str], log: Path) -> Iterator[subprocess.Popen]:
    """Run a TUI in a pseudo-terminal; a thread keeps reading it so it never blocks."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *_TERM_SIZE, 0, 0))
    env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(_TERM_SIZE[1]))
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True, cwd=_ROOT
    )
    os.close(slave)
    screen_bytes = [0]

    def drain() -> None:
        with log.open("wb") as sink:
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    return
                if not data:
                    return
                screen_bytes[0] += len(data)
                sink.write(data[-4096:])

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.write(master, b"q")  # the console's own graceful quit
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        os.close(master)
        reader.join(2)


def _wait_port(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"exited with code {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise ServerError(f"did not listen on {port} within {_READY_TIMEOUT:g} s")


def _wait_path(path: Path) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    while not path.exists():
        if time.monotonic() > deadline:
            raise ServerError(f"{path} did not appear")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__)
    parser.add_argument("--duration", type=int, default=10, metavar="SECONDS")
    parser.add_argument("--connections", type=int, default=50, metavar="N")
    args = parser.parse_args(argv)
    wrk = find_wrk()
    with tempfile.TemporaryDirectory(prefix="xps-bench-console-") as tmp:
        work = Path(tmp)
        docroot = work / "www"
        docroot.mkdir()
        write_fixtures(docroot)
        port = free_port()
        sock = work / "xps.sock"
        config = work / "config.json"
        config.write_text(
            json.dumps(
                {
                    "access_log": None,
                    "control_socket": str(sock),
                    "servers": [
                        {
                            "listeners": [{"host": "127.0.0.1", "port": port}],
                            "routes": [
                                {"req_path": "/", "type": "file_serve", "dir_path": str(docroot)}
                            ],
                        }
                    ],
                }
            )
        )
        spec = LoadSpec(port, "/1k.txt", (), args.connections, args.duration, None)
        headless_argv = [*_module("xps_server"), str(config), "--log-level", "warning"]

        def measure() -> float:
            run_load(LoadSpec(port, "/1k.txt", (), args.connections, 1, None), wrk)  # warm-up
            return run_load(spec, wrk).requests_per_sec

        results: dict[str, float] = {}
        print("[console] headless xps-server", flush=True)
        with Server("xps", headless_argv, port, work / "headless.log", cwd=_ROOT):
            results["headless"] = measure()
        print("[console] xps-server + xps-console --attach", flush=True)
        with Server("xps", headless_argv, port, work / "attached-server.log", cwd=_ROOT):
            _wait_path(sock)
            attach = [*_module("xps_console"), "--attach", str(sock)]
            with _in_pty(attach, work / "attached-console.log") as console:
                time.sleep(2)  # the console connects, subscribes and draws its first frame
                if console.poll() is not None:
                    raise ServerError(f"xps-console --attach exited with {console.returncode}")
                results["attached"] = measure()
        print("[console] xps-console CONFIG (embedded)", flush=True)
        embedded = [*_module("xps_console"), str(config)]
        with _in_pty(embedded, work / "embedded.log") as console:
            _wait_port(port, console)
            results["embedded"] = measure()

    base = results["headless"]
    print()
    print(f"{'mode':<10} {'req/s':>10} {'ratio':>6}  budget   result")
    failed = False
    for mode, rps in results.items():
        ratio = rps / base if base else 0.0
        verdict = "" if mode == "headless" else ("PASS" if ratio >= BUDGET else "FAIL")
        failed |= verdict == "FAIL"
        budget = "" if mode == "headless" else f">= {BUDGET:g}"
        print(f"{mode:<10} {rps:>10,.0f} {ratio:>6.2f}  {budget:<8} {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
