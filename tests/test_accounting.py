"""What the operator reads about traffic, end to end: `top`, `session`, per-route and
per-upstream figures, refusals of blocked clients, and the routes events name."""

from __future__ import annotations

import json

import pytest

from tests.backends import Backend
from tests.helpers import Client, connect, free_port, read_until_close, wait_until
from xps_server.server.control import CommandAPI


@pytest.fixture
def served(start_server, site):
    backend = Backend()
    server = start_server(
        [
            {"req_path": "/", "type": "file_serve", "dir_path": str(site)},
            {"req_path": "/api", "type": "reverse_proxy", "upstreams": [backend.addr]},
            {"req_path": "/status", "type": "metrics"},
        ]
    )
    server.api = CommandAPI(server.core)
    yield server
    backend.stop()


def command(server, name: str, **args) -> dict:
    reply = server.api.submit({"cmd": name, "args": args}).result(5)
    assert reply["ok"], reply
    return reply["result"]


def get(server, target: str, source: str = "127.0.0.1") -> int:
    client = Client(server.port, source=source)
    try:
        return client.request("GET", target).status
    finally:
        client.close()


# --- top --------------------------------------------------------------------------------------
def test_top_ranks_short_connection_clients_that_hold_nothing_open(served):
    sub = served.core.bus.subscribe()
    for _ in range(5):
        assert get(served, "/hello.txt", "127.0.0.2") == 200
    for _ in range(2):
        assert get(served, "/missing", "127.0.0.3") == 404
    wait_until(lambda: not command(served, "snapshot")["sessions"]["total"])
    top = command(served, "top", window=10)
    assert top["enabled"] and top["window"] == 10 and top["capacity"] == 1000
    assert top["tracked"] == 2
    first, second = top["clients"]
    assert first["ip"] == "127.0.0.2"
    assert (first["requests"], first["status_4xx"], first["last_path"]) == (5, 0, "/hello.txt")
    closed = [e for e in sub.take() if e.kind == "connection_closed"]
    assert len(closed) == 7  # what the server sent them, heads included
    assert first["bytes"] == sum(e.bytes_out for e in closed if e.client == "127.0.0.2")
    assert (second["ip"], second["requests"], second["status_4xx"]) == ("127.0.0.3", 2, 2)
    assert first["open"] == 0 and first["error_bound"] == 0 and first["rps"] > 0
    by_errors = command(served, "top", sort="errors", limit=1)["clients"]
    assert [row["ip"] for row in by_errors] == ["127.0.0.3"]


def test_top_counts_open_connections_and_refusals(served):
    held = Client(served.port, source="127.0.0.4")
    assert held.request("GET", "/hello.txt").status == 200
    command(served, "block", cidr="127.0.0.5")
    for _ in range(3):
        with connect(served.port, source="127.0.0.5") as sock:
            assert read_until_close(sock) == b""
    rows = {row["ip"]: row for row in command(served, "top")["clients"]}
    assert rows["127.0.0.4"]["open"] == 1
    assert (rows["127.0.0.5"]["refused"], rows["127.0.0.5"]["requests"]) == (3, 0)
    held.close()


@pytest.mark.parametrize(
    ("args", "error"),
    [({"window": 30}, "window"), ({"limit": 0}, "limit"), ({"sort": "age"}, "sort")],
)
def test_top_refuses_bad_arguments(served, args, error):
    reply = served.api.submit({"cmd": "top", "args": args}).result(5)
    assert not reply["ok"] and error in reply["error"]


def test_top_and_histograms_can_be_turned_off(start_server, site):
    server = start_server(
        [{"req_path": "/", "type": "file_serve", "dir_path": str(site)}],
        top_clients=0,
        histograms=False,
    )
    server.api = CommandAPI(server.core)
    assert get(server, "/hello.txt") == 200
    assert command(server, "top") == {
        "enabled": False,
        "window": 10,
        "tracked": 0,
        "capacity": 0,
        "clients": [],
    }
    route = command(server, "snapshot")["routes"][0]
    assert "p50_ms" not in route and "rps" not in route


# --- per-route and per-upstream figures -------------------------------------------------------
def test_routes_and_upstreams_report_rates_errors_and_latency(served):
    for target in ("/hello.txt", "/hello.txt", "/nope.txt", "/api/x"):
        get(served, target)
    snapshot = command(served, "snapshot")
    routes = {row["req_path"]: row for row in snapshot["routes"]}
    files = routes["/"]
    assert (files["requests"], files["status_4xx"], files["status_5xx"]) == (3, 1, 0)
    assert files["rps"] > 0 and files["error_pct"] == 0.0
    assert 0 < files["p50_ms"] <= files["p95_ms"] <= files["p99_ms"]
    assert routes["/api"]["requests"] == 1 and routes["/status"]["p50_ms"] is None
    (upstream,) = snapshot["upstreams"]
    assert upstream["requests"] == 1 and upstream["p99_ms"] > 0
    metrics = json.loads(Client(served.port).request("GET", "/status").body)
    assert metrics["routes"]["/"]["requests"] == 3
    assert metrics["upstreams"][upstream["addr"]]["status_5xx"] == 0
    assert snapshot["listeners"] == [f"127.0.0.1:{served.port}"]


def test_prometheus_has_route_and_upstream_histograms(served):
    get(served, "/hello.txt")
    get(served, "/api/x")
    text = Client(served.port).request("GET", "/status?format=prometheus").body.decode()
    assert "# TYPE xps_route_response_seconds histogram" in text
    assert 'xps_route_response_seconds_count{route="/"} 1' in text
    assert 'xps_route_response_seconds_bucket{route="/",le="+Inf"} 1' in text
    assert "# TYPE xps_upstream_response_seconds histogram" in text
    assert "xps_upstream_response_seconds_count{upstream=" in text


