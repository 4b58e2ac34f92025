"""Abuse of the operator surface: block floods, corrupt state files, hostile control lines.

A pipelined flood of `block` commands must not stop HTTP traffic, and its replies must say
`persisted` truthfully; blocking an address closes only that address's connections; the block
list stays right through any sequence of changes (checked against a brute-force model); a
state file that cannot be used is kept aside, never overwritten; deeply nested JSON gets an
error, not a traceback.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import os
import select
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import (
    Client,
    RunningServer,
    dual_stack,
    free_port,
    server_config,
    wait_until,
)
from xps_server.policy.acl import NetSet
from xps_server.policy.blocklist import BlockList
from xps_server.server.control import CommandAPI, ControlServer

BATCH = 2000
DEEP = 100_000


def _block_line(i: int) -> bytes:
    command = {"id": i, "cmd": "block", "args": {"cidr": f"10.1.{i >> 8 & 255}.{i & 255}"}}
    return json.dumps(command).encode() + b"\n"


class Lines:
    """JSON lines read off a socket, without blocking when asked not to."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.messages: list[dict] = []

    def pump(self, wait: bool) -> None:
        """Read what is there (with `wait`, at least one chunk) and parse whole lines."""
        if not wait and not select.select([self.sock], [], [], 0)[0]:
            return
        chunk = self.sock.recv(1 << 20)
        assert chunk, "control socket closed"
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        self.messages += [json.loads(line) for line in lines]

    def drain(self) -> None:
        before = -1
        while before != len(self.buffer) + len(self.messages):
            before = len(self.buffer) + len(self.messages)
            self.pump(wait=False)

    def read(self) -> dict:
        while not self.messages:
            self.pump(wait=True)
        return self.messages.pop(0)


@pytest.fixture
def policy(start_server, site, tmp_path):
    """A server with a state file and a control socket."""
    state = tmp_path / "state.json"
    server = start_server(
        [{"req_path": "/", "type": "file_serve", "dir_path": str(site)}], state_file=str(state)
    )
    path = str(tmp_path / "ctl.sock")
    control = server.call(lambda: ControlServer(server.core, CommandAPI(server.core), path))
    yield server, path, state
    server.call(control.close)


