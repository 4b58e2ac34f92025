"""xps-server's control socket for the benchmarks: starting a server until it listens there,
and a peer speaking JSON lines to it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time


class ControlLink:
    """A control-socket peer reading JSON lines (replies and, once subscribed, events)."""

    def __init__(self, path: str, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buffer = b""

    def read(self) -> dict:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("control socket closed")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    def command(self, message: dict) -> dict:
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        return self.read()

    def close(self) -> None:
        self.sock.close()


def start_until_listening(
    command: list[str], cwd: str | None, control: str, timeout: float
) -> subprocess.Popen[bytes]:
    """Start an xps-server and wait until its control socket exists; exit if it does not
    come up within `timeout` seconds."""
    proc = subprocess.Popen(command, cwd=cwd, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not os.path.exists(control):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"xps-server did not start: {command}")
        time.sleep(0.05)
    return proc
