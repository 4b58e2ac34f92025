"""The master of a server with several workers (`workers` > 1), as nginx runs one.

The master serves no traffic. It binds the listening sockets, one per worker and listener,
with SO_REUSEPORT, so the kernel spreads new connections among the workers; it keeps its own
copy of each, so a socket outlives the worker using it: a worker restarted or replaced (a
reload) takes over the same socket and no connection waiting in its backlog is lost. It owns
the config, the runtime state (blocks, gzip switches, drains) and the state file, the control
socket and the event stream, through a `Core` of its own that never listens. Each worker
(`worker.py`) is a process of its own, reached over a channel (`channel.py`).

Commands (`FleetAPI`, the command table of `control.py`): a read (`snapshot`, `top`) goes to
every worker and the replies are merged (`merge.py`); `session` and `kill` go to the worker
whose id the session's id carries; a change (block, unblock, gzip, drain, enable) is applied
to the master's runtime first (which validates it and writes the state file), then sent to
every worker, and answered once every worker has applied it and the state file has it.

Lifecycle: a worker that dies is restarted in its slot, at once the first time, after
0.1, 0.2, 0.4... seconds (at most `RESTART_MAX`) if it keeps dying within `STABLE_AFTER`, and a
`worker_exited` event says what happened. A reload (SIGHUP, the `reload` command) validates
the new config and binds what it needs in the master, starts a new worker per slot, and once
all are serving tells the old ones to stop gracefully: they stop accepting and finish their
requests in flight; the reload is answered once every old worker has stopped accepting. A
shutdown (SIGTERM, SIGINT) tells every worker to do the same and stops once all have exited.

`Master` offers `Server`'s lifecycle surface (start, run, reload, shutdown, wait, stop, close),
so the CLI, the console and the tests pick one or the other by `config.workers`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import xps_server
from xps_server.config import Config, ConfigError, config_from, read_config
from xps_server.core.loop import EPOLLIN
from xps_server.events import (
    TRAFFIC_KINDS,
    ConfigReloaded,
    EventBus,
    WorkerEvent,
    WorkerExited,
)
from xps_server.network.listener import listening_socket
from xps_server.routes import HANDLERS
from xps_server.server.channel import Channel
from xps_server.server.commands import CommandError
from xps_server.server.control import COMMANDS, CommandAPI, ControlServer, host_port
from xps_server.server.core import Core
from xps_server.server.lifecycle import LoopHost
from xps_server.server.merge import merge_metrics, merge_snapshot, merge_top
from xps_server.server.metrics import fleet_prometheus
from xps_server.server.worker import SESSION_SPAN

log = logging.getLogger("xps.master")

FANOUT_TIMEOUT = 5.0  # seconds the master waits for a worker's reply before answering without
STABLE_AFTER = 10.0  # a worker that ran this long before dying is restarted at once
RESTART_FIRST = 0.1  # seconds before the second quick restart in a row; doubled each time
RESTART_MAX = 30.0
KILL_AFTER = 5.0  # seconds past the grace after which workers still draining are killed

Replies = list[tuple["WorkerProcess", dict[str, Any]]]


class WorkerProcess:
    """The master's view of one worker process."""

    def __init__(
        self, worker_id: int, slot: int, proc: subprocess.Popen[bytes], started: float
    ) -> None:
        self.id = worker_id
        self.slot = slot
        self.proc = proc
        self.pid = proc.pid
        self.started = started
        self.channel: Channel | None = None
        self.pidfd = -1
        self.ready = False  # it said it serves
        self.retiring = False  # told to stop (reload, shutdown): its exit is no crash
        self.pending: dict[int, Callable[[dict[str, Any]], None]] = {}  # replies awaited

    def send(self, message: dict[str, Any]) -> None:
        if self.channel is not None:
            self.channel.send(message)


