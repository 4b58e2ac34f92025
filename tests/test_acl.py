"""IP access control: the CIDR matcher, route ACLs over real sockets, the runtime block list."""

from __future__ import annotations

import ipaddress
import json
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import Client, RunningServer, connect, dual_stack, free_port, wait_until
from xps_server.policy.acl import Access, NetSet, parse_ip, parse_network

# --- the matcher against a brute-force ipaddress reference ----------------------------------


def _ref_addr(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(text)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _ref_net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    net = ipaddress.ip_network(text, strict=False)
    mapped = net.network_address.ipv4_mapped if net.version == 6 else None
    if mapped is not None and net.prefixlen >= 96:
        return ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}")
    return net


def _ref_in(addr: str, nets: list[str]) -> bool:
    a = _ref_addr(addr)
    return any(a in _ref_net(n) for n in nets)


_v4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
_v6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
_mapped = _v4.map(lambda a: f"::ffff:{a}")
_addr = st.one_of(_v4, _v6, _mapped)


def _net_near(addr: str, prefix: int) -> str:
    bits = 32 if ":" not in addr else 128
    return f"{addr}/{prefix % (bits + 1)}"


def _flip(addr: str, bit: int) -> str:
    """`addr` with one bit changed: a neighbour just in or out of a block."""
    a = ipaddress.ip_address(addr)
    return str(type(a)(int(a) ^ (1 << (bit % a.max_prefixlen))))


@settings(max_examples=300, deadline=None)
@given(
    pool=st.lists(_addr, min_size=1, max_size=6),
    prefixes=st.lists(st.integers(0, 128), min_size=1, max_size=10),
    flips=st.lists(st.integers(0, 127), max_size=6),
    split=st.integers(0, 10),
)
def test_matcher_agrees_with_ipaddress(pool, prefixes, flips, split):
    nets = [_net_near(pool[i % len(pool)], p) for i, p in enumerate(prefixes)]
    probes = pool + [_flip(pool[i % len(pool)], b) for i, b in enumerate(flips)]
    whitelist, blacklist = nets[:split], nets[split:]
    netset = NetSet(nets)
    access = Access(
        NetSet(whitelist) if whitelist else None, NetSet(blacklist) if blacklist else None
    )
    for probe in probes:
        assert netset.contains_ip(probe) == _ref_in(probe, nets), (probe, nets)
        expected = (not whitelist or _ref_in(probe, whitelist)) and not _ref_in(probe, blacklist)
        assert access.allows(probe) == expected, (probe, whitelist, blacklist)


def test_parse_ip_folds_mapped_addresses_and_refuses_junk():
    assert parse_ip("10.0.0.7") == (4, 0x0A000007)
    assert parse_ip("::ffff:10.0.0.7") == (4, 0x0A000007)
    assert parse_ip("::1") == (6, 1)
    assert parse_ip("fe80::1%eth0") == (6, (0xFE80 << 112) | 1)
    for junk in ("", "1", "10.0.0.256", "example.com", ":::", "/tmp/sock"):
        assert parse_ip(junk) is None
    assert str(parse_network("::ffff:10.0.0.0/104")) == "10.0.0.0/8"
    with pytest.raises(ValueError, match="CIDR"):
        parse_network("10.0.0.0/33")


def test_long_lists_are_not_scanned():
    # 20,000 entries collapse into one hash set per prefix length present: a lookup probes
    # one set per length (here one per family), never the list.
    nets = [f"10.{i >> 8 & 255}.{i & 255}.0/24" for i in range(10_000)]
    nets += [f"2001:db8::{i:x}/128" for i in range(10_000)]
    netset = NetSet(nets)
    assert [len(netset._tables[4]), len(netset._tables[6])] == [1, 1]
    access = Access(None, netset)
    probes = [f"10.{i >> 8 & 255}.{i & 255}.9" for i in range(0, 20_000)]
    verdicts = [access._decide(p) for p in probes]
    assert verdicts[:10_000] == [False] * 10_000
    assert verdicts[10_000:] == [True] * 10_000  # 10.39.16.9 and up are not listed


