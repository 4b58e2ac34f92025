"""The fleet link: one block list (and gzip switches, upstream drains) for every instance that
names the same Redis in its `fleet` config.

Redis holds the truth, in plain structures under the fleet's prefix (``xps`` below):

- ``xps:blocks``, a hash: field ``<cidr>|<route>`` (route empty for a global block), value the
  JSON ``{"expires_at": <unix time or null>, "reason": <the rule of an automatic block, or
  null>, "by": <instance>}``; ``xps:blocks:expiry``, a
  sorted set of the timed fields scored by their expiry. Expired fields are pruned by every
  write and every full read (one Lua script each, so a write is atomic).
- ``xps:gzip``, a hash route -> ``"1"``/``"0"``; ``xps:drained``, a set of ``host:port``.
- ``xps:instance:<name>``, a key with a TTL refreshed every `HEARTBEAT` seconds (the instance
  is alive while it exists), and ``xps:instances``, a sorted set name -> last heartbeat.
- Every change is also published on the channel ``xps:changes`` as JSON (the change and the
  `origin`, an id of the process that made it, so an instance ignores its own).

The loop never waits on Redis. A dedicated thread, ``xps-fleet``, owns the two connections
(commands and the subscription): local changes reach it through a deque and an eventfd (the
loop only appends and writes the eventfd, as the access log does), and what it learns goes
back with `loop.call_soon_threadsafe`. The thread waits in `select` on the eventfd and the
subscription's socket, so a change goes out, and a remote one comes in, without polling.
Remote changes are applied through `Runtime.apply_shared`, which never publishes again.

When Redis cannot be reached the instance keeps serving and enforcing what it knows; its
own changes wait in the queue (they are in the state file anyway) and the thread reconnects
with exponential backoff. On every connection (the first one too) it reconciles: it writes
the changes queued meanwhile, then merges this instance's blocks, gzip switches and drains
into Redis (the union of blocks, the latest expiry winning; a switch or a drain Redis lacks
is added), and reads the fleet's state back, which the loop merges the same way. A change
made on the loop while that is under way wins over what the read says. `fleet_connected`
and `fleet_disconnected` events mark the transitions.

The thread reads and writes one change at a time in the order the loop made them, and
applies the fleet's state before any message that arrived after it was read: remote changes
are applied in the order Redis saw them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import select
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from xps_server.events import FleetChange, FleetConnected, FleetDisconnected
from xps_server.policy.acl import parse_network

if TYPE_CHECKING:
    import redis
    from redis.client import PubSub

    from xps_server.config import Fleet
    from xps_server.core.loop import Loop
    from xps_server.events import EventBus
    from xps_server.server.runtime import Runtime, SharedState

log = logging.getLogger("xps.fleet")

HEARTBEAT = 1.0  # seconds between heartbeats
INSTANCE_TTL = 5  # seconds an instance stays alive without a heartbeat
FORGET_AFTER = 86400.0  # seconds a stopped instance stays in the listing
BACKOFF_FIRST = 0.1  # seconds before the first reconnection attempt; doubles up to BACKOFF_MAX
BACKOFF_MAX = 5.0
SOCKET_TIMEOUT = 2.0  # a Redis that stops answering is taken for down after this long
MAX_QUEUED = 100_000  # local changes kept for Redis while it is down; more are not queued
RECONCILE_CHUNK = 500  # blocks merged per round trip in a reconciliation
CLOSE_TIMEOUT = 5.0

# KEYS: blocks hash, expiry zset. ARGV: now. Drops the fields whose expiry has passed.
_PRUNE = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, field in ipairs(gone) do redis.call('HDEL', KEYS[1], field) end
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1]) end
return #gone
"""
# KEYS: blocks hash, expiry zset. ARGV: now, field, value, expires_at ('' for never), mode,
# channel, message, message head. Mode '0' writes; '1' writes only if the block outlasts what
# Redis holds; '2' too, and else publishes what Redis holds (the message head and its expiry).
# Returns 1 if written.
_SET_BLOCK = (
    _PRUNE.replace("return #gone", "")
    + """
if ARGV[5] ~= '0' and redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then
  local held = redis.call('ZSCORE', KEYS[2], ARGV[2])
  if not held or (ARGV[4] ~= '' and tonumber(ARGV[4]) <= tonumber(held)) then
    if ARGV[5] == '2' then
      redis.call('PUBLISH', ARGV[6], ARGV[8] .. (held or 'null') .. '}')
    end
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
if ARGV[4] == '' then
  redis.call('ZREM', KEYS[2], ARGV[2])
else
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
end
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
"""
)


