"""Sans-IO HTTP/1 message framing, shared by the request and the response parser.

Owns what any HTTP/1 message needs, whichever side sent it: the events (`Data`,
`END_OF_MESSAGE`, `NEED_DATA`) and `ParseError`; `MessageParser`, the machine that holds the
buffer and reads bodies framed by Content-Length or chunked coding, trailers included, with
sticky errors and pipelining; splitting a head into lines and fields; and the Content-Length and
Transfer-Encoding rules. The start line, and what a message's role adds to these rules, belong
to `parser` (requests) and `response_parser` (responses), which subclass `MessageParser`.

Errors speak as a server: 400, 413 or 431. The response parser answers 502 instead.
"""

from __future__ import annotations

import enum
import re
from typing import Final, Generic, TypeVar, final

__all__ = [
    "END_OF_MESSAGE",
    "NEED_DATA",
    "Data",
    "EndOfMessage",
    "MessageParser",
    "NeedData",
    "ParseError",
    "Sentinel",
    "body_framing",
    "fields_as_received",
    "find_field_control",
    "find_head_end",
    "head_lines",
    "header_fields",
    "is_chunked",
    "keeps_alive",
    "parse_content_length",
]


class Sentinel(enum.Enum):
    """Base of the one-member event types: callers test `event is NEED_DATA`, and type
    checkers narrow on it."""

    def __repr__(self) -> str:
        return self.name

    __str__ = __repr__


class NeedData(Sentinel):
    """Nothing more can be parsed until more bytes are fed."""

    NEED_DATA = 0


NEED_DATA: Final = NeedData.NEED_DATA


class EndOfMessage(Sentinel):
    """The current message is complete."""

    END_OF_MESSAGE = 0


END_OF_MESSAGE: Final = EndOfMessage.END_OF_MESSAGE


@final  # consumers tell events apart with `type(event) is Data`
class Data:
    """One piece of message body bytes."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"<Data {len(self.data)} bytes>"


class ParseError(Exception):
    """The message cannot be parsed; answer `status` and close the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


# Parser states.
_HEAD, _DONE, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _FAILED = range(8)

# A chunk-size line is hex digits plus extensions we ignore; bound it so it cannot grow forever.
_MAX_CHUNK_LINE = 4096

_TCHARS = r"-!#$%&'*+.^_`|~0-9A-Za-z"
_TOKEN = re.compile(f"[{_TCHARS}]+").fullmatch
_HEX = re.compile(rb"[0-9A-Fa-f]+").fullmatch
_NOT_CRLF = re.compile(rb"[^\r\n]").search
# The end of a head: the first empty line, whether lines end in CRLF or a bare LF.
find_head_end = re.compile(rb"\n\r?\n").search
# Control characters a field line may not hold: all below 0x20 but tab, and DEL. Line ends are
# already split off.
find_field_control = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]").search


def _header_error(line: str, name: str, sep: str) -> ParseError:
    if line[:1] in (" ", "\t"):
        return ParseError(400, "obsolete line folding in header")
    if not sep:
        return ParseError(400, "header line without a colon")
    if not name:
        return ParseError(400, "empty header name")
    if name[-1] in " \t":
        return ParseError(400, "whitespace between header name and colon")
    return ParseError(400, "header name is not a token")


def head_lines(head: str) -> tuple[list[str], str, bool]:
    """A head's lines, all of them joined, and whether that text holds any control character."""
    lines = head.split("\r\n")
    # One C-level test covers the usual head: with CRLFs split off, nothing below 0x20
    # (bare CR/LF, tab, controls) and no DEL remain. Anything else is looked at closely.
    flat = "".join(lines)
    ctl = not flat.isprintable()
    if ctl and "\n" in flat:
        # Some lines end in a bare LF, which nginx accepts too.
        lines = [ln[:-1] if ln.endswith("\r") else ln for ln in head.split("\n")]
        flat = "".join(lines)
    return lines, flat, ctl


def header_fields(
    lines: list[str], common_names: dict[str, str], single_host: bool = True
) -> dict[str, str]:
    """The fields of `lines[1:]` by lowercase name (repeats comma-joined), every line checked.

    `common_names` maps the usual spellings of common names to their lowercase form, which
    skips the token check for them. `single_host`: a repeated Host is an error (requests,
    RFC 9112 §3.2). The fields as received are `fields_as_received(lines)`, once checked here."""
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        lname = common_names.get(name)
        if lname is None or not sep:
            if not sep or _TOKEN(name) is None:
                raise _header_error(line, name, sep)
            lname = name.lower()
        value = value.strip(" \t")
        if lname in headers:
            if lname == "host" and single_host:
                raise ParseError(400, "more than one Host header")
            headers[lname] += ", " + value
        else:
            headers[lname] = value
    return headers