class Master(LoopHost):
    """A master and its workers; see the module docstring."""

    THREAD_NAME = "xps-master"
    LOOP_NAME = "master"
    LOG = log
    STOP_MARGIN = KILL_AFTER + 2.0  # workers still draining are killed KILL_AFTER past the grace

    def __init__(self, config: Config, grace: float = 10.0, data: object = None) -> None:
        """`data`: the decoded config file `config` was made from (read again if None)."""
        super().__init__(grace)
        self._config = config
        self._data = data
        self.api: FleetAPI | None = None
        self.workers: dict[int, WorkerProcess] = {}  # every live worker process, by id
        self.slots: list[WorkerProcess | None] = []  # the current worker of each slot
        self.restarts: list[int] = []  # per slot, restarts after a crash
        self._quick_deaths: list[int] = []  # per slot, deaths in a row within STABLE_AFTER
        # Per listener (config key), a listening socket per slot; the workers get copies.
        self.sockets: dict[tuple[str, int], list[socket.socket]] = {}
        self._stopping = False
        self._next_worker = 0
        self._next_request = 0
        self._events_rate: int | None = None
        self._reloading: tuple[list[WorkerProcess], Callable[[bool, str], None], str] | None = None

    @property
    def config(self) -> Config:
        return self._config

    @property
    def listen_addresses(self) -> list[tuple[str, int]]:
        """(host, port) of each listener, as bound."""
        return [socks[0].getsockname()[:2] for socks in self.sockets.values()]

    # --- start and run --------------------------------------------------------------------
    def start(self, signals: bool = False) -> Core:
        """Bind the listeners (a socket per worker) and the control socket, and start the
        workers; returns the master's core, or raises OSError with nothing left bound."""
        if self.core is not None:
            raise RuntimeError("the server is started already")
        config = self._config
        if self._data is None:
            self._data = read_config(config.path)
        core = Core(_masters(config), HANDLERS)
        # The master's upstream states only check and remember drains: the health events
        # worth telling come from the workers, each about its own connections.
        silent = EventBus(core.loop)
        core.upstreams.bus = silent
        for state in core.upstreams.values():
            state.bus = silent
        api = FleetAPI(self, core)
        # The master alone talks to the fleet's Redis (its core links at creation): what other
        # instances change reaches the workers from here.
        core.runtime.on_shared = self._share_with_workers
        try:
            core.tls_endpoints(config)  # the workers load them: a bad one fails here first
            self.sockets = self._bind(config, {})
            path = config.control_socket
            self.control = ControlServer(core, api, path) if path else None
        except (OSError, ConfigError):
            self._close_sockets(self.sockets, {})
            core.close()
            raise
        self.core = core
        self.api = api
        count = config.workers
        self.slots = [None] * count
        self.restarts = [0] * count
        self._quick_deaths = [0] * count
        for slot in range(count):
            self._spawn(slot)
        core.bus.on_change = self._check_events
        if signals:
            self._handle_signals()
        return core

    # --- listening sockets ----------------------------------------------------------------
    def _bind(
        self, config: Config, keep: dict[tuple[str, int], list[socket.socket]]
    ) -> dict[tuple[str, int], list[socket.socket]]:
        """A socket per slot for each listener of `config`, reusing those of `keep`; on
        failure, closes what it opened and raises OSError."""
        bound: dict[tuple[str, int], list[socket.socket]] = {}
        try:
            for host, port in config.listeners():
                socks = list(keep.get((host, port), ()))[: config.workers]
                bound[(host, port)] = socks
                while len(socks) < config.workers:
                    # Port 0: the first socket picks the port, the others join it.
                    actual = socks[0].getsockname()[1] if socks else port
                    socks.append(listening_socket(host, actual, reuseport=True))
        except OSError:
            self._close_sockets(bound, keep)
            raise
        return bound

    @staticmethod
    def _close_sockets(
        sockets: dict[tuple[str, int], list[socket.socket]],
        keep: dict[tuple[str, int], list[socket.socket]],
    ) -> None:
        """Close the master's copy of each socket of `sockets` that `keep` does not hold."""
        kept = {id(sock) for socks in keep.values() for sock in socks}
        for socks in sockets.values():
            for sock in socks:
                if id(sock) not in kept:
                    sock.close()

    # --- workers --------------------------------------------------------------------------
    def _spawn(self, slot: int) -> WorkerProcess:
        """Start a worker for `slot` on the slot's sockets, with the current runtime state."""
        core = self._core()
        self._next_worker += 1
        worker_id = self._next_worker
        ours, theirs = socket.socketpair()
        listeners = [
            (host, port, socks[slot].fileno()) for (host, port), socks in self.sockets.items()
        ]
        env = dict(os.environ)
        # The worker imports this very package, wherever the master was started from.
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(xps_server.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        env["XPS_LOG_LEVEL"] = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "xps_server.server.worker", str(theirs.fileno())],
                pass_fds=[theirs.fileno(), *(fd for _, _, fd in listeners)],
                env=env,
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        worker = WorkerProcess(worker_id, slot, proc, core.loop.now)
        worker.channel = Channel(
            core.loop,
            ours,
            lambda message: self._on_message(worker, message),
            lambda: None,  # the process's exit (its pidfd) is what counts
        )
        worker.pidfd = os.pidfd_open(proc.pid)
        core.loop.add(worker.pidfd, EPOLLIN, lambda _mask: self._on_exit(worker))
        self.workers[worker_id] = worker
        self.slots[slot] = worker
        worker.send(
            {
                "op": "start",
                "worker": worker_id,
                "path": self._config.path,
                "config": self._data,
                "state": core.runtime.content(),
                "listeners": listeners,
            }
        )
        if self._events_rate is not None:
            worker.send({"op": "events", "rate": self._events_rate})
        log.info("worker %d (pid %d) started in slot %d", worker_id, proc.pid, slot)
        return worker

    def _on_message(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op is None:
            callback = worker.pending.pop(message.pop("id", None), None)
            if callback is not None:
                callback(message)
        elif op == "events":
            self._republish(message)
        elif op == "fleet":
            self._answer_fleet(worker, message.get("id"), bool(message.get("prometheus")))
        elif op == "ready":
            worker.ready = True
            self._check_reload()
        elif op == "auto_block":
            self._auto_block(worker, message.get("change"))

    def _on_exit(self, worker: WorkerProcess) -> None:
        core = self._core()
        core.loop.remove(worker.pidfd)
        os.close(worker.pidfd)
        code = worker.proc.wait()
        status = f"exit {code}" if code >= 0 else f"signal {_signal_name(-code)}"
        del self.workers[worker.id]
        if worker.channel is not None:
            worker.channel.close()
        pending = list(worker.pending.values())
        worker.pending.clear()
        for callback in pending:
            callback({"ok": False, "error": f"worker {worker.id} exited ({status})"})
        planned = worker.retiring or self._stopping
        restart_in = None
        slot = worker.slot
        if slot < len(self.slots) and self.slots[slot] is worker:
            self.slots[slot] = None
            if not planned:
                restart_in = self._restart_delay(worker)
                self.restarts[slot] += 1
                core.loop.call_later(restart_in, lambda: self._respawn(slot))
        reason = "stopped" if planned else "crashed"
        log.log(
            logging.INFO if planned else logging.ERROR,
            "worker %d (pid %d) %s: %s%s",
            worker.id,
            worker.pid,
            reason,
            status,
            "" if restart_in is None else f"; restarting in {restart_in:g} s",
        )
        if core.bus.active:
            core.bus.publish(
                WorkerExited(time.time(), worker.id, worker.pid, status, reason, restart_in)
            )
        if self._stopping and not self.workers:
            core.loop.stop()
        self._check_reload()

    def _restart_delay(self, worker: WorkerProcess) -> float:
        """At once after a worker that ran a while; backing off while it keeps dying young."""
        slot = worker.slot
        if self._core().loop.now - worker.started >= STABLE_AFTER:
            self._quick_deaths[slot] = 0
        self._quick_deaths[slot] += 1
        deaths = self._quick_deaths[slot]
        return 0.0 if deaths == 1 else min(RESTART_MAX, RESTART_FIRST * 2 ** (deaths - 2))

    def _respawn(self, slot: int) -> None:
        if self._stopping or slot >= len(self.slots) or self.slots[slot] is not None:
            return  # stopping, or a reload filled the slot meanwhile
        try:
            self._spawn(slot)
        except OSError as exc:  # out of processes or descriptors: try again, backing off
            self._quick_deaths[slot] += 1
            delay = min(RESTART_MAX, RESTART_FIRST * 2 ** self._quick_deaths[slot])
            log.error("cannot start a worker in slot %d: %s; again in %g s", slot, exc, delay)
            self._core().loop.call_later(delay, lambda: self._respawn(slot))

    # --- commands to every worker ---------------------------------------------------------
    def fanout(
        self,
        message: dict[str, Any],
        done: Callable[[Replies], None],
        targets: list[WorkerProcess] | None = None,
    ) -> None:
        """Send a command to `targets` (default: every live worker); `done` gets each one's
        reply once all have answered (one that exits or takes over FANOUT_TIMEOUT seconds
        counts as an error reply)."""
        loop = self._core().loop
        workers = list(self.workers.values()) if targets is None else targets
        replies: dict[int, dict[str, Any]] = {}
        finished = False

        def finish() -> None:
            nonlocal finished
            if finished:
                return
            finished = True
            timer.cancel()
            missing = {"ok": False, "error": "the worker did not answer"}
            done([(w, replies.get(w.id, missing)) for w in workers])

        def got(worker: WorkerProcess, reply: dict[str, Any]) -> None:
            replies[worker.id] = reply
            if len(replies) == len(workers):
                finish()

        timer = loop.call_later(FANOUT_TIMEOUT, finish)
        if not workers:
            finish()
            return
        for worker in workers:
            self._next_request += 1
            worker.pending[self._next_request] = partial(got, worker)
            worker.send({"id": self._next_request, **message})

    def _auto_block(self, worker: WorkerProcess, change: object) -> None:
        """A block a worker's `auto_block` rules made: the master's own from now on (state
        file, fleet), and every other worker's."""
        if not isinstance(change, dict):
            return
        expires_at = change.get("expires_at")
        seconds = None
        if isinstance(expires_at, int | float):
            seconds = expires_at - time.time()
            if seconds <= 0:
                return  # expired on its way
        reason = change.get("reason")
        try:
            self._core().runtime.block(
                change.get("cidr"),
                change.get("route"),
                seconds,
                reason if isinstance(reason, str) else None,
            )
        except CommandError as exc:
            log.warning("worker %d: an automatic block refused: %s", worker.id, exc)
            return
        others = [w for w in self.workers.values() if w is not worker]
        self._share_with_workers(change, others)

    def _share_with_workers(
        self, change: dict[str, Any], targets: list[WorkerProcess] | None = None
    ) -> None:
        """Hand a change made elsewhere (another instance of the fleet, or a worker), applied
        here already, to `targets` (default: every worker), as the command that makes it."""
        op = change["op"]
        args: dict[str, Any]
        if op in ("block", "unblock"):
            args = {"cidr": change["cidr"], "route": change["route"]}
            if op == "block" and change["expires_at"] is not None:
                args["seconds"] = change["expires_at"] - time.time()
                if args["seconds"] <= 0:
                    return  # expired on its way
        elif op == "gzip":
            enabled = change["enabled"]
            args = {"route": change["route"]}
            if enabled is None:
                args["reset"] = True
            else:
                args["enabled"] = enabled
        else:
            args = {"upstream": change["addr"]}

        def applied(replies: Replies) -> None:
            for worker, reply in replies:
                if not reply.get("ok"):
                    log.warning(
                        "worker %d: %s from the fleet: %s", worker.id, op, reply.get("error")
                    )

        self.fanout({"cmd": op, "args": args}, applied, targets)

    def ready_workers(self) -> list[WorkerProcess]:
        return [w for w in self.workers.values() if w.ready]

    def breakdown(self) -> list[dict[str, Any]]:
        """A row per live worker: what the master knows of it."""
        now = self._core().loop.now
        return [
            {
                "worker": w.id,
                "slot": w.slot,
                "pid": w.pid,
                "ready": w.ready,
                "retiring": w.retiring,
                "restarts": self.restarts[w.slot] if w.slot < len(self.restarts) else 0,
                "uptime": round(now - w.started, 3),
            }
            for w in self.workers.values()
        ]

    def _answer_fleet(self, asking: WorkerProcess, request_id: Any, as_prometheus: bool) -> None:
        """A worker's metrics route wants the fleet's figures."""
        core = self._core()

        def merged(replies: Replies) -> None:
            figures = [(w.id, r["result"]["metrics"]) for w, r in replies if r.get("ok")]
            data = merge_metrics(core.metrics_snapshot(), figures)
            body = fleet_prometheus(data) if as_prometheus else _json(data)
            asking.send({"op": "fleet", "id": request_id, "body": body})

        self.fanout({"cmd": "snapshot", "args": {"limit": 0}}, merged, self.ready_workers())

    # --- events ---------------------------------------------------------------------------
    def _check_events(self) -> None:
        """Workers build and forward events only while someone subscribes to the master's
        (the bus calls this when its subscriptions change)."""
        rate = self._core().bus.wanted_rate()
        if rate != self._events_rate:
            self._events_rate = rate
            for worker in self.workers.values():
                worker.send({"op": "events", "rate": rate})

    def _republish(self, message: dict[str, Any]) -> None:
        bus = self._core().bus
        dropped = message.get("dropped")
        if isinstance(dropped, int) and dropped > 0:
            bus.lost(dropped)
        if not bus.active:
            return
        now = time.time()
        for data in message.get("events", ()):
            if not isinstance(data, dict):
                continue
            event = WorkerEvent(data.get("ts", now), data)
            if data.get("kind") in TRAFFIC_KINDS:
                if bus.traffic:
                    bus.publish_traffic(event)
                else:
                    bus.skipped += 1
            else:
                bus.publish(event)

    # --- reload and stop ------------------------------------------------------------------
    def reload(self) -> concurrent.futures.Future[tuple[bool, str]]:
        """Re-read the config file; the future gets (ok, message) once the new workers serve
        (or at once if the config is refused). Any thread, or a signal handler."""
        core = self._core()
        future: concurrent.futures.Future[tuple[bool, str]] = concurrent.futures.Future()

        def done(ok: bool, message: str) -> None:
            if not future.done():
                future.set_result((ok, message))

        def apply() -> None:
            if future.set_running_or_notify_cancel():
                self.start_reload(done)

        core.loop.call_soon_threadsafe(apply)
        return future

    def start_reload(self, done: Callable[[bool, str], None]) -> None:
        """(Loop thread.) Validate and bind the new config, start its workers; `done` is
        called once they serve and the old ones were told to finish."""
        core = self._core()
        path = self._config.path
        if self._reloading is not None or self._stopping:
            done(False, "a reload or a shutdown is under way")
            return
        try:
            data = read_config(path)
            config = config_from(data, path)
            core.tls_endpoints(config)  # certificates the new workers could not load
            sockets = self._bind(config, self.sockets)
        except ConfigError as exc:
            self._reloaded(
                done, False, f"reload of {path} rejected, keeping the running config:\n{exc}"
            )
            return
        except OSError as exc:
            self._reloaded(done, False, f"reload of {path} rejected, cannot bind: {exc}")
            return
        # The old workers hold their own copies of the sockets they use.
        self._close_sockets(self.sockets, sockets)
        self.sockets = sockets
        self._config = config
        self._data = data
        core.reconfigure(_masters(config))
        old = list(self.workers.values())
        count = config.workers
        self.slots = [None] * count
        self.restarts = (self.restarts + [0] * count)[:count]
        self._quick_deaths = [0] * count
        for slot in range(count):
            self._spawn(slot)
        self._reloading = (old, done, f"configuration reloaded from {path}")
        self._check_reload()

    def _check_reload(self) -> None:
        """Once every slot's new worker serves, the old ones are told to finish."""
        if self._reloading is None:
            return
        if not all(w is not None and w.ready for w in self.slots):
            return
        old, done, message = self._reloading
        self._reloading = None
        # Answered once every old worker has stopped accepting: from then on, every new
        # connection meets the new config.
        waiting = {worker.id for worker in old if worker.id in self.workers}

        def stopped_accepting(worker_id: int) -> None:
            waiting.discard(worker_id)
            if not waiting:
                self._reloaded(done, True, message)

        if not waiting:
            self._reloaded(done, True, message)
        for worker in old:
            if worker.id in self.workers:
                self._retire(worker, self.grace, partial(stopped_accepting, worker.id))

    def _reloaded(self, done: Callable[[bool, str], None], ok: bool, message: str) -> None:
        log.log(logging.INFO if ok else logging.ERROR, "%s", message)
        bus = self._core().bus
        if bus.active:
            bus.publish(ConfigReloaded(time.time(), ok, message))
        done(ok, message)

    def _retire(
        self, worker: WorkerProcess, grace: float, closed: Callable[[], None] | None = None
    ) -> None:
        """Tell a worker to stop accepting and finish; `closed` is called once it says its
        listeners are closed (or it has exited)."""
        if worker.id not in self.workers:
            return
        worker.retiring = True
        self._next_request += 1
        if closed is not None:
            worker.pending[self._next_request] = lambda _reply: closed()
        worker.send({"op": "stop", "grace": grace, "id": self._next_request})
        # A worker that does not stop in time is killed; its exit is no crash.
        self._core().loop.call_later(grace + KILL_AFTER, lambda: self._kill(worker))

    def _kill(self, worker: WorkerProcess) -> None:
        if worker.id in self.workers:
            log.warning("worker %d (pid %d) did not stop in time: killed", worker.id, worker.pid)
            worker.proc.kill()

    def shutdown(self, grace: float | None = None) -> None:
        """Every worker stops accepting and finishes its requests in flight within `grace`
        seconds; the master's loop stops once all have exited. Returns at once."""
        core = self._core()
        seconds = self.grace if grace is None else grace

        def stop() -> None:
            if self._stopping:
                return
            self._stopping = True
            for worker in list(self.workers.values()):
                self._retire(worker, seconds)
            if not self.workers:
                core.loop.stop()

        core.loop.call_soon_threadsafe(stop)

    def _release(self) -> None:
        """Workers still alive are killed; the listening sockets are closed."""
        core = self.core
        for worker in list(self.workers.values()):
            worker.proc.kill()
            worker.proc.wait()
            if worker.channel is not None:
                worker.channel.close()
            if core is not None:
                core.loop.remove(worker.pidfd)
            os.close(worker.pidfd)
        self.workers.clear()
        self._close_sockets(self.sockets, {})
        self.sockets = {}


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def _masters(config: Config) -> Config:
    """The config of the master's own core: it writes no access log (the workers do)."""
    return dataclasses.replace(config, access_log=None)


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1) + "\n"


