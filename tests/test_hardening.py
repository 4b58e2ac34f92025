"""Abuse and resource-limit regressions, end to end over real loopback sockets.

Each test names the finding of the security probe it guards: out of descriptors (accepts and
upstream connects), pipelined work bounded per connection, idle connections reclaimed at
max_connections, and one request getting one response when its body breaks after the answer.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import h11
import pytest

from tests.backends import Backend, BackendConn, Req
from tests.helpers import (
    Client,
    connect,
    raw_exchange,
    read_until_close,
    slow_client,
    wait_until,
)

GET = b"GET /hello.txt HTTP/1.1\r\nHost: a\r\n\r\n"


@contextmanager
def out_of_descriptors() -> Iterator[None]:
    """This process (and so an in-process server) can open no new descriptor until the end.

    The soft RLIMIT_NOFILE is lowered just above the highest descriptor in use and every free
    number below it is taken, so the next socket() or accept() fails with EMFILE for real.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(name) for name in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))
    held = []
    try:
        while True:
            try:
                held.append(os.open("/dev/null", os.O_RDONLY))
            except OSError as exc:
                if exc.errno != errno.EMFILE:
                    raise
                break
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def responses_in(data: bytes, method: str = "GET") -> list[int]:
    """Status codes of the responses in `data`, read as a client would (h11); every byte of
    `data` must belong to one of them."""
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    statuses = []
    while True:
        if conn.our_state is h11.IDLE:  # h11 frames a response by the request it answers
            headers = [("Host", "a"), ("Content-Length", "0")]
            conn.send(h11.Request(method=method, target="/", headers=headers))
            conn.send(h11.EndOfMessage())
        event = conn.next_event()
        if isinstance(event, h11.Response):
            statuses.append(event.status_code)
        elif isinstance(event, h11.EndOfMessage):
            if conn.their_state is not h11.DONE:
                break  # the server said it closes after this one
            conn.start_next_cycle()
        elif event is h11.NEED_DATA:
            break
    assert conn.trailing_data[0] == b"", f"bytes past the responses: {conn.trailing_data[0]!r}"
    return statuses


@pytest.fixture
def files(start_server, site):
    return start_server([{"req_path": "/", "type": "file_serve", "dir_path": str(site)}])


# --- finding 3: out of descriptors at accept ---------------------------------------------------
def test_out_of_descriptors_accepting_pauses_and_logs_once(files, caplog):
    listener = next(iter(files.core.listeners.values()))
    waiting = [socket.socket() for _ in range(20)]  # made while descriptors are still there
    with caplog.at_level(logging.ERROR, logger="xps.listener"), out_of_descriptors():
        for sock in waiting:
            sock.setblocking(False)
            sock.connect_ex((files.host, files.port))
        # The first failure, then two retries: every client arrived long before.
        wait_until(lambda: listener.accept_failures >= 3)
    lines = [r for r in caplog.records if r.name == "xps.listener"]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "Too many open files" in lines[0].getMessage()
    # Descriptors are back: the clients that waited in the backlog are served.
    for sock in waiting:
        sock.setblocking(True)
        sock.settimeout(5)
        sock.sendall(GET)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
        sock.close()
    assert files.call(files.core.metrics_snapshot)["conn_accept_failures"] >= 3


# --- finding 5: out of descriptors at an upstream connect ---------------------------------------
def test_local_connect_failure_is_503_and_never_marks_the_upstream_down(start_server):
    backend = Backend()
    try:
        server = start_server(
            [{"req_path": "/", "type": "reverse_proxy", "upstreams": [backend.addr]}]
        )
        client = Client(server.port)
        wait_until(lambda: server.call(lambda: len(server.core.sessions)) == 1)
        with out_of_descriptors():
            res = client.request("GET", "/x")
        assert res.status == 503
        state = server.call(lambda: server.core.upstreams[backend.addr].snapshot())
        assert (state["state"], state["fails"], state["failures"]) == ("up", 0, 0)
        assert client.request("GET", "/x").status == 200  # at once, not after fail_timeout
        client.close()
    finally:
        backend.stop()


