"""The console, driven through Textual's Pilot against real servers on loopback.

Each test runs the real app (`ConsoleApp`) over a real link: an embedded server on a loop
thread, or a headless `xps-server` subprocess through its control socket. Keys are pressed as
an operator would; what they did is checked on the server's sockets, never on its objects.
Blocking socket calls run in threads (`asyncio.to_thread`) so the app keeps drawing.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual import events
from textual.command import Command as PaletteHit
from textual.command import CommandList, CommandPalette
from textual.pilot import Pilot
from textual.widgets import Input, Static
from textual.widgets._footer import FooterKey

from tests.console_fakes import CannedLink
from tests.helpers import Client, RunningServer, connect, free_port, server_config, write_config
from xps_console.app import ConsoleApp
from xps_console.link import AttachedLink, EmbeddedLink
from xps_console.screens.block_form import BlockForm
from xps_console.screens.confirm import ConfirmScreen
from xps_console.screens.dashboard import PANELS
from xps_console.screens.help import HelpScreen
from xps_console.screens.session_detail import SessionScreen
from xps_console.widgets.event_log import FilterInput
from xps_console.widgets.metrics import MetricsPanel
from xps_console.widgets.tables import KeyedTable
from xps_server.server.commands import Arg, Command
from xps_server.server.control import COMMANDS, CommandAPI, ControlServer

SIZE = (160, 50)
SMALL = (80, 24)
ROOT = Path(__file__).resolve().parent.parent
BLOCKED_IP = "127.0.0.5"


# --- helpers --------------------------------------------------------------------------------
async def until(pilot: Pilot, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Let the app run until `predicate()` is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.05)


def site_config(tmp_path: Path, site: Path, route: dict | None = None, **top: Any) -> Path:
    routes = [{"req_path": "/", "type": "file_serve", "dir_path": str(site), **(route or {})}]
    return write_config(tmp_path / "config.json", server_config(free_port(), routes, **top))


def port_of(config_path: Path) -> int:
    return json.loads(config_path.read_text())["servers"][0]["listeners"][0]["port"]


@pytest.fixture
def embedded() -> Iterator[Callable[[Path], EmbeddedLink]]:
    """Start embedded servers; whatever a test leaves running is stopped afterwards."""
    links: list[EmbeddedLink] = []

    def start(config_path: Path) -> EmbeddedLink:
        link = EmbeddedLink(str(config_path), grace=2.0)
        link.start()
        links.append(link)
        return link

    yield start
    for link in links:
        link.shutdown()


def row_key_of(app: ConsoleApp, ip: str) -> str | None:
    for key, row in app.sessions.data_by_key.items():
        if row["ip"] == ip:
            return key
    return None


def served_row_key(app: ConsoleApp, ip: str) -> str | None:
    """The sessions table's key of `ip`'s session once a snapshot shows it served a request."""
    key = row_key_of(app, ip)
    return key if key is not None and app.sessions.data_by_key[key]["requests"] else None


def acl_key_of(app: ConsoleApp, ip: str) -> str | None:
    for key, entry in app.acl.data_by_key.items():
        if entry["kind"] == "block" and entry["cidr"].split("/")[0] == ip:
            return key
    return None


def select(table: KeyedTable, key: str) -> None:
    table.focus()
    table.select(key)


def log_has(app: ConsoleApp, *words: str) -> bool:
    return any(all(w in line for w in words) for line in app.event_log.shown)


def toasts(app: ConsoleApp) -> list[tuple[str, str]]:
    """Record every toast the app raises, as (message, severity)."""
    seen: list[tuple[str, str]] = []
    notify = app.notify

    def recording(message: str, **kwargs: Any) -> None:
        seen.append((str(message), kwargs.get("severity", "information")))
        notify(message, **kwargs)

    app.notify = recording  # type: ignore[method-assign]
    return seen


async def get(client: Client, path: str, headers: dict | None = None):
    return await asyncio.to_thread(client.request, "GET", path, headers)


async def closed_by_server(client: Client) -> bool:
    return await asyncio.to_thread(client.closed_by_peer)


def refused_at_accept(port: int, source: str) -> bool:
    """A new connection from `source` gets closed without a single byte of response."""
    with connect(port, source=source) as sock:
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            return sock.recv(1024) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True


def one_shot(port: int, source: str, path: str = "/hello.txt") -> int:
    """One short connection: connect, GET with Connection: close, read the status, close."""
    client = Client(port, "127.0.0.1", source)
    try:
        return client.request("GET", path, {"Connection": "close"}).status
    finally:
        client.close()


async def question(pilot: Pilot, app: ConsoleApp) -> str:
    """The confirmation on screen (waits for it)."""
    screen = await until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen)
    return screen.question


async def quit_app(pilot: Pilot, app: ConsoleApp) -> None:
    await pilot.press("q")
    await until(pilot, lambda: app.return_code is not None)


# --- the panels -----------------------------------------------------------------------------
def test_requests_show_in_sessions_table_and_log(tmp_path, site, embedded):
    config = site_config(tmp_path, site)
    app = ConsoleApp(embedded(config))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            client = await asyncio.to_thread(Client, port_of(config))
            assert (await get(client, "/hello.txt")).status == 200
            # A snapshot taken between the connect and the request shows the session with no
            # request yet: wait for one that shows it.
            key = await until(pilot, lambda: served_row_key(app, "127.0.0.1"))
            row = app.sessions.data_by_key[key]
            assert row["client"] == f"127.0.0.1:{client.sock.getsockname()[1]}"
            assert row["route"] == "/"
            assert row["requests"] == 1
            assert "1 of 1" in str(app.dashboard.panel("sessions").border_title)
            await until(pilot, lambda: log_has(app, "GET /hello.txt 200"))
            assert log_has(app, "open", f"127.0.0.1:{client.sock.getsockname()[1]}")
            # What the operator reads: the events the console received, never a stale 0.
            await until(pilot, lambda: f"events {app.events_received:,} received" in summary(app))
            assert app.events_received >= 2
            client.close()
            await until(pilot, lambda: row_key_of(app, "127.0.0.1") is None)
            await until(pilot, lambda: log_has(app, "close", "1 req"))

    asyncio.run(scenario())


def summary(app: ConsoleApp) -> str:
    """The counters the metrics panel shows."""
    return app.dashboard.query_one(MetricsPanel).summary


def test_columns_grow_to_fit_values_that_arrive_later(tmp_path, site, embedded):
    config = site_config(tmp_path, site)
    app = ConsoleApp(embedded(config))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            client = await asyncio.to_thread(Client, port_of(config))
            client.send_raw(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n")  # no answer yet
            key = await until(pilot, lambda: row_key_of(app, "127.0.0.1"))
            assert str(app.sessions.cell(key, "bytes_out")) == "0B"  # the first width
            client.send_raw(b"\r\n")
            assert (await asyncio.to_thread(client.read_response)).status == 200
            await until(pilot, lambda: str(app.sessions.cell(key, "bytes_out")) == "2.0M")
            table = app.sessions
            # Every cell fits its column: nothing is cut to the width of the first value.
            for row_key in table.keys:
                cells = table.cells(row_key)
                for column_key, cell in zip(table.column_keys, cells, strict=True):
                    assert cell.cell_len <= table.widths[column_key], (row_key, column_key, cell)
            client.close()

    asyncio.run(scenario())


def test_clicking_a_header_sorts_by_that_column(tmp_path, site, embedded):
    config = site_config(tmp_path, site)
    app = ConsoleApp(embedded(config))
    port = port_of(config)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            small = await asyncio.to_thread(Client, port, "127.0.0.1", "127.0.0.2")
            big = await asyncio.to_thread(Client, port, "127.0.0.1", "127.0.0.3")
            assert (await get(small, "/hello.txt")).status == 200
            assert (await get(big, "/big.bin")).status == 200
            await until(pilot, lambda: row_key_of(app, "127.0.0.3") is not None)
            table = app.sessions
            assert [table.data_by_key[key]["ip"] for key in table.keys][:2] == [
                "127.0.0.2",
                "127.0.0.3",
            ]  # oldest first, as the server sends them
            x = sum(table.widths[k] + 2 for k in table.column_keys[:6])  # 1 cell each side
            await pilot.click(table, offset=(x + 1, 0))  # the "Out" header
            assert table.sort_column == "bytes_out" and not table.sort_reverse
            await pilot.click(table, offset=(x + 1, 0))  # again: the other way round
            await until(pilot, lambda: table.sort_reverse)
            order = [table.data_by_key[key]["ip"] for key in table.keys]
            assert order[:2] == ["127.0.0.3", "127.0.0.2"]
            assert "Out▼" in table.render_line(0).text  # the header says so
            assert app.sort == "bytes"  # the server is asked for the busiest first too
            small.close()
            big.close()

    asyncio.run(scenario())


def test_f_finds_sessions_and_esc_cancels(tmp_path, site, embedded):
    config = site_config(tmp_path, site)
    app = ConsoleApp(embedded(config))
    port = port_of(config)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            clients = [
                await asyncio.to_thread(Client, port, "127.0.0.1", ip)
                for ip in ("127.0.0.2", "127.0.0.3")
            ]
            for client in clients:
                assert (await get(client, "/hello.txt")).status == 200
            await until(pilot, lambda: app.sessions.shown_count == 2)
            app.sessions.focus()
            await pilot.press("f")
            assert isinstance(app.focused, FilterInput)
            await pilot.press(*"127.0.0.3")
            await until(pilot, lambda: app.sessions.shown_count == 1)
            only = next(iter(app.sessions.data_by_key.values()))
            assert only["ip"] == "127.0.0.3"
            await until(
                pilot, lambda: "1 found in 2" in str(app.dashboard.panel("sessions").border_title)
            )
            await pilot.press("escape")
            assert app.focused is app.sessions
            await until(pilot, lambda: app.sessions.shown_count == 2)
            for client in clients:
                client.close()

    asyncio.run(scenario())


def test_header_shows_the_listen_addresses(tmp_path, site, embedded):
    config = site_config(tmp_path, site)
    app = ConsoleApp(embedded(config))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: f"127.0.0.1:{port_of(config)}" in app.title)

    asyncio.run(scenario())


# --- blocking -------------------------------------------------------------------------------
def test_b_on_top_clients_blocks_an_address_that_holds_no_connection(tmp_path, site, embedded):
    config = site_config(tmp_path, site)
    app = ConsoleApp(embedded(config))
    port = port_of(config)
    abuser = "127.0.0.9"

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            shown = toasts(app)
            for _ in range(5):  # abuse as many short connections: none stays open
                assert await asyncio.to_thread(one_shot, port, abuser) == 200
            assert row_key_of(app, abuser) is None
            top = app.top_clients
            # A refresh may land between the requests: wait for the one after the last.
            await until(pilot, lambda: top.data_by_key.get(abuser, {}).get("requests") == 5)
            select(top, abuser)
            await pilot.press("b")
            assert await question(pilot, app) == (
                f"Block {abuser} globally? It has no open connection; new ones are refused."
            )
            await pilot.press("y")
            await until(pilot, lambda: acl_key_of(app, abuser))
            assert await asyncio.to_thread(refused_at_accept, port, abuser)
            assert await asyncio.to_thread(one_shot, port, "127.0.0.10") == 200  # only that one
            assert (f"Blocked {abuser} (not kept across restarts)", "information") in shown
            assert top.selected_key() == abuser  # the cursor stayed on the row it was on
            # Refusals show: in the log (connection_refused), in the block's hits, in top.
            await until(pilot, lambda: log_has(app, "refused", abuser))
            key = acl_key_of(app, abuser)
            await until(pilot, lambda: (app.acl.data_by_key[key]["hits"] or 0) >= 1)
            await until(pilot, lambda: top.data_by_key[abuser]["refused"] >= 1)

    asyncio.run(scenario())


def test_block_drops_the_session_refuses_the_ip_and_survives_a_restart(tmp_path, site, embedded):
    config = site_config(tmp_path, site, state_file=str(tmp_path / "state.json"))
    port = port_of(config)

    async def first_run() -> None:
        app = ConsoleApp(embedded(config))
        async with app.run_test(size=SIZE) as pilot:
            shown = toasts(app)
            victim = await asyncio.to_thread(Client, port, "127.0.0.1", BLOCKED_IP)
            bystander = await asyncio.to_thread(Client, port)
            assert (await get(victim, "/hello.txt")).status == 200
            assert (await get(bystander, "/hello.txt")).status == 200
            select(app.sessions, await until(pilot, lambda: row_key_of(app, BLOCKED_IP)))
            await pilot.press("b")
            assert await question(pilot, app) == (
                f"Block {BLOCKED_IP} globally? 1 open connection will close."
            )
            await pilot.press("enter")  # Enter says yes too
            assert await closed_by_server(victim)  # its open connection dropped at once
            assert await asyncio.to_thread(refused_at_accept, port, BLOCKED_IP)
            assert (await get(bystander, "/hello.txt")).status == 200  # only that IP
            sentence = f"Blocked {BLOCKED_IP}, 1 connection closed (saved)"
            await until(pilot, lambda: (sentence, "information") in shown)
            await until(pilot, lambda: log_has(app, "command", sentence))
            await until(pilot, lambda: acl_key_of(app, BLOCKED_IP))
            # The server's operator_action event for our own command is not logged twice.
            await until(pilot, lambda: not app.echoes)
            said = [line for line in app.event_log.shown if BLOCKED_IP in line]
            ours = [line for line in said if "Blocked" in line or "block cidr=" in line]
            assert len(ours) == 1, said
            await quit_app(pilot, app)

    async def second_run() -> None:
        app = ConsoleApp(embedded(config))
        async with app.run_test(size=SIZE) as pilot:
            assert await asyncio.to_thread(refused_at_accept, port, BLOCKED_IP)
            # The ACL panel lists the block; `u` on it (ACL panel focused) lifts it.
            key = await until(pilot, lambda: acl_key_of(app, BLOCKED_IP))
            select(app.acl, key)
            await pilot.press("u")
            await until(pilot, lambda: key not in app.acl.data_by_key)
            client = await asyncio.to_thread(Client, port, "127.0.0.1", BLOCKED_IP)
            assert (await get(client, "/hello.txt")).status == 200
            client.close()
            await quit_app(pilot, app)

    asyncio.run(first_run())
    asyncio.run(second_run())


def test_n_or_escape_block_nothing(tmp_path, site, embedded):
    config = site_config(tmp_path, site)
    app = ConsoleApp(embedded(config))
    port = port_of(config)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            victim = await asyncio.to_thread(Client, port, "127.0.0.1", BLOCKED_IP)
            assert (await get(victim, "/hello.txt")).status == 200
            key = await until(pilot, lambda: row_key_of(app, BLOCKED_IP))
            for answer in ("n", "escape"):
                select(app.sessions, key)
                await pilot.press("b")
                await question(pilot, app)
                await pilot.press(answer)
                await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
                assert app.focused is app.sessions  # the keys went back where they were
                assert app.sessions.selected_key() == key
            assert (await get(victim, "/hello.txt")).status == 200  # still served
            assert not app.acl.data_by_key
            victim.close()

    asyncio.run(scenario())


def test_unsaved_block_is_a_warning(tmp_path, site, embedded):
    (tmp_path / "file").write_text("not a folder")
    config = site_config(tmp_path, site, state_file=str(tmp_path / "file" / "state.json"))
    app = ConsoleApp(embedded(config))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            shown = toasts(app)
            client = await asyncio.to_thread(Client, port_of(config), "127.0.0.1", BLOCKED_IP)
            assert (await get(client, "/hello.txt")).status == 200
            select(app.sessions, await until(pilot, lambda: row_key_of(app, BLOCKED_IP)))
            await pilot.press("b")
            await question(pilot, app)
            await pilot.press("y")
            sentence = (
                f"Blocked {BLOCKED_IP}, 1 connection closed "
                "(NOT saved: the state file could not be written)"
            )
            await until(pilot, lambda: (sentence, "warning") in shown)
            assert not any(message.startswith("{") for message, _ in shown)  # no raw JSON

    asyncio.run(scenario())


def test_block_form_checks_as_you_type_and_blocks_on_a_route_for_a_while(tmp_path, site, embedded):
    config = site_config(tmp_path, site)
    app = ConsoleApp(embedded(config))
    port = port_of(config)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            shown = toasts(app)
            await until(pilot, lambda: "/" in app.routes.data_by_key)
            await pilot.press("B")
            form = await until(pilot, lambda: isinstance(app.screen, BlockForm) and app.screen)
            address = form.query_one("#block-address", Input)
            assert app.focused is address  # the cursor is in the first field
            await pilot.press(*"300.1.2.3")
            error = form.query_one("#block-address-error", Static)
            await until(pilot, lambda: "IP address or CIDR" in str(error.render()))
            await pilot.press("enter")  # refused: the form stays, on the field to fix
            assert app.screen is form and app.focused is address
            await pilot.press(*["backspace"] * 9, *"127.0.0.0/24")
            await until(pilot, lambda: str(error.render()) == "")
            await pilot.press("tab", "space")  # the scope list opens (Enter would submit)
            await pilot.press("down", "enter")  # route /
            await pilot.press("tab", *"10m", "enter")
            assert await question(pilot, app) == (
                "Block 127.0.0.0/24 on route / for 10m? Its requests there will get 403."
            )
            await pilot.press("y")
            key = "block / 127.0.0.0/24"
            await until(pilot, lambda: key in app.acl.data_by_key)
            assert 500 < app.acl.data_by_key[key]["expires"] <= 600
            sentence = "Blocked 127.0.0.0/24 on route / for 10m (not kept across restarts)"
            assert (sentence, "information") in shown
            assert await asyncio.to_thread(one_shot, port, "127.0.0.3") == 403
            # Esc leaves the form without blocking anything.
            await pilot.press("B")
            await until(pilot, lambda: isinstance(app.screen, BlockForm))
            await pilot.press(*"127.0.0.4", "escape")
            await until(pilot, lambda: not isinstance(app.screen, BlockForm))
            assert len(app.acl.data_by_key) == 1

    asyncio.run(scenario())


# --- sessions -------------------------------------------------------------------------------
def test_k_asks_kills_and_a_second_press_kills_nobody_else(tmp_path, site, embedded):
    config = site_config(tmp_path, site)
    app = ConsoleApp(embedded(config))
    port = port_of(config)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            shown = toasts(app)
            clients = {}
            for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
                clients[ip] = await asyncio.to_thread(Client, port, "127.0.0.1", ip)
                assert (await get(clients[ip], "/hello.txt")).status == 200
            await until(pilot, lambda: app.sessions.shown_count == 3)
            victim = row_key_of(app, "127.0.0.3")
            select(app.sessions, victim)
            await pilot.press("k")
            words = await question(pilot, app)
            assert words.startswith(f"Kill session #{victim} (127.0.0.3:")
            await pilot.press("y")
            assert await closed_by_server(clients["127.0.0.3"])
            await until(pilot, lambda: row_key_of(app, "127.0.0.3") is None)
            # The row under the cursor went: nothing is selected, nothing slid into place.
            assert app.sessions.selected() is None
            await pilot.press("k")
            lost = ("No session selected (the one selected went away; move the cursor)", "warning")
            await until(pilot, lambda: lost in shown)  # the press was handled: no question
            assert not isinstance(app.screen, ConfirmScreen)
            for ip in ("127.0.0.2", "127.0.0.4"):
                assert (await get(clients[ip], "/hello.txt")).status == 200
                clients[ip].close()
            await until(pilot, lambda: log_has(app, "command", f"Killed session #{victim}"))

    asyncio.run(scenario())


def test_enter_opens_the_session_detail(tmp_path, site, embedded):
    config = site_config(tmp_path, site)
    app = ConsoleApp(embedded(config))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            client = await asyncio.to_thread(Client, port_of(config), "127.0.0.1", "127.0.0.7")
            headers = {"User-Agent": "pilot-probe/1.0", "X-Trace": "abc"}
            assert (await get(client, "/hello.txt", headers)).status == 200
            key = await until(pilot, lambda: row_key_of(app, "127.0.0.7"))
            select(app.sessions, key)
            await pilot.press("enter")
            screen = await until(
                pilot, lambda: isinstance(app.screen, SessionScreen) and app.screen
            )
            await until(pilot, lambda: screen.detail is not None)
            detail = screen.detail
            assert detail["client"].startswith("127.0.0.7:")
            assert detail["last_request"]["user_agent"] == "pilot-probe/1.0"
            assert ["X-Trace", "abc"] in detail["last_request"]["headers"]
            assert detail["last_request"]["status"] == 200
            client.close()
            await until(pilot, lambda: screen.problem is not None)  # it closed: said so
            assert screen.detail["client"].startswith("127.0.0.7:")  # what was seen stays
            await pilot.press("escape")
            assert app.screen is app.dashboard

    asyncio.run(scenario())


# --- routes and upstreams -------------------------------------------------------------------
def test_g_toggles_gzip_on_the_selected_route(tmp_path, site, embedded):
    (site / "page.txt").write_text("compress me, compress me, compress me\n" * 200)
    config = site_config(tmp_path, site, route={"gzip_enable": False})
    app = ConsoleApp(embedded(config))
    accept = {"Accept-Encoding": "gzip"}

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            client = await asyncio.to_thread(Client, port_of(config))
            plain = await get(client, "/page.txt", accept)
            assert "content-encoding" not in plain.headers
            await until(pilot, lambda: "/" in app.routes.data_by_key)
            select(app.routes, "/")
            await pilot.press("g")
            await until(pilot, lambda: app.routes.data_by_key["/"]["gzip"] is True)
            packed = await get(client, "/page.txt", accept)
            assert packed.headers.get("content-encoding") == "gzip"
            assert gzip.decompress(packed.body) == plain.body
            await pilot.press("g")
            await until(pilot, lambda: app.routes.data_by_key["/"]["gzip"] is False)
            assert "content-encoding" not in (await get(client, "/page.txt", accept)).headers
            assert app.routes.selected_key() == "/"
            client.close()

    asyncio.run(scenario())


def backends(tmp_path: Path, names: tuple[str, ...]) -> list[RunningServer]:
    started = []
    for name in names:
        root = tmp_path / name
        (root / "api").mkdir(parents=True)
        (root / "api" / "who.txt").write_text(name)
        route = {"req_path": "/", "type": "file_serve", "dir_path": str(root)}
        started.append(RunningServer(server_config(free_port(), [route]), tmp_path))
    return started


def test_d_drains_asks_before_the_last_upstream_and_enables(tmp_path, embedded):
    servers = backends(tmp_path, ("a", "b"))
    addrs = [f"127.0.0.1:{b.port}" for b in servers]
    proxy = {"req_path": "/api", "type": "reverse_proxy", "upstreams": addrs}
    config = write_config(tmp_path / "config.json", server_config(free_port(), [proxy]))
    app = ConsoleApp(embedded(config))

    async def answers(client: Client, count: int) -> set[bytes]:
        return {(await get(client, "/api/who.txt")).body for _ in range(count)}

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            client = await asyncio.to_thread(Client, port_of(config))
            assert await answers(client, 4) == {b"a", b"b"}
            await until(pilot, lambda: set(app.upstreams.data_by_key) == set(addrs))
            select(app.upstreams, addrs[0])
            await pilot.press("d")  # another upstream is up: no question
            await until(pilot, lambda: app.upstreams.data_by_key[addrs[0]]["state"] == "draining")
            assert not isinstance(app.screen, ConfirmScreen)
            assert await answers(client, 4) == {b"b"}
            select(app.upstreams, addrs[1])
            await pilot.press("d")  # the last one up for /api: asked first
            assert await question(pilot, app) == (
                f"Drain {addrs[1]}? It is the last upstream up for route /api: requests "
                "there fail (502) until another upstream is up."
            )
            await pilot.press("n")
            assert await answers(client, 2) == {b"b"}
            select(app.upstreams, addrs[0])
            await pilot.press("d")  # draining: the same key enables it again
            await until(pilot, lambda: app.upstreams.data_by_key[addrs[0]]["state"] == "up")
            assert await answers(client, 4) == {b"a", b"b"}
            client.close()

    try:
        asyncio.run(scenario())
    finally:
        for server in servers:
            server.stop()


def test_routes_and_upstreams_show_rates_latency_and_the_last_error(tmp_path, embedded):
    (live,) = backends(tmp_path, ("a",))
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    addrs = [f"127.0.0.1:{live.port}", dead]
    proxy = {"req_path": "/api", "type": "reverse_proxy", "upstreams": addrs}
    config = write_config(tmp_path / "config.json", server_config(free_port(), [proxy]))
    app = ConsoleApp(embedded(config))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            client = await asyncio.to_thread(Client, port_of(config))
            statuses = [(await get(client, "/api/who.txt")).status for _ in range(6)]
            assert 200 in statuses
            route = await until(
                pilot,
                lambda: (
                    (app.routes.data_by_key.get("/api") or {}).get("p99_ms")
                    and app.routes.data_by_key["/api"]
                ),
            )
            assert route["rps"] > 0 and route["p50_ms"] <= route["p95_ms"] <= route["p99_ms"]
            assert "ms" in str(app.routes.cell("/api", "latency"))
            upstream = await until(
                pilot,
                lambda: (
                    (app.upstreams.data_by_key.get(dead) or {}).get("last_error")
                    and app.upstreams.data_by_key[dead]
                ),
            )
            assert upstream["state"] == "down"
            problems = app.dashboard.query_one("#upstream-problems", Static)
            assert dead in str(problems.render()) and upstream["last_error"] in str(
                problems.render()
            )
            await until(pilot, lambda: log_has(app, "upstream", dead))
            client.close()

    try:
        asyncio.run(scenario())
    finally:
        live.stop()


def test_r_reloads_the_config_file(tmp_path, site, embedded):
    config = site_config(tmp_path, site)
    app = ConsoleApp(embedded(config))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            shown = toasts(app)
            await until(pilot, lambda: list(app.routes.data_by_key) == ["/"])
            data = json.loads(config.read_text())
            data["servers"][0]["routes"].append(
                {
                    "req_path": "/old",
                    "type": "redirect",
                    "http_status_code": 301,
                    "redirect_url": "/",
                }
            )
            config.write_text(json.dumps(data))
            await pilot.press("r")
            await until(pilot, lambda: "/old" in app.routes.data_by_key)
            await until(pilot, lambda: log_has(app, "command", "Reloaded the configuration"))
            client = await asyncio.to_thread(Client, port_of(config))
            assert (await get(client, "/old")).status == 301
            client.close()
            config.write_text("{broken")
            await pilot.press("r")
            await until(pilot, lambda: log_has(app, "Reload failed"))
            assert any(m.startswith("Reload failed") and s == "error" for m, s in shown)
            assert "/old" in app.routes.data_by_key  # the running config stays

    asyncio.run(scenario())


# --- the event log --------------------------------------------------------------------------
def last_drawn_line(app: ConsoleApp) -> str:
    """The bottom line of the log as drawn (the Line API renders what is on screen)."""
    log = app.event_log
    for y in range(log.size.height - 1, -1, -1):
        text = log.render_line(y).text.rstrip()
        if text:
            return text
    return ""


def shows_newest(app: ConsoleApp) -> bool:
    """The log's bottom line on screen is the newest line it has."""
    log = app.event_log
    return last_drawn_line(app) == log.shown[-1][: log.size.width].rstrip()