def fields_as_received(lines: list[str]) -> list[tuple[str, str]]:
    """(name, value) of each field line of a head `header_fields` has checked, in order and as
    spelled. Built only when asked for: a proxy forwards them, a file route never does."""
    fields = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields.append((name, value.strip(" \t")))
    return fields


def parse_content_length(value: str) -> tuple[str, int]:
    """The single value of (possibly repeated, hence comma-joined) Content-Length fields."""
    # isdecimal() is exactly [0-9] for latin-1 text, unlike isdigit() which accepts "²".
    if not value.isdecimal():
        values = {v.strip(" \t") for v in value.split(",")}
        if len(values) != 1:
            raise ParseError(400, "conflicting Content-Length values")
        value = values.pop()
        if not value.isdecimal():
            raise ParseError(400, "Content-Length is not a number")
    # Also keeps int() clear of its 4300-digit limit.
    if len(value.lstrip("0")) > 18:
        raise ParseError(413, "Content-Length too large")
    return value, int(value)


def is_chunked(value: str) -> bool:
    """True only for exactly one "chunked" coding: nothing else is supported (RFC 9112 §6.1)."""
    value = value.lower()
    if value == "chunked":
        return True
    return [c for c in (c.strip(" \t") for c in value.split(",")) if c] == ["chunked"]


def body_framing(headers: dict[str, str]) -> tuple[bool, int]:
    """(chunked, Content-Length or -1) from a head's fields; repeated Content-Length fields are
    rewritten to their one value.

    Transfer-Encoding and Content-Length together are how messages are smuggled: RFC 9112 §6.3
    lets Transfer-Encoding win, but like nginx we refuse them.
    """
    te = headers.get("transfer-encoding")
    cl = headers.get("content-length")
    if te is not None:
        if cl is not None:
            raise ParseError(400, "both Content-Length and Transfer-Encoding")
        if not is_chunked(te):
            raise ParseError(400, "unsupported Transfer-Encoding")
        return True, -1
    if cl is not None:
        headers["content-length"], content_length = parse_content_length(cl)
        return False, content_length
    return False, -1


_CONNECTION_FAST = {"keep-alive": True, "close": False}


def keeps_alive(connection: str | None, v11: bool) -> bool:
    """Whether the connection stays open after a message, by its Connection field and version."""
    if connection is None:
        return v11
    connection = connection.lower()
    known = _CONNECTION_FAST.get(connection)
    if known is not None:
        return known
    tokens = {t.strip(" \t") for t in connection.split(",")}
    return "close" not in tokens and (v11 or "keep-alive" in tokens)


# The events a subclass adds: its head type, and any of its own.
_Own = TypeVar("_Own")


