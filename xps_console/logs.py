"""Log records for the event-log panel instead of the terminal the TUI is drawn on.

While the console runs, a `LogBuffer` is the root logger's handler: any thread may log (the
embedded server's loop does); records wait in a bounded deque, and the UI drains them on the
same timer as events, as `{"kind": "log", ...}` entries.
"""

from __future__ import annotations

import logging
from collections import deque

LOG_QUEUE = 1_000


class LogBuffer(logging.Handler):
    """A logging handler that queues records for the UI; never blocks the logging thread."""

    def __init__(self, level: int = logging.NOTSET, maxlen: int = LOG_QUEUE) -> None:
        super().__init__(level)
        self.records: deque[dict] = deque(maxlen=maxlen)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                # The panel shows one line; the exception's last line says what went wrong.
                message += " | " + self.format(record).rstrip().splitlines()[-1]
            self.records.append(
                {
                    "kind": "log",
                    "ts": record.created,
                    "level": record.levelname,
                    "logger": record.name,
                    "message": message,
                }
            )
        except Exception:
            self.handleError(record)

    def take(self, limit: int) -> list[dict]:
        records = self.records
        taken = []
        while records and len(taken) < limit:
            try:
                taken.append(records.popleft())
            except IndexError:
                break
        return taken