def test_log_keeps_following_past_its_line_limit(tmp_path, site, embedded):
    config = site_config(tmp_path, site)
    app = ConsoleApp(embedded(config), log_lines=60)  # a small limit, passed quickly

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            client = await asyncio.to_thread(Client, port_of(config))
            for round_ in range(3):
                for i in range(40):
                    assert (await get(client, f"/hello.txt?r{round_}n{i}")).status == 200
                await until(pilot, lambda r=round_: f"?r{r}n39 200" in last_drawn_line(app))
            assert len(app.event_log.shown) <= 60
            client.close()

    asyncio.run(scenario())


def test_log_pause_end_filter_kind_and_esc(tmp_path, site, embedded):
    dead = f"127.0.0.1:{free_port()}"
    routes = [
        {"req_path": "/", "type": "file_serve", "dir_path": str(site)},
        {"req_path": "/api", "type": "reverse_proxy", "upstreams": [dead]},
    ]
    config = write_config(tmp_path / "config.json", server_config(free_port(), routes))
    app = ConsoleApp(embedded(config))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            log = app.event_log
            panel = app.events_panel
            client = await asyncio.to_thread(Client, port_of(config))
            for i in range(30):
                assert (await get(client, f"/hello.txt?a{i}")).status == 200
            await until(pilot, lambda: "?a29 200" in last_drawn_line(app))
            await pilot.press("p")  # pause: new lines do not move what is on screen
            assert not log.following and "paused" in str(panel.border_subtitle)
            top_line = log.scroll_y
            for i in range(5):
                assert (await get(client, f"/hello.txt?b{i}")).status == 200
            await until(pilot, lambda: log_has(app, "?b4 200"))
            assert log.scroll_y == top_line and "?b4" not in last_drawn_line(app)
            log.focus()
            await pilot.press("end")  # follow again
            await until(pilot, lambda: "?b4 200" in last_drawn_line(app))
            await pilot.press("up")  # scrolling up pauses too
            assert not log.following
            await pilot.press("end")
            assert log.following
            # Kind: only errors (the 502 of a dead upstream), then a text filter on top.
            assert (await get(client, "/api/x")).status == 502
            await until(pilot, lambda: log_has(app, "/api/x 502"))
            while log.kind != "error":
                await pilot.press("e")
            assert log.shown and all(
                " 502 " in line or "upstream" in line or "health" in line for line in log.shown
            )
            assert "kind: error" in str(panel.border_subtitle)
            while log.kind is not None:
                await pilot.press("e")
            await pilot.press("p")  # paused: a new filter starts at the newest line anyway
            assert not log.following
            await pilot.press("slash")
            assert isinstance(app.focused, FilterInput)
            await pilot.press(*"?b3")
            await until(pilot, lambda: len(log.shown) == 1)
            await pilot.press("escape")  # cancels the filter, and the log follows again
            await until(pilot, lambda: len(log.shown) > 30)
            assert log.terms == () and log.following
            await until(pilot, lambda: shows_newest(app))  # at once, not at the next line
            assert panel.filter_input.value == "" and not panel.filter_input.display
            for i in range(3):
                assert (await get(client, f"/hello.txt?c{i}")).status == 200
            await until(pilot, lambda: "?c2 200" in last_drawn_line(app))
            client.close()

    asyncio.run(scenario())


