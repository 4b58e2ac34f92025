"""WebSocket and other upgrades through a reverse_proxy route: the request keeps its Upgrade,
a 101 turns the connection into a byte tunnel (back-pressure each way, half-close, idle
timeout, blocks), and anything else is an ordinary response.

The `websockets` package plays client and upstream; raw sockets and the scripted `Backend`
play the peers of a generic upgrade and of the refusals.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import Server, ServerConnection, serve

from tests.backends import BackendConn, Req, response
from tests.helpers import Client, RunningServer, read_until_close, wait_until
from tests.helpers import connect as tcp_connect
from xps_server.http.parser import ParseError, Request, RequestParser
from xps_server.network.connection import RECV_SIZE
from xps_server.routes.tunnel import Tunnel, requested_upgrade
from xps_server.server.control import CommandAPI

CLEAN_PROTOCOL = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+(/[A-Za-z0-9!#$%&'*+.^_`|~-]+)?")
MESSAGE = 1 << 20  # bytes per message of the large transfers
TRANSFER = 50 * MESSAGE


# --- peers --------------------------------------------------------------------------------------
def echo(ws: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        for message in ws:
            ws.send(message)


@pytest.fixture
def ws_upstream() -> Iterator[Callable[..., int]]:
    """Start a `websockets` server running `handler` per connection; its port."""
    servers: list[Server] = []

    def start(handler: Callable[[ServerConnection], None] = echo) -> int:
        server = serve(handler, "127.0.0.1", 0, compression=None, max_size=None, ping_interval=None)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.socket.getsockname()[1]

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture
def proxy(start_server) -> Callable[..., RunningServer]:
    """A server proxying "/" to `port`, with a metrics route on /status."""

    def start(port: int, **timeouts: float) -> RunningServer:
        routes = [
            {"req_path": "/", "type": "reverse_proxy", "upstreams": [f"127.0.0.1:{port}"]},
            {"req_path": "/status", "type": "metrics"},
        ]
        return start_server(routes, timeouts=timeouts)

    return start


def ws_connect(server: RunningServer, path: str = "/", source: str | None = None):
    sock = tcp_connect(server.port, source=source)
    sock.settimeout(None)
    return connect(
        f"ws://127.0.0.1:{server.port}{path}",
        sock=sock,
        proxy=None,
        compression=None,
        max_size=None,
        ping_interval=None,
        open_timeout=5,
        close_timeout=5,
    )


def command(server: RunningServer, name: str, **args) -> dict:
    reply = CommandAPI(server.core).submit({"cmd": name, "args": args}).result(5)
    assert reply["ok"], reply
    return reply["result"]


def metrics(server: RunningServer) -> dict:
    client = Client(server.port)
    try:
        return json.loads(client.request("GET", "/status").body)
    finally:
        client.close()


def tunnels(server: RunningServer) -> list:
    return server.call(lambda: [s.tunnel for s in server.core.sessions.values() if s.tunnel])


def closed(ws: ClientConnection) -> bool:
    """Whether the connection ended (the client's websockets machinery saw it go)."""
    try:
        ws.recv(timeout=0)
    except TimeoutError:
        return False
    except ConnectionClosed:
        return True
    raise AssertionError("unexpected message")


def gone(server: RunningServer) -> bool:
    """No session nor tunnel left in the server."""
    return server.call(lambda: not server.core.sessions and not server.core.stats.tunnels_current)


UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: echo-proto/1\r\n\r\n"
)


# --- which requests may upgrade -----------------------------------------------------------------
def parsed(head: bytes) -> Request:
    parser = RequestParser()
    parser.feed(head)
    request = parser.next_event()
    assert isinstance(request, Request)
    return request


@pytest.mark.parametrize(
    ("connection", "upgrade", "expected"),
    [
        ("Upgrade", "websocket", "websocket"),
        ("keep-alive, UPGRADE", "WebSocket", "WebSocket"),
        ("upgrade", " foo/1.0 ,, bar ", "foo/1.0, bar"),
        ("close", "websocket", None),
        ("upgraded", "websocket", None),
        ("upgrade", "", None),
        ("upgrade", "h2c", None),
        ("upgrade", "websocket, H2C/1", None),
        ("upgrade", "web socket", None),
        ("upgrade", "a/b/c", None),
        ("upgrade", "websocket/", None),
    ],
)
def test_which_upgrades_are_passed_on(connection, upgrade, expected):
    head = f"GET / HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\nUpgrade: {upgrade}\r\n\r\n"
    assert requested_upgrade(parsed(head.encode())) == expected


