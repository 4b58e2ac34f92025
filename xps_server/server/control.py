"""Operator commands and the control socket.

Every operator action is a named command executed on the loop thread, between events, with a
JSON-able result: `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`. The
commands are one table, `COMMANDS`: each with its typed arguments (checked before it runs), a
line of help, whether it changes the server and whether it changes the state file; the console
reads the same table. The embedded console submits commands from its own thread
(`CommandAPI.submit`, which crosses over through the loop's wake-up fd); headless,
`ControlServer` speaks the same commands as JSON lines on a Unix socket (mode 0600) and streams
events to subscribers. One API, two transports.

A command that changes what the state file holds (block, unblock, gzip, drain, enable) takes
effect at once, but its reply waits until the runtime says the state as it was after the
command is on disk (`Runtime.when_durable`): the result then carries `"persisted": true`
(written and fsynced), `false` (the write failed) or `null` (no state_file). The loop never
waits for the disk: the reply is handed over later (`CommandAPI.run` takes a callback), and
one fsync answers every command that came before it (group commit). The control socket keeps
each connection's replies in request order, a reply that is ready waiting behind one that is
not.

The control socket never lets one peer hold the loop: a connection executes at most
`COMMANDS_PER_TURN` commands, then stops reading and continues on the next loop turn, so HTTP
traffic is served between the chunks of a pipelined batch; it also stops while its replies are
not read (`Connection.out` over its threshold) or `MAX_PENDING_REPLIES` replies wait for the
disk. Events go to a subscriber in chunks of `EVENTS_PER_TURN`, one per loop turn.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import json
import logging
import os
import socket
import stat
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict

from xps_server.core.loop import EPOLLET, EPOLLIN
from xps_server.events import OperatorAction, Subscription
from xps_server.network.connection import Connection, TlsInfo
from xps_server.server.commands import NUMBER, Arg, Command, CommandError
from xps_server.toptalkers import SORTS as TOP_SORTS

if TYPE_CHECKING:
    from xps_server.server.core import Core
    from xps_server.server.session import Session

log = logging.getLogger("xps.control")

MAX_LINE = 1 << 20  # a command line longer than this is malformed
EVENT_FLUSH_INTERVAL = 0.05  # control-socket subscribers get events in batches, 20 per second
EVENT_BATCH = 2000  # events per batch for a subscriber without a max_rate
EVENTS_PER_TURN = 250  # a batch goes out in chunks this big, one per loop turn
SUBSCRIBER_QUEUE = 20_000
SESSION_ROWS = 200  # a snapshot lists at most this many sessions unless asked otherwise
TOP_WINDOWS = (10, 60)  # seconds the `top` command can look back
TOP_LIMIT = 1000
# Request fields whose values a session's detail view never shows: credentials.
SECRET_FIELDS = frozenset(("authorization", "proxy-authorization", "cookie"))
HIDDEN = "(hidden)"
COMMANDS_PER_TURN = 64  # commands one control connection executes before the loop moves on
MAX_PENDING_REPLIES = 4096  # replies waiting for the disk before a connection stops reading


# --- snapshots ------------------------------------------------------------------------------
def session_state(session: Session) -> str:
    if session.tunnel is not None:
        return "tunnel"
    if session.producer is not None:
        return "proxying"
    if session.conn.out.items:
        return "writing"
    if session.parser.in_message:
        return "reading"
    return "idle"


class SessionRow(TypedDict):
    """One session as snapshots list it."""

    id: int
    client: str
    ip: str
    route: str
    state: str
    request: str
    requests: int
    bytes_in: int
    bytes_out: int
    age: float
    tls: TlsInfo | None


def session_row(session: Session, now: float) -> SessionRow:
    conn = session.conn
    request = session.request
    if request is None and session.tunnel is not None:
        request = session.last_request  # the request that upgraded
    return {
        "id": session.id,
        "client": f"{conn.peer_ip}:{conn.peer_port}",
        "ip": conn.peer_ip,
        "route": session.route,
        "state": session_state(session),
        "request": f"{request.method} {request.target}" if request is not None else "",
        "requests": session.requests,
        "bytes_in": conn.bytes_in,
        "bytes_out": conn.bytes_out,
        "age": round(now - session.opened, 3),
        "tls": conn.tls_info(),
    }


_SORT_KEYS: dict[str, Callable[[Session], float]] = {
    "age": lambda s: s.opened,  # oldest first
    "bytes": lambda s: -(s.conn.bytes_in + s.conn.bytes_out),
    "id": lambda s: s.id,
}


# --- the commands: the core and the validated arguments in, a JSON-able result out -------------
def _ping(core: Core, args: dict[str, Any]) -> str:
    return "pong"


def _snapshot(core: Core, args: dict[str, Any]) -> dict[str, Any]:
    now = core.loop.now
    sessions = heapq.nsmallest(
        max(0, args["limit"]), core.sessions.values(), key=_SORT_KEYS[args["sort"]]
    )
    return {
        "server_name": core.config.server_name,
        "pid": os.getpid(),
        "config": core.config.path,
        "time": time.time(),
        "listeners": [host_port(*listener.address) for listener in core.listeners.values()],
        "sessions": {
            "total": len(core.sessions),
            "rows": [session_row(s, now) for s in sessions],
        },
        "routes": core.routes_snapshot(),
        "upstreams": core.upstreams_snapshot(),
        "acl": core.acl_snapshot(),
        "metrics": core.metrics_snapshot(),
        "events": {"published": core.bus.published, "dropped": core.bus.dropped},
        "fleet": _fleet_summary(core),
    }


def _fleet_summary(core: Core) -> dict[str, Any] | None:
    """The fleet in brief, for the console's header (and for a console attached to several
    instances, to tell whether they share one: same Redis, same prefix); None without a
    `fleet` config."""
    link = core.fleet_link
    if link is None:
        return None
    status = link.status()
    return {key: status[key] for key in ("name", "redis", "prefix", "connected", "alive", "queued")}


def _fleet(core: Core, args: dict[str, Any]) -> dict[str, Any]:
    link = core.fleet_link
    if link is None:
        return {"enabled": False, "instances": []}  # no `fleet` in the config
    return link.status()


def _top(core: Core, args: dict[str, Any]) -> dict[str, Any]:
    window = args["window"]
    tracker = core.top
    if tracker is None:
        return {"enabled": False, "window": window, "tracked": 0, "capacity": 0, "clients": []}
    core.accounting.report()
    now = core.loop.now
    clients = tracker.top(now, window, args["limit"], args["sort"])
    by_ip = core.sessions_by_ip
    for row in clients:
        row["open"] = len(by_ip.get(row["ip"], ()))
    return {
        "enabled": True,
        "window": window,
        "tracked": tracker.tracked(now, window),
        "capacity": tracker.capacity,
        "clients": clients,
    }


def _session(core: Core, args: dict[str, Any]) -> dict[str, Any]:
    session = _find_session(core, args["id"])
    now = core.loop.now
    listener = session.listener
    last = session.last_request
    return {
        **session_row(session, now),
        "port": session.conn.peer_port,
        "listener": host_port(listener.host, listener.port),
        "last_request": None
        if last is None
        else {
            "method": last.method,
            "target": last.target,
            "version": last.version,
            "headers": [
                [name, HIDDEN if name.lower() in SECRET_FIELDS else value]
                for name, value in last.raw_headers
            ],
            "user_agent": last.headers.get("user-agent"),
            "status": session.last_status,
            "bytes": session.last_bytes,
            "duration_ms": round(session.last_elapsed * 1000, 3),
            "ago": round(now - session.last_done, 3),
        },
        "upstream": session.upstream or None,
    }


def _block(core: Core, args: dict[str, Any]) -> Any:
    return _policy(lambda: core.block(args["cidr"], route=args["route"], seconds=args["seconds"]))


def _blocks(core: Core, args: dict[str, Any]) -> Any:
    return core.blocks()


def _unblock(core: Core, args: dict[str, Any]) -> Any:
    return _policy(lambda: core.unblock(args["cidr"], route=args["route"]))


def _gzip(core: Core, args: dict[str, Any]) -> Any:
    route = args["route"]

    def apply() -> Any:
        if args["reset"]:
            return core.set_gzip(route, None)
        wanted = args["enabled"]
        if wanted is None:
            wanted = not core.runtime.resolve(route)[1].gzip_enable
        return core.set_gzip(route, wanted)

    return _policy(apply)


def _kill(core: Core, args: dict[str, Any]) -> dict[str, SessionRow]:
    session = _find_session(core, args["session"])
    row = session_row(session, core.loop.now)
    session.conn.close()
    return {"killed": row}


def _drain(core: Core, args: dict[str, Any]) -> Any:
    return _policy(lambda: core.drain_upstream(args["upstream"]))


def _enable(core: Core, args: dict[str, Any]) -> Any:
    return _policy(lambda: core.enable_upstream(args["upstream"]))


def _reload(core: Core, args: dict[str, Any]) -> dict[str, str]:
    ok, message = core.reload()
    if not ok:
        raise CommandError(message)
    return {"reloaded": core.config.path}


def _find_session(core: Core, session_id: int) -> Session:
    session = core.sessions.get(session_id)
    if session is None:
        raise CommandError(f"no session {session_id}")
    return session


def _policy(action: Callable[[], Any]) -> Any:
    """Run a core policy function; its ValueError/KeyError is the operator's mistake."""
    try:
        return action()
    except CommandError:
        raise  # worded for the operator already
    except (ValueError, KeyError) as exc:
        raise CommandError(str(exc).strip("'\"")) from None