class HeldLink(EmbeddedLink):
    """An embedded link whose events wait (and overflow its queue) until `held` is False."""

    held = True

    def take_events(self, limit: int) -> list[dict]:
        return [] if self.held else super().take_events(limit)


def test_dropped_events_leave_a_marker(tmp_path, site):
    config = site_config(tmp_path, site)
    link = HeldLink(str(config), grace=2.0, queue=5)
    link.start()
    app = ConsoleApp(link)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            client = await asyncio.to_thread(Client, port_of(config))
            for _ in range(20):  # 21 events for a queue of 5
                assert (await get(client, "/hello.txt")).status == 200
            client.close()
            await until(pilot, lambda: link.dropped >= 16)
            link.held = False
            await until(pilot, lambda: log_has(app, "close", "20 req"))
            markers = [line for line in app.event_log.shown if "events dropped" in line]
            counts = [
                int(re.search(r"… ([\d,]+) events dropped …", m)[1].replace(",", ""))
                for m in markers
            ]
            assert sum(counts) == link.dropped  # every loss is marked, where it happened
            await until(pilot, lambda: f"{link.dropped:,} dropped" in summary(app))

    try:
        asyncio.run(scenario())
    finally:
        link.shutdown()


# --- any terminal ---------------------------------------------------------------------------
def test_at_80x24_every_panel_is_reachable_and_the_footer_keeps_block_help_quit(
    tmp_path, site, embedded
):
    (live,) = backends(tmp_path, ("a",))
    routes = [
        {"req_path": "/", "type": "file_serve", "dir_path": str(site)},
        {"req_path": "/api", "type": "reverse_proxy", "upstreams": [f"127.0.0.1:{live.port}"]},
    ]
    config = write_config(tmp_path / "config.json", server_config(free_port(), routes))
    app = ConsoleApp(embedded(config))

    async def scenario() -> None:
        async with app.run_test(size=SMALL) as pilot:
            dashboard = app.dashboard
            await until(pilot, lambda: app.routes.row_count == 2 and app.upstreams.row_count)
            assert dashboard.narrow
            for name in PANELS:
                panel = dashboard.panel(name)
                assert panel.region.width >= 78 and panel.region.height >= 10, name
                main = panel.main
                if main is not None:
                    assert app.focused is main
                    assert main.region.height > 3
                if name == "sessions":
                    assert app.sessions.size.width >= 70  # not two columns wide
                if name in ("routes", "upstreams"):
                    assert main.row_count and main.region.height > 2  # not empty
                others = [dashboard.panel(n) for n in PANELS if n != name]
                assert all(not other.region.area for other in others)
                keys = await until(pilot, lambda: footer_keys(app, "Block", "Help", "Quit"))
                regions = sorted((key.region for key in keys.values()), key=lambda r: r.x)
                assert all(a.right <= b.x for a, b in itertools.pairwise(regions))
                assert all(r.right <= SMALL[0] for r in regions)
                await pilot.press("tab")
            assert dashboard.current == "sessions"  # round we went
            await pilot.press("question_mark")
            help_box = await until(
                pilot, lambda: isinstance(app.screen, HelpScreen) and app.screen.query_one("#help")
            )
            assert help_box.region.right <= SMALL[0]
            text = help_box.query_one(Static)
            assert text.region.right <= help_box.region.right
            widest = max(
                len(line) for line in Text.from_markup(str(text.render())).plain.splitlines()
            )
            assert widest <= text.region.width
            await pilot.press("escape")

    try:
        asyncio.run(scenario())
    finally:
        live.stop()