_FIELD_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=20)
_CONNECTION = st.lists(
    st.sampled_from(["upgrade", "Upgrade", " UPGRADE ", "close", "keep-alive"]) | _FIELD_TEXT,
    max_size=4,
).map(",".join)
_UPGRADE = st.lists(
    st.sampled_from(["websocket", "h2c", "H2C/2", "foo/1.0", " x ", "a/b/c", ""]) | _FIELD_TEXT,
    max_size=4,
).map(",".join)


@given(connection=_CONNECTION, upgrade=_UPGRADE)
def test_a_passed_on_upgrade_is_always_a_clean_protocol_list(connection, upgrade):
    """Whatever the fields hold, what goes upstream is protocol tokens joined by ", ", and the
    request asked for it: never h2c, never anything that could break the head."""
    head = f"GET / HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\nUpgrade: {upgrade}\r\n\r\n"
    try:
        request = parsed(head.encode("latin-1"))
    except ParseError:
        return
    protocols = requested_upgrade(request)
    event(f"passed on: {protocols is not None}")
    if protocols is None:
        return
    assert "upgrade" in [t.strip(" \t") for t in connection.lower().split(",")]
    for protocol in protocols.split(", "):
        assert CLEAN_PROTOCOL.fullmatch(protocol)
        assert protocol.partition("/")[0].lower() != "h2c"


# --- messages through -------------------------------------------------------------------------
def test_text_and_binary_messages_echo_through(ws_upstream, proxy):
    seen = {}

    def handler(ws: ServerConnection) -> None:
        seen["headers"] = ws.request.headers
        seen["path"] = ws.request.path
        echo(ws)

    server = proxy(ws_upstream(handler))
    with ws_connect(server, "/chat?room=1") as ws:
        ws.send("héllo")
        assert ws.recv() == "héllo"
        payload = bytes(range(256)) * 100
        ws.send(payload)
        assert ws.recv() == payload
        ws.send(b"")
        assert ws.recv() == b""
    headers = seen["headers"]
    assert seen["path"] == "/chat?room=1"
    assert headers["Upgrade"] == "websocket"
    assert headers["Connection"].lower() == "upgrade"
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert "Sec-WebSocket-Key" in headers
    wait_until(lambda: gone(server))


def test_tunnel_is_a_session_in_state_tunnel_and_counted(ws_upstream, proxy):
    server = proxy(ws_upstream())
    before = metrics(server)
    assert before["tunnels_current"] == 0 and before["tunnels_total"] == 0
    with ws_connect(server, "/live") as ws:
        ws.send(b"x" * 5000)
        assert ws.recv() == b"x" * 5000
        rows = command(server, "snapshot")["sessions"]["rows"]
        (row,) = [r for r in rows if r["state"] == "tunnel"]
        assert row["request"] == "GET /live"
        assert row["bytes_in"] > 5000 and row["bytes_out"] > 5000  # the head and a frame each way
        during = metrics(server)
        assert during["tunnels_current"] == 1 and during["tunnels_total"] == 1
        client = Client(server.port)
        text = client.request("GET", "/status?format=prometheus").body.decode()
        client.close()
        assert "xps_tunnels_current 1\n" in text and "xps_tunnels_total 1\n" in text
    wait_until(lambda: metrics(server)["tunnels_current"] == 0)
    assert metrics(server)["tunnels_total"] == 1


def test_a_closed_tunnel_leaves_no_reference_cycle(ws_upstream, proxy):
    """The server makes cyclic garbage collection rare: a tunnel must be freed by its close."""
    server = proxy(ws_upstream())
    gc.collect()
    gc.disable()
    try:
        with ws_connect(server) as ws:
            ws.send("x")
            assert ws.recv() == "x"
            assert len(tunnels(server)) == 1
        wait_until(lambda: gone(server))
        server.call(server.core.accounting.report)  # it holds finished sessions until then
        alive = server.call(lambda: sum(type(o) is Tunnel for o in gc.get_objects()))
        assert alive == 0
    finally:
        gc.enable()


