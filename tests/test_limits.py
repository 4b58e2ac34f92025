"""Rate and connection limits (limit_req, limit_conn) and automatic blocks (auto_block).

The limiter takes the time as an argument, so its arithmetic is checked exactly with a fake
clock (against nginx's, as a model in exact fractions). On a real server the rate is small
enough (0.01 request/s) that the few milliseconds a test takes drain nothing measurable: an
instantaneous burst's rejections are exact without any timing threshold.

nginx's arithmetic, which `limit_req` follows: with rate r and burst b, an idle client may
send b + 1 requests at one instant (the first is served at once, b more fill the burst);
each further request at that instant is refused. So b + 1 + k requests get exactly k 429s.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.helpers import Client, connect, free_port, read_until_close, server_config, wait_until
from xps_server.config import ConfigError, parse_config
from xps_server.policy.blocklist import BlockList
from xps_server.policy.limits import (
    ConnCounter,
    ReportThrottle,
    RequestLimiter,
    WindowCounter,
    client_key,
    retry_after,
)

SLOW = 0.01  # requests per second: nothing drains while a test runs


# --- the limiter, exactly ------------------------------------------------------------------
@pytest.mark.parametrize("burst", [0, 1, 5, 40])
@pytest.mark.parametrize("extra", [0, 1, 7])
def test_burst_of_b_plus_1_plus_k_gets_k_rejections(burst: int, extra: int) -> None:
    limiter = RequestLimiter(rate=20, burst=burst)
    waits = [limiter.admit("10.0.0.1", 100.0) for _ in range(burst + 1 + extra)]
    assert [w > 0 for w in waits].count(True) == extra
    assert all(w == 0 for w in waits[: burst + 1])  # the first b + 1 pass, the rest do not


def test_refill_at_the_rate() -> None:
    limiter = RequestLimiter(rate=2, burst=1)
    assert [limiter.admit("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert limiter.admit("a", 0.25) == 0.25  # half way: still full
    assert limiter.admit("a", 0.5) == 0.0  # one request's worth drained
    assert limiter.admit("a", 0.5) == 0.5
    assert limiter.admit("a", 10.0) == 0.0  # long idle: empty again (excess never below 0)
    assert limiter.admit("a", 10.0) == 0.0
    assert limiter.admit("a", 10.0) == 0.5
    assert limiter.admit("b", 10.0) == 0.0  # keys do not share a bucket


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert [retry_after(w) for w in (0.001, 0.5, 1.0, 1.001, 99.2)] == [1, 1, 1, 2, 100]
    assert retry_after(float("inf")) == retry_after(1e300) == 86_400  # a rate of 5e-324/s
    limiter = RequestLimiter(rate=0.1, burst=0)
    limiter.admit("a", 0.0)
    assert retry_after(limiter.admit("a", 3.0)) == 7  # 10 s a request, 3 s gone


def _nginx(rate: Fraction, burst: int, times: list[Fraction]) -> list[Fraction]:
    """nginx's limit_req (nodelay) in exact arithmetic: 0 if served, else the wait."""
    excess: Fraction | None = None  # None: no node for the key yet
    last = Fraction(0)
    waits = []
    for now in times:
        if excess is None:
            excess, last = Fraction(0), now
            waits.append(Fraction(0))
            continue
        new = max(Fraction(0), excess - rate * (now - last) + 1)
        if new > burst:
            waits.append((new - burst) / rate)
        else:
            excess, last = new, now
            waits.append(Fraction(0))
    return waits


