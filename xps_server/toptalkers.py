"""Top talkers: per client address, what it asked and got over the last 10 s or 60 s.

Owns the counting only: the loop thread reports what an address did (`add`: requests, with
their bytes, errors and latest path, those answered 429 by a rate or connection limit, and
refusals by a route block; the core batches these per
connection and reports them about once a second) and each connection refused at accept by a
block (`refused`), passing its monotonic clock; the `top` command asks `top` and `tracked`.
Nothing here reads the clock, logs or locks.

Time slots. Slot i covers [i * slot_seconds, (i + 1) * slot_seconds) of the caller's clock
and has its own table. A query for a window W at time `now` merges the slots that overlap
[now - W, now], the current partial one included: that covers every event of the last W
seconds and at most one slot more (up to W + slot_seconds). `rps` divides by the time those
slots actually cover, from the oldest one's start (or the tracker's start, if later) to
`now`, never less than MIN_RATE_SPAN. Slots older than `max_window` allows are dropped when
the next slot opens, so at most ceil(max_window / slot_seconds) + 1 slots are live, and a
query never merges more (with a slot size floats cannot represent, such as 0.1, now - W can
fall one slot further back: that slot is left out, so a result does not depend on whether
the current slot has opened). An event timed before the current slot (a clock read a moment
before a later event's) counts in the current slot.

Space-saving per slot (Metwally, Agrawal, El Abbadi, "Efficient computation of frequent and
top-k elements in data streams", ICDT 2005), with weighted updates. Each request or refusal
is one hit; `add` reports several at once. A slot tracks at most `capacity` (K) addresses; a
new address arriving at a full table with w hits evicts the entry with the fewest hits (min),
and takes its place with hits = min + w and error = min.
Per slot, with N its total hits and t(a) an address's true hits in it:

- the hits of the entries sum to N, so min <= N / K;
- a tracked address has hits - error <= t(a) <= hits;
- an untracked address has t(a) <= min (when it was evicted its hits were the min, and the
  min only grows), and t(a) = 0 if the slot never evicted. Hence every address with
  t(a) > N / K is in that slot's table.

Merging a window's slots: an address's hits are the sum of its entries' hits plus, for every
merged slot that has evicted and does not hold it, that slot's min; its error_bound is the
sum of its entries' errors plus those same mins. Adding the min to the hits, not only to
the bound, is what keeps them an over-estimate: the address may have had up to min hits in
such a slot, and the entries' sum alone would miss those. So, for every reported address,
with E its error_bound:

- hits = requests + refused, and true hits <= hits <= true hits + E;
- true requests <= requests <= true requests + E (the inherited count is put on requests);
- refused, limited, status_4xx and status_5xx lie in [true - E, true], and bytes <= true
  bytes: these count from when the address (last) entered each slot's table;
- E = 0 when none of the merged slots ever evicted; whenever E = 0, the address's figures
  are exact and last_path is the path (its first PATH_LIMIT characters) of its latest
  request in the merged slots, "" if it only had refusals;
- an address with true hits > (hits in the merged slots) / K is reported, since an address
  in no merged table has at most the sum of the slots' mins.

Cost. An event for an address already in the current slot is a comparison, a dict lookup
and a few attribute updates, allocating nothing but the counts' new int values. A new
address in a slot that is not full is one entry allocation. A new address at a full table
finds the min in a lazy min-heap of
(hits when pushed, address) records, one per tracked address, built when the slot first
evicts: hits only grow within a slot, so a record whose count is behind its entry's hits is
re-pushed with the current count and the first record that is up to date holds the min.
Each stale record was made stale by an earlier event, so an eviction is O(log K)
amortized, and the common path never touches the heap (the paper's stream-summary bucket
list finds the min in O(1) but moves an entry between buckets on every hit: the common path
would pay for it). The evicted entry's object is reused. Opening a slot frees the oldest
(O(its entries), each of which was an event). A query is O(slots x K).

Memory: at most (ceil(max_window / slot_seconds) + 1) x K entries, each an address, six
integers and a path of at most PATH_LIMIT characters, plus one heap record per entry in the
slots that evicted, whatever the traffic: about 8 MB with the defaults, IPv6 addresses and
256-character paths.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

PATH_LIMIT = 256  # characters of last_path kept: bounds memory against 8 KB request targets
MIN_RATE_SPAN = 1.0  # seconds: a rate over less is noise (one request at start would read 1000/s)

# An address's figures, in one slot's table (`_Entry`) and summed over a query's slots (`_Row`)
_FIGURES = (
    "bytes",
    "error",
    "hits",
    "last_path",
    "limited",
    "refused",
    "status_4xx",
    "status_5xx",
)


class _Row:
    """One address's figures summed over a query's slots; `held_min` is the sum of the mins
    of the evicting slots that hold the address."""

    __slots__ = (*_FIGURES, "held_min")

    def __init__(self, entry: _Entry, slot_min: int) -> None:
        self.hits = entry.hits
        self.error = entry.error
        self.bytes = entry.bytes
        self.status_4xx = entry.status_4xx
        self.status_5xx = entry.status_5xx
        self.refused = entry.refused
        self.limited = entry.limited
        self.last_path = entry.last_path
        self.held_min = slot_min


def _requests(row: _Row) -> int:
    return row.hits - row.refused


def _errors(row: _Row) -> int:
    return row.status_4xx + row.status_5xx


# sort name -> key over a merged row, with a second figure to order ties usefully
_SORT_KEYS: dict[str, Callable[[_Row], tuple[int, int]]] = {
    "requests": lambda row: (_requests(row), row.bytes),
    "bytes": lambda row: (row.bytes, _requests(row)),
    "errors": lambda row: (_errors(row), _requests(row)),
}
SORTS = tuple(_SORT_KEYS)


class _Entry:
    """One address in one slot's table."""

    __slots__ = _FIGURES

    hits: int
    error: int
    bytes: int
    status_4xx: int
    status_5xx: int
    refused: int
    limited: int
    last_path: str

    def __init__(self, hits: int, error: int) -> None:
        self.reset(hits, error)

    def reset(self, hits: int, error: int) -> None:
        self.hits = hits  # requests + refused, over-estimated by at most `error`
        self.error = error  # the min this entry inherited when it evicted another
        self.bytes = 0
        self.status_4xx = 0
        self.status_5xx = 0
        self.refused = 0
        self.limited = 0
        self.last_path = ""


