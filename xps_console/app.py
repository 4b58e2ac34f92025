"""The operator console: what a server is doing, and one key to stop an abusive client.

Everything the app knows arrives through its `Link`, on two timers set on the dashboard:
- events are drained in batches (at most `EVENTS_PER_TICK` every `EVENT_INTERVAL`), never one
  message per event, so a flood of connections costs the UI a bounded amount of work; events
  the link dropped leave a marker line in the log;
- a snapshot (sessions, routes, upstreams, ACL, metrics) and the top clients are requested
  every `SNAPSHOT_INTERVAL`, with at most one request in flight, and applied as diffs.
Every key runs a named command through the link (the same a script sends to the control
socket); the ones that block, kill or take the last upstream of a route out of rotation ask
first. A reply becomes a sentence, in a toast and in the log. Nothing here touches the
server's objects. When an attached link drops, the dashboard greys out until it is back.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

from platformdirs import user_downloads_path
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.markup import escape
from textual.screen import Screen

from xps_console.formatting import (
    KINDS,
    TOP_SORT_BY_COLUMN,
    MetricsHistory,
    acl_rows,
    block_question,
    describe_reply,
    drain_question,
    dropped_line,
    event_kinds,
    event_line,
    fleet_label,
    kill_question,
    last_upstream_routes,
    open_connections,
    route_rows,
    session_columns,
    session_rows,
    short_cidr,
    top_rows,
    worker_rows,
)
from xps_console.link import Link, LinkError
from xps_console.logs import LogBuffer
from xps_console.palette import ConsoleCommands, Entry, server_commands
from xps_console.screens.block_form import BlockForm, BlockRequest
from xps_console.screens.confirm import ConfirmScreen
from xps_console.screens.dashboard import PANELS, DashboardScreen
from xps_console.screens.help import HelpScreen
from xps_console.screens.session_detail import SessionScreen
from xps_console.widgets.event_log import MARKER, EventLog
from xps_console.widgets.metrics import MetricsPanel
from xps_console.widgets.panels import EventsPanel, Panel, UpstreamsPanel
from xps_console.widgets.tables import KeyedTable, SessionsTable, TopTable
from xps_server.server.control import COMMANDS, SESSION_ROWS

# Refresh rates: what an operator can read, and cheap enough that the console (one thread of
# the server's own process when embedded) leaves the server most of the CPU.
EVENT_INTERVAL = 0.2  # seconds between event drains
EVENTS_PER_TICK = 300  # at most this many log lines per drain (1,500 a second)
SNAPSHOT_INTERVAL = 1.0  # seconds between snapshots, when the previous one has returned
LOG_LINES = 2000  # lines the event log keeps
TOP_ROWS = 50  # rows of the top clients table
TOP_WINDOWS = COMMANDS["top"].arg("window").choices  # seconds the top clients count over
TOP_SORTS = COMMANDS["top"].arg("sort").choices  # what ranks the top clients
SORTS = ("age", "bytes")  # the snapshot also sorts by "id", which is age order again
SORT_NAMES = {"age": "oldest first", "bytes": "busiest first"}
# Events after which the panels should not wait for the next periodic snapshot.
REFRESHING_EVENTS = frozenset(
    (
        "operator_action",
        "config_reloaded",
        "upstream_health",
        "fleet_connected",
        "fleet_disconnected",
        "fleet_change",
    )
)


def session_origins(snap: dict) -> tuple[str, ...]:
    """The origin columns the sessions table needs for this snapshot (`SESSION_ORIGINS`)."""
    instances = snap.get("instances") or []
    several_workers = bool(snap.get("workers")) or any(i.get("workers") for i in instances)
    return (("instance",) if instances else ()) + (("worker",) if several_workers else ())


class ConsoleApp(App[None]):
    """The xps-console dashboard over one link."""

    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses live elsewhere
    TITLE = "eXpServer"
    COMMANDS = App.COMMANDS | {ConsoleCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("b", "block_client", "Block"),
        Binding("B", "block_form", "Block…"),
        Binding("slash", "filter_log", "Filter"),
        Binding("p", "pause_log", "Pause"),
        Binding("e", "log_kind", "Kind"),
        Binding("z", "zoom", "Zoom"),
        Binding("r", "reload", "Reload"),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        link: Link,
        logs: LogBuffer | None = None,
        session_rows: int = SESSION_ROWS,
        snapshot_interval: float = SNAPSHOT_INTERVAL,
        log_lines: int = LOG_LINES,
    ) -> None:
        super().__init__()
        self.link = link
        self.logs = logs
        self.session_limit = session_rows
        self.snapshot_interval = snapshot_interval
        self.dashboard = DashboardScreen(log_lines)
        # Dialogs used again and again are built once (installed, so closing keeps them).
        self.block_form = BlockForm()
        self.help_screen = HelpScreen()
        self.sort = "age"
        self.top_sort = "requests"
        self.top_window = TOP_WINDOWS[0]
        self.top_available: bool | None = None  # None until the server was asked
        self.history = MetricsHistory()
        self.snapshots = 0  # applied so far
        self.last_snapshot: dict = {}
        # What sessions rows name besides their id: their server (several attached), their
        # worker (a server with several workers).
        self.origins: tuple[str, ...] = ()
        # Each worker's (snapshot time, req_total) then, and its req/s since the one before.
        self._worker_counts: dict[int, tuple[float, int]] = {}
        self.worker_rates: dict[int, float] = {}
        self.last_top: dict = {}  # the last `top` result
        self.top_reply: dict | None = None  # the last `top` reply, result or error
        self._behind = False  # data taken in and not drawn yet (a dialog covers the panels)
        self._held: deque[tuple[int, str]] = deque(maxlen=log_lines)  # log lines, the same
        self.connected = True
        self.events_received = 0
        self._dropped_seen = 0
        self._snapshot_busy = False
        self._snapshot_again = False
        self.echoes: Counter[str] = Counter()  # our commands whose operator_action is pending
        self._problem: str | None = None
        self.quitting = False

    def get_default_screen(self) -> Screen:
        return self.dashboard

    # --- the panels -------------------------------------------------------------------------
    @property
    def sessions(self) -> SessionsTable:
        return self.dashboard.query_one("#sessions", SessionsTable)

    @property
    def top_clients(self) -> TopTable:
        return self.dashboard.query_one("#top", TopTable)

    @property
    def routes(self) -> KeyedTable:
        return self.dashboard.query_one("#routes", KeyedTable)

    @property
    def upstreams(self) -> KeyedTable:
        return self.dashboard.query_one("#upstreams", KeyedTable)

    @property
    def acl(self) -> KeyedTable:
        return self.dashboard.query_one("#acl", KeyedTable)

    @property
    def event_log(self) -> EventLog:
        return self.dashboard.query_one("#log", EventLog)

    @property
    def events_panel(self) -> EventsPanel:
        return self.dashboard.query_one("#events-panel", EventsPanel)

    def _panel(self, name: str) -> Panel:
        return self.dashboard.panel(name)

    async def on_dashboard_screen_ready(self) -> None:
        self.install_screen(self.block_form, "block-form")
        self.install_screen(self.help_screen, "help")
        self._show_identity()
        try:
            await self.link.open()
        except LinkError as exc:
            self.exit(return_code=1, message=f"xps-console: {exc}")
            return
        # The timers belong to the screen whose widgets they fill, so they stop when it goes:
        # timers of the app itself would still fire while it tears its screens down.
        self.dashboard.set_interval(EVENT_INTERVAL, self.drain_events)
        self.dashboard.set_interval(self.snapshot_interval, self.request_snapshot)
        self.request_snapshot()

    def _show_identity(self, listeners: Iterable[str] = ()) -> None:
        # Over several servers the header names the servers instead: at 80 columns it has
        # room for one of the two.
        several = bool(self.last_snapshot.get("instances"))
        listening = "" if several else " ".join(listeners)
        self.title = f"eXpServer {listening}" if listening else "eXpServer"
        where = f"{self.link.mode} {self.link.target}"
        fleet = fleet_label(self.last_snapshot.get("fleet"))
        if fleet:
            where = f"{where} · {fleet}"
        self.sub_title = where if self.connected else f"DISCONNECTED · retrying {where}"

    # --- events -----------------------------------------------------------------------------
    def drain_events(self) -> None:
        """Move a bounded batch of queued events (and log records) into the log."""
        entries: list[tuple[int, str]] = []
        dropped = self.link.dropped
        if dropped > self._dropped_seen:
            # The gap is before what is queued now: the link drops its oldest events.
            entries.append((MARKER, dropped_line(dropped - self._dropped_seen)))
        self._dropped_seen = dropped  # a new server (reattached) counts from 0 again
        if self.logs is not None:
            for record in self.logs.take(EVENTS_PER_TICK):
                entries.append((event_kinds(record), event_line(record)))
        refresh = False
        events = self.link.take_events(EVENTS_PER_TICK)
        self.events_received += len(events)
        for event in events:
            kind = event.get("kind")
            if kind in REFRESHING_EVENTS:
                refresh = True
                if kind == "operator_action" and self._is_echo(event):
                    continue  # our own command: its reply is in the log already
            elif kind == "link_closed":
                self.set_connected(False, str(event.get("message")))
            elif kind == "link_restored":
                self.set_connected(True, str(event.get("message")))
            elif kind in ("instance_lost", "instance_back"):
                # One of several servers: the others keep the dashboard live.
                refresh = True
                self._show_identity(self.last_snapshot.get("listeners") or ())
                lost = kind == "instance_lost"
                self.say(
                    f"{event.get('instance')}: {'disconnected, retrying' if lost else 'back'}",
                    severity="error" if lost else "information",
                )
            entries.append((event_kinds(event), event_line(event)))
        if self.covered:
            self._held.extend(entries)
        else:
            if self._held:
                entries = [*self._held, *entries]
                self._held.clear()
            if self._behind:
                self.show_panels()
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

    def set_connected(self, connected: bool, message: str) -> None:
        """The link went down (grey the panels, say so) or came back (refresh them all)."""
        if connected == self.connected:
            return
        self.connected = connected
        self._show_identity(self.last_snapshot.get("listeners") or ())
        if connected:
            self.top_available = None  # perhaps another server: ask it
            self.dashboard.set_stale(None)
            self.say(f"Reconnected to {self.link.target}", severity="information")
            self.request_snapshot(fresh=True)
        else:
            self.dashboard.set_stale(
                f"Disconnected from {self.link.target}: {message}. Retrying; the panels show "
                "the last data received."
            )
            self.say("Disconnected from the server: retrying", severity="error")

    # --- snapshots --------------------------------------------------------------------------
    def request_snapshot(self, fresh: bool = False) -> None:
        """Ask for a snapshot unless one is in flight (then, if `fresh`, one more after it)."""
        if self.quitting or not self.connected:
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
                    top = None
                    if self.top_available is not False:
                        top = await self.link.command(
                            "top", window=self.top_window, limit=TOP_ROWS, sort=self.top_sort
                        )
                except LinkError as exc:
                    self._report_problem(str(exc))
                    return
                if not reply.get("ok"):
                    self._report_problem(f"snapshot failed: {reply.get('error')}")
                    return
                try:
                    self.apply_snapshot(reply["result"], top)
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
        if self.quitting or problem == self._problem or not self.connected:
            return
        self._problem = problem
        self._panel("sessions").border_subtitle = escape(problem)
        self.event_log.add(
            [
                (
                    event_kinds({"kind": "link_closed"}),
                    event_line({"kind": "link_closed", "message": problem}),
                )
            ]
        )

    @property
    def covered(self) -> bool:
        """A dialog is over the dashboard: the panels behind it wait until it closes (drawing
        them under a dialog costs the most, and it is the dialog the operator reads)."""
        return self.screen is not self.dashboard

    def apply_snapshot(self, snap: dict, top: dict | None = None) -> None:
        """Take in a snapshot (and the `top` reply fetched with it); show them unless a dialog
        covers the panels, in which case the next event drain after it closes does."""
        self.snapshots += 1
        self.last_snapshot = snap
        self.history.add(snap.get("time") or time.time(), snap.get("metrics") or {})
        self._count_workers(snap.get("time") or time.time(), snap.get("workers") or [])
        if top is not None:
            self._take_top(top)
        self._behind = True
        if not self.covered:
            self.show_panels()

    def _count_workers(self, now: float, workers: list[dict]) -> None:
        """Each worker's req/s, from its req_total in this snapshot and the previous one."""
        counts: dict[int, tuple[float, int]] = {}
        for worker in workers:
            wid, total = worker.get("worker"), worker.get("req_total")
            if not isinstance(wid, int) or not isinstance(total, int):
                continue
            counts[wid] = (now, total)
            before = self._worker_counts.get(wid)
            if before is not None and now > before[0]:
                self.worker_rates[wid] = max(0.0, (total - before[1]) / (now - before[0]))
        self._worker_counts = counts
        self.worker_rates = {w: r for w, r in self.worker_rates.items() if w in counts}

    def _take_top(self, reply: dict) -> None:
        self.top_reply = reply
        if reply.get("ok"):
            self.top_available = True
            self.last_top = reply["result"]
        elif "unknown command" in str(reply.get("error")):
            self.top_available = False  # an older server: stop asking

    def show_panels(self) -> None:
        """Draw the last snapshot and top clients taken in."""
        self._behind = False
        snap = self.last_snapshot
        if self._problem is not None:
            self._problem = None
            self._panel("sessions").border_subtitle = ""
        sessions = snap.get("sessions") or {}
        rows = sessions.get("rows") or []
        routes = snap.get("routes") or []
        now = snap.get("time") or time.time()
        with self.batch_update():
            self._show_identity(snap.get("listeners") or ())
            workers = snap.get("workers") or []
            origins = session_origins(snap)
            if origins != self.origins:
                self.origins = origins
                self.sessions.set_columns(session_columns(origins))
            self.sessions.sync(session_rows(rows, origins))
            self._title_sessions(len(rows), sessions.get("total", len(rows)))
            self.routes.sync(route_rows(routes))
            self.dashboard.query_one(UpstreamsPanel).show(snap.get("upstreams") or [], now)
            self.acl.sync(acl_rows(snap.get("acl") or {}, routes, now))
            metrics = snap.get("metrics") or {}
            metrics_panel = self.dashboard.query_one(MetricsPanel)
            metrics_panel.show(self.history, self._summary(snap, metrics))
            metrics_panel.show_workers(worker_rows(workers, self.worker_rates))
            if self.top_reply is not None:
                self._show_top(self.top_reply)

    def _title_sessions(self, listed: int, total: int) -> None:
        table = self.sessions
        shown = f"{table.shown_count} found in " if table.terms else ""
        title = f"Sessions · {shown}{listed} of {total:,} · {SORT_NAMES[self.sort]}"
        panel = self._panel("sessions")
        if panel.border_title != title:
            panel.border_title = title

    def _show_top(self, reply: dict) -> None:
        """The `top` command's reply: the top clients table, or why there is none."""
        panel = self._panel("top")
        if not reply.get("ok"):
            error = str(reply.get("error"))
            if "unknown command" in error:
                error = "this server does not count top clients"
            panel.border_subtitle = escape(error)
            return
        result = reply["result"]
        if not result.get("enabled", True):
            self.top_clients.sync([])
            panel.border_subtitle = 'off: "top_clients" is 0 in the config'
            return
        self.top_clients.sync(top_rows(result.get("clients") or []))
        panel.border_title = (
            f"Top clients · last {result.get('window', self.top_window)} s"
            f" · by {self.top_sort} · {result.get('tracked', 0):,} tracked"
        )
        panel.border_subtitle = ""

    def _summary(self, snap: dict, metrics: dict) -> str:
        requests = metrics.get("req_total")
        requests_text = f"{requests:,}" if isinstance(requests, int) else "-"
        return (
            f"{snap.get('server_name', '')} pid {snap.get('pid', '?')}\n"
            f"connections {metrics.get('conn_current', '-')}  requests {requests_text}\n"
            f"events {self.events_received:,} received · {self._dropped_seen:,} dropped"
        )

    def on_keyed_table_sort_changed(self, event: KeyedTable.SortChanged) -> None:
        """A header click on sessions or top clients also asks the server for that order, so
        the rows it sends (it sends the first N) are the ones that sort first."""
        column = event.column
        if isinstance(event.table, SessionsTable):
            wanted = "bytes" if column in ("bytes_in", "bytes_out") else "age"
            if column is not None and wanted != self.sort:
                self.sort = wanted
                self.request_snapshot(fresh=True)
        elif isinstance(event.table, TopTable) and column in TOP_SORT_BY_COLUMN:
            self.top_sort = TOP_SORT_BY_COLUMN[column]
            self.request_snapshot(fresh=True)

    # --- commands ---------------------------------------------------------------------------
    def run_command(self, name: str, **args: Any) -> None:
        """Send a named command without waiting for it: keys answer at once."""
        self.run_worker(self.command(name, **args), group="commands", exit_on_error=False)

    async def command(self, name: str, **args: Any) -> dict:
        # The server announces a command that changes it as an operator_action event: the
        # log shows this reply instead.
        command = COMMANDS.get(name)
        echo = self._echo_key(name, args) if command is not None and command.mutating else None
        if echo is not None:
            self.echoes[echo] += 1  # before sending: the event may beat the reply here
        try:
            reply = await self.link.command(name, **args)
        except LinkError as exc:
            if echo is not None:
                self._forget_echo(echo)
            reply = {"ok": False, "error": f"not sent: {exc}"}
        message, severity = describe_reply(name, args, reply)
        self.say(message, severity)
        line = {
            "kind": "command",
            "ts": time.time(),
            "command": name,
            "args": args,
            "ok": bool(reply.get("ok")),
            "result": message,
        }
        self.event_log.add([(event_kinds(line), event_line(line))])
        self.request_snapshot(fresh=True)
        return reply

    async def fetch_session(self, session_id: int) -> dict:
        """The `session` command's reply (the detail view polls it)."""
        try:
            return await self.link.command("session", id=session_id)
        except LinkError as exc:
            return {"ok": False, "error": f"not connected: {exc}"}

    def say(self, message: str, severity: str = "information") -> None:
        """A toast; never markup: it carries addresses, paths and the server's words."""
        self.notify(message, severity=severity, markup=False)  # type: ignore[arg-type]

    def confirm(self, question: str, verb: str, then: Callable[[], None]) -> None:
        """Ask `question`; run `then` only on yes. The keys come back where they were."""

        def answered(yes: bool | None) -> None:
            if yes:
                then()

        self.push_screen(ConfirmScreen(question, verb), answered)

    def _need(self, table: KeyedTable, what: str) -> dict | None:
        row = table.selected()
        if row is None:
            lost = " (the one selected went away; move the cursor)" if table.lost else ""
            self.say(f"No {what} selected{lost}", severity="warning")
        return row

    def _client_table(self) -> KeyedTable:
        """Top clients or sessions: the focused one, else the one used last."""
        focused = self.focused
        if isinstance(focused, TopTable | SessionsTable):
            return focused
        return self.top_clients if self.dashboard.client_panel == "top" else self.sessions

    def blocked_globally(self, target: str) -> dict | None:
        for block in (self.last_snapshot.get("acl") or {}).get("blocks") or []:
            if block.get("route") is None and short_cidr(block["cidr"]) == target:
                return block
        return None

    # --- blocking -----------------------------------------------------------------------------
    def action_block_client(self) -> None:
        row = self._need(self._client_table(), "client")
        if row is not None:
            self.ask_block(row["ip"])

    def ask_block(
        self,
        target: str,
        route: str | None = None,
        seconds: float | None = None,
        again: bool = False,
    ) -> None:
        """Confirm, then block `target` (an address or CIDR) globally or on `route`."""
        if route is None and seconds is None and not again and self.blocked_globally(target):
            self.say(f"{target} is already blocked (B changes how long)", severity="warning")
            return
        args: dict[str, Any] = {"cidr": target}
        if route is not None:
            args["route"] = route
        if seconds is not None:
            args["seconds"] = int(seconds) if float(seconds).is_integer() else seconds
        open_count = 0
        if route is None:
            sessions = (self.last_snapshot.get("sessions") or {}).get("rows") or []
            open_count = open_connections(target, self.last_top.get("clients") or [], sessions)
        self.confirm(
            block_question(target, route, seconds, open_count),
            "Block",
            lambda: self.run_command("block", **args),
        )

    def action_block_form(self) -> None:
        routes = [route["key"] for route in self.last_snapshot.get("routes") or []]

        def submitted(request: BlockRequest | None) -> None:
            if request is not None:
                self.ask_block(request.target, request.route, request.seconds, again=True)

        self.block_form.prepare(routes)
        self.push_screen(self.block_form, submitted)

    def action_unblock(self) -> None:
        if self.focused is self.acl:
            entry = self._need(self.acl, "ACL entry")
            if entry is None:
                return
            if entry["kind"] != "block":
                self.say("Route allow/deny lists come from the config file", severity="warning")
                return
            args = {"cidr": entry["cidr"]}
            if entry["route"]:
                args["route"] = entry["route"]
            self.run_command("unblock", **args)
            return
        row = self._need(self._client_table(), "client (or block in the ACL panel)")
        if row is not None:
            self.run_command("unblock", cidr=row["ip"])

    # --- sessions, routes, upstreams ----------------------------------------------------------
    def action_kill_session(self) -> None:
        row = self._need(self.sessions, "session")
        if row is not None:
            self.ask_kill(row)

    def ask_kill(self, row: dict) -> None:
        session_id = row["id"]
        self.confirm(
            kill_question(row), "Kill", lambda: self.run_command("kill", session=session_id)
        )

    def action_session_details(self) -> None:
        row = self._need(self.sessions, "session")
        if row is not None:
            self.push_screen(SessionScreen(row["id"], self.fetch_session))

    def action_toggle_gzip(self) -> None:
        route = self._need(self.routes, "route")
        if route is not None:
            # Flip what the panel shows, as an explicit value: the result never depends on a
            # server-side default, and a second press made before the panel refreshed repeats
            # the first instead of undoing it behind the operator's back.
            self.run_command("gzip", route=route["key"], enabled=not route.get("gzip"))

    def action_toggle_upstream(self) -> None:
        upstream = self._need(self.upstreams, "upstream")
        if upstream is not None:
            self.ask_toggle_upstream(upstream)

    def ask_toggle_upstream(self, upstream: dict) -> None:
        """Enable a draining upstream; drain any other, asking first if a route has no other
        upstream up (its requests would fail)."""
        addr = upstream["addr"]
        if upstream.get("state") == "draining":
            self.run_command("enable", upstream=addr)
            return
        stranded = last_upstream_routes(
            addr, self.last_snapshot.get("routes") or [], self.last_snapshot.get("upstreams") or []
        )
        if stranded:
            self.confirm(
                drain_question(addr, stranded),
                "Drain",
                lambda: self.run_command("drain", upstream=addr),
            )
        else:
            self.run_command("drain", upstream=addr)

    def action_reload(self) -> None:
        self.run_command("reload")

    def action_cycle_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self.say(f"Sessions {SORT_NAMES[self.sort]}")
        self.request_snapshot(fresh=True)

    def action_cycle_top_sort(self) -> None:
        self.set_top(sort=TOP_SORTS[(TOP_SORTS.index(self.top_sort) + 1) % len(TOP_SORTS)])

    def action_toggle_top_window(self) -> None:
        self.set_top(window=TOP_WINDOWS[(TOP_WINDOWS.index(self.top_window) + 1) % 2])

    def set_top(self, sort: str | None = None, window: int | None = None) -> None:
        self.top_sort = sort or self.top_sort
        self.top_window = window or self.top_window
        self.say(f"Top clients by {self.top_sort}, over the last {self.top_window} s")
        self.request_snapshot(fresh=True)

    # --- the log, panels, help, quit ----------------------------------------------------------
    def action_filter_log(self) -> None:
        before = self.focused
        if self.dashboard.narrow:
            self.dashboard.show_panel("events", focus=False)
        self.events_panel.start_filter(before)

    def action_pause_log(self) -> None:
        self.event_log.toggle_pause()

    def action_log_kind(self) -> None:
        self._said_kind(self.events_panel.cycle_kind())

    def set_log_kind(self, kind: str | None) -> None:
        self.event_log.set_kind(kind)
        self._said_kind(kind)

    def _said_kind(self, kind: str | None) -> None:
        self.say(f"Log: {'every kind' if kind is None else 'only ' + kind}")

    def action_zoom(self) -> None:
        self.dashboard.toggle_zoom()

    def action_show_panel(self, name: str) -> None:
        self.dashboard.show_panel(name)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(self.help_screen)

    def action_screenshot(self) -> None:
        """Save an SVG of the screen: in the downloads folder if there is one, else here."""
        downloads = user_downloads_path()
        folder = downloads if downloads.is_dir() else Path.cwd()
        name = time.strftime("xps-console-%Y%m%d-%H%M%S.svg")
        try:
            path = self.save_screenshot(filename=name, path=str(folder))
        except OSError as exc:
            self.say(f"Screenshot not saved: {exc}", severity="error")
            return
        self.say(f"Screenshot saved to {path}")

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for command in super().get_system_commands(screen):
            if command.title == "Screenshot":
                # Textual's saves to a downloads folder that a server often does not have; ours
                # falls back to the working directory. After a moment: without the palette.
                yield SystemCommand(
                    "Screenshot",
                    "Save an SVG 'screenshot' of the dashboard",
                    lambda: self.dashboard.set_timer(0.1, self.action_screenshot),
                )
            else:
                yield command

    async def action_quit(self) -> None:
        if self.quitting:
            return
        self.quitting = True
        embedded = self.link.mode == "embedded"
        self.say(
            "Stopping the server: in-flight responses finish first"
            if embedded
            else "Detaching; the server keeps running"
        )
        self.run_worker(self._quit(), group="quit", exit_on_error=False)

    async def _quit(self) -> None:
        try:
            await self.link.close()
        finally:
            self.exit()

    # --- the palette --------------------------------------------------------------------------
    def palette_commands(self) -> list[Entry]:
        """Every command by name, for the command palette: (title, help, what it does)."""
        snap = self.last_snapshot
        commands: list[Entry] = [
            (
                "Block the selected client",
                "b: globally, after a confirmation",
                self.action_block_client,
            ),
            (
                "Block an address or network…",
                "B: address or CIDR, scope, duration",
                self.action_block_form,
            ),
            ("Reload the configuration", "r: re-read the config file", self.action_reload),
            ("Filter the log…", "/: words that must all appear", self.action_filter_log),
            ("Pause or follow the log", "p", self.action_pause_log),
            ("Zoom the focused panel", "z: the whole screen, and back", self.action_zoom),
            (
                "Sessions: change the order",
                "s: oldest first or busiest first",
                self.action_cycle_sort,
            ),
            (
                "Top clients: change the order",
                "requests, bytes, errors",
                self.action_cycle_top_sort,
            ),
            ("Top clients: 10 s or 60 s window", "w", self.action_toggle_top_window),
            ("Help", "?: every key", self.action_help),
        ]
        commands += server_commands(self.palette_action)
        for kind in (None, *KINDS):
            name = "every kind" if kind is None else f"only {kind}"
            commands.append((f"Log: {name}", "e cycles", lambda k=kind: self.set_log_kind(k)))
        for name, title in PANELS.items():
            commands.append(
                (
                    f"Show {title}",
                    "the panel, with the keys",
                    lambda n=name: self.action_show_panel(n),
                )
            )
        for client in (self.last_top.get("clients") or [])[:20]:
            ip = client["ip"]
            commands.append(
                (
                    f"Block {ip}",
                    f"top client: {client.get('requests', 0):,} requests",
                    lambda ip=ip: self.ask_block(ip),
                )
            )
        for block in (snap.get("acl") or {}).get("blocks") or []:
            args = {"cidr": block["cidr"]} | (
                {"route": block["route"]} if block.get("route") else {}
            )
            where = f" on route {block['route']}" if block.get("route") else ""
            commands.append(
                (
                    f"Unblock {short_cidr(block['cidr'])}{where}",
                    "lift the block",
                    lambda a=args: self.run_command("unblock", **a),
                )
            )
        for row in ((snap.get("sessions") or {}).get("rows") or [])[:50]:
            label = f"#{row['id']} {row.get('client', '')}"
            commands.append(
                (f"Kill session {label}", "after a confirmation", lambda r=row: self.ask_kill(r))
            )
            commands.append(
                (
                    f"Details of session {label}",
                    "Enter on a session",
                    lambda i=row["id"]: self.push_screen(SessionScreen(i, self.fetch_session)),
                )
            )
        for route in snap.get("routes") or []:
            state = "off" if route.get("gzip") else "on"
            commands.append(
                (
                    f"gzip {state} for route {route['key']}",
                    "g on a route",
                    lambda r=route: self.run_command(
                        "gzip", route=r["key"], enabled=not r.get("gzip")
                    ),
                )
            )
        for upstream in snap.get("upstreams") or []:
            verb = "Enable" if upstream.get("state") == "draining" else "Drain"
            commands.append(
                (
                    f"{verb} upstream {upstream['addr']}",
                    "d on an upstream",
                    lambda u=upstream: self.ask_toggle_upstream(u),
                )
            )
        return commands

    def palette_action(self, name: str) -> Callable[[], Any]:
        """What picking the server command `name` in the palette does: what its key does, on
        what is selected, with the same confirmation. A command no key runs is sent as is
        when it needs no argument (ping); otherwise the palette says where to send it."""
        keyed: dict[str, Callable[[], Any]] = {
            "snapshot": lambda: self.request_snapshot(fresh=True),
            "top": lambda: self.action_show_panel("top"),
            "session": self.action_session_details,
            "block": self.action_block_form,
            "unblock": self.action_unblock,
            "gzip": self.action_toggle_gzip,
            "kill": self.action_kill_session,
            "drain": lambda: self.upstream_command("drain"),
            "enable": lambda: self.upstream_command("enable"),
            "reload": self.action_reload,
        }
        action = keyed.get(name)
        if action is not None:
            return action
        command = COMMANDS[name]
        if any(arg.required for arg in command.args):
            return lambda: self.say(
                f"{command.usage}: no key runs it; send it on the control socket",
                severity="warning",
            )
        return lambda: self.run_command(name)

    def upstream_command(self, name: str) -> None:
        """`drain` or `enable` the selected upstream (a drain asks first, as `d` does)."""
        upstream = self._need(self.upstreams, "upstream")
        if upstream is None:
            return
        if name == "enable":
            self.run_command("enable", upstream=upstream["addr"])
        elif upstream.get("state") == "draining":
            self.say(f"{upstream['addr']} is draining already", severity="warning")
        else:
            self.ask_toggle_upstream(upstream)
