"""A recording upstream for the smuggling tests: the exact bytes the proxy sent, framed by h11.

`RawBackend` listens on 127.0.0.1 with a thread per accepted connection. It keeps every byte
each connection received, and frames requests with h11, a strict parser independent of ours,
so what the tests take as "the requests the backend saw" never comes from the code under test.
Each complete request is recorded with its exact head bytes and its body, and answered with a
small 200 (Content-Length framed; the body names the request), or with whatever `answer`
returns. Bytes that frame no complete request stay in `leftover`; a framing error is kept in
`error` and answered with a 400.

With `keep_alive=False` every answer carries `Connection: close` and is followed by a lingering
close: the backend stops sending, reads on until the proxy closes its end, and only then marks
the connection closed. Each exchange then has its own connection, and once the proxy has
closed them all (`wait_closed`) their records are final: nothing is left to arrive.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import h11

from tests.helpers import wait_until


@dataclass
class BackendRequest:
    """One complete request as h11 framed it, with the bytes it was framed from."""

    conn: int  # 1-based index of the accepted connection
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]  # names as sent (h11 still drops repeats of Content-Length)
    head: bytes  # the request line and fields, up to and including the empty line
    body: bytes
    chunked: bool

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


# What an answer is made of: status, header fields, body.
Answer = tuple[int, list[tuple[str, str]], bytes]


def named_answer(request: BackendRequest) -> Answer:
    """The default answer: 200 whose body names the request, so a client can tell whose it got."""
    return 200, [("Content-Type", "text/plain")], f"{request.method} {request.target}".encode()


@dataclass
class RecordedConn:
    index: int
    raw: bytearray = field(default_factory=bytearray)
    requests: list[BackendRequest] = field(default_factory=list)
    error: str | None = None  # what h11 refused, if it refused something
    consumed: int = 0  # end of the last complete request in `raw`
    closed: bool = False  # the proxy closed its end (or the connection broke)

    @property
    def leftover(self) -> bytes:
        """Bytes after the last complete request: a partial or unframable message."""
        return bytes(self.raw[self.consumed :])


class RawBackend:
    """A recording upstream on 127.0.0.1; see the module docstring."""

    def __init__(
        self,
        answer: Callable[[BackendRequest], Answer] = named_answer,
        keep_alive: bool = True,
        linger: float = 10.0,
    ) -> None:
        self.answer = answer
        self.keep_alive = keep_alive
        self.linger = linger  # a socket timeout, so a connection nobody closes ends its thread
        self.lock = threading.Lock()
        self.conns: list[RecordedConn] = []
        self.socks: list[socket.socket] = []
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.sock = sock
        self.port = sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    # --- what the tests read ----------------------------------------------------------------
    def snapshot(self) -> list[RecordedConn]:
        """Copies of the connection records, consistent with each other."""
        with self.lock:
            return [
                RecordedConn(
                    c.index, bytearray(c.raw), list(c.requests), c.error, c.consumed, c.closed
                )
                for c in self.conns
            ]

    @property
    def requests(self) -> list[BackendRequest]:
        """Every complete request so far, by connection then order on it."""
        return [r for c in self.snapshot() for r in c.requests]

    def wait_for(self, predicate: Callable[[list[RecordedConn]], object], timeout: float = 5.0):
        """Poll until `predicate(snapshot)` holds, and return the snapshot it held on."""
        box: list[list[RecordedConn]] = []

        def check() -> bool:
            conns = self.snapshot()
            if predicate(conns):
                box.append(conns)
                return True
            return False

        wait_until(check, timeout)
        return box[0]

    def wait_closed(self, accepted: int, timeout: float = 5.0) -> list[RecordedConn]:
        """Wait until `accepted` connections came and every one is closed: the bytes settled."""
        return self.wait_for(lambda cs: len(cs) >= accepted and all(c.closed for c in cs), timeout)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        with contextlib.suppress(OSError):
            self.sock.close()
        with self.lock:
            socks = list(self.socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv

    # --- serving ----------------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except OSError:
                return
            sock.settimeout(self.linger)
            with self.lock:
                record = RecordedConn(len(self.conns) + 1)
                self.conns.append(record)
                self.socks.append(sock)
            threading.Thread(target=self._serve, args=(sock, record), daemon=True).start()

    def _serve(self, sock: socket.socket, record: RecordedConn) -> None:
        exchange = _Exchange(self, sock, record)
        try:
            while True:
                data = sock.recv(65536)
                with self.lock:
                    record.raw += data
                if not data:
                    break
                if exchange.answering:
                    exchange.feed(data)
        except OSError:
            pass
        finally:
            with self.lock:
                record.closed = True
            with contextlib.suppress(OSError):
                sock.close()


class _Exchange:
    """h11's side of one connection: frames what arrives, answers, knows where messages end."""

    def __init__(self, backend: RawBackend, sock: socket.socket, record: RecordedConn) -> None:
        self.backend = backend
        self.sock = sock
        self.record = record
        self.h11 = h11.Connection(h11.SERVER)
        self.answering = True  # False once our side is closed: the rest is only recorded
        self.fed = 0  # bytes given to h11; less what it has not used, the offset in `raw`
        self.start = 0  # where the current message began in `raw`
        self.head_end = 0
        self.head: h11.Request | None = None
        self.body = bytearray()

    def feed(self, data: bytes) -> None:
        self.h11.receive_data(data)
        self.fed += len(data)
        try:
            self.answering = self._events()
        except h11.RemoteProtocolError as exc:
            with self.backend.lock:
                self.record.error = str(exc)
            self.sock.sendall(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            self.answering = False
        if not self.answering:
            # A lingering close: no more answers, but read on until the proxy closes.
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)

    def _events(self) -> bool:
        """Take every event h11 has and answer each complete request; False: stop answering."""
        conn = self.h11
        while True:
            event = conn.next_event()
            at = self.fed - len(conn.trailing_data[0])  # offset in `raw` just after `event`
            if event is h11.NEED_DATA:
                return True
            if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                return False
            if isinstance(event, h11.Request):
                self.head = event
                self.head_end = at
                self.body = bytearray()
            elif isinstance(event, h11.Data):
                self.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                request = self._complete(at)
                self.sock.sendall(self._respond(request))
                if conn.our_state is h11.MUST_CLOSE:
                    return False
                conn.start_next_cycle()

    def _complete(self, end: int) -> BackendRequest:
        """Record the request that ends at offset `end`."""
        head = self.head
        raw_items = [
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers.raw_items()
        ]
        record = self.record
        with self.backend.lock:
            head_bytes = bytes(record.raw[self.start : self.head_end])
        request = BackendRequest(
            conn=record.index,
            method=head.method.decode("latin-1"),
            target=head.target.decode("latin-1"),
            version=head.http_version.decode("latin-1"),
            headers=raw_items,
            head=head_bytes,
            body=bytes(self.body),
            chunked=any(k.lower() == "transfer-encoding" for k, _ in raw_items),
        )
        with self.backend.lock:
            record.requests.append(request)
            record.consumed = end
        self.start = end
        return request

    def _respond(self, request: BackendRequest) -> bytes:
        status, headers, body = self.backend.answer(request)
        headers = list(headers)
        if not any(k.lower() == "content-length" for k, _ in headers):
            headers.append(("Content-Length", str(len(body))))
        if not self.backend.keep_alive:
            headers.append(("Connection", "close"))
        conn = self.h11
        data = conn.send(h11.Response(status_code=status, headers=headers, reason=b"OK"))
        if request.method != "HEAD":
            data += conn.send(h11.Data(data=body))
        return data + conn.send(h11.EndOfMessage())
