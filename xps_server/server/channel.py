"""The channel between the master and one worker: JSON objects, one per line, on a socketpair.

Both ends run it on their loop (non-blocking, edge-triggered, through a `Connection`), so
neither ever blocks on the other: a message goes out in one `send`, or waits in the
connection's pipe. `backlog` says how much waits, so a sender of optional traffic (events) can
hold back rather than queue without bound. The only blocking read is `read_first`, the
worker's start message, before its loop exists.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable
from typing import Any

from xps_server.core.loop import Loop
from xps_server.network.connection import Connection

log = logging.getLogger("xps.channel")

MAX_LINE = 1 << 26  # a line longer than this means the peer is broken: the channel closes


class Channel:
    """One end of a master-worker socketpair: `send` a dict, `on_message` gets each dict."""

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        on_message: Callable[[dict[str, Any]], None],
        on_close: Callable[[], None],
        initial: bytes = b"",
    ) -> None:
        sock.setblocking(False)
        self.conn = Connection(loop, sock, ("channel", 0))
        self._on_message = on_message
        self._on_close = on_close
        self._buffer = bytearray()
        self.conn.start(self)
        if initial:
            self.on_data(initial)

    @property
    def closed(self) -> bool:
        return self.conn.closed

    @property
    def backlog(self) -> int:
        """Bytes sent but not yet taken by the peer's socket."""
        return self.conn.out.size

    def send(self, message: dict[str, Any]) -> None:
        if not self.conn.closed:
            self.conn.send(json.dumps(message, default=str).encode() + b"\n")

    def close(self) -> None:
        self.conn.close()

    # --- the connection's handler ---------------------------------------------------------
    def on_data(self, data: bytes) -> None:
        buffer = self._buffer
        searched = len(buffer)  # no newline before this
        buffer += data
        end = buffer.rfind(b"\n", searched)
        if end < 0:
            if len(buffer) > MAX_LINE:
                log.error("channel: oversized message; closing")
                self.conn.close()
            return
        lines = bytes(buffer[:end]).split(b"\n")
        del buffer[: end + 1]
        for line in lines:
            if self.conn.closed:
                return
            try:
                message = json.loads(line)
            except ValueError:
                log.error("channel: malformed message %r; closing", line[:200])
                self.conn.close()
                return
            if isinstance(message, dict):
                self._on_message(message)

    def on_eof(self) -> None:
        self.conn.close()

    def on_drain(self) -> None:
        pass

    def on_close(self) -> None:
        self._on_close()


def read_first(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    """Block until the first message: (it, the bytes that came after it). EOFError if the
    peer closes first, ValueError if it is not a JSON object."""
    buffer = bytearray()
    while True:
        end = buffer.find(b"\n")
        if end >= 0:
            break
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise EOFError("the channel closed before the first message")
        buffer += chunk
    message = json.loads(buffer[:end])
    if not isinstance(message, dict):
        raise ValueError("the first message is not a JSON object")
    return message, bytes(buffer[end + 1 :])
