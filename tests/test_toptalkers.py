"""Top talkers (xps_server/toptalkers.py) against an exact model with the same time slots.

Times in the generated streams are multiples of 0.25 s and slots are 5 s, so the model's
floor(t / 5) is exact and agrees with the tracker's slot boundaries.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from xps_server.toptalkers import MIN_RATE_SPAN, PATH_LIMIT, SORTS, TopTalkers

SLOT = 5.0
MAX_WINDOW = 60.0
LIVE_SLOTS = math.ceil(MAX_WINDOW / SLOT) + 1
PATHS = ("/", "/a", "/b/c", "/api/x")
STATUSES = (200, 204, 304, 403, 404, 429, 500, 503)  # 429: a rate or connection limit's
FIGURES = ("requests", "refused", "limited", "bytes", "status_4xx", "status_5xx")
# Hypothesis' explain phase takes minutes on a failing stream of 100 events: skip it
PHASES = tuple(phase for phase in Phase if phase is not Phase.explain)


@dataclass
class Exact:
    requests: int = 0
    refused: int = 0
    limited: int = 0
    bytes: int = 0
    status_4xx: int = 0
    status_5xx: int = 0
    last_path: str = ""

    @property
    def hits(self) -> int:
        return self.requests + self.refused


class Model:
    """Exact per-address figures per slot."""

    def __init__(self) -> None:
        self.slots: dict[int, dict[str, Exact]] = {}

    @staticmethod
    def index(t: float) -> int:
        return math.floor(t / SLOT)

    def _exact(self, ip: str, t: float) -> Exact:
        return self.slots.setdefault(self.index(t), {}).setdefault(ip, Exact())

    def request(self, ip: str, t: float, status: int, nbytes: int, path: str) -> None:
        exact = self._exact(ip, t)
        exact.requests += 1
        exact.bytes += nbytes
        exact.status_4xx += 400 <= status < 500
        exact.status_5xx += status >= 500
        exact.limited += status == 429
        exact.last_path = path

    def refused(self, ip: str, t: float) -> None:
        self._exact(ip, t).refused += 1

    def window_slots(self, now: float, window: float) -> list[int]:
        first = self.index(now - window)
        return sorted(index for index in self.slots if index >= first)

    def window(self, now: float, window: float) -> dict[str, Exact]:
        merged: dict[str, Exact] = {}
        for index in self.window_slots(now, window):
            for ip, exact in self.slots[index].items():
                total = merged.setdefault(ip, Exact())
                for name in FIGURES:
                    setattr(total, name, getattr(total, name) + getattr(exact, name))
                total.last_path = exact.last_path or total.last_path
        return merged


# (quarter-seconds since the previous event, address, refusal?, status, bytes, path)
Event = tuple[int, int, bool, int, int, str]


SPREAD = st.one_of(st.just(0), st.integers(0, 8), st.integers(0, 400))  # many slots, jumps
DENSE = st.one_of(st.just(0), st.integers(0, 2), st.integers(0, 40))  # full, evicting slots


def events(
    addresses: st.SearchStrategy[int], max_size: int = 120, gap: st.SearchStrategy[int] = SPREAD
) -> st.SearchStrategy:
    event = st.tuples(
        gap,
        addresses,
        st.booleans(),
        st.sampled_from(STATUSES),
        st.integers(0, 5000),
        st.sampled_from(PATHS),
    )
    return st.lists(event, max_size=max_size)


def request(tracker: TopTalkers, ip: str, now: float, status: int, nbytes: int, path: str) -> None:
    """One finished request, reported as the core reports a connection's batch of one."""
    tracker.add(
        ip,
        now,
        1,
        nbytes,
        int(400 <= status < 500),
        int(status >= 500),
        path,
        0,
        int(status == 429),
    )


SKEWED = st.one_of(st.integers(0, 2), st.integers(0, 40))  # a few heavy hitters in a crowd
START = st.integers(0, 4000).map(lambda quarters: quarters / 4)


def play(
    tracker: TopTalkers, model: Model | None, stream: Iterable[Event], t: float
) -> Iterable[float]:
    """Feed `stream` to both from time `t`, yielding each event's time once counted."""
    for gap, address, refusal, status, nbytes, path in stream:
        t += gap / 4
        ip = f"10.{address >> 16 & 255}.{address >> 8 & 255}.{address & 255}"
        if refusal:
            tracker.refused(ip, t)
            if model is not None:
                model.refused(ip, t)
        else:
            request(tracker, ip, t, status, nbytes, path)
            if model is not None:
                model.request(ip, t, status, nbytes, path)
        yield t


