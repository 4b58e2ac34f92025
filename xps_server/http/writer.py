"""The HTTP/1 response writer: a `Response` in, wire bytes out, no sockets.

Route handlers say what to answer — a status, their header fields, a body of known or unknown
length — as a `Response`. Everything else about the message is decided here, once:
- the status line (the standard reason phrase, or the one an upstream gave) and `Server`;
- `Date`, an IMF-fixdate string rebuilt at most once a second;
- the framing: `Content-Length` for a body of known length; for one of unknown length,
  `Transfer-Encoding: chunked` to an HTTP/1.1 client and the end of the connection to an
  HTTP/1.0 one (the answer then says `Connection: close`, and the caller must close after it);
- `Connection: keep-alive` or `close`;
- the chunk framing of a streamed body (`chunk`, `LAST_CHUNK`), and the canned HTML page of an
  error or redirect status.

Heads are joined from pre-encoded pieces (a status line with `Server` cached per status, the
current `Date` line, the handler's field block, one framing line, the `Connection` line), so
the common answer costs one `join` and one small `%` format.
"""

from __future__ import annotations

import html
import time
from http import HTTPStatus
from typing import Any

__all__ = [
    "CHUNKED",
    "CLOSE_DELIMITED",
    "LAST_CHUNK",
    "LENGTH",
    "NO_BODY",
    "RelayedResponse",
    "Response",
    "ResponseWriter",
    "chunk",
    "http_date",
    "reason_phrase",
]

# How a response body is delimited on the wire.
NO_BODY, LENGTH, CHUNKED, CLOSE_DELIMITED = range(4)

CONNECTION_KEEP_ALIVE = b"Connection: keep-alive\r\n\r\n"
CONNECTION_CLOSE = b"Connection: close\r\n\r\n"
CHUNKED_FIELD = b"Transfer-Encoding: chunked\r\n"
LAST_CHUNK = b"0\r\n\r\n"
_REASONS_CACHED = 512  # upstreams choose reason phrases: bound how many status lines are kept
_LENGTHS_CACHED = 4096  # distinct Content-Length lines kept (a site has few distinct sizes)