_ROUTE = "a route: its req_path ('/api'), or 'N:req_path' in servers[N]"
_UPSTREAM = "an upstream as 'host:port'"

# Every command, by name: what the command API runs, validates and announces, and what the
# console lists. The control socket's own `subscribe`/`unsubscribe` are not here: they concern
# one connection, not the server.
COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        Command("ping", "check that the server answers (it says pong)", _ping),
        Command(
            "snapshot",
            "sessions, routes, upstreams, ACL and metrics in one reply",
            _snapshot,
            args=(
                Arg("limit", int, "sessions listed at most", default=SESSION_ROWS),
                Arg(
                    "sort",
                    str,
                    "which sessions are listed: the oldest, the busiest, by id",
                    default="age",
                    choices=tuple(_SORT_KEYS),
                ),
            ),
        ),
        Command(
            "top",
            "the busiest client addresses over the last 10 or 60 seconds",
            _top,
            args=(
                Arg("window", int, "seconds to look back", default=10, choices=TOP_WINDOWS),
                Arg("limit", int, "clients listed at most", default=20, bounds=(1, TOP_LIMIT)),
                Arg("sort", str, "what ranks clients", default="requests", choices=TOP_SORTS),
            ),
        ),
        Command(
            "session",
            "one session in detail: its connection, the request in progress, the last one",
            _session,
            args=(Arg("id", int, "the session's id"),),
        ),
        Command(
            "block",
            "block an address or CIDR everywhere (refused at accept, its connections closed) "
            "or on one route (403), for some seconds or until unblocked",
            _block,
            args=(
                Arg("cidr", str, "an IP address or CIDR block"),
                Arg("route", str, f"{_ROUTE}; none: every route", default=None),
                Arg("seconds", NUMBER, "how long; none: until unblocked", default=None),
            ),
            mutating=True,
            persisted=True,
        ),
        Command(
            "blocks",
            "the runtime blocks: address or CIDR, route, expiry, hits and reason (what made it)",
            _blocks,
        ),
        Command(
            "unblock",
            "lift a block, global or on one route",
            _unblock,
            args=(
                Arg("cidr", str, "the address or CIDR block as blocked"),
                Arg("route", str, f"{_ROUTE}; none: the global block", default=None),
            ),
            mutating=True,
            persisted=True,
        ),
        Command(
            "gzip",
            "turn gzip on or off for a route, or back to what the config file says",
            _gzip,
            args=(
                Arg("route", str, _ROUTE),
                Arg("enabled", bool, "on or off; none: the opposite of now", default=None),
                Arg("reset", bool, "back to the config file's setting", default=False),
            ),
            mutating=True,
            persisted=True,
        ),
        Command(
            "kill",
            "close a session's connection at once",
            _kill,
            args=(Arg("session", int, "the session's id"),),
            mutating=True,
        ),
        Command(
            "drain",
            "take an upstream out of rotation; its requests in flight finish",
            _drain,
            args=(Arg("upstream", str, _UPSTREAM),),
            mutating=True,
            persisted=True,
        ),
        Command(
            "enable",
            "put a drained (or failed) upstream back in rotation",
            _enable,
            args=(Arg("upstream", str, _UPSTREAM),),
            mutating=True,
            persisted=True,
        ),
        Command(
            "fleet",
            "the fleet sharing this server's blocks: its Redis, and each instance with its "
            "last heartbeat",
            _fleet,
        ),
        Command(
            "reload",
            "re-read the config file; a bad one is refused and the running config stays",
            _reload,
            mutating=True,
        ),
    )
}

