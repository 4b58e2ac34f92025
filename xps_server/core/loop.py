"""The event loop: edge-triggered epoll dispatch, deadline timers and a cross-thread wake-up fd.

One loop thread does all I/O. Handlers are registered per file descriptor and called with the
epoll event mask. Timers are lazy: pushing a deadline later is an attribute write, and the heap
entry re-arms itself when it comes due, so a keep-alive connection costs no heap work per request.
"""

from __future__ import annotations

import gc
import heapq
import logging
import os
import select
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("xps.loop")

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLET = select.EPOLLET
EPOLLRDHUP = select.EPOLLRDHUP
EPOLLHUP = select.EPOLLHUP
EPOLLERR = select.EPOLLERR

Handler = Callable[[int], None]

COMPACT_AFTER = 1024  # dead timer entries tolerated before the heap is rebuilt


def tune_gc() -> None:
    """Make cyclic garbage collection rare; call once the server is built.

    Closing a connection breaks every reference cycle of its session, so requests leave no
    cyclic garbage and the collector's passes only re-scan live sessions: with 10,000 open
    they stop every thread for a few hundred milliseconds. Freeze what exists (config,
    modules, caches) out of those passes and raise the thresholds so full passes are rare.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


class Timer:
    """A deadline on the loop's clock; move it with `reset`, stop it with `cancel`."""

    __slots__ = ("_loop", "callback", "deadline", "queued_at")

    def __init__(self, loop: Loop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self.callback = callback
        self.deadline: float | None = None
        self.queued_at: float | None = None  # `when` of this timer's live heap entry

    def reset(self, deadline: float) -> None:
        """Fire at `deadline` (loop clock) instead of any earlier setting."""
        self.deadline = deadline
        queued = self.queued_at
        if queued is None or deadline < queued:
            self._loop._push_timer(self, deadline)

    def cancel(self) -> None:
        self.deadline = None

    def close(self) -> None:
        """Cancel for good: drop the callback, and let the loop know its heap entry is dead."""
        self.deadline = None
        self.callback = _noop
        if self.queued_at is not None:
            self._loop._stale += 1


def _noop() -> None:
    pass


class Loop:
    """epoll in edge-triggered mode plus timers and thread-safe `call_soon_threadsafe`."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.handlers: dict[int, Handler] = {}
        self.now = time.monotonic()
        self.turn = 0  # the loop's turns so far: one poll and what it woke each
        self.running = False
        self._heap: list[tuple[float, int, Timer]] = []
        self._stale = 0  # heap entries of closed timers, waiting for their deadline
        self._seq = 0
        self._posted: deque[Callable[[], None]] = deque()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.add(self._wake_fd, EPOLLIN | EPOLLET, self._on_wake)

    # --- file descriptors -------------------------------------------------------------------
    def add(self, fd: int, mask: int, handler: Handler) -> None:
        self.handlers[fd] = handler
        self.epoll.register(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        self.epoll.modify(fd, mask)

    def remove(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            try:
                self.epoll.unregister(fd)
            except OSError:
                pass  # already closed: the kernel dropped it from the set

    # --- timers -----------------------------------------------------------------------------
    def timer(self, callback: Callable[[], None]) -> Timer:
        return Timer(self, callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(self, callback)
        timer.reset(self.now + delay)
        return timer

    def _push_timer(self, timer: Timer, when: float) -> None:
        self._seq += 1
        timer.queued_at = when
        heapq.heappush(self._heap, (when, self._seq, timer))

    def _compact(self) -> None:
        """Drop dead entries (closed timers of closed connections) in one O(n) pass, so
        connection churn cannot grow the heap by a timeout's worth of closed sessions."""
        live = []
        for entry in self._heap:
            timer = entry[2]
            if timer.queued_at != entry[0]:
                continue  # superseded by a later entry for the same timer
            if timer.deadline is None:
                timer.queued_at = None  # cancelled: its next reset pushes afresh
                continue
            live.append(entry)
        heapq.heapify(live)
        self._heap = live
        self._stale = 0

    def _run_timers(self) -> None:
        heap = self._heap
        now = self.now
        while heap and heap[0][0] <= now:
            when, _, timer = heapq.heappop(heap)
            if timer.queued_at != when:
                continue  # superseded by an earlier entry for the same timer
            timer.queued_at = None
            deadline = timer.deadline
            if deadline is None:
                if timer.callback is _noop:
                    self._stale -= 1  # a closed timer's entry, gone the ordinary way
                continue
            if deadline > now:
                self._push_timer(timer, deadline)
                continue
            timer.deadline = None
            try:
                timer.callback()
            except Exception:
                log.exception("timer callback failed")

    def _poll_timeout(self) -> float:
        if self._posted:
            return 0
        heap = self._heap
        if not heap:
            return -1
        return max(0.0, heap[0][0] - time.monotonic())

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the next turn of the loop (loop thread only): a way to yield."""
        self._posted.append(callback)

    # --- cross-thread hand-off --------------------------------------------------------------
    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the loop thread soon; safe from any thread or a signal handler."""
        self._posted.append(callback)
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass  # counter saturated or loop closed: the callback is queued either way

    def _on_wake(self, _events: int) -> None:
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass

    def _run_posted(self) -> None:
        posted = self._posted
        for _ in range(len(posted)):
            callback = posted.popleft()
            try:
                callback()
            except Exception:
                log.exception("posted callback failed")

    # --- running ----------------------------------------------------------------------------
    def run(self) -> None:
        """Dispatch events until `stop` is called."""
        self.running = True
        poll = self.epoll.poll
        handlers = self.handlers
        monotonic = time.monotonic
        while self.running:
            events = poll(self._poll_timeout(), 1024)
            self.now = monotonic()
            self.turn += 1
            for fd, mask in events:
                handler = handlers.get(fd)
                if handler is None:
                    continue
                try:
                    handler(mask)
                except Exception:
                    log.exception("handler for fd %d failed", fd)
            if self._heap:
                self._run_timers()
            if self._stale > COMPACT_AFTER and self._stale * 2 > len(self._heap):
                self._compact()
            if self._posted:
                self._run_posted()

    def stop(self) -> None:
        self.running = False

    def close(self) -> None:
        self.remove(self._wake_fd)
        os.close(self._wake_fd)
        self.epoll.close()