# --- finding 4: pipelined work is bounded per connection ----------------------------------------
def test_pipelined_requests_wait_while_a_response_is_queued(start_server, tmp_path):
    root = tmp_path / "big"
    root.mkdir()
    (root / "60k.bin").write_bytes(os.urandom(60 * 1024))
    server = start_server([{"req_path": "/", "type": "file_serve", "dir_path": str(root)}])
    sock = slow_client(server)
    sock.sendall(b"GET /60k.bin HTTP/1.1\r\nHost: a\r\n\r\n" * 200)
    core = server.core

    def session_state():
        session = next(iter(core.sessions.values()))
        conn = session.conn
        return conn.read_paused, core.stats.req_total, conn.out.size, conn.bytes_out

    wait_until(lambda: server.call(session_state)[0])
    _, taken, queued, written = server.call(session_state)
    # Each request was taken only once the one before it was wholly handed to the kernel: one
    # response is queued at most, the other requests wait unparsed in the socket.
    response = 60 * 1024 + 300
    assert 0 < queued <= response
    assert written >= (taken - 1) * 60 * 1024
    assert taken < 10

    def queued_body_is_the_cached_one() -> bool:
        cached = next(iter(core.files.entries.values())).body
        items = next(iter(core.sessions.values())).conn.out.items
        return any((i.obj if isinstance(i, memoryview) else i) is cached for i in items)

    # What waits is a view of the cached bytes, not a copy per client.
    assert server.call(queued_body_is_the_cached_one)
    sock.close()
    wait_until(lambda: server.call(lambda: not core.sessions))


