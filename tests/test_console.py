"""The console, driven through Textual's Pilot against real servers on loopback.

Each test runs the real app (`ConsoleApp`) over a real link: an embedded server on a loop
thread, or a headless `xps-server` subprocess through its control socket. Keys are pressed as
an operator would; what they did is checked on the server's sockets, never on its objects.
Blocking socket calls run in threads (`asyncio.to_thread`) so the app keeps drawing.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual import events
from textual.pilot import Pilot

from tests.helpers import Client, RunningServer, connect, free_port, server_config, write_config
from xps_console.app import ConsoleApp
from xps_console.link import AttachedLink, EmbeddedLink
from xps_console.widgets import FilterInput, HelpScreen, KeyedTable
from xps_server.control import CommandAPI, ControlServer

SIZE = (160, 50)
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


def acl_key_of(app: ConsoleApp, ip: str) -> str | None:
    for key, entry in app.acl.data_by_key.items():
        if entry["kind"] == "block" and entry["cidr"].split("/")[0] == ip:
            return key
    return None


def select(table: KeyedTable, key: str) -> None:
    table.move_cursor(row=table.get_row_index(key))


def log_has(app: ConsoleApp, *words: str) -> bool:
    return any(all(w in line for w in words) for line in app.event_log.shown)


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


async def quit_app(pilot: Pilot, app: ConsoleApp) -> None:
    await pilot.press("q")
    await until(pilot, lambda: app.return_code is not None)


# --- embedded -------------------------------------------------------------------------------
def test_requests_show_in_sessions_table_and_log(tmp_path, site, embedded):
    config = site_config(tmp_path, site)
    link = embedded(config)
    app = ConsoleApp(link)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            client = await asyncio.to_thread(Client, port_of(config))
            assert (await get(client, "/hello.txt")).status == 200
            key = await until(pilot, lambda: row_key_of(app, "127.0.0.1"))
            row = app.sessions.data_by_key[key]
            assert row["client"] == f"127.0.0.1:{client.sock.getsockname()[1]}"
            assert row["route"] == "/"
            assert row["requests"] == 1
            assert "1 of 1" in str(app.sessions.border_title)
            await until(pilot, lambda: log_has(app, "GET /hello.txt 200"))
            assert log_has(app, "open", f"127.0.0.1:{client.sock.getsockname()[1]}")
            client.close()
            await until(pilot, lambda: row_key_of(app, "127.0.0.1") is None)
            await until(pilot, lambda: log_has(app, "close", "1 req"))

    asyncio.run(scenario())


def test_block_drops_the_session_refuses_the_ip_and_survives_a_restart(tmp_path, site, embedded):
    config = site_config(tmp_path, site, state_file=str(tmp_path / "state.json"))
    port = port_of(config)

    async def first_run() -> None:
        app = ConsoleApp(embedded(config))
        async with app.run_test(size=SIZE) as pilot:
            victim = await asyncio.to_thread(Client, port, "127.0.0.1", BLOCKED_IP)
            bystander = await asyncio.to_thread(Client, port)
            assert (await get(victim, "/hello.txt")).status == 200
            assert (await get(bystander, "/hello.txt")).status == 200
            select(app.sessions, await until(pilot, lambda: row_key_of(app, BLOCKED_IP)))
            await pilot.press("b")
            assert await closed_by_server(victim)  # its open connection dropped at once
            assert await asyncio.to_thread(refused_at_accept, port, BLOCKED_IP)
            assert (await get(bystander, "/hello.txt")).status == 200  # only that IP
            await until(pilot, lambda: log_has(app, "block", BLOCKED_IP, "ok"))
            await until(pilot, lambda: acl_key_of(app, BLOCKED_IP))
            # The server's operator_action event for our own command is not logged twice.
            await until(pilot, lambda: not app.echoes)
            assert sum(f"block cidr={BLOCKED_IP}" in line for line in app.event_log.shown) == 1
            await quit_app(pilot, app)

    async def second_run() -> None:
        app = ConsoleApp(embedded(config))
        async with app.run_test(size=SIZE) as pilot:
            assert await asyncio.to_thread(refused_at_accept, port, BLOCKED_IP)
            # The ACL panel lists the block; `u` on it (ACL panel focused) lifts it.
            key = await until(pilot, lambda: acl_key_of(app, BLOCKED_IP))
            app.acl.focus()
            select(app.acl, key)
            await pilot.press("u")
            await until(pilot, lambda: key not in app.acl.data_by_key)
            client = await asyncio.to_thread(Client, port, "127.0.0.1", BLOCKED_IP)
            assert (await get(client, "/hello.txt")).status == 200
            client.close()
            await quit_app(pilot, app)

    asyncio.run(first_run())
    asyncio.run(second_run())


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
            client.close()

    asyncio.run(scenario())


def test_k_kills_the_selected_session(tmp_path, site, embedded):
    config = site_config(tmp_path, site)
    app = ConsoleApp(embedded(config))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            keeper = await asyncio.to_thread(Client, port_of(config))
            victim = await asyncio.to_thread(Client, port_of(config), "127.0.0.1", "127.0.0.9")
            assert (await get(keeper, "/hello.txt")).status == 200
            assert (await get(victim, "/hello.txt")).status == 200
            select(app.sessions, await until(pilot, lambda: row_key_of(app, "127.0.0.9")))
            await pilot.press("k")
            assert await closed_by_server(victim)
            await until(pilot, lambda: row_key_of(app, "127.0.0.9") is None)
            assert row_key_of(app, "127.0.0.1") is not None
            assert (await get(keeper, "/hello.txt")).status == 200
            await until(pilot, lambda: log_has(app, "kill", "ok"))
            keeper.close()

    asyncio.run(scenario())


def test_slash_filters_the_log(tmp_path, site, embedded):
    config = site_config(tmp_path, site)
    app = ConsoleApp(embedded(config))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            client = await asyncio.to_thread(Client, port_of(config))
            for path in ("/hello.txt", "/data.json", "/hello.txt"):
                assert (await get(client, path)).status == 200
            await until(pilot, lambda: log_has(app, "/data.json") and log_has(app, "/hello.txt"))
            await pilot.press("/")
            assert isinstance(app.focused, FilterInput)
            await pilot.press(*"data.json")  # typed into the filter, not taken as commands
            await until(pilot, lambda: all("data.json" in line for line in app.event_log.shown))
            assert len(app.event_log.shown) == 1
            await pilot.press("enter")
            assert app.focused is app.sessions
            app.query_one(FilterInput).value = ""
            await until(pilot, lambda: log_has(app, "/hello.txt"))
            assert log_has(app, "/data.json")
            client.close()

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


def test_d_drains_and_enables_the_selected_upstream(tmp_path, site, embedded):
    backends = []
    for name in ("a", "b"):
        root = tmp_path / name
        (root / "api").mkdir(parents=True)
        (root / "api" / "who.txt").write_text(name)
        route = {"req_path": "/", "type": "file_serve", "dir_path": str(root)}
        backends.append(RunningServer(server_config(free_port(), [route]), tmp_path))
    addrs = [f"127.0.0.1:{b.port}" for b in backends]
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
            await pilot.press("d")
            await until(pilot, lambda: app.upstreams.data_by_key[addrs[0]]["state"] == "draining")
            assert await answers(client, 4) == {b"b"}
            await until(pilot, lambda: log_has(app, "drain", addrs[0], "ok"))
            await pilot.press("d")  # draining: the same key enables it again
            await until(pilot, lambda: app.upstreams.data_by_key[addrs[0]]["state"] == "up")
            assert await answers(client, 4) == {b"a", b"b"}
            client.close()

    try:
        asyncio.run(scenario())
    finally:
        for backend in backends:
            backend.stop()


def test_r_reloads_the_config_file(tmp_path, site, embedded):
    config = site_config(tmp_path, site)
    app = ConsoleApp(embedded(config))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
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
            await until(pilot, lambda: log_has(app, "reload", "ok"))
            client = await asyncio.to_thread(Client, port_of(config))
            assert (await get(client, "/old")).status == 301
            client.close()
            config.write_text("{broken")
            await pilot.press("r")
            await until(pilot, lambda: log_has(app, "reload", "FAILED"))
            assert "/old" in app.routes.data_by_key  # the running config stays

    asyncio.run(scenario())


# --- attached -------------------------------------------------------------------------------
@pytest.fixture
def headless(tmp_path: Path, site: Path) -> Iterator[tuple[Path, int]]:
    """A headless xps-server subprocess with a control socket; yields (socket, http port)."""
    sock_path = tmp_path / "xps.sock"
    config = site_config(tmp_path, site, control_socket=str(sock_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "xps_server", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock_path.exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the control socket never appeared"
            time.sleep(0.02)
        yield sock_path, port_of(config)
        assert proc.poll() is None, "detaching must leave the server running"
    finally:
        proc.terminate()
        proc.wait(10)


def test_attach_mode_steers_a_headless_server(headless):
    sock_path, port = headless
    link = AttachedLink(str(sock_path))
    app = ConsoleApp(link)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            assert "attached" in app.sub_title
            victim = await asyncio.to_thread(Client, port, "127.0.0.1", BLOCKED_IP)
            assert (await get(victim, "/hello.txt")).status == 200
            key = await until(pilot, lambda: row_key_of(app, BLOCKED_IP))
            await until(pilot, lambda: log_has(app, BLOCKED_IP, "GET /hello.txt 200"))
            select(app.sessions, key)
            await pilot.press("b")
            assert await closed_by_server(victim)
            assert await asyncio.to_thread(refused_at_accept, port, BLOCKED_IP)
            await until(pilot, lambda: log_has(app, "block", BLOCKED_IP, "ok"))
            await quit_app(pilot, app)
        assert app.return_code == 0

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
        if name != "snapshot":
            self.commands.append((name, args))
            return {"ok": True, "result": "done"}
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
            assert "200 of 10000" in str(table.border_title)
            select(table, "50")
            link.first = 11  # sessions 1..10 closed, 201..210 arrived
            done = app.snapshots
            await until(pilot, lambda: app.snapshots > done + 1)
            keys = [row.key.value for row in table.ordered_rows]
            assert keys == [str(i) for i in range(11, 211)]
            assert table.selected_key() == "50"  # the cursor followed its session
            # The log takes bounded batches and stays bounded.
            assert link.take_limits and max(link.take_limits) <= 300
            assert len(app.event_log.lines) <= app.event_log.max_lines
            # Keys still answer while the flood goes on (how fast: bench/console_keys.py).
            for _ in range(5):
                app.post_message(events.Key("question_mark", "?"))
                await until(pilot, lambda: isinstance(app.screen, HelpScreen), timeout=2)
                app.pop_screen()
                await asyncio.sleep(0.05)
            await pilot.press("k")
            await until(pilot, lambda: ("kill", {"session": 50}) in link.commands)
            await pilot.press("s")  # busiest first: the next snapshot asks the server for it
            await until(pilot, lambda: link.sorts[-1] == "bytes")
            await until(pilot, lambda: "busiest first" in str(table.border_title))
            await pilot.press("q")

    asyncio.run(scenario())
