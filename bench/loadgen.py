"""A small HTTP/1.1 load client, used when wrk is not installed.

N keep-alive connections on raw non-blocking sockets driven by one selector; each connection
sends a GET, reads the whole response (Content-Length, chunked, or until close), then sends
the next one: no pipelining. Run it as its own process so it never shares a GIL with the
harness or a server: ``python -m bench.loadgen --port P --path /1k.txt``; it prints one JSON
object: requests, bytes, seconds, latency_p99_ms, bad_status, socket_errors.
"""

import argparse
import errno
import json
import selectors
import socket
import sys
import time
from dataclasses import asdict, dataclass

_RECV_SIZE = 256 * 1024
_MAX_HEAD = 64 * 1024
_RETRY_PAUSE = 0.05  # after a failed connect, so a dead server does not make a busy loop


class ProtocolError(Exception):
    """The response cannot be parsed; the connection is dropped and counted as an error."""


class ResponseReader:
    """Incremental parser for one response at a time; ``feed`` says when one is complete."""

    def __init__(self) -> None:
        self.status = 0
        self.keep_alive = True
        self._head = bytearray()
        self._buf = bytearray()
        self._in_head = True
        self._remaining = 0  # body bytes (length mode) or bytes left in this chunk + CRLF
        self._chunked = False
        self._to_close = False
        self._need_size = True
        self._in_trailer = False

    def feed(self, data: bytes) -> bool:
        """Consume data; True when the response is complete (the reader then resets)."""
        if self._in_head:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > _MAX_HEAD:
                    raise ProtocolError("response head too large")
                return False
            self._parse_head(bytes(self._head[:end]))
            data = bytes(self._head[end + 4 :])
            self._head.clear()
            self._in_head = False
        if self._to_close:
            return False
        done = self._feed_chunked(data) if self._chunked else self._feed_length(data)
        if done:
            self._in_head = True
        return done

    def feed_eof(self) -> bool:
        """The peer closed: True if that completes a read-until-close response."""
        if not self._in_head and self._to_close:
            self._in_head = True
            return True
        return False

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {lines[0][:80]!r}")
        self.status = int(parts[1])
        self.keep_alive = parts[0] != b"HTTP/1.0"
        length: int | None = None
        self._chunked = False
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise ProtocolError(f"bad header line {line[:80]!r}")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                self._chunked = value.endswith(b"chunked")
            elif name == b"connection":
                self.keep_alive = value == b"keep-alive" or (self.keep_alive and value != b"close")
        bodiless = self.status in (204, 304) or 100 <= self.status < 200
        self._to_close = not self._chunked and length is None and not bodiless
        self._remaining = 0 if bodiless else (length or 0)
        self._need_size = True
        self._in_trailer = False
        self._buf.clear()
        if self._to_close:
            self.keep_alive = False

    def _feed_length(self, data: bytes) -> bool:
        if len(data) > self._remaining:
            raise ProtocolError("bytes after the body (the client does not pipeline)")
        self._remaining -= len(data)
        return self._remaining == 0

    def _feed_chunked(self, data: bytes) -> bool:
        buf = self._buf
        buf += data
        while True:
            if self._in_trailer:
                if buf.startswith(b"\r\n"):
                    return True
                return buf.find(b"\r\n\r\n") >= 0
            if self._need_size:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    return False
                size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
                del buf[: eol + 2]
                if size == 0:
                    self._in_trailer = True
                    continue
                self._remaining = size + 2
                self._need_size = False
            take = min(len(buf), self._remaining)
            del buf[:take]
            self._remaining -= take
            if self._remaining:
                return False
            self._need_size = True


@dataclass
class Totals:
    """What a run counted; bytes are everything read, headers included (as wrk counts)."""

    requests: int = 0
    bytes: int = 0
    seconds: float = 0.0
    latency_p99_ms: float | None = None  # None: no response completed
    bad_status: int = 0
    socket_errors: int = 0


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.connecting = True
        self.reader = ResponseReader()
        self.sent_at = 0.0  # monotonic time the current request was sent