# --- route ACLs over real sockets -----------------------------------------------------------


def _routes(site, **extra):
    def route(path, **keys):
        return {"req_path": path, "type": "file_serve", "dir_path": str(site), **keys}

    return [
        route("/"),
        route("/white", ip_whitelist=["127.0.0.2"]),
        route("/black", ip_blacklist=["127.0.0.20/32", "10.0.0.0/8"]),
        route("/both", ip_whitelist=["127.0.0.0/24"], ip_blacklist=["127.0.0.20"]),
        route("/v6", ip_whitelist=["::1"]),
        {"req_path": "/status", "type": "metrics"},
        *extra.get("more", []),
    ]


def status(port: int, path: str, source: str | None = None, host: str = "127.0.0.1") -> int:
    client = Client(port, host=host, source=source)
    try:
        response = client.request("GET", path)
        if response.status == 403:
            assert response.headers["server"] == "eXpServer"
        return response.status
    finally:
        client.close()


def refused(port: int, source: str | None = None, host: str = "127.0.0.1") -> bool:
    """True when the server closed the connection without a single byte of response."""
    sock = connect(port, host, source)
    try:
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return True
        return data == b""
    finally:
        sock.close()


@pytest.fixture
def acl_server(start_server, site):
    port = free_port()
    config = {
        "servers": [
            {
                "listeners": [{"host": "127.0.0.1", "port": port}, {"host": "::1", "port": port}],
                "routes": _routes(site),
            }
        ]
    }
    return start_server(config=config)


def test_whitelist_only_lets_listed_addresses_through(acl_server):
    port = acl_server.port
    assert status(port, "/white/hello.txt", "127.0.0.2") == 200
    assert status(port, "/white/hello.txt", "127.0.0.20") == 403
    assert status(port, "/white/hello.txt", "127.0.0.1") == 403
    assert status(port, "/hello.txt", "127.0.0.20") == 200


def test_blacklist_only_refuses_listed_addresses(acl_server):
    port = acl_server.port
    assert status(port, "/black/hello.txt", "127.0.0.20") == 403
    assert status(port, "/black/hello.txt", "127.0.0.2") == 200
    assert status(port, "/black/hello.txt", "127.0.0.21") == 200


def test_both_lists_mean_whitelist_minus_blacklist(acl_server):
    port = acl_server.port
    assert status(port, "/both/hello.txt", "127.0.0.2") == 200
    assert status(port, "/both/hello.txt", "127.0.0.20") == 403  # listed, then blacklisted
    assert status(port, "/both/hello.txt", "127.0.1.2") == 403  # outside the whitelist


def test_ipv6_rules_and_denials_are_counted(acl_server):
    port = acl_server.port
    before = acl_server.call(lambda: acl_server.core.stats.acl_denied)
    assert status(port, "/v6/hello.txt", host="::1") == 200
    assert status(port, "/v6/hello.txt", "127.0.0.2") == 403
    assert status(port, "/black/hello.txt", host="::1") == 200
    assert acl_server.call(lambda: acl_server.core.stats.acl_denied) == before + 1
    client = Client(port)
    metrics = json.loads(client.request("GET", "/status").body)
    client.close()
    assert metrics["acl_denied"] == before + 1


@pytest.mark.skipif(not dual_stack(), reason="needs dual-stack IPv6 sockets")
def test_ipv4_mapped_clients_match_ipv4_rules(start_server, site):
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::", 0))  # a port free on every address, IPv4 ones included
        port = probe.getsockname()[1]
    config = {"servers": [{"listeners": [{"host": "::", "port": port}], "routes": _routes(site)}]}
    start_server(config=config)
    # Over the dual-stack listener these clients are ::ffff:127.0.0.x.
    assert status(port, "/white/hello.txt", "127.0.0.2") == 200
    assert status(port, "/white/hello.txt", "127.0.0.20") == 403
    assert status(port, "/black/hello.txt", "127.0.0.20") == 403


