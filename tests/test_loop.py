"""The loop's timers and cross-thread wake-up, driven by hand (no sockets needed)."""

from __future__ import annotations

import threading

import pytest

from xps_server.core import loop as loop_module
from xps_server.core.loop import Loop


@pytest.fixture
def loop():
    loop = Loop()
    yield loop
    loop.close()


def advance(loop: Loop, seconds: float) -> None:
    loop.now += seconds
    loop._run_timers()


def test_timers_fire_in_deadline_order_and_only_once(loop):
    fired = []
    for name, delay in (("b", 2.0), ("a", 1.0), ("c", 3.0)):
        loop.call_later(delay, lambda n=name: fired.append(n))
    advance(loop, 1.5)
    assert fired == ["a"]
    advance(loop, 5)
    assert fired == ["a", "b", "c"]
    advance(loop, 5)
    assert fired == ["a", "b", "c"]


def test_reset_later_is_lazy_and_earlier_takes_effect(loop):
    fired = []
    timer = loop.timer(lambda: fired.append(loop.now))
    timer.reset(loop.now + 1)
    timer.reset(loop.now + 3)  # later: an attribute write, the old entry re-arms itself
    assert len(loop._heap) == 1
    advance(loop, 1.5)
    assert fired == []
    advance(loop, 2)
    assert len(fired) == 1
    timer.reset(loop.now + 5)
    timer.reset(loop.now + 1)  # earlier: a new entry wins
    advance(loop, 1.5)
    assert len(fired) == 2


def test_cancel_and_close(loop):
    fired = []
    cancelled = loop.call_later(1, lambda: fired.append("cancelled"))
    closed = loop.call_later(1, lambda: fired.append("closed"))
    cancelled.cancel()
    closed.close()
    advance(loop, 2)
    assert fired == []
    cancelled.reset(loop.now + 1)
    advance(loop, 2)
    assert fired == ["cancelled"]


def test_compaction_drops_dead_entries_and_keeps_every_live_timer(loop, monkeypatch):
    monkeypatch.setattr(loop_module, "COMPACT_AFTER", 10)
    fired = []
    live = [loop.call_later(5 + i, lambda i=i: fired.append(i)) for i in range(5)]
    parked = loop.timer(lambda: fired.append("parked"))
    parked.reset(loop.now + 7)
    parked.cancel()  # cancelled, not closed: it may be armed again after the rebuild
    for _ in range(100):
        loop.call_later(60, lambda: fired.append("dead")).close()
    assert loop._stale == 100
    loop.call_soon_threadsafe(loop.stop)
    loop.run()  # one turn: the rebuild happens between events
    assert loop._stale == 0
    assert len(loop._heap) == len(live)
    parked.reset(loop.now + 8.5)  # later than its dropped entry: must still get a new one
    advance(loop, 100)
    assert fired == [0, 1, 2, 3, "parked", 4]


def test_another_thread_hands_the_loop_work(loop):
    seen = []

    def from_thread() -> None:
        loop.call_soon_threadsafe(lambda: seen.append(threading.current_thread().name))
        loop.call_soon_threadsafe(loop.stop)

    worker = threading.Thread(target=from_thread, name="worker")
    worker.start()
    loop.run()  # blocks in epoll until the wake-up fd fires
    worker.join()
    assert seen == [threading.main_thread().name]


def test_a_failing_callback_does_not_stop_the_loop(loop):
    fired = []

    def boom() -> None:
        raise RuntimeError("bug")

    loop.call_later(1, boom)
    loop.call_later(2, lambda: fired.append("after"))
    advance(loop, 3)
    assert fired == ["after"]
