"""gzip on reverse_proxy routes: real upstreams on loopback, the server in-process."""

from __future__ import annotations

import base64
import fcntl
import gzip
import os
import socket
import struct
import termios
import threading
import zlib

import pytest

from tests.backends import Backend, BackendConn, Req, response
from tests.helpers import Client, connect, slow_client, wait_until
from xps_server.network import output as output_module
from xps_server.network.connection import RECV_SIZE
from xps_server.network.output import BodyStream
from xps_server.routes.proxy import ProxyStream

TEXT = b"".join(b"%05d all work and no play makes jack a dull boy\n" % i for i in range(2000))
GZ = {"Accept-Encoding": "gzip, deflate"}


def _pieces(data: bytes) -> list[bytes]:
    """`data` cut in pieces of very different sizes, single bytes included."""
    sizes = (1, 7, 300, 4096, 1, 20000)
    out, i, n = [], 0, 0
    while i < len(data):
        out.append(data[i : i + sizes[n % len(sizes)]])
        i += sizes[n % len(sizes)]
        n += 1
    return out


def upstream(req: Req, conn: BackendConn) -> None:
    """One upstream, a target per case."""
    target = req.target
    text = [("Content-Type", "text/plain; charset=utf-8")]
    if req.method == "HEAD":  # the length a GET would get, and no body
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n")
        conn.send(b"Content-Length: %d\r\n\r\n" % len(TEXT))
    elif target == "/length":
        headers = [*text, ("ETag", '"v1"'), ("Accept-Ranges", "bytes"), ("Vary", "Cookie")]
        conn.send(response(200, TEXT, headers))
    elif target == "/weak":
        conn.send(response(200, TEXT, [("Content-Type", "application/json"), ("ETag", 'W/"w1"')]))
    elif target == "/chunked":
        conn.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for piece in _pieces(TEXT):
            conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.send(b"0\r\n\r\n")
    elif target == "/chunked-tiny":  # length unknown up front: compressed all the same
        conn.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        conn.send(b"2\r\nhi\r\n0\r\n\r\n")
    elif target == "/close":
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/css\r\nConnection: close\r\n\r\n")
        for piece in _pieces(TEXT):
            conn.send(piece)
        conn.close()
    elif target == "/tiny":
        conn.send(response(200, b"x" * 255, text))
    elif target == "/png":
        conn.send(response(200, b"\x89PNG" + b"\x00" * 5000, [("Content-Type", "image/png")]))
    elif target == "/encoded":
        body = gzip.compress(TEXT)
        conn.send(response(200, body, [*text, ("Content-Encoding", "gzip")]))
    elif target == "/no-transform":
        conn.send(response(200, TEXT, [*text, ("Cache-Control", "public, no-transform")]))
    elif target == "/304":
        conn.send(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n')
    elif target == "/404":
        conn.send(response(404, TEXT, text))
    else:
        conn.send(response(500, b"unknown target"))


@pytest.fixture
def backend():
    made = Backend(upstream)
    yield made
    made.stop()


@pytest.fixture
def proxy(start_server, backend):
    def start(gzip_enable: bool = True, **route):
        routes = [
            {
                "req_path": "/",
                "type": "reverse_proxy",
                "upstreams": [backend.addr],
                "gzip_enable": gzip_enable,
                **route,
            }
        ]
        return start_server(routes, timeouts={"upstream_read": 5})

    return start


def raw_get(port: int, target: str, headers: dict, version: str = "1.1") -> tuple[bytes, bytes]:
    """Head and raw body of one request; the connection closes after it."""
    lines = [f"GET {target} HTTP/{version}", "Host: x", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with connect(port) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        raw = bytearray()
        while chunk := sock.recv(1 << 20):
            raw += chunk
    head, _, body = bytes(raw).partition(b"\r\n\r\n")
    return head, body


def get(server, target: str, headers: dict | None = None):
    client = Client(server.port)
    try:
        return client.request("GET", target, headers)
    finally:
        client.close()


def complete_chunks(body: bytes) -> bytes:
    """The data of the chunks of `body` received whole so far."""
    out = bytearray()
    while True:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            return bytes(out)
        size = int(size_line, 16)
        if size == 0 or len(rest) < size + 2:
            return bytes(out)
        out += rest[:size]
        body = rest[size + 2 :]


def chunks_of(body: bytes) -> list[bytes]:
    """The chunks of a chunked body; asserts every one before the last has a size > 0."""
    out = []
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert body == b"\r\n"
            return out
        out.append(body[:size])
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]


# --- compressed -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "mime"),
    [("/length", "text/plain; charset=utf-8"), ("/chunked", "text/html"), ("/close", "text/css")],
)
def test_text_is_compressed_whatever_the_upstream_framing(proxy, target, mime):
    server = proxy()
    client = Client(server.port)
    for _ in range(2):  # and the framing stays in step on the kept-alive connection
        res = client.request("GET", target, GZ)
        assert res.status == 200
        assert res.headers["content-encoding"] == "gzip"
        assert res.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in res.headers
        assert res.headers["content-type"] == mime  # as the upstream sent it
        assert res.headers["connection"] == "keep-alive"
        assert gzip.decompress(res.body) == TEXT
        assert len(res.body) < len(TEXT) // 5
    client.close()
    assert server.call(lambda: server.core.stats.gzip_responses) == 2


