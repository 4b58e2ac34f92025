"""The `Server` lifecycle on real configs and real sockets: start, run, reload, shutdown, close."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    Client,
    accepts,
    connect,
    files_route,
    free_port,
    read_until_close,
    server_config,
    wait_until,
    write_config,
)
from tests.test_control import LineClient
from xps_server.config import load_config
from xps_server.server.lifecycle import Server

MOVED = {"req_path": "/moved", "type": "redirect", "http_status_code": 301, "redirect_url": "/"}


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Callable[..., tuple[Server, Path, int]]]:
    """Start a Server from a config file on a free port, its loop on a background thread."""
    servers: list[Server] = []

    def start(routes: list[dict], signals: bool = False, **top) -> tuple[Server, Path, int]:
        port = free_port()
        path = write_config(tmp_path / "config.json", server_config(port, routes, **top))
        server = Server(load_config(str(path)), grace=5.0)
        servers.append(server)
        server.start(signals=signals)
        server.run(background=True)
        return server, path, port

    yield start
    for server in servers:
        server.close()


def test_start_serves_http_and_the_control_socket_and_stop_releases_both(started, site, tmp_path):
    ctl = tmp_path / "ctl.sock"
    server, _, port = started([files_route(site)], control_socket=str(ctl))
    assert server.running
    client = Client(port)
    assert client.request("GET", "/hello.txt").body == b"hello world\n"
    control = LineClient(str(ctl))
    control.send({"id": 1, "cmd": "ping"})
    assert control.read() == {"id": 1, "ok": True, "result": "pong"}
    assert server.stop() is True
    assert not server.running
    assert not accepts(port)
    assert not ctl.exists()
    assert client.closed_by_peer()
    control.close()
    client.close()


def test_reload_applies_the_new_config_file(started, site):
    server, path, port = started([files_route(site)])
    client = Client(port)
    assert client.request("GET", "/moved").status == 404
    write_config(path, server_config(port, [files_route(site), MOVED]))
    ok, message = server.reload().result(5)
    assert ok and "reloaded" in message
    assert client.request("GET", "/moved").status == 301  # same connection, new routes
    client.close()


def test_a_bad_reload_keeps_the_running_config_serving(started, site):
    server, path, port = started([files_route(site), MOVED])
    client = Client(port)
    path.write_text(json.dumps({"servers": "not a list"}))
    ok, message = server.reload().result(5)
    assert not ok and "rejected" in message
    assert client.request("GET", "/moved").status == 301
    # A config whose new listener cannot be bound changes nothing either.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        other = taken.getsockname()[1]
        data = server_config(port, [files_route(site)])
        data["servers"][0]["listeners"].append({"host": "127.0.0.1", "port": other})
        write_config(path, data)
        ok, message = server.reload().result(5)
    assert not ok and "cannot bind" in message
    assert client.request("GET", "/moved").status == 301
    assert server.config.servers[0].route_map.get("/moved") is not None
    assert Client(port).request("GET", "/hello.txt").status == 200
    client.close()


def test_shutdown_stops_accepting_and_lets_an_in_flight_response_finish(started, site):
    # Far more than loopback socket buffers hold: most of it is still to send at shutdown.
    body = bytes(range(256)) * (64 << 10 << 2)  # 64 MiB
    (site / "huge.bin").write_bytes(body)
    server, _, port = started([files_route(site)])
    sock = connect(port)
    sock.sendall(b"GET /huge.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    received = bytearray(sock.recv(65536))
    server.shutdown(grace=30)
    wait_until(lambda: not accepts(port))
    assert server.running  # the response in flight keeps it up
    while chunk := sock.recv(1 << 20):
        received += chunk
    assert bytes(received).partition(b"\r\n\r\n")[2] == body
    assert server.wait(10)  # stopped once that response was out, well before the grace
    sock.close()


def test_shutdown_answers_a_connection_accepted_before_it_sent_its_request(started, site):
    # A reload of workers stops the old ones while clients they accepted are still sending.
    server, _, port = started([files_route(site)])
    sock = connect(port)
    core = server.core
    wait_until(lambda: core.sessions)
    server.shutdown(grace=30)
    wait_until(lambda: not accepts(port))
    sock.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = read_until_close(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head
    assert body == b"hello world\n"
    assert server.wait(10)
    sock.close()


def test_shutdown_closes_what_is_still_in_flight_when_the_grace_runs_out(started, site):
    (site / "huge.bin").write_bytes(b"x" * (64 << 20))
    server, _, port = started([files_route(site)])
    sock = connect(port)
    sock.sendall(b"GET /huge.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    first = sock.recv(65536)
    server.shutdown(grace=0.2)  # and never read again: only the grace ends it
    assert server.wait(10)
    assert server.close()
    head, _, cut = (first + read_until_close(sock)).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and len(cut) < 64 << 20
    sock.close()


def test_start_fails_with_nothing_left_bound(tmp_path, site):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        data = server_config(port, [files_route(site)])
        data["servers"][0]["listeners"].append(
            {"host": "127.0.0.1", "port": taken.getsockname()[1]}
        )
        server = Server(load_config(str(write_config(tmp_path / "c.json", data))))
        with pytest.raises(OSError):
            server.start()
    assert server.core is None and not accepts(port)
    # A control socket path that cannot be bound releases the listeners too.
    (tmp_path / "not-a-socket").write_text("")
    data = server_config(port, [files_route(site)], control_socket=str(tmp_path / "not-a-socket"))
    server = Server(load_config(str(write_config(tmp_path / "c.json", data))))
    with pytest.raises(OSError, match="not a socket"):
        server.start()
    assert server.core is None and not accepts(port)
    assert server.close()


def test_signals_reload_and_shut_down_and_are_given_back(started, site):
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
    server, path, port = started([files_route(site)], signals=True)
    client = Client(port)
    write_config(path, server_config(port, [files_route(site), MOVED]))
    os.kill(os.getpid(), signal.SIGHUP)
    wait_until(lambda: client.request("GET", "/moved").status == 301)
    os.kill(os.getpid(), signal.SIGTERM)
    assert server.wait(10)
    assert client.closed_by_peer()
    assert server.close()
    assert {signum: signal.getsignal(signum) for signum in before} == before
    client.close()
