"""Test helpers: an in-process server on a loopback port, raw-socket clients, h11 as the reader.

The server runs its real loop on a background thread; tests talk to it only through sockets,
and look at its state through `RunningServer.call`, which runs a function on the loop thread.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h11

from xps_server.config import parse_config
from xps_server.server.lifecycle import Server


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on `port` (a connect succeeds)."""
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


def dual_stack() -> bool:
    """Whether an IPv6 socket bound to "::" takes IPv4 clients too (as ::ffff:a.b.c.d)."""
    try:
        with open("/proc/sys/net/ipv6/bindv6only") as file:
            return file.read().strip() == "0"
    except OSError:
        return False


class RunningServer:
    """A `Server` with its loop on a background thread, listening on `port`."""

    def __init__(self, config_data: dict, base_dir: Path) -> None:
        self.config = parse_config(config_data, str(base_dir))
        self.server = Server(self.config)
        self.core = self.server.start()
        first = self.config.servers[0].listeners[0]
        self.host = "127.0.0.1" if first.host in ("0.0.0.0", "localhost") else first.host
        self.port = first.port
        self.server.run(background=True)
        self.thread = self.server.thread

    def call(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Run `fn` on the loop thread and return its result."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # handed back to the test thread
                box["error"] = exc
            done.set()

        self.core.loop.call_soon_threadsafe(run)
        assert done.wait(timeout), "loop thread did not answer"
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def stop(self) -> None:
        """Stop the loop at once (no grace) and release everything."""
        self.server.close()


def server_config(port: int, routes: list[dict], **top: Any) -> dict:
    data = {"servers": [{"listeners": [{"host": "127.0.0.1", "port": port}], "routes": routes}]}
    data.update(top)
    return data


def files_route(site: Path, **extra: Any) -> dict:
    """A route serving the files under `site` at "/"."""
    return {"req_path": "/", "type": "file_serve", "dir_path": str(site), **extra}


def write_config(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def connect(port: int, host: str = "127.0.0.1", source: str | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.settimeout(5)
    if source is not None:
        sock.bind((source, 0))
    sock.connect((host, port))
    return sock


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, reason: str) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.reason = reason

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers} {self.body[:60]!r}>"


class Client:
    """A keep-alive HTTP/1.1 client on one socket; responses are parsed by h11 (the oracle)."""

    def __init__(self, port: int, host: str = "127.0.0.1", source: str | None = None) -> None:
        self.sock = connect(port, host, source)
        self.h11 = h11.Connection(h11.CLIENT)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, target: str, headers: dict[str, str] | None = None) -> Response:
        lines = [f"{method} {target} HTTP/1.1", "Host: localhost"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.send_raw(("\r\n".join(lines) + "\r\n\r\n").encode())
        return self.read_response(head=method == "HEAD")

    def read_response(self, head: bool = False) -> Response:
        conn = self.h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        if conn.our_state is h11.IDLE:
            # h11 must know what we asked to frame the answer (HEAD has no body).
            conn.send(
                h11.Request(method="HEAD" if head else "GET", target="/", headers=[("Host", "x")])
            )
            conn.send(h11.EndOfMessage())
        status = None
        headers: dict[str, str] = {}
        reason = ""
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = self.sock.recv(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                reason = event.reason.decode()
                headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert status is not None
                return Response(status, headers, bytes(body), reason)
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("closed before a response")

    def closed_by_peer(self) -> bool:
        """True when the server closed the connection (EOF with nothing further)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def read_until_close(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes (a reset counts as a close)."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def raw_exchange(port: int, data: bytes, host: str = "127.0.0.1") -> bytes:
    """Send `data`, read until the server closes; for error paths that end the connection."""
    with connect(port, host) as sock:
        sock.sendall(data)
        return read_until_close(sock)


def slow_client(server: RunningServer, buffer: int = 32768) -> socket.socket:
    """A connection whose socket buffers (ours and the server's) are small, so what we do not
    read stays in the server's pipe instead of hiding in the kernel."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
    sock.settimeout(5)
    sock.connect((server.host, server.port))
    core = server.core
    wait_until(lambda: server.call(lambda: len(core.sessions)) == 1)
    server.call(
        lambda: next(iter(core.sessions.values())).conn.sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, buffer
        )
    )
    return sock


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])
