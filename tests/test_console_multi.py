"""One console over several servers (`xps-console --attach A.sock --attach B.sock`).

Two real servers on loopback, each with its control socket, and the real app over a
`MultiLink` to both, driven with Textual's pilot. What a key did is checked on each server's
own control socket (or its sockets), never on the console's data.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Client, RunningServer, free_port, server_config
from tests.test_console import SIZE, SMALL, closed_by_server, get, question, until
from tests.test_fleet import instance_config
from xps_console import cli
from xps_console.app import ConsoleApp
from xps_console.formatting import describe_reply
from xps_console.link import AttachedLink
from xps_console.multi import MultiLink, merge_acl
from xps_console.screens.session_detail import SessionScreen

BLOCKED_IP = "127.0.0.2"
OTHER_IP = "127.0.0.3"


def control(path: Path, name: str, **args: Any) -> dict:
    """One command on a server's control socket, as a script would send it."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(json.dumps({"id": 1, "cmd": name, "args": args}).encode() + b"\n")
        reply = json.loads(sock.makefile("rb").readline())
    assert reply["ok"], reply
    return reply["result"]


def blocked(path: Path, ip: str) -> bool:
    return any(row["cidr"] == f"{ip}/32" for row in control(path, "blocks"))


class Instance:
    """A server on a loop thread with a control socket named `name`.sock."""

    def __init__(self, tmp_path: Path, config: dict, name: str) -> None:
        self.name = name
        self.socket = tmp_path / f"{name}.sock"
        config["control_socket"] = str(self.socket)
        self.config, self.folder = config, tmp_path
        self.server: RunningServer | None = RunningServer(config, tmp_path)
        self.port = self.server.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def restart(self) -> None:
        """The same server again: same port, same control socket."""
        self.server = RunningServer(self.config, self.folder)


@pytest.fixture
def instances(tmp_path: Path) -> Iterator[Callable[[str, dict], Instance]]:
    started: list[Instance] = []

    def start(name: str, config: dict) -> Instance:
        instance = Instance(tmp_path, config, name)
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.stop()


def files(site: Path) -> dict:
    return server_config(
        free_port(), [{"req_path": "/", "type": "file_serve", "dir_path": str(site)}]
    )


@pytest.fixture
def two(instances, site: Path) -> tuple[Instance, Instance]:
    """Two file servers, a.sock and b.sock."""
    return instances("a", files(site)), instances("b", files(site))


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    """The test's HTTP clients, closed at the end whatever happened."""
    made: list[Client] = []
    yield made
    for client in made:
        client.close()


def console(*servers: Instance) -> tuple[ConsoleApp, MultiLink]:
    link = MultiLink([AttachedLink(str(server.socket)) for server in servers])
    return ConsoleApp(link), link


async def served(server: Instance, source: str, clients: list[Client]) -> Client:
    """A keep-alive client of `server` from address `source`, served one file already."""
    client = await asyncio.to_thread(Client, server.port, "127.0.0.1", source)
    clients.append(client)
    assert (await get(client, "/hello.txt")).status == 200
    return client


def row_of(app: ConsoleApp, ip: str) -> tuple[str, dict] | None:
    """The sessions table's key and row of `ip`'s session once it served a request."""
    for key, row in app.sessions.data_by_key.items():
        if row["ip"] == ip and row["requests"]:
            return key, row
    return None


def cell(app: ConsoleApp, key: str, column: str) -> str:
    return str(app.sessions.cell(key, column))


