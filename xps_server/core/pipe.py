"""Pipes: the bounded queue of bytes and file segments between a source and the client sink.

A source (a response head, a file, later an upstream or a gzip stage) pushes into the pipe; the
sink (the client connection) drains it as the socket accepts bytes. File segments stay on disk
until the socket can take them and then move with `os.sendfile`, so a slow client stops the file
being read instead of growing memory. `full()` is the back-pressure signal: a source stops
producing while it holds and resumes from the sink's drain callback.
"""

from __future__ import annotations

import os
from collections import deque
from typing import final

DEFAULT_THRESHOLD = 256 * 1024


@final  # `type(item) is FileSegment` tells a segment from bytes, so no subclass may exist
class FileSegment:
    """`count` bytes of an open file from `offset`, sent zero-copy; the pipe owns the fd."""

    __slots__ = ("count", "fd", "offset")

    def __init__(self, fd: int, offset: int, count: int) -> None:
        self.fd = fd
        self.offset = offset
        self.count = count

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Pipe:
    """Ordered pending output; `size` counts logical bytes, including file bytes not yet read."""

    __slots__ = ("items", "size", "threshold")

    def __init__(self, threshold: int = DEFAULT_THRESHOLD) -> None:
        self.items: deque[bytes | memoryview | FileSegment] = deque()
        self.size = 0
        self.threshold = threshold

    def push(self, data: bytes | memoryview) -> None:
        self.items.append(data)
        self.size += len(data)

    def push_file(self, segment: FileSegment) -> None:
        self.items.append(segment)
        self.size += segment.count

    def full(self) -> bool:
        return self.size >= self.threshold

    def clear(self) -> None:
        """Drop everything pending, closing any file it holds."""
        for item in self.items:
            if type(item) is FileSegment:
                item.close()
        self.items.clear()
        self.size = 0