def footer_keys(app: ConsoleApp, *wanted: str) -> dict[str, FooterKey] | None:
    """The footer's keys by description, once it shows every one of `wanted`."""
    keys = {key.description: key for key in app.dashboard.query(FooterKey)}
    return keys if set(wanted) <= set(keys) else None


def test_z_zooms_the_focused_panel(tmp_path, site, embedded):
    config = site_config(tmp_path, site)
    app = ConsoleApp(embedded(config))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.routes.row_count)
            app.routes.focus()
            await pilot.press("z")
            routes = app.dashboard.panel("routes")
            assert app.dashboard.zoomed is routes
            await until(pilot, lambda: routes.region.height >= SIZE[1] - 3)  # the whole screen
            assert not app.sessions.region.area and not app.event_log.region.area
            await pilot.press("z")
            assert app.dashboard.zoomed is None
            await until(pilot, lambda: app.sessions.region.area)
            assert routes.region.height < SIZE[1] // 2
            assert app.focused is app.routes

    asyncio.run(scenario())


# --- the palette and help -------------------------------------------------------------------
def best_hit(app: ConsoleApp) -> str:
    """The text of the palette's first hit (the one Enter picks), or "" while it has none."""
    hits = app.screen.query_one(CommandList)
    if not hits.option_count:
        return ""
    first = hits.get_option_at_index(0)
    return (first.hit.text or str(first.prompt)) if isinstance(first, PaletteHit) else ""


