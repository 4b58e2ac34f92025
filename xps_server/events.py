"""Typed events and the bounded bus that carries them off the loop thread.

The loop publishes; consumers (the embedded console on its own thread, control-socket
subscribers on the loop itself) each own a bounded subscription. Publishing never blocks and
never waits for a consumer: a full subscription drops its oldest event and counts the drop.
With no subscriber, `bus.active` is False and the loop builds no event at all.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

if TYPE_CHECKING:
    from xps_server.core.loop import Loop

DEFAULT_QUEUE = 10_000


@dataclass(slots=True)
class Event:
    """Base of every event: `kind` names it on the wire, `ts` is wall-clock seconds."""

    ts: float

    kind = "event"

    def to_dict(self) -> dict[str, Any]:
        names = _FIELD_NAMES.get(type(self))
        if names is None:
            names = _FIELD_NAMES[type(self)] = tuple(f.name for f in fields(self))
        data = {name: getattr(self, name) for name in names}
        data["kind"] = self.kind
        return data


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


@dataclass(slots=True)
class ConnectionOpened(Event):
    session: int
    client: str
    port: int
    listener: str
    kind = "connection_opened"


@dataclass(slots=True)
class ConnectionClosed(Event):
    session: int
    client: str
    bytes_in: int
    bytes_out: int
    requests: int
    duration_ms: float
    kind = "connection_closed"


@dataclass(slots=True)
class RequestFinished(Event):
    session: int
    client: str
    method: str
    path: str
    route: str
    status: int
    bytes: int
    duration_ms: float
    kind = "request_finished"


@dataclass(slots=True)
class Timeout(Event):
    session: int
    client: str
    phase: str  # header, body, keep_alive, send, upstream_connect, upstream_read, tunnel
    kind = "timeout"


@dataclass(slots=True)
class TlsError(Event):
    """A TLS handshake that failed or timed out, or a broken record on an established
    connection; the connection is closed."""

    session: int
    client: str
    reason: str
    kind = "tls_error"


@dataclass(slots=True)
class AclDenied(Event):
    client: str
    route: str
    path: str
    reason: str  # acl, blocked
    kind = "acl_denied"


@dataclass(slots=True)
class ConnectionRefused(Event):
    """Connections from `ip` refused at accept by the global block `cidr` (rate-limited: one
    event per address per second; `count` refusals since the address's previous event)."""

    ip: str
    cidr: str
    count: int
    kind = "connection_refused"


@dataclass(slots=True)
class RateLimited(Event):
    """Requests from `client` answered 429 by a route's `limit` ("req" or "conn") (rate-limited:
    one event per address per second; `count` rejections since the address's previous event)."""

    client: str
    route: str
    limit: str
    count: int
    kind = "rate_limited"


@dataclass(slots=True)
class AutoBlocked(Event):
    """`client` crossed an `auto_block` rule and is blocked everywhere for `seconds`."""

    client: str
    cidr: str
    seconds: float
    reason: str  # the rule, e.g. "auto: rate_limited 100/10s"
    closed: int  # its connections closed
    kind = "auto_blocked"


@dataclass(slots=True)
class UpstreamConnected(Event):
    upstream: str
    kind = "upstream_connected"


@dataclass(slots=True)
class UpstreamFailed(Event):
    upstream: str
    error: str
    kind = "upstream_failed"


@dataclass(slots=True)
class UpstreamHealthChanged(Event):
    upstream: str
    state: str  # up, down, draining
    kind = "upstream_health"


@dataclass(slots=True)
class OperatorAction(Event):
    command: str
    args: dict[str, Any]  # as the operator sent them (JSON scalars)
    ok: bool
    result: str
    kind = "operator_action"


@dataclass(slots=True)
class ConfigReloaded(Event):
    ok: bool
    message: str
    kind = "config_reloaded"


@dataclass(slots=True)
class FleetConnected(Event):
    """The fleet's Redis answers again (or for the first time): the block list is shared."""

    redis: str  # the URL, without a password
    kind = "fleet_connected"


@dataclass(slots=True)
class FleetDisconnected(Event):
    """The fleet's Redis is out of reach: this instance enforces what it knows and queues its
    own changes until it is back."""

    redis: str
    error: str
    kind = "fleet_disconnected"


@dataclass(slots=True)
class FleetChange(Event):
    """A change another instance of the fleet made, applied here."""

    by: str  # that instance's name
    change: dict[str, Any]  # op (block, unblock, gzip, drain, enable) and its arguments
    kind = "fleet_change"


@dataclass(slots=True)
class WorkerExited(Event):
    """A worker process ended; `reason` says whether it was asked to (`stopped`) or not
    (`crashed`, then it is restarted after `restart_in` seconds)."""

    worker: int
    pid: int
    status: str  # "exit 0", "exit 1", "signal SIGKILL"
    reason: str
    restart_in: float | None
    kind = "worker_exited"


@dataclass(slots=True)
class WorkerEvent(Event):
    """An event a worker process published, as it came over its channel (a dict with its
    `kind`, plus `worker`); the master republishes it on its own bus as it is."""

    data: dict[str, Any]
    kind = "worker_event"

    def to_dict(self) -> dict[str, Any]:
        return self.data


# Events a worker forwards within its subscribers' rate (`publish_traffic`); the rest always.
TRAFFIC_KINDS = frozenset((ConnectionOpened.kind, ConnectionClosed.kind, RequestFinished.kind))


class Subscription:
    """One consumer's bounded queue; `take` may run on any thread (deque ops are atomic).

    With `max_rate`, at most that many traffic events (connections, requests) a second are
    built for it; the rest are counted in `dropped`. Rare events always get through.
    """

    __slots__ = ("_bus", "dropped", "max_rate", "queue", "tokens")

    def __init__(self, bus: EventBus, maxlen: int, max_rate: int) -> None:
        self._bus = bus
        self.queue: deque[Event] = deque(maxlen=maxlen)
        self.dropped = 0
        self.max_rate = max_rate
        self.tokens = _tokens(max_rate)

    def take(self, limit: int = 1_000_000) -> list[Event]:
        """Up to `limit` events, oldest first."""
        queue = self.queue
        taken: list[Event] = []
        while queue and len(taken) < limit:
            try:
                taken.append(queue.popleft())
            except IndexError:
                break
        return taken

    def close(self) -> None:
        self._bus.unsubscribe(self)


REFILL_INTERVAL = 0.05  # seconds between token refills of rate-limited subscriptions


def _tokens(max_rate: int) -> int:
    return max(1, int(max_rate * REFILL_INTERVAL))


class EventBus:
    """Fan-out of events to subscriptions; owned by the core, published to on the loop thread.

    Publishers check `active` (someone listens) before building an event, and `traffic`
    before building a connection or request event: it is False while every subscription is
    rate-limited and out of tokens, and the event is then only counted in `skipped`.
    """

    def __init__(self, loop: Loop) -> None:
        self._loop = loop
        self._subscriptions: tuple[Subscription, ...] = ()
        self._refill = loop.timer(self._on_refill)
        self.active = False
        self.traffic = False
        self.published = 0
        self.skipped = 0  # traffic events not built while `traffic` was False
        # Called when the subscriptions change (a master tells its workers what to forward).
        self.on_change: Callable[[], None] | None = None

    def subscribe(self, maxlen: int = DEFAULT_QUEUE, max_rate: int = 0) -> Subscription:
        """A new subscription (call on the loop thread, or before the loop runs)."""
        sub = Subscription(self, maxlen, max_rate)
        self._subscriptions = (*self._subscriptions, sub)
        self._changed()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscriptions = tuple(s for s in self._subscriptions if s is not sub)
        self._changed()

    def _changed(self) -> None:
        subs = self._subscriptions
        self.active = bool(subs)
        self.traffic = any(s.max_rate == 0 or s.tokens > 0 for s in subs)
        if any(s.max_rate for s in subs):
            if self._refill.deadline is None:
                self._refill.reset(self._loop.now + REFILL_INTERVAL)
        else:
            self._refill.cancel()
        if self.on_change is not None:
            self.on_change()

    def _on_refill(self) -> None:
        skipped = self.skipped
        self.skipped = 0
        for sub in self._subscriptions:
            if sub.max_rate:
                sub.dropped += skipped  # `traffic` was False: none of them got these
                sub.tokens = _tokens(sub.max_rate)
        self._changed()

    def wanted_rate(self) -> int | None:
        """The rate of events the subscribers take together: None with no subscriber, 0 when
        one takes every event, else the highest `max_rate` (what a worker forwards)."""
        subs = self._subscriptions
        if not subs:
            return None
        if any(s.max_rate == 0 for s in subs):
            return 0
        return max(s.max_rate for s in subs)

    def lost(self, count: int) -> None:
        """`count` events were dropped before they reached this bus (in a worker): every
        subscription missed them."""
        for sub in self._subscriptions:
            sub.dropped += count

    def publish(self, event: Event) -> None:
        """Deliver to every subscription; a full queue drops its oldest event."""
        self.published += 1
        for sub in self._subscriptions:
            queue = sub.queue
            if len(queue) == queue.maxlen:
                sub.dropped += 1  # the deque's maxlen pushes the oldest out
            queue.append(event)

    def publish_traffic(self, event: Event) -> None:
        """Deliver a connection or request event, within each subscription's rate."""
        self.published += 1
        open_any = False
        for sub in self._subscriptions:
            if sub.max_rate:
                if sub.tokens <= 0:
                    sub.dropped += 1
                    continue
                sub.tokens -= 1
                open_any = open_any or sub.tokens > 0
            else:
                open_any = True
            queue = sub.queue
            if len(queue) == queue.maxlen:
                sub.dropped += 1
            queue.append(event)
        self.traffic = open_any

    @property
    def dropped(self) -> int:
        return sum(s.dropped for s in self._subscriptions) + self.skipped