# --- the runtime block list -------------------------------------------------------------------


def test_global_block_refuses_at_accept_and_closes_open_connections(acl_server):
    server, port = acl_server, acl_server.port
    victim = Client(port, source="127.0.0.20")
    assert victim.request("GET", "/hello.txt").status == 200
    bystander = Client(port, source="127.0.0.2")
    assert bystander.request("GET", "/hello.txt").status == 200

    result = server.call(lambda: server.core.block("127.0.0.20"))
    assert result["cidr"] == "127.0.0.20/32" and result["route"] is None
    assert result["closed"] == 1
    assert victim.closed_by_peer()
    assert refused(port, "127.0.0.20")
    assert bystander.request("GET", "/hello.txt").status == 200  # its connection lives on
    assert server.call(lambda: server.core.stats.conn_blocked) >= 1

    assert server.call(lambda: server.core.unblock("127.0.0.20"))["removed"] is True
    assert status(port, "/hello.txt", "127.0.0.20") == 200
    assert server.call(lambda: server.core.unblock("127.0.0.20"))["removed"] is False
    victim.close()
    bystander.close()


def test_global_cidr_block_covers_ipv6(acl_server):
    server, port = acl_server, acl_server.port
    server.call(lambda: server.core.block("::/0"))
    assert refused(port, host="::1")
    assert status(port, "/hello.txt", "127.0.0.2") == 200


def test_route_block_answers_403_on_that_route_only(acl_server):
    server, port = acl_server, acl_server.port
    result = server.call(lambda: server.core.block("127.0.0.0/30", route="/black/"))
    assert result["route"] == "/black"
    assert status(port, "/black/hello.txt", "127.0.0.2") == 403
    assert status(port, "/black/hello.txt", "127.0.0.5") == 200
    assert status(port, "/hello.txt", "127.0.0.2") == 200
    rows = server.call(server.core.blocks)
    assert rows == [
        # One request from 127.0.0.2 was refused by it above.
        {
            "cidr": "127.0.0.0/30",
            "route": "/black",
            "expires_at": None,
            "expires_in": None,
            "hits": 1,
            "reason": None,  # an operator's block
        }
    ]
    server.call(lambda: server.core.unblock("127.0.0.0/30", route="/black"))
    assert status(port, "/black/hello.txt", "127.0.0.2") == 200


def test_bad_commands_raise_clear_errors(acl_server):
    core = acl_server.core
    with pytest.raises(ValueError, match="not an IP address or CIDR block"):
        acl_server.call(lambda: core.block("10.0.0.300"))
    with pytest.raises(ValueError, match="unknown route '/nope'"):
        acl_server.call(lambda: core.block("10.0.0.1", route="/nope"))
    with pytest.raises(ValueError, match="no servers\\[3\\]"):
        acl_server.call(lambda: core.block("10.0.0.1", route="3:/"))
    with pytest.raises(ValueError, match="seconds"):
        acl_server.call(lambda: core.block("10.0.0.1", seconds=-1))
    # A server index is ASCII digits: "²" is no index, so this names no route at all.
    with pytest.raises(ValueError, match="unknown route '²:/'"):
        acl_server.call(lambda: core.block("10.0.0.1", route="²:/"))
    assert acl_server.call(core.blocks) == []


def test_blocks_expire(acl_server):
    server, port = acl_server, acl_server.port
    server.call(lambda: server.core.block("127.0.0.20", seconds=0.3))
    server.call(lambda: server.core.block("127.0.0.2", route="/", seconds=0.3))
    assert refused(port, "127.0.0.20")
    assert status(port, "/hello.txt", "127.0.0.2") == 403
    rows = server.call(server.core.blocks)
    assert len(rows) == 2 and all(0 < row["expires_in"] <= 0.3 for row in rows)
    wait_until(lambda: not server.call(server.core.blocks))
    assert status(port, "/hello.txt", "127.0.0.20") == 200
    assert status(port, "/hello.txt", "127.0.0.2") == 200


