"""Load balancing and passive health, without sockets: balancers over plain upstream states."""

from __future__ import annotations

from collections import Counter

import pytest

from xps_server.core.loop import Loop
from xps_server.events import EventBus
from xps_server.network.balancer import Balancer, ip_hash_key
from xps_server.network.upstream import UpstreamRegistry, UpstreamState


@pytest.fixture
def loop():
    loop = Loop()
    yield loop
    loop.close()


@pytest.fixture
def states(loop):
    bus = EventBus(loop)
    return [UpstreamState(loop, bus, "127.0.0.1", 9000 + i) for i in range(4)]


def names(balancer: Balancer, n: int, ip: str = "10.0.0.1", now: float = 0.0) -> str:
    letters = {id(p.state): "abcd"[i] for i, p in enumerate(balancer.peers)}
    return "".join(letters[id(balancer.pick(now, ip))] for _ in range(n))


def test_smooth_weighted_round_robin_interleaves_as_nginx(states):
    balancer = Balancer([(states[0], 5), (states[1], 1), (states[2], 1)], "round_robin")
    assert names(balancer, 14) == "aabacaa" * 2


def test_round_robin_weights_give_proportional_shares(states):
    balancer = Balancer([(states[0], 3), (states[1], 1)], "round_robin")
    assert names(balancer, 8) == "aabaaaba"
    equal = Balancer([(s, 1) for s in states[:3]], "round_robin")
    assert names(equal, 6) == "abcabc"


def test_unavailable_and_tried_upstreams_are_skipped(loop, states):
    a, b, c = states[:3]
    balancer = Balancer([(a, 1), (b, 1), (c, 1)], "round_robin")
    b.draining = True
    c.down_until = loop.now + 10
    assert {balancer.pick(loop.now, "x") for _ in range(4)} == {a}
    assert balancer.pick(loop.now, "x", [a]) is None
    c.down_until = loop.now - 1  # its fail_timeout is over: tried again
    assert balancer.pick(loop.now, "x", [a]) is c
    single = Balancer([(a, 1)], "round_robin")
    assert single.pick(loop.now, "x") is a
    assert single.pick(loop.now, "x", [a]) is None


def test_least_conn_prefers_fewer_requests_in_flight_per_weight(states):
    a, b, c = states[:3]
    balancer = Balancer([(a, 1), (b, 1), (c, 2)], "least_conn")
    a.active, b.active, c.active = 1, 0, 1
    assert balancer.pick(0, "x") is b
    b.active = 1  # a: 1/1, b: 1/1, c: 1/2
    assert balancer.pick(0, "x") is c
    c.active = 2  # all equal: ties go round robin by weight
    picks = Counter(balancer.pick(0, "x") for _ in range(8))
    assert picks == {a: 2, b: 2, c: 4}


def test_ip_hash_uses_the_first_three_octets(states):
    balancer = Balancer([(s, 1) for s in states], "ip_hash")
    for net in range(1, 30):
        first = balancer.pick(0, f"10.0.{net}.1")
        assert all(balancer.pick(0, f"10.0.{net}.{host}") is first for host in (2, 77, 254))
    spread = {balancer.pick(0, f"10.0.{n}.1") for n in range(64)}
    assert len(spread) == 4
    assert ip_hash_key("10.1.2.3") == bytes([10, 1, 2])
    assert ip_hash_key("::ffff:10.1.2.3") == bytes([10, 1, 2])
    assert len(ip_hash_key("2001:db8::1")) == 16


def test_ip_hash_moves_on_when_the_pick_is_down(loop, states):
    a, b = states[:2]
    balancer = Balancer([(a, 1), (b, 1)], "ip_hash")
    ip = next(f"10.0.{n}.1" for n in range(256) if balancer.pick(0, f"10.0.{n}.1") is a)
    a.down_until = loop.now + 10
    assert balancer.pick(loop.now, ip) is b
    a.down_until = 0.0
    assert balancer.pick(loop.now, ip) is a  # sticky again once back


def test_passive_health_window_and_recovery(loop):
    bus = EventBus(loop)
    events = bus.subscribe()
    state = UpstreamState(loop, bus, "127.0.0.1", 9000)
    state.failed("refused", max_fails=2, fail_timeout=5)
    assert state.status == "up" and state.available(loop.now)
    state.failed("refused", max_fails=2, fail_timeout=5)
    assert state.status == "down" and not state.available(loop.now)
    assert state.available(loop.now + 5.01)  # tried again after fail_timeout
    # One more failure on that try takes it straight back down.
    loop.now += 5.01
    state.failed("refused", max_fails=2, fail_timeout=5)
    assert state.status == "down"
    state.succeeded()
    assert state.status == "up" and state.fails == 0
    kinds = [(e.kind, getattr(e, "state", None)) for e in events.take()]
    # Down once: the failed try after fail_timeout keeps it down, it does not flap up and down.
    assert kinds.count(("upstream_health", "down")) == 1
    assert kinds.count(("upstream_health", "up")) == 1
    assert kinds.count(("upstream_failed", None)) == 3


def test_failures_outside_the_window_do_not_add_up(loop):
    state = UpstreamState(loop, EventBus(loop), "127.0.0.1", 9000)
    state.failed("x", max_fails=2, fail_timeout=1)
    loop.now += 1.5
    state.failed("x", max_fails=2, fail_timeout=1)
    assert state.status == "up"


def test_max_fails_zero_never_marks_down(loop):
    state = UpstreamState(loop, EventBus(loop), "127.0.0.1", 9000)
    for _ in range(10):
        state.failed("x", max_fails=0, fail_timeout=10)
    assert state.status == "up" and state.failures == 10


def test_registry_shares_states_between_routes_and_keeps_them_over_reloads(loop):
    from xps_server.config import parse_config

    def config(*upstreams: list):
        routes = [
            {"req_path": f"/r{i}", "type": "reverse_proxy", "upstreams": ups}
            for i, ups in enumerate(upstreams)
        ]
        data = {"servers": [{"listeners": [{"host": "127.0.0.1", "port": 1}], "routes": routes}]}
        return parse_config(data, "/")

    registry = UpstreamRegistry(loop, EventBus(loop))
    first = config(["127.0.0.1:9001", "localhost:9002"], [{"addr": "127.0.0.1:9001", "weight": 2}])
    registry.configure(first)
    assert sorted(registry) == ["127.0.0.1:9001", "localhost:9002"]
    r0, r1 = first.servers[0].routes
    assert registry.balancer_for(r0).peers[0].state is registry.balancer_for(r1).peers[0].state
    assert registry.balancer_for(r1).peers[0].weight == 2
    assert registry["localhost:9002"].sockaddr == ("127.0.0.1", 9002)
    kept = registry["127.0.0.1:9001"]
    kept.requests = 7
    registry.drain("127.0.0.1:9001")
    registry.configure(config(["127.0.0.1:9001", "[::1]:9003"]))
    assert sorted(registry) == ["127.0.0.1:9001", "[::1]:9003"]
    assert registry["127.0.0.1:9001"] is kept and kept.draining
    assert registry.enable("127.0.0.1:9001")["state"] == "up"
    with pytest.raises(KeyError):
        registry.drain("127.0.0.1:1")
    assert [row["addr"] for row in registry.snapshot()] == ["127.0.0.1:9001", "[::1]:9003"]
