"""Sans-IO HTTP/1.x response parser: what an upstream answers, as events.

The same machine as the request parser (`framing.MessageParser`: buffer, Content-Length and
chunked bodies, sticky errors); this module owns the status line and the response framing rules
of RFC 9112 §6.3: no body for a HEAD request, 1xx, 204 and 304; chunked; Content-Length; else
the body runs until the upstream closes, which the caller reports with `feed_eof`.

Events: `Response` (informational 1xx ones too, each followed by the next head), `Data`,
`END_OF_MESSAGE`, `CLOSED` (the upstream closed between responses), `NEED_DATA`. Every
problem raises `ParseError` with status 502: a broken upstream is a bad gateway.
"""

from __future__ import annotations

from typing import Final

from xps_server.http.framing import (
    END_OF_MESSAGE,
    NEED_DATA,
    Data,
    EndOfMessage,
    MessageParser,
    NeedData,
    ParseError,
    Sentinel,
    body_framing,
    fields_as_received,
    find_field_control,
    find_head_end,
    head_lines,
    header_fields,
    keeps_alive,
)

__all__ = [
    "CHUNKED",
    "CLOSED",
    "END_OF_MESSAGE",
    "LENGTH",
    "NEED_DATA",
    "NO_BODY",
    "UNTIL_CLOSE",
    "Closed",
    "Data",
    "EndOfMessage",
    "NeedData",
    "ParseError",
    "Response",
    "ResponseParser",
]

# A response head may be larger than a request's (cookies, CSP); nginx's default is 4-8 KiB.
MAX_HEAD_BYTES = 64 * 1024
# Read-to-close bodies have no length; this stands in for "more than will ever come".
_UNBOUNDED = 1 << 62

# Body framing of a response.
NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = range(4)


class Closed(Sentinel):
    """The upstream closed the connection between responses."""

    CLOSED = 0


CLOSED: Final = Closed.CLOSED

_COMMON_NAMES = {
    spelling: name.lower()
    for name in (
        "Accept-Ranges",
        "Age",
        "Cache-Control",
        "Connection",
        "Content-Encoding",
        "Content-Length",
        "Content-Type",
        "Date",
        "ETag",
        "Expires",
        "Keep-Alive",
        "Last-Modified",
        "Location",
        "Server",
        "Set-Cookie",
        "Transfer-Encoding",
        "Vary",
    )
    for spelling in (name, name.lower())
}


class Response:
    """A parsed response head; `framing` is NO_BODY, LENGTH, CHUNKED or UNTIL_CLOSE."""

    __slots__ = (
        "content_length",
        "framing",
        "headers",
        "keep_alive",
        "lines",
        "reason",
        "status",
        "version",
    )

    def __init__(
        self,
        status: int,
        reason: str,
        version: str,
        headers: dict[str, str],
        lines: list[str],
        content_length: int,
        framing: int,
        keep_alive: bool,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.lines = lines  # the head's lines, checked: the fields as received come from them
        self.content_length = content_length
        self.framing = framing
        self.keep_alive = keep_alive

    @property
    def raw_headers(self) -> list[tuple[str, str]]:
        """The fields as received: (name, value) in order, names as spelled."""
        return fields_as_received(self.lines)

    def __repr__(self) -> str:
        return f"<Response HTTP/{self.version} {self.status} {self.reason}>"


def _status_line(line: str) -> tuple[bool, int, str]:
    """(is HTTP/1.1, status, reason) of `HTTP/1.x SSS reason`."""
    version, _, rest = line.partition(" ")
    if version == "HTTP/1.1":
        v11 = True
    elif version == "HTTP/1.0":
        v11 = False
    else:
        raise ParseError(502, "bad status line")
    code, _, reason = rest.partition(" ")
    # isdecimal() is exactly [0-9] for latin-1 text.
    if len(code) != 3 or not code.isdecimal() or code[0] == "0":
        raise ParseError(502, "bad status code")
    return v11, int(code), reason


class ResponseParser(MessageParser[Response | Closed]):
    """Incremental parser for the responses on one upstream connection.

    Set `head_request` before the response to a HEAD request: its head says how long the body
    would be, and none follows.
    """

    __slots__ = ("_eof", "_until_close", "head_request")

    def __init__(self, max_header_bytes: int = MAX_HEAD_BYTES) -> None:
        super().__init__(max_header_bytes, _UNBOUNDED)
        self.head_request = False
        self._eof = False
        self._until_close = False

    def feed_eof(self) -> None:
        """The upstream closed: ends a read-to-close body; anything else unfinished is an error."""
        self._eof = True

    def next_event(self) -> Response | Data | EndOfMessage | Closed | NeedData:
        try:
            event = MessageParser.next_event(self)
        except ParseError as exc:
            if exc.status == 502:
                raise
            # The shared checks speak as a server (400, 413): here the upstream is at fault.
            raise self._fail(ParseError(502, exc.reason)) from None
        if event is NEED_DATA and self._eof:
            return self._at_eof()
        return event

    def _at_eof(self) -> EndOfMessage | Closed:
        # A read-to-close body is still being read: its 2**62 bytes never all come, and a parser
        # that failed raised before getting here.
        if self._until_close:
            self._until_close = False
            return self._end_body()
        if not self.in_message:
            return CLOSED
        raise self._fail(ParseError(502, "upstream closed the connection mid-response"))

    def _head(self) -> Response | NeedData:
        buf = self._buf
        m = find_head_end(buf, self._scan)
        if m is None:
            n = len(buf)
            if n > self.max_header_bytes:
                raise ParseError(502, "response head too large")
            # The end of the head is up to 3 bytes long and may straddle two feeds.
            self._scan = n - 2 if n > 2 else 0
            return NEED_DATA
        i, end = m.span()
        if end > self.max_header_bytes:
            raise ParseError(502, "response head too large")
        head = buf[: i - 1 if buf[i - 1] == 13 else i].decode("latin-1")
        del buf[:end]
        self._scan = 0
        lines, flat, ctl = head_lines(head)
        if ctl and find_field_control(flat):
            raise ParseError(502, "control character in response head")
        v11, status, reason = _status_line(lines[0])
        headers = header_fields(lines, _COMMON_NAMES, False)

        chunked, content_length = body_framing(headers)

        keep_alive = keeps_alive(headers.get("connection"), v11)

        if status < 200:
            framing = NO_BODY  # informational: the final response's head comes next
        elif self.head_request or status == 204 or status == 304:
            framing = NO_BODY
            self._frame_body(False, 0)
        elif chunked:
            framing = CHUNKED
            self._frame_body(True, 0)
        elif content_length >= 0:
            framing = LENGTH
            self._frame_body(False, content_length)
        else:
            framing = UNTIL_CLOSE
            keep_alive = False
            self._frame_body(False, _UNBOUNDED)
            self._until_close = True
        return Response(
            status,
            reason,
            "1.1" if v11 else "1.0",
            headers,
            lines,
            content_length,
            framing,
            keep_alive,
        )
