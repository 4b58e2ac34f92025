"""gzip: negotiation, compressible types, the streamed and cached variants over real sockets."""

from __future__ import annotations

import base64
import gzip
import json
import os
import socket

import pytest

from tests.helpers import Client, RunningServer, free_port, server_config, slow_client, wait_until
from xps_server.config import Route
from xps_server.disk.gzip import GzipCache, GzipVariant, compressible, negotiate
from xps_server.network.output import GzipEncoder
from xps_server.routes.static import FileStream


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("gzip", True),
        ("GZip", True),
        ("x-gzip", True),
        ("gzip, deflate, br", True),
        ("deflate, gzip;q=0.5", True),
        ("br;q=1.0, gzip;q=0.001", True),
        ("*", True),
        ("*;q=0.5", True),
        ("*;q=0.5, identity;q=0", True),
        ("gzip;q=0.5", True),  # identity unmentioned: a fallback, not a rival
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("gzip;q=0, *", False),  # the explicit entry wins over the wildcard
        ("*;q=0", False),
        ("identity", False),
        ("deflate, br", False),
        ("", False),
        ("gzip;q=0.5, identity;q=0.8", False),  # the client prefers identity
        ("gzip;q=2", False),  # malformed q-value: the element is ignored
        ("gzip;q=abc, *;q=0", False),
    ],
)
def test_negotiation(value, expected):
    assert negotiate(value) is expected


def test_compressible_types():
    route = Route("/", "file_serve", gzip_mime_types=["text/x-c", "application/wasm", "image/png"])
    plain = Route("/", "file_serve")
    for mime in ("text/plain", "text/html", "text/css", "application/json"):
        assert compressible(mime, plain)
    for mime in ("application/javascript", "application/xml", "image/svg+xml"):
        assert compressible(mime, plain)
    for mime in ("image/png", "image/jpeg", "application/pdf", "application/zip", "font/woff2"):
        assert not compressible(mime, route)  # listing an image does not make it worth it
    assert not compressible("application/wasm", plain)
    assert compressible("application/wasm", route)
    assert not compressible("video/mp4", route)


def test_encoder_streams_and_cache_is_bounded():
    encoder = GzipEncoder(6)
    data = b"abc" * 100_000
    out = b"".join(encoder.feed(data[i : i + 7000]) for i in range(0, len(data), 7000))
    out += encoder.flush() + encoder.feed(b"tail") + encoder.finish()
    assert gzip.decompress(out) == data + b"tail"
    cache = GzipCache(max_bytes=100, max_entry=60)
    cache.put(("a", 1, 1, 1, 6), GzipVariant(b"x" * 50, b""))
    cache.put(("b", 1, 1, 1, 6), GzipVariant(b"x" * 40, b""))
    assert cache.get(("a", 1, 1, 1, 6)) is not None  # a is now the most recent
    cache.put(("c", 1, 1, 1, 6), GzipVariant(b"x" * 30, b""))  # 120 > 100: b goes
    assert cache.get(("b", 1, 1, 1, 6)) is None
    cache.put(("d", 1, 1, 1, 6), GzipVariant(b"x" * 61, b""))  # over max_entry: never kept
    assert set(k[0] for k in cache.entries) == {"a", "c"} and cache.bytes == 80


# --- over real sockets ---------------------------------------------------------------------------

TEXT = b"".join(b"%06d the quick brown fox jumps over the lazy dog\n" % i for i in range(40_000))


@pytest.fixture
def files(site):
    (site / "page.html").write_bytes(b"<p>" + b"hello gzip " * 300 + b"</p>\n")
    (site / "big.txt").write_bytes(TEXT)  # ~2 MiB: streamed the first time
    (site / "tiny.txt").write_bytes(b"too small to bother\n")
    (site / "photo.png").write_bytes(b"\x89PNG" + b"\x00" * 5000)
    return site


def _routes(site, gzip_enable=True):
    return [
        {
            "req_path": "/",
            "type": "file_serve",
            "dir_path": str(site),
            "gzip_enable": gzip_enable,
            "gzip_level": 6,
        }
    ]


@pytest.fixture
def server(start_server, files):
    return start_server(_routes(files))