# Rates and times that floats hold exactly, so the float limiter must agree exactly.
RATES = st.sampled_from([Fraction(1, 4), Fraction(1, 2), Fraction(1), Fraction(2), Fraction(8)])
GAPS = st.lists(st.integers(0, 12).map(lambda q: Fraction(q, 4)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(rate=RATES, burst=st.integers(0, 6), gaps=GAPS)
def test_limiter_matches_nginx_arithmetic(rate: Fraction, burst: int, gaps: list) -> None:
    times, now = [], Fraction(0)
    for gap in gaps:
        now += gap
        times.append(now)
    limiter = RequestLimiter(float(rate), burst)
    got = [limiter.admit("k", float(t)) for t in times]
    assert got == [float(w) for w in _nginx(rate, burst, times)]


@settings(max_examples=300, deadline=None)
@given(
    max_keys=st.integers(1, 6),
    keys=st.lists(st.integers(0, 12).map(str), max_size=80),
)
def test_buckets_are_a_bounded_lru(max_keys: int, keys: list[str]) -> None:
    limiter = RequestLimiter(rate=1, burst=0, max_keys=max_keys)
    recent: list[str] = []  # the model: most recently used last
    for key in keys:
        limiter.admit(key, 0.0)
        if key in recent:
            recent.remove(key)
        recent.append(key)
        recent = recent[-max_keys:]
        assert len(limiter) == len(recent) <= max_keys
        assert all(k in limiter for k in recent)


def test_a_forgotten_bucket_starts_empty() -> None:
    limiter = RequestLimiter(rate=SLOW, burst=0, max_keys=2)
    assert limiter.admit("a", 0.0) == 0.0
    assert limiter.admit("a", 0.0) > 0
    limiter.admit("b", 0.0)
    limiter.admit("c", 0.0)  # "a" is the least recently used: forgotten
    assert "a" not in limiter
    assert limiter.admit("a", 0.0) == 0.0


def test_client_keys() -> None:
    assert client_key("10.1.2.3", "ip") == "10.1.2.3"
    assert client_key("10.1.2.3", "ip/24") == client_key("10.1.2.200", "ip/24")
    assert client_key("10.1.2.3", "ip/24") != client_key("10.1.3.3", "ip/24")
    assert client_key("::ffff:10.1.2.3", "ip/24") == client_key("10.1.2.9", "ip/24")
    assert client_key("2001:db8:1:2::1", "ip/24") == client_key("2001:db8:1:2:ff::9", "ip/24")
    assert client_key("2001:db8:1:2::1", "ip/24") != client_key("2001:db8:1:3::1", "ip/24")


def test_conn_counter() -> None:
    counter = ConnCounter(2)
    assert [counter.acquire("a") for _ in range(3)] == [True, True, False]
    assert counter.acquire("b")
    counter.release("a")
    assert counter.acquire("a")
    counter.release("a")
    counter.release("a")
    assert counter.counts == {"b": 1}  # a key with no connection takes no memory


def test_window_counter() -> None:
    counter = WindowCounter(count=3, window=10.0, max_keys=2)
    assert [counter.hit("a", t) for t in (0.0, 1.0, 9.0)] == [False, False, True]
    # Crossing starts the window over.
    assert [counter.hit("a", t) for t in (9.5, 10.0)] == [False, False]
    # Events more than a window after the window's first start a new one.
    assert [counter.hit("b", t) for t in (0.0, 1.0, 10.0, 11.0)] == [False, False, False, False]
    assert counter.hit("b", 12.0)
    counter.hit("c", 20.0)
    counter.hit("d", 20.0)
    assert len(counter) == 2


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(1, 4),
    events=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 8)), max_size=60),
)
def test_window_counter_matches_a_model(count: int, events: list[tuple[int, int]]) -> None:
    counter = WindowCounter(count, window=4.0)
    windows: dict[str, tuple[float, int]] = {}
    now = 0.0
    for key_number, gap in events:
        now += gap / 2
        key = str(key_number)
        start, seen = windows.get(key, (now, 0))
        if now - start >= 4.0:
            start, seen = now, 0
        seen += 1
        crossed = seen >= count
        if crossed:
            windows.pop(key, None)
        else:
            windows[key] = (start, seen)
        assert counter.hit(key, now) == crossed


def test_report_throttle() -> None:
    throttle = ReportThrottle(interval=1.0, max_keys=2)
    # A key's first hit reports at once; hits within the interval are held and counted.
    assert [throttle.hit("a", t) for t in (0.0, 0.5, 0.9, 1.0, 1.5)] == [1, 0, 0, 3, 0]
    assert throttle.hit("b", 0.2) == 1
    # A third key forgets all: "a" reports its next hit at once, the held one is lost.
    assert throttle.hit("c", 1.6) == 1
    assert throttle.hit("a", 1.7) == 1