class _Slot:
    """One time slot's space-saving table."""

    __slots__ = ("heap", "index", "table")

    def __init__(self, index: int) -> None:
        self.index = index
        self.table: dict[str, _Entry] = {}
        # (hits when pushed, address), one per tracked address; None until the first eviction
        self.heap: list[tuple[int, str]] | None = None

    def min_hits(self) -> int:
        """The fewest hits of a tracked address (the table is full when this is asked)."""
        return min(entry.hits for entry in self.table.values())


class TopTalkers:
    """Per-address counters over sliding windows, in bounded memory (see the module doc)."""

    def __init__(
        self,
        capacity: int = 1000,
        slot_seconds: float = 5.0,
        max_window: float = 60.0,
        *,
        started: float | None = None,
    ) -> None:
        """`started`: the clock reading when counting began (the server's start), the
        earliest time `rps` divides from; None takes the first event's or query's time."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if not 0 < slot_seconds <= max_window:
            raise ValueError("slot_seconds must be positive and at most max_window")
        self.capacity = capacity
        self.slot_seconds = slot_seconds
        self.max_window = max_window
        self._past_slots = math.ceil(max_window / slot_seconds)  # what a max_window query spans
        self._started = started
        self._slots: deque[_Slot] = deque()  # oldest first; the last is the current slot
        self._table: dict[str, _Entry] = {}  # the current slot's table
        self._slot_end = -math.inf  # the current slot's end: the first event opens one

    def add(
        self,
        ip: str,
        now: float,
        requests: int,
        nbytes: int,
        status_4xx: int,
        status_5xx: int,
        path: str,
        refused: int = 0,
        limited: int = 0,
    ) -> None:
        """Count what `ip` did since its last report: `requests` answered (`status_4xx` and
        `status_5xx` of them errors, `limited` of them 429s of a rate or connection limit)
        with `nbytes` sent, the latest one for `path`, and `refused` requests refused by a
        route block. At least one of `requests` and `refused` is positive."""
        if now >= self._slot_end:
            self._open_slot(now)
        hits = requests + refused
        entry = self._table.get(ip)
        if entry is None:
            entry = self._admit(ip, hits)
        else:
            entry.hits += hits
        entry.bytes += nbytes
        entry.status_4xx += status_4xx
        entry.status_5xx += status_5xx
        entry.refused += refused
        entry.limited += limited
        if requests:
            entry.last_path = path if len(path) <= PATH_LIMIT else path[:PATH_LIMIT]

    def refused(self, ip: str, now: float) -> None:
        """Count one connection or request from `ip` refused by a block."""
        if now >= self._slot_end:
            self._open_slot(now)
        entry = self._table.get(ip)
        if entry is None:
            entry = self._admit(ip, 1)
        else:
            entry.hits += 1
        entry.refused += 1

    def top(
        self, now: float, window: float, limit: int, sort: str = "requests"
    ) -> list[dict[str, Any]]:
        """The `limit` addresses with the most `sort` (one of SORTS) over the last `window`
        seconds, descending, each with its figures and error_bound (see the module doc)."""
        key = _SORT_KEYS.get(sort)
        if key is None:
            raise ValueError(f"sort must be one of {', '.join(SORTS)}")
        if limit < 0:
            raise ValueError("limit must not be negative")
        if self._started is None:
            self._started = now
        first = self._first_index(now, window)
        merged = self._merge(slot for slot in self._slots if slot.index >= first)
        span = now - max(first * self.slot_seconds, self._started)
        span = max(span, MIN_RATE_SPAN)
        rows = heapq.nlargest(limit, merged.items(), key=lambda item: key(item[1]))
        return [
            {
                "ip": ip,
                "requests": _requests(row),
                "rps": round(_requests(row) / span, 2),
                "bytes": row.bytes,
                "status_4xx": row.status_4xx,
                "status_5xx": row.status_5xx,
                "refused": row.refused,
                "limited": row.limited,
                "last_path": row.last_path,
                "error_bound": row.error,
            }
            for ip, row in rows
        ]

    def tracked(self, now: float, window: float) -> int:
        """Distinct addresses held by the slots a `window` query at `now` merges."""
        first = self._first_index(now, window)
        return len(set().union(*(slot.table for slot in self._slots if slot.index >= first)))

    def clear(self, now: float) -> None:
        """Forget every count; rates then divide from `now`."""
        self._slots.clear()
        self._table = {}
        self._slot_end = -math.inf
        self._started = now

    def _slot_index(self, now: float) -> int:
        """The i with i * slot_seconds <= now < (i + 1) * slot_seconds, as floats compute
        those bounds (now / slot_seconds may round across one)."""
        size = self.slot_seconds
        index = math.floor(now / size)
        if index * size > now:
            index -= 1
        elif (index + 1) * size <= now:
            index += 1
        return index

    def _first_index(self, now: float, window: float) -> int:
        """The oldest slot a `window` query at `now` merges."""
        if not 0 < window <= self.max_window:
            raise ValueError(f"window must be in (0, {self.max_window}]")
        # now - window rounds; never reach past what _open_slot keeps
        return max(self._slot_index(now - window), self._slot_index(now) - self._past_slots)

    def _open_slot(self, now: float) -> None:
        if self._started is None:
            self._started = now
        index = self._slot_index(now)
        slot = _Slot(index)
        slots = self._slots
        slots.append(slot)
        oldest = index - self._past_slots
        while slots[0].index < oldest:
            slots.popleft()
        self._table = slot.table
        self._slot_end = (index + 1) * self.slot_seconds

    def _admit(self, ip: str, hits: int) -> _Entry:
        """Put `ip` in the current slot's table with `hits`, evicting the min if full."""
        slot = self._slots[-1]
        table = slot.table
        if len(table) < self.capacity:
            entry = table[ip] = _Entry(hits, 0)
            return entry
        heap = slot.heap
        if heap is None:
            heap = slot.heap = [(entry.hits, address) for address, entry in table.items()]
            heapq.heapify(heap)
        count, victim = heap[0]
        entry = table[victim]
        while entry.hits != count:  # a stale record: re-push it with the current count
            heapq.heapreplace(heap, (entry.hits, victim))
            count, victim = heap[0]
            entry = table[victim]
        del table[victim]
        heapq.heapreplace(heap, (count + hits, ip))
        entry.reset(count + hits, count)  # the victim's object, reused
        table[ip] = entry
        return entry

    @staticmethod
    def _merge(slots: Iterable[_Slot]) -> dict[str, _Row]:
        """Sum the slots' tables (oldest first) into rows, bounds added (see the module doc)."""
        merged: dict[str, _Row] = {}
        evicting_mins = 0  # the sum of the mins of the evicting slots merged
        for slot in slots:
            slot_min = 0 if slot.heap is None else slot.min_hits()
            evicting_mins += slot_min
            for ip, entry in slot.table.items():
                row = merged.get(ip)
                if row is None:
                    merged[ip] = _Row(entry, slot_min)
                    continue
                row.hits += entry.hits
                row.error += entry.error
                row.bytes += entry.bytes
                row.status_4xx += entry.status_4xx
                row.status_5xx += entry.status_5xx
                row.refused += entry.refused
                row.limited += entry.limited
                if entry.last_path:  # a newer slot that saw only refusals keeps the older path
                    row.last_path = entry.last_path
                row.held_min += slot_min
        for row in merged.values():
            missed = evicting_mins - row.held_min  # mins of evicting slots without it
            row.hits += missed
            row.error += missed
        return merged
