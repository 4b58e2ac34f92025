"""reverse_proxy routes end to end: real upstreams on loopback, the server in-process."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time

import pytest

from tests.backends import Backend, BackendConn, Req, echo, response
from tests.helpers import (
    Client,
    RunningServer,
    connect,
    free_port,
    read_until_close,
    server_config,
    wait_until,
)
from xps_server.config import parse_config
from xps_server.network import upstream as upstream_module
from xps_server.server.control import CommandAPI

# Short enough to keep the suite fast, long enough never to fire by accident.
FAST = {"upstream_connect": 0.3, "upstream_read": 0.4}


@pytest.fixture
def proxy(start_server):
    """Start a server whose "/" route proxies to `upstreams`."""

    def start(*upstreams, timeouts: dict | None = None, limits: dict | None = None, **route):
        ups = [u.addr if isinstance(u, Backend) else u for u in upstreams]
        routes = [{"req_path": "/", "type": "reverse_proxy", "upstreams": ups, **route}]
        return start_server(routes, timeouts={**FAST, **(timeouts or {})}, limits=limits or {})

    return start


def get(server, target: str = "/", headers: dict | None = None, source: str | None = None):
    client = Client(server.port, source=source)
    try:
        return client.request("GET", target, headers)
    finally:
        client.close()


def backend_of(res) -> str:
    return json.loads(res.body)["backend"]


def dead_port() -> int:
    return free_port()  # nothing listens there: connection refused


def upstream(server, addr: str) -> dict:
    return next(u for u in server.call(server.core.upstreams_snapshot) if u["addr"] == addr)


# --- what passes through ----------------------------------------------------------------------
def test_status_headers_and_body_pass_through(backends, proxy):
    def handler(req: Req, conn: BackendConn) -> None:
        conn.send(
            response(
                201,
                b"made it",
                [("X-Custom", "  spaced  value"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")],
                reason="Created Thing",
            )
        )

    server = proxy(backends(handler))
    client = Client(server.port)
    client.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    raw = client.sock.recv(65536)
    head = raw.split(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.1 201 Created Thing\r\n")
    assert "\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n" in head
    assert "X-Custom: spaced  value" in head
    assert "\r\nServer: eXpServer\r\n" in head  # the upstream sent none
    assert "\r\nDate: " in head
    assert "\r\nConnection: keep-alive" in head
    assert raw.endswith(b"\r\n\r\nmade it")
    client.close()


def test_upstream_server_and_date_are_kept(backends, proxy):
    def handler(req: Req, conn: BackendConn) -> None:
        headers = [("Server", "backend/1.0"), ("Date", "Mon, 01 Jan 2024 00:00:00 GMT")]
        conn.send(response(200, b"x", headers))

    res = get(proxy(backends(handler)))
    assert res.headers["server"] == "backend/1.0"
    assert res.headers["date"] == "Mon, 01 Jan 2024 00:00:00 GMT"


def test_request_gets_x_forwarded_and_loses_hop_by_hop_fields(backends, proxy):
    server = proxy(backends())
    res = get(
        server,
        "/some/path?q=1&r=%20",
        {
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "secret",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Trailer": "X-T",
            "Upgrade": "h2c",
            "Proxy-Connection": "keep-alive",
            "X-Forwarded-For": "203.0.113.7",
            "X-Forwarded-Proto": "https",
            "X-Kept": "yes",
        },
        source="127.0.0.5",
    )
    seen = json.loads(res.body)
    assert seen["target"] == "/some/path?q=1&r=%20"
    names = [k.lower() for k, _ in seen["headers"]]
    for hop in ("connection", "x-hop", "keep-alive", "te", "trailer", "upgrade"):
        assert hop not in names
    assert "proxy-connection" not in names
    headers = dict((k.lower(), v) for k, v in seen["headers"])
    assert headers["x-forwarded-for"] == "203.0.113.7, 127.0.0.5"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "localhost"
    assert headers["host"] == "localhost"
    assert headers["x-kept"] == "yes"
    assert names.count("x-forwarded-proto") == 1


def test_response_loses_hop_by_hop_fields(backends, proxy):
    def handler(req: Req, conn: BackendConn) -> None:
        headers = [
            ("Connection", "X-Secret"),
            ("X-Secret", "1"),
            ("Keep-Alive", "timeout=9"),
            ("Proxy-Connection", "x"),
            ("Upgrade", "h2c"),
            ("Trailer", "X-T"),
            ("X-Public", "2"),
        ]
        conn.send(response(200, b"ok", headers))

    res = get(proxy(backends(handler)))
    for hop in ("x-secret", "keep-alive", "proxy-connection", "upgrade", "trailer"):
        assert hop not in res.headers
    assert res.headers["x-public"] == "2"
    assert res.headers["connection"] == "keep-alive"


def test_absolute_form_target_goes_upstream_in_origin_form(backends, proxy):
    server = proxy(backends())
    client = Client(server.port)
    client.send_raw(b"GET http://example.com/a/b?c=d HTTP/1.1\r\nHost: ignored\r\n\r\n")
    seen = json.loads(client.read_response().body)
    assert seen["target"] == "/a/b?c=d"
    assert dict(seen["headers"])["X-Forwarded-Host"] == "example.com"
    client.close()


def test_http10_client_without_host(backends, proxy):
    server = proxy(backends())
    with connect(server.port) as sock:
        sock.sendall(b"GET /x HTTP/1.0\r\n\r\n")
        raw = read_until_close(sock)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nConnection: close\r\n" in raw
    seen = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert ["Host", "localhost"] in seen["headers"]


# --- request bodies ---------------------------------------------------------------------------
def test_content_length_body_streams_with_back_pressure(backends, proxy):
    """48 MiB go up while the upstream reads nothing: the server holds a bounded amount,
    stops reading the client, and everything arrives intact once the upstream reads."""
    release = threading.Event()
    digests = []

    def handler(req: Req, conn: BackendConn) -> None:
        release.wait(10)
        body = conn.reader.body(req)
        digests.append(hashlib.sha256(body).hexdigest())
        conn.send(response(200, str(len(body)).encode()))

    # More than the kernel buffers on the way can hold, so the client really has to wait.
    server = proxy(
        backends(handler, read_body=False),
        limits={"max_body_bytes": 64 << 20},
        timeouts={"upstream_read": 10},  # an upstream that reads nothing for long is a timeout
    )
    body = bytes(range(256)) * 4096 * 48
    client = Client(server.port)
    client.send_raw(b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
    sender = threading.Thread(target=client.sock.sendall, args=(body,))
    sender.start()

    def held() -> bool:
        sessions = list(server.core.sessions.values())
        if not sessions or sessions[0].producer is None:
            return False
        session = sessions[0]
        stream = session.producer
        conn = stream.conn
        return session.conn.read_paused and conn is not None and conn.out.full()

    wait_until(lambda: server.call(held))
    # Bounded: one pipe's threshold plus at most one read in flight, not the whole body.
    pending = server.call(lambda: next(iter(server.core.sessions.values())).producer.conn.out.size)
    assert pending < 1024 * 1024
    assert sender.is_alive()  # the client is still blocked sending
    release.set()
    sender.join(10)
    res = client.read_response()
    assert res.status == 200 and res.body == str(len(body)).encode()
    assert digests == [hashlib.sha256(body).hexdigest()]
    client.close()


def test_chunked_body_is_streamed_chunked(backends, proxy):
    backend = backends()
    server = proxy(backend)
    client = Client(server.port)
    pieces = [b"a" * 70000, b"b" * 5, b"c" * 300000]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    client.send_raw(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    client.send_raw(chunked)
    seen = json.loads(client.read_response().body)
    assert seen["chunked"] is True
    assert seen["body_len"] == sum(map(len, pieces))
    assert backend.requests[0].body == b"".join(pieces)
    # The connection is fine for the next request, and so is the upstream one.
    assert client.request("GET", "/again").status == 200
    assert backend.accepts == 1
    client.close()


def test_upstream_answering_before_the_body_ends(backends, proxy):
    def handler(req: Req, conn: BackendConn) -> None:
        conn.send(response(413, b"too big", [("Connection", "close")]))
        conn.close()

    backend = backends(handler, read_body=False)
    server = proxy(backend)
    client = Client(server.port)
    body = b"z" * 100_000
    client.send_raw(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
    res = client.read_response()
    assert res.status == 413
    client.send_raw(body)  # the rest of the body is read and dropped; the session goes on
    assert client.request("GET", "/").status == 413
    client.close()


# --- response framing ---------------------------------------------------------------------------
def chunked_handler(req: Req, conn: BackendConn) -> None:
    conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for piece in (b"hello ", b"chunked ", b"world"):
        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    conn.send(b"0\r\nX-Trailer: t\r\n\r\n")


def close_handler(req: Req, conn: BackendConn) -> None:
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
    conn.send(b"no length, " * 1000)
    conn.close()


@pytest.mark.parametrize(
    ("handler", "body"),
    [(chunked_handler, b"hello chunked world"), (close_handler, b"no length, " * 1000)],
)
def test_unknown_length_is_rechunked_for_http11(backends, proxy, handler, body):
    backend = backends(handler)
    server = proxy(backend)
    client = Client(server.port)
    for _ in range(2):
        res = client.request("GET", "/")
        assert res.status == 200
        assert res.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in res.headers
        assert res.body == body
    client.close()


@pytest.mark.parametrize(
    ("handler", "body"),
    [(chunked_handler, b"hello chunked world"), (close_handler, b"no length, " * 1000)],
)
def test_unknown_length_closes_after_the_body_for_http10(backends, proxy, handler, body):
    server = proxy(backends(handler))
    with connect(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        raw = read_until_close(sock)
    head, _, got = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head and b"Content-Length" not in head
    assert b"\r\nConnection: close" in head
    assert got == body


def test_head_204_304_have_no_body(backends, proxy):
    def handler(req: Req, conn: BackendConn) -> None:
        if req.target == "/204":
            conn.send(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif req.target == "/304":
            conn.send(b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n')
        else:  # HEAD: the length of the body a GET would get, and no body
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")

    backend = backends(handler)
    server = proxy(backend)
    client = Client(server.port)
    res = client.request("HEAD", "/")
    assert res.status == 200 and res.headers["content-length"] == "1234" and res.body == b""
    assert client.request("GET", "/204").status == 204
    res = client.request("GET", "/304")
    assert res.status == 304 and res.headers["etag"] == '"x"'
    res = client.request("HEAD", "/")
    assert res.status == 200
    assert backend.accepts == 1  # the framing never got out of step
    client.close()


def test_informational_responses_are_forwarded(backends, proxy):
    def handler(req: Req, conn: BackendConn) -> None:
        conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = conn.reader.body(req)
        conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\nKeep-Alive: x\r\n\r\n")
        conn.send(response(200, b"got %d" % len(body)))

    server = proxy(backends(handler, read_body=False))
    client = Client(server.port)
    client.send_raw(
        b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    )
    first = client.sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    client.send_raw(b"data")
    rest = first[len(b"HTTP/1.1 100 Continue\r\n\r\n") :]
    while not rest.endswith(b"got 4"):
        rest += client.sock.recv(65536)
    assert rest.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n")
    client.close()


def test_pipelined_requests_are_answered_in_order(backends, proxy):
    server = proxy(backends())
    client = Client(server.port)
    client.send_raw(b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5)))
    targets = [json.loads(client.read_response().body)["target"] for _ in range(5)]
    assert targets == [f"/{i}" for i in range(5)]
    client.close()


def test_large_response_is_paced_by_the_client(backends, proxy):
    size = 32 * 1024 * 1024

    def handler(req: Req, conn: BackendConn) -> None:
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"r" * (1 << 20)
        for _ in range(size >> 20):
            conn.send(block)

    server = proxy(backends(handler))
    client = Client(server.port)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    client.send_raw(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")

    def paused() -> bool:
        session = next(iter(server.core.sessions.values()))
        stream = session.producer
        return stream is not None and stream.conn is not None and stream.conn.read_paused

    wait_until(lambda: server.call(paused))
    held = server.call(lambda: next(iter(server.core.sessions.values())).conn.out.size)
    assert held < 2 * 1024 * 1024  # a threshold's worth and a read or two, not 32 MiB
    res = client.read_response()
    assert len(res.body) == size and res.body.count(b"r") == size
    assert client.request("GET", "/big").status == 200  # and the upstream connection is reused
    client.close()


# --- pooling and retries ------------------------------------------------------------------------
def test_idle_upstream_connections_are_reused(backends, proxy):
    backend = backends()
    server = proxy(backend)
    for _ in range(3):
        client = Client(server.port)
        for _ in range(4):
            assert client.request("GET", "/").status == 200
        client.close()
    assert backend.accepts == 1
    row = upstream(server, backend.addr)
    assert row["idle"] == 1 and row["requests"] == 12 and row["active"] == 0


def holding(release: threading.Event):
    """A backend handler that answers /hold only once `release` is set, the rest at once."""

    def handler(req: Req, conn: BackendConn) -> None:
        if req.target == "/hold":
            release.wait(10)
        echo(req, conn)

    return handler


def held_in_parallel(backends, proxy, n: int) -> tuple[Backend, RunningServer, list[Client]]:
    """n clients whose requests the backend holds until n upstream connections are open (so
    the proxy had to open them at once), then answers; the clients have read their 200s."""
    release = threading.Event()
    handler = holding(release)

    backend = backends(handler)
    server = proxy(backend)
    clients = [Client(server.port) for _ in range(n)]
    for client in clients:
        client.send_raw(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_until(lambda: backend.accepts == n)
    release.set()
    for client in clients:
        assert client.read_response().status == 200
    return backend, server, clients


def test_concurrent_requests_open_more_connections_then_reuse_them(backends, proxy):
    backend, server, clients = held_in_parallel(backends, proxy, 3)
    assert server.call(lambda: len(server.core.upstreams[backend.addr].idle)) == 3
    for client in clients:
        assert client.request("GET", "/").status == 200
        client.close()
    assert backend.accepts == 3


def test_pool_is_bounded_and_idle_connections_time_out(backends, proxy, monkeypatch):
    monkeypatch.setattr(upstream_module, "IDLE_PER_UPSTREAM", 2)
    monkeypatch.setattr(upstream_module, "IDLE_TIMEOUT", 0.3)
    backend, server, clients = held_in_parallel(backends, proxy, 4)
    for client in clients:
        client.close()
    assert upstream(server, backend.addr)["idle"] == 2  # the other two were closed
    wait_until(lambda: upstream(server, backend.addr)["idle"] == 0)  # then idle too long
    wait_until(lambda: all(conn.closed for conn in backend.conns))


@pytest.mark.parametrize("reset", [False, True])
def test_dead_pooled_connection_is_retried_once_on_a_fresh_one(backends, proxy, reset):
    def handler(req: Req, conn: BackendConn) -> None:
        if req.target == "/die" and conn.index == 1:
            conn.close(reset=reset)  # the request reached a connection that then died
            return
        echo(req, conn)

    backend = backends(handler)
    server = proxy(backend)
    client = Client(server.port)
    assert client.request("GET", "/").status == 200
    res = client.request("GET", "/die")
    assert res.status == 200 and json.loads(res.body)["conn"] == 2
    assert backend.accepts == 2
    assert upstream(server, backend.addr)["failures"] == 0  # not held against the upstream
    client.close()


def test_non_idempotent_request_on_a_dead_pooled_connection_is_not_retried(backends, proxy):
    def handler(req: Req, conn: BackendConn) -> None:
        if req.method == "POST":
            conn.close()
            return
        echo(req, conn)

    backend = backends(handler)
    server = proxy(backend)
    client = Client(server.port)
    assert client.request("GET", "/").status == 200
    client.send_raw(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    res = client.read_response()
    assert res.status == 502 and res.headers["server"] == "eXpServer"
    assert sum(r.method == "POST" for r in backend.requests) == 1
    client.close()


def test_retry_happens_only_once(backends, proxy):
    def handler(req: Req, conn: BackendConn) -> None:
        if req.target == "/die":
            conn.close()
            return
        echo(req, conn)

    backend = backends(handler)
    server = proxy(backend, max_fails=0)
    client = Client(server.port)
    assert client.request("GET", "/").status == 200
    assert client.request("GET", "/die").status == 502
    assert sum(r.target == "/die" for r in backend.requests) == 2
    client.close()


def test_pooled_connection_closed_by_the_upstream_leaves_the_pool(backends, proxy):
    backend = backends()
    server = proxy(backend)
    assert get(server).status == 200
    assert upstream(server, backend.addr)["idle"] == 1
    for conn in backend.conns:
        conn.close()
    wait_until(lambda: upstream(server, backend.addr)["idle"] == 0)
    assert get(server).status == 200
    assert backend.accepts == 2


# --- load balancing -----------------------------------------------------------------------------
def test_weighted_round_robin(backends, proxy):
    a, b = backends(name="a"), backends(name="b")
    server = proxy({"addr": a.addr, "weight": 3}, b.addr)
    client = Client(server.port)
    order = "".join(backend_of(client.request("GET", "/")) for _ in range(8))
    assert order == "aabaaaba"
    client.close()


def test_least_conn_avoids_the_busy_upstream(backends, proxy):
    release = threading.Event()
    handler = holding(release)

    a, b = backends(handler, name="a"), backends(handler, name="b")
    server = proxy(a, b, lb_method="least_conn")
    held = Client(server.port)
    held.send_raw(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_until(lambda: len(a.requests) + len(b.requests) == 1)
    busy = "a" if a.requests else "b"
    others = {backend_of(get(server)) for _ in range(5)}
    assert others == {"b" if busy == "a" else "a"}
    release.set()
    assert backend_of(held.read_response()) == busy
    held.close()
    assert {backend_of(get(server)) for _ in range(4)} == {"a", "b"}


def test_ip_hash_sticks_by_the_first_three_octets(backends, proxy):
    backs = [backends(name=n) for n in "abc"]
    server = proxy(*backs, lb_method="ip_hash")
    chosen = {}
    for net in range(1, 9):
        picks = {backend_of(get(server, source=f"127.0.{net}.{host}")) for host in (1, 2, 3)}
        assert len(picks) == 1, (net, picks)
        chosen[net] = picks.pop()
    assert len(set(chosen.values())) >= 2
    # The same client again, on a new connection: the same upstream.
    assert backend_of(get(server, source="127.0.3.200")) == chosen[3]


# --- health and failover ------------------------------------------------------------------------
def test_refused_connect_moves_on_to_the_next_upstream(backends, proxy):
    live = backends(name="live")
    dead = f"127.0.0.1:{dead_port()}"
    server = proxy(dead, live.addr, max_fails=2, fail_timeout=30)
    assert {backend_of(get(server)) for _ in range(4)} == {"live"}
    row = upstream(server, dead)
    assert row["state"] == "down" and row["failures"] == 2
    assert "refused" in row["last_error"].lower()
    assert upstream(server, live.addr)["state"] == "up"


def test_all_down_is_502_and_an_upstream_comes_back_after_fail_timeout(backends, proxy):
    port = dead_port()
    server = proxy(f"127.0.0.1:{port}", max_fails=1, fail_timeout=0.3)
    client = Client(server.port)
    res = client.request("GET", "/")
    assert res.status == 502 and res.headers["server"] == "eXpServer"
    assert res.headers["connection"] == "keep-alive"
    assert upstream(server, f"127.0.0.1:{port}")["state"] == "down"
    started = time.monotonic()
    assert client.request("GET", "/").status == 502  # down: not even tried
    assert upstream(server, f"127.0.0.1:{port}")["failures"] == 1
    backend = backends(name="back", port=port)
    wait_until(lambda: client.request("GET", "/").status == 200)
    assert time.monotonic() - started >= 0.2
    assert upstream(server, backend.addr)["state"] == "up"
    client.close()


def test_max_fails_zero_keeps_a_failing_upstream_in_rotation(backends, proxy):
    live = backends(name="live")
    dead = f"127.0.0.1:{dead_port()}"
    server = proxy(dead, live.addr, max_fails=0)
    assert {backend_of(get(server)) for _ in range(4)} == {"live"}
    row = upstream(server, dead)
    assert row["state"] == "up" and row["failures"] >= 2


def test_upstream_killed_mid_test(backends, proxy):
    a, b = backends(name="a"), backends(name="b")
    server = proxy(a, b, max_fails=1, fail_timeout=30)
    assert {backend_of(get(server)) for _ in range(4)} == {"a", "b"}
    a.stop()
    assert {backend_of(get(server)) for _ in range(6)} == {"b"}
    assert upstream(server, a.addr)["state"] == "down"


@pytest.fixture
def stalled_addr():
    """An address whose accept queue is full: the kernel drops SYNs, so connects hang."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    addr = lsock.getsockname()
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(addr)
        fillers.append(filler)
    probe = socket.socket()
    probe.settimeout(0.2)
    with pytest.raises(TimeoutError):
        probe.connect(addr)
    probe.close()
    yield f"127.0.0.1:{addr[1]}"
    for sock in [lsock, *fillers]:
        sock.close()