def test_a_dead_upstream_stays_down_until_a_response_succeeds(start_server):
    dead = f"127.0.0.1:{free_port()}"
    server = start_server(
        [
            {
                "req_path": "/",
                "type": "reverse_proxy",
                "upstreams": [dead],
                "fail_timeout": 0.05,
            }
        ]
    )
    server.api = CommandAPI(server.core)
    assert get(server, "/") == 502
    row = command(server, "snapshot")["upstreams"][0]
    assert row["state"] == "down" and "connect" in row["last_error"]
    # Past fail_timeout it is tried again, and until a response succeeds it reads "down".
    wait_until(lambda: command(server, "snapshot")["upstreams"][0]["down_for"] == 0)
    assert command(server, "snapshot")["upstreams"][0]["state"] == "down"
    assert get(server, "/") == 502
    assert command(server, "snapshot")["upstreams"][0]["state"] == "down"


# --- refusals and blocks ----------------------------------------------------------------------
def test_refused_connections_become_rate_limited_events_and_block_hits(served):
    sub = served.core.bus.subscribe()
    command(served, "block", cidr="127.0.0.0/29")
    for _ in range(3):
        with connect(served.port, source="127.0.0.6") as sock:
            assert read_until_close(sock) == b""
    refused = [e for e in sub.take() if e.kind == "connection_refused"]
    # The first refusal is reported at once; the next two fall within the same second.
    assert [(e.ip, e.cidr, e.count) for e in refused] == [("127.0.0.6", "127.0.0.0/29", 1)]
    (block,) = command(served, "snapshot")["acl"]["blocks"]
    assert block["hits"] == 3


def test_route_block_refusals_count_as_hits_and_in_top(served):
    command(served, "block", cidr="127.0.0.7", route="/api")
    assert get(served, "/api/x", "127.0.0.7") == 403
    (block,) = command(served, "snapshot")["acl"]["blocks"]
    assert (block["route"], block["hits"]) == ("/api", 1)
    row = next(r for r in command(served, "top")["clients"] if r["ip"] == "127.0.0.7")
    # A refused request counts as a refusal, not as a request answered (nor as a 4xx).
    assert (row["refused"], row["requests"], row["status_4xx"]) == (1, 0, 0)


# --- events name the route that answered ------------------------------------------------------
def test_403_and_404_events_carry_their_own_route(start_server, site):
    routes = [
        {"req_path": "/open", "type": "file_serve", "dir_path": str(site)},
        {
            "req_path": "/closed",
            "type": "file_serve",
            "dir_path": str(site),
            "ip_whitelist": ["10.0.0.0/8"],
        },
    ]
    server = start_server(routes)
    sub = server.core.bus.subscribe()
    client = Client(server.port)
    assert client.request("GET", "/open/hello.txt").status == 200
    assert client.request("GET", "/elsewhere").status == 404
    assert client.request("GET", "/open/hello.txt").status == 200
    assert client.request("GET", "/closed/hello.txt").status == 403
    client.close()
    # The last answer may reach the client before its event is published: gather until four.
    finished: list[tuple[str, str]] = []

    def gathered() -> bool:
        finished.extend((e.path, e.route) for e in sub.take() if e.kind == "request_finished")
        return len(finished) >= 4

    wait_until(gathered)
    assert finished == [
        ("/open/hello.txt", "/open"),
        ("/elsewhere", ""),
        ("/open/hello.txt", "/open"),
        ("/closed/hello.txt", "/closed"),
    ]


# --- session detail ---------------------------------------------------------------------------
def test_session_detail_shows_the_last_request_without_credentials(served):
    client = Client(served.port, source="127.0.0.8")
    res = client.request(
        "GET", "/api/x", {"User-Agent": "probe/1", "Authorization": "Bearer s3cret"}
    )
    assert res.status == 200
    (row,) = command(served, "snapshot")["sessions"]["rows"]
    detail = command(served, "session", id=row["id"])
    assert (detail["ip"], detail["route"], detail["request"]) == ("127.0.0.8", "/api", "")
    assert detail["listener"] == f"127.0.0.1:{served.port}" and detail["tls"] is None
    last = detail["last_request"]
    assert (last["method"], last["target"], last["status"]) == ("GET", "/api/x", 200)
    assert last["user_agent"] == "probe/1" and last["bytes"] == len(res.body)
    assert ["Authorization", "(hidden)"] in last["headers"]
    assert "s3cret" not in json.dumps(detail)
    assert detail["upstream"].startswith("127.0.0.1:")
    reply = served.api.submit({"cmd": "session", "args": {"id": 10**6}}).result(5)
    assert not reply["ok"] and "no session" in reply["error"]
    client.close()


def test_a_busy_connection_reaches_the_tracker_once_a_second(served):
    core = served.core
    client = Client(served.port, source="127.0.0.9")
    for _ in range(20):
        assert client.request("GET", "/hello.txt").status == 200
    # Twenty requests, one pending report for the connection that made them.
    assert served.call(lambda: [s.conn.peer_ip for s in core.accounting.pending]) == ["127.0.0.9"]
    # The report timer tells the tracker by itself, with no `top` query to prompt it.
    wait_until(lambda: served.call(lambda: core.top.tracked(core.loop.now, 10)) == 1)
    assert served.call(lambda: core.top.top(core.loop.now, 10, 1)[0]["requests"]) == 20
    client.close()