class FleetAPI(CommandAPI):
    """The command table over a master and its workers (see the module docstring)."""

    def __init__(self, master: Master, core: Core) -> None:
        super().__init__(core)
        self.master = master

    def run(self, message: Any, done: Callable[[dict[str, Any]], None]) -> None:
        try:
            command, args = self.lookup(message)
        except CommandError as exc:
            done({"ok": False, "error": str(exc)})
            return
        try:
            parsed = command.parse(args)
        except CommandError as exc:
            reply = {"ok": False, "error": str(exc)}
            self._announce(command, args, reply)
            done(reply)
            return
        name = command.name
        master = self.master
        if name == "ping":
            done({"ok": True, "result": "pong"})
        elif name == "snapshot":
            self._snapshot(parsed, done)
        elif name == "top":
            master.fanout(
                {"cmd": "top", "args": parsed},
                lambda replies: done(
                    {
                        "ok": True,
                        "result": merge_top(_results(replies), parsed["limit"], parsed["sort"]),
                    }
                ),
                master.ready_workers(),
            )
        elif name == "fleet":
            done({"ok": True, "result": command.handler(self.core, parsed)})
        elif name in ("session", "kill"):
            self._one_session(name, args, parsed, done)
        elif name == "reload":

            def reloaded(ok: bool, text: str) -> None:
                reply = (
                    {"ok": True, "result": {"reloaded": master.config.path}}
                    if ok
                    else {"ok": False, "error": text}
                )
                self._announce(command, args, reply)
                done(reply)

            master.start_reload(reloaded)
        else:
            self._change(message, done)

    def _snapshot(self, parsed: dict[str, Any], done: Callable[[dict[str, Any]], None]) -> None:
        master = self.master
        own = COMMANDS["snapshot"].handler(self.core, {**parsed, "limit": 0})
        own["listeners"] = [host_port(host, port) for host, port in master.listen_addresses]

        def merged(replies: Replies) -> None:
            result = merge_snapshot(
                own, _results(replies), parsed["limit"], parsed["sort"], master.breakdown()
            )
            done({"ok": True, "result": result})

        master.fanout({"cmd": "snapshot", "args": parsed}, merged, master.ready_workers())

    def _one_session(
        self,
        name: str,
        args: dict[str, Any],
        parsed: dict[str, Any],
        done: Callable[[dict[str, Any]], None],
    ) -> None:
        """`session` and `kill` go to the worker whose sessions the id is numbered among."""
        session_id = parsed["id" if name == "session" else "session"]
        worker = self.master.workers.get(session_id // SESSION_SPAN)
        command = COMMANDS[name]
        if worker is None:
            reply = {"ok": False, "error": f"no session {session_id}"}
            self._announce(command, args, reply)
            done(reply)
            return

        def answered(replies: Replies) -> None:
            reply = replies[0][1]
            if reply.get("ok") and isinstance(reply.get("result"), dict):
                target = reply["result"].get("killed", reply["result"])
                target["worker"] = worker.id
            self._announce(command, args, reply)
            done(reply)

        self.master.fanout({"cmd": name, "args": parsed}, answered, [worker])

    def _change(self, message: dict[str, Any], done: Callable[[dict[str, Any]], None]) -> None:
        """A change to the runtime state: the master's first (it validates, and the state
        file follows), then every worker's; answered once all have it and it is on disk."""
        command, args, reply = self._apply(message)
        if not reply["ok"]:
            self._announce(command, args, reply)
            done(reply)
            return
        assert command is not None
        result = reply["result"]
        waiting = {"workers": True, "disk": command.persisted}

        def finish() -> None:
            if not any(waiting.values()):
                self._announce(command, args, reply)
                done(reply)

        def applied(replies: Replies) -> None:
            failed = [f"worker {w.id}: {r.get('error')}" for w, r in replies if not r.get("ok")]
            if failed:
                reply["ok"] = False
                reply["error"] = "applied by the master but not by " + "; ".join(failed)
                reply.pop("result", None)
            elif isinstance(result, dict) and "closed" in result:
                result["closed"] = sum(r["result"].get("closed", 0) for _, r in replies)
            if isinstance(result, dict):
                result["workers"] = len(replies)
            waiting["workers"] = False
            finish()

        def durable(persisted: bool | None) -> None:
            if isinstance(result, dict):
                result["persisted"] = persisted
            waiting["disk"] = False
            finish()

        self.master.fanout({"cmd": command.name, "args": args}, applied)
        if command.persisted:
            self.core.runtime.when_durable(durable)


def _results(replies: Replies) -> list[tuple[int, dict[str, Any]]]:
    return [(w.id, r["result"]) for w, r in replies if r.get("ok")]
