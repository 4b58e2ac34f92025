"""The access log: one nginx "combined" line per response, written off the loop thread.

    $remote_addr - - [$time_local] "$request" $status $body_bytes_sent "$http_referer"
    "$http_user_agent"

The loop only formats a line (the time string is rebuilt once a second) and appends it to a
list. The list goes to a writer thread as one batch when it passes `FLUSH_BYTES`, or a second
after its first line: appended to a deque (atomic, no lock) and announced on an eventfd the
writer blocks on. The writer appends the batch to the file (reopened per batch, so a rotated
log is recreated, and its folder made if missing) or to stdout for ``-``. A disk that cannot
keep up never stalls the loop: past `MAX_BATCHES` waiting batches, new ones are dropped and
counted. `close` hands over what is left and waits for the writer.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xps_server.core.loop import Loop
    from xps_server.server.session import Session

log = logging.getLogger("xps.access")

FLUSH_INTERVAL = 1.0  # seconds a line may wait in memory
FLUSH_BYTES = 64 * 1024  # a batch this big goes to the writer at once
MAX_BATCHES = 256  # waiting batches (about 16 MiB) before lines are dropped
CLOSE_TIMEOUT = 5.0

# What nginx escapes in logged fields: quotes, backslashes, control and non-ASCII bytes.
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f-\uffff]').search


def _escape(text: str) -> str:
    if _NEEDS_ESCAPE(text) is None:
        return text
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if ch == '"' or ch == "\\" or code < 0x20 or code > 0x7E:
            if code > 0xFF:
                out.extend(f"\\x{byte:02X}" for byte in ch.encode())
            else:
                out.append(f"\\x{code:02X}")
        else:
            out.append(ch)
    return "".join(out)


class AccessLog:
    """A buffered combined-format log for `path` (a file, or ``-`` for stdout)."""

    def __init__(self, path: str, loop: Loop) -> None:
        self.path = path
        self.loop = loop
        self.lines = 0  # lines formatted
        self.dropped = 0  # lines lost because the writer fell behind
        self.write_errors = 0  # lines lost because the write failed (writer thread)
        self._buffer: list[str] = []
        self._buffered = 0
        self._second = -1
        self._stamp = ""
        self._timer = loop.timer(self.flush)
        self._batches: deque[tuple[bytes, int] | None] = deque()
        self._wake = os.eventfd(0, os.EFD_CLOEXEC)  # blocking on the writer's side
        self._closing = threading.Lock()
        self._closed = False
        self._error_reported = False
        self._thread = threading.Thread(target=self._run, name="xps-access-log", daemon=True)
        self._thread.start()

    # --- the loop side -------------------------------------------------------------------------
    def log(self, session: Session, status: int, body_bytes: int) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(second))
        request = session.request
        if request is None:
            line = f'{session.conn.peer_ip} - - [{self._stamp}] "-" {status} {body_bytes} "-" "-"\n'
        else:
            headers = request.headers
            target = request.target
            referer = headers.get("referer", "-")
            agent = headers.get("user-agent", "-")
            if _NEEDS_ESCAPE(target + referer + agent) is not None:
                target, referer, agent = _escape(target), _escape(referer), _escape(agent)
            line = (
                f'{session.conn.peer_ip} - - [{self._stamp}] "{request.method} {target} '
                f'HTTP/{request.version}" {status} {body_bytes} "{referer}" "{agent}"\n'
            )
        buffer = self._buffer
        buffer.append(line)
        self.lines += 1
        self._buffered += len(line)
        if self._buffered >= FLUSH_BYTES:
            self.flush()
        elif len(buffer) == 1:
            self._timer.reset(self.loop.now + FLUSH_INTERVAL)

    def flush(self) -> None:
        """Hand what is buffered to the writer (dropping it if the writer is too far behind)."""
        buffer = self._buffer
        if not buffer:
            return
        count = len(buffer)
        data = "".join(buffer).encode("ascii", "backslashreplace")
        self._buffer = []
        self._buffered = 0
        self._timer.cancel()
        if len(self._batches) >= MAX_BATCHES:
            self.dropped += count
            return
        self._batches.append((data, count))
        os.eventfd_write(self._wake, 1)

    def close(self, wait: bool = True) -> None:
        """Flush and stop the writer; with `wait`, until it has written everything."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        # Taken once, at close: the writer must not close the eventfd between our append of
        # the end marker and our write to it.
        with self._closing:
            self._batches.append(None)
            os.eventfd_write(self._wake, 1)
        if wait:
            # A writer wedged on the disk is a daemon thread: after the timeout, leave it.
            self._thread.join(CLOSE_TIMEOUT)

    def stats(self) -> dict[str, int]:
        return {
            "access_log_lines": self.lines,
            "access_log_dropped": self.dropped + self.write_errors,
        }

    # --- the writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        batches = self._batches
        try:
            while True:
                os.eventfd_read(self._wake)  # blocks until the loop hands something over
                # Whatever is waiting goes out in one write.
                batch: list[tuple[bytes, int]] = []
                while batches:
                    item = batches.popleft()
                    if item is None:
                        if batch:
                            self._write(batch)
                        return
                    batch.append(item)
                if batch:
                    self._write(batch)
        finally:
            with self._closing:
                os.close(self._wake)

    def _write(self, batch: list[tuple[bytes, int]]) -> None:
        data = b"".join(data for data, _ in batch)
        try:
            if self.path == "-":
                _write_all(1, data)
            else:
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                try:
                    fd = os.open(self.path, flags, 0o644)
                except FileNotFoundError:
                    os.makedirs(os.path.dirname(self.path), exist_ok=True)
                    fd = os.open(self.path, flags, 0o644)
                try:
                    _write_all(fd, data)
                finally:
                    os.close(fd)
        except OSError as exc:
            self.write_errors += sum(count for _, count in batch)
            if not self._error_reported:
                self._error_reported = True
                log.error("cannot write the access log %s: %s", self.path, exc)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