class LoadClient:
    """Keeps ``connections`` connections busy with GETs until the deadline."""

    def __init__(
        self, host: str, port: int, path: str, headers: list[str], connections: int
    ) -> None:
        self.addr = (host, port)
        extra = "".join(f"{h}\r\n" for h in headers)
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()
        self.connections = connections
        self.totals = Totals()
        self._sel = selectors.DefaultSelector()
        self._buf = bytearray(_RECV_SIZE)
        self._retry_at = 0.0  # no new connection before this monotonic time
        self._latencies: list[float] = []  # seconds, one per completed response

    def run(self, duration: float) -> Totals:
        """Generate load for duration seconds and return the totals."""
        start = time.monotonic()
        deadline = start + duration
        while (now := time.monotonic()) < deadline:
            if now >= self._retry_at:
                for _ in range(self.connections - len(self._sel.get_map())):
                    if not self._open():
                        break
            for key, _events in self._sel.select(timeout=0.1):
                conn = key.data
                if conn.connecting:
                    self._on_connected(conn)
                else:
                    self._on_readable(conn)
        self.totals.seconds = time.monotonic() - start
        if self._latencies:
            self._latencies.sort()
            rank = min(len(self._latencies) - 1, int(len(self._latencies) * 0.99))
            self.totals.latency_p99_ms = self._latencies[rank] * 1000.0
        for key in list(self._sel.get_map().values()):
            self._close(key.data)
        self._sel.close()
        return self.totals

    def _open(self) -> bool:
        """Start a non-blocking connect; False (and an error counted) if it failed at once."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex(self.addr)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self._connect_failed()
            return False
        self._sel.register(sock, selectors.EVENT_WRITE, _Conn(sock))
        return True

    def _on_connected(self, conn: _Conn) -> None:
        if conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._close(conn)
            self._connect_failed()
            return
        conn.connecting = False
        self._sel.modify(conn.sock, selectors.EVENT_READ, conn)
        self._send(conn)

    def _send(self, conn: _Conn) -> None:
        # A request is far smaller than an empty socket buffer: one send() takes it whole.
        conn.sent_at = time.monotonic()
        try:
            if conn.sock.send(self.request) != len(self.request):
                raise OSError("short send")
        except OSError:
            self._fail(conn)

    def _on_readable(self, conn: _Conn) -> None:
        try:
            n = conn.sock.recv_into(self._buf)
        except BlockingIOError:
            return
        except OSError:
            self._fail(conn)
            return
        if n == 0:
            if conn.reader.feed_eof():
                self._count(conn)
                self._close(conn)
            else:
                self._fail(conn)
            return
        self.totals.bytes += n
        try:
            done = conn.reader.feed(bytes(memoryview(self._buf)[:n]))
        except (ProtocolError, ValueError):
            self._fail(conn)
            return
        if not done:
            return
        self._count(conn)
        if conn.reader.keep_alive:
            self._send(conn)
        else:
            self._close(conn)

    def _count(self, conn: _Conn) -> None:
        self.totals.requests += 1
        self._latencies.append(time.monotonic() - conn.sent_at)
        if not 200 <= conn.reader.status < 300:
            self.totals.bad_status += 1

    def _connect_failed(self) -> None:
        self.totals.socket_errors += 1
        self._retry_at = time.monotonic() + _RETRY_PAUSE

    def _fail(self, conn: _Conn) -> None:
        self.totals.socket_errors += 1
        self._close(conn)

    def _close(self, conn: _Conn) -> None:
        self._sel.unregister(conn.sock)
        conn.sock.close()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the load, print the totals as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args(argv)
    client = LoadClient(args.host, args.port, args.path, args.header, args.connections)
    totals = client.run(args.duration)
    json.dump(asdict(totals), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
