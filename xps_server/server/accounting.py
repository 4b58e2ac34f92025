"""What the operator reads about traffic: per-route and per-upstream figures, the top talkers,
and the refusals of blocked clients.

`Accounting` owns the `TrafficStats` of every route (kept by route key across reloads, handed
to each route's state as its `stats`) and of every upstream (`UpstreamState.stats`), rotates their
generations on a loop timer, owns the `TopTalkers` tracker, and turns refused connections into
rate-limited `connection_refused` events.

A finished request costs the tracker almost nothing: the session counts its requests anyway,
the core adds its errors and refusals there (`top_4xx`, `top_5xx`, `top_refused`) and puts the
session on `pending` the first time; every REPORT_SECONDS the pending sessions are reported to
the tracker, one `add` per session with its counts, the bytes it sent since, and its latest
path (and at once before a `top` query, so an answer is never behind). A keep-alive client
making thousands of requests a second is one tracker update a second. A session that closed
meanwhile is still reported: it stays on `pending` until then.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from xps_server.events import ConnectionRefused
from xps_server.policy.limits import ReportThrottle
from xps_server.toptalkers import TopTalkers
from xps_server.traffic import GENERATION_SECONDS, TrafficStats

if TYPE_CHECKING:
    from xps_server.config import Config
    from xps_server.core.loop import Loop
    from xps_server.events import EventBus
    from xps_server.network.upstream import UpstreamRegistry
    from xps_server.server.routing import Routing
    from xps_server.server.session import Session

REPORT_SECONDS = 1.0  # how often sessions' counts reach the top-talker tracker
REFUSAL_EVENT_INTERVAL = 1.0  # at most one connection_refused event per address per second
REFUSAL_MEMORY = 10_000  # addresses whose last event is remembered before the memory starts over


class Accounting:
    """Traffic figures of one core (see the module docstring)."""

    def __init__(self, loop: Loop, bus: EventBus) -> None:
        self.loop = loop
        self.bus = bus
        self.routes: dict[str, TrafficStats] = {}  # by route key
        self.top: TopTalkers | None = None
        self.pending: list[Session] = []  # sessions with counts the tracker has not had yet
        self._report_timer = loop.timer(self.report)
        self._upstreams: UpstreamRegistry | None = None
        self._refusal_events = ReportThrottle(REFUSAL_EVENT_INTERVAL, REFUSAL_MEMORY)
        self._timer = loop.timer(self._rotate)
        self._timer.reset(loop.now + GENERATION_SECONDS)

    def configure(self, config: Config, routing: Routing, upstreams: UpstreamRegistry) -> None:
        """Match the figures to `config`, giving each route's state its own. Figures of routes
        (by key) and upstreams that stay are kept; a new top-talker capacity starts afresh."""
        now = self.loop.now
        routes: dict[str, TrafficStats] = {}
        for key, state in routing.states.items():
            if config.histograms:
                state.stats = routes[key] = self.routes.get(key) or TrafficStats(now)
        self.routes = routes
        for upstream in upstreams.values():
            if not config.histograms:
                upstream.stats = None
            elif upstream.stats is None:
                upstream.stats = TrafficStats(now)
        self._upstreams = upstreams
        capacity = config.top_clients
        if not capacity:
            self.top = None
            self._report_timer.cancel()
        elif self.top is None or self.top.capacity != capacity:
            self.top = TopTalkers(capacity, started=now)
            self._report_timer.reset(now + REPORT_SECONDS)

    def _rotate(self) -> None:
        now = self.loop.now
        for stats in self.routes.values():
            stats.rotate(now)
        if self._upstreams is not None:
            for state in self._upstreams.values():
                if state.stats is not None:
                    state.stats.rotate(now)
        self._timer.reset(now + GENERATION_SECONDS)

    def report(self) -> None:
        """Tell the tracker what the pending sessions did since they were last reported (on
        the timer, and before the tracker is asked)."""
        now = self.loop.now
        top = self.top
        pending = self.pending
        self.pending = []
        for session in pending:
            session.top_pending = False
            requests = session.requests - session.top_requests
            refused = session.top_refused
            sent = session.conn.bytes_out
            if top is not None:
                last = session.last_request
                top.add(
                    session.conn.peer_ip,
                    now,
                    requests - refused,  # a refused request counts as a refusal only
                    sent - session.top_sent,
                    session.top_4xx - refused,  # its 403 likewise
                    session.top_5xx,
                    last.path if last is not None else "",
                    refused,
                    session.top_limited,
                )
            session.top_refused = session.top_4xx = session.top_5xx = session.top_limited = 0
            session.top_requests = session.requests
            session.top_sent = sent
        if top is not None:
            self._report_timer.reset(now + REPORT_SECONDS)

    # --- refusals -------------------------------------------------------------------------------
    def refused(self, ip: str, cidr: str | None) -> None:
        """A connection from `ip` was refused by the global block `cidr`."""
        now = self.loop.now
        top = self.top
        if top is not None:
            top.refused(ip, now)
        if not self.bus.active:
            return
        count = self._refusal_events.hit(ip, now)
        if count:
            self.bus.publish(ConnectionRefused(time.time(), ip, cidr or "", count))

    def close(self) -> None:
        self._timer.close()
        self._report_timer.close()