async def palette(pilot: Pilot, app: ConsoleApp, words: str) -> None:
    """Pick the palette's best hit for `words`."""
    await pilot.press("ctrl+p")
    await until(pilot, lambda: isinstance(app.screen, CommandPalette))
    await pilot.press(*words)
    # The search runs in a worker: wait until its hits for all of `words` are listed.
    await until(pilot, lambda: words.lower() in best_hit(app).lower())
    await pilot.press("enter")
    await until(pilot, lambda: not isinstance(app.screen, CommandPalette))


def test_palette_runs_named_commands_with_the_same_confirmations(
    tmp_path, site, embedded, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # no Downloads folder: the screenshot goes here
    config = site_config(tmp_path, site)
    app = ConsoleApp(embedded(config))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            client = await asyncio.to_thread(Client, port_of(config), "127.0.0.1", BLOCKED_IP)
            assert (await get(client, "/hello.txt")).status == 200
            key = await until(pilot, lambda: row_key_of(app, BLOCKED_IP))
            await palette(pilot, app, f"Kill session #{key}")
            assert (await question(pilot, app)).startswith(f"Kill session #{key} ")
            await pilot.press("n")
            await palette(pilot, app, "Reload the configuration")
            await until(pilot, lambda: log_has(app, "command", "Reloaded"))
            await palette(pilot, app, "Screenshot")
            await until(pilot, lambda: list(tmp_path.glob("xps-console-*.svg")))
            client.close()

    asyncio.run(scenario())


def test_the_palette_lists_exactly_the_server_commands_of_the_table(monkeypatch):
    app = ConsoleApp(CannedLink())  # type: ignore[arg-type]

    def listed() -> list[tuple[str, str]]:
        return [(title, help_text) for title, help_text, _ in app.palette_commands()]

    table = [(command.usage, command.help) for command in COMMANDS.values()]
    assert [entry for entry in listed() if entry in table] == table  # each once, in order
    assert ("block cidr [route] [seconds]", COMMANDS["block"].help) in table
    # The palette follows the table: a command added there is listed, one removed is not.
    monkeypatch.setitem(COMMANDS, "extra", EXTRA)
    monkeypatch.delitem(COMMANDS, "ping")
    entries = listed()
    assert ("extra what", EXTRA.help) in entries
    assert not [title for title, _ in entries if title.split()[0] == "ping"]


EXTRA = Command(
    "extra",
    "a command no key of the console runs",
    lambda core, args: None,
    args=(Arg("what", str, "anything"),),
)


def test_picking_a_server_command_in_the_palette_runs_what_its_key_runs(monkeypatch):
    link = CannedLink()
    app = ConsoleApp(link)  # type: ignore[arg-type]
    monkeypatch.setitem(COMMANDS, "extra", EXTRA)
    shown = toasts(app)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await palette(pilot, app, "ping")
            await until(pilot, lambda: ("ping", {}) in link.commands)
            await until(pilot, lambda: "8" in app.sessions.data_by_key)
            select(app.sessions, "8")
            await palette(pilot, app, "session id")  # Enter on a session: its details
            assert isinstance(app.screen, SessionScreen) and app.screen.session_id == 8
            app.pop_screen()
            await palette(pilot, app, "extra what")
            assert ("extra what: no key runs it; send it on the control socket", "warning") in (
                shown
            )
            assert [name for name, _ in link.commands] == ["ping"]

    asyncio.run(scenario())


def test_question_mark_opens_help_and_q_quits_gracefully(tmp_path, site, embedded):
    config = site_config(tmp_path, site)
    link = embedded(config)
    app = ConsoleApp(link)
    port = port_of(config)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            idle = await asyncio.to_thread(Client, port)
            assert (await get(idle, "/hello.txt")).status == 200
            busy = await asyncio.to_thread(Client, port)
            busy.send_raw(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n")  # head not finished
            await pilot.press("?")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)
            await pilot.press("q")
            assert await closed_by_server(idle)  # drained: the idle keep-alive is let go
            busy.send_raw(b"\r\n")  # the request in flight still gets its answer
            assert (await asyncio.to_thread(busy.read_response)).status == 200
            assert await closed_by_server(busy)
            await until(pilot, lambda: app.return_code is not None)
        assert app.return_code == 0
        assert not link.running
        with pytest.raises(ConnectionRefusedError):
            connect(port).close()

    asyncio.run(scenario())


# --- attached -------------------------------------------------------------------------------
class Headless:
    """A headless xps-server subprocess with a control socket, stopped and started at will."""

    def __init__(self, tmp_path: Path, site: Path) -> None:
        self.socket = tmp_path / "xps.sock"
        self.config = site_config(tmp_path, site, control_socket=str(self.socket))
        self.port = port_of(self.config)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xps_server", str(self.config)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            assert self.proc.poll() is None, self.proc.stderr.read().decode()  # type: ignore
            assert time.monotonic() < deadline, "the control socket never appeared"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def headless(tmp_path: Path, site: Path) -> Iterator[Headless]:
    server = Headless(tmp_path, site)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_attach_mode_steers_a_headless_server(headless):
    link = AttachedLink(str(headless.socket))
    app = ConsoleApp(link)
    port = headless.port

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            assert "attached" in app.sub_title
            victim = await asyncio.to_thread(Client, port, "127.0.0.1", BLOCKED_IP)
            assert (await get(victim, "/hello.txt")).status == 200
            key = await until(pilot, lambda: row_key_of(app, BLOCKED_IP))
            await until(pilot, lambda: log_has(app, BLOCKED_IP, "GET /hello.txt 200"))
            await until(pilot, lambda: app.events_received > 0)  # counted after attaching
            select(app.sessions, key)
            await pilot.press("b")
            await question(pilot, app)
            await pilot.press("y")
            assert await closed_by_server(victim)
            assert await asyncio.to_thread(refused_at_accept, port, BLOCKED_IP)
            await until(pilot, lambda: log_has(app, "command", f"Blocked {BLOCKED_IP}"))
            await quit_app(pilot, app)
        assert app.return_code == 0
        assert headless.running, "detaching must leave the server running"

    asyncio.run(scenario())


def test_attach_survives_the_server_stopping_and_resumes_when_it_is_back(headless):
    link = AttachedLink(str(headless.socket))
    app = ConsoleApp(link)
    port = headless.port

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            shown = toasts(app)
            await until(pilot, lambda: app.snapshots)
            banner = app.dashboard.query_one("#banner", Static)
            assert not banner.display
            await asyncio.to_thread(headless.stop)
            await until(pilot, lambda: not app.connected)
            assert banner.display and "Disconnected" in str(banner.render())
            assert app.dashboard.has_class("-stale") and "DISCONNECTED" in app.sub_title
            # Keys still answer: a command says it was not sent, nothing crashes.
            await pilot.press("r")
            await until(
                pilot, lambda: any(m.startswith("Reload failed: not sent") for m, _ in shown)
            )
            await asyncio.to_thread(headless.start)  # the same control socket path
            await until(pilot, lambda: app.connected, timeout=15)
            assert not banner.display and not app.dashboard.has_class("-stale")
            before = app.snapshots
            await until(pilot, lambda: app.snapshots > before)
            client = await asyncio.to_thread(Client, port, "127.0.0.1", "127.0.0.8")
            assert (await get(client, "/again.txt")).status == 404
            await until(pilot, lambda: log_has(app, "/again.txt 404"))  # events flow again
            await until(pilot, lambda: row_key_of(app, "127.0.0.8"))
            client.close()
            await quit_app(pilot, app)

    asyncio.run(scenario())


def test_attached_link_against_a_control_server(tmp_path, site):
    port = free_port()
    server = RunningServer(
        server_config(port, [{"req_path": "/", "type": "file_serve", "dir_path": str(site)}]),
        tmp_path,
    )
    path = str(tmp_path / "control.sock")
    control = server.call(lambda: ControlServer(server.core, CommandAPI(server.core), path))
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

        async def scenario() -> None:
            link = AttachedLink(path)
            await link.open()
            assert await link.command("ping") == {"ok": True, "result": "pong"}
            unknown = await link.command("explode")
            assert unknown["ok"] is False and "unknown command" in unknown["error"]
            bad_args = await link.command("kill", session="one")
            assert bad_args["ok"] is False and "wrong type" in bad_args["error"]
            client = await asyncio.to_thread(Client, port)
            await asyncio.to_thread(client.request, "GET", "/hello.txt")
            client.close()
            seen: list[dict] = []
            deadline = time.monotonic() + 5
            while not any(e["kind"] == "request_finished" for e in seen):
                assert time.monotonic() < deadline, seen
                await asyncio.sleep(0.02)
                seen += link.take_events(100)
            done = next(e for e in seen if e["kind"] == "request_finished")
            assert done["path"] == "/hello.txt" and done["status"] == 200
            assert link.dropped == 0
            await link.close()

        asyncio.run(scenario())

        # Lines a script might get wrong: each gets an error reply, the connection lives on.
        with socket.socket(socket.AF_UNIX) as raw:
            raw.settimeout(5)
            raw.connect(path)
            reader = raw.makefile("rb")
            raw.sendall(b"{not json\n")
            assert "malformed JSON" in json.loads(reader.readline())["error"]
            raw.sendall(b"[1, 2]\n")
            assert json.loads(reader.readline())["ok"] is False
            raw.sendall(b'{"cmd": "ping", "id": 7}\n')
            assert json.loads(reader.readline()) == {"id": 7, "ok": True, "result": "pong"}
    finally:
        server.call(control.close)
        server.stop()


# --- responsiveness (a fake link: no server needed) ----------------------------------------
class FloodLink:
    """A link under siege: 10,000 sessions, endless events, snapshots that wait for a gate."""

    mode = "embedded"
    target = "flood"
    connected = True

    def __init__(self) -> None:
        self.total = 10_000
        self.first = 1  # rows are sessions first .. first+199
        self.snapshot_calls = 0
        self.sorts: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate: asyncio.Event | None = None
        self.take_limits: list[int] = []
        self.commands: list[tuple[str, dict]] = []
        self.serial = 0

    async def open(self) -> None:
        self.gate = asyncio.Event()

    async def command(self, name: str, **args: Any) -> dict:
        if name == "top":
            return {"ok": False, "error": "unknown command 'top'"}
        if name != "snapshot":
            self.commands.append((name, args))
            return {"ok": True, "result": {"killed": {"id": args.get("session")}}}
        self.snapshot_calls += 1
        self.sorts.append(args["sort"])
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            assert self.gate is not None
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        return {"ok": True, "result": self.snapshot(args["limit"])}

    def snapshot(self, limit: int) -> dict:
        self.serial += 1
        rows = [
            {
                "id": i,
                "client": f"10.0.{i // 250}.{i % 250}:40000",
                "ip": f"10.0.{i // 250}.{i % 250}",
                "route": "/",
                "state": "writing",
                "request": "GET /big.bin",
                "requests": self.serial,
                "bytes_in": 100,
                "bytes_out": 1000 * self.serial,
                "age": 10.0,
            }
            for i in range(self.first, self.first + limit)
        ]
        metrics = {"req_total": 1000 * self.serial, "res_code_2xx": 1000 * self.serial}
        return {
            "time": time.time(),
            "sessions": {"total": self.total, "rows": rows},
            "routes": [{"key": "/", "type": "file_serve", "gzip": False}],
            "upstreams": [],
            "acl": {"blocks": []},
            "metrics": metrics,
            "events": {"published": 0, "dropped": 0},
        }

    def take_events(self, limit: int) -> list[dict]:
        self.take_limits.append(limit)
        now = time.time()
        return [
            {"kind": "connection_opened", "ts": now, "session": i, "client": "10.1.1.1"}
            for i in range(limit)
        ]

    dropped = 0

    async def close(self) -> None:
        pass


def test_one_snapshot_in_flight_rows_updated_in_place_keys_answer_under_flood():
    link = FloodLink()
    app = ConsoleApp(link, snapshot_interval=0.25)  # type: ignore[arg-type]

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause(0.7)  # over two snapshot intervals with the first unanswered
            assert link.snapshot_calls == 1 and link.max_in_flight == 1
            assert link.gate is not None
            link.gate.set()
            await until(pilot, lambda: app.snapshots >= 2)
            assert link.max_in_flight == 1
            table = app.sessions
            assert table.row_count == 200
            assert "200 of 10,000" in str(app.dashboard.panel("sessions").border_title)
            select(table, "50")
            link.first = 11  # sessions 1..10 closed, 201..210 arrived
            done = app.snapshots
            await until(pilot, lambda: app.snapshots > done + 1)
            assert table.keys == [str(i) for i in range(11, 211)]
            assert table.selected_key() == "50"  # the cursor followed its session
            # The log takes bounded batches and stays bounded.
            assert link.take_limits and max(link.take_limits) <= 300
            assert len(app.event_log.shown) <= app.event_log.max_lines
            # Keys still answer while the flood goes on (how fast: bench/console_keys.py).
            for _ in range(5):
                app.post_message(events.Key("question_mark", "?"))
                await until(pilot, lambda: isinstance(app.screen, HelpScreen), timeout=2)
                app.pop_screen()
                await asyncio.sleep(0.05)
            await pilot.press("k")
            await question(pilot, app)
            await pilot.press("y")
            await until(pilot, lambda: ("kill", {"session": 50}) in link.commands)
            await pilot.press("s")  # busiest first: the next snapshot asks the server for it
            await until(pilot, lambda: link.sorts[-1] == "bytes")
            await until(
                pilot, lambda: "busiest first" in str(app.dashboard.panel("sessions").border_title)
            )
            await pilot.press("q")

    asyncio.run(scenario())


class FleetCannedLink(CannedLink):
    """A server in a fleet: its snapshot names the fleet, Redis up or down as set."""

    fleet = {"name": "edge-1", "redis": "redis://r:6379/0", "connected": True, "alive": 3,
             "queued": 0}  # fmt: skip

    async def command(self, name: str, **args: Any) -> dict:
        reply = await super().command(name, **args)
        if name == "snapshot":
            reply["result"]["fleet"] = dict(self.fleet)
        return reply


def test_the_header_shows_the_fleet_and_whether_redis_answers():
    link = FleetCannedLink()
    app = ConsoleApp(link)  # type: ignore[arg-type]

    async def scenario() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: "fleet edge-1: 3 alive" in app.sub_title)
            assert app.sub_title.startswith("attached /run/xps/control.sock · ")
            link.fleet = {**link.fleet, "connected": False, "queued": 4}
            app.request_snapshot(fresh=True)
            await until(pilot, lambda: "fleet edge-1: REDIS DOWN, 4 queued" in app.sub_title)

    asyncio.run(scenario())


def test_with_two_workers_sessions_name_their_worker_and_a_panel_lists_the_workers(
    tmp_path, site, embedded
):
    config = site_config(tmp_path, site, workers=2)
    link = embedded(config)
    app = ConsoleApp(link)
    port = link.config.servers[0].listeners[0].port
    clients: list[Client] = []

    async def scenario() -> None:
        async with app.run_test(size=SMALL) as pilot:
            workers = app.dashboard.query_one("#workers", KeyedTable)
            # Worker processes are new interpreters: on a busy machine they take a while.
            await until(pilot, lambda: workers.display and workers.row_count == 2, 30)
            client = Client(port)
            assert client.request("GET", "/hello.txt").status == 200
            clients.append(client)
            await until(pilot, lambda: app.sessions.row_count == 1)
            assert "worker" in app.sessions.column_keys
            (row,) = app.sessions.data_by_key.values()
            assert row["worker"] in {w["worker"] for w in workers.data_by_key.values()}
            pids = {w["pid"] for w in workers.data_by_key.values()}
            assert len(pids) == 2 and os.getpid() not in pids

    try:
        asyncio.run(scenario())
    finally:
        for client in clients:
            client.close()