def _control(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def _connected(path: str) -> socket.socket | None:
    """A connection to the control socket, or None while it does not listen yet."""
    try:
        return _control(path)
    except ConnectionRefusedError:
        return None


# --- a flood of blocks ----------------------------------------------------------------------
def test_http_is_answered_while_a_pipelined_batch_of_blocks_runs(policy):
    server, path, _ = policy
    control = _control(path)
    replies = Lines(control)
    http = Client(server.port)
    sender = threading.Thread(
        target=control.sendall, args=(b"".join(map(_block_line, range(BATCH))),)
    )
    sender.start()
    # Proof by order, not by time: an HTTP request sent after the batch began answered while
    # some of its replies had not been written yet. Replies are read as they come, so none
    # waits in the server for us; the one non-blocking read after each response shows what
    # the server had written by then.
    answered_during_batch = 0
    while len(replies.messages) < BATCH:
        began = len(replies.messages) > 0
        http.send_raw(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        while True:
            ready, _, _ = select.select([http.sock, control], [], [], 30)
            assert ready, "no progress"
            if control in ready:
                replies.pump(wait=True)
            if http.sock in ready:
                break
        assert http.read_response().status == 200
        replies.drain()
        if began and len(replies.messages) < BATCH:
            answered_during_batch += 1
    sender.join()
    assert answered_during_batch > 0
    assert [m["id"] for m in replies.messages] == list(range(BATCH))  # in request order
    http.close()
    control.close()


def test_every_reply_of_a_batch_is_persisted_and_the_file_holds_them_all(policy):
    server, path, state = policy
    control = _control(path)
    replies = Lines(control)
    control.sendall(b"".join(map(_block_line, range(BATCH))))
    for i in range(BATCH):
        reply = replies.read()
        assert reply["id"] == i and reply["ok"] is True, reply
        assert reply["result"]["persisted"] is True
    # The last reply came once the file holding its change was fsynced: it is there now.
    saved = {b["cidr"] for b in json.loads(state.read_text())["blocks"]}
    assert saved == {f"10.1.{i >> 8 & 255}.{i & 255}/32" for i in range(BATCH)}
    assert server.call(lambda: len(server.core.runtime.blocklist.entries)) == BATCH
    control.close()


def test_a_peer_that_shuts_down_its_side_still_gets_every_reply(policy):
    # What `printf '...' | socat - UNIX-CONNECT:ctl.sock` does: send, shut down, read.
    _, path, _ = policy
    control = _control(path)
    control.sendall(b"".join(map(_block_line, range(300))) + b'{"id": "last", "cmd": "ping"}\n')
    control.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := control.recv(1 << 20):
        data += chunk
    replies = [json.loads(line) for line in data.splitlines()]
    assert [r["id"] for r in replies] == [*range(300), "last"]
    assert all(r["result"]["persisted"] is True for r in replies[:300])
    control.close()


def test_submit_resolves_once_the_state_file_holds_the_change(policy):
    server, _, state = policy
    api = CommandAPI(server.core)
    on_disk_when_resolved: dict[str, bool] = {}

    def check(cidr: str):
        # Runs where the future is resolved (the loop thread), at that very moment.
        def on_done(future) -> None:
            saved = json.loads(state.read_text())["blocks"] if state.exists() else []
            on_disk_when_resolved[cidr] = any(b["cidr"] == cidr for b in saved)

        return on_done

    futures = []
    for i in range(50):
        cidr = f"10.2.0.{i}/32"
        future = api.submit({"cmd": "block", "args": {"cidr": cidr}})
        future.add_done_callback(check(cidr))
        futures.append(future)
    assert all(f.result(30)["result"]["persisted"] is True for f in futures)
    wait_until(lambda: len(on_disk_when_resolved) == 50)
    assert all(on_disk_when_resolved.values())
    # A command that changes nothing reports whether the state as it is now is on disk.
    reply = api.submit({"cmd": "unblock", "args": {"cidr": "10.9.9.9"}}).result(30)
    assert reply["result"] == {
        "cidr": "10.9.9.9/32",
        "route": None,
        "removed": False,
        "persisted": True,
    }


def test_persisted_is_false_when_the_write_fails_and_null_without_a_state_file(
    start_server, site, tmp_path
):
    (tmp_path / "file").write_text("not a folder")
    routes = [{"req_path": "/", "type": "file_serve", "dir_path": str(site)}]
    broken = start_server(routes, state_file=str(tmp_path / "file" / "state.json"))
    reply = CommandAPI(broken.core).submit({"cmd": "block", "args": {"cidr": "10.3.0.1"}})
    result = reply.result(30)["result"]
    assert result["persisted"] is False
    assert broken.call(lambda: broken.core.runtime.blocklist.entries) == {
        (None, "10.3.0.1/32"): None
    }  # applied all the same
    plain = start_server(routes)
    reply = CommandAPI(plain.core).submit({"cmd": "gzip", "args": {"route": "/"}})
    assert reply.result(30)["result"]["persisted"] is None


def test_a_route_block_replaces_the_memoised_verdicts(policy):
    server, _, _ = policy
    api = CommandAPI(server.core)

    def command(name: str, **args) -> dict:
        reply = api.submit({"cmd": name, "args": args}).result(30)
        assert reply["ok"], reply
        return reply["result"]

    client = Client(server.port, source="127.0.0.2")
    assert client.request("GET", "/hello.txt").status == 200  # allowed, and memoised
    command("block", cidr="127.0.0.2", route="/")
    assert client.request("GET", "/hello.txt").status == 403
    command("unblock", cidr="127.0.0.2", route="/")
    assert client.request("GET", "/hello.txt").status == 200
    command("block", cidr="127.0.0.0/30", route="/")
    assert client.request("GET", "/hello.txt").status == 403
    command("block", cidr="127.0.0.0/30", route="/", seconds=0.2)  # now it expires
    wait_until(lambda: client.request("GET", "/hello.txt").status == 200)
    client.close()


# --- blocking one address closes only its connections ---------------------------------------
def _clients(port: int, source: str, count: int, host: str = "127.0.0.1") -> list[Client]:
    clients = [Client(port, host=host, source=source) for _ in range(count)]
    for client in clients:
        assert client.request("GET", "/hello.txt").status == 200
    return clients


def test_blocking_one_address_closes_only_its_connections(policy):
    server, path, _ = policy
    core = server.core
    victims = _clients(server.port, "127.0.0.2", 3)
    bystanders = _clients(server.port, "127.0.0.3", 3)
    assert server.call(lambda: {ip: len(s) for ip, s in core.sessions_by_ip.items()}) == {
        "127.0.0.2": 3,
        "127.0.0.3": 3,
    }
    control = _control(path)
    replies = Lines(control)
    control.sendall(json.dumps({"cmd": "block", "args": {"cidr": "127.0.0.2"}}).encode() + b"\n")
    assert replies.read()["result"]["closed"] == 3
    assert all(victim.closed_by_peer() for victim in victims)
    for bystander in bystanders:
        assert bystander.request("GET", "/hello.txt").status == 200
    # The index follows the sessions: the closed ones are gone from it, and nothing is left
    # behind once the others close.
    assert server.call(lambda: {ip: len(s) for ip, s in core.sessions_by_ip.items()}) == {
        "127.0.0.3": 3
    }
    for client in victims + bystanders:
        client.close()
    wait_until(lambda: server.call(lambda: not core.sessions and not core.sessions_by_ip))
    control.close()


@pytest.mark.skipif(not dual_stack(), reason="needs dual-stack IPv6 sockets")
def test_blocks_close_ipv4_mapped_peers_of_a_dual_stack_listener(start_server, site):
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::", 0))
        port = probe.getsockname()[1]
    routes = [{"req_path": "/", "type": "file_serve", "dir_path": str(site)}]
    config = {"servers": [{"listeners": [{"host": "::", "port": port}], "routes": routes}]}
    server = start_server(config=config)
    core = server.core
    two = _clients(port, "127.0.0.2", 2)
    three = _clients(port, "127.0.0.3", 2)
    four = _clients(port, "127.0.0.4", 1)
    assert server.call(lambda: sorted(core.sessions_by_ip)) == [
        "::ffff:127.0.0.2",
        "::ffff:127.0.0.3",
        "::ffff:127.0.0.4",
    ]
    assert server.call(lambda: core.block("127.0.0.2"))["closed"] == 2  # one address
    assert all(client.closed_by_peer() for client in two)
    assert server.call(lambda: core.block("127.0.0.2/31"))["closed"] == 2  # .2 and .3
    assert all(client.closed_by_peer() for client in three)
    assert four[0].request("GET", "/hello.txt").status == 200
    for client in two + three + four:
        client.close()


# --- the block list against a brute-force model ---------------------------------------------
def _random_network(version: int, number: int, prefix: int) -> str:
    bits = 32 if version == 4 else 128
    prefix %= bits + 1
    address = ipaddress.ip_address(number % (1 << bits) if version == 4 else number)
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


# Addresses and networks drawn from a small pool, so adds, removes and probes meet.
_POOL = [
    (4, 0x0A000001),
    (4, 0x0A000101),
    (4, 0x7F000002),
    (6, 0x20010DB8 << 96 | 1),
    (6, 0x20010DB8 << 96 | 1 << 64),
]
_network = st.builds(
    lambda pick, prefix, flip: _random_network(
        _POOL[pick][0], _POOL[pick][1] ^ (1 << flip % (32 if _POOL[pick][0] == 4 else 128)), prefix
    ),
    st.integers(0, len(_POOL) - 1),
    st.sampled_from([0, 8, 16, 24, 31, 32, 48, 64, 96, 120, 127, 128]),
    st.integers(0, 127),
)
_scope = st.sampled_from([None, "/", "1:/api"])
_operation = st.one_of(
    st.tuples(st.just("add"), _network, _scope, st.one_of(st.none(), st.integers(1, 20))),
    st.tuples(st.just("remove"), _network, _scope),
    st.tuples(st.just("expire"), st.integers(0, 20)),
)


def _probes() -> list[str]:
    """The pool's addresses, neighbours one bit away, and IPv4 ones as IPv4-mapped IPv6."""
    probes = []
    for version, number in _POOL:
        for flip in (0, 7, 8, 16, 31, 64, 127) if version == 6 else (0, 7, 8, 16, 31):
            probes.append(str(ipaddress.ip_address(number ^ (1 << flip))))
        probes.append(str(ipaddress.ip_address(number)))
    probes += [f"::ffff:{ipaddress.IPv4Address(n)}" for v, n in _POOL if v == 4]
    return probes


@functools.cache
def _reference_address(probe: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(probe)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _reference_in(probe: str, networks: set[str]) -> bool:
    addr = _reference_address(probe)
    return any(addr in ipaddress.ip_network(net) for net in networks)


@settings(max_examples=200, deadline=None)
@given(operations=st.lists(_operation, max_size=40))
def test_block_list_changes_agree_with_a_brute_force_model(operations):
    blocks = BlockList()
    model: dict[tuple[str | None, str], float | None] = {}
    probes = _probes()
    now = 0
    for operation in operations:
        if operation[0] == "add":
            _, network, scope, expires_at = operation
            at = None if expires_at is None else float(now + expires_at)
            changed = blocks.add(network, scope, at)
            assert changed == (model.get((scope, network), "absent") != at)
            model[(scope, network)] = at
        elif operation[0] == "remove":
            _, network, scope = operation
            assert blocks.remove(network, scope) == ((scope, network) in model)
            model.pop((scope, network), None)
        else:
            now += operation[1]
            due = sorted((k for k, at in model.items() if at is not None and at <= now), key=str)
            assert sorted(blocks.expire(float(now)), key=str) == sorted(due, key=str)
            for key in due:
                del model[key]
        assert blocks.entries == model
        live = [at for at in model.values() if at is not None]
        assert blocks.next_expiry() == (min(live) if live else None)
        for scope in (None, "/", "1:/api"):
            networks = {net for (s, net) in model if s == scope}
            found = blocks.global_set if scope is None else blocks.route_sets.get(scope)
            assert (found is None) == (not networks)  # empty sets are dropped
            for probe in probes:
                expected = _reference_in(probe, networks)
                assert (found is not None and found.contains_ip(probe)) == expected, (
                    probe,
                    scope,
                    networks,
                )


@settings(max_examples=200, deadline=None)
@given(
    operations=st.lists(st.tuples(st.booleans(), _network), max_size=40),
)
def test_netset_add_and_discard_agree_with_a_brute_force_model(operations):
    netset = NetSet()
    model: set[str] = set()
    probes = _probes()
    for is_add, network in operations:
        if is_add:
            assert netset.add(network) == (network not in model)
            model.add(network)
        else:
            assert netset.discard(network) == (network in model)
            model.discard(network)
        assert len(netset) == len(model)
        for probe in probes:
            assert netset.contains_ip(probe) == _reference_in(probe, model), (probe, model)
    # A lookup probes one set per prefix length present, as a NetSet built at once does.
    rebuilt = NetSet(model)
    assert [len(netset._tables[v]) for v in (4, 6)] == [len(rebuilt._tables[v]) for v in (4, 6)]


# --- the state file at start ----------------------------------------------------------------
def _state_config(site: Path, state: Path) -> dict:
    routes = [{"req_path": "/", "type": "file_serve", "dir_path": str(site)}]
    return server_config(free_port(), routes, state_file=str(state))


@pytest.mark.parametrize(
    "content",
    [
        '{"version": 1, "blocks": [{"cidr": "10.0.0.1/32", "route": nu',  # truncated
        "[" * DEEP + "]" * DEEP,  # nested too deeply for the parser
        '{"blocks": [' + "{" * 10 + "\x00",  # garbage
        "[1, 2, 3]",  # JSON, but not an object
    ],
    ids=["truncated", "deep", "garbage", "not-an-object"],
)
def test_an_unusable_state_file_is_kept_aside(site, tmp_path, caplog, content):
    state = tmp_path / "state.json"
    state.write_text(content)
    caplog.set_level(logging.ERROR, logger="xps.runtime")
    server = RunningServer(_state_config(site, state), tmp_path)
    try:
        aside = [p for p in tmp_path.iterdir() if p.name.startswith("state.json.corrupt-")]
        assert len(aside) == 1 and aside[0].read_text() == content
        assert server.call(server.core.blocks) == []
        message = next(r.getMessage() for r in caplog.records if r.name == "xps.runtime")
        assert str(state) in message and str(aside[0]) in message
        reply = CommandAPI(server.core).submit({"cmd": "block", "args": {"cidr": "10.0.0.2"}})
        assert reply.result(30)["result"]["persisted"] is True
    finally:
        server.stop()
    assert aside[0].read_text() == content  # the new state went beside it, not over it
    assert [b["cidr"] for b in json.loads(state.read_text())["blocks"]] == ["10.0.0.2/32"]


def test_a_subprocess_server_with_a_deep_state_file_starts_and_says_why(site, tmp_path):
    state = tmp_path / "state.json"
    state.write_text("{" + '"a": {' * DEEP + "}" * (DEEP + 1))
    sock = tmp_path / "ctl.sock"
    config = _state_config(site, state) | {"control_socket": str(sock)}
    (tmp_path / "config.json").write_text(json.dumps(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "xps_server", str(tmp_path / "config.json")],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(sock.exists, timeout=20)
        control = wait_until(lambda: _connected(str(sock)), timeout=20)
        replies = Lines(control)
        control.sendall(b'{"cmd": "ping"}\n')
        assert replies.read()["result"] == "pong"  # serving: its signal handlers are set
        control.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "nested too deeply" in err and "state.json.corrupt-" in err


def test_stale_temporary_state_files_are_removed_at_start(site, tmp_path):
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"version": 1, "blocks": [{"cidr": "10.0.0.1", "route": None}]}))
    stale = [tmp_path / "state.json.4242.tmp", tmp_path / f"state.json.{os.getpid()}.tmp"]
    for path in stale:
        path.write_text('{"version": 1, "blo')  # what a crash in the middle of a write leaves
    unrelated = tmp_path / "state.json.backup.tmp"
    unrelated.write_text("mine")
    server = RunningServer(_state_config(site, state), tmp_path)
    try:
        assert not any(path.exists() for path in stale)
        assert unrelated.read_text() == "mine"
        assert [row["cidr"] for row in server.call(server.core.blocks)] == ["10.0.0.1/32"]
    finally:
        server.stop()


# --- deeply nested JSON elsewhere -----------------------------------------------------------
def test_a_deeply_nested_control_line_gets_an_error_and_the_connection_lives(policy):
    _, path, _ = policy
    control = _control(path)
    replies = Lines(control)
    control.sendall(b"[" * DEEP + b"]" * DEEP + b"\n")
    reply = replies.read()
    assert reply["ok"] is False and "nested too deeply" in reply["error"]
    nested_id = {"id": json.loads("[" * 500 + "]" * 500), "cmd": "ping"}
    control.sendall(json.dumps(nested_id).encode() + b"\n")
    assert replies.read() == {"ok": False, "error": "'id' must be a string or a number"}
    control.sendall(b'{"id": 1, "cmd": "ping"}\n')
    assert replies.read() == {"id": 1, "ok": True, "result": "pong"}
    control.close()


def test_a_deeply_nested_config_is_a_config_error(tmp_path):
    config = tmp_path / "deep.json"
    config.write_text('{"servers": ' + "[" * DEEP + "]" * DEEP + "}")
    done = subprocess.run(
        [sys.executable, "-m", "xps_server", "--check", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"invalid config {config}" in done.stderr and "recursion" in done.stderr
