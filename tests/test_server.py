"""The headless server as a user runs it: a real `xps-server` subprocess, signals, timeouts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (
    Client,
    accepts,
    connect,
    free_port,
    raw_exchange,
    server_config,
    status_of,
    wait_until,
    write_config,
)

XPS = [sys.executable, "-m", "xps_server"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*XPS, *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def spawn(tmp_path):
    procs: list[subprocess.Popen] = []

    def start(config: dict, *args: str) -> tuple[subprocess.Popen, Path]:
        path = write_config(tmp_path / f"config{len(procs)}.json", config)
        proc = subprocess.Popen(
            [*XPS, str(path), "--log-level", "info", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        port = config["servers"][0]["listeners"][0]["port"]
        wait_until(lambda: accepts(port) or proc.poll() is not None, timeout=10)
        assert proc.poll() is None, proc.stderr.read()
        return proc, path

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_check_accepts_the_bundled_config():
    res = run_cli("--check", str(Path(__file__).parent.parent / "config.json"))
    assert res.returncode == 0, res.stderr
    assert "valid" in res.stdout


def test_bad_config_exits_2_naming_the_key_without_traceback(tmp_path):
    bad = {
        "servers": [
            {
                "listeners": [{"host": "127.0.0.1", "port": 70000}],
                "routes": [{"req_path": "/", "type": "file_serve"}],
            }
        ]
    }
    path = write_config(tmp_path / "bad.json", bad)
    res = run_cli(str(path))
    assert res.returncode == 2
    assert "servers[0].listeners[0].port" in res.stderr
    assert "servers[0].routes[0].dir_path" in res.stderr
    assert "Traceback" not in res.stderr
    res = run_cli("--check", str(tmp_path / "missing.json"))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    (tmp_path / "broken.json").write_text("{nope")
    res = run_cli(str(tmp_path / "broken.json"))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr


def test_port_in_use_is_a_clear_error(tmp_path, site):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = server_config(port, [{"req_path": "/", "type": "file_serve", "dir_path": str(site)}])
        res = run_cli(str(write_config(tmp_path / "c.json", cfg)))
    assert res.returncode == 1
    assert "cannot listen" in res.stderr
    assert "Traceback" not in res.stderr


def test_sigterm_finishes_in_flight_response_and_exits_0(spawn, site):
    # Bigger than what loopback socket buffers hold, so most of it is still the server's to
    # send when the signal arrives.
    (site / "huge.bin").write_bytes(bytes(range(256)) * (64 << 10 << 2))  # 64 MiB
    port = free_port()
    proc, _ = spawn(
        server_config(port, [{"req_path": "/", "type": "file_serve", "dir_path": str(site)}])
    )
    sock = connect(port)
    sock.sendall(b"GET /huge.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    received = bytearray(sock.recv(65536))
    proc.send_signal(signal.SIGTERM)
    wait_until(lambda: not accepts(port))  # listeners close first
    assert proc.poll() is None  # ...while the response in flight keeps the server up
    while chunk := sock.recv(1 << 20):
        received += chunk
    _, _, body = bytes(received).partition(b"\r\n\r\n")
    assert len(body) == 64 << 20
    assert body == (site / "huge.bin").read_bytes()
    assert proc.wait(10) == 0


def test_sigint_with_idle_connections_exits_0(spawn, site):
    port = free_port()
    proc, _ = spawn(
        server_config(port, [{"req_path": "/", "type": "file_serve", "dir_path": str(site)}])
    )
    idle = Client(port)
    assert idle.request("GET", "/hello.txt").status == 200
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0
    assert idle.closed_by_peer()


def test_sighup_reloads_and_a_bad_reload_keeps_serving(spawn, site, tmp_path):
    port = free_port()
    routes = [{"req_path": "/", "type": "file_serve", "dir_path": str(site)}]
    proc, path = spawn(server_config(port, routes))
    client = Client(port)
    assert client.request("GET", "/moved").status == 404

    routes.append(
        {
            "req_path": "/moved",
            "type": "redirect",
            "http_status_code": 301,
            "redirect_url": "/hello.txt",
        }
    )
    write_config(path, server_config(port, routes))
    proc.send_signal(signal.SIGHUP)
    # the same keep-alive connection sees the new routes: no connection was dropped
    wait_until(lambda: client.request("GET", "/moved").status == 301)

    path.write_text(json.dumps({"servers": "not a list"}))
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: proc.poll() is not None or _stderr_has(proc, "rejected"))
    assert proc.poll() is None
    assert client.request("GET", "/moved").status == 301
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


def _stderr_has(proc: subprocess.Popen, text: str) -> bool:
    os.set_blocking(proc.stderr.fileno(), False)
    chunk = proc.stderr.read() or ""
    _stderr_has.seen = getattr(_stderr_has, "seen", "") + chunk
    return text in _stderr_has.seen


def test_slow_header_gets_408_then_close(start_server, site):
    server = start_server(
        [{"req_path": "/", "type": "file_serve", "dir_path": str(site)}],
        timeouts={"client_header": 0.3},
    )
    sock = connect(server.port)
    sock.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n")  # never finishes the head
    raw = b""
    while chunk := sock.recv(4096):
        raw += chunk
    assert status_of(raw) == 408
    assert server.call(lambda: server.core.stats.conn_timeout) == 1


def test_idle_keep_alive_connection_is_closed(start_server, site):
    server = start_server(
        [{"req_path": "/", "type": "file_serve", "dir_path": str(site)}],
        timeouts={"keep_alive": 0.3},
    )
    client = Client(server.port)
    assert client.request("GET", "/hello.txt").status == 200
    assert client.closed_by_peer()
    wait_until(lambda: server.call(lambda: len(server.core.sessions)) == 0)


def test_shared_listener_routes_by_host(start_server, tmp_path, site):
    other = tmp_path / "other"
    other.mkdir()
    (other / "hello.txt").write_text("other site\n")
    port = free_port()
    listener = {"host": "127.0.0.1", "port": port}
    server = start_server(
        config={
            "servers": [
                {
                    "listeners": [listener],
                    "hostnames": ["a.test"],
                    "routes": [{"req_path": "/", "type": "file_serve", "dir_path": str(site)}],
                },
                {
                    "listeners": [listener],
                    "hostnames": ["b.test"],
                    "routes": [{"req_path": "/", "type": "file_serve", "dir_path": str(other)}],
                },
            ]
        }
    )
    assert len(server.core.listeners) == 1
    a = raw_exchange(port, b"GET /hello.txt HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    b = raw_exchange(
        port, b"GET /hello.txt HTTP/1.1\r\nHost: B.test:80\r\nConnection: close\r\n\r\n"
    )
    default = raw_exchange(port, b"GET /hello.txt HTTP/1.0\r\n\r\n")
    assert a.endswith(b"hello world\n")
    assert b.endswith(b"other site\n")
    assert default.endswith(b"hello world\n")  # no match: the first server, as in nginx


def test_no_route_is_404(start_server, site):
    server = start_server([{"req_path": "/only", "type": "file_serve", "dir_path": str(site)}])
    raw = raw_exchange(
        server.port, b"GET /elsewhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status_of(raw) == 404


def test_server_name_is_configurable(start_server, site):
    server = start_server(
        [{"req_path": "/", "type": "file_serve", "dir_path": str(site)}], server_name="MyServer"
    )
    raw = raw_exchange(
        server.port, b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert b"Server: MyServer\r\n" in raw


def test_server_package_never_imports_the_console():
    root = Path(__file__).parent.parent / "xps_server"
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "xps_console" not in text and "textual" not in text, path