def test_sessions_of_both_servers_with_their_instance_and_b_blocks_on_both(two, clients):
    a, b = two
    app, link = console(a, b)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            victim = await served(a, BLOCKED_IP, clients)
            other = await served(b, OTHER_IP, clients)
            victim_key, victim_row = await until(pilot, lambda: row_of(app, BLOCKED_IP))
            other_key, other_row = await until(pilot, lambda: row_of(app, OTHER_IP))
            assert "instance" in app.sessions.column_keys
            assert (victim_row["instance"], other_row["instance"]) == ("a.sock", "b.sock")
            assert cell(app, victim_key, "instance") == "a.sock"
            assert cell(app, other_key, "instance") == "b.sock"
            # Both servers number their first session 1: the table keeps them apart.
            assert victim_key != other_key
            assert cell(app, victim_key, "id") == str(victim_row["local_id"])
            assert "a.sock, b.sock" in app.sub_title and "DISCONNECTED" not in app.sub_title
            # Events from both, each line naming its server.
            await until(pilot, lambda: any("[a.sock]" in line and "/hello.txt 200" in line
                                           for line in app.event_log.shown))  # fmt: skip
            await until(pilot, lambda: any("[b.sock]" in line and "/hello.txt 200" in line
                                           for line in app.event_log.shown))  # fmt: skip

            # The detail view asks the session's own server, with the id it gave.
            app.sessions.focus()
            app.sessions.select(other_key)
            await pilot.press("enter")
            detail = await until(
                pilot, lambda: isinstance(app.screen, SessionScreen) and app.screen.detail
            )
            assert detail["client"] == other_row["client"]
            await pilot.press("escape")

            app.sessions.focus()
            app.sessions.select(victim_key)
            await pilot.press("b")
            await question(pilot, app)
            await pilot.press("y")
            assert await closed_by_server(victim)
            await until(pilot, lambda: blocked(a.socket, BLOCKED_IP))
            assert blocked(b.socket, BLOCKED_IP)
            assert any("Blocked 127.0.0.2" in line and "(on a.sock, b.sock)" in line
                       for line in app.event_log.shown)  # fmt: skip
            # Both servers announce the block; the console shows its own reply once.
            await until(pilot, lambda: not link._extra_echoes and not app.echoes)
            await until(pilot, lambda: app.acl.row_count == 1)
            assert not any("block cidr=" in line for line in app.event_log.shown)
            # The other server's client is untouched.
            assert (await get(other, "/hello.txt")).status == 200

    asyncio.run(scenario())


def test_k_kills_the_session_on_its_own_server(two, clients):
    a, b = two
    app, _ = console(a, b)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            on_a = await served(a, BLOCKED_IP, clients)
            on_b = await served(b, OTHER_IP, clients)
            await until(pilot, lambda: row_of(app, BLOCKED_IP))
            key, row = await until(pilot, lambda: row_of(app, OTHER_IP))
            # Same id on both servers: the kill must reach b's, not a's.
            assert (
                row["local_id"] == app.sessions.data_by_key[row_of(app, BLOCKED_IP)[0]]["local_id"]
            )
            app.sessions.focus()
            app.sessions.select(key)
            await pilot.press("k")
            await question(pilot, app)
            await pilot.press("y")
            assert await closed_by_server(on_b)
            assert (await get(on_a, "/hello.txt")).status == 200

    asyncio.run(scenario())


def test_one_server_stopping_shows_it_disconnected_while_the_other_keeps_updating(two, clients):
    a, b = two
    app, _ = console(a, b)

    async def scenario() -> None:
        async with app.run_test(size=SMALL) as pilot:
            await until(pilot, lambda: app.snapshots)
            await asyncio.to_thread(b.stop)
            await until(pilot, lambda: "b.sock DISCONNECTED" in app.sub_title)
            assert app.connected and not app.dashboard.has_class("-stale")
            assert "a.sock DISCONNECTED" not in app.sub_title
            await until(pilot, lambda: any("[b.sock]" in line for line in app.event_log.shown
                                           if "link" in line))  # fmt: skip
            client = await served(a, OTHER_IP, clients)
            _, row = await until(pilot, lambda: row_of(app, OTHER_IP))
            assert row["instance"] == "a.sock"
            client.close()
            await until(pilot, lambda: row_of(app, OTHER_IP) is None)  # still updating
            # None left: the dashboard greys out; the first back brings it back.
            await asyncio.to_thread(a.stop)
            await until(pilot, lambda: not app.connected)
            assert app.dashboard.has_class("-stale") and "DISCONNECTED" in app.sub_title
            await asyncio.to_thread(b.restart)
            await until(pilot, lambda: app.connected, timeout=15)
            assert not app.dashboard.has_class("-stale")
            assert "a.sock DISCONNECTED" in app.sub_title
            assert "b.sock DISCONNECTED" not in app.sub_title
            client = await served(b, OTHER_IP, clients)
            _, row = await until(pilot, lambda: row_of(app, OTHER_IP))
            assert row["instance"] == "b.sock"

    asyncio.run(scenario())