# --- closes ---------------------------------------------------------------------------------------
def test_client_close_reaches_the_upstream(ws_upstream, proxy):
    codes = []
    done = threading.Event()

    def handler(ws: ServerConnection) -> None:
        echo(ws)
        codes.append(ws.close_code)
        done.set()

    server = proxy(ws_upstream(handler))
    with ws_connect(server) as ws:
        ws.send("one")
        assert ws.recv() == "one"
        ws.close(4000, "client leaves")
    assert done.wait(5)
    assert codes == [4000]
    wait_until(lambda: gone(server))


def test_upstream_close_reaches_the_client(ws_upstream, proxy):
    def handler(ws: ServerConnection) -> None:
        assert ws.recv() == "bye?"
        ws.close(4001, "upstream leaves")

    server = proxy(ws_upstream(handler))
    with ws_connect(server) as ws:
        ws.send("bye?")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4001
    assert info.value.rcvd.reason == "upstream leaves"
    wait_until(lambda: gone(server))


def half_closing_upstream(req: Req, conn: BackendConn) -> None:
    """Switch to `echo-proto`, take bytes until the client's end, then answer what it got
    (length and digest), and close."""
    conn.send(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo-proto/1\r\n\r\n"
    )
    received = bytearray(conn.reader.buf)
    conn.reader.buf.clear()
    while True:
        data = conn.sock.recv(65536)
        if not data:
            break
        received += data
    conn.send(f"{len(received)} {hashlib.sha256(received).hexdigest()}".encode())
    conn.close()


def test_half_close_passes_both_ways_in_any_protocol(backends, proxy):
    backend = backends(half_closing_upstream)
    server = proxy(backend.port)
    body = bytes(range(256)) * 4000
    with tcp_connect(server.port) as sock:
        sock.sendall(UPGRADE)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert b"\r\nUpgrade: echo-proto/1\r\n" in head
        assert b"\r\nConnection: upgrade\r\n" in head
        sock.sendall(body)
        sock.shutdown(socket.SHUT_WR)  # the upstream answers only once it sees our end
        answer = read_until_close(sock)
    assert answer == f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()
    (req,) = backend.requests
    assert req.header("upgrade") == "echo-proto/1"
    assert req.header("connection") == "upgrade"
    wait_until(lambda: gone(server))


def test_bytes_sent_right_after_the_request_belong_to_the_tunnel(backends, proxy):
    """A request pipelined behind the upgrade is not HTTP to us: the upstream gets it raw."""
    backend = backends(half_closing_upstream)
    server = proxy(backend.port)
    tail = b"GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with tcp_connect(server.port) as sock:
        sock.sendall(UPGRADE + tail)
        sock.shutdown(socket.SHUT_WR)
        data = read_until_close(sock)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert rest == f"{len(tail)} {hashlib.sha256(tail).hexdigest()}".encode()
    assert len(backend.requests) == 1


# --- timeouts and blocks -----------------------------------------------------------------------
def test_idle_tunnel_is_closed_after_timeouts_tunnel(ws_upstream, proxy):
    server = proxy(ws_upstream(), tunnel=0.3)
    with ws_connect(server) as ws:
        ws.send("ping")
        assert ws.recv() == "ping"
        wait_until(lambda: closed(ws))
    wait_until(lambda: gone(server))
    assert metrics(server)["conn_timeout"] == 1


def test_tunnel_timeout_is_validated_like_the_others(tmp_path):
    from xps_server.config import ConfigError, parse_config

    data = {
        "timeouts": {"tunnel": 0},
        "servers": [{"listeners": [{"host": "127.0.0.1", "port": 1}], "routes": []}],
    }
    with pytest.raises(ConfigError, match=r"timeouts\.tunnel"):
        parse_config(data, str(tmp_path))
    del data["timeouts"]
    assert parse_config(data, str(tmp_path)).timeouts.tunnel == 3600.0


def test_a_block_closes_the_clients_tunnels(ws_upstream, proxy):
    ended = threading.Event()

    def handler(ws: ServerConnection) -> None:
        echo(ws)
        ended.set()

    server = proxy(ws_upstream(handler))
    with ws_connect(server, source="127.0.0.2") as blocked, ws_connect(server) as other:
        blocked.send("a")
        assert blocked.recv() == "a"
        assert command(server, "block", cidr="127.0.0.2")["closed"] == 1
        wait_until(lambda: closed(blocked))
        assert ended.wait(5)  # the upstream side went too
        other.send("still here")
        assert other.recv() == "still here"
        assert server.call(lambda: server.core.stats.tunnels_current) == 1


