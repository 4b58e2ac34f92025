"""The event bus, the command API and the control socket (JSON lines over a Unix socket)."""

from __future__ import annotations

import json
import os
import socket
import stat
import time

import pytest

from tests.helpers import Client, free_port, server_config, wait_until
from xps_server.core.loop import Loop
from xps_server.events import EventBus, OperatorAction, RequestFinished
from xps_server.server.control import CommandAPI, ControlServer


class LineClient:
    """A control-socket peer reading JSON lines."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self.buffer = b""

    def send(self, message: object) -> None:
        data = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.sock.sendall(data + b"\n")

    def read(self) -> dict:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "control socket closed"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    def read_until(self, predicate) -> dict:
        while True:
            message = self.read()
            if predicate(message):
                return message

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def control(start_server, site, tmp_path):
    server = start_server(
        [
            {"req_path": "/", "type": "file_serve", "dir_path": str(site)},
            {"req_path": "/old", "type": "redirect", "http_status_code": 301, "redirect_url": "/"},
        ]
    )
    path = str(tmp_path / "xps.sock")
    api = CommandAPI(server.core)
    ctl = server.call(lambda: ControlServer(server.core, api, path))
    client = LineClient(path)
    yield server, api, client, path
    client.close()
    server.call(ctl.close)


def test_socket_is_private(control):
    *_, path = control
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_bad_messages_get_error_replies_and_the_socket_lives(control):
    _, _, client, _ = control
    client.send(b"{not json")
    assert client.read()["ok"] is False
    client.send({"id": 1, "cmd": "no-such-thing"})
    reply = client.read()
    assert reply == {"id": 1, "ok": False, "error": "unknown command 'no-such-thing'"}
    client.send([1, 2, 3])
    assert "JSON object" in client.read()["error"]
    client.send({"id": 2, "cmd": "kill", "args": {"session": "x"}})
    assert client.read() == {"id": 2, "ok": False, "error": "argument 'session' has the wrong type"}
    client.send({"id": 3, "cmd": "kill", "args": {}})
    assert client.read()["error"] == "missing argument 'session'"
    client.send({"id": 4, "cmd": "ping"})
    assert client.read() == {"id": 4, "ok": True, "result": "pong"}


def test_subscribers_receive_request_events(control):
    server, _, client, _ = control
    client.send({"id": 1, "cmd": "subscribe"})
    assert client.read()["ok"] is True
    http = Client(server.port)
    assert http.request("GET", "/hello.txt").status == 200
    event = client.read_until(lambda m: "event" in m and m["event"]["kind"] == "request_finished")[
        "event"
    ]
    assert event["method"] == "GET"
    assert event["path"] == "/hello.txt"
    assert event["route"] == "/"
    assert event["status"] == 200
    assert event["bytes"] == len(b"hello world\n")
    assert event["client"] == "127.0.0.1"
    http.close()
    closed = client.read_until(
        lambda m: "event" in m and m["event"]["kind"] == "connection_closed"
    )["event"]
    assert closed["requests"] == 1


def test_snapshot_lists_sessions_and_routes(control):
    server, _, client, _ = control
    http = Client(server.port, source="127.0.0.9")
    assert http.request("GET", "/hello.txt").status == 200
    client.send({"id": 7, "cmd": "snapshot"})
    reply = client.read()
    assert reply["id"] == 7 and reply["ok"] is True
    snap = reply["result"]
    rows = snap["sessions"]["rows"]
    assert snap["sessions"]["total"] == 1
    assert rows[0]["ip"] == "127.0.0.9"
    assert rows[0]["route"] == "/"
    assert rows[0]["state"] == "idle"
    assert rows[0]["bytes_out"] > 0
    assert [r["req_path"] for r in snap["routes"]] == ["/", "/old"]
    http.close()


def test_kill_closes_the_session(control):
    server, _, client, _ = control
    http = Client(server.port)
    assert http.request("GET", "/hello.txt").status == 200
    session_id = next(iter(server.call(lambda: list(server.core.sessions))))
    client.send({"id": 1, "cmd": "kill", "args": {"session": session_id}})
    assert client.read()["ok"] is True
    assert http.closed_by_peer()
    client.send({"id": 2, "cmd": "kill", "args": {"session": session_id}})
    assert client.read()["ok"] is False


def test_reload_command_reports_a_bad_config(control, tmp_path, site):
    server, _, client, _ = control
    config_path = tmp_path / "config.json"
    routes = [{"req_path": "/", "type": "file_serve", "dir_path": str(site)}]
    config_path.write_text(json.dumps(server_config(server.port, routes)))
    server.call(lambda: setattr(server.core.config, "path", str(config_path)))
    client.send({"id": 1, "cmd": "subscribe"})
    client.read()
    client.send({"id": 2, "cmd": "reload"})
    assert client.read_until(lambda m: m.get("id") == 2)["ok"] is True
    config_path.write_text("{broken")
    client.send({"id": 3, "cmd": "reload"})
    reply = client.read_until(lambda m: m.get("id") == 3)
    assert reply["ok"] is False and "rejected" in reply["error"]
    action = client.read_until(lambda m: "event" in m and m["event"]["kind"] == "operator_action")[
        "event"
    ]
    assert action["command"] == "reload"


def test_submit_crosses_threads(control):
    _, api, _, _ = control
    assert api.submit({"cmd": "ping"}).result(5) == {"ok": True, "result": "pong"}


def test_bus_drops_oldest_and_counts():
    loop = Loop()
    bus = EventBus(loop)
    assert not bus.active
    sub = bus.subscribe(maxlen=3)
    assert bus.active and bus.traffic
    for i in range(5):
        bus.publish_traffic(RequestFinished(time.time(), i, "ip", "GET", "/", "/", 200, 0, 0.0))
    assert sub.dropped == 2
    assert bus.dropped == 2
    assert [e.session for e in sub.take()] == [2, 3, 4]
    sub.close()
    assert not bus.active
    loop.close()


def test_rate_limited_bus_builds_no_traffic_events_past_the_rate():
    loop = Loop()
    bus = EventBus(loop)
    sub = bus.subscribe(max_rate=40)  # two traffic events per 50 ms refill
    finished = [
        RequestFinished(time.time(), i, "ip", "GET", "/", "/", 200, 0, 0.0) for i in range(2)
    ]
    bus.publish_traffic(finished[0])
    assert bus.traffic
    bus.publish_traffic(finished[1])
    assert not bus.traffic  # what publishers check before building one
    bus.skipped += 3  # ...and count instead
    bus.publish(OperatorAction(time.time(), "block", {}, True, ""))  # rare events still pass
    assert [e.kind for e in sub.take()] == ["request_finished"] * 2 + ["operator_action"]
    loop.now += 0.06
    loop._run_timers()  # the refill
    assert bus.traffic and sub.dropped == 3
    loop.close()


def test_stale_socket_file_is_replaced_and_a_live_one_refused(start_server, site, tmp_path):
    server = start_server([{"req_path": "/", "type": "file_serve", "dir_path": str(site)}])
    path = str(tmp_path / "stale.sock")
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(path)
    leftover.close()  # the file stays, nobody listens: what a crash leaves behind
    api = CommandAPI(server.core)
    ctl = server.call(lambda: ControlServer(server.core, api, path))
    with pytest.raises(OSError, match="another server"):
        server.call(lambda: ControlServer(server.core, api, path))
    server.call(ctl.close)
    assert not os.path.exists(path)


def _connected(path: str) -> LineClient | None:
    try:
        return LineClient(path)
    except OSError:
        return None


def test_headless_server_serves_the_control_socket(tmp_path, site):
    import subprocess
    import sys

    port = free_port()
    sock_path = tmp_path / "ctl.sock"
    cfg = server_config(
        port,
        [{"req_path": "/", "type": "file_serve", "dir_path": str(site)}],
        control_socket=str(sock_path),
    )
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "xps_server", str(tmp_path / "c.json")], stderr=subprocess.DEVNULL
    )
    try:
        # The file appears at bind(), a moment before listen(): connect until it is taken.
        client = wait_until(lambda: _connected(str(sock_path)), timeout=10)
        client.send({"id": 1, "cmd": "ping"})
        assert client.read()["result"] == "pong"
        client.close()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    assert not sock_path.exists()


def test_gzip_command_toggles_sets_and_resets(control):
    _, api, _, _ = control

    def gzip(**args):
        reply = api.submit({"cmd": "gzip", "args": {"route": "/", **args}}).result(5)
        assert reply["ok"], reply
        return reply["result"]["gzip_enable"]

    assert gzip() is True  # omitted: toggle (the config has it off)
    assert gzip() is False
    assert gzip(enabled=False) is False
    assert gzip(enabled=True) is True
    assert gzip(reset=True) is False  # back to the config file's setting
    reply = api.submit({"cmd": "gzip", "args": {"route": "/nope"}}).result(5)
    assert reply["ok"] is False and "/nope" in reply["error"]


def test_subscriber_rate_cap_keeps_the_newest_and_counts_drops(control):
    server, _, client, _ = control
    client.send({"id": 1, "cmd": "subscribe", "args": {"max_rate": 20}})
    assert client.read()["result"] == {"subscribed": True, "max_rate": 20}

    def publish() -> None:
        for i in range(100):
            server.core.bus.publish(
                RequestFinished(time.time(), i, "ip", "GET", "/", "/", 200, 0, 0)
            )

    server.call(publish)
    sessions, dropped = [], 0
    while len(sessions) < 20 or not dropped:
        message = client.read()
        if "event" in message:
            sessions.append(message["event"]["session"])
        dropped = message.get("dropped", dropped)
    assert dropped == 80  # a queue of one second's worth: the 20 newest are kept
    assert sessions == list(range(80, 100))
    client.send({"id": 2, "cmd": "subscribe", "args": {"max_rate": "fast"}})
    assert client.read_until(lambda m: m.get("id") == 2)["ok"] is False