def test_connect_timeout_moves_on_then_502(backends, proxy, stalled_addr):
    live = backends(name="live")
    server = proxy(stalled_addr, live.addr, max_fails=1)
    started = time.monotonic()
    assert {backend_of(get(server)) for _ in range(3)} == {"live"}
    assert time.monotonic() - started < 2
    row = upstream(server, stalled_addr)
    assert row["state"] == "down" and "timed out" in row["last_error"]

    alone = proxy(stalled_addr)
    started = time.monotonic()
    assert get(alone).status == 502
    assert 0.25 <= time.monotonic() - started < 2


def test_body_queued_for_a_failed_connect_moves_to_the_next_upstream(backends, proxy, stalled_addr):
    live = backends(name="live")
    server = proxy(stalled_addr, live.addr, max_fails=0)
    client = Client(server.port)
    # Round robin: stalled (fails over to live), live; the POST then starts at the stalled one
    # again and fails over to live's pooled connection.
    assert backend_of(client.request("GET", "/")) == "live"
    assert backend_of(client.request("GET", "/")) == "live"
    body = bytes(range(256)) * 4096  # 1 MiB: more than the upstream pipe holds while connecting
    client.send_raw(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
    client.send_raw(body)
    res = client.read_response()
    assert backend_of(res) == "live" and json.loads(res.body)["body_len"] == len(body)
    assert live.requests[2].body == body
    assert upstream(server, stalled_addr)["failures"] == 2
    assert live.accepts == 1
    client.close()


def test_read_timeout_is_504_before_the_response(backends, proxy):
    def handler(req: Req, conn: BackendConn) -> None:
        if req.target == "/stall":
            time.sleep(3)  # never answers in time
            return
        echo(req, conn)

    backend = backends(handler)
    server = proxy(backend, max_fails=0)
    client = Client(server.port)
    started = time.monotonic()
    res = client.request("GET", "/stall")
    assert res.status == 504 and res.headers["server"] == "eXpServer"
    assert 0.35 <= time.monotonic() - started < 2
    assert client.request("GET", "/").status == 200  # the client connection lives on
    assert upstream(server, backend.addr)["active"] == 0
    client.close()


def test_route_timeouts_override_the_global_ones(backends, start_server):
    def handler(req: Req, conn: BackendConn) -> None:
        time.sleep(3)

    backend = backends(handler)
    route = {
        "req_path": "/",
        "type": "reverse_proxy",
        "upstreams": [backend.addr],
        "timeouts": {"upstream_read": 0.3},
    }
    server = start_server([route], timeouts={"upstream_read": 30})
    started = time.monotonic()
    assert get(server).status == 504
    assert time.monotonic() - started < 2


def test_stall_mid_response_closes_the_client_connection(backends, proxy):
    def handler(req: Req, conn: BackendConn) -> None:
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        time.sleep(3)

    server = proxy(backends(handler))
    with connect(server.port) as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = read_until_close(sock)
        assert time.monotonic() - started < 2
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(b"\r\n\r\n0123456789")


@pytest.mark.parametrize("reset", [False, True])
@pytest.mark.parametrize("chunked", [False, True])
def test_crash_mid_response_closes_the_client_and_the_server_lives_on(
    backends, proxy, reset, chunked
):
    forwarded = threading.Event()
    if chunked:
        partial = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    else:
        partial = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100

    def handler(req: Req, conn: BackendConn) -> None:
        if req.target == "/ok":
            echo(req, conn)
            return
        conn.send(partial)
        # An RST can make the kernel drop bytes the proxy has not read yet: crash only once
        # the client has seen the response start.
        forwarded.wait(5)
        conn.close(reset=reset)

    server = proxy(backends(handler), max_fails=0)
    with connect(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = b""
        while not raw.endswith(b"hello\r\n" if chunked else b"x" * 100):
            raw += sock.recv(65536)
        forwarded.set()
        raw += read_until_close(sock)  # ends: the connection is closed, not left hanging
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    # Truncated as the client can tell: short of Content-Length, or without the last chunk.
    assert body == (b"5\r\nhello\r\n" if chunked else b"x" * 100)
    assert get(server, "/ok").status == 200


def test_crash_before_the_response_is_502(backends, proxy):
    def handler(req: Req, conn: BackendConn) -> None:
        if req.target == "/ok":
            echo(req, conn)
        else:
            conn.close()

    backend = backends(handler)
    server = proxy(backend, max_fails=3)
    client = Client(server.port)
    assert client.request("GET", "/crash").status == 502
    assert client.request("GET", "/ok").status == 200
    assert upstream(server, backend.addr)["failures"] == 1
    client.close()


def test_garbage_from_the_upstream_is_502(backends, proxy):
    def handler(req: Req, conn: BackendConn) -> None:
        conn.send(b"SSH-2.0-OpenSSH\r\n\r\n")

    assert get(proxy(backends(handler))).status == 502


# --- clients that leave ---------------------------------------------------------------------------
def test_client_leaving_mid_response_closes_the_upstream_connection(backends, proxy):
    release = threading.Event()

    def handler(req: Req, conn: BackendConn) -> None:
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        release.wait(10)

    backend = backends(handler)
    server = proxy(backend)
    sock = connect(server.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sock.close()
    wait_until(lambda: server.call(lambda: not server.core.sessions))
    row = upstream(server, backend.addr)
    assert row["active"] == 0 and row["idle"] == 0
    assert server.call(lambda: server.core.stats.req_current) == 0
    release.set()


# --- operator: drain and enable -----------------------------------------------------------------
def test_drain_lets_requests_in_flight_finish_and_sends_no_new_ones(backends, proxy):
    release = threading.Event()
    handler = holding(release)

    a, b = backends(handler, name="a"), backends(handler, name="b")
    server = proxy(a, b)
    assert {backend_of(get(server)) for _ in range(2)} == {"a", "b"}
    held = Client(server.port)
    held.send_raw(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_until(lambda: any(r.target == "/hold" for r in a.requests + b.requests))
    busy = a if any(r.target == "/hold" for r in a.requests) else b
    other = b if busy is a else a
    row = server.call(lambda: server.core.drain_upstream(busy.addr))
    assert row["state"] == "draining" and row["active"] == 1 and row["idle"] == 0
    assert {backend_of(get(server)) for _ in range(4)} == {other.name}
    release.set()
    assert backend_of(held.read_response()) == busy.name  # the one in flight finished
    held.close()
    assert upstream(server, busy.addr)["idle"] == 0  # and its connection was not kept
    assert server.call(lambda: server.core.enable_upstream(busy.addr))["state"] == "up"
    assert {backend_of(get(server)) for _ in range(4)} == {"a", "b"}
    with pytest.raises(KeyError):
        server.call(lambda: server.core.drain_upstream("127.0.0.1:1"))


def test_upstream_events_reach_the_bus(backends, proxy):
    live = backends(name="live")
    dead = f"127.0.0.1:{dead_port()}"
    server = proxy(dead, live.addr, max_fails=1)
    sub = server.call(server.core.bus.subscribe)
    for _ in range(2):
        assert get(server).status == 200
    kinds = {(e.kind, getattr(e, "upstream", None)) for e in sub.take()}
    assert ("upstream_connected", live.addr) in kinds
    assert ("upstream_failed", dead) in kinds
    assert ("upstream_health", dead) in kinds


# --- operator: drains survive reloads and restarts ----------------------------------------------
def _proxy_config(port: int, state, *addrs: str, **route) -> dict:
    routes = [{"req_path": "/", "type": "reverse_proxy", "upstreams": list(addrs), **route}]
    return server_config(port, routes, state_file=str(state), timeouts=FAST)


def _command(server: RunningServer, name: str, **args) -> dict:
    """An operator command as the console sends it: it answers once the state file holds it."""
    reply = CommandAPI(server.core).submit({"cmd": name, "args": args}).result(5)
    assert reply["ok"], reply
    return reply["result"]


def test_a_drain_survives_a_restart_and_enable_forgets_it(backends, tmp_path):
    a, b = backends(name="a"), backends(name="b")
    state = tmp_path / "state.json"
    # A section another feature owns, and drain entries that make no sense.
    state.write_text(json.dumps({"version": 1, "theirs": {"x": 1}, "drained": ["nonsense", 7]}))
    config = _proxy_config(free_port(), state, a.addr, b.addr)
    first = RunningServer(config, tmp_path)
    try:
        assert upstream(first, a.addr)["state"] == "up"
        row = _command(first, "drain", upstream=a.addr)
        assert row["state"] == "draining" and row["persisted"] is True
    finally:
        first.stop()
    saved = json.loads(state.read_text())
    assert saved["drained"] == [a.addr] and saved["theirs"] == {"x": 1}

    second = RunningServer(config, tmp_path)
    try:
        assert upstream(second, a.addr)["state"] == "draining"
        assert {backend_of(get(second)) for _ in range(4)} == {"b"}
        row = _command(second, "enable", upstream=a.addr)
        assert row["state"] == "up" and row["persisted"] is True
        assert {backend_of(get(second)) for _ in range(4)} == {"a", "b"}
    finally:
        second.stop()
    assert json.loads(state.read_text())["drained"] == []

    third = RunningServer(config, tmp_path)
    try:
        assert upstream(third, a.addr)["state"] == "up"
    finally:
        third.stop()


def test_enable_after_a_passive_down_persists_nothing(backends, tmp_path):
    live = backends(name="live")
    dead = f"127.0.0.1:{dead_port()}"
    state = tmp_path / "state.json"
    config = _proxy_config(free_port(), state, dead, live.addr, max_fails=1, fail_timeout=30)
    server = RunningServer(config, tmp_path)
    try:
        _command(server, "drain", upstream=live.addr)
        assert get(server).status == 502  # only the dead one left: refused, now down
        assert upstream(server, dead)["state"] == "down"
        assert server.call(lambda: server.core.enable_upstream(dead))["state"] == "up"
        assert json.loads(state.read_text())["drained"] == [live.addr]
    finally:
        server.stop()
    server = RunningServer(config, tmp_path)
    try:
        assert upstream(server, dead)["state"] == "up"
        assert upstream(server, live.addr)["state"] == "draining"
    finally:
        server.stop()


def test_a_drain_is_reapplied_when_a_reload_brings_the_upstream_back(backends, tmp_path):
    a, b = backends(name="a"), backends(name="b")
    port = free_port()
    state = tmp_path / "state.json"

    def config(*addrs: str):
        return parse_config(_proxy_config(port, state, *addrs), str(tmp_path))

    server = RunningServer(_proxy_config(port, state, a.addr, b.addr), tmp_path)
    core = server.core
    try:
        server.call(lambda: core.drain_upstream(a.addr))
        server.call(lambda: core.apply(config(b.addr)))
        assert [u["addr"] for u in server.call(core.upstreams_snapshot)] == [b.addr]
        server.call(lambda: core.apply(config(a.addr, b.addr)))
        assert upstream(server, a.addr)["state"] == "draining"
        assert {backend_of(get(server)) for _ in range(4)} == {"b"}
        # Gone from the config again: its drain can still be forgotten by its name.
        server.call(lambda: core.apply(config(b.addr)))
        assert _command(server, "enable", upstream=a.addr)["state"] == "unknown"
        assert json.loads(state.read_text())["drained"] == []
        with pytest.raises(KeyError):
            server.call(lambda: core.enable_upstream(a.addr))
        server.call(lambda: core.apply(config(a.addr, b.addr)))
        assert upstream(server, a.addr)["state"] == "up"
    finally:
        server.stop()