@pytest.fixture
def client(server):
    c = Client(server.port)
    yield c
    c.close()


GZ = {"Accept-Encoding": "gzip, deflate"}


def test_small_file_is_compressed_with_exact_length(server, client, files):
    res = client.request("GET", "/page.html", GZ)
    assert res.status == 200
    assert res.headers["content-encoding"] == "gzip"
    assert res.headers["vary"] == "Accept-Encoding"
    assert res.headers["content-type"] == "text/html"
    assert int(res.headers["content-length"]) == len(res.body)
    assert "transfer-encoding" not in res.headers
    assert gzip.decompress(res.body) == (files / "page.html").read_bytes()
    identity = client.request("GET", "/page.html")
    assert res.headers["etag"] == identity.headers["etag"][:-1] + '-gzip"'
    cache = server.core.gzip_cache
    hits = server.call(lambda: cache.hits)
    again = client.request("GET", "/page.html", GZ)
    assert again.body == res.body
    assert server.call(lambda: (cache.hits, len(cache.entries))) == (hits + 1, 1)


def test_big_file_streams_chunked_then_comes_from_the_cache(server, client, files):
    first = client.request("GET", "/big.txt", GZ)
    assert first.status == 200
    assert first.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in first.headers
    assert first.headers["content-encoding"] == "gzip"
    assert gzip.decompress(first.body) == TEXT
    hits = server.call(lambda: server.core.gzip_cache.hits)
    second = client.request("GET", "/big.txt", GZ)
    assert int(second.headers["content-length"]) == len(second.body)
    assert gzip.decompress(second.body) == TEXT
    assert second.headers["etag"] == first.headers["etag"]
    assert server.call(lambda: server.core.gzip_cache.hits) == hits + 1
    # HEAD agrees with GET, without the body.
    head = client.request("HEAD", "/big.txt", GZ)
    assert head.headers["content-length"] == second.headers["content-length"]
    assert head.body == b""


def _stalled_stream(server, files, name="noise.txt"):
    """A client that asked for a big gzip file and reads nothing: the stream has to wait.

    Base64 of random bytes compresses only to ~3/4, and both socket buffers are shrunk, so
    the compressed file cannot hide in the kernel.
    """
    data = base64.encodebytes(os.urandom(4_500_000))
    (files / name).write_bytes(data)
    sock = slow_client(server)
    sock.sendall(b"GET /%s HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n" % name.encode())
    return sock, data


def _stalled_at(server):
    """How much of the file the stream has compressed, once it waits on a full pipe."""
    for session in server.core.sessions.values():
        stream = session.producer
        if stream is not None and session.conn.out.full():
            return stream.entry.size - stream.remaining  # read, so compressed
    return None


def _read_chunked(sock) -> tuple[bytes, bytes]:
    raw = bytearray()
    while not raw.endswith(b"\r\n0\r\n\r\n"):
        chunk = sock.recv(1 << 20)
        assert chunk
        raw += chunk
    head, _, body = bytes(raw).partition(b"\r\n\r\n")
    return head, _dechunk(body)


def test_stream_compresses_only_as_the_client_drains(server, files, monkeypatch):
    pumps = []
    real_pump = FileStream.pump
    monkeypatch.setattr(FileStream, "pump", lambda self: (pumps.append(1), real_pump(self)))
    sock, data = _stalled_stream(server, files)
    compressed_so_far = wait_until(lambda: server.call(lambda: _stalled_at(server)))
    assert compressed_so_far < len(data) // 4  # it waits for the client instead of racing on
    # While stalled it waits for a drain: loop turns go by without it spinning.
    calls = len(pumps)
    for _ in range(20):
        server.call(lambda: None)
    assert len(pumps) == calls
    assert server.call(lambda: _stalled_at(server)) == compressed_so_far
    head, body = _read_chunked(sock)
    sock.close()
    assert b"Transfer-Encoding: chunked" in head
    assert gzip.decompress(body) == data


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(out)
        assert size > 0
        out += body[:size]
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]


