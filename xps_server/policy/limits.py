"""Rate and connection limits, and per-client event windows, in bounded memory.

Pure data structures, driven by the caller's monotonic clock (`now` is always an argument, so
tests drive time exactly): nothing here reads the clock, logs or touches a socket.

`RequestLimiter` is nginx's `limit_req` with `nodelay`: one leaky bucket per client key. A
bucket's `excess` is how many requests it holds above the rate; it drains at `rate` per second.
A request to a key with no bucket is admitted with excess 0; a further one computes
``excess - rate * elapsed + 1`` (never below 0) and is refused when that exceeds `burst`,
leaving the bucket as it was. So with an empty bucket, b + 1 requests at one instant are
admitted and each further one at that instant is refused (b + 1 + k requests: k refusals).

`ConnCounter` counts connections per key for `limit_conn`; `WindowCounter` counts events per
key in a window anchored at the key's first counted event (for automatic blocks);
`ReportThrottle` lets at most one report per key per interval through, with the count it covers
(for the per-address events of refusals and rejections).

Memory: buckets and windows live in an LRU (an OrderedDict: a hit moves its key to the end, a
new key beyond `max_keys` evicts the least recently used). Every operation is O(1). A
forgotten bucket starts again empty, as nginx's does when its zone evicts it.
"""

from __future__ import annotations

import math
import socket
from collections import OrderedDict

DEFAULT_MAX_KEYS = 100_000  # clients remembered per limiter before the LRU forgets
MAX_RETRY_AFTER = 86_400  # seconds: a Retry-After never says more (a tiny rate's wait is huge)

_V4MAPPED = b"\x00" * 10 + b"\xff\xff"


def client_key(ip: str, kind: str) -> str:
    """The key a client address counts under: the address itself for "ip", its IPv4 /24 or
    IPv6 /64 network for "ip/24" (an IPv4-mapped IPv6 address counts as IPv4)."""
    if kind == "ip":
        return ip
    if ":" not in ip:
        return ip.rpartition(".")[0]  # "10.1.2.3" -> "10.1.2"
    try:
        packed = socket.inet_pton(socket.AF_INET6, ip.partition("%")[0])
    except (OSError, ValueError):
        return ip
    if packed[:12] == _V4MAPPED:
        return ".".join(str(byte) for byte in packed[12:15])
    return packed[:8].hex()


class _Bucket:
    __slots__ = ("excess", "last")

    def __init__(self, last: float) -> None:
        self.excess = 0.0
        self.last = last


class RequestLimiter:
    """Leaky buckets by key (see the module docstring)."""

    __slots__ = ("_buckets", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: int, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if not rate > 0 or burst < 0 or max_keys < 1:
            raise ValueError("rate must be > 0, burst >= 0 and max_keys >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: str) -> bool:
        return key in self._buckets

    def admit(self, key: str, now: float) -> float:
        """Take one request of `key` at `now`: 0.0 if admitted, else the seconds until a
        request of that key would be admitted again (> 0)."""
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_keys:
                buckets.popitem(last=False)
            buckets[key] = _Bucket(now)
            return 0.0
        buckets.move_to_end(key)
        elapsed = now - bucket.last
        if elapsed < 0:
            elapsed = 0.0  # a clock reading taken a moment before the bucket's
        excess = bucket.excess - self.rate * elapsed + 1
        if excess < 0:
            excess = 0.0
        if excess > self.burst:
            # Admitted once the bucket has drained to burst - 1 + 1 = burst.
            return (excess - self.burst) / self.rate
        bucket.excess = excess
        bucket.last = now
        return 0.0


def retry_after(wait: float) -> int:
    """`Retry-After` seconds for a wait: rounded up, at least 1, at most MAX_RETRY_AFTER."""
    return max(1, math.ceil(min(wait, MAX_RETRY_AFTER)))


class ConnCounter:
    """Open connections by key; a key leaves when its count drops to 0 (the memory is bounded
    by the connections open)."""

    __slots__ = ("counts", "per_key")

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self.counts: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        """Count one more connection of `key`; False (nothing counted) at the cap."""
        counts = self.counts
        count = counts.get(key, 0)
        if count >= self.per_key:
            return False
        counts[key] = count + 1
        return True

    def release(self, key: str) -> None:
        counts = self.counts
        count = counts.get(key, 0) - 1
        if count > 0:
            counts[key] = count
        else:
            counts.pop(key, None)


class _Window:
    __slots__ = ("count", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 0


class WindowCounter:
    """Events by key: `hit` says when a key reaches `count` events within `window` seconds of
    the first event of its current window (then its window starts over)."""

    __slots__ = ("_windows", "count", "max_keys", "window")

    def __init__(self, count: int, window: float, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if count < 1 or not window > 0 or max_keys < 1:
            raise ValueError("count must be >= 1, window > 0 and max_keys >= 1")
        self.count = count
        self.window = window
        self.max_keys = max_keys
        self._windows: OrderedDict[str, _Window] = OrderedDict()

    def __len__(self) -> int:
        return len(self._windows)

    def hit(self, key: str, now: float) -> bool:
        """Count one event of `key` at `now`; True when that makes `count` in the window."""
        windows = self._windows
        found = windows.get(key)
        if found is None:
            if len(windows) >= self.max_keys:
                windows.popitem(last=False)
            found = windows[key] = _Window(now)
        else:
            windows.move_to_end(key)
            if now - found.start >= self.window:
                found.start = now
                found.count = 0
        found.count += 1
        if found.count >= self.count:
            del windows[key]
            return True
        return False


class _Unreported:
    __slots__ = ("count", "last_report")

    def __init__(self, last_report: float) -> None:
        self.last_report = last_report
        self.count = 0


class ReportThrottle:
    """At most one report per key per `interval`: `hit` counts one occurrence of `key` and
    says how many occurrences the report due now covers (0: none is due). Memory is bounded
    crudely: a new key beyond `max_keys` forgets every key (each then reports at once)."""

    __slots__ = ("_keys", "interval", "max_keys")

    def __init__(self, interval: float, max_keys: int) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._keys: dict[str, _Unreported] = {}

    def hit(self, key: str, now: float) -> int:
        """Count one occurrence of `key` at `now`; the count to report, or 0 when none is due."""
        keys = self._keys
        seen = keys.get(key)
        if seen is None:
            if len(keys) >= self.max_keys:
                keys.clear()
            seen = keys[key] = _Unreported(now - self.interval)
        seen.count += 1
        if now - seen.last_report < self.interval:
            return 0
        count = seen.count
        seen.last_report = now
        seen.count = 0
        return count
