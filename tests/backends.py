"""Scripted upstream servers for the proxy tests: real loopback sockets, a thread per connection.

A `Backend` reads HTTP/1.1 requests (Content-Length or chunked bodies) and hands each to its
handler, which writes whatever raw bytes the test needs: a normal answer, no length, chunks,
half a body and a crash, or nothing at all. It counts accepted connections and records the
requests it saw, so tests can check pooling and balancing from the outside.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Req:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunked: bool = False
    conn_index: int = 0  # which accepted connection (1-based) carried it

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None


class Reader:
    """Buffered request reading over a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def line(self) -> bytes | None:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            if not self._fill():
                return None

    def exactly(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not self._fill():
                return None
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def head(self) -> Req | None:
        first = self.line()
        if not first:
            return None
        method, target, version = first.decode("latin-1").split(" ")
        headers = []
        while True:
            line = self.line()
            if line is None:
                return None
            if not line:
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name, value.strip()))
        return Req(method, target, version, headers)

    def body(self, req: Req) -> bytes | None:
        te = req.header("transfer-encoding")
        if te is not None and te.lower() == "chunked":
            req.chunked = True
            parts = []
            while True:
                size_line = self.line()
                if size_line is None:
                    return None
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while self.line():  # trailers up to the empty line
                        pass
                    return b"".join(parts)
                parts.append(self.exactly(size))
                self.line()
        length = req.header("content-length")
        return self.exactly(int(length)) if length else b""


def response(
    status: int = 200,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    reason: str = "OK",
    length: bool = True,
) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class BackendConn:
    """One accepted connection, as the handler sees it."""

    def __init__(self, backend: Backend, sock: socket.socket, index: int) -> None:
        self.backend = backend
        self.sock = sock
        self.index = index
        self.reader = Reader(sock)
        self.closed = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self, reset: bool = False) -> None:
        """Close; `reset` sends an RST instead of a FIN."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            if reset:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # shutdown wakes a thread blocked in recv on it, which close alone would not.
            self.sock.shutdown(socket.SHUT_RD if reset else socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


Handler = Callable[[Req, BackendConn], None]


def echo(req: Req, conn: BackendConn) -> None:
    """200 with a JSON description of the request."""
    body = json.dumps(
        {
            "backend": conn.backend.name,
            "method": req.method,
            "target": req.target,
            "headers": req.headers,
            "body_len": len(req.body),
            "chunked": req.chunked,
            "conn": req.conn_index,
        }
    ).encode()
    conn.send(response(200, body, [("Content-Type", "application/json")]))


@dataclass
class Backend:
    """An upstream on 127.0.0.1; `handler(req, conn)` answers each request."""

    handler: Handler = echo
    name: str = "backend"
    read_body: bool = True  # False: the handler reads the body itself (or never)
    port: int = 0
    accepts: int = 0
    requests: list[Req] = field(default_factory=list)
    conns: list[BackendConn] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.listen()

    def listen(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self.sock = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self, lsock: socket.socket) -> None:
        while True:
            try:
                sock, _ = lsock.accept()
            except OSError:
                return
            sock.settimeout(10)
            with self.lock:
                self.accepts += 1
                conn = BackendConn(self, sock, self.accepts)
                self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: BackendConn) -> None:
        try:
            while not conn.closed:
                req = conn.reader.head()
                if req is None:
                    break
                req.conn_index = conn.index
                if self.read_body:
                    body = conn.reader.body(req)
                    if body is None:
                        break
                    req.body = body
                with self.lock:
                    self.requests.append(req)
                self.handler(req, conn)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        """Refuse new connections and drop the open ones."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        with contextlib.suppress(OSError):
            self.sock.close()
        with self.lock:
            conns = list(self.conns)
        for conn in conns:
            conn.close()