class MessageParser(Generic[_Own]):
    """What requests and responses share: the buffer, body framing, chunked decoding, errors.

    A subclass parses its own head in `_head` and then calls `_frame_body`; the rest (bodies of
    either framing, trailers, sticky errors, pipelining) lives here once.
    """

    __slots__ = (
        "_body_total",
        "_buf",
        "_error",
        "_remaining",
        "_scan",
        "_state",
        "_trailer_bytes",
        "max_body_bytes",
        "max_header_bytes",
    )

    def __init__(self, max_header_bytes: int, max_body_bytes: int) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        # Invariant: consumed bytes are deleted at once (a bytearray prefix delete is cheap),
        # and in state _HEAD the buffer never starts with CR or LF.
        self._buf = bytearray()
        self._state = _HEAD
        self._error: ParseError | None = None
        self._scan = 0  # where the next search for a line end may start
        self._remaining = 0  # body bytes left in the Content-Length body or current chunk
        self._body_total = 0  # chunked bytes so far, against max_body_bytes
        self._trailer_bytes = 0

    @property
    def in_message(self) -> bool:
        """True from the first byte of a message (blank lines aside) until its EndOfMessage."""
        return self._state != _HEAD or bool(self._buf)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed by an event."""
        return len(self._buf)

    def take_rest(self) -> bytes:
        """Take out what was received after the messages parsed so far: after a switch of
        protocols (101) those bytes belong to the new protocol. The parser is done: it takes
        nothing more, and next_event() raises."""
        rest = bytes(self._buf)
        self._fail(ParseError(400, "the connection switched protocols"))
        return rest

    def feed(self, data: bytes) -> None:
        """Append bytes received from the peer; events come from next_event()."""
        if self._state == _FAILED:
            return  # nothing more will be parsed; don't hold on to it
        buf = self._buf
        buf += data
        # Blank lines before a start line are ignored (RFC 9112 §2.2).
        if self._state == _HEAD and buf and buf[0] in b"\r\n":
            self._skip_blank_lines()

    def next_event(self) -> _Own | Data | EndOfMessage | NeedData:
        """The next event, or NEED_DATA. Raises ParseError, then again on every later call."""
        try:
            state = self._state
            if state == _HEAD:
                return self._head() if self._buf else NEED_DATA
            if state == _DONE:
                self._state = _HEAD
                if self._buf and self._buf[0] in b"\r\n":
                    self._skip_blank_lines()
                return END_OF_MESSAGE
            if state == _BODY:
                if not self._buf:
                    return NEED_DATA
                event = self._take()
                if not self._remaining:
                    self._state = _DONE
                return event
            if state == _FAILED:
                assert self._error is not None  # set together with _FAILED
                raise self._error.with_traceback(None)
            return self._chunked()
        except ParseError as exc:
            self._fail(exc)
            raise

    def _head(self) -> _Own | NeedData:
        """Parse the head at the start of the buffer, if it is all there."""
        raise NotImplementedError

    def _frame_body(self, chunked: bool, length: int) -> None:
        """After a head: expect a chunked body, `length` bytes (none if <= 0), or no body."""
        if chunked:
            self._state = _CHUNK_SIZE
            self._body_total = 0
            self._trailer_bytes = 0
        elif length > 0:
            self._state = _BODY
            self._remaining = length
        else:
            self._state = _DONE

    def _end_body(self) -> EndOfMessage:
        """End the body being read now, as the peer's close ends one that runs until then."""
        self._state = _HEAD
        return END_OF_MESSAGE

    def _fail(self, error: ParseError) -> ParseError:
        """Fail for good with `error`, which every later next_event() raises again."""
        self._state = _FAILED
        self._error = error
        self._buf.clear()
        return error

    def _skip_blank_lines(self) -> None:
        buf = self._buf
        m = _NOT_CRLF(buf)
        del buf[: m.start() if m else len(buf)]

    def _take(self) -> Data:
        """Up to `_remaining` body bytes from the buffer."""
        buf = self._buf
        n = self._remaining
        if len(buf) <= n:
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:n])
            del buf[:n]
        self._remaining = n - len(data)
        return Data(data)

    def _chunked(self) -> Data | EndOfMessage | NeedData:
        buf = self._buf
        while True:
            state = self._state
            if state == _CHUNK_DATA:
                if not buf:
                    return NEED_DATA
                event = self._take()
                if not self._remaining:
                    self._state = _CHUNK_END
                return event
            if state == _CHUNK_END:
                if buf[:2] == b"\r\n":
                    del buf[:2]
                elif buf[:1] == b"\n":
                    del buf[:1]
                elif buf == b"\r" or not buf:
                    return NEED_DATA
                else:
                    raise ParseError(400, "missing CRLF after chunk data")
                self._state = _CHUNK_SIZE
                continue
            if state == _CHUNK_SIZE:
                i = buf.find(b"\n", self._scan, _MAX_CHUNK_LINE + 1)
                if i < 0:
                    if len(buf) > _MAX_CHUNK_LINE:
                        raise ParseError(400, "chunk size line too long")
                    self._scan = len(buf)
                    return NEED_DATA
                line = bytes(buf[: i - 1 if i and buf[i - 1] == 13 else i])
                del buf[: i + 1]
                self._scan = 0
                # Extensions after ";" are ignored; BWS may precede the ";".
                size_hex = line.partition(b";")[0].rstrip(b" \t")
                if _HEX(size_hex) is None:
                    raise ParseError(400, "bad chunk size")
                size = int(size_hex, 16)
                if not size:
                    self._state = _TRAILER
                    continue
                self._body_total += size
                if self._body_total > self.max_body_bytes:
                    raise ParseError(413, "body too large")
                self._remaining = size
                self._state = _CHUNK_DATA
                continue
            # _TRAILER: field lines up to an empty line, checked for shape and discarded. They
            # share one max_header_bytes budget, so a line end must come within `room` bytes.
            room = self.max_header_bytes - self._trailer_bytes
            i = buf.find(b"\n", self._scan, room)
            if i < 0:
                if len(buf) >= room:
                    raise ParseError(431, "trailer section too large")
                self._scan = len(buf)
                return NEED_DATA
            self._trailer_bytes += i + 1
            line_str = buf[: i - 1 if i and buf[i - 1] == 13 else i].decode("latin-1")
            del buf[: i + 1]
            self._scan = 0
            if not line_str:
                # The message ends here, as it does in state _DONE.
                self._state = _HEAD
                if buf and buf[0] in b"\r\n":
                    self._skip_blank_lines()
                return END_OF_MESSAGE
            name, sep, _ = line_str.partition(":")
            if not sep or _TOKEN(name) is None:
                raise _header_error(line_str, name, sep)