def test_identity_when_the_client_refuses_gzip(client, files):
    for headers in ({"Accept-Encoding": "gzip;q=0"}, {}, {"Accept-Encoding": "identity"}):
        res = client.request("GET", "/page.html", headers)
        assert "content-encoding" not in res.headers
        assert res.headers["vary"] == "Accept-Encoding"  # as nginx's gzip_vary
        assert res.body == (files / "page.html").read_bytes()


def test_range_requests_get_the_identity_representation(client):
    res = client.request("GET", "/big.txt", {**GZ, "Range": "bytes=100-199"})
    assert res.status == 206
    assert "content-encoding" not in res.headers
    assert res.headers["content-range"] == f"bytes 100-199/{len(TEXT)}"
    assert res.body == TEXT[100:200]


def test_incompressible_and_tiny_files_are_left_alone(client, files):
    for name in ("photo.png", "tiny.txt"):
        res = client.request("GET", f"/{name}", GZ)
        assert res.status == 200
        assert "content-encoding" not in res.headers
        assert "vary" not in res.headers
        assert res.body == (files / name).read_bytes()


def test_conditional_requests_per_variant(client):
    gz = client.request("GET", "/page.html", GZ)
    plain = client.request("GET", "/page.html")
    res = client.request("GET", "/page.html", {**GZ, "If-None-Match": gz.headers["etag"]})
    assert res.status == 304
    assert res.headers["etag"] == gz.headers["etag"]
    assert res.headers["vary"] == "Accept-Encoding"
    # The gzip tag does not validate the identity variant, nor the reverse.
    assert client.request("GET", "/page.html", {"If-None-Match": gz.headers["etag"]}).status == 200
    res = client.request("GET", "/page.html", {**GZ, "If-None-Match": plain.headers["etag"]})
    assert res.status == 200 and res.headers["content-encoding"] == "gzip"
    since = {"If-Modified-Since": gz.headers["last-modified"]}
    assert client.request("GET", "/page.html", {**GZ, **since}).status == 304


def test_http_1_0_never_gets_chunked(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /big.txt HTTP/1.0\r\nAccept-Encoding: gzip\r\n\r\n")
        raw = bytearray()
        while chunk := sock.recv(1 << 20):
            raw += chunk
    head, _, body = bytes(raw).partition(b"\r\n\r\n")
    assert b"chunked" not in head and b"Content-Encoding" not in head
    assert body == TEXT


def test_gzip_toggles_at_runtime_and_the_toggle_persists(tmp_path, files):
    port = free_port()
    config = server_config(port, _routes(files, gzip_enable=False), state_file=str(tmp_path / "s"))
    server = RunningServer(config, tmp_path)
    try:
        client = Client(port)
        assert "content-encoding" not in client.request("GET", "/page.html", GZ).headers
        result = server.call(lambda: server.core.set_gzip("/", True))
        assert result["route"] == "/" and result["gzip_enable"] is True
        res = client.request("GET", "/page.html", GZ)
        assert gzip.decompress(res.body) == (files / "page.html").read_bytes()
        with pytest.raises(ValueError, match="unknown route"):
            server.call(lambda: server.core.set_gzip("/nope", True))
        client.close()
    finally:
        server.stop()
    assert json.loads((tmp_path / "s").read_text())["gzip"] == {"/": True}
    server = RunningServer(config, tmp_path)
    try:
        client = Client(port)
        assert client.request("GET", "/page.html", GZ).headers["content-encoding"] == "gzip"
        server.call(lambda: server.core.set_gzip("/", False))
        assert "content-encoding" not in client.request("GET", "/page.html", GZ).headers
        server.call(lambda: server.core.set_gzip("/", None))  # back to the config: off
        assert server.call(server.core.routes_snapshot)[0]["gzip"] is False
        client.close()
    finally:
        server.stop()


def test_shutdown_lets_a_stream_finish_then_closes(server, files):
    sock, data = _stalled_stream(server, files)
    wait_until(lambda: server.call(lambda: _stalled_at(server)))
    server.call(lambda: server.core.shutdown(10))
    head, body = _read_chunked(sock)
    assert b"Content-Encoding: gzip" in head
    assert gzip.decompress(body) == data
    assert sock.recv(1) == b""  # closed once the response was out
    sock.close()
    server.thread.join(5)
    assert not server.thread.is_alive()  # stopped when its last session closed, not at 10 s