# The control socket's own command: stream events to this connection.
SUBSCRIBE_MAX_RATE = Arg("max_rate", int, "events per second at most; 0: no limit", default=0)


class CommandAPI:
    """The commands of `COMMANDS` over one core; `run` runs on the loop thread."""

    def __init__(self, core: Core) -> None:
        self.core = core

    # --- dispatch -------------------------------------------------------------------------
    def run(self, message: Any, done: Callable[[dict[str, Any]], None]) -> None:
        """Apply one command message `{"cmd": name, "args": {...}}` on the loop thread and hand
        its reply to `done`: at once, or, for a command that changes the state file, once the
        runtime says that change is on disk (a later loop turn). Never raises."""
        command, args, reply = self._apply(message)
        if command is not None and command.persisted and reply["ok"]:
            result = reply["result"]

            def durable(persisted: bool | None) -> None:
                result["persisted"] = persisted
                self._announce(command, args, reply)
                done(reply)

            self.core.runtime.when_durable(durable)
        else:
            self._announce(command, args, reply)
            done(reply)

    @staticmethod
    def lookup(message: Any) -> tuple[Command, dict[str, Any]]:
        """(command, its arguments as sent) of a command message; CommandError if it is not
        an object, names no command, or its `args` is not an object."""
        if not isinstance(message, dict):
            raise CommandError("a command is a JSON object with a 'cmd' key")
        name = message.get("cmd")
        args = message.get("args", {})
        if args is None:
            args = {}
        command = COMMANDS.get(name) if isinstance(name, str) else None
        if command is None:
            raise CommandError(f"unknown command {name!r}")
        if not isinstance(args, dict):
            raise CommandError("'args' must be a JSON object")
        return command, args

    def _apply(self, message: Any) -> tuple[Command | None, dict[str, Any], dict[str, Any]]:
        try:
            command, args = self.lookup(message)
        except CommandError as exc:
            return None, {}, {"ok": False, "error": str(exc)}
        try:
            reply = {"ok": True, "result": command.handler(self.core, command.parse(args))}
        except CommandError as exc:
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("command %s failed", command.name)
            reply = {"ok": False, "error": f"internal error: {exc}"}
        return command, args, reply

    def _announce(
        self, command: Command | None, args: dict[str, Any], reply: dict[str, Any]
    ) -> None:
        """Commands that change the server become operator_action events, with the arguments
        as the operator sent them (the console recognises its own commands by them)."""
        bus = self.core.bus
        if command is not None and command.mutating and bus.active:
            summary = reply.get("error") or _summary(reply.get("result"))
            # Arguments are scalars; anything nested is no argument and stays off the bus.
            shown = {k: v for k, v in args.items() if not isinstance(v, dict | list)}
            bus.publish(OperatorAction(time.time(), command.name, shown, reply["ok"], summary))

    def submit(self, message: Any) -> concurrent.futures.Future[dict[str, Any]]:
        """From any thread: run the command on the loop thread; the future gets the reply (for
        a command that changes the state file, once the change is on disk or failed to be)."""
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                self.run(message, future.set_result)

        self.core.loop.call_soon_threadsafe(run)
        return future