def test_blocks_survive_a_restart(tmp_path, site):
    state = tmp_path / "state.json"
    port = free_port()

    def config():
        return {
            "state_file": str(state),
            "servers": [
                {"listeners": [{"host": "127.0.0.1", "port": port}], "routes": _routes(site)}
            ],
        }

    first = RunningServer(config(), tmp_path)
    try:
        first.call(lambda: first.core.block("127.0.0.20"))
        first.call(lambda: first.core.block("127.0.0.2", route="/white", seconds=3600))
        first.call(lambda: first.core.block("127.0.0.3", seconds=0.2))  # gone before restart
        assert refused(port, "127.0.0.20")
    finally:
        first.stop()
    saved = json.loads(state.read_text())
    assert {b["cidr"] for b in saved["blocks"]} == {"127.0.0.20/32", "127.0.0.2/32", "127.0.0.3/32"}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    wait_until(lambda: time.time() > saved["blocks"][2]["expires_at"])

    second = RunningServer(config(), tmp_path)
    try:
        assert refused(port, "127.0.0.20")
        assert status(port, "/white/hello.txt", "127.0.0.2") == 403
        assert status(port, "/hello.txt", "127.0.0.3") == 200
        rows = second.call(second.core.blocks)
        assert [(r["cidr"], r["route"]) for r in rows] == [
            ("127.0.0.20/32", None),
            ("127.0.0.2/32", "/white"),
        ]
        second.call(lambda: second.core.unblock("127.0.0.20"))
    finally:
        second.stop()
    assert [b["cidr"] for b in json.loads(state.read_text())["blocks"]] == ["127.0.0.2/32"]


def test_a_subprocess_server_loads_the_state_file(tmp_path, site):
    import subprocess
    import sys

    port = free_port()
    state = tmp_path / "state.json"
    state.write_text(
        json.dumps(
            {
                "version": 1,
                "blocks": [
                    {"cidr": "127.0.0.20/32", "route": None, "expires_at": None},
                    {"cidr": "not an address", "route": None, "expires_at": None},
                ],
            }
        )
    )
    config = {
        "state_file": str(state),
        "servers": [{"listeners": [{"host": "127.0.0.1", "port": port}], "routes": _routes(site)}],
    }
    (tmp_path / "c.json").write_text(json.dumps(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "xps_server", str(tmp_path / "c.json")],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return proc.poll() is not None

        wait_until(up, timeout=10)
        assert refused(port, "127.0.0.20")
        assert status(port, "/hello.txt", "127.0.0.2") == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "blocks[1]" in err  # the bad entry is reported, the good one applied


def test_blocks_and_toggles_outlive_a_reload(acl_server, site):
    from xps_server.config import parse_config

    server, port, core = acl_server, acl_server.port, acl_server.core
    server.call(lambda: core.block("127.0.0.2", route="/white"))
    server.call(lambda: core.set_gzip("/white", True))
    assert status(port, "/white/hello.txt", "127.0.0.2") == 403
    fresh = parse_config(
        {
            "servers": [
                {
                    "listeners": [{"host": "127.0.0.1", "port": port}],
                    "routes": _routes(site)[:3],  # /, /white, /black
                }
            ]
        },
        str(site),
    )
    server.call(lambda: core.apply(fresh))
    assert status(port, "/white/hello.txt", "127.0.0.2") == 403  # the block holds
    assert status(port, "/white/hello.txt", "127.0.0.20") == 403  # the config list too
    assert status(port, "/v6/hello.txt", "127.0.0.2") == 404  # now under "/", which is open
    assert server.call(lambda: core.routing.states["/white"].gzip_enable) is True
    # The switch lives beside the config, which stays as the file says.
    assert server.call(lambda: core.config.servers[0].route_map["/white"].gzip_enable) is False
    server.call(lambda: core.unblock("127.0.0.2", route="/white"))
    assert status(port, "/white/hello.txt", "127.0.0.2") == 200
