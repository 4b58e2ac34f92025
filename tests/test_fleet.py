"""The fleet: instances sharing one block list (and gzip switches, drains) through a real Redis.

Three in-process servers on loopback ports and one redis-server of the test's own. A block
made on one instance must be refused at accept by the others; expiry holds everywhere; with
Redis down the instances keep serving and enforcing, and what was changed meanwhile reaches
the others once Redis is back; an instance that starts late gets the current list.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import h11
import pytest

from tests.helpers import Client, RunningServer, connect, free_port, wait_until, write_config
from tests.test_workers import Fleet as WorkersFleet
from xps_server.config import ConfigError, parse_config
from xps_server.server.fleetlink import _decode_change, redacted

BLOCKED = "127.0.0.5"  # a client address the tests block (any 127/8 address is loopback)


def refused(port: int, source: str) -> bool:
    """True when the server closed the connection without a byte of response."""
    sock = connect(port, source=source)
    try:
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            return sock.recv(65536) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
    finally:
        sock.close()


def status(port: int, path: str = "/hello.txt", source: str | None = None) -> int:
    client = Client(port, source=source)
    try:
        return client.request("GET", path).status
    finally:
        client.close()


def instance_config(
    site: Path, redis_url: str, name: str, tmp_path: Path, port: int | None = None
) -> dict[str, Any]:
    return {
        "state_file": str(tmp_path / f"{name}-state.json"),
        "fleet": {"redis": redis_url, "name": name, "prefix": "t"},
        "servers": [
            {
                "listeners": [{"host": "127.0.0.1", "port": port or free_port()}],
                "routes": [
                    {"req_path": "/", "type": "file_serve", "dir_path": str(site)},
                    {
                        "req_path": "/api",
                        "type": "reverse_proxy",
                        "upstreams": ["127.0.0.1:9", "127.0.0.1:10"],
                    },
                ],
            }
        ],
    }


@pytest.fixture
def fleet(start_server, site, redis_server, tmp_path):
    """Start instance `name` of the fleet (connected to the test's Redis)."""

    def start(name: str) -> RunningServer:
        server = start_server(config=instance_config(site, redis_server.url, name, tmp_path))
        wait_until(lambda: server.call(lambda: linked(server)))
        return server

    return start


def linked(server: RunningServer) -> bool:
    """Connected, and the fleet's state read back (the reconciliation done)."""
    link = server.core.fleet_link
    assert link is not None
    return link.connected and not link.reconciling and not link._ops


def blocked_on(server: RunningServer, cidr: str) -> bool:
    return any(row["cidr"] == cidr for row in server.call(server.core.blocks))


# --- config ----------------------------------------------------------------------------------
def test_fleet_config_is_checked():
    base = {"servers": [{"listeners": [{"port": 1}]}]}
    config = parse_config({**base, "fleet": {"redis": "redis://h:1/0", "name": "e1"}}, ".")
    assert config.fleet is not None
    assert (config.fleet.redis, config.fleet.name, config.fleet.prefix) == (
        "redis://h:1/0",
        "e1",
        "xps",
    )
    assert parse_config(base, ".").fleet is None
    with pytest.raises(ConfigError) as caught:
        parse_config({**base, "fleet": {"redis": "http://h", "name": "", "port": 1}}, ".")
    problems = caught.value.problems
    assert "fleet.port: unknown key" in problems
    assert any(p.startswith("fleet.redis: expected a redis://") for p in problems)
    assert "fleet.name: must not be empty" in problems
    with pytest.raises(ConfigError, match=r"fleet\.redis: required"):
        parse_config({**base, "fleet": {}}, ".")


def test_without_a_fleet_redis_is_never_imported(tmp_path, site):
    config = write_config(
        tmp_path / "c.json",
        {
            "state_file": str(tmp_path / "s.json"),
            "servers": [
                {
                    "listeners": [{"host": "127.0.0.1", "port": free_port()}],
                    "routes": [{"req_path": "/", "type": "file_serve", "dir_path": str(site)}],
                }
            ],
        },
    )
    script = (
        "import sys\n"
        "from xps_server.config import load_config\n"
        "from xps_server.server.lifecycle import Server\n"
        f"server = Server(load_config({str(config)!r}))\n"
        "core = server.start()\n"
        "core.block('10.0.0.1')\n"
        "server.close()\n"
        "print('redis' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "False"


def test_messages_from_redis_are_checked():
    ok = _decode_change(json.dumps({"op": "block", "cidr": "10.0.0.1", "origin": "x"}))
    assert ok == {
        "op": "block",
        "cidr": "10.0.0.1/32",
        "route": None,
        "expires_at": None,
        "reason": None,
        "origin": "x",
    }
    for junk in (
        b"not json",
        b"[1]",
        json.dumps({"op": "block", "cidr": "nonsense", "origin": "x"}),
        json.dumps({"op": "block", "cidr": "10.0.0.1"}),  # no origin
        json.dumps({"op": "block", "cidr": "10.0.0.1", "expires_at": "soon", "origin": "x"}),
        json.dumps({"op": "block", "cidr": "10.0.0.1", "reason": 7, "origin": "x"}),
        json.dumps({"op": "gzip", "route": "/", "enabled": "yes", "origin": "x"}),
        json.dumps({"op": "drain", "addr": 5, "origin": "x"}),
        json.dumps({"op": "explode", "origin": "x"}),
        "[" * 100_000,
    ):
        assert _decode_change(junk) is None, junk


def test_the_password_never_shows():
    assert redacted("redis://user:secret@h:6379/0") == "redis://user:***@h:6379/0"
    assert redacted("redis://h:6379/0") == "redis://h:6379/0"


# --- the fleet -------------------------------------------------------------------------------
def test_a_block_on_one_instance_is_refused_at_accept_by_the_others(fleet, redis_server):
    one, two, three = fleet("e1"), fleet("e2"), fleet("e3")
    for server in (one, two, three):
        assert status(server.port, source=BLOCKED) == 200
    told = two.call(lambda: two.core.bus.subscribe())
    messages = redis_server.client().pubsub()
    messages.subscribe("t:changes")
    one.call(lambda: one.core.block(BLOCKED))
    for server in (two, three):
        wait_until(lambda server=server: refused(server.port, BLOCKED))
        assert status(server.port) == 200  # everyone else is served
    (event,) = [e for e in told.take() if e.kind == "fleet_change"]
    assert event.by == "e1"
    assert event.change == {"op": "block", "cidr": f"{BLOCKED}/32", "route": None,
                            "expires_at": None, "reason": None}  # fmt: skip
    # Redis holds the block.
    assert redis_server.client().hgetall("t:blocks").keys() == {f"{BLOCKED}/32|".encode()}
    # The others applied it without publishing it again: one message per change made.
    three.call(lambda: three.core.block("127.0.0.6", route="/"))
    for server in (one, two):
        wait_until(lambda server=server: blocked_on(server, "127.0.0.6/32"))
    assert status(one.port, source="127.0.0.6") == 403
    two.call(lambda: two.core.unblock(BLOCKED))
    for server in (one, three):
        wait_until(lambda server=server: not refused(server.port, BLOCKED))
    published = []
    while (message := messages.get_message(timeout=1.0)) is not None or len(published) < 3:
        if message is not None and message["type"] == "message":
            published.append(json.loads(message["data"])["op"])
    assert published == ["block", "block", "unblock"]
    assert redis_server.client().hkeys("t:blocks") == [b"127.0.0.6/32|/"]


def test_expiry_is_honoured_everywhere(fleet, redis_server):
    one, two, three = fleet("e1"), fleet("e2"), fleet("e3")
    one.call(lambda: one.core.block(BLOCKED, seconds=1.0))
    for server in (two, three):
        wait_until(lambda server=server: refused(server.port, BLOCKED))
        (row,) = server.call(server.core.blocks)
        assert 0 < row["expires_in"] <= 1.0
    for server in (one, two, three):
        wait_until(lambda server=server: not refused(server.port, BLOCKED))
    assert redis_server.client().zcard("t:blocks:expiry") == 1
    # The next write prunes what expired: Redis forgets it as the instances did.
    one.call(lambda: one.core.block("127.0.0.9", route="/"))
    wait_until(lambda: redis_server.client().hkeys("t:blocks") == [b"127.0.0.9/32|/"])
    assert redis_server.client().zcard("t:blocks:expiry") == 0


def test_an_automatic_block_keeps_its_reason_on_every_instance(fleet, redis_server):
    one, two = fleet("e1"), fleet("e2")
    rule = "auto: rate_limited 100/10s"
    one.call(lambda: one.core.runtime.block(BLOCKED, seconds=600, reason=rule))
    wait_until(lambda: refused(two.port, BLOCKED))
    (row,) = two.call(two.core.blocks)
    assert row["reason"] == rule
    late = fleet("e3")  # from Redis's hash, not a message
    (row,) = late.call(late.core.blocks)
    assert row["reason"] == rule


def test_gzip_switches_and_drains_are_shared(fleet):
    one, two = fleet("e1"), fleet("e2")
    one.call(lambda: one.core.set_gzip("/", True))
    one.call(lambda: one.core.drain_upstream("127.0.0.1:9"))

    def route_gzip(server: RunningServer) -> bool:
        return server.core.runtime.resolve("/")[1].gzip_enable

    def upstream_state(server: RunningServer) -> str:
        return server.call(lambda: server.core.upstreams["127.0.0.1:9"].snapshot()["state"])

    wait_until(lambda: two.call(lambda: route_gzip(two)))
    wait_until(lambda: upstream_state(two) == "draining")
    assert two.call(lambda: two.core.runtime.drained) == {"127.0.0.1:9"}
    two.call(lambda: two.core.set_gzip("/", None))
    two.call(lambda: two.core.enable_upstream("127.0.0.1:9"))
    wait_until(lambda: not one.call(lambda: route_gzip(one)))
    wait_until(lambda: not one.call(lambda: one.core.runtime.drained))
    assert upstream_state(one) == "up"


def test_an_instance_that_starts_late_gets_the_current_list(fleet):
    one = fleet("e1")
    one.call(lambda: one.core.block(BLOCKED))
    one.call(lambda: one.core.block("10.1.0.0/16", seconds=3600))
    one.call(lambda: one.core.set_gzip("/", True))
    late = fleet("e9")  # `fleet` returns once it has read the fleet's state
    assert {row["cidr"] for row in late.call(late.core.blocks)} == {
        f"{BLOCKED}/32",
        "10.1.0.0/16",
    }
    assert refused(late.port, BLOCKED)
    assert late.call(lambda: late.core.runtime.gzip_overrides) == {"/": True}


def test_with_redis_down_instances_serve_enforce_and_catch_up(fleet, redis_server):
    one, two, three = fleet("e1"), fleet("e2"), fleet("e3")
    subscriptions = {s: s.call(lambda s=s: s.core.bus.subscribe()) for s in (one, two, three)}
    one.call(lambda: one.core.block(BLOCKED))
    wait_until(lambda: refused(three.port, BLOCKED))

    redis_server.stop()
    for server in (one, two, three):
        wait_until(lambda server=server: not server.call(lambda: server.core.fleet_link.connected))
        assert status(server.port) == 200  # serving
        assert refused(server.port, BLOCKED)  # enforcing
    # A block made during the outage: local at once, kept in the state file, queued for Redis.
    reply = two.call(lambda: two.core.block("127.0.0.7"))
    assert reply["cidr"] == "127.0.0.7/32"
    assert refused(two.port, "127.0.0.7")
    assert status(one.port, source="127.0.0.7") == 200
    wait_until(lambda: "127.0.0.7/32" in (Path(two.config.state_file).read_text()))

    redis_server.start()  # empty: a Redis without persistence forgot everything
    for server in (one, two, three):
        wait_until(lambda server=server: server.call(lambda: linked(server)), timeout=15)
    for server in (one, three):
        wait_until(lambda server=server: refused(server.port, "127.0.0.7"))
    # The union of what the instances knew is in Redis again.
    fields = set(redis_server.client().hkeys("t:blocks"))
    assert fields == {f"{BLOCKED}/32|".encode(), b"127.0.0.7/32|"}
    for server, subscription in subscriptions.items():
        kinds = [e.kind for e in subscription.take() if e.kind.endswith("connected")]
        assert kinds == ["fleet_disconnected", "fleet_connected"], (server.port, kinds)


def test_reconciliation_keeps_the_latest_expiry(fleet, redis_server):
    one, two = fleet("e1"), fleet("e2")
    one.call(lambda: one.core.block(BLOCKED, seconds=60))
    wait_until(lambda: blocked_on(two, f"{BLOCKED}/32"))
    redis_server.stop()
    wait_until(lambda: not two.call(lambda: two.core.fleet_link.connected))
    # Cut off, each lengthens the block differently: one for an hour, the other for two.
    one.call(lambda: one.core.block(BLOCKED, seconds=3600))
    two.call(lambda: two.core.block(BLOCKED, seconds=7200))
    redis_server.start()

    def expiry(server: RunningServer) -> float:
        (row,) = server.call(server.core.blocks)
        return row["expires_in"]

    for server in (one, two):
        wait_until(lambda server=server: server.call(lambda: linked(server)), timeout=15)
    wait_until(lambda: expiry(one) > 3600 and expiry(two) > 3600)
    assert abs(expiry(one) - expiry(two)) < 60


def test_fleet_command_and_snapshot(fleet, start_server):
    one, two = fleet("e1"), fleet("e2")
    api = one.server.api
    assert api is not None

    def command(name: str) -> dict[str, Any]:
        replies: list[dict[str, Any]] = []
        one.call(lambda: api.run({"cmd": name}, replies.append))
        return replies[0]

    wait_until(lambda: len(command("fleet")["result"]["instances"]) == 2)
    result = command("fleet")["result"]
    assert result["name"] == "e1" and result["connected"] is True and result["alive"] == 2
    rows = {row["name"]: row for row in result["instances"]}
    assert rows["e1"]["self"] and not rows["e2"]["self"]
    assert all(row["alive"] and row["last_heartbeat"] > 0 for row in rows.values())
    assert command("snapshot")["result"]["fleet"]["alive"] == 2
    two.stop()  # a stopped instance says it is gone, and its thread ends
    assert two.core.fleet_link is not None and not two.core.fleet_link._thread.is_alive()
    wait_until(lambda: command("fleet")["result"]["alive"] == 1)
    assert {row["name"] for row in command("fleet")["result"]["instances"]} == {"e1", "e2"}
    alone = start_server(routes=[])
    replies: list[dict[str, Any]] = []
    alone.call(lambda: alone.server.api.run({"cmd": "fleet"}, replies.append))
    assert replies[0] == {"ok": True, "result": {"enabled": False, "instances": []}}


def test_a_reload_without_the_fleet_key_stops_sharing(fleet, tmp_path, site, redis_server):
    one, two = fleet("e1"), fleet("e2")
    data = instance_config(site, redis_server.url, "e1", tmp_path, port=one.port)
    del data["fleet"]
    path = write_config(tmp_path / "e1.json", data)
    link = one.core.fleet_link
    assert link is not None
    one.core.config.path = str(path)
    ok, message = one.call(one.core.reload)
    assert ok, message
    assert one.core.fleet_link is None and one.core.runtime.fleet is None
    wait_until(lambda: not link._thread.is_alive())
    one.call(lambda: one.core.block(BLOCKED))
    two.call(lambda: two.core.block("127.0.0.8"))
    wait_until(lambda: redis_server.client().hkeys("t:blocks") == [b"127.0.0.8/32|"])
    assert not blocked_on(one, "127.0.0.8/32")
    assert not blocked_on(two, f"{BLOCKED}/32")


def test_with_workers_only_the_master_talks_to_redis_and_its_workers_follow(
    fleet, redis_server, tmp_path, site
):
    one = fleet("e1")
    (tmp_path / "w").mkdir()
    extra = {"fleet": {"redis": redis_server.url, "name": "w", "prefix": "t"}}
    master = WorkersFleet(tmp_path / "w", site, workers=2, extra=extra)
    try:
        wait_until(lambda: master.result("fleet")["alive"] == 2, timeout=15)
        # Two connections (commands, subscription) for e1 and two for the master, none for
        # the workers; and the test's own.
        assert len(redis_server.client().client_list()) == 5
        one.call(lambda: one.core.block(BLOCKED))

        def every_worker_refuses() -> bool:
            return all(refused(master.port, BLOCKED) for _ in range(20))

        wait_until(every_worker_refuses)
        assert master.get("/hello.txt") == 200
        assert [row["cidr"] for row in master.result("blocks")] == [f"{BLOCKED}/32"]
        assert master.result("block", cidr="127.0.0.7")["workers"] == 2
        wait_until(lambda: refused(one.port, "127.0.0.7"))
        assert master.result("snapshot", limit=0)["fleet"]["alive"] == 2
    finally:
        master.stop()


def test_a_workers_automatic_block_reaches_the_master_its_other_worker_and_the_fleet(
    fleet, redis_server, tmp_path, site
):
    one = fleet("e1")
    (tmp_path / "w").mkdir()
    extra = {
        "fleet": {"redis": redis_server.url, "name": "w", "prefix": "t"},
        "auto_block": [{"when": "rate_limited", "count": 2, "window": 60, "block": "10m"}],
    }
    limited = {"req_path": "/limited", "type": "redirect", "http_status_code": 302,
               "redirect_url": "/", "limit_req": {"rate": 0.01, "burst": 1}}  # fmt: skip
    master = WorkersFleet(tmp_path / "w", site, workers=2, routes=[limited], extra=extra)
    try:
        wait_until(lambda: master.result("fleet")["alive"] == 2, timeout=15)
        # One connection, one worker: its bucket empties, 429s follow, then its rule blocks.
        client = Client(master.port, source=BLOCKED)
        try:
            for _ in range(10):
                assert client.request("GET", "/limited").status in (302, 429)
        except (OSError, h11.RemoteProtocolError):
            pass  # closed by the block
        finally:
            client.close()
        wait_until(lambda: [row["cidr"] for row in master.result("blocks")] == [f"{BLOCKED}/32"])
        (row,) = master.result("blocks")
        assert row["reason"] and "rate_limited" in row["reason"]
        assert all(refused(master.port, BLOCKED) for _ in range(20))  # every worker
        wait_until(lambda: refused(one.port, BLOCKED))  # and the fleet
        (row,) = one.call(one.core.blocks)
        assert "rate_limited" in row["reason"]
    finally:
        master.stop()
