"""file_serve and redirect routes over real loopback sockets."""

from __future__ import annotations

import os
import re
import socket
from email.utils import formatdate

import pytest

from tests.helpers import Client, raw_exchange, status_of, wait_until


@pytest.fixture
def server(start_server, site):
    return start_server(
        [
            {"req_path": "/", "type": "file_serve", "dir_path": str(site), "dir_listing": True},
            {
                "req_path": "/plain",
                "type": "file_serve",
                "dir_path": str(site / "test"),
                "dir_listing": False,
            },
            {
                "req_path": "/old",
                "type": "redirect",
                "http_status_code": 302,
                "redirect_url": "http://localhost:8002/",
            },
        ]
    )


@pytest.fixture
def client(server):
    c = Client(server.port)
    yield c
    c.close()


def test_serves_a_file_with_the_standard_headers(client, site):
    res = client.request("GET", "/hello.txt")
    assert res.status == 200
    assert res.body == b"hello world\n"
    assert res.headers["server"] == "eXpServer"
    assert res.headers["content-type"] == "text/plain"
    assert res.headers["content-length"] == "12"
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", res.headers["date"])
    assert res.headers["connection"] == "keep-alive"
    mtime = int(os.stat(site / "hello.txt").st_mtime)
    assert res.headers["last-modified"] == formatdate(mtime, usegmt=True)
    assert res.headers["etag"] == f'"{mtime:x}-c"'


def test_bare_content_types(client):
    assert client.request("GET", "/data.json").headers["content-type"] == "application/json"
    assert client.request("GET", "/test/cat.jpg").headers["content-type"] == "image/jpeg"
    assert client.request("GET", "/").headers["content-type"] == "text/html"


def test_index_file_for_a_directory(client):
    res = client.request("GET", "/")
    assert res.status == 200
    assert res.body == b"<h1>home</h1>\n"


def test_directory_listing_has_absolute_links_in_a_table(client):
    res = client.request("GET", "/test")
    assert res.status == 200
    assert res.headers["content-type"] == "text/html"
    assert b'<meta charset="utf-8">' in res.body
    assert b"<table>" in res.body
    assert b'<tr><td><a href="/test/cat.jpg">cat.jpg</a></td>' in res.body
    root = client.request("GET", "/plain/")
    assert root.status == 403  # no index and dir_listing off


def test_root_listing_links_directories_absolutely(start_server, site):
    (site / "index.html").unlink()
    server = start_server(
        [{"req_path": "/", "type": "file_serve", "dir_path": str(site), "dir_listing": True}]
    )
    c = Client(server.port)
    body = c.request("GET", "/").body
    assert b'<tr><td><a href="/test">test/</a></td>' in body
    assert b'<a href="/hello.txt">hello.txt</a>' in body
    c.close()


def test_route_prefix_is_stripped_like_an_alias(client):
    res = client.request("GET", "/plain/cat.jpg")
    assert res.status == 200
    assert res.body.startswith(b"\xff\xd8\xff")
    assert client.request("GET", "/plainx/cat.jpg").status == 404


def test_missing_file_is_404(client):
    res = client.request("GET", "/nope.txt")
    assert res.status == 404
    assert res.headers["server"] == "eXpServer"
    assert b"404 Not Found" in res.body


def test_head_has_headers_but_no_body(client):
    res = client.request("HEAD", "/hello.txt")
    assert res.status == 200
    assert res.headers["content-length"] == "12"
    assert res.body == b""
    # the connection is still in step: the next request gets its own answer
    assert client.request("GET", "/hello.txt").body == b"hello world\n"


def test_other_methods_get_405_with_allow(client):
    res = client.request("DELETE", "/hello.txt")
    assert res.status == 405
    assert res.headers["allow"] == "GET, HEAD"


