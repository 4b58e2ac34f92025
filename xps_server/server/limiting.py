"""Rate and connection limits per route, and automatic blocks: the server's side of
:mod:`xps_server.policy.limits`.

`Limiting` (one per core) gives each route with `limit_req` or `limit_conn` a `RouteLimits`
as its state's `limits` (None for a route without limits: the request path checks one
attribute). A `RouteLimits` is kept by route key across reloads, so a reload forgets no
client's bucket or connection count; its limiters take the new figures.

`limit_req` admits a request or answers 429 with `Retry-After` (whole seconds, rounded up).
`limit_conn` counts a connection once it has sent a request on the route (the session
remembers the counters it is in) and releases it when the connection closes; a request on a
connection past the cap is answered 429. Each rejection is counted per route and limit (the
metrics), on the session for the top talkers (`limited`), and sent as a `rate_limited` event,
at most one per address per second with the count since the previous one.

Automatic blocks: each `auto_block` rule counts its events (429s, or 4xx / 5xx responses,
on its route or any) per client address in a `WindowCounter`; a client that reaches the
rule's count within its window gets a global runtime block for the rule's duration through
`Runtime.block`, exactly as an operator's block (its connections closed, kept in the state
file), with the rule as its reason, and an `auto_blocked` event. The block is applied from
the loop's next turn, never in the middle of the request that crossed the rule. An address in
`allowlist` is never blocked automatically, and an existing block that lasts longer (an
operator's, say) is never shortened.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from xps_server.events import AutoBlocked, RateLimited
from xps_server.policy.acl import NetSet
from xps_server.policy.limits import (
    ConnCounter,
    ReportThrottle,
    RequestLimiter,
    WindowCounter,
    client_key,
    retry_after,
)

if TYPE_CHECKING:
    from xps_server.config import Config
    from xps_server.config.model import AutoBlockRule, Route
    from xps_server.server.core import Core
    from xps_server.server.routing import Routing
    from xps_server.server.session import Session

log = logging.getLogger("xps.limits")

REJECTION_EVENT_INTERVAL = 1.0  # at most one rate_limited event per address per second
REJECTION_MEMORY = 10_000  # addresses whose last event is remembered before the memory starts over
CONN_RETRY_AFTER = b"Retry-After: 1\r\n"  # a connection slot frees when any connection closes


class RouteLimits:
    """One route's limiters and rejection counts (see the module docstring)."""

    __slots__ = ("conn", "conn_rejected", "key", "owner", "req", "req_key", "req_rejected")

    def __init__(self, owner: Limiting, key: str) -> None:
        self.owner = owner
        self.key = key
        self.req: RequestLimiter | None = None
        self.req_key = "ip"
        self.conn: ConnCounter | None = None
        self.req_rejected = 0
        self.conn_rejected = 0

    def configure(self, route: Route) -> None:
        """Take `route`'s limits; buckets and counts stay unless their keying changed."""
        limit_req = route.limit_req
        if limit_req is None:
            self.req = None
        elif self.req is None or self.req_key != limit_req.key:
            self.req = RequestLimiter(limit_req.rate, limit_req.burst)
        else:
            self.req.rate = limit_req.rate
            self.req.burst = limit_req.burst
        if limit_req is not None:
            self.req_key = limit_req.key
        limit_conn = route.limit_conn
        if limit_conn is None:
            self.conn = None  # sessions counted in the old counter release it, unseen
        elif self.conn is None:
            self.conn = ConnCounter(limit_conn.per_ip)
        else:
            self.conn.per_key = limit_conn.per_ip

    def admit(self, session: Session) -> bool:
        """Whether the session's current request may go on; if not, it has been answered."""
        ip = session.conn.peer_ip
        conn = self.conn
        if conn is not None:
            counted = session.limits_counted
            if counted is None or conn not in counted:
                if not conn.acquire(ip):
                    self.conn_rejected += 1
                    self.owner.reject(session, self, "conn", CONN_RETRY_AFTER)
                    return False
                if counted is None:
                    session.limits_counted = [conn]
                else:
                    counted.append(conn)
        req = self.req
        if req is not None:
            key = ip if self.req_key == "ip" else client_key(ip, self.req_key)
            wait = req.admit(key, session.started)
            if wait:
                self.req_rejected += 1
                extra = f"Retry-After: {retry_after(wait)}\r\n".encode()
                self.owner.reject(session, self, "req", extra)
                return False
        return True


class _Rule:
    """An auto_block rule with its per-client window counts."""

    __slots__ = ("counter", "rule")

    def __init__(self, rule: AutoBlockRule) -> None:
        self.rule = rule
        self.counter = WindowCounter(rule.count, rule.window)