def feed(tracker: TopTalkers, model: Model | None, stream: Iterable[Event], t: float) -> float:
    """Feed the whole stream; the last event's time (`t` if none)."""
    return max(play(tracker, model, stream, t), default=t)


def everything(tracker: TopTalkers, now: float, window: float) -> dict[str, dict]:
    return {row["ip"]: row for row in tracker.top(now, window, 10**9, "requests")}


# --- memory ---------------------------------------------------------------------------------


def assert_bounded(tracker: TopTalkers) -> None:
    slots = list(tracker._slots)
    assert len(slots) <= LIVE_SLOTS
    assert all(older.index < newer.index for older, newer in itertools.pairwise(slots))
    assert slots[0].index >= slots[-1].index - (LIVE_SLOTS - 1)
    for slot in slots:
        assert len(slot.table) <= tracker.capacity
        if slot.heap is not None:  # one record per tracked address, never more
            assert len(slot.heap) == len(slot.table)
            assert {address for _, address in slot.heap} == set(slot.table)


@settings(max_examples=150, deadline=None, phases=PHASES)
@given(
    capacity=st.integers(1, 8),
    stream=events(st.integers(0, 10**6), max_size=200),
    start=START,
)
def test_memory_stays_bounded_whatever_the_stream(
    capacity: int, stream: list[Event], start: float
) -> None:
    tracker = TopTalkers(capacity, SLOT, MAX_WINDOW)
    for _ in play(tracker, None, stream, start):
        assert_bounded(tracker)


