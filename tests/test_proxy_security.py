"""Regression tests for the proxy smuggling findings, each as a concrete end-to-end attack.

Real server, real sockets, a recording upstream (`RawBackend`, framed by h11). The findings:
1. a Connection header naming Content-Length stripped the framing but not the body, which the
   upstream then read as a request nobody routed (ACL bypass, forged X-Forwarded-For, another
   client's response);
2. an absolute-form target routed on its host but forwarded the client's Host; Host values
   were not validated;
10. an upstream response whose Connection names Content-Length reached the client unframed;
15. underscore field names, repeated Content-Length and `Connection: Host` went upstream as sent.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import RunningServer, connect, free_port
from tests.raw_backend import BackendRequest, RawBackend
from tests.wire import framing_problems, read_reply, read_responses

pytestmark = pytest.mark.timeout(20)

FAST = {"upstream_connect": 1.0, "upstream_read": 1.0}
CLOSE = b"Connection: close\r\n"


@pytest.fixture
def backend() -> Iterator[RawBackend]:
    made = RawBackend()
    yield made
    made.stop()


@pytest.fixture
def acl_proxy(start_server, backend) -> RunningServer:
    """Route "/" proxies to `backend`; "/admin" proxies there too, for 127.0.0.2 only."""
    route = {"type": "reverse_proxy", "upstreams": [backend.addr], "max_fails": 0}
    return start_server(
        [
            {"req_path": "/", **route},
            {"req_path": "/admin", **route, "ip_whitelist": ["127.0.0.2"]},
        ],
        timeouts=FAST,
    )


def exchange(server: RunningServer, data: bytes, source: str | None = None) -> bytes:
    """Send `data` on a new connection and read until the server closes it."""
    with connect(server.port, source=source) as sock:
        sock.sendall(data)
        return read_reply(sock)


def idle_upstreams(server: RunningServer, backend: RawBackend) -> int:
    return server.call(lambda: len(server.core.upstreams[backend.addr].idle))


# --- finding 1 ----------------------------------------------------------------------------------
def test_connection_content_length_cannot_smuggle_past_the_acl(acl_proxy, backend):
    """The attacker's body is the start of a request for the ACL'd /admin, with a forged
    X-Forwarded-For, left open at a header value. Were Content-Length dropped, the upstream
    would take the body as a second request on the pooled connection, complete it with the
    next client's request, and answer /admin to that client."""
    smuggled = b"GET /admin/secret HTTP/1.0\r\nX-Forwarded-For: 127.0.0.2\r\nX-Swallow: "
    attack = (
        b"POST / HTTP/1.1\r\nHost: localhost\r\nConnection: Content-Length\r\n"
        b"Content-Length: %d\r\n" % len(smuggled) + CLOSE + b"\r\n" + smuggled
    )
    attacker = read_responses(exchange(acl_proxy, attack), ["POST"])
    assert [r.status for r in attacker.responses] == [200]
    # The attacker's exchange left its upstream connection in the pool.
    assert idle_upstreams(acl_proxy, backend) == 1

    victim_raw = exchange(
        acl_proxy, b"GET /public HTTP/1.1\r\nHost: localhost\r\n" + CLOSE + b"\r\n", "127.0.0.3"
    )
    victim = read_responses(victim_raw, ["GET"])

    seen = backend.wait_for(lambda conns: sum(len(c.requests) for c in conns) >= 2)
    requests = [r for c in seen for r in c.requests]
    got = {
        "upstream": [(r.method, r.target, r.body) for r in requests],
        "victim": [(r.status, r.body) for r in victim.responses],
    }
    assert got == {
        "upstream": [("POST", "/", smuggled), ("GET", "/public", b"")],  # the body stayed a body
        "victim": [(200, b"GET /public")],  # its own response, not the smuggled /admin one
    }


def test_connection_naming_framing_fields_keeps_them_upstream(acl_proxy, backend):
    """Every framing field the client sent reaches the upstream whatever Connection lists."""
    data = (
        b"POST / HTTP/1.1\r\nHost: localhost\r\n"
        b"Connection: keep-alive, Content-Length, Host, Transfer-Encoding\r\n"
        b"Content-Length: 5\r\n" + CLOSE + b"\r\nhello"
    )
    reading = read_responses(exchange(acl_proxy, data), ["POST"])
    assert [r.status for r in reading.responses] == [200]
    [request] = backend.wait_for(lambda conns: conns and conns[0].requests)[0].requests
    assert request.body == b"hello"
    assert framing_problems(request.head, "localhost", False, 5) == []