@dataclass(slots=True)
class _Reconcile:
    """The queue item that merges this instance's state into Redis and reads the fleet's."""

    state: SharedState


_Op = dict[str, Any] | _Reconcile | None  # None: stop
_SET, _MERGE, _MERGE_OR_TELL = "0", "1", "2"  # how a block is written (see _SET_BLOCK)


def redacted(url: str) -> str:
    """The Redis URL without its password, for logs and events."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class FleetLink:
    """One instance's link to its fleet: the loop side (`publish`, the handlers the thread
    posts to) and the thread that owns the Redis connections."""

    def __init__(self, loop: Loop, bus: EventBus, runtime: Runtime, settings: Fleet) -> None:
        self.loop = loop
        self.bus = bus
        self.runtime = runtime
        self.settings = settings
        self.url = redacted(settings.redis)
        self.origin = uuid.uuid4().hex  # this process, in every message it publishes
        prefix = settings.prefix
        self._blocks_key = f"{prefix}:blocks"
        self._expiry_key = f"{prefix}:blocks:expiry"
        self._gzip_key = f"{prefix}:gzip"
        self._drained_key = f"{prefix}:drained"
        self._instances_key = f"{prefix}:instances"
        self._instance_prefix = f"{prefix}:instance:"  # + an instance's name: its heartbeat
        self._instance_key = self._instance_prefix + settings.name
        self.channel = f"{prefix}:changes"
        # The loop side.
        self.connected = False
        self.instances: list[dict[str, Any]] = []  # from the latest heartbeat
        self.received = 0  # remote changes applied
        self.dropped = 0  # local changes dropped from a full queue while Redis was down
        # Per key (what a change is about), local changes whose echo from Redis has not come
        # back yet: a remote change of that key is older than ours in Redis's order.
        self._pending: dict[tuple[str, ...], int] = {}
        self.reconciling = False  # a reconciliation's read has not come back yet
        # Shared with the thread: a deque (atomic appends and pops) and an eventfd.
        self._ops: deque[_Op] = deque()
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        # Taken by the thread to post to the loop and close the eventfd, and by `close`.
        self._lock = threading.Lock()
        self._closed = False
        self._wake_open = True
        self._backlog = 0  # the thread's: queued changes older than the connection
        self._thread = threading.Thread(target=self._run, name="xps-fleet", daemon=True)
        self._thread.start()

    # --- the loop side -------------------------------------------------------------------------
    def publish(self, change: dict[str, Any]) -> None:
        """A change made here: it goes to Redis and the fleet (loop thread; never waits)."""
        ops = self._ops
        if len(ops) >= MAX_QUEUED:
            # Redis has been down long: the state file keeps the change, and the
            # reconciliation shares its blocks, switches and drains (not its unblocks).
            self.dropped += 1
            return
        pending = self._pending
        key = _key_of(change)
        pending[key] = pending.get(key, 0) + 1
        ops.append(change)
        os.eventfd_write(self._wake, 1)

    def status(self) -> dict[str, Any]:
        """What the `fleet` command and the console show."""
        return {
            "enabled": True,
            "name": self.settings.name,
            "redis": self.url,
            "prefix": self.settings.prefix,
            "connected": self.connected,
            "alive": sum(1 for row in self.instances if row["alive"]),
            "instances": self.instances,
            "queued": len(self._ops),
            "received": self.received,
            "dropped": self.dropped,
        }

    def _on_up(self) -> None:
        if self._closed:
            return
        self.connected = True
        log.info("fleet: connected to %s as %s", self.url, self.settings.name)
        if self.bus.active:
            self.bus.publish(FleetConnected(time.time(), self.url))
        # Echoes of what the last connection wrote are lost with it: only what is still
        # queued will echo. (list() of a deque is one C call: the thread cannot pop midway.)
        pending: dict[tuple[str, ...], int] = {}
        for op in list(self._ops):
            if isinstance(op, dict):
                key = _key_of(op)
                pending[key] = pending.get(key, 0) + 1
        self._pending = pending
        self.reconciling = True
        self._ops.append(_Reconcile(self.runtime.shared_state()))
        os.eventfd_write(self._wake, 1)

    def _on_down(self, error: str) -> None:
        if self._closed:
            return
        self.connected = False
        log.warning("fleet: Redis %s unreachable (%s); enforcing what is known", self.url, error)
        if self.bus.active:
            self.bus.publish(FleetDisconnected(time.time(), self.url, error))

    def _settled(self, key: tuple[str, ...]) -> int:
        """One local change of `key` is echoed (or dropped); how many are still pending."""
        pending = self._pending
        left = pending.get(key, 0) - 1
        if left > 0:
            pending[key] = left
        else:
            pending.pop(key, None)
        return left

    def _on_changes(self, changes: list[tuple[bool, dict[str, Any]]]) -> None:
        """Changes as Redis ordered them, (ours, change): a remote one is applied unless a
        change of ours to that key is still on its way (ours came later, so it wins); our own
        echo is applied when it is the last one pending (usually a no-op; after a merge that
        Redis refused, it carries what Redis holds)."""
        if self._closed:
            return
        pending = self._pending
        for ours, change in changes:
            key = _key_of(change)
            if ours:
                if self._settled(key) > 0:
                    continue
            elif key in pending:
                continue
            else:
                self.received += 1
            by = change.pop("by", None)
            try:
                self.runtime.apply_shared(change)
            except Exception:
                log.exception("fleet: cannot apply %r", change)
                continue
            if not ours and by is not None and self.bus.active:
                self.bus.publish(FleetChange(time.time(), by, change))

    def _on_state(
        self, blocks: list[dict[str, Any]], gzip: dict[str, bool], drained: list[str]
    ) -> None:
        """The fleet's state, read after this instance's was merged into it: merged here."""
        if self._closed:
            return
        self.reconciling = False
        entries = self.runtime.blocklist.entries
        changes: list[tuple[bool, dict[str, Any]]] = []
        for block in blocks:
            held = entries.get((block["route"], block["cidr"]), _ABSENT)
            at = block["expires_at"]
            if held is _ABSENT or (held is not None and (at is None or at > held)):
                changes.append((False, block))
        overrides = self.runtime.gzip_overrides
        for route, enabled in gzip.items():
            if overrides.get(route) is not enabled:
                changes.append((False, {"op": "gzip", "route": route, "enabled": enabled}))
        held_drains = self.runtime.drained
        changes += [(False, {"op": "drain", "addr": a}) for a in drained if a not in held_drains]
        self._on_changes(changes)

    def _on_instances(self, instances: list[dict[str, Any]]) -> None:
        if not self._closed:
            self.instances = instances

    def close(self, wait: bool = True) -> None:
        """Stop the thread: it writes what is queued if Redis answers, says this instance is
        gone, and disconnects. With `wait`, until it has (the loop has stopped, or is about
        to drop this link: nothing it posts afterwards is applied)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._ops.append(None)
            if self._wake_open:
                os.eventfd_write(self._wake, 1)
        if wait:
            self._thread.join(CLOSE_TIMEOUT)

    # --- the thread ----------------------------------------------------------------------------
    def _post(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._closed:
                self.loop.call_soon_threadsafe(callback)

    def _run(self) -> None:
        import redis  # only an instance with a `fleet` config loads the client

        backoff = BACKOFF_FIRST
        was_up: bool | None = None  # None: never tried
        try:
            while True:
                try:
                    client = self._connect(redis)
                except Exception as exc:
                    if not isinstance(exc, redis.RedisError | OSError):
                        log.exception("fleet: cannot connect to %s", self.url)
                    if was_up is not False:
                        self._post(partial(self._on_down, _describe(exc)))
                    was_up = False
                    if self._pause(backoff):
                        return
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                was_up = True
                started = time.monotonic()
                try:
                    if self._serve(client):
                        return
                except Exception as exc:
                    if not isinstance(exc, redis.RedisError | OSError):
                        log.exception("fleet: the link to %s failed", self.url)
                    self._post(partial(self._on_down, _describe(exc)))
                    was_up = False
                finally:
                    _close_quietly(client)
                # A connection that fails at once again and again must not spin.
                if time.monotonic() - started > BACKOFF_MAX:
                    backoff = BACKOFF_FIRST
                if self._pause(backoff):
                    return
                backoff = min(backoff * 2, BACKOFF_MAX)
        finally:
            with self._lock:
                self._wake_open = False
                os.close(self._wake)

    def _connect(self, redis: Any) -> _Client:
        client = redis.Redis.from_url(
            self.settings.redis,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
        )
        pubsub = client.pubsub()
        try:
            pubsub.subscribe(self.channel)
            # Confirmed before the fleet's state is read, so no change falls in between.
            message = pubsub.get_message(timeout=SOCKET_TIMEOUT)
            if message is None or message.get("type") != "subscribe":
                raise OSError(f"no confirmation of the subscription to {self.channel}")
        except BaseException:
            pubsub.close()
            client.close()
            raise
        return _Client(
            client, pubsub, client.register_script(_SET_BLOCK), client.register_script(_PRUNE)
        )

    def _pause(self, seconds: float) -> bool:
        """Wait `seconds` (a reconnection's backoff) or until told to stop; True to stop."""
        deadline = time.monotonic() + seconds
        while True:
            if self._ops and self._ops[-1] is None:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([self._wake], [], [], left)
            _drain_eventfd(self._wake)

    def _serve(self, client: _Client) -> bool:
        """Serve one connection until it fails (raises) or the link stops (True)."""
        # Blocks queued while Redis was away merge as the reconciliation does: a later
        # expiry another instance wrote meanwhile is not cut short by a replay.
        self._backlog = len(self._ops)
        self._post(self._on_up)
        next_beat = 0.0
        sock = client.socket().fileno()
        while True:
            if self._flush(client):
                self._leave(client)
                return True
            now = time.monotonic()
            if now >= next_beat:
                self._heartbeat(client)
                next_beat = now + HEARTBEAT
            self._receive(client)
            ready, _, _ = select.select(
                [self._wake, sock], [], [], max(0.0, next_beat - time.monotonic())
            )
            if self._wake in ready:
                _drain_eventfd(self._wake)

    def _flush(self, client: _Client) -> bool:
        """Write the queued changes, in order, each removed once written; True on the stop."""
        ops = self._ops
        while ops:
            op = ops[0]
            if op is None:
                return True
            if isinstance(op, _Reconcile):
                self._reconcile(client, op.state)
            else:
                self._write(client, op, replayed=self._backlog > 0)
            ops.popleft()
            self._backlog -= 1
        return False

    def _message(self, change: dict[str, Any]) -> str:
        return json.dumps({**change, "origin": self.origin, "by": self.settings.name})

    def _write(self, client: _Client, change: dict[str, Any], replayed: bool) -> None:
        op = change["op"]
        message = self._message(change)
        if op == "block":
            mode = _MERGE_OR_TELL if replayed else _SET
            self._set_block(
                client,
                change["cidr"],
                change["route"],
                change["expires_at"],
                change.get("reason"),
                mode,
            )
            return
        pipe = client.redis.pipeline(transaction=True)
        if op == "unblock":
            field = _field(change["cidr"], change["route"])
            pipe.hdel(self._blocks_key, field)
            pipe.zrem(self._expiry_key, field)
        elif op == "gzip":
            if change["enabled"] is None:
                pipe.hdel(self._gzip_key, change["route"])
            else:
                pipe.hset(self._gzip_key, change["route"], "1" if change["enabled"] else "0")
        elif op == "drain":
            pipe.sadd(self._drained_key, change["addr"])
        else:
            pipe.srem(self._drained_key, change["addr"])
        pipe.publish(self.channel, message)
        pipe.execute()

    def _set_block(
        self,
        client: _Client,
        cidr: str,
        route: str | None,
        expires_at: float | None,
        reason: str | None,
        mode: str,
        pipe: Any = None,
    ) -> Any:
        change = {"op": "block", "cidr": cidr, "route": route, "reason": reason}
        value = json.dumps({"expires_at": expires_at, "reason": reason, "by": self.settings.name})
        head = self._message(change)[:-1] + ', "expires_at": '
        args = [
            repr(time.time()),
            _field(cidr, route),
            value,
            "" if expires_at is None else repr(expires_at),
            mode,
            self.channel,
            head + json.dumps(expires_at) + "}",
            head,
        ]
        keys = [self._blocks_key, self._expiry_key]
        return client.set_block(keys=keys, args=args, client=pipe)

    def _reconcile(self, client: _Client, state: SharedState) -> None:
        """Merge this instance's state into Redis, then read the fleet's back for the loop."""
        for start in range(0, len(state.blocks), RECONCILE_CHUNK):
            pipe = client.redis.pipeline(transaction=False)
            for cidr, route, at, reason in state.blocks[start : start + RECONCILE_CHUNK]:
                self._set_block(client, cidr, route, at, reason, _MERGE, pipe)
            pipe.execute()
        redis = client.redis
        for route, enabled in state.gzip.items():
            if redis.hsetnx(self._gzip_key, route, "1" if enabled else "0"):
                redis.publish(
                    self.channel, self._message({"op": "gzip", "route": route, "enabled": enabled})
                )
        for addr in state.drained:
            if redis.sadd(self._drained_key, addr):
                redis.publish(self.channel, self._message({"op": "drain", "addr": addr}))
        client.prune(keys=[self._blocks_key, self._expiry_key], args=[repr(time.time())])
        pipe = redis.pipeline(transaction=True)
        pipe.hgetall(self._blocks_key)
        pipe.hgetall(self._gzip_key)
        pipe.smembers(self._drained_key)
        raw_blocks, raw_gzip, raw_drained = pipe.execute()
        blocks = []
        for field, value in raw_blocks.items():
            block = _decode_block(field, value)
            if block is not None:
                blocks.append(block)
        gzip = {
            route.decode(errors="replace"): flag == b"1"
            for route, flag in raw_gzip.items()
            if flag in (b"0", b"1")
        }
        drained = sorted(addr.decode(errors="replace") for addr in raw_drained)
        self._post(lambda: self._on_state(blocks, gzip, drained))

    def _receive(self, client: _Client) -> None:
        """Hand the messages waiting on the subscription to the loop, as one batch."""
        changes: list[tuple[bool, dict[str, Any]]] = []
        pubsub = client.pubsub
        while True:
            message = pubsub.get_message(timeout=0.0)
            if message is None:
                break
            if message.get("type") != "message":
                continue
            change = _decode_change(message.get("data"))
            if change is None:
                log.warning("fleet: ignoring a malformed message on %s", self.channel)
            else:
                changes.append((change.pop("origin") == self.origin, change))
        if changes:
            self._post(lambda: self._on_changes(changes))

    def _heartbeat(self, client: _Client) -> None:
        redis = client.redis
        now = time.time()
        name = self.settings.name
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "at": now})
        pipe = redis.pipeline(transaction=False)
        pipe.set(self._instance_key, info, ex=INSTANCE_TTL)
        pipe.zadd(self._instances_key, {name: now})
        pipe.zremrangebyscore(self._instances_key, "-inf", now - FORGET_AFTER)
        pipe.zrange(self._instances_key, 0, -1, withscores=True)
        listing = pipe.execute()[-1]
        names = [member.decode(errors="replace") for member, _ in listing]
        prefix = self._instance_prefix
        alive = redis.mget([prefix + n for n in names]) if names else []
        instances = [
            {
                "name": n,
                "last_heartbeat": score,
                "alive": found is not None,
                "self": n == name,
            }
            for n, (_, score), found in zip(names, listing, alive, strict=True)
        ]
        self._post(lambda: self._on_instances(instances))

    def _leave(self, client: _Client) -> None:
        """Say this instance is gone (its heartbeat key), before disconnecting."""
        client.redis.delete(self._instance_key)