def test_in_one_redis_fleet_a_block_is_sent_once_and_reaches_both(
    tmp_path, site, instances, redis_server
):
    a = instances("a", instance_config(site, redis_server.url, "edge-1", tmp_path))
    b = instances("b", instance_config(site, redis_server.url, "edge-2", tmp_path))
    app, _ = console(a, b)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            # Named after their fleet names once a snapshot said them (and Redis answered).
            await until(pilot, lambda: "edge-1, edge-2 · fleet t: 2 alive" in app.sub_title)
            await app.command("block", cidr=BLOCKED_IP)
            assert any("(sent to edge-1: the fleet shares it over Redis)" in line
                       for line in app.event_log.shown)  # fmt: skip
            await until(pilot, lambda: blocked(b.socket, BLOCKED_IP))
            assert blocked(a.socket, BLOCKED_IP)
            # Only edge-1 was asked: edge-2 has it from Redis (a fleet_change, no command).
            await until(pilot, lambda: any("[edge-2]" in line and "edge-1: block" in line
                                           for line in app.event_log.shown))  # fmt: skip

    asyncio.run(scenario())


def test_a_server_down_at_start_joins_when_it_comes_up(two, clients):
    a, b = two
    b.stop()
    app, _ = console(a, b)

    async def scenario() -> None:
        async with app.run_test(size=SMALL) as pilot:
            await until(pilot, lambda: app.snapshots)
            assert "b.sock DISCONNECTED" in app.sub_title and app.connected
            await asyncio.to_thread(b.restart)
            await until(pilot, lambda: "DISCONNECTED" not in app.sub_title, timeout=15)
            await served(b, OTHER_IP, clients)
            _, row = await until(pilot, lambda: row_of(app, OTHER_IP))
            assert row["instance"] == "b.sock"

    asyncio.run(scenario())


def test_a_block_held_by_several_servers_is_one_acl_row():
    acl = merge_acl(
        [
            {"blocks": [{"cidr": "10.0.0.1/32", "route": None, "expires_at": 100.0,
                         "expires_in": 10.0, "hits": 2}]},
            {"blocks": [{"cidr": "10.0.0.1/32", "route": None, "expires_at": 200.0,
                         "expires_in": 110.0, "hits": 3},
                        {"cidr": "10.0.0.1/32", "route": "/api", "expires_at": None,
                         "expires_in": None, "hits": 0}]},
            {"blocks": [{"cidr": "10.0.0.1/32", "route": "/api", "expires_at": 50.0,
                         "expires_in": 1.0, "hits": 1}]},
        ]
    )  # fmt: skip
    everywhere, on_api = acl["blocks"]
    assert (everywhere["hits"], everywhere["expires_at"]) == (5, 200.0)  # the latest expiry
    assert (on_api["hits"], on_api["expires_at"]) == (1, None)  # no expiry outlasts any


def test_a_change_that_failed_somewhere_says_where_it_was_done():
    reply = {"ok": False, "error": "done on a.sock; b.sock: not sent: gone", "result": {}}
    message, severity = describe_reply("block", {"cidr": "10.0.0.1"}, reply)
    assert message == "Block 10.0.0.1 failed: done on a.sock; b.sock: not sent: gone"
    assert severity == "error"


def test_cli_attach_given_twice_names_each_missing_socket(tmp_path, capsys):
    present = tmp_path / "a.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(present))
        assert cli.main(["--attach", str(present), "--attach", str(tmp_path / "b.sock")]) == 1
    err = capsys.readouterr().err
    assert "no control socket" in err and "b.sock" in err and "a.sock" not in err
    args = cli.build_parser().parse_args(["--attach", "a.sock", "--attach", "b.sock"])
    assert args.attach == ["a.sock", "b.sock"]