# --- finding 2 ----------------------------------------------------------------------------------
@pytest.fixture
def vhost_proxy(start_server, backend) -> RunningServer:
    """public.test and internal.test share a listener and an upstream (which serves both by
    name); internal.test is for 127.0.0.2 only."""
    port = free_port()
    listener = {"host": "127.0.0.1", "port": port}
    route = {"req_path": "/", "type": "reverse_proxy", "upstreams": [backend.addr]}
    return start_server(
        config={
            "servers": [
                {"listeners": [listener], "hostnames": ["public.test"], "routes": [route]},
                {
                    "listeners": [listener],
                    "hostnames": ["internal.test"],
                    "routes": [{**route, "ip_whitelist": ["127.0.0.2"]}],
                },
            ],
            "timeouts": FAST,
        }
    )


def test_absolute_form_target_host_is_the_host_upstream(vhost_proxy, backend):
    # The setup is meaningful: internal.test refuses this client.
    denied = exchange(
        vhost_proxy, b"GET /api/x HTTP/1.1\r\nHost: internal.test\r\n" + CLOSE + b"\r\n"
    )
    assert [r.status for r in read_responses(denied, ["GET"]).responses] == [403]

    raw = exchange(
        vhost_proxy,
        b"GET http://public.test/api/x HTTP/1.1\r\nHost: internal.test\r\n" + CLOSE + b"\r\n",
    )
    assert [r.status for r in read_responses(raw, ["GET"]).responses] == [200]
    [request] = backend.wait_for(lambda conns: conns and conns[0].requests)[0].requests
    assert request.target == "/api/x"
    assert request.header("host") == ["public.test"], "routed on public.test, sent elsewhere"
    assert request.header("x-forwarded-host") == ["public.test"]


@pytest.mark.parametrize(
    "host_lines",
    [
        pytest.param(b"Host: \r\n", id="empty"),
        pytest.param(b"Host: public.test, internal.test\r\n", id="comma-list"),
        pytest.param(b"Host: evil.test/x?y\r\n", id="path-and-query"),
        pytest.param(b"Host: public.test\r\nHost: internal.test\r\n", id="duplicate"),
    ],
)
def test_invalid_host_is_refused(vhost_proxy, backend, host_lines: bytes):
    """RFC 9112 §3.2 and nginx: one Host, a valid host[:port], else 400 and nothing forwarded."""
    raw = exchange(vhost_proxy, b"GET /api/x HTTP/1.1\r\n" + host_lines + CLOSE + b"\r\n")
    reading = read_responses(raw, ["GET"])
    assert [r.status for r in reading.responses] == [400]
    assert reading.problem is None
    assert backend.snapshot() == []


@pytest.mark.parametrize(
    "host", [b"public.test", b"public.test:8080", b"[::1]:8080", b"PUBLIC.test"]
)
def test_valid_host_is_forwarded(vhost_proxy, backend, host: bytes):
    raw = exchange(vhost_proxy, b"GET /x HTTP/1.1\r\nHost: " + host + b"\r\n" + CLOSE + b"\r\n")
    assert [r.status for r in read_responses(raw, ["GET"]).responses] == [200]
    [request] = backend.wait_for(lambda conns: conns and conns[0].requests)[0].requests
    assert [h.lower() for h in request.header("host")] == [host.decode().lower()]


# --- finding 10 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("connection", ["Content-Length", "keep-alive, CONTENT-LENGTH"])
def test_upstream_connection_naming_content_length_keeps_the_response_framed(
    start_server, connection: str
):
    """The upstream's answer lists Content-Length in Connection. On a keep-alive client
    connection, an unframed answer would run until the close, swallowing the next response:
    so two pipelined requests must come back as two framed responses."""

    def answer(request: BackendRequest):
        return 200, [("Connection", connection), ("Content-Length", "5")], b"hello"

    scripted = RawBackend(answer)
    try:
        server = start_server(
            [{"req_path": "/", "type": "reverse_proxy", "upstreams": [scripted.addr]}],
            timeouts=FAST,
        )
        data = (
            b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\n"
            b"GET /two HTTP/1.1\r\nHost: localhost\r\n" + CLOSE + b"\r\n"
        )
        reading = read_responses(exchange(server, data), ["GET", "GET"])
    finally:
        scripted.stop()
    assert reading.problem is None
    assert [(r.status, r.body) for r in reading.responses] == [(200, b"hello"), (200, b"hello")]
    first = reading.responses[0]
    framing = [
        (k.lower(), v)
        for k, v in first.headers
        if k.lower() in ("content-length", "transfer-encoding")
    ]
    assert framing in ([("content-length", "5")], [("transfer-encoding", "chunked")])
    assert ("connection", "keep-alive") in [(k.lower(), v) for k, v in first.headers]


