"""Typed events and the bounded bus that carries them off the loop thread.

The loop publishes; consumers (the embedded console on its own thread, control-socket
subscribers on the loop itself) each own a bounded subscription. Publishing never blocks and
never waits for a consumer: a full subscription drops its oldest event and counts the drop.
With no subscriber, `bus.active` is False and the loop builds no event at all.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, fields

DEFAULT_QUEUE = 10_000


@dataclass(slots=True)
class Event:
    """Base of every event: `kind` names it on the wire, `ts` is wall-clock seconds."""

    ts: float

    kind = "event"

    def to_dict(self) -> dict:
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
    phase: str  # header, body, keep_alive, send, upstream_connect, upstream_read
    kind = "timeout"


@dataclass(slots=True)
class AclDenied(Event):
    client: str
    route: str
    path: str
    reason: str  # acl, blocked
    kind = "acl_denied"


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
    args: dict
    ok: bool
    result: str
    kind = "operator_action"


@dataclass(slots=True)
class ConfigReloaded(Event):
    ok: bool
    message: str
    kind = "config_reloaded"


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        ConnectionOpened,
        ConnectionClosed,
        RequestFinished,
        Timeout,
        AclDenied,
        UpstreamConnected,
        UpstreamFailed,
        UpstreamHealthChanged,
        OperatorAction,
        ConfigReloaded,
    )
}


class Subscription:
    """One consumer's bounded queue; `take` may run on any thread (deque ops are atomic)."""

    __slots__ = ("_bus", "dropped", "queue")

    def __init__(self, bus: EventBus, maxlen: int) -> None:
        self._bus = bus
        self.queue: deque[Event] = deque(maxlen=maxlen)
        self.dropped = 0

    def take(self, limit: int = 1_000_000) -> list[Event]:
        """Up to `limit` events, oldest first."""
        queue = self.queue
        taken = []
        while queue and len(taken) < limit:
            try:
                taken.append(queue.popleft())
            except IndexError:
                break
        return taken

    def close(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    """Fan-out of events to subscriptions; owned by the core, published to on the loop thread."""

    def __init__(self) -> None:
        self._subscriptions: tuple[Subscription, ...] = ()
        self.active = False
        self.published = 0

    def subscribe(self, maxlen: int = DEFAULT_QUEUE) -> Subscription:
        sub = Subscription(self, maxlen)
        self._subscriptions = (*self._subscriptions, sub)
        self.active = True
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscriptions = tuple(s for s in self._subscriptions if s is not sub)
        self.active = bool(self._subscriptions)

    def publish(self, event: Event) -> None:
        self.published += 1
        for sub in self._subscriptions:
            queue = sub.queue
            if len(queue) == queue.maxlen:
                sub.dropped += 1  # the deque's maxlen pushes the oldest out
            queue.append(event)

    @property
    def dropped(self) -> int:
        return sum(s.dropped for s in self._subscriptions)