def reason_phrase(status: int) -> str:
    """The standard reason phrase of `status` ("Unknown" for a code without one)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(timestamp: float) -> str:
    """RFC 9110 IMF-fixdate, e.g. 'Sun, 06 Nov 1994 08:49:37 GMT'. Written out here rather than
    with email.utils, which would pull the socket module into this sans-IO package."""
    t = time.gmtime(timestamp)
    return (
        f"{_WEEKDAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body; never call it with b"" (that is the last chunk)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class Response:
    """What a handler answers: a status, its own header fields, and the body's length.

    `fields` holds header lines, each ending in CRLF, without `Server`, `Date`, framing or
    `Connection` (the writer's). `length` is the body's length in bytes, or -1 when the body is
    streamed and its length unknown. `body` is the handler's to hand to the connection (bytes,
    a file segment, or None for a streamed body or one the request does not get, as for HEAD);
    the writer never looks at it.
    """

    __slots__ = ("body", "fields", "length", "status")

    def __init__(self, status: int, fields: bytes = b"", body: Any = None, length: int = 0):
        self.status = status
        self.fields = fields
        self.body = body
        self.length = length

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.status} length={self.length}>"


class RelayedResponse(Response):
    """An upstream's response on its way to the client: its own reason phrase, and
    `server` / `date` False where the upstream sent those fields itself."""

    __slots__ = ("date", "reason", "server")

    def __init__(
        self,
        status: int,
        fields: bytes,
        length: int,
        reason: str,
        server: bool,
        date: bool,
    ) -> None:
        super().__init__(status, fields, None, length)
        self.reason = reason
        self.server = server
        self.date = date


class ResponseWriter:
    """Response heads, framing and canned pages for one `server_name`."""

    __slots__ = (
        "_date_line",
        "_date_second",
        "_lengths",
        "_lines",
        "_pages",
        "_prefixes",
        "server_line",
        "server_name",
    )

    def __init__(self, server_name: str) -> None:
        self.server_name = server_name
        self.server_line = f"Server: {server_name}\r\n".encode("latin-1", "replace")
        self._lines: dict[tuple[int, str | None], bytes] = {}  # status lines
        self._prefixes: dict[int, bytes] = {}  # standard status line + Server, by status
        self._lengths: dict[int, bytes] = {}  # Content-Length lines, by length
        self._pages: dict[int, tuple[bytes, bytes]] = {}
        self._date_second = -1
        self._date_line = b""

    def date_line(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date_line = f"Date: {http_date(now)}\r\n".encode()
        return self._date_line

    def status_line(self, status: int, reason: str | None = None) -> bytes:
        """`HTTP/1.1 <status> <reason>` and its CRLF."""
        key = (status, reason)
        line = self._lines.get(key)
        if line is None:
            phrase = reason_phrase(status) if reason is None else reason
            line = f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1", "replace")
            if len(self._lines) < _REASONS_CACHED:
                self._lines[key] = line
        return line

    def framing(self, response: Response, http11: bool, head_only: bool) -> int:
        """How the body of `response` goes out to a client of that version."""
        status = response.status
        if status < 200 or status == 204 or status == 304:
            return NO_BODY
        if response.length >= 0:
            return LENGTH
        if head_only:
            return NO_BODY if not http11 else CHUNKED
        return CHUNKED if http11 else CLOSE_DELIMITED

    def head(self, response: Response, framing: int, keep_alive: bool, body: bytes = b"") -> bytes:
        """The head of `response` sent with `framing` (from `framing()`), ending the
        connection after it unless `keep_alive` (a CLOSE_DELIMITED body always does); `body`
        (a small one) is joined after it, to go out in the same send."""
        if framing == LENGTH:
            length = self._lengths.get(response.length)
            if length is None:
                length = self.length_line(response.length)
        elif framing == CHUNKED:
            length = CHUNKED_FIELD
        elif response.length >= 0 and response.status == 304:
            # A 304 may say how long the representation is (as nginx's do).
            length = b"Content-Length: %d\r\n" % response.length
        else:
            length = b""
        if framing == CLOSE_DELIMITED:
            keep_alive = False
        connection = CONNECTION_KEEP_ALIVE if keep_alive else CONNECTION_CLOSE
        if type(response) is Response:
            prefix = self._prefixes.get(response.status)
            if prefix is None:
                prefix = self._prefixes[response.status] = (
                    self.status_line(response.status) + self.server_line
                )
            return b"".join((prefix, self.date_line(), response.fields, length, connection, body))
        assert isinstance(response, RelayedResponse)
        return b"".join(
            (
                self.status_line(response.status, response.reason),
                self.server_line if response.server else b"",
                self.date_line() if response.date else b"",
                response.fields,
                length,
                connection,
                body,
            )
        )

    def length_line(self, length: int) -> bytes:
        """`Content-Length: <length>` and its CRLF (the usual lengths kept, pre-encoded)."""
        line = self._lengths.get(length)
        if line is None:
            line = b"Content-Length: %d\r\n" % length
            if len(self._lengths) < _LENGTHS_CACHED:
                self._lengths[length] = line
        return line

    def informational(self, status: int, reason: str, fields: bytes) -> bytes:
        """A 1xx interim response (relayed from an upstream), as it is: no framing of ours."""
        return self.status_line(status, reason) + fields + b"\r\n"

    def page(self, status: int) -> tuple[bytes, bytes]:
        """(field block, body) of an nginx-style HTML page for an error or redirect status."""
        found = self._pages.get(status)
        if found is None:
            title = html.escape(f"{status} {reason_phrase(status)}")
            body = (
                f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
                f"<center><h1>{title}</h1></center>\r\n"
                f"<hr><center>{html.escape(self.server_name)}</center>\r\n</body>\r\n</html>\r\n"
            ).encode()
            found = (b"Content-Type: text/html\r\n", body)
            self._pages[status] = found
        return found

    def error(self, status: int, extra: bytes = b"") -> Response:
        """The canned page for `status` as a Response, with `extra` header lines."""
        fields, body = self.page(status)
        return Response(status, fields + extra if extra else fields, body, len(body))
