"""The operator console: live sessions, event log, routes, upstreams, ACL and metrics.

Everything the app knows arrives through its `Link`, on two timers:
- events are drained in batches (at most `EVENTS_PER_TICK` every `EVENT_INTERVAL`), never one
  message per event, so a flood of connections costs the UI a bounded amount of work;
- a snapshot (sessions, routes, upstreams, ACL, metrics) is requested every
  `SNAPSHOT_INTERVAL`, with at most one in flight, and applied as a diff to the tables.
Every key is a named command sent through the link; its reply becomes a notification and a
log line. Nothing here touches the server's objects.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.timer import Timer
from textual.widgets import Footer, Header, Input

from xps_console.formatting import (
    ACL_COLUMNS,
    ROUTE_COLUMNS,
    SESSION_COLUMNS,
    UPSTREAM_COLUMNS,
    MetricsHistory,
    acl_rows,
    event_line,
    format_args,
    route_rows,
    session_rows,
    summarize,
    upstream_rows,
)
from xps_console.link import Link, LinkError
from xps_console.logs import LogBuffer
from xps_console.widgets import (
    EventLog,
    FilterInput,
    HelpScreen,
    KeyedTable,
    MetricsPanel,
    SessionsTable,
)

# Refresh rates: what an operator can read, and cheap enough that the console (one thread of
# the server's own process when embedded) leaves the server most of the CPU.
EVENT_INTERVAL = 0.2  # seconds between event drains
EVENTS_PER_TICK = 300  # at most this many log lines per drain (1,500 a second)
SNAPSHOT_INTERVAL = 1.0  # seconds between snapshots, when the previous one has returned
SESSION_ROWS = 200  # rows of the sessions table; the title says "N of TOTAL"
LOG_LINES = 2000
FILTER_DELAY = 0.15  # typing in the filter re-filters the log once the keys pause
SORTS = ("age", "bytes")  # the snapshot also sorts by "id", which is age order again
SORT_NAMES = {"age": "oldest first", "bytes": "busiest first"}
# Commands that change the server; the server also announces them as operator_action events.
MUTATING = frozenset(("block", "unblock", "gzip", "kill", "drain", "enable", "reload"))
# Events after which the panels should not wait for the next periodic snapshot.
REFRESHING_EVENTS = frozenset(("operator_action", "config_reloaded", "upstream_health"))


class ConsoleApp(App[None]):
    """The xps-console dashboard over one link."""

    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses live elsewhere
    TITLE = "eXpServer"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("b", "block_ip", "Block IP"),
        Binding("u", "unblock", "Unblock"),
        Binding("g", "toggle_gzip", "gzip"),
        Binding("k", "kill_session", "Kill"),
        Binding("d", "toggle_upstream", "Drain/enable"),
        Binding("r", "reload", "Reload"),
        Binding("s", "cycle_sort", "Sort"),
        Binding("slash", "filter", "Filter"),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        link: Link,
        logs: LogBuffer | None = None,
        session_rows: int = SESSION_ROWS,
        snapshot_interval: float = SNAPSHOT_INTERVAL,
    ) -> None:
        super().__init__()
        self.link = link
        self.logs = logs
        self.session_limit = session_rows
        self.snapshot_interval = snapshot_interval
        self.sort = "age"
        self.history = MetricsHistory()
        self.snapshots = 0  # applied so far
        self._snapshot_busy = False
        self._snapshot_again = False
        self.echoes: Counter[str] = Counter()  # our commands whose operator_action is pending
        self._problem: str | None = None
        self._filter_timer: Timer | None = None
        self.quitting = False

    # --- layout -----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield SessionsTable(SESSION_COLUMNS, id="sessions")
                with Vertical(id="events"):
                    yield FilterInput(placeholder="/ to filter the log", id="filter")
                    yield EventLog(max_lines=LOG_LINES, id="log")
            with Vertical(id="right"):
                yield MetricsPanel(id="metrics")
                yield KeyedTable(ROUTE_COLUMNS, id="routes")
                yield KeyedTable(UPSTREAM_COLUMNS, id="upstreams")
                yield KeyedTable(ACL_COLUMNS, id="acl")
        yield Footer()

    @property
    def sessions(self) -> SessionsTable:
        return self.query_one("#sessions", SessionsTable)

    @property
    def routes(self) -> KeyedTable:
        return self.query_one("#routes", KeyedTable)

    @property
    def upstreams(self) -> KeyedTable:
        return self.query_one("#upstreams", KeyedTable)

    @property
    def acl(self) -> KeyedTable:
        return self.query_one("#acl", KeyedTable)

    @property
    def event_log(self) -> EventLog:
        return self.query_one("#log", EventLog)

    async def on_mount(self) -> None:
        self.sub_title = f"{self.link.mode} · {self.link.target}"
        self.sessions.border_title = "Sessions"
        self.query_one("#events").border_title = "Events"
        self.query_one("#metrics").border_title = "Metrics"
        self.routes.border_title = "Routes"
        self.upstreams.border_title = "Upstreams"
        self.acl.border_title = "ACL"
        try:
            await self.link.open()
        except LinkError as exc:
            self.exit(return_code=1, message=f"xps-console: {exc}")
            return
        # The timers belong to the screen whose widgets they fill, so they stop when it goes:
        # timers of the app itself would still fire while it tears its screens down.
        self.screen.set_interval(EVENT_INTERVAL, self.drain_events)
        self.screen.set_interval(self.snapshot_interval, self.request_snapshot)
        self.request_snapshot()
        self.sessions.focus()

    # --- events -----------------------------------------------------------------------------
    def drain_events(self) -> None:
        """Move a bounded batch of queued events (and log records) into the log."""
        entries = []
        if self.logs is not None:
            entries += [event_line(record) for record in self.logs.take(EVENTS_PER_TICK)]
        refresh = False
        for event in self.link.take_events(EVENTS_PER_TICK):
            kind = event.get("kind")
            if kind in REFRESHING_EVENTS:
                refresh = True
                if kind == "operator_action" and self._is_echo(event):
                    continue  # our own command: its reply is in the log already
            elif kind == "link_closed":
                self.notify(str(event.get("message")), title="link lost", severity="error")
            entries.append(event_line(event))
        if entries:
            with self.batch_update():
                self.event_log.add(entries)
        if refresh:
            self.request_snapshot(fresh=True)

    @staticmethod
    def _echo_key(command: str, args: dict) -> str:
        return json.dumps([command, args], sort_keys=True, default=str)

    def _is_echo(self, event: dict) -> bool:
        key = self._echo_key(str(event.get("command")), event.get("args") or {})
        if self.echoes[key] <= 0:
            return False
        self._forget_echo(key)
        return True

    def _forget_echo(self, key: str) -> None:
        self.echoes[key] -= 1
        if self.echoes[key] <= 0:
            del self.echoes[key]

    # --- snapshots --------------------------------------------------------------------------
    def request_snapshot(self, fresh: bool = False) -> None:
        """Ask for a snapshot unless one is in flight (then, if `fresh`, one more after it)."""
        if self.quitting:
            return
        if self._snapshot_busy:
            self._snapshot_again = self._snapshot_again or fresh
            return
        self._snapshot_busy = True
        self.run_worker(self._fetch_snapshots(), group="snapshot", exit_on_error=False)

    async def _fetch_snapshots(self) -> None:
        try:
            while True:
                self._snapshot_again = False
                try:
                    reply = await self.link.command(
                        "snapshot", limit=self.session_limit, sort=self.sort
                    )
                except LinkError as exc:
                    self._report_problem(str(exc))
                    return
                if not reply.get("ok"):
                    self._report_problem(f"snapshot failed: {reply.get('error')}")
                    return
                try:
                    self.apply_snapshot(reply["result"])
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    # A snapshot this console does not understand: say so, keep running.
                    self._report_problem(f"unreadable snapshot: {exc!r}")
                    return
                if not self._snapshot_again or self.quitting:
                    return
        finally:
            self._snapshot_busy = False

    def _report_problem(self, problem: str) -> None:
        """Say once (not on every snapshot) that the panels cannot be refreshed."""
        if self.quitting or problem == self._problem:
            return
        self._problem = problem
        self.sessions.border_subtitle = problem
        self.event_log.add([event_line({"kind": "link_closed", "message": problem})])

    def apply_snapshot(self, snap: dict) -> None:
        self.snapshots += 1
        if self._problem is not None:
            self._problem = None
            self.sessions.border_subtitle = ""
        sessions = snap.get("sessions") or {}
        rows = sessions.get("rows") or []
        routes = snap.get("routes") or []
        now = snap.get("time") or time.time()
        with self.batch_update():
            self.sessions.sync(session_rows(rows))
            title = (
                f"Sessions · {len(rows)} of {sessions.get('total', len(rows))}"
                f" · {SORT_NAMES[self.sort]}"
            )
            if self.sessions.border_title != title:
                self.sessions.border_title = title
            self.routes.sync(route_rows(routes))
            self.upstreams.sync(upstream_rows(snap.get("upstreams") or []))
            self.acl.sync(acl_rows(snap.get("acl") or {}, routes, now))
            metrics = snap.get("metrics") or {}
            self.history.add(now, metrics)
            self.query_one(MetricsPanel).show(self.history, self._summary(snap, metrics))

    def _summary(self, snap: dict, metrics: dict) -> str:
        events = snap.get("events") or {}
        return (
            f"{snap.get('server_name', '')} pid {snap.get('pid', '?')}\n"
            f"connections {metrics.get('conn_current', '-')}"
            f"  requests {metrics.get('req_total', '-')}\n"
            f"events {events.get('published', 0)}"
            f"  dropped {events.get('dropped', 0)} server / {self.link.dropped} console"
        )

    # --- commands ---------------------------------------------------------------------------
    def run_command(self, name: str, **args: Any) -> None:
        """Send a named command without waiting for it: keys answer at once."""
        self.run_worker(self.command(name, **args), group="commands", exit_on_error=False)

    async def command(self, name: str, **args: Any) -> dict:
        echo = self._echo_key(name, args) if name in MUTATING else None
        if echo is not None:
            self.echoes[echo] += 1  # before sending: the event may beat the reply here
        try:
            reply = await self.link.command(name, **args)
        except LinkError as exc:
            if echo is not None:
                self._forget_echo(echo)
            reply = {"ok": False, "error": str(exc)}
        ok = bool(reply.get("ok"))
        detail = summarize(reply.get("result")) if ok else str(reply.get("error"))
        self.notify(
            f"{name} {format_args(args)}\n{detail}".strip(),
            title="done" if ok else "failed",
            severity="information" if ok else "error",
        )
        line = {"kind": "command", "ts": time.time(), "command": name, "args": args, "ok": ok}
        self.event_log.add([event_line({**line, "result": detail})])
        self.request_snapshot(fresh=True)
        return reply

    def _need(self, table: KeyedTable, what: str) -> dict | None:
        row = table.selected()
        if row is None:
            self.notify(f"no {what} selected", severity="warning")
        return row

    def action_block_ip(self) -> None:
        row = self._need(self.sessions, "session")
        if row is not None:
            self.run_command("block", cidr=row["ip"])

    def action_unblock(self) -> None:
        if self.focused is self.acl:
            entry = self._need(self.acl, "ACL entry")
            if entry is None:
                return
            if entry["kind"] != "block":
                self.notify("route allow/deny lists come from the config file", severity="warning")
                return
            args = {"cidr": entry["cidr"]}
            if entry["route"]:
                args["route"] = entry["route"]
            self.run_command("unblock", **args)
            return
        row = self._need(self.sessions, "session (or block in the ACL panel)")
        if row is not None:
            self.run_command("unblock", cidr=row["ip"])

    def action_toggle_gzip(self) -> None:
        route = self._need(self.routes, "route")
        if route is not None:
            # Flip what the panel shows, as an explicit value: the result never depends on a
            # server-side default, and a second press made before the panel refreshed repeats
            # the first instead of undoing it behind the operator's back.
            self.run_command("gzip", route=route["key"], enabled=not route.get("gzip"))

    def action_kill_session(self) -> None:
        row = self._need(self.sessions, "session")
        if row is not None:
            self.run_command("kill", session=row["id"])

    def action_toggle_upstream(self) -> None:
        upstream = self._need(self.upstreams, "upstream")
        if upstream is not None:
            name = "enable" if upstream.get("state") == "draining" else "drain"
            self.run_command(name, upstream=upstream["addr"])

    def action_reload(self) -> None:
        self.run_command("reload")

    def action_cycle_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self.notify(f"sessions {SORT_NAMES[self.sort]}")
        self.request_snapshot(fresh=True)

    # --- filter, help, quit -----------------------------------------------------------------
    def action_filter(self) -> None:
        self.query_one("#filter", FilterInput).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
        value = event.value
        self._filter_timer = self.set_timer(FILTER_DELAY, lambda: self.apply_filter(value))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self.apply_filter(event.value)
        self.sessions.focus()

    def apply_filter(self, query: str) -> None:
        self.event_log.set_filter(query)
        terms = " ".join(self.event_log.terms)
        self.query_one("#events").border_subtitle = f"filter: {terms}" if terms else ""

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        if self.quitting:
            return
        self.quitting = True
        embedded = self.link.mode == "embedded"
        self.notify(
            "stopping the server: in-flight responses finish first"
            if embedded
            else "detaching; the server keeps running"
        )
        self.run_worker(self._quit(), group="quit", exit_on_error=False)

    async def _quit(self) -> None:
        try:
            await self.link.close()
        finally:
            self.exit()
