"""Latency histograms and traffic generations (xps_server/traffic.py), against exact models."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from xps_server.traffic import (
    BUCKETS,
    PROMETHEUS_OCTAVES,
    Generation,
    TrafficStats,
    bucket_of,
    bucket_upper,
    percentile_ms,
    prometheus_buckets,
)

latencies_us = st.integers(0, 1 << 52)


@given(latencies_us)
def test_a_latency_lies_below_its_bucket_upper_bound_and_above_the_previous(us):
    index = bucket_of(us)
    assert 0 <= index < BUCKETS
    if index < BUCKETS - 1:  # the last bucket is open-ended
        assert us < bucket_upper(index)
        # At most 25 % wide: the bound over-states a latency by no more than that.
        assert bucket_upper(index) <= max(us + 1, math.ceil(us * 1.25) + 1)
    if index > 0:
        assert us >= bucket_upper(index - 1)


@given(latencies_us, latencies_us)
def test_buckets_keep_the_order_of_latencies(a, b):
    if a <= b:
        assert bucket_of(a) <= bucket_of(b)


def test_bucket_bounds_rise_without_gaps():
    assert [bucket_upper(i) for i in range(8)] == list(range(1, 9))
    for index in range(1, BUCKETS):
        assert bucket_upper(index) > bucket_upper(index - 1)
        assert bucket_of(bucket_upper(index - 1)) == index  # the next latency opens the next


@settings(max_examples=200)
@given(
    st.lists(st.integers(0, 10_000_000), min_size=1, max_size=300),
    st.sampled_from([0.5, 0.95, 0.99]),
)
def test_percentiles_never_under_state_and_stay_within_a_bucket(latencies, quantile):
    stats = TrafficStats(0.0)
    for us in latencies:
        stats.record(200, (us + 0.5) / 1_000_000)  # half a microsecond: no float rounding down
    got = stats.recent(1.0)[f"p{round(quantile * 100)}_ms"]
    exact = sorted(latencies)[max(1, round(quantile * len(latencies))) - 1]
    assert got is not None
    assert got * 1000 > exact  # the bucket's upper bound: strictly above the exact value
    assert got * 1000 <= bucket_upper(bucket_of(exact))


def test_generations_rotate_into_totals_and_recent_covers_two():
    stats = TrafficStats(0.0)
    for _ in range(10):
        stats.record(200, 0.001)
    stats.record(503, 0.002)
    stats.rotate(10.0)
    for _ in range(4):
        stats.record(404, 0.001)
    stats.rotate(20.0)
    stats.record(200, 0.001)
    summary = stats.summary(25.0)
    # Totals: everything since the start.
    assert (summary["requests"], summary["status_4xx"], summary["status_5xx"]) == (16, 4, 1)
    # Recent: the previous generation (10 s to 20 s) and the current one, over 15 s.
    assert summary["rps"] == round(5 / 15, 2)
    assert summary["error_pct"] == 0.0
    assert summary["p50_ms"] == percentile_ms(stats.cumulative().buckets, 1, 0.5)


def test_an_idle_window_has_no_percentiles_and_no_rate():
    stats = TrafficStats(0.0)
    stats.record(200, 0.001)
    stats.rotate(10.0)
    stats.rotate(20.0)
    recent = stats.recent(21.0)
    assert recent == {"rps": 0.0, "error_pct": None, "p50_ms": None, "p95_ms": None, "p99_ms": None}
    assert stats.summary(21.0)["requests"] == 1


@given(st.lists(latencies_us, max_size=200))
def test_prometheus_buckets_are_cumulative_at_their_bounds(latencies):
    generation = Generation(0.0)
    for us in latencies:
        generation.buckets[bucket_of(us)] += 1
    rows = prometheus_buckets(generation)
    assert [le for le, _ in rows[:-1]] == [f"{(1 << o) / 1e6:g}" for o in PROMETHEUS_OCTAVES]
    for (le, count), octave in zip(rows, PROMETHEUS_OCTAVES, strict=False):
        assert count == sum(1 for us in latencies if us < (1 << octave)), le
    assert rows[-1] == ("+Inf", len(latencies))


@given(st.integers(0, 1 << 40))  # a float holds these microseconds plus a half exactly
def test_record_files_a_latency_where_bucket_of_says(us):
    stats = TrafficStats(0.0)
    stats.record(200, (us + 0.5) / 1_000_000)
    assert stats.current.buckets[bucket_of(us)] == 1