def test_a_block_on_the_route_closes_the_clients_tunnels_there(ws_upstream, start_server):
    port = ws_upstream()
    routes = [
        {"req_path": path, "type": "reverse_proxy", "upstreams": [f"127.0.0.1:{port}"]}
        for path in ("/a", "/b")
    ]
    server = start_server(routes)
    with (
        ws_connect(server, "/a", source="127.0.0.2") as on_a,
        ws_connect(server, "/b", source="127.0.0.2") as on_b,
    ):
        for ws in (on_a, on_b):
            ws.send("hi")
            assert ws.recv() == "hi"
        assert command(server, "block", cidr="127.0.0.2", route="/a")["closed"] == 1
        wait_until(lambda: closed(on_a))
        on_b.send("still here")
        assert on_b.recv() == "still here"
        client = Client(server.port, source="127.0.0.2")
        assert client.request("GET", "/a").status == 403
        client.close()


def test_kill_closes_a_tunnel(ws_upstream, proxy):
    server = proxy(ws_upstream())
    with ws_connect(server) as ws:
        ws.send("a")
        assert ws.recv() == "a"
        (row,) = command(server, "snapshot")["sessions"]["rows"]
        assert command(server, "kill", session=row["id"])["killed"]["state"] == "tunnel"
        wait_until(lambda: closed(ws))
    wait_until(lambda: gone(server))


def test_shutdown_leaves_tunnels_their_grace_then_closes_them(ws_upstream, proxy):
    server = proxy(ws_upstream())
    with ws_connect(server) as ws:
        server.server.shutdown(grace=3)
        wait_until(lambda: server.call(lambda: server.core.draining))
        ws.send("still open")  # the drain took no further request, yet the tunnel goes on
        assert ws.recv() == "still open"
        wait_until(lambda: closed(ws), timeout=15)
    assert server.server.wait(5)


