"""The metrics route (JSON and Prometheus text) and the access log."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers import Client, free_port, raw_exchange, status_of, wait_until, write_config
from xps_server.core.loop import Loop
from xps_server.server import accesslog
from xps_server.server.accesslog import AccessLog

SPEC_KEYS = [
    *("server_name", "pid", "workers", "uptime_msec"),
    *("conn_current", "conn_accepted", "conn_error", "conn_timeout"),
    *("req_current", "req_total", "req_file_serve", "req_reverse_proxy", "req_redirect"),
    *("res_avg_res_time_msec", "res_peak_res_time_msec"),
    *("res_code_2xx", "res_code_3xx", "res_code_4xx", "res_code_5xx"),
    *("traffic_total_send_bytes", "traffic_total_recv_bytes"),
]


class CountingSocket:
    """Wraps a client socket to count the bytes that went each way."""

    def __init__(self, sock):
        self.sock = sock
        self.sent = 0
        self.received = 0

    def sendall(self, data):
        self.sock.sendall(data)
        self.sent += len(data)

    def recv(self, size):
        data = self.sock.recv(size)
        self.received += len(data)
        return data

    def close(self):
        self.sock.close()


@pytest.fixture
def server(start_server, site, tmp_path):
    return start_server(
        [
            {"req_path": "/", "type": "file_serve", "dir_path": str(site)},
            {"req_path": "/old", "type": "redirect", "http_status_code": 302, "redirect_url": "/"},
            {"req_path": "/status", "type": "metrics"},
        ],
        access_log=str(tmp_path / "logs" / "access.log"),
    )


def test_metrics_json_counts_a_known_number_of_requests(server):
    client = Client(server.port)
    counting = client.sock = CountingSocket(client.sock)
    res = client.request("GET", "/status")
    assert res.status == 200
    assert res.headers["content-type"] == "application/json"
    before = json.loads(res.body)
    assert set(SPEC_KEYS) <= set(before)
    assert before["server_name"] == "eXpServer" and before["workers"] == 1
    for _ in range(5):
        assert client.request("GET", "/hello.txt").status == 200
    assert client.request("GET", "/missing").status == 404
    assert client.request("GET", "/nope.txt").status == 404
    assert client.request("GET", "/old").status == 302
    received_before_last = counting.received
    after = json.loads(client.request("GET", "/status").body)
    client.close()

    def delta(key):
        return after[key] - before[key]

    assert delta("req_total") == 9  # eight requests and this snapshot's own
    assert delta("req_file_serve") == 7
    assert delta("req_redirect") == 1
    assert delta("res_code_2xx") == 6  # the five files and the first snapshot
    assert delta("res_code_3xx") == 1
    assert delta("res_code_4xx") == 2
    assert delta("res_code_5xx") == 0
    assert after["req_current"] == 1  # the snapshot itself
    assert after["conn_current"] == 1 and after["conn_accepted"] >= 1
    # Traffic includes this still-open connection: every byte it has moved so far.
    assert after["traffic_total_recv_bytes"] == counting.sent
    assert after["traffic_total_send_bytes"] == received_before_last
    assert after["res_peak_res_time_msec"] >= after["res_avg_res_time_msec"] >= 0
    assert after["uptime_msec"] >= before["uptime_msec"]


PROM_LINE = re.compile(
    r"# HELP [a-z_]+ .+|# TYPE [a-z_]+ (counter|gauge|summary|histogram)|"
    r'[a-z_]+(\{[a-z_]+="[^"\\]*"(,[a-z_]+="[^"\\]*")*\})? -?[0-9.e+-]+'
)


def _prometheus(text: str) -> dict[str, float]:
    samples = {}
    typed = set()
    for line in text.splitlines():
        assert PROM_LINE.fullmatch(line), line
        if line.startswith("# TYPE"):
            typed.add(line.split()[2])
        elif not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            base = name.partition("{")[0]
            assert base in typed or base.rsplit("_", 1)[0] in typed, line
            samples[name] = float(value)
    return samples


def test_prometheus_text(server):
    client = Client(server.port)
    res = client.request("GET", "/status?format=prometheus")
    assert res.status == 200
    assert res.headers["content-type"] == "text/plain"
    before = _prometheus(res.body.decode())
    assert all(name.startswith("xps_") for name in before)
    for _ in range(3):
        client.request("GET", "/hello.txt")
    client.request("GET", "/old")
    res = client.request("GET", "/status", {"Accept": "text/plain;version=0.0.4"})
    after = _prometheus(res.body.decode())
    assert after["xps_requests_total"] - before["xps_requests_total"] == 5
    assert after['xps_responses_total{code="2xx"}'] - before['xps_responses_total{code="2xx"}'] == 4
    assert after['xps_requests_by_type_total{type="redirect"}'] == 1
    assert after["xps_connections_current"] == 1
    two_xx = after['xps_responses_total{code="2xx"}']
    assert after["xps_response_time_seconds_count"] == two_xx + 1  # and the 302
    # An explicit JSON preference and a browser's Accept get JSON.
    for accept in ("application/json", "text/html,*/*;q=0.8"):
        res = client.request("GET", "/status", {"Accept": accept})
        assert res.headers["content-type"] == "application/json"
    client.close()


def test_metrics_methods(server):
    client = Client(server.port)
    res = client.request("POST", "/status", {"Content-Length": "0"})
    assert res.status == 405 and res.headers["allow"] == "GET, HEAD"
    head = client.request("HEAD", "/status")
    assert head.status == 200 and head.body == b""
    client.close()


# --- the access log ---------------------------------------------------------------------------

COMBINED = re.compile(
    r"(?P<addr>\S+) - - \[(?P<time>\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] "
    r'"(?P<request>(?:[^"\\]|\\.)*)" (?P<status>\d{3}) (?P<bytes>\d+) '
    r'"(?P<referer>(?:[^"\\]|\\.)*)" "(?P<agent>(?:[^"\\]|\\.)*)"'
)


def _log_lines(path) -> list[re.Match]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    matches = [COMBINED.fullmatch(line) for line in lines]
    assert all(matches), lines
    return matches


def test_access_log_lines_in_combined_format(server, tmp_path):
    log_path = tmp_path / "logs" / "access.log"  # the folder is made on the first write
    client = Client(server.port, source="127.0.0.2")
    client.request(
        "GET",
        "/hello.txt?x=1",
        {"Referer": "http://example.com/", "User-Agent": 'curl/8 "quoted" \\ é'},
    )
    client.request("HEAD", "/hello.txt")
    client.request("GET", "/missing")
    client.close()
    assert status_of(raw_exchange(server.port, b"BAD\r\n\r\n")) == 400
    # No explicit flush: the one-second timer writes them.
    lines = wait_until(lambda: len(_log_lines(log_path)) == 4 and _log_lines(log_path))
    first, head, missing, bad = lines
    assert first["addr"] == "127.0.0.2"
    assert first["request"] == "GET /hello.txt?x=1 HTTP/1.1"
    assert (first["status"], first["bytes"]) == ("200", "12")
    assert first["referer"] == "http://example.com/"
    assert first["agent"] == "curl/8 \\x22quoted\\x22 \\x5C \\xC3\\xA9"
    assert time.strftime("%d/%b/%Y", time.localtime()) in first["time"]
    assert (head["request"], head["bytes"], head["agent"]) == ("HEAD /hello.txt HTTP/1.1", "0", "-")
    assert missing["status"] == "404"
    assert (bad["request"], bad["status"], bad["addr"]) == ("-", "400", "127.0.0.1")


def test_access_log_to_stdout_is_flushed_on_shutdown(tmp_path, site):
    port = free_port()
    config = {
        "access_log": "-",
        "servers": [
            {
                "listeners": [{"host": "127.0.0.1", "port": port}],
                "routes": [{"req_path": "/", "type": "file_serve", "dir_path": str(site)}],
            }
        ],
    }
    path = write_config(tmp_path / "c.json", config)
    proc = subprocess.Popen(
        [sys.executable, "-m", "xps_server", str(path), "--log-level", "error"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:

        def served():
            try:
                client = Client(port)
            except OSError:
                return proc.poll() is not None
            ok = client.request("GET", "/hello.txt").status == 200
            client.close()
            return ok

        wait_until(served, timeout=10)
    finally:
        proc.terminate()  # well within the one-second timer: only the shutdown flush writes it
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    [line] = [COMBINED.fullmatch(line) for line in out.splitlines()]
    assert line["request"] == "GET /hello.txt HTTP/1.1" and line["status"] == "200"


class _FakeConn:
    peer_ip = "192.0.2.1"


class _FakeSession:
    conn = _FakeConn()
    request = None


def test_a_stuck_disk_never_blocks_the_loop(tmp_path, monkeypatch):
    monkeypatch.setattr(accesslog, "MAX_BATCHES", 2)
    monkeypatch.setattr(accesslog, "FLUSH_BYTES", 200)
    loop = Loop()
    log = AccessLog(str(tmp_path / "a.log"), loop)
    release = threading.Event()
    returned = threading.Event()
    real_write = log._write

    def stuck_write(batch):
        release.wait(10)
        real_write(batch)
        returned.set()

    monkeypatch.setattr(log, "_write", stuck_write)
    for _ in range(2000):
        log.log(_FakeSession(), 400, 0)
    # All 2000 lines were taken while the writer sat stuck on its first batch: had the loop
    # waited for room, the writer would have had to return first.
    assert not returned.is_set()
    assert log.dropped > 0
    release.set()
    log.close()
    written = (tmp_path / "a.log").read_text().splitlines()
    assert len(written) + log.dropped == 2000
    assert all(COMBINED.fullmatch(line) for line in written)
    assert log.stats()["access_log_dropped"] == log.dropped
    loop.close()
