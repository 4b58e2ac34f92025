"""A worker process: today's loop and core, serving on the listening sockets its master bound.

The master starts it as ``python -m xps_server.server.worker FD``: FD is its end of the
channel (a socketpair, `channel.Channel`), and the listening sockets are inherited too. It is
a new interpreter, not a fork: the master may run threads (the embedded console's UI, the
state and access log writers), and a fork would copy their locks in whatever state they were,
with nobody left to release them. A worker imports and builds everything itself.

The first message on the channel (`start`) gives the worker its id, the config (as the master
read and validated it), the runtime state (blocks, gzip switches, drains: the master owns them
and alone writes the state file) and the descriptor of each listener. Then, from the master:

- ``{"id": n, "cmd": ..., "args": ...}``: a command of the command table, answered
  ``{"id": n, "ok": ..., ...}`` once applied;
- ``{"op": "events", "rate": r}``: forward bus events (at most `r` a second, 0: all; None:
  none, and then the worker builds none);
- ``{"op": "fleet", "id": n, "body": ...}``: the fleet's figures a metrics route asked for;
- ``{"op": "stop", "grace": s, "id": n}``: stop accepting (answered ``{"id": n, "ok": true}``
  once the listeners are closed), finish the requests in flight (at most `s` seconds), exit 0.

To the master: ``{"op": "ready", "pid": p}`` once serving, command replies, ``{"op":
"events", "events": [...], "dropped": n}``, ``{"op": "fleet", "id": n, "prometheus": b}`` and
``{"op": "auto_block", "change": {...}}``: a block this worker's `auto_block` rules made (its
rate-limit buckets are its own), which the master applies as its own change: into the state
file, the fleet's Redis and every other worker.
A worker whose channel closes (the master is gone) shuts down as if told to stop.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from xps_server.config import ConfigError, config_from
from xps_server.core.loop import tune_gc
from xps_server.events import OperatorAction, Subscription
from xps_server.routes import HANDLERS
from xps_server.server.channel import Channel, read_first
from xps_server.server.control import CommandAPI
from xps_server.server.core import Core

log = logging.getLogger("xps.worker")

SESSION_SPAN = 1_000_000_000  # worker N numbers its sessions from N * SESSION_SPAN + 1
FORWARD_INTERVAL = 0.05  # seconds between two batches of events to the master
FORWARD_QUEUE = 10_000  # events waiting for the next batch; past it the oldest are dropped
FORWARD_BACKLOG = 1 << 20  # bytes unread by the master past which events wait (and drop)
ORPHAN_GRACE = 10.0  # seconds in-flight requests get when the master is gone


class Worker:
    """One worker process's core, command API and channel to the master."""

    def __init__(self, channel_sock: socket.socket) -> None:
        start, rest = read_first(channel_sock)
        self.id: int = start["worker"]
        config = config_from(start["config"], start["path"])
        # The state file and the fleet's Redis are the master's: a worker keeps its runtime
        # state in memory only.
        config = dataclasses.replace(config, state_file=None, fleet=None)
        self.core = core = Core(
            config, HANDLERS, state=start["state"], first_session=self.id * SESSION_SPAN + 1
        )
        sockets = {(host, port): socket.socket(fileno=fd) for host, port, fd in start["listeners"]}
        core.start(sockets)
        core.fleet = self.fleet_metrics
        self.api = CommandAPI(core)
        self.subscription: Subscription | None = None
        self._forward_timer = core.loop.timer(self._forward)
        self._reported_drops = 0
        self._fleet_waiting: dict[int, Callable[[bytes | None], None]] = {}
        self._fleet_ids = 0
        self.channel = Channel(
            core.loop, channel_sock, self.on_message, self.on_channel_closed, rest
        )
        core.runtime.fleet = _ToMaster(self.channel)
        self.channel.send({"op": "ready", "pid": os.getpid()})

    def run(self) -> None:
        try:
            self.core.loop.run()
        finally:
            self.channel.close()
            self.core.close()

    # --- from the master ------------------------------------------------------------------
    def on_message(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if "cmd" in message:
            request_id = message.get("id")
            self.api.run(message, lambda reply: self.channel.send({"id": request_id, **reply}))
        elif op == "events":
            self.set_forwarding(message.get("rate"))
        elif op == "fleet":
            request_id = message.get("id")
            answer = (
                self._fleet_waiting.pop(request_id, None) if isinstance(request_id, int) else None
            )
            if answer is not None:
                body = message.get("body")
                answer(body.encode() if isinstance(body, str) else None)
        elif op == "stop":
            # Listeners closed at once: the reply tells the master no new client comes here.
            self.core.shutdown(float(message.get("grace", ORPHAN_GRACE)))
            if "id" in message:
                self.channel.send({"id": message["id"], "ok": True})

    def on_channel_closed(self) -> None:
        for answer in self._fleet_waiting.values():
            answer(None)
        self._fleet_waiting.clear()
        if self.core.loop.running:
            log.warning("worker %d: the master is gone; shutting down", self.id)
            self.core.shutdown(ORPHAN_GRACE)

    # --- events to the master -------------------------------------------------------------
    def set_forwarding(self, rate: int | None) -> None:
        """Subscribe to the bus only while the master has subscribers: with none, the worker
        builds no event at all."""
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None
        if rate is None:
            self._forward_timer.cancel()
            return
        self.subscription = self.core.bus.subscribe(FORWARD_QUEUE, int(rate))
        self._reported_drops = 0  # the new subscription counts its drops from 0
        self._forward_timer.reset(self.core.loop.now + FORWARD_INTERVAL)

    def _forward(self) -> None:
        sub = self.subscription
        if sub is None:
            return
        self._forward_timer.reset(self.core.loop.now + FORWARD_INTERVAL)
        if self.channel.backlog > FORWARD_BACKLOG:
            return  # the master is behind: events wait in the bounded queue, oldest dropped
        events = []
        for event in sub.take():
            if isinstance(event, OperatorAction):
                continue  # the master announces the command it fanned out, once
            data = event.to_dict()
            data["worker"] = self.id
            events.append(data)
        dropped = sub.dropped - self._reported_drops
        self._reported_drops = sub.dropped
        if events or dropped:
            self.channel.send({"op": "events", "events": events, "dropped": dropped})

    # --- the metrics route's fleet view ---------------------------------------------------
    def fleet_metrics(self, prometheus: bool, answer: Callable[[bytes | None], None]) -> None:
        """Ask the master for the fleet's figures; `answer` gets the body, or None if the
        master cannot answer (the route then shows this worker's own); never at once."""
        if self.channel.closed:
            self.core.loop.call_soon(lambda: answer(None))  # never within the route's call
            return
        self._fleet_ids += 1
        self._fleet_waiting[self._fleet_ids] = answer
        self.channel.send({"op": "fleet", "id": self._fleet_ids, "prometheus": prometheus})


class _ToMaster:
    """Where a worker's runtime sends its own changes: only automatic blocks (those with a
    reason) are its own; every other change came from the master as a command."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def publish(self, change: dict[str, Any]) -> None:
        if change["op"] == "block" and change.get("reason") is not None:
            self.channel.send({"op": "auto_block", "change": change})


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(
        level=os.environ.get("XPS_LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[{os.getpid()}]: %(message)s",
        stream=sys.stderr,
    )
    # Ctrl-C in a terminal reaches the whole process group: the master decides what happens.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    channel_sock = socket.socket(fileno=int(args[0]))
    try:
        worker = Worker(channel_sock)
    except (ConfigError, EOFError, OSError, ValueError, KeyError) as exc:
        log.error("worker cannot start: %s", exc)
        return 1
    # SIGTERM to the whole process group (a service manager stopping it): drain, as told to.
    signal.signal(
        signal.SIGTERM,
        lambda _s, _f: worker.core.loop.call_soon_threadsafe(
            lambda: worker.core.shutdown(ORPHAN_GRACE)
        ),
    )
    tune_gc()
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