# --- what is not tunneled -----------------------------------------------------------------------
def test_a_refused_upgrade_is_an_ordinary_response_then_a_close(backends, proxy):
    def refuse(req: Req, conn: BackendConn) -> None:
        conn.send(response(403, b"no websockets here", [("Content-Type", "text/plain")]))

    backend = backends(refuse)
    server = proxy(backend.port)
    pipelined = b"GET /next HTTP/1.1\r\nHost: localhost\r\n\r\n"
    data = b""
    with tcp_connect(server.port) as sock:
        sock.sendall(UPGRADE + pipelined)
        data = read_until_close(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 ")
    assert b"\r\nConnection: close" in head
    assert body == b"no websockets here"  # one response: the bytes after it are never parsed
    assert [r.target for r in backend.requests] == ["/chat"]
    assert backend.requests[0].header("upgrade") == "echo-proto/1"
    assert metrics(server)["tunnels_total"] == 0


NOT_UPGRADES = {
    "POST with a body": b"POST /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nContent-Length: 5\r\n\r\nhello",
    "GET with a body": b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nContent-Length: 5\r\n\r\nhello",
    "chunked GET": b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "HTTP/1.0": b"GET /chat HTTP/1.0\r\nHost: x\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\n\r\n",
    "no Connection: upgrade": b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
    "h2c": b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    "malformed protocol": b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
    b"Upgrade: web socket\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", NOT_UPGRADES.values(), ids=NOT_UPGRADES.keys())
def test_other_requests_lose_upgrade_and_a_101_to_them_is_a_bad_gateway(
    backends, proxy, request_bytes
):
    def switch_anyway(req: Req, conn: BackendConn) -> None:
        conn.send(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        )

    backend = backends(switch_anyway)
    server = proxy(backend.port)
    client = Client(server.port)
    try:
        client.send_raw(request_bytes)
        assert client.read_response().status == 502
    finally:
        client.close()
    (req,) = backend.requests
    assert req.header("upgrade") is None
    assert req.header("connection") is None
    assert metrics(server)["tunnels_total"] == 0


def test_a_101_without_upgrade_is_a_bad_gateway(backends, proxy):
    def switch_to_nothing(req: Req, conn: BackendConn) -> None:
        conn.send(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n")

    server = proxy(backends(switch_to_nothing).port)
    with tcp_connect(server.port) as sock:
        sock.sendall(UPGRADE)
        assert read_until_close(sock).startswith(b"HTTP/1.1 502 ")


@pytest.mark.parametrize("switched_to", ["h2c", "websocket", "echo-proto/1, h2c"])
def test_a_101_to_a_protocol_not_offered_is_a_bad_gateway(backends, proxy, switched_to):
    def switch_elsewhere(req: Req, conn: BackendConn) -> None:
        conn.send(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
            b"Upgrade: %s\r\n\r\n" % switched_to.encode()
        )

    server = proxy(backends(switch_elsewhere).port)
    with tcp_connect(server.port) as sock:
        sock.sendall(UPGRADE)  # offers echo-proto/1 only
        assert read_until_close(sock).startswith(b"HTTP/1.1 502 ")
    assert metrics(server)["tunnels_total"] == 0


def test_a_101_may_name_the_offered_protocol_in_another_case(backends, proxy):
    def switch(req: Req, conn: BackendConn) -> None:
        conn.send(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
            b"Upgrade: Echo-Proto/1\r\n\r\n"
        )
        conn.close()

    server = proxy(backends(switch).port)
    with tcp_connect(server.port) as sock:
        sock.sendall(UPGRADE)
        assert read_until_close(sock).startswith(b"HTTP/1.1 101 ")
    assert metrics(server)["tunnels_total"] == 1


# --- back-pressure ------------------------------------------------------------------------------
def buffered(server: RunningServer) -> tuple[int, int, bool, bool]:
    """(bytes the tunnel holds toward the client, toward the upstream, whether it stopped
    reading the upstream, the client), read on the loop thread; all nothing once it ended."""

    def look() -> tuple[int, int, bool, bool]:
        found = [s.tunnel for s in server.core.sessions.values() if s.tunnel]
        if not found:
            return 0, 0, False, False
        client, upstream = found[0].client.conn, found[0].upstream.conn
        return client.out.size, upstream.out.size, upstream.read_paused, client.read_paused

    return server.call(look)


def bound(server: RunningServer) -> int:
    """The most one direction may hold: a pipe's threshold plus one read."""
    (tunnel,) = tunnels(server)
    return tunnel.client.conn.out.threshold + RECV_SIZE


def message(i: int) -> bytes:
    return i.to_bytes(4, "big") * (MESSAGE // 4)


def test_50_mb_to_a_slow_client_holds_bounded_memory(ws_upstream, proxy):
    sent = []

    def firehose(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            for i in range(TRANSFER // MESSAGE):
                ws.send(message(i))
                sent.append(i)

    server = proxy(ws_upstream(firehose))
    with ws_connect(server) as ws:
        limit = bound(server)
        # Nothing is read: the server must stop reading the upstream, the upstream stall.
        wait_until(lambda: buffered(server)[2])
        toward_client, _, _, _ = buffered(server)
        assert toward_client <= limit
        assert len(sent) < TRANSFER // MESSAGE
        peak = toward_client
        for i in range(TRANSFER // MESSAGE):
            assert ws.recv(timeout=10) == message(i)
            peak = max(peak, buffered(server)[0])
        assert peak <= limit
    assert len(sent) == TRANSFER // MESSAGE


def test_50_mb_to_a_slow_upstream_holds_bounded_memory(ws_upstream, proxy):
    go = threading.Event()
    received = []

    def slow_sink(ws: ServerConnection) -> None:
        assert go.wait(30)
        with contextlib.suppress(ConnectionClosed):
            for data in ws:
                received.append(data == message(len(received)))
                if len(received) == TRANSFER // MESSAGE:
                    ws.send("all")

    server = proxy(ws_upstream(slow_sink))
    with ws_connect(server) as ws:
        limit = bound(server)
        progress = []

        def send_all() -> None:
            for i in range(TRANSFER // MESSAGE):
                ws.send(message(i))
                progress.append(i)

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        wait_until(lambda: buffered(server)[3])  # the server stopped reading the client
        toward_upstream = buffered(server)[1]
        assert toward_upstream <= limit
        assert len(progress) < TRANSFER // MESSAGE
        go.set()
        peak = toward_upstream
        while sender.is_alive():
            peak = max(peak, buffered(server)[1])
            sender.join(0.05)
        assert peak <= limit
        assert ws.recv(timeout=30) == "all"
    assert all(received) and len(received) == TRANSFER // MESSAGE
