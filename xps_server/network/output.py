"""The output chain of a streamed response body: producer → gzip stage → chunk framing →
the client connection.

A producer (an upstream's body, a file being compressed) writes pieces into a `BodyStream`,
which compresses them when the response is gzip'ed, frames them when the response is chunked,
and hands them to the connection in one send per batch (`commit`). Compression and framing
exist here once, for every producer, as nginx's body filters do.

Two rules keep one response from hogging the loop or memory:
- back-pressure: `room()` is False while the client pipe is over its threshold; the producer
  stops and is resumed from the connection's drain;
- a turn budget for compression: at most STREAM_TURN input bytes are compressed per loop turn;
  past it `room()` is False until the next turn, when the stream resumes the producer itself.
What the compressor holds is flushed on the next loop turn after a batch (so a slow or
streaming upstream reaches the client as it goes) and at the end.

A body of known length that nothing transforms never comes here: it goes to the connection as
bytes or as a file segment moved by sendfile (`Session.respond`).
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Protocol

from xps_server.http.writer import LAST_CHUNK, chunk

if TYPE_CHECKING:
    from xps_server.core.loop import Loop
    from xps_server.network.connection import Connection

STREAM_TURN = 256 * 1024  # input bytes one stream compresses per loop turn
GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip wrapper, not raw zlib


class GzipEncoder:
    """Incremental gzip: `feed` data, `flush` what is buffered, `finish` with the trailer."""

    __slots__ = ("_compressor",)

    def __init__(self, level: int = 6) -> None:
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, GZIP_WBITS)

    def feed(self, data: bytes) -> bytes:
        return self._compressor.compress(data)

    def flush(self) -> bytes:
        """Everything fed so far, decodable by the client now (Z_SYNC_FLUSH)."""
        return self._compressor.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        """The rest and the gzip trailer; the encoder is done."""
        return self._compressor.flush(zlib.Z_FINISH)


class Resumable(Protocol):
    def resume(self) -> None: ...


class BodyStream:
    """One streamed body on its way to the client (see the module docstring)."""

    __slots__ = (
        "_flush_scheduled",
        "_parts",
        "_turn",
        "chunked",
        "collected",
        "conn",
        "encoder",
        "fed",
        "loop",
        "producer",
        "sent",
        "taken",
    )

    def __init__(
        self,
        loop: Loop,
        conn: Connection,
        producer: Resumable,
        chunked: bool,
        gzip_level: int | None = None,
        collect: bool = False,
        head: bytes = b"",
    ) -> None:
        """`head`, the response head, goes out with the first piece of the body (one send)."""
        self.loop = loop
        self.conn = conn
        self.producer = producer
        self.chunked = chunked
        self.encoder = GzipEncoder(gzip_level) if gzip_level is not None else None
        # The body as sent (compressed, before chunk framing), kept for whoever asked
        # (`collect`) until they drop it by setting this to None.
        self.collected: list[bytes] | None = [] if collect else None
        self.taken = 0  # body bytes the producer wrote
        self.sent = 0  # body bytes sent (compressed, if so), before chunk framing
        self.fed = False  # the encoder took bytes since it last flushed
        self._parts: list[bytes] = [head] if head else []
        self._turn = 0  # input bytes compressed this loop turn
        self._flush_scheduled = False

    def write(self, data: bytes) -> None:
        """Add a piece of the body; it goes out at the next `commit`."""
        self.taken += len(data)
        encoder = self.encoder
        if encoder is not None:
            self._turn += len(data)
            self.fed = True
            data = encoder.feed(data)
            if not data:
                return  # never an empty chunk: it would end the body
        self._add(data)

    def _add(self, data: bytes) -> None:
        self.sent += len(data)
        collected = self.collected
        if collected is not None:
            collected.append(data)
        self._parts.append(chunk(data) if self.chunked else data)

    def commit(self) -> None:
        """Send what was written since the last commit, in one send."""
        parts = self._parts
        if parts:
            self.conn.send(parts[0] if len(parts) == 1 else b"".join(parts))
            parts.clear()
        if self.fed and not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._next_turn)

    def end(self) -> None:
        """The body is complete: the compressor's rest, the last chunk, one send."""
        encoder = self.encoder
        if encoder is not None:
            self.encoder = None
            self._add(encoder.finish())  # never empty: at least the gzip trailer
        if self.chunked:
            self._parts.append(LAST_CHUNK)
        self.fed = False
        self.commit()

    def room(self) -> bool:
        """Whether the producer may write more now (client pipe and compression budget)."""
        out = self.conn.out
        return out.size < out.threshold and self._turn < STREAM_TURN

    def _next_turn(self) -> None:
        """A loop turn later: flush what the compressor holds, reset the budget, and let the
        producer go on if it stopped for the budget."""
        self._flush_scheduled = False
        stopped = self._turn >= STREAM_TURN
        self._turn = 0
        encoder = self.encoder
        if encoder is None or self.conn.closed:
            return
        if self.fed:
            self.fed = False
            flushed = encoder.flush()
            if flushed:
                self._add(flushed)
                self.commit()
        if stopped and self.room():
            self.producer.resume()