def test_post_body_is_consumed_and_connection_stays_usable(client):
    client.send_raw(
        b"POST /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert client.read_response().status == 405
    assert client.read_response().body == b"hello world\n"


def test_etag_and_last_modified_give_304(client):
    first = client.request("GET", "/hello.txt")
    etag = first.headers["etag"]
    res = client.request("GET", "/hello.txt", {"If-None-Match": etag})
    assert res.status == 304
    assert res.body == b""
    assert res.headers["etag"] == etag
    res = client.request("GET", "/hello.txt", {"If-None-Match": '"other", ' + etag})
    assert res.status == 304
    res = client.request("GET", "/hello.txt", {"If-Modified-Since": first.headers["last-modified"]})
    assert res.status == 304
    old = formatdate(0, usegmt=True)
    assert client.request("GET", "/hello.txt", {"If-Modified-Since": old}).status == 200
    assert client.request("GET", "/hello.txt", {"If-None-Match": '"nope"'}).status == 200


def test_changed_file_is_served_fresh(client, site):
    assert client.request("GET", "/hello.txt").body == b"hello world\n"
    (site / "hello.txt").write_text("changed content\n")
    os.utime(site / "hello.txt", (1, 1))
    assert client.request("GET", "/hello.txt").body == b"changed content\n"


@pytest.mark.parametrize(
    ("header", "status", "body", "content_range"),
    [
        ("bytes=0-4", 206, b"hello", "bytes 0-4/12"),
        ("bytes=6-", 206, b"world\n", "bytes 6-11/12"),
        ("bytes=-3", 206, b"ld\n", "bytes 9-11/12"),
        ("bytes=6-100", 206, b"world\n", "bytes 6-11/12"),
        ("bytes=12-", 416, None, "bytes */12"),
        ("bytes=0-1,3-4", 200, b"hello world\n", None),
        ("items=0-1", 200, b"hello world\n", None),
        ("bytes=abc", 200, b"hello world\n", None),
    ],
)
def test_single_ranges(client, header, status, body, content_range):
    res = client.request("GET", "/hello.txt", {"Range": header})
    assert res.status == status
    if body is not None:
        assert res.body == body
    assert res.headers.get("content-range") == content_range


def test_range_on_a_large_file_uses_the_file(client, site):
    res = client.request("GET", "/big.bin", {"Range": "bytes=1000000-1000099"})
    assert res.status == 206
    assert res.body == (site / "big.bin").read_bytes()[1000000:1000100]


def test_large_file_is_complete(client, site):
    res = client.request("GET", "/big.bin")
    assert res.status == 200
    assert res.body == (site / "big.bin").read_bytes()


@pytest.mark.parametrize(
    "target",
    [
        "/../secret.txt",
        "/test/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/test/%2E%2E/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
    ],
)
def test_traversal_never_escapes(server, target, site):
    (site.parent / "secret.txt").write_text("top secret")
    raw = raw_exchange(server.port, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status_of(raw) in (400, 403, 404)
    assert b"top secret" not in raw


def test_percent_encoded_names_and_dot_segments_resolve_inside(client, site):
    (site / "a file.txt").write_text("spaced")
    assert client.request("GET", "/a%20file.txt").body == b"spaced"
    assert client.request("GET", "/test/../hello.txt").body == b"hello world\n"
    assert client.request("GET", "/./hello.txt").body == b"hello world\n"


def test_symlink_out_of_the_root_is_refused(client, site):
    outside = site.parent / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret")
    (site / "link").symlink_to(outside)
    (site / "inside-link.txt").symlink_to(site / "hello.txt")
    res = client.request("GET", "/link/secret.txt")
    assert res.status in (403, 404)
    assert b"top secret" not in res.body
    assert client.request("GET", "/inside-link.txt").body == b"hello world\n"


def test_redirect_route(client):
    res = client.request("GET", "/old")
    assert res.status == 302
    assert res.headers["location"] == "http://localhost:8002/"
    assert client.request("GET", "/old/deeper").status == 302


def test_pipelined_requests_answer_in_order(client):
    client.send_raw(
        b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /data.json HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert client.read_response().body == b"hello world\n"
    assert client.read_response().body == b'{"a": 1}\n'
    assert client.read_response().status == 404


def test_connection_close_is_honoured(server):
    raw = raw_exchange(
        server.port, b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close\r\n" in raw
    assert raw.endswith(b"hello world\n")


def test_http10_closes_unless_keep_alive(server):
    raw = raw_exchange(server.port, b"GET /hello.txt HTTP/1.0\r\n\r\n")
    assert status_of(raw) == 200
    assert raw.endswith(b"hello world\n")
    c = Client(server.port)
    c.send_raw(b"GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    first = c.sock.recv(65536)
    assert b"Connection: keep-alive" in first
    c.send_raw(b"GET /hello.txt HTTP/1.0\r\n\r\n")
    assert status_of(c.sock.recv(65536)) == 200
    c.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /hello.txt HTTP/1.1\r\n\r\n", 400),  # no Host on 1.1
        (b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad header\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Long: " + b"v" * 17000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413),
    ],
)
def test_bad_requests_get_their_status_then_close(server, request_bytes, status):
    raw = raw_exchange(server.port, request_bytes)
    assert status_of(raw) == status
    assert b"Connection: close\r\n" in raw
    assert b"Server: eXpServer\r\n" in raw
    # and the server lives on
    c = Client(server.port)
    assert c.request("GET", "/hello.txt").status == 200
    c.close()


def test_client_that_disconnects_mid_download_leaks_no_fd(server):
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    c = Client(server.port)
    assert c.request("GET", "/hello.txt").status == 200
    c.close()
    wait_until(lambda: server.call(lambda: len(server.core.sessions)) == 0)
    before = open_fds()
    for _ in range(5):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # RST in the middle of the body
    wait_until(lambda: server.call(lambda: len(server.core.sessions)) == 0)
    wait_until(lambda: open_fds() <= before)


def test_slow_reader_holds_the_file_not_memory(server):
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n" * 50)
    sock.recv(1024)

    def pending() -> tuple[int, int, bool]:
        session = next(iter(server.core.sessions.values()))
        items = session.conn.out.items
        in_memory = sum(len(i) for i in items if isinstance(i, (bytes, memoryview)))
        return len(items), in_memory, session.conn.read_paused

    wait_until(lambda: server.call(pending)[0] > 0)
    count, in_memory, paused = server.call(pending)
    # pipelined requests stop being taken once the pipe passes its threshold,
    # and what waits is file segments, not file bytes in memory
    assert count <= 4
    assert in_memory < 64 * 1024
    assert paused
    sock.close()


def test_a_failing_route_handler_costs_one_request_not_the_server(server):
    def broken(session, request, route, path):
        raise RuntimeError("bug")

    original = server.core.route_handlers["redirect"]
    server.call(lambda: server.core.route_handlers.__setitem__("redirect", broken))
    raw = raw_exchange(server.port, b"GET /old HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(raw) == 500
    server.call(lambda: server.core.route_handlers.__setitem__("redirect", original))
    c = Client(server.port)
    assert c.request("GET", "/old").status == 302
    c.close()
