"""``python -m bench.toptalkers``: what the top-talker tracker costs the loop, per call.

In-process micro-benchmark of `xps_server.toptalkers.TopTalkers`, called as the loop calls it
(a bound method, the loop's clock passed in), garbage collector on:

- call: empty methods with add()'s and refused()'s signatures, fed the same way, for
  scale (the call and the loop around it), subtracted in the second column;
- common: add() and refused() for ``--addresses`` addresses already in the current slot;
- mixed: at a full table, nine requests from known addresses to one from a new one, so
  evictions meet the heap records those requests made stale;
- flood: add() for ``--flood`` always-new addresses at a full table, each an eviction;
- flood, moving clock: the same with the clock crossing a slot every ``--capacity`` x 20
  requests, so slots also open and full ones are freed;
- top() and tracked() with every live slot full and evicting (the most a query merges).

Best of ``--repeat`` runs. Figures go to stdout; nothing is asserted (the budget for this
and the latency histograms together is about 3% of a ~28 µs request).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from xps_server.toptalkers import SORTS, TopTalkers

NOW = 1000.0
PATH = "/index.html"


def _address(prefix: int, index: int) -> str:
    return f"{prefix}.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"


def _best_ns(run: Callable[[], None], calls: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        run()
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best


class _Empty:
    def add(
        self, ip: str, now: float, requests: int, nbytes: int, s4xx: int, s5xx: int, path: str
    ) -> None:
        pass

    def refused(self, ip: str, now: float) -> None:
        pass


Tracker = TopTalkers | _Empty


def _stream_ns(
    make: Callable[[], Tracker], stream: list[str], repeat: int, step: float = 0.0
) -> float:
    """Best ns per add() over `stream`, on a tracker from `make` each run; the clock
    moves `step` seconds per request."""

    def run() -> None:
        add = make().add
        now = NOW
        for ip in stream:
            now += step
            add(ip, now, 1, 512, 0, 0, PATH)

    return _best_ns(run, len(stream), repeat)


def _refused_ns(tracker: Tracker, stream: list[str], repeat: int) -> float:
    def run() -> None:
        refused = tracker.refused
        now = NOW
        for ip in stream:
            now += 0.0
            refused(ip, now)

    return _best_ns(run, len(stream), repeat)


def _full(capacity: int) -> TopTalkers:
    """A tracker whose current slot is full and has evicted once (its heap is built)."""
    tracker = TopTalkers(capacity)
    for i in range(capacity + 1):
        tracker.add(_address(10, i), NOW, 1, 512, 0, 0, PATH)
    return tracker


def _per_call(args: argparse.Namespace) -> dict[str, float]:
    """ns per event; every stream is fed by the same loop, the clock moving or not."""
    known = [_address(10, i) for i in range(args.addresses)]
    repeated = known * max(1, 200_000 // len(known))
    newcomers = [_address(11, i) for i in range(args.flood)]
    mixed = [
        newcomers[i // 10] if i % 10 == 9 else known[i % len(known)]
        for i in range(len(newcomers) * 10)
    ]
    empty = _Empty()
    tracker = TopTalkers(args.capacity)
    for ip in known:
        tracker.add(ip, NOW, 1, 512, 0, 0, PATH)
    capacity = args.capacity
    return {
        "call": _stream_ns(lambda: empty, repeated, args.repeat),
        "call (refused shape)": _refused_ns(empty, repeated, args.repeat),
        "common add()": _stream_ns(lambda: tracker, repeated, args.repeat),
        "common refused()": _refused_ns(tracker, repeated, args.repeat),
        "mixed, 1 in 10 new at a full table": _stream_ns(
            lambda: _full(capacity), mixed, args.repeat
        ),
        "flood, all new at a full table": _stream_ns(
            lambda: _full(capacity), newcomers, args.repeat
        ),
        "flood, moving clock": _stream_ns(
            lambda: _full(capacity), newcomers, args.repeat, 5.0 / (capacity * 20)
        ),
    }


def _queries(args: argparse.Namespace) -> tuple[int, dict[str, float]]:
    """µs per query with every live slot full and evicting."""
    tracker = TopTalkers(args.capacity)
    serial = 0
    now = NOW
    for slot in range(13):
        now = NOW + slot * tracker.slot_seconds
        for _ in range(args.capacity * 2):
            tracker.add(_address(12, serial), now, 1, 512, 0, 0, PATH)
            serial += 1
    entries = sum(len(slot.table) for slot in tracker._slots)
    figures: dict[str, float] = {}
    for window in (10.0, 60.0):
        for sort in SORTS:
            figures[f"top({window:g} s, 20, {sort})"] = (
                _best_ns(lambda w=window, s=sort: tracker.top(now, w, 20, s), 1, args.repeat) / 1000
            )
        figures[f"tracked({window:g} s)"] = (
            _best_ns(lambda w=window: tracker.tracked(now, w), 1, args.repeat) / 1000
        )
    return entries, figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.toptalkers", description=__doc__)
    parser.add_argument("--capacity", type=int, default=1000, help="K, addresses per slot")
    parser.add_argument("--addresses", type=int, default=300, help="known addresses")
    parser.add_argument("--flood", type=int, default=200_000, help="new addresses in a flood")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (best kept)")
    args = parser.parse_args(argv)
    print(f"capacity {args.capacity}, {args.addresses} known addresses, Python {sys.version}")
    per_call = _per_call(args)
    print(f"{'per event':<40} {'ns/call':>8} {'minus call':>11}")
    for name, ns in per_call.items():
        call = per_call["call (refused shape)" if "refused" in name else "call"]
        print(f"{name:<40} {ns:8.0f} {ns - call:11.0f}")
    entries, queries = _queries(args)
    print(f"{'per query (' + str(entries) + ' entries live)':<40} {'µs/call':>8}")
    for name, us in queries.items():
        print(f"{name:<40} {us:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