class Limiting:
    """The limits and automatic blocks of one core (see the module docstring)."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.routes: dict[str, RouteLimits] = {}  # by route key, routes with limits only
        self.auto_blocks = 0  # blocks applied by auto_block rules
        self._rejection_events = ReportThrottle(REJECTION_EVENT_INTERVAL, REJECTION_MEMORY)
        self._limited_rules: list[_Rule] = []  # when: rate_limited
        self._status_rules: list[_Rule] = []  # when: status_4xx, status_5xx
        self.watch_status = False  # any status rule: the core reports 4xx and 5xx here
        self._allowlist: NetSet | None = None

    def configure(self, config: Config, routing: Routing) -> None:
        """Give every route with limits its `RouteLimits`, and take the auto_block rules. A
        rule left unchanged by a reload keeps its counts."""
        routes: dict[str, RouteLimits] = {}
        for key, state in routing.states.items():
            route = state.route
            if route.limit_req is None and route.limit_conn is None:
                state.limits = None
                continue
            limits = self.routes.get(key) or RouteLimits(self, key)
            limits.configure(route)
            state.limits = routes[key] = limits
        self.routes = routes
        by_value = {_rule_id(r.rule): r for r in self._limited_rules + self._status_rules}
        rules = [by_value.get(_rule_id(rule)) or _Rule(rule) for rule in config.auto_block]
        self._limited_rules = [r for r in rules if r.rule.when == "rate_limited"]
        self._status_rules = [r for r in rules if r.rule.when != "rate_limited"]
        self.watch_status = bool(self._status_rules)
        self._allowlist = NetSet(config.allowlist) if config.allowlist else None

    # --- rejections ---------------------------------------------------------------------------
    def reject(self, session: Session, limits: RouteLimits, limit: str, extra: bytes) -> None:
        """Answer the session's request 429 (`extra`: its Retry-After) and count it."""
        ip = session.conn.peer_ip
        session.top_limited += 1
        core = self.core
        now = core.loop.now
        if core.bus.active:
            self._event(ip, limits.key, limit, now)
        for rule in self._limited_rules:
            scope = rule.rule.route
            if (scope is None or scope == limits.key) and rule.counter.hit(ip, now):
                self._crossed(rule, ip)
        session.error(429, extra)

    def _event(self, ip: str, route: str, limit: str, now: float) -> None:
        count = self._rejection_events.hit(ip, now)
        if count:
            self.core.bus.publish(RateLimited(time.time(), ip, route, limit, count))

    def status(self, session: Session, status: int) -> None:
        """A 4xx or 5xx response went out to the session's client (only while `watch_status`)."""
        when = "status_4xx" if status < 500 else "status_5xx"
        state = session.route_state
        key = state.key if state is not None else None
        ip = session.conn.peer_ip
        now = self.core.loop.now
        for rule in self._status_rules:
            found = rule.rule
            if (
                found.when == when
                and (found.route is None or found.route == key)
                and rule.counter.hit(ip, now)
            ):
                self._crossed(rule, ip)

    def close_session(self, session: Session) -> None:
        """The session's connection closed: release the connection counts it holds."""
        counted = session.limits_counted
        if counted is not None:
            ip = session.conn.peer_ip
            for conn in counted:
                conn.release(ip)
            session.limits_counted = None

    # --- automatic blocks ---------------------------------------------------------------------
    def _crossed(self, rule: _Rule, ip: str) -> None:
        allowlist = self._allowlist
        if allowlist is not None and allowlist.contains_ip(ip):
            return
        found = rule.rule
        # Not now: the block closes connections, this one among them, mid-request.
        self.core.loop.call_soon(lambda: self._block(ip, found))

    def _block(self, ip: str, rule: AutoBlockRule) -> None:
        core = self.core
        runtime = core.runtime
        if core.draining or runtime.outlasts(ip, rule.block):
            return
        reason = rule.reason
        result = runtime.block(ip, None, rule.block, reason)
        self.auto_blocks += 1
        log.warning("auto-blocked %s for %g s (%s)", ip, rule.block, reason)
        if core.bus.active:
            core.bus.publish(
                AutoBlocked(time.time(), ip, result["cidr"], rule.block, reason, result["closed"])
            )

    # --- figures ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The metrics' figures: rejections in all, per route and limit, and auto blocks."""
        routes = {
            key: {"req": limits.req_rejected, "conn": limits.conn_rejected}
            for key, limits in self.routes.items()
        }
        return {
            "rate_limited": sum(row["req"] + row["conn"] for row in routes.values()),
            "rate_limited_routes": routes,
            "auto_blocks": self.auto_blocks,
        }


def _rule_id(rule: AutoBlockRule) -> tuple[object, ...]:
    return (rule.when, rule.count, rule.window, rule.block, rule.route)