def test_block_reasons_survive_the_state_file() -> None:
    blocks = BlockList()
    blocks.add("10.0.0.1/32", None, 2e9, "auto: rate_limited 3/60s")
    blocks.add("10.0.0.2/32", None, None)
    saved = BlockList.format(blocks.entries.items(), blocks.reasons)
    again = BlockList()
    assert again.load_json(json.loads(json.dumps(saved)), 1e9) == []
    rows = {row["cidr"]: row["reason"] for row in again.listing(1e9)}
    assert rows == {"10.0.0.1/32": "auto: rate_limited 3/60s", "10.0.0.2/32": None}
    # An operator's block of the same entry replaces the reason.
    assert again.add("10.0.0.1/32", None, 2e9)
    assert again.listing(1e9)[0]["reason"] is None


# --- config -----------------------------------------------------------------------------------
def _config(route: dict | None = None, **top: object) -> dict:
    routes = [{"req_path": "/", "type": "metrics", **(route or {})}]
    return {"servers": [{"listeners": [{"port": 8000}], "routes": routes}], **top}


def test_config_reads_limits_and_rules() -> None:
    config = parse_config(
        _config(
            {"limit_req": {"rate": 0.5, "burst": 40, "key": "ip/24"}, "limit_conn": {"per_ip": 5}},
            auto_block=[
                {"when": "rate_limited", "count": 100, "window": 10, "block": "10m"},
                {"when": "status_4xx", "count": 200, "window": 60, "block": "1h", "route": "/"},
                {"when": "status_5xx", "count": 5, "window": 1.5, "block": 30},
            ],
            allowlist=["10.0.0.0/8", "2001:db8::1"],
        ),
        "/tmp",
    )
    route = config.servers[0].routes[0]
    assert route.limit_req is not None and route.limit_conn is not None
    assert (route.limit_req.rate, route.limit_req.burst, route.limit_req.key) == (0.5, 40, "ip/24")
    assert route.limit_conn.per_ip == 5
    assert [(r.block, r.route) for r in config.auto_block] == [(600, None), (3600, "/"), (30, None)]
    assert [r.reason for r in config.auto_block] == [
        "auto: rate_limited 100/10s",
        "auto: status_4xx 200/60s on /",
        "auto: status_5xx 5/1.5s",
    ]
    assert config.allowlist == ["10.0.0.0/8", "2001:db8::1/128"]
    defaults = parse_config(_config({"limit_req": {"rate": 3}}), "/tmp").servers[0].routes[0]
    assert defaults.limit_req is not None
    assert (defaults.limit_req.burst, defaults.limit_req.key) == (0, "ip")


