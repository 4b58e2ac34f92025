"""Saving the state file off the loop thread, many changes per fsync, and saying when it is done.

The loop never touches the disk for a runtime change. The runtime calls `changed()` after each
one: it counts the change (a sequence number) and, unless a write is already under way, asks
for one at the end of the loop turn. Only then is the snapshot built (the runtime's `snapshot`
callback: the state file's path and content), so a burst of commands in one turn costs one
snapshot. The snapshot goes to a writer thread through a deque and an eventfd, as the access
log does (no lock on the loop thread); the thread runs `save_state` (temporary file, fsync,
rename, fsync of the folder) and posts the outcome back with `loop.call_soon_threadsafe`. One
write is under way at a time: changes made meanwhile go out together in the next one, so one
fsync covers any number of them (group commit) and a disk slower than the commands never
queues more than one snapshot.

`when_durable(callback)` is how a transport learns that the state as it is now is on disk: the
callback runs on the loop thread, at once if nothing is waiting to be written, else once the
write that covers the latest change has finished; it gets True (written and fsynced) or False
(that write failed, or a later change has not been written since a failure). Callbacks are
called in the order they were registered, at most `WAKE_BATCH` per loop turn.

`close()` (after the loop has stopped) writes whatever is not on disk yet and waits for it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from xps_server.server.state import save_state

if TYPE_CHECKING:
    from xps_server.core.loop import Loop

log = logging.getLogger("xps.state")

WAKE_BATCH = 256  # durability callbacks run per loop turn; the rest wait for the next turn
CLOSE_TIMEOUT = 5.0

# The state file's path (None: there is none) and what builds its content, off the loop.
Snapshot = Callable[[], tuple[str | None, Callable[[], dict[str, Any]]]]
Durable = Callable[[bool | None], None]


class StateWriter:
    """The state file's writer thread and the loop-side bookkeeping of what is on disk."""

    def __init__(self, loop: Loop, snapshot: Snapshot) -> None:
        self.loop = loop
        self._snapshot = snapshot
        self.changes = 0  # sequence number of the latest change
        self.written = 0  # sequence number the latest finished write covered
        self.outcome: bool | None = True  # of that write; the loaded file counts as written
        self._writing = False  # a snapshot is with the writer thread
        self._scheduled = False  # a hand-over waits for the end of this loop turn
        self._waking = False  # callbacks past WAKE_BATCH wait for the next turn
        self._waiters: deque[tuple[int, Durable]] = deque()
        self._thread: threading.Thread | None = None
        self._wake = -1
        self._queue: deque[tuple[int, str, Callable[[], dict[str, Any]]] | None] = deque()
        # Taken by the writer per write and by `close` once; never by the loop thread.
        self._lock = threading.Lock()
        self._closed = False
        self._failing = False  # the writer's latest write failed (to log only transitions)

    # --- the loop side -------------------------------------------------------------------------
    def changed(self) -> None:
        """The runtime state changed: it goes to disk soon (loop thread)."""
        self.changes += 1
        self._want_write()

    def when_durable(self, callback: Durable) -> None:
        """Call `callback(outcome)` once the state as it is now has been written (loop thread)."""
        if self.written >= self.changes and not self._waiters:
            callback(self.outcome)
            return
        self._waiters.append((self.changes, callback))
        self._want_write()

    def _want_write(self) -> None:
        if not (self._scheduled or self._writing or self._closed):
            self._scheduled = True
            self.loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        self._scheduled = False
        if self._writing or self.written >= self.changes:
            return
        seq = self.changes
        path, build = self._snapshot()
        if path is None:
            self._finished(seq, None)  # no state file (any more): nothing to wait for
            return
        self._writing = True
        self._start_thread()
        self._queue.append((seq, path, build))
        os.eventfd_write(self._wake, 1)

    def _finished(self, seq: int, outcome: bool | None) -> None:
        """A write ended (posted by the writer thread): tell who waited, hand over the next."""
        self._writing = False
        self.written = seq
        self.outcome = outcome
        self._wake_waiters()
        if self.changes > seq:
            self._want_write()

    def _wake_waiters(self) -> None:
        self._waking = False
        waiters = self._waiters
        written = self.written
        for _ in range(WAKE_BATCH):
            if not waiters or waiters[0][0] > written:
                return
            _, callback = waiters.popleft()
            try:
                callback(self.outcome)
            except Exception:
                log.exception("state file callback failed")
        if waiters and waiters[0][0] <= written and not self._waking:
            self._waking = True
            self.loop.call_soon(self._wake_waiters)

    # --- the writer thread ---------------------------------------------------------------------
    def _start_thread(self) -> None:
        if self._thread is None:
            self._wake = os.eventfd(0, os.EFD_CLOEXEC)  # blocking on the writer's side
            self._thread = threading.Thread(target=self._run, name="xps-state", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        queue = self._queue
        try:
            while True:
                os.eventfd_read(self._wake)
                latest = None
                done = False
                while queue:
                    item = queue.popleft()
                    if item is None:
                        done = True
                    else:
                        latest = item  # an older snapshot still waiting is superseded
                if latest is not None:
                    self._write(*latest)
                if done:
                    return
        finally:
            with self._lock:
                os.close(self._wake)

    def _write(self, seq: int, path: str, build: Callable[[], dict[str, Any]]) -> None:
        try:
            save_state(path, build())
        except OSError as exc:
            ok = False
            if not self._failing:
                log.error("cannot write the state file %s: %s", path, exc)
        else:
            ok = True
            if self._failing:
                log.warning("state file %s written again", path)
        self._failing = not ok
        with self._lock:
            if not self._closed:
                self.loop.call_soon_threadsafe(partial(self._finished, seq, ok))

    # --- shutdown -------------------------------------------------------------------------------
    def close(self) -> None:
        """Write what is not on disk yet and stop the writer (after the loop has stopped)."""
        if self._closed:
            return
        if self.written < self.changes:
            path, build = self._snapshot()
            if path is not None:
                self._start_thread()
                self._queue.append((self.changes, path, build))
        thread = self._thread
        if thread is None:
            self._closed = True
            return
        with self._lock:
            self._closed = True  # the loop is gone: outcomes are no longer posted to it
            self._queue.append(None)
            os.eventfd_write(self._wake, 1)
        # A writer wedged on the disk is a daemon thread: after the timeout, leave it.
        thread.join(CLOSE_TIMEOUT)