# --- finding 15 ---------------------------------------------------------------------------------
def forwarded(server: RunningServer, backend: RawBackend, data: bytes) -> BackendRequest:
    """Send one request that must be forwarded; the request the upstream framed."""
    raw = exchange(server, data)
    reading = read_responses(raw, ["POST"])
    assert [r.status for r in reading.responses] == [200], raw
    conns = backend.wait_for(lambda cs: cs and cs[0].requests)
    assert [len(c.requests) for c in conns] == [1]
    assert conns[0].leftover == b""
    return conns[0].requests[0]


def test_underscore_field_names_are_dropped(acl_proxy, backend):
    """`Transfer_Encoding` next to Content-Length: nginx drops underscore names by default, so
    the request is Content-Length framed and no upstream ever sees the look-alike."""
    data = (
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
        b"Transfer_Encoding: chunked\r\nX_Custom: 1\r\n" + CLOSE + b"\r\nhello"
    )
    request = forwarded(acl_proxy, backend, data)
    assert request.body == b"hello"
    assert framing_problems(request.head, "localhost", False, 5) == []
    assert not [name for name, _ in request.headers if "_" in name]


@pytest.mark.parametrize(
    "lengths",
    [
        pytest.param(b"Content-Length: 5\r\nContent-Length: 5\r\n", id="repeated"),
        pytest.param(b"Content-Length: 5, 5\r\n", id="comma-list"),
        pytest.param(b"Content-Length: 5,5\r\nContent-Length: 5\r\n", id="both"),
    ],
)
def test_repeated_content_length_reaches_upstream_once(acl_proxy, backend, lengths: bytes):
    """RFC 9110 §8.6: reject or collapse. Either a 400 with nothing forwarded, or exactly one
    `Content-Length: 5` upstream."""
    data = b"POST / HTTP/1.1\r\nHost: localhost\r\n" + lengths + CLOSE + b"\r\nhello"
    raw = exchange(acl_proxy, data)
    statuses = [r.status for r in read_responses(raw, ["POST"]).responses]
    if statuses == [400]:
        assert backend.snapshot() == []
        return
    assert statuses == [200]
    [request] = backend.wait_for(lambda cs: cs and cs[0].requests)[0].requests
    fields = [
        line for line in request.head.split(b"\r\n") if line.lower().startswith(b"content-length")
    ]
    assert fields == [b"Content-Length: 5"]
    assert request.body == b"hello"


def test_connection_host_keeps_host(acl_proxy, backend):
    data = (
        b"POST / HTTP/1.1\r\nHost: localhost\r\nConnection: Host\r\nContent-Length: 0\r\n"
        + CLOSE
        + b"\r\n"
    )
    request = forwarded(acl_proxy, backend, data)
    assert request.header("host") == ["localhost"]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param("Content-Length: 1\xb2\r\n\r\nhello".encode("latin-1"), id="cl-superscript"),
        pytest.param("Content-Length: \u0665\r\n\r\nhello".encode(), id="cl-arabic-indic"),
        pytest.param(
            "Transfer-Encoding: chunked\r\n\r\n\u0665\r\nhello\r\n0\r\n\r\n".encode(),
            id="chunk-arabic-indic",
        ),
        pytest.param(
            "Transfer-Encoding: chunked\r\n\r\n\uff15\r\nhello\r\n0\r\n\r\n".encode(),
            id="chunk-fullwidth",
        ),
    ],
)
def test_numbers_are_ascii_digits_only(acl_proxy, backend, data: bytes):
    """`int()` reads Unicode digits; a length must not. The head is refused (400), or the
    body is broken after a forwarded head: never a complete request upstream."""
    raw = exchange(acl_proxy, b"POST / HTTP/1.1\r\nHost: localhost\r\n" + data)
    statuses = [r.status for r in read_responses(raw, ["POST"]).responses]
    assert statuses in ([400], [])
    assert backend.requests == []