def test_no_empty_chunk_before_the_end(proxy):
    """Tiny upstream pieces compress to nothing for a while: no 0-size chunk may go out."""
    server = proxy()
    head, body = raw_get(server.port, "/chunked", GZ)
    assert b"Transfer-Encoding: chunked" in head and b"Content-Encoding: gzip" in head
    assert gzip.decompress(b"".join(chunks_of(body))) == TEXT
    head, body = raw_get(server.port, "/chunked-tiny", GZ)
    assert b"Content-Encoding: gzip" in head
    assert gzip.decompress(b"".join(chunks_of(body))) == b"hi"


def test_compressed_fields_vary_etag_and_ranges(proxy):
    server = proxy()
    client = Client(server.port)
    res = client.request("GET", "/length", GZ)
    assert res.headers["vary"] == "Cookie, Accept-Encoding"  # appended to the upstream's
    assert res.headers["etag"] == '"v1-gzip"'  # a different representation
    assert "accept-ranges" not in res.headers  # ranges of the identity body would not apply
    res = client.request("GET", "/weak", GZ)
    assert res.headers["etag"] == 'W/"w1"'  # weak: semantically equivalent, kept
    assert res.headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(res.body) == TEXT
    client.close()


def test_http10_client_gets_a_close_delimited_gzip_body(proxy):
    server = proxy()
    for target in ("/length", "/chunked"):
        head, body = raw_get(server.port, target, GZ, version="1.0")
        assert b"Content-Encoding: gzip" in head
        assert b"chunked" not in head and b"Content-Length" not in head
        assert b"\r\nConnection: close" in head
        assert gzip.decompress(body) == TEXT


def test_what_was_fed_is_flushed_while_the_upstream_idles(start_server):
    """A slow upstream's first part reaches the client, decodable, before the rest exists."""
    release = threading.Event()
    first = TEXT[:3000]

    def handler(req: Req, conn: BackendConn) -> None:
        conn.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        conn.send(b"%x\r\n%s\r\n" % (len(first), first))
        release.wait(5)
        conn.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(TEXT) - 3000, TEXT[3000:]))

    backend = Backend(handler)
    try:
        route = {"req_path": "/", "type": "reverse_proxy", "upstreams": [backend.addr]}
        server = start_server([{**route, "gzip_enable": True}])
        with connect(server.port) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
            raw = b""
            seen = b""
            while seen != first:  # recv times out (5 s) if the encoder sits on the bytes
                raw += sock.recv(65536)
                body = complete_chunks(raw.partition(b"\r\n\r\n")[2])
                seen = zlib.decompressobj(31).decompress(body)
            release.set()
            while not raw.endswith(b"\r\n0\r\n\r\n"):
                raw += sock.recv(65536)
        assert gzip.decompress(b"".join(chunks_of(raw.partition(b"\r\n\r\n")[2]))) == TEXT
    finally:
        release.set()
        backend.stop()


# --- left alone ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "accept", [None, "gzip;q=0", "identity", "gzip;q=0.5, identity", "deflate, br", "*;q=0"]
)
def test_identity_when_the_client_does_not_take_gzip(proxy, accept):
    server = proxy()
    client = Client(server.port)
    res = client.request("GET", "/length", {} if accept is None else {"Accept-Encoding": accept})
    assert "content-encoding" not in res.headers
    assert res.headers["content-length"] == str(len(TEXT)) and res.body == TEXT
    assert res.headers["vary"] == "Cookie, Accept-Encoding"  # it could have been gzip
    assert res.headers["etag"] == '"v1"' and res.headers["accept-ranges"] == "bytes"
    client.close()


@pytest.mark.parametrize(
    "accept", ["gzip", "x-gzip", "*", "br;q=1, gzip;q=0.2", "identity;q=0.5, gzip"]
)
def test_q_values_that_take_gzip(proxy, accept):
    res = get(proxy(), "/chunked", {"Accept-Encoding": accept})
    assert res.headers["content-encoding"] == "gzip" and gzip.decompress(res.body) == TEXT


@pytest.mark.parametrize("target", ["/png", "/tiny", "/encoded", "/no-transform", "/404"])
def test_responses_gzip_does_not_apply_to_pass_through(proxy, backend, target):
    server = proxy()
    identity = get(server, target)  # what any client gets
    res = get(server, target, GZ)
    assert res.status == identity.status
    assert res.headers.get("content-encoding") == identity.headers.get("content-encoding")
    assert "vary" not in res.headers
    assert res.headers["content-length"] == str(len(res.body))
    assert res.body == identity.body
    if target == "/encoded":
        assert res.headers["content-encoding"] == "gzip"  # the upstream's, body untouched
        assert gzip.decompress(res.body) == TEXT