def host_port(host: str, port: int) -> str:
    """An address as the snapshots show it ("host:port", "[v6]:port")."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _summary(result: Any) -> str:
    text = json.dumps(result, default=str) if result is not None else ""
    return text if len(text) <= 200 else text[:197] + "..."


# --- the control socket ---------------------------------------------------------------------
class _Reply:
    """A reply's place in a connection's output order; `line` is None until it is known."""

    __slots__ = ("line",)

    def __init__(self) -> None:
        self.line: bytes | None = None


class ControlClient:
    """One control-socket peer: JSON lines in, replies (in request order) and, once
    subscribed, events out. Commands run a chunk per loop turn; see the module docstring."""

    def __init__(self, server: ControlServer, conn: Connection) -> None:
        self.server = server
        self.conn = conn
        self.loop = server.core.loop
        self.buffer = bytearray()
        self.replies: deque[_Reply] = deque()  # in request order, the oldest first
        self.subscription: Subscription | None = None
        self.reported_drops = 0
        self.batch = EVENT_BATCH  # events per flush interval
        self._events_left = 0  # of the current batch, still to send
        self._eof = False  # the peer sent all it will send: close once everything is answered
        self._running = False  # in run_commands, which sends the ready replies as it ends
        self._commands_scheduled = False
        self._replies_scheduled = False
        self._events_scheduled = False

    # --- commands in ----------------------------------------------------------------------
    def on_data(self, data: bytes) -> None:
        self.buffer += data
        self.run_commands()

    def run_commands(self) -> None:
        """Execute up to COMMANDS_PER_TURN complete lines; with more waiting, stop reading and
        go on next turn. Reading resumes once every complete line has been executed."""
        self._commands_scheduled = False
        conn = self.conn
        buffer = self.buffer
        start = 0
        budget = COMMANDS_PER_TURN
        self._running = True
        try:
            while not conn.closed:
                if conn.out.full() or len(self.replies) >= MAX_PENDING_REPLIES:
                    conn.pause_reading()  # on_drain or the replies going out start us again
                    return
                end = buffer.find(b"\n", start)
                if end < 0:
                    if len(buffer) - start > MAX_LINE:
                        reply = _Reply()
                        self.replies.append(reply)
                        self._answer(reply, {"ok": False, "error": "line too long"})
                        self.send_replies()
                        conn.close()
                    break
                if budget == 0:
                    conn.pause_reading()
                    self._schedule_commands()
                    return
                line = bytes(buffer[start:end]).strip()
                start = end + 1
                if line:
                    budget -= 1
                    self.handle_line(line)
        finally:
            self._running = False
            del buffer[:start]
            self.send_replies()
        if conn.read_paused and not conn.closed:
            conn.resume_reading()  # reads what waited, which may run more commands
        self._close_if_done()

    def _schedule_commands(self) -> None:
        if not self._commands_scheduled:
            self._commands_scheduled = True
            self.loop.call_soon(self.run_commands)

    def handle_line(self, line: bytes) -> None:
        reply = _Reply()
        self.replies.append(reply)
        try:
            message = json.loads(line)
        except ValueError as exc:
            self._answer(reply, {"ok": False, "error": f"malformed JSON: {exc}"})
            return
        except RecursionError:
            self._answer(reply, {"ok": False, "error": "malformed JSON: nested too deeply"})
            return
        request_id = message.get("id") if isinstance(message, dict) else None
        if isinstance(request_id, dict | list):
            self._answer(reply, {"ok": False, "error": "'id' must be a string or a number"})
            return
        if isinstance(message, dict) and message.get("cmd") in ("subscribe", "unsubscribe"):
            answer = self.set_subscribed(message["cmd"] == "subscribe", message.get("args"))
            self._answer(reply, answer, request_id)
        else:
            self.server.api.run(message, lambda answer: self._answer(reply, answer, request_id))

    def _answer(self, reply: _Reply, message: dict[str, Any], request_id: Any = None) -> None:
        if self.conn.closed:
            return  # the peer left: nobody to tell
        if request_id is not None:
            message = {"id": request_id, **message}
        reply.line = json.dumps(message, default=str).encode() + b"\n"
        if reply is self.replies[0] and not (self._running or self._replies_scheduled):
            # A reply that waited for the disk: sent at the end of this loop turn, in one
            # write with every other reply ready by then.
            self._replies_scheduled = True
            self.loop.call_soon(self.send_replies)

    # --- replies and events out -----------------------------------------------------------
    def send_replies(self) -> None:
        """Send the replies that are ready, in request order, in one write."""
        self._replies_scheduled = False
        replies = self.replies
        lines: list[bytes] = []
        while replies:
            line = replies[0].line
            if line is None:
                break
            replies.popleft()
            lines.append(line)
        conn = self.conn
        if not lines or conn.closed:
            return
        conn.send(b"".join(lines))
        if conn.read_paused and not conn.out.full() and len(replies) < MAX_PENDING_REPLIES:
            self._schedule_commands()  # it stopped for the replies waiting: go on
        self._close_if_done()

    def set_subscribed(self, on: bool, args: object) -> dict[str, Any]:
        """`max_rate` (events/s) bounds what this peer costs the loop: past it, traffic events
        are not even built for it, the rest wait in a queue of one second's worth (oldest
        dropped), and every loss is counted."""
        try:
            max_rate = SUBSCRIBE_MAX_RATE.take(args if isinstance(args, dict) else {})
        except CommandError as exc:
            return {"ok": False, "error": str(exc)}
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None
        if on:
            queue = min(SUBSCRIBER_QUEUE, max_rate) if max_rate > 0 else SUBSCRIBER_QUEUE
            self.subscription = self.server.core.bus.subscribe(queue, max_rate)
            self.batch = (
                max(1, int(max_rate * EVENT_FLUSH_INTERVAL)) if max_rate > 0 else EVENT_BATCH
            )
        return {"ok": True, "result": {"subscribed": on, "max_rate": max_rate or None}}

    def flush_events(self) -> None:
        """Start this interval's batch of events (the server's flush timer)."""
        self._events_left = self.batch
        if not self._events_scheduled:
            self.send_events()

    def send_events(self) -> None:
        """Send one chunk of the batch; the rest goes on the next loop turns."""
        self._events_scheduled = False
        sub = self.subscription
        conn = self.conn
        if sub is None or conn.closed or conn.out.full():
            return  # a slow reader: events wait in its bounded queue, oldest dropped
        events = sub.take(min(EVENTS_PER_TURN, self._events_left))
        self._events_left -= len(events)
        lines = [json.dumps({"event": e.to_dict()}, default=str) for e in events]
        if sub.dropped != self.reported_drops:
            self.reported_drops = sub.dropped
            lines.append(json.dumps({"dropped": sub.dropped}))
        if lines:
            conn.send(("\n".join(lines) + "\n").encode())
        if self._events_left > 0 and sub.queue:
            self._events_scheduled = True
            self.loop.call_soon(self.send_events)

    # --- connection events ----------------------------------------------------------------
    def on_eof(self) -> None:
        # A peer that shut down its side after its commands (`... | socat - UNIX:...`) still
        # gets every reply: the connection closes once they are all out.
        self._eof = True
        self._close_if_done()

    def on_drain(self) -> None:
        if self.conn.read_paused:
            self._schedule_commands()
        self._close_if_done()

    def _close_if_done(self) -> None:
        conn = self.conn
        if (
            self._eof
            and not conn.closed
            and not self.replies
            and not conn.out.items
            and b"\n" not in self.buffer
        ):
            conn.close()

    def on_close(self) -> None:
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None
        self.replies.clear()
        self.server.clients.discard(self)


class ControlServer:
    """The Unix control socket of a running core."""

    def __init__(self, core: Core, api: CommandAPI, path: str) -> None:
        self.core = core
        self.api = api
        self.path = path
        self.clients: set[ControlClient] = set()
        _remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket file is born 0600: no window for others
        try:
            sock.bind(path)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        sock.listen(64)
        sock.setblocking(False)
        self.sock = sock
        core.loop.add(sock.fileno(), EPOLLIN | EPOLLET, self.on_accept)
        self.timer = core.loop.timer(self.flush)
        self.timer.reset(core.loop.now + EVENT_FLUSH_INTERVAL)

    def on_accept(self, _mask: int) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except BlockingIOError:
                return
            except OSError:
                return
            sock.setblocking(False)
            conn = Connection(self.core.loop, sock, ("unix", 0))
            client = ControlClient(self, conn)
            self.clients.add(client)
            conn.start(client)

    def flush(self) -> None:
        for client in list(self.clients):
            client.flush_events()
        self.timer.reset(self.core.loop.now + EVENT_FLUSH_INTERVAL)

    def close(self) -> None:
        self.timer.cancel()
        for client in list(self.clients):
            client.conn.close()
        self.core.loop.remove(self.sock.fileno())
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _remove_stale_socket(path: str) -> None:
    """A socket file left by a crashed server is removed; anything else there is an error."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise OSError(f"another server is listening on {path}")
