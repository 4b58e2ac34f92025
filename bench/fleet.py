"""``python -m bench.fleet``: how fast a block made on one instance holds on the others.

Starts a redis-server (no persistence, a free loopback port) and ``--instances`` xps-server
subprocesses (``--xps``, run in ``--cwd``) that name it in their `fleet` config, each with a
control socket and a state file. Every instance but the first streams its events over its
control socket. Then ``--blocks`` times, one after the other: the wall-clock time is taken,
a global `block` of a new address is sent to the first instance's control socket, and the
bench waits for the `fleet_change` event of that block from every other instance. An
event's `ts` is the moment that instance applied the block (its loop, same host, same
clock), so the propagation time is `ts` minus the time taken before sending: the command's
way in, the write to Redis, the publication, the other instance's thread and loop.

Prints the median, p99 and worst over all (block, instance) pairs, and whether p99 is
within the 100 ms budget. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
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
EVENT_TIMEOUT = 10.0
BUDGET_MS = 100.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Watcher(threading.Thread):
    """Collects, per blocked address, when one instance applied another's block."""

    def __init__(self, control: str) -> None:
        super().__init__(daemon=True)
        self.link = ControlLink(control, EVENT_TIMEOUT)
        self.link.sock.settimeout(None)
        reply = self.link.command({"cmd": "subscribe"})
        if not reply.get("ok"):
            raise SystemExit(f"cannot subscribe: {reply}")
        self.applied: dict[str, float] = {}
        self.changed = threading.Condition()

    def run(self) -> None:
        try:
            while True:
                event = self.link.read().get("event") or {}
                change = event.get("change") or {}
                if event.get("kind") == "fleet_change" and change.get("op") == "block":
                    with self.changed:
                        self.applied[change["cidr"]] = event["ts"]
                        self.changed.notify_all()
        except (ConnectionError, OSError):
            return

    def wait_for(self, cidr: str) -> float:
        with self.changed:
            if not self.changed.wait_for(lambda: cidr in self.applied, EVENT_TIMEOUT):
                raise SystemExit(f"{cidr} never reached an instance")
            return self.applied[cidr]


def _start_redis(work: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("redis-server did not start") from None
            time.sleep(0.05)


def _start_instance(args: argparse.Namespace, work: Path, redis_url: str, name: str) -> tuple:
    folder = work / name
    (folder / "www").mkdir(parents=True)
    (folder / "www" / "hello.txt").write_text("hello world\n")
    control = str(folder / "ctl.sock")
    config = {
        "servers": [
            {
                "listeners": [{"host": "127.0.0.1", "port": _free_port()}],
                "routes": [{"req_path": "/", "type": "file_serve", "dir_path": "www"}],
            }
        ],
        "control_socket": control,
        "state_file": str(folder / "state.json"),
        "fleet": {"redis": redis_url, "name": name, "prefix": "bench"},
    }
    (folder / "config.json").write_text(json.dumps(config))
    command = [*shlex.split(args.xps), "--log-level", "warning", str(folder / "config.json")]
    proc = start_until_listening(command, args.cwd, control, START_TIMEOUT)
    return proc, control


def _wait_for_fleet(control: str, size: int) -> None:
    link = ControlLink(control, EVENT_TIMEOUT)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            status = link.command({"cmd": "fleet"}).get("result") or {}
            if status.get("connected") and status.get("alive") == size:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"the fleet did not form: {status}")
            time.sleep(0.1)
    finally:
        link.close()


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument(
        "--xps", default=f"{sys.executable} -m xps_server", help="the xps-server command"
    )
    parser.add_argument("--cwd", default=None, help="folder to run it in")
    parser.add_argument("--instances", type=int, default=3, help="instances in the fleet")
    parser.add_argument("--blocks", type=int, default=100, help="blocks made, one at a time")
    args = parser.parse_args(argv)
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="xps-bench-fleet-") as tmp:
        work = Path(tmp)
        redis_proc, redis_url = _start_redis(work)
        try:
            controls = []
            for index in range(args.instances):
                proc, control = _start_instance(args, work, redis_url, f"edge-{index + 1}")
                procs.append(proc)
                controls.append(control)
            _wait_for_fleet(controls[0], args.instances)
            watchers = [Watcher(control) for control in controls[1:]]
            for watcher in watchers:
                watcher.start()
            origin = ControlLink(controls[0], EVENT_TIMEOUT)
            samples = []
            for index in range(args.blocks):
                cidr = f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}/32"
                sent = time.time()
                reply = origin.command({"cmd": "block", "args": {"cidr": cidr}})
                if not reply.get("ok"):
                    raise SystemExit(f"block failed: {reply}")
                for watcher in watchers:
                    samples.append((watcher.wait_for(cidr) - sent) * 1000)
            origin.close()
        finally:
            for proc in procs:
                _stop(proc)
            _stop(redis_proc)
    p99 = _percentile(samples, 0.99)
    figures = {
        "instances": args.instances,
        "blocks": args.blocks,
        "samples": len(samples),
        "median_ms": round(statistics.median(samples), 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(max(samples), 2),
        "budget_p99_ms": BUDGET_MS,
        "within_budget": p99 <= BUDGET_MS,
    }
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