def test_head_and_304_are_not_compressed(proxy):
    server = proxy()
    client = Client(server.port)
    res = client.request("HEAD", "/length", GZ)
    assert res.status == 200 and res.body == b""
    assert res.headers["content-length"] == str(len(TEXT))
    assert "content-encoding" not in res.headers and "transfer-encoding" not in res.headers
    res = client.request("GET", "/304", GZ)
    assert res.status == 304 and res.headers["etag"] == '"v1"'
    assert "content-encoding" not in res.headers and "transfer-encoding" not in res.headers
    assert client.request("GET", "/length", GZ).headers["content-encoding"] == "gzip"
    client.close()


def test_route_without_gzip_leaves_everything_alone(proxy):
    res = get(proxy(gzip_enable=False), "/length", GZ)
    assert "content-encoding" not in res.headers and res.headers["vary"] == "Cookie"
    assert res.body == TEXT


def test_runtime_toggle_applies_to_the_next_proxied_response(proxy):
    server = proxy(gzip_enable=False)
    client = Client(server.port)
    assert "content-encoding" not in client.request("GET", "/chunked", GZ).headers
    assert server.call(lambda: server.core.set_gzip("/", True))["gzip_enable"] is True
    res = client.request("GET", "/chunked", GZ)  # same connection, next response
    assert res.headers["content-encoding"] == "gzip" and gzip.decompress(res.body) == TEXT
    server.call(lambda: server.core.set_gzip("/", False))
    res = client.request("GET", "/chunked", GZ)
    assert "content-encoding" not in res.headers and res.body == TEXT
    client.close()


# --- pacing -------------------------------------------------------------------------------------
def _stream(server) -> ProxyStream | None:
    for session in server.core.sessions.values():
        if isinstance(session.producer, ProxyStream):
            return session.producer
    return None


def test_compression_waits_for_a_slow_client(start_server):
    """Base64 of random bytes compresses only to ~3/4: 8 MiB cannot hide in socket buffers.
    While the client reads nothing, the upstream is not read and nothing more compressed."""
    data = base64.encodebytes(os.urandom(6 << 20))

    def handler(req: Req, conn: BackendConn) -> None:
        conn.send(response(200, data, [("Content-Type", "text/plain")]))

    backend = Backend(handler)
    try:
        route = {"req_path": "/", "type": "reverse_proxy", "upstreams": [backend.addr]}
        server = start_server([{**route, "gzip_enable": True}], timeouts={"upstream_read": 5})
        sock = slow_client(server)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")

        def held() -> int | None:
            stream = _stream(server)
            if stream is None or stream.conn is None or stream.body is None:
                return None
            if stream.conn.read_paused and stream.ctx.conn.out.full():
                return stream.body.taken
            return None

        compressed = wait_until(lambda: server.call(held))
        assert compressed < len(data) // 4
        for _ in range(20):  # loop turns go by: it stays put
            server.call(lambda: None)
        assert server.call(held) == compressed
        raw = bytearray()
        while not raw.endswith(b"\r\n0\r\n\r\n"):
            chunk = sock.recv(1 << 20)
            assert chunk
            raw += chunk
        sock.close()
        head, _, body = bytes(raw).partition(b"\r\n\r\n")
        assert b"Content-Encoding: gzip" in head
        assert gzip.decompress(b"".join(chunks_of(body))) == data
    finally:
        backend.stop()


def _readable(sock: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def test_a_fast_upstream_is_compressed_a_bounded_amount_per_loop_turn(start_server, monkeypatch):
    """However much the upstream has ready, one loop turn compresses a budget's worth (here
    one byte, so one read) and leaves the rest to the next turn: other clients get their turn."""
    monkeypatch.setattr(output_module, "STREAM_TURN", 1)
    per_turn: list[int] = []
    real_turn = BodyStream._next_turn
    monkeypatch.setattr(
        BodyStream, "_next_turn", lambda self: (per_turn.append(self._turn), real_turn(self))
    )
    data = TEXT * 20  # 2 MiB
    go = threading.Event()

    def handler(req: Req, conn: BackendConn) -> None:
        go.wait(5)
        conn.send(response(200, data, [("Content-Type", "text/plain")]))

    backend = Backend(handler)
    try:
        route = {"req_path": "/", "type": "reverse_proxy", "upstreams": [backend.addr]}
        server = start_server([{**route, "gzip_enable": True}])
        client = Client(server.port)
        client.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        wait_until(lambda: backend.requests)

        def pile_up() -> None:
            """On the loop thread: let several reads' worth wait in the upstream socket."""
            sock = _stream(server).conn.sock
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            go.set()
            wait_until(lambda: _readable(sock) >= 3 * RECV_SIZE)

        server.call(pile_up)
        res = client.read_response()
        client.close()
        assert gzip.decompress(res.body) == data
        assert max(per_turn) <= RECV_SIZE  # one read a turn, though three were waiting at first
        assert len(per_turn) >= len(data) // RECV_SIZE
    finally:
        go.set()
        backend.stop()
