"""Log throttling: one line per interval for a failure that can repeat thousands of times a
second (accept out of descriptors, connects out of descriptors), with a count of the rest."""

from __future__ import annotations


class LogThrottle:
    """Say when a repeated failure may be logged again, and how many went unlogged since."""

    __slots__ = ("_logged_at", "_unlogged", "interval")

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._logged_at: float | None = None
        self._unlogged = 0

    def due(self, now: float) -> int | None:
        """Record one failure at `now` (a monotonic clock); the number of failures not logged
        since the last line if this one should be logged, else None."""
        if self._logged_at is not None and now - self._logged_at < self.interval:
            self._unlogged += 1
            return None
        unlogged = self._unlogged
        self._logged_at = now
        self._unlogged = 0
        return unlogged