def test_config_errors_name_their_key_path() -> None:
    bad = _config(
        {"limit_req": {"rate": 0, "burst": -1, "key": "ip/16"}, "limit_conn": {"per_ip": 0}},
        auto_block=[{"when": "often", "count": 0, "window": 0, "block": "5y", "route": "/x"}],
        allowlist=["not-an-ip"],
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(bad, "/tmp")
    problems = "\n".join(caught.value.problems)
    for path in (
        "servers[0].routes[0].limit_req.rate:",
        "servers[0].routes[0].limit_req.burst:",
        "servers[0].routes[0].limit_req.key:",
        "servers[0].routes[0].limit_conn.per_ip:",
        "auto_block[0].when:",
        "auto_block[0].count:",
        "auto_block[0].window:",
        "auto_block[0].block:",
        "auto_block[0].route:",
        "allowlist[0]:",
    ):
        assert path in problems


NUMBERS = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(rate=NUMBERS, burst=NUMBERS, per_ip=NUMBERS)
def test_limit_values(rate: object, burst: object, per_ip: object) -> None:
    def number(value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    rate_ok = number(rate) and 0 < rate < float("inf")
    burst_ok = number(burst) and isinstance(burst, int) and burst >= 0
    per_ip_ok = number(per_ip) and isinstance(per_ip, int) and per_ip >= 1
    route = {"limit_req": {"rate": rate, "burst": burst}, "limit_conn": {"per_ip": per_ip}}
    try:
        config = parse_config(_config(route), "/tmp")
    except ConfigError as exc:
        problems = exc.problems
        assert not (rate_ok and burst_ok and per_ip_ok)
        where = "servers[0].routes[0]."
        assert any(p.startswith(where + "limit_req.rate:") for p in problems) == (not rate_ok)
        assert any(p.startswith(where + "limit_req.burst:") for p in problems) == (not burst_ok)
        assert any(p.startswith(where + "limit_conn.per_ip:") for p in problems) == (not per_ip_ok)
        return
    assert rate_ok and burst_ok and per_ip_ok
    parsed = config.servers[0].routes[0]
    assert parsed.limit_req is not None and parsed.limit_conn is not None
    assert (parsed.limit_req.rate, parsed.limit_req.burst) == (rate, burst)
    assert parsed.limit_conn.per_ip == per_ip


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@settings(max_examples=100, deadline=None)
@given(amount=st.integers(1, 10_000), unit=st.sampled_from(sorted(UNITS)))
def test_block_durations(amount: int, unit: str) -> None:
    rule = {"when": "rate_limited", "count": 1, "window": 1, "block": f"{amount}{unit}"}
    config = parse_config(_config(auto_block=[rule]), "/tmp")
    assert config.auto_block[0].block == amount * UNITS[unit]


@settings(max_examples=200, deadline=None)
@given(block=st.one_of(st.text(max_size=6), st.integers(-5, 0), st.booleans(), st.none()))
def test_bad_block_durations_are_refused(block: object) -> None:
    valid = isinstance(block, str) and re.fullmatch(r"[0-9]+(\.[0-9]+)?[smhd]", block)
    assume(not (valid and float(block[:-1]) > 0))
    rule = {"when": "rate_limited", "count": 1, "window": 1, "block": block}
    with pytest.raises(ConfigError) as caught:
        parse_config(_config(auto_block=[rule]), "/tmp")
    assert caught.value.problems == [
        "auto_block[0].block: expected a duration > 0 such as 30, "
        f'"30s", "10m", "1h" or "1d", got {_shown(block)}'
    ]


def _shown(value: object) -> str:
    from xps_server.config.load import _describe

    return _describe(value)


def test_invalid_limits_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_config({"limit_req": {"rate": -1}})))
    done = subprocess.run(
        [sys.executable, "-m", "xps_server", "--check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "servers[0].routes[0].limit_req.rate: expected a finite number > 0" in done.stderr
    assert "Traceback" not in done.stderr


# --- on a real server -------------------------------------------------------------------------
def _files(site: Path, **limits: object) -> dict:
    return {"req_path": "/", "type": "file_serve", "dir_path": str(site), **limits}


def _get(client: Client, path: str = "/hello.txt") -> tuple[int, str | None]:
    response = client.request("GET", path)
    return response.status, response.headers.get("retry-after")


def _top(server, ip: str) -> dict:
    core = server.core

    def ask() -> list:
        core.accounting.report()
        assert core.top is not None
        return core.top.top(core.loop.now, 60, 100)

    return next(row for row in server.call(ask) if row["ip"] == ip)


def test_limit_req_on_a_server(start_server, site) -> None:
    burst, extra = 3, 2
    server = start_server([_files(site, limit_req={"rate": SLOW, "burst": burst})])
    sub = server.call(lambda: server.core.bus.subscribe())
    client = Client(server.port, source="127.0.0.2")
    answers = [_get(client) for _ in range(burst + 1 + extra)]
    assert [status for status, _ in answers] == [200] * (burst + 1) + [429] * extra
    assert all(after is None for _, after in answers[: burst + 1])
    for _, after in answers[burst + 1 :]:
        assert after is not None and after.isdigit() and 1 <= int(after) <= 100  # 1 / SLOW
    # Another client has its own bucket.
    other = Client(server.port, source="127.0.0.3")
    assert _get(other)[0] == 200

    metrics = server.call(server.core.metrics_snapshot)
    assert metrics["rate_limited"] == extra
    assert metrics["rate_limited_routes"] == {"/": {"req": extra, "conn": 0}}
    text = server.call(server.core.metrics_prometheus)
    assert f'xps_rate_limited_total{{route="/",limit="req"}} {extra}' in text
    row = _top(server, "127.0.0.2")
    assert (row["requests"], row["limited"], row["status_4xx"]) == (burst + 1 + extra, extra, extra)
    assert _top(server, "127.0.0.3")["limited"] == 0

    events = [e.to_dict() for e in sub.take() if e.kind == "rate_limited"]
    assert events, "no rate_limited event"
    assert all((e["client"], e["route"], e["limit"]) == ("127.0.0.2", "/", "req") for e in events)
    assert events[0]["count"] == 1
    assert sum(e["count"] for e in events) <= extra  # at most one a second, with a count
    client.close()
    other.close()


def test_limit_req_keyed_by_network(start_server, site) -> None:
    server = start_server([_files(site, limit_req={"rate": SLOW, "key": "ip/24"})])
    assert _get(Client(server.port, source="127.0.0.2"))[0] == 200
    assert _get(Client(server.port, source="127.0.0.3"))[0] == 429  # the same /24
    assert _get(Client(server.port, source="127.0.1.2"))[0] == 200  # another /24


def test_routes_without_limits_are_not_limited(start_server, site) -> None:
    routes = [
        _files(site, req_path="/limited", limit_req={"rate": SLOW}),
        _files(site),
    ]
    server = start_server(routes)
    client = Client(server.port, source="127.0.0.2")
    assert [_get(client, "/limited/hello.txt")[0] for _ in range(2)] == [200, 429]
    assert [_get(client)[0] for _ in range(5)] == [200] * 5
    assert server.call(lambda: server.core.routing.states["/"].limits) is None


def test_limit_conn_counts_connections_that_sent_a_request(start_server, site) -> None:
    server = start_server([_files(site, limit_conn={"per_ip": 2})])
    idle = connect(server.port, source="127.0.0.2")  # sends nothing: not counted
    first, second, third = (Client(server.port, source="127.0.0.2") for _ in range(3))
    assert _get(first)[0] == 200
    assert _get(second)[0] == 200
    assert _get(first)[0] == 200  # a counted connection goes on
    assert _get(third) == (429, "1")
    assert _get(third)[0] == 429  # still over the cap
    assert _get(Client(server.port, source="127.0.0.3"))[0] == 200  # another address
    counts = server.core.limiting.routes["/"].conn
    assert counts is not None
    second.close()
    wait_until(lambda: server.call(lambda: counts.counts.get("127.0.0.2")) == 1)
    assert _get(third)[0] == 200  # a slot freed when a counted connection closed
    metrics = server.call(server.core.metrics_snapshot)
    assert metrics["rate_limited_routes"] == {"/": {"req": 0, "conn": 2}}
    assert _top(server, "127.0.0.2")["limited"] == 2
    for sock in (idle, first.sock, third.sock):
        sock.close()
    wait_until(lambda: server.call(lambda: dict(counts.counts)) == {})


def _blocks(server) -> list[dict]:
    return server.call(server.core.blocks)


def _refused(port: int, source: str) -> bool:
    """Whether a connection from `source` is closed at accept without an answer."""
    sock = connect(port, source=source)
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    except OSError:
        return True
    try:
        return read_until_close(sock) == b""
    except OSError:
        return True
    finally:
        sock.close()


def test_auto_block_on_rate_limited(start_server, site, tmp_path) -> None:
    rule = {"when": "rate_limited", "count": 3, "window": 60, "block": "10m"}
    server = start_server(
        [_files(site, limit_req={"rate": SLOW})],
        auto_block=[rule],
        state_file=str(tmp_path / "state.json"),
    )
    sub = server.call(lambda: server.core.bus.subscribe())
    client = Client(server.port, source="127.0.0.4")
    bystander = Client(server.port, source="127.0.0.5")
    assert _get(bystander)[0] == 200
    assert [_get(client)[0] for _ in range(3)] == [200, 429, 429]
    assert _blocks(server) == []  # two rejections: under the rule's count
    assert _get(client)[0] == 429  # the third crosses it
    blocks = wait_until(lambda: _blocks(server))
    assert [(b["cidr"], b["route"], b["reason"]) for b in blocks] == [
        ("127.0.0.4/32", None, "auto: rate_limited 3/60s")
    ]
    assert 0 < blocks[0]["expires_in"] <= 600
    assert read_until_close(client.sock) == b""  # its open connection was closed
    assert _refused(server.port, "127.0.0.4")
    assert _get(bystander)[0] == 429  # its connection stays open: limited, not blocked
    # As the operator's block: in the state file, with its reason.
    saved = wait_until(lambda: _saved_blocks(tmp_path / "state.json"))
    assert saved[0]["cidr"] == "127.0.0.4/32" and saved[0]["reason"] == "auto: rate_limited 3/60s"
    events = [e.to_dict() for e in sub.take() if e.kind == "auto_blocked"]
    assert [(e["client"], e["cidr"], e["seconds"], e["reason"], e["closed"]) for e in events] == [
        ("127.0.0.4", "127.0.0.4/32", 600.0, "auto: rate_limited 3/60s", 1)
    ]
    assert server.call(server.core.metrics_snapshot)["auto_blocks"] == 1
    bystander.close()


def test_auto_blocks_expire(start_server, site) -> None:
    rule = {"when": "rate_limited", "count": 1, "window": 60, "block": "1s"}
    server = start_server([_files(site, limit_req={"rate": SLOW})], auto_block=[rule])
    sub = server.call(lambda: server.core.bus.subscribe())
    client = Client(server.port, source="127.0.0.15")
    assert [_get(client)[0] for _ in range(2)] == [200, 429]
    # The block may be over before a listing could see it: its event says it was applied.
    server.call(lambda: None)  # the block is applied on the loop's next turn, before this
    events = [e.to_dict() for e in sub.take() if e.kind == "auto_blocked"]
    assert [(e["client"], e["seconds"]) for e in events] == [("127.0.0.15", 1.0)]
    wait_until(lambda: _blocks(server) == [], timeout=10)
    again = Client(server.port, source="127.0.0.15")
    assert _get(again)[0] == 429  # served again (and still limited: the bucket stays full)
    again.close()


def _saved_blocks(path: Path) -> list[dict]:
    try:
        return json.loads(path.read_text())["blocks"]
    except FileNotFoundError:
        return []


def test_auto_block_on_status_4xx_of_one_route(start_server, site) -> None:
    rule = {"when": "status_4xx", "count": 3, "window": 60, "block": 30, "route": "/login"}
    server = start_server([_files(site), _files(site, req_path="/login")], auto_block=[rule])
    client = Client(server.port, source="127.0.0.6")
    assert [_get(client, "/missing")[0] for _ in range(4)] == [404] * 4  # another route
    assert [_get(client, "/login/missing")[0] for _ in range(2)] == [404, 404]
    assert _blocks(server) == []
    assert _get(client, "/login/hello.txt")[0] == 200
    assert _get(client, "/login/missing")[0] == 404
    blocks = wait_until(lambda: _blocks(server))
    assert [(b["cidr"], b["reason"]) for b in blocks] == [
        ("127.0.0.6/32", "auto: status_4xx 3/60s on /login")
    ]
    assert 0 < blocks[0]["expires_in"] <= 30


def test_auto_block_on_status_5xx(start_server, site) -> None:
    dead = free_port()  # nothing listens there: 502
    proxy = {"req_path": "/api", "type": "reverse_proxy", "upstreams": [f"127.0.0.1:{dead}"]}
    rule = {"when": "status_5xx", "count": 2, "window": 60, "block": "1m"}
    server = start_server([proxy, _files(site)], auto_block=[rule])
    client = Client(server.port, source="127.0.0.7")
    assert [_get(client, "/missing")[0] for _ in range(3)] == [404] * 3  # 4xx: not counted
    assert _get(client, "/api/x")[0] == 502
    assert _blocks(server) == []
    assert _get(client, "/api/x")[0] == 502
    blocks = wait_until(lambda: _blocks(server))
    assert [(b["cidr"], b["reason"]) for b in blocks] == [
        ("127.0.0.7/32", "auto: status_5xx 2/60s")
    ]


def test_allowlist_is_never_auto_blocked(start_server, site) -> None:
    rule = {"when": "rate_limited", "count": 2, "window": 60, "block": 60}
    server = start_server(
        [_files(site, limit_req={"rate": SLOW})],
        auto_block=[rule],
        allowlist=["127.0.0.8/31"],  # 127.0.0.8 and .9
    )
    office = Client(server.port, source="127.0.0.9")
    assert [_get(office)[0] for _ in range(7)] == [200] + [429] * 6  # the rule crossed 3 times
    # The same from an address outside the allowlist is blocked; its block comes after any
    # the allowlisted address would have had.
    stranger = Client(server.port, source="127.0.0.10")
    assert [_get(stranger)[0] for _ in range(3)] == [200, 429, 429]
    blocks = wait_until(lambda: _blocks(server))
    assert [b["cidr"] for b in blocks] == ["127.0.0.10/32"]
    assert _get(office)[0] == 429  # still served (and still limited)


def test_auto_block_never_shortens_a_longer_block(start_server, site) -> None:
    # One rejection crosses both rules: the 10-minute block applies first, and the 1-second
    # one after it must leave it as it is.
    long = {"when": "rate_limited", "count": 1, "window": 60, "block": "10m"}
    short = {"when": "rate_limited", "count": 1, "window": 30, "block": "1s"}
    server = start_server(
        [_files(site, req_path="/api", limit_req={"rate": SLOW}), _files(site)],
        auto_block=[long, short],
    )
    core = server.core
    server.call(lambda: core.block("127.0.0.11", route="/"))  # a route block: another entry
    client = Client(server.port, source="127.0.0.11")
    assert [_get(client, "/api/hello.txt")[0] for _ in range(2)] == [200, 429]
    server.call(lambda: None)  # both blocks were tried on the loop's next turn, before this
    blocks = {b["route"]: b for b in _blocks(server)}
    assert blocks[None]["reason"] == "auto: rate_limited 1/60s"
    assert blocks[None]["expires_in"] > 1
    assert blocks["/"]["reason"] is None  # the operator's route block is untouched
    assert server.call(core.metrics_snapshot)["auto_blocks"] == 1
    # An operator's block for good outlasts any automatic one.
    server.call(lambda: core.block("127.0.0.12"))
    assert server.call(lambda: core.runtime.outlasts("127.0.0.12", 1e9))
    assert not server.call(lambda: core.runtime.outlasts("127.0.0.13", 1))


def test_blocks_command_shows_the_reason(start_server, site) -> None:
    from xps_server.server.control import CommandAPI

    rule = {"when": "rate_limited", "count": 1, "window": 10, "block": "10m"}
    server = start_server([_files(site, limit_req={"rate": SLOW})], auto_block=[rule])
    client = Client(server.port, source="127.0.0.13")
    assert [_get(client)[0] for _ in range(2)] == [200, 429]
    wait_until(lambda: _blocks(server))
    api = CommandAPI(server.core)
    replies: list[dict] = []
    server.call(lambda: api.run({"cmd": "blocks"}, replies.append))
    assert replies[0]["ok"], replies
    assert [(b["cidr"], b["reason"]) for b in replies[0]["result"]] == [
        ("127.0.0.13/32", "auto: rate_limited 1/10s")
    ]


def test_reload_keeps_buckets(start_server, site, tmp_path) -> None:
    from tests.helpers import write_config

    port = free_port()
    data = server_config(port, [_files(site, limit_req={"rate": SLOW})])
    path = write_config(tmp_path / "config.json", data)
    server = start_server(config=data)
    server.core.config.path = str(path)
    client = Client(server.port, source="127.0.0.14")
    assert _get(client)[0] == 200
    data["servers"][0]["routes"][0]["limit_req"]["burst"] = 1
    write_config(path, data)
    ok, message = server.call(server.core.reload)
    assert ok, message
    # The bucket remembered the first request: one more fits the new burst, then no more.
    assert [_get(client)[0] for _ in range(2)] == [200, 429]


def test_each_closed_connection_is_released(start_server, site) -> None:
    server = start_server([_files(site, limit_conn={"per_ip": 1})])
    counts = server.core.limiting.routes["/"].conn
    assert counts is not None
    for _ in range(5):
        with socket.create_connection((server.host, server.port)) as sock:
            sock.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_until_close(sock).startswith(b"HTTP/1.1 200")
        wait_until(lambda: server.call(lambda: dict(counts.counts)) == {})