@dataclass(slots=True)
class _Client:
    """One connection's objects, owned by the thread."""

    redis: redis.Redis
    pubsub: PubSub
    set_block: Any  # redis.commands.core.Script
    prune: Any

    def socket(self) -> socket.socket:
        connection = self.pubsub.connection
        # redis-py has no public accessor for the subscription's socket, which `select` needs
        # beside the eventfd.
        sock = None if connection is None else connection._sock
        if sock is None:
            raise OSError("the subscription has no socket")
        return sock

    def close(self) -> None:
        self.pubsub.close()
        self.redis.close()


_ABSENT: Any = object()


def _field(cidr: str, route: str | None) -> str:
    return f"{cidr}|{route or ''}"


def _key_of(change: dict[str, Any]) -> tuple[str, ...]:
    """What a change is about: two changes with one key overwrite each other."""
    op = change["op"]
    if op in ("block", "unblock"):
        return ("block", change["cidr"], change["route"] or "")
    if op == "gzip":
        return ("gzip", change["route"])
    return ("drain", change["addr"])


def _close_quietly(client: _Client) -> None:
    try:
        client.close()
    except Exception:  # a connection already broken: nothing more to release
        log.debug("fleet: closing a broken connection", exc_info=True)


def _drain_eventfd(fd: int) -> None:
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        pass


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _cidr(value: object) -> str:
    return str(parse_network(value))