def test_a_flood_of_new_addresses_does_not_grow_memory() -> None:
    tracker = TopTalkers(100, SLOT, MAX_WINDOW)
    for i in range(100_000):
        request(tracker, f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", i / 500, 200, 10, "/")
        if i % 1000 == 0:
            assert_bounded(tracker)
    assert_bounded(tracker)
    assert sum(len(slot.table) for slot in tracker._slots) <= LIVE_SLOTS * 100
    assert tracker.tracked(200.0, MAX_WINDOW) <= LIVE_SLOTS * 100


# --- one slot: the space-saving guarantees --------------------------------------------------


@settings(max_examples=300, deadline=None, phases=PHASES)
@given(capacity=st.integers(1, 6), stream=events(SKEWED, 150, DENSE), start=START)
def test_each_slot_keeps_its_heavy_hitters_within_bounds(
    capacity: int, stream: list[Event], start: float
) -> None:
    tracker = TopTalkers(capacity, SLOT, MAX_WINDOW)
    model = Model()
    feed(tracker, model, stream, start)
    for slot in tracker._slots:
        exact = model.slots[slot.index]
        total = sum(figures.hits for figures in exact.values())
        assert sum(entry.hits for entry in slot.table.values()) == total
        floor = min(entry.hits for entry in slot.table.values()) if slot.heap else 0
        for ip, figures in exact.items():
            entry = slot.table.get(ip)
            if entry is None:
                assert figures.hits <= floor  # evicted at the min, which only grows
                assert figures.hits * capacity <= total  # so more than N/K is always kept
                continue
            assert entry.hits - entry.error <= figures.hits <= entry.hits
            assert figures.refused - entry.error <= entry.refused <= figures.refused
            assert entry.bytes <= figures.bytes
            if entry.error == 0:
                assert (entry.hits, entry.refused, entry.bytes) == (
                    figures.hits,
                    figures.refused,
                    figures.bytes,
                )


# --- windows: merged bounds, exactness, sorting ---------------------------------------------


def assert_window_bounds(
    tracker: TopTalkers, model: Model, now: float, window: float, started: float
) -> None:
    rows = everything(tracker, now, window)
    exact = model.window(now, window)
    assert tracker.tracked(now, window) == len(rows)
    assert set(rows) <= set(exact)
    total = sum(figures.hits for figures in exact.values())
    evicted = any(
        len(model.slots[index]) > tracker.capacity for index in model.window_slots(now, window)
    )
    first = model.index(now - window)
    span = max(now - max(first * SLOT, started), MIN_RATE_SPAN)
    for ip, figures in exact.items():
        row = rows.get(ip)
        if row is None:
            assert figures.hits * tracker.capacity <= total
            continue
        bound = row["error_bound"]
        hits = row["requests"] + row["refused"]
        assert figures.hits <= hits <= figures.hits + bound
        assert figures.requests <= row["requests"] <= figures.requests + bound
        for name in ("refused", "limited", "status_4xx", "status_5xx"):
            assert getattr(figures, name) - bound <= row[name] <= getattr(figures, name)
        assert row["bytes"] <= figures.bytes
        assert row["rps"] == round(row["requests"] / span, 2)
        if not evicted:
            assert bound == 0
        if bound == 0:
            assert {name: row[name] for name in FIGURES} == {
                name: getattr(figures, name) for name in FIGURES
            }
            assert row["last_path"] == figures.last_path


@settings(max_examples=300, deadline=None, phases=PHASES)
@given(
    capacity=st.integers(1, 6),
    stream=st.one_of(events(SKEWED), events(SKEWED, gap=DENSE)),
    start=START,
    queries=st.lists(
        st.tuples(st.integers(0, 300), st.sampled_from([2.5, 5.0, 10.0, 17.25, 60.0])),
        min_size=1,
        max_size=4,
    ),
)
def test_windowed_figures_bound_the_truth(
    capacity: int,
    stream: list[Event],
    start: float,
    queries: list[tuple[int, float]],
) -> None:
    tracker = TopTalkers(capacity, SLOT, MAX_WINDOW, started=start)
    model = Model()
    last = feed(tracker, model, stream, start)
    for later, window in queries:
        assert_window_bounds(tracker, model, last + later / 4, window, start)


# (quarter-seconds since the previous report, address, statuses of its requests, refusals)
Batch = tuple[int, int, list[int], int]
BATCHES = st.lists(
    st.tuples(
        DENSE,
        SKEWED,
        st.lists(st.sampled_from(STATUSES), max_size=6),
        st.integers(0, 3),
    ).filter(lambda batch: batch[2] or batch[3]),
    max_size=80,
)


@settings(max_examples=200, deadline=None, phases=PHASES)
@given(capacity=st.integers(1, 6), batches=BATCHES, start=START, later=st.integers(0, 40))
def test_batched_reports_bound_the_truth(
    capacity: int, batches: list[Batch], start: float, later: int
) -> None:
    """What the core sends: a connection's requests and route refusals in one `add`."""
    tracker = TopTalkers(capacity, SLOT, MAX_WINDOW, started=start)
    model = Model()
    t = start
    for gap, address, statuses, refused in batches:
        t += gap / 4
        ip = f"10.0.{address >> 8 & 255}.{address & 255}"
        for status in statuses:
            model.request(ip, t, status, 100, "/batch")
        for _ in range(refused):
            model.refused(ip, t)
        s4xx = sum(400 <= status < 500 for status in statuses)
        s5xx = sum(status >= 500 for status in statuses)
        limited = sum(status == 429 for status in statuses)
        tracker.add(
            ip, t, len(statuses), 100 * len(statuses), s4xx, s5xx, "/batch", refused, limited
        )
    for window in (5.0, 10.0, 60.0):
        assert_window_bounds(tracker, model, t + later / 4, window, start)


@settings(max_examples=200, deadline=None, phases=PHASES)
@given(capacity=st.integers(1, 12), data=st.data(), start=START)
def test_exact_while_addresses_fit(capacity: int, data: st.DataObject, start: float) -> None:
    stream = data.draw(events(st.integers(0, capacity - 1)))
    tracker = TopTalkers(capacity, SLOT, MAX_WINDOW, started=start)
    model = Model()
    now = start
    for now in play(tracker, model, stream, start):
        if data.draw(st.booleans()):
            window = data.draw(st.sampled_from([10.0, 60.0]))
            rows = everything(tracker, now, window)
            exact = model.window(now, window)
            assert set(rows) == set(exact)
            assert tracker.tracked(now, window) == len(exact)
            for ip, row in rows.items():
                assert row["error_bound"] == 0
                assert {name: row[name] for name in FIGURES} == {
                    name: getattr(exact[ip], name) for name in FIGURES
                }
                assert row["last_path"] == exact[ip].last_path


@settings(max_examples=150, deadline=None, phases=PHASES)
@given(
    capacity=st.integers(1, 6),
    stream=events(SKEWED),
    limit=st.integers(0, 8),
    sort=st.sampled_from(SORTS),
)
def test_sorted_descending_and_limited(
    capacity: int, stream: list[Event], limit: int, sort: str
) -> None:
    tracker = TopTalkers(capacity, SLOT, MAX_WINDOW, started=0.0)
    now = feed(tracker, None, stream, 0.0)
    full = tracker.top(now, MAX_WINDOW, 10**9, sort)
    top = tracker.top(now, MAX_WINDOW, limit, sort)
    assert len(top) == min(limit, len(full))

    def key(row: dict) -> int:
        return {
            "requests": row["requests"],
            "bytes": row["bytes"],
            "errors": row["status_4xx"] + row["status_5xx"],
        }[sort]

    keys = [key(row) for row in full]
    assert keys == sorted(keys, reverse=True)
    assert [key(row) for row in top] == keys[:limit]
    for row in top:
        assert set(row) == {
            "ip",
            "requests",
            "rps",
            "bytes",
            "status_4xx",
            "status_5xx",
            "refused",
            "limited",
            "last_path",
            "error_bound",
        }


# --- examples -------------------------------------------------------------------------------


def test_a_window_leaves_out_events_before_its_slots() -> None:
    tracker = TopTalkers(10, SLOT, MAX_WINDOW, started=0.0)
    request(tracker, "10.0.0.1", 1.0, 200, 100, "/old")  # slot 0
    request(tracker, "10.0.0.1", 12.0, 200, 10, "/new")  # slot 2
    request(tracker, "10.0.0.2", 13.0, 200, 10, "/")
    # at 21: the 10 s window starts in slot 2 (11 s), so it has 12.0 and 13.0, not 1.0
    assert {row["ip"]: row["requests"] for row in tracker.top(21.0, 10.0, 10, "requests")} == {
        "10.0.0.1": 1,
        "10.0.0.2": 1,
    }
    assert tracker.top(21.0, 10.0, 10, "bytes")[0]["bytes"] == 10
    assert tracker.top(21.0, 60.0, 10, "requests")[0] == {
        "ip": "10.0.0.1",
        "requests": 2,
        "rps": 0.1,  # 2 requests over the 21 s since the start
        "bytes": 110,
        "status_4xx": 0,
        "status_5xx": 0,
        "refused": 0,
        "limited": 0,
        "last_path": "/new",
        "error_bound": 0,
    }
    assert tracker.tracked(21.0, 10.0) == 2
    assert tracker.top(40.0, 10.0, 10, "requests") == []
    assert tracker.tracked(40.0, 10.0) == 0
    request(tracker, "10.0.0.3", 70.0, 200, 10, "/")  # slot 14: slot 0 is dropped
    assert [slot.index for slot in tracker._slots] == [2, 14]
    assert tracker.tracked(70.0, 60.0) == 3


def test_rps_divides_by_the_time_the_slots_cover() -> None:
    tracker = TopTalkers(10, SLOT, MAX_WINDOW, started=100.0)
    for i in range(30):
        request(tracker, "10.0.0.1", 101.0 + i / 10, 200, 1, "/")
    # running for 4 s only: 30 / 4
    assert tracker.top(104.0, 10.0, 1, "requests")[0]["rps"] == 7.5
    # at 112.5 the 10 s window starts at slot 20 (100 s): 30 / 12.5
    assert tracker.top(112.5, 10.0, 1, "requests")[0]["rps"] == 2.4
    # at 115 it starts at slot 21 (105 s): the requests at 101-104 are out of it
    assert tracker.top(115.0, 10.0, 1, "requests") == []
    # a rate over less than MIN_RATE_SPAN is not extrapolated
    tracker = TopTalkers(10, SLOT, MAX_WINDOW, started=100.0)
    request(tracker, "10.0.0.1", 100.0, 200, 1, "/")
    assert tracker.top(100.25, 10.0, 1, "requests")[0]["rps"] == 1 / MIN_RATE_SPAN
    # without `started`, the first event starts the clock
    tracker = TopTalkers(10, SLOT, MAX_WINDOW)
    request(tracker, "10.0.0.1", 1000.0, 200, 1, "/")
    request(tracker, "10.0.0.1", 1001.0, 200, 1, "/")
    assert tracker.top(1004.0, 60.0, 1, "requests")[0]["rps"] == 0.5


def test_sort_keys_and_their_ties() -> None:
    tracker = TopTalkers(10, SLOT, MAX_WINDOW, started=0.0)
    for _ in range(5):
        request(tracker, "10.0.0.1", 1.0, 200, 10, "/")  # most requests
    for _ in range(2):
        request(tracker, "10.0.0.2", 1.0, 200, 10_000, "/big")  # most bytes
    for status in (404, 500, 503):
        request(tracker, "10.0.0.3", 1.0, status, 1, "/x")  # most errors
    request(tracker, "10.0.0.4", 1.0, 404, 0, "/y")  # one error, fewer requests than .3
    request(tracker, "10.0.0.5", 1.0, 200, 10, "/z")  # ties .4 on requests, more bytes

    def order(sort: str, limit: int = 10) -> list[str]:
        return [row["ip"] for row in tracker.top(2.0, 10.0, limit, sort)]

    assert order("requests") == ["10.0.0.1", "10.0.0.3", "10.0.0.2", "10.0.0.5", "10.0.0.4"]
    assert order("bytes") == ["10.0.0.2", "10.0.0.1", "10.0.0.5", "10.0.0.3", "10.0.0.4"]
    assert order("errors") == ["10.0.0.3", "10.0.0.4", "10.0.0.1", "10.0.0.2", "10.0.0.5"]
    assert order("errors", 2) == ["10.0.0.3", "10.0.0.4"]
    assert order("bytes", 0) == []
    row = tracker.top(2.0, 10.0, 1, "errors")[0]
    assert (row["status_4xx"], row["status_5xx"]) == (1, 2)


def test_refusals_count_apart_from_requests() -> None:
    tracker = TopTalkers(10, SLOT, MAX_WINDOW, started=0.0)
    for _ in range(4):
        tracker.refused("10.0.0.9", 1.0)
    request(tracker, "10.0.0.8", 1.0, 200, 5, "/ok")
    tracker.refused("10.0.0.8", 2.0)
    rows = everything(tracker, 3.0, 10.0)
    assert rows["10.0.0.9"]["refused"] == 4
    assert rows["10.0.0.9"]["requests"] == 0
    assert rows["10.0.0.9"]["last_path"] == ""
    assert (rows["10.0.0.8"]["requests"], rows["10.0.0.8"]["refused"]) == (1, 1)
    assert rows["10.0.0.8"]["last_path"] == "/ok"


def test_last_path_is_the_latest_request_path() -> None:
    tracker = TopTalkers(10, SLOT, MAX_WINDOW, started=0.0)
    request(tracker, "10.0.0.1", 1.0, 200, 1, "/first")
    request(tracker, "10.0.0.1", 2.0, 200, 1, "/second")
    assert everything(tracker, 3.0, 10.0)["10.0.0.1"]["last_path"] == "/second"
    request(tracker, "10.0.0.1", 6.0, 200, 1, "/" + "x" * 9000)  # the next slot
    assert everything(tracker, 7.0, 10.0)["10.0.0.1"]["last_path"] == "/" + "x" * (PATH_LIMIT - 1)
    tracker.refused("10.0.0.1", 11.0)  # a slot with only a refusal keeps the older path
    assert everything(tracker, 12.0, 10.0)["10.0.0.1"]["last_path"] == "/" + "x" * (PATH_LIMIT - 1)


def test_eviction_replaces_the_fewest_hits_and_bounds_the_newcomer() -> None:
    tracker = TopTalkers(2, SLOT, MAX_WINDOW, started=0.0)
    for ip, times in (("10.0.0.1", 5), ("10.0.0.2", 1)):
        for _ in range(times):
            request(tracker, ip, 1.0, 200, 1, "/")
    request(tracker, "10.0.0.2", 1.0, 200, 1, "/")  # .2 now has 2, .1 has 5
    request(tracker, "10.0.0.3", 1.0, 200, 7, "/new")  # evicts .2 (2 hits)
    rows = everything(tracker, 2.0, 10.0)
    assert set(rows) == {"10.0.0.1", "10.0.0.3"}
    assert (rows["10.0.0.1"]["requests"], rows["10.0.0.1"]["error_bound"]) == (5, 0)
    assert (rows["10.0.0.3"]["requests"], rows["10.0.0.3"]["error_bound"]) == (3, 2)
    assert rows["10.0.0.3"]["bytes"] == 7
    # .2 in the next slot: slot 0 (min 3 now) evicted and lacks .2, which may have had up to
    # 3 hits there (it had 2); slot 1 never evicted, so lacking .3 adds nothing to .3
    request(tracker, "10.0.0.2", 6.0, 200, 1, "/")
    rows = everything(tracker, 7.0, 10.0)
    assert (rows["10.0.0.2"]["requests"], rows["10.0.0.2"]["error_bound"]) == (4, 3)
    assert (rows["10.0.0.3"]["requests"], rows["10.0.0.3"]["error_bound"]) == (3, 2)


def test_eviction_finds_the_min_behind_stale_heap_records() -> None:
    tracker = TopTalkers(2, SLOT, MAX_WINDOW, started=0.0)
    for ip, times in (("10.0.0.1", 5), ("10.0.0.2", 1), ("10.0.0.3", 1)):
        for _ in range(times):
            request(tracker, ip, 1.0, 200, 1, "/")
    # .3 evicted .2 (1 hit) and has 2 hits; its heap record says 2 after these 4 more
    for _ in range(4):
        request(tracker, "10.0.0.3", 1.0, 200, 1, "/")
    request(tracker, "10.0.0.4", 1.0, 200, 1, "/")  # so the min is .1 with 5, not .3
    rows = everything(tracker, 2.0, 10.0)
    assert {ip: (row["requests"], row["error_bound"]) for ip, row in rows.items()} == {
        "10.0.0.3": (6, 1),
        "10.0.0.4": (6, 5),
    }


def test_slot_bounds_are_the_float_products_whatever_the_slot_size() -> None:
    # 0.1 is inexact: 37157.1 / 0.1 rounds below 371571 while 371571 * 0.1 <= 37157.1, and
    # 245.6 / 0.1 rounds up to 2456 while 2456 * 0.1 > 245.6
    for now in (37157.1, 245.6):
        tracker = TopTalkers(10, 0.1, MAX_WINDOW)
        request(tracker, "10.0.0.1", now, 200, 1, "/")
        request(tracker, "10.0.0.1", now, 200, 1, "/")
        [slot] = tracker._slots
        assert slot.index * 0.1 <= now < (slot.index + 1) * 0.1
        assert slot.table["10.0.0.1"].hits == 2


def test_a_query_merges_no_more_slots_than_are_kept() -> None:
    # with 0.1 s slots, 1042.8 - 60 lands 601 slots back: one more than the 600 kept
    now = 1042.8
    tracker = TopTalkers(10, 0.1, MAX_WINDOW, started=0.0)
    current = tracker._slot_index(now)
    request(tracker, "10.0.0.1", (current - 600.5) * 0.1, 200, 1, "/")
    assert tracker.tracked(now, MAX_WINDOW) == 0  # as it is once slot `current` opens:
    request(tracker, "10.0.0.2", now, 200, 1, "/")
    assert [row["ip"] for row in tracker.top(now, MAX_WINDOW, 10, "requests")] == ["10.0.0.2"]


def test_clear_forgets_and_restarts_the_rate_clock() -> None:
    tracker = TopTalkers(10, SLOT, MAX_WINDOW, started=0.0)
    request(tracker, "10.0.0.1", 1.0, 200, 1, "/")
    tracker.clear(50.0)
    assert tracker.top(51.0, 60.0, 10, "requests") == []
    assert tracker.tracked(51.0, 60.0) == 0
    request(tracker, "10.0.0.2", 51.0, 200, 1, "/")
    request(tracker, "10.0.0.2", 52.0, 200, 1, "/")
    assert tracker.top(54.0, 60.0, 10, "requests")[0]["rps"] == 0.5  # 2 over 4 s


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        TopTalkers(0)
    with pytest.raises(ValueError):
        TopTalkers(10, slot_seconds=0.0)
    with pytest.raises(ValueError):
        TopTalkers(10, slot_seconds=90.0, max_window=60.0)
    tracker = TopTalkers(10)
    with pytest.raises(ValueError):
        tracker.top(1.0, 10.0, 10, "latency")
    with pytest.raises(ValueError):
        tracker.top(1.0, 61.0, 10, "requests")
    with pytest.raises(ValueError):
        tracker.top(1.0, 0.0, 10, "requests")
    with pytest.raises(ValueError):
        tracker.top(1.0, 10.0, -1, "requests")
    with pytest.raises(ValueError):
        tracker.tracked(1.0, 120.0)
