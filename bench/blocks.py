"""``python -m bench.blocks``: what `block` commands cost the loop, and the traffic beside them.

Starts xps-server as a subprocess (``--xps``: the command, split like a shell would, run in
``--cwd``) with a control socket and a state file that already holds ``--existing`` global
blocks, then measures, from outside, over the real control socket and real HTTP:

- sequential: one `block` at a time (send, wait for the reply), ``--sequential`` of them; the
  mean and worst round trip per command at that many existing blocks. With a state file the
  round trip includes the fsync the reply waits for; a second server without a state file
  (its blocks sent first as one batch) shows what a command costs the loop itself;
- batch: ``--batch`` block commands written in one go (pipelined) on one control connection,
  while an HTTP client on a keep-alive connection requests a small file back to back; the
  time from the first byte sent to the last reply, and the worst and median latency of the
  HTTP requests made while the batch was running;
- whether every reply said ``"persisted": true``, and how many blocks the state file holds
  once the server has stopped.

Figures go to stdout; nothing is asserted (budgets and comparisons are the reader's). Run it
against two builds to compare them, e.g. ``--xps /work/main/.venv/bin/xps-server`` and
``--xps "python -m xps_server.cli" --cwd <checkout>``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.control import ControlLink, start_until_listening

START_TIMEOUT = 30.0
REPLY_TIMEOUT = 600.0  # the old code needs over a minute for a 2,000-command batch


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _address(prefix: int, index: int) -> str:
    return f"{prefix}.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"


class HttpProbe(threading.Thread):
    """Requests one small file back to back on a keep-alive connection, timing each; a
    request that fails counts with the time it took to fail, on a new connection."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.samples: list[tuple[float, float, bool]] = []  # (sent at, latency, answered)
        self.stop = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        request = b"GET /hello.txt HTTP/1.1\r\nHost: bench\r\n\r\n"
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", self.port), REPLY_TIMEOUT) as sock:
                    while not self.stop.is_set():
                        sent = time.monotonic()
                        sock.sendall(request)
                        _read_response(sock)
                        self.samples.append((sent, time.monotonic() - sent, True))
            except OSError as exc:
                self.samples.append((sent, time.monotonic() - sent, False))
                self.errors.append(str(exc))


def _read_response(sock: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        body += chunk


def _start(
    args: argparse.Namespace, work: Path, with_state: bool
) -> tuple[subprocess.Popen, int, str, Path]:
    """A server whose state file holds `args.existing` blocks (or one with no state file)."""
    work.mkdir()
    (work / "www").mkdir()
    (work / "www" / "hello.txt").write_text("hello world\n")
    state = work / "state.json"
    port = _free_port()
    control = str(work / "ctl.sock")
    config: dict = {
        "servers": [
            {
                "listeners": [{"host": "127.0.0.1", "port": port}],
                "routes": [{"req_path": "/", "type": "file_serve", "dir_path": str(work / "www")}],
            }
        ],
        "control_socket": control,
    }
    if with_state:
        blocks = [
            {"cidr": f"{_address(10, i)}/32", "route": None, "expires_at": None}
            for i in range(args.existing)
        ]
        state.write_text(json.dumps({"version": 1, "blocks": blocks}))
        config["state_file"] = str(state)
    (work / "config.json").write_text(json.dumps(config))
    command = [*shlex.split(args.xps), "--log-level", "warning", str(work / "config.json")]
    proc = start_until_listening(command, args.cwd, control, START_TIMEOUT)
    return proc, port, control, state


def _sequential(link: ControlLink, count: int) -> dict:
    times = []
    persisted = set()
    for i in range(count):
        started = time.monotonic()
        reply = link.command({"cmd": "block", "args": {"cidr": _address(12, i)}})
        times.append(time.monotonic() - started)
        persisted.add(reply.get("result", {}).get("persisted"))
    return {
        "commands": count,
        "mean_ms": round(statistics.fmean(times) * 1000, 3),
        "max_ms": round(max(times) * 1000, 3),
        "persisted_values": sorted(persisted, key=str),
    }


def _lines(prefix: int, count: int) -> bytes:
    return b"".join(
        json.dumps({"id": i, "cmd": "block", "args": {"cidr": _address(prefix, i)}}).encode()
        + b"\n"
        for i in range(count)
    )


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _batch(link: ControlLink, port: int, count: int) -> dict:
    lines = _lines(11, count)
    probe = HttpProbe(port)
    probe.start()
    while not probe.samples:
        time.sleep(0.01)
    started = time.monotonic()
    sender = threading.Thread(target=link.sock.sendall, args=(lines,), daemon=True)
    sender.start()
    persisted = set()
    for _ in range(count):
        reply = link.read()
        persisted.add(reply.get("result", {}).get("persisted"))
    finished = time.monotonic()
    probe.stop.set()
    probe.join(REPLY_TIMEOUT)
    sender.join()
    # Requests sent while the batch ran, and the one in flight when it started.
    window = [s for s in probe.samples if s[0] + s[1] >= started and s[0] <= finished]
    during = [latency for _, latency, _ in window]
    return {
        "commands": count,
        "total_s": round(finished - started, 3),
        "per_command_ms": round((finished - started) / count * 1000, 3),
        "persisted_values": sorted(persisted, key=str),
        "http_requests_during": len(during),
        "http_failed_during": sum(not answered for *_, answered in window),
        "http_worst_ms": round(max(during) * 1000, 3) if during else None,
        "http_median_ms": round(statistics.median(during) * 1000, 3) if during else None,
        "http_errors": sorted(set(probe.errors)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.blocks", description=__doc__)
    parser.add_argument("--xps", default="xps-server", help="the xps-server command")
    parser.add_argument("--cwd", default=None, help="folder to run it in")
    parser.add_argument("--existing", type=int, default=2000, help="blocks in the state file")
    parser.add_argument("--sequential", type=int, default=100, help="one-at-a-time commands")
    parser.add_argument("--batch", type=int, default=2000, help="pipelined commands")
    args = parser.parse_args(argv)
    figures: dict = {"xps": args.xps, "cwd": args.cwd, "existing_blocks": args.existing}
    with tempfile.TemporaryDirectory(prefix="xps-bench-blocks-") as tmp:
        proc, _, control, _ = _start(args, Path(tmp) / "plain", with_state=False)
        try:
            link = ControlLink(control, REPLY_TIMEOUT)
            link.sock.sendall(_lines(10, args.existing))
            for _ in range(args.existing):
                link.read()
            figures["sequential_no_state_file"] = _sequential(link, args.sequential)
            link.close()
        finally:
            _stop(proc)
        proc, port, control, state = _start(args, Path(tmp) / "saved", with_state=True)
        try:
            link = ControlLink(control, REPLY_TIMEOUT)
            assert link.command({"cmd": "ping"})["result"] == "pong"
            figures["sequential"] = _sequential(link, args.sequential)
            figures["batch"] = _batch(link, port, args.batch)
            link.close()
        finally:
            _stop(proc)
        saved = json.loads(state.read_text())
        figures["state_file_blocks"] = len(saved.get("blocks", []))
        figures["expected_blocks"] = args.existing + args.sequential + args.batch
    json.dump(figures, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