def test_pipelined_requests_are_all_answered_in_order(files):
    with connect(files.port) as sock:
        sock.sendall(GET * 50 + b"GET /hello.txt HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        data = read_until_close(sock)
    assert responses_in(data) == [200] * 51


def test_pipelined_requests_before_a_half_close_are_all_answered(start_server):
    backend = Backend()
    try:
        server = start_server(
            [{"req_path": "/", "type": "reverse_proxy", "upstreams": [backend.addr]}]
        )
        with connect(server.port) as sock:
            sock.sendall(GET * 3)  # the half-close arrives while the first is upstream
            sock.shutdown(socket.SHUT_WR)
            data = read_until_close(sock)
        assert responses_in(data) == [200] * 3
    finally:
        backend.stop()


def test_bytes_pipelined_behind_a_proxied_request_wait_in_the_socket(start_server):
    """While a proxied response is pending, the session holds at most about one head of what
    the client pipelines: the rest stays in the socket, not in the server's memory."""
    answer = threading.Event()

    def slow(req: Req, conn: BackendConn) -> None:
        answer.wait(30)
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    backend = Backend(slow)
    try:
        server = start_server(
            [{"req_path": "/", "type": "reverse_proxy", "upstreams": [backend.addr]}]
        )
        with connect(server.port) as sock:
            sock.sendall(GET)
            wait_until(lambda: len(backend.requests) == 1)
            sock.setblocking(False)
            pushed = 0
            chunk = b"x" * 65536
            # Push until the kernel's buffers are full: the server has stopped reading.
            with contextlib.suppress(BlockingIOError):
                while pushed < 64 * 1024 * 1024:
                    pushed += sock.send(chunk)

            def buffered() -> tuple[int, bool]:
                session = next(iter(server.core.sessions.values()))
                return session.parser.buffered, session.conn.read_paused

            held, paused = server.call(buffered)
            assert paused
            assert held <= 16384 + 65536  # one head's worth, plus the read that crossed it
            assert pushed > 4 * held  # the rest waits in the socket buffers
            answer.set()
    finally:
        answer.set()
        backend.stop()


# --- finding 9: idle keep-alive connections make room at max_connections -----------------------
def test_at_max_connections_the_oldest_idle_connection_makes_room(start_server, site):
    server = start_server(
        [{"req_path": "/", "type": "file_serve", "dir_path": str(site)}],
        limits={"max_connections": 3},
    )
    clients = [Client(server.port) for _ in range(3)]
    for client in clients:
        assert client.request("GET", "/hello.txt").status == 200  # now idle keep-alive
    newcomer = Client(server.port)
    assert newcomer.request("GET", "/hello.txt").status == 200
    assert clients[0].closed_by_peer()  # the oldest idle one went
    assert clients[2].request("GET", "/hello.txt").status == 200
    assert server.call(server.core.metrics_snapshot)["conn_reclaimed"] == 1
    for client in [*clients, newcomer]:
        client.close()


def test_at_max_connections_busy_connections_are_kept(start_server, site):
    server = start_server(
        [{"req_path": "/", "type": "file_serve", "dir_path": str(site)}],
        limits={"max_connections": 2},
    )
    busy = [connect(server.port) for _ in range(2)]
    for sock in busy:
        sock.sendall(b"GET /hello.txt HTTP/1.1\r\n")  # a head in progress: not reclaimable
    wait_until(lambda: server.call(lambda: not server.core.idle and len(server.core.sessions)) == 2)
    with connect(server.port) as refused:
        assert read_until_close(refused) == b""
    for sock in busy:
        sock.sendall(b"Host: a\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
        sock.close()


# --- findings 11 and 16: one request, one response ---------------------------------------------
def chunked_post(target: str, chunks: list[bytes], tail: bytes = b"0\r\n\r\n") -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    head = f"POST {target} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    return head + body + tail


@pytest.fixture
def answering_routes(start_server, site):
    return start_server(
        [
            {"req_path": "/", "type": "file_serve", "dir_path": str(site)},
            {
                "req_path": "/old",
                "type": "redirect",
                "http_status_code": 301,
                "redirect_url": "/",
            },
            {
                "req_path": "/private",
                "type": "file_serve",
                "dir_path": str(site),
                "ip_whitelist": ["10.0.0.0/8"],
            },
            {"req_path": "/status", "type": "metrics"},
        ],
        limits={"max_body_bytes": 1000},
    )


@pytest.mark.parametrize(
    ("target", "status"),
    [("/hello.txt", 405), ("/old", 301), ("/private/x", 403), ("/status", 405)],
)
@pytest.mark.parametrize(
    "broken",
    [
        pytest.param([b"x" * 600, b"y" * 600], id="chunked-over-limit"),
        pytest.param([b"x" * 10], id="bad-chunk-size"),
    ],
)
def test_a_body_that_breaks_after_the_answer_gets_no_second_response(
    answering_routes, target, status, broken
):
    tail = b"zz\r\n" if len(broken) == 1 else b"0\r\n\r\n"
    data = raw_exchange(answering_routes.port, chunked_post(target, broken, tail))
    assert responses_in(data, "POST") == [status]


def test_a_proxied_body_over_the_limit_gets_one_413_and_no_reset(start_server):
    release = threading.Event()

    def holds(req: Req, conn: BackendConn) -> None:
        release.wait(10)  # reads the head only, answers nothing while the body streams
        conn.close()

    backend = Backend(holds, read_body=False)
    try:
        server = start_server(
            [{"req_path": "/", "type": "reverse_proxy", "upstreams": [backend.addr]}],
            limits={"max_body_bytes": 100_000},
        )
        with connect(server.port) as sock:
            sock.sendall(chunked_post("/upload", [b"x" * 60_000], tail=b""))
            # The client keeps sending: the 413 must reach it all the same.
            for _ in range(20):
                try:
                    sock.sendall(b"%x\r\n%s\r\n" % (60_000, b"y" * 60_000))
                except OSError:
                    break
            data = read_until_close(sock)
        assert responses_in(data, "POST") == [413]
        assert server.call(lambda: server.core.upstreams[backend.addr].snapshot()["fails"]) == 0
    finally:
        release.set()
        backend.stop()