def _route(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("route must be a string")
    return value


def _expiry(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("expires_at must be a number or null")
    return float(value)


def _reason(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError("reason must be a string or null")
    return value


def _decode_block(field: bytes, value: bytes) -> dict[str, Any] | None:
    """A block as Redis holds it, as a change; None (logged) if malformed."""
    try:
        cidr, _, route = field.decode().partition("|")
        data = json.loads(value)
        if not isinstance(data, dict):
            raise ValueError("expected an object")
        return {
            "op": "block",
            "cidr": _cidr(cidr),
            "route": _route(route),
            "expires_at": _expiry(data.get("expires_at")),
            "reason": _reason(data.get("reason")),
        }
    except ValueError as exc:
        log.warning("fleet: ignoring the malformed block %r: %s", field, exc)
        return None


def _decode_change(data: object) -> dict[str, Any] | None:
    """A published change, checked field by field; None if malformed."""
    try:
        if not isinstance(data, bytes | str):
            return None
        raw = json.loads(data)
        if not isinstance(raw, dict) or not isinstance(raw.get("origin"), str):
            return None
        op = raw.get("op")
        change: dict[str, Any] = {"op": op, "origin": raw["origin"]}
        by = raw.get("by")
        if isinstance(by, str):
            change["by"] = by
        if op == "block":
            change["cidr"] = _cidr(raw.get("cidr"))
            change["route"] = _route(raw.get("route"))
            change["expires_at"] = _expiry(raw.get("expires_at"))
            change["reason"] = _reason(raw.get("reason"))
        elif op == "unblock":
            change["cidr"] = _cidr(raw.get("cidr"))
            change["route"] = _route(raw.get("route"))
        elif op == "gzip":
            route, enabled = raw.get("route"), raw.get("enabled")
            if not isinstance(route, str) or not (enabled is None or isinstance(enabled, bool)):
                return None
            change["route"], change["enabled"] = route, enabled
        elif op in ("drain", "enable"):
            addr = raw.get("addr")
            if not isinstance(addr, str):
                return None
            change["addr"] = addr
        else:
            return None
        return change
    except (ValueError, RecursionError):
        return None
