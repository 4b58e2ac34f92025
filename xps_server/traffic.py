"""Traffic figures of one route or one upstream: requests, status classes and latency.

A `TrafficStats` counts into its current generation only: per request one bucket increment
and the latency sum (plus the status class for errors); the count is the buckets' sum, taken
when someone reads it. Every `GENERATION_SECONDS` the core's loop
timer calls `rotate`, which folds the current generation into the running totals and keeps
it as the previous one, so:
- the totals (what the metrics route and Prometheus report) are the folded generations plus
  the current one;
- the recent figures (req/s, error %, p50/p95/p99 in the console) cover the previous and the
  current generation: the last 10 to 20 seconds.

Latency buckets are logarithmic in microseconds, four per power of two (each at most 25 %
wide), the index found with `int.bit_length`: O(1), no search, no allocation. A percentile is
reported as the upper bound of the bucket it falls in, so it never under-states.
"""

from __future__ import annotations

from typing import Any

GENERATION_SECONDS = 10.0
BUCKETS = 196  # indexes 0..195: up to 2**50 microseconds (35 years), the last one open-ended
# Prometheus `le` bounds: powers of two of microseconds, 128 us to 64 s (whole fine buckets).
PROMETHEUS_OCTAVES = range(7, 27)


def bucket_of(microseconds: int) -> int:
    """The bucket of a latency: exact below 8 us, then 4 buckets per power of two."""
    bits = microseconds.bit_length()
    if bits <= 3:
        return microseconds
    index = ((bits - 2) << 2) | ((microseconds >> (bits - 3)) & 3)
    return index if index < BUCKETS else BUCKETS - 1


def bucket_upper(index: int) -> int:
    """The smallest latency (us) above every latency of bucket `index`."""
    if index < 8:
        return index + 1
    bits = (index >> 2) + 2
    return (5 + (index & 3)) << (bits - 3)


def octave_index(octave: int) -> int:
    """The first bucket whose latencies are all >= 2**octave us (octave >= 3)."""
    return (octave - 1) << 2


class Generation:
    """The figures of one time span."""

    __slots__ = ("buckets", "seconds", "started", "status_4xx", "status_5xx")

    def __init__(self, started: float) -> None:
        self.started = started
        self.status_4xx = 0
        self.status_5xx = 0
        self.seconds = 0.0  # latencies summed
        self.buckets = [0] * BUCKETS

    @property
    def count(self) -> int:
        return sum(self.buckets)

    def add(self, other: Generation) -> None:
        self.status_4xx += other.status_4xx
        self.status_5xx += other.status_5xx
        self.seconds += other.seconds
        buckets = self.buckets
        for index, n in enumerate(other.buckets):
            if n:
                buckets[index] += n


class TrafficStats:
    """Counts, status classes and a latency histogram, in generations (see the module doc)."""

    __slots__ = ("current", "previous", "totals")

    def __init__(self, now: float) -> None:
        self.totals = Generation(now)  # every generation folded so far
        self.previous: Generation | None = None
        self.current = Generation(now)

    def record(self, status: int, elapsed: float) -> None:
        """One response: its status and the seconds it took."""
        current = self.current
        current.seconds += elapsed
        # bucket_of, inlined: this runs for every response.
        index = int(elapsed * 1_000_000)
        bits = index.bit_length()
        if bits > 3:
            index = ((bits - 2) << 2) | ((index >> (bits - 3)) & 3)
            if index >= BUCKETS:
                index = BUCKETS - 1
        current.buckets[index] += 1
        if status >= 400:
            if status >= 500:
                current.status_5xx += 1
            else:
                current.status_4xx += 1

    def rotate(self, now: float) -> None:
        """Start a new generation; the one ending is folded into the totals."""
        ending = self.current
        self.totals.add(ending)
        self.previous = ending
        self.current = Generation(now)

    # --- reading ------------------------------------------------------------------------------
    def cumulative(self) -> Generation:
        """Everything since the start (a fresh object; the caller may keep it)."""
        result = Generation(self.totals.started)
        result.add(self.totals)
        result.add(self.current)
        return result

    def recent(self, now: float) -> dict[str, Any]:
        """req/s, error % (5xx) and p50/p95/p99 in ms over the previous and current generation;
        None for the rates and percentiles of a window without requests."""
        window = Generation(self.current.started)
        if self.previous is not None:
            window.add(self.previous)
            window.started = self.previous.started
        window.add(self.current)
        span = now - window.started
        count = window.count
        return {
            "rps": round(count / span, 2) if count and span > 0 else 0.0,
            "error_pct": round(window.status_5xx * 100 / count, 2) if count else None,
            "p50_ms": percentile_ms(window.buckets, count, 0.50),
            "p95_ms": percentile_ms(window.buckets, count, 0.95),
            "p99_ms": percentile_ms(window.buckets, count, 0.99),
        }

    def summary(self, now: float) -> dict[str, Any]:
        """Totals plus the recent figures, as the snapshot and the metrics JSON show them."""
        totals = self.cumulative()
        return {
            "requests": totals.count,
            "status_4xx": totals.status_4xx,
            "status_5xx": totals.status_5xx,
            **self.recent(now),
        }


def percentile_ms(buckets: list[int], count: int, quantile: float) -> float | None:
    """The latency (ms, the bucket's upper bound) below which `quantile` of `count` fall."""
    if not count:
        return None
    rank = max(1, round(quantile * count))
    seen = 0
    for index, n in enumerate(buckets):
        seen += n
        if seen >= rank:
            return round(bucket_upper(index) / 1000, 3)
    return round(bucket_upper(BUCKETS - 1) / 1000, 3)


def prometheus_buckets(generation: Generation) -> list[tuple[str, int]]:
    """(le, cumulative count) pairs for a Prometheus histogram, `+Inf` last."""
    buckets = generation.buckets
    rows = []
    seen = 0
    start = 0
    for octave in PROMETHEUS_OCTAVES:
        end = octave_index(octave)
        seen += sum(buckets[start:end])
        start = end
        rows.append((f"{(1 << octave) / 1_000_000:g}", seen))
    rows.append(("+Inf", generation.count))
    return rows
