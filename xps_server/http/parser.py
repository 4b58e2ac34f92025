"""Sans-IO HTTP/1.1 request parser: bytes in, events out, no sockets.

Owns request framing and validation: the request line, header fields, Content-Length and
chunked bodies, pipelining, and the size limits behind 400/413/414/431. The caller feeds
whatever the socket produced and pulls `Request`, `Data` and `END_OF_MESSAGE` events until
`NEED_DATA`. Errors are raised as `ParseError` carrying the status to answer with; a parser
that has failed keeps raising the same error.

Validation order is fixed so that every way of splitting the input gives the same outcome:
request line too long (414), bad request line (400), head too large (431), bad header (400),
body too large (413). The request line is therefore checked as soon as it is complete.

`MessageParser` holds what any HTTP/1 message needs (buffer, body framing, chunked decoding,
sticky errors); `RequestParser` adds the request head, and `response_parser.ResponseParser`
the response head the proxy reads from upstreams.
"""

from __future__ import annotations

import re

__all__ = [
    "END_OF_MESSAGE",
    "NEED_DATA",
    "Data",
    "EndOfMessage",
    "MessageParser",
    "ParseError",
    "Request",
    "RequestParser",
]


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


class ParseError(Exception):
    """The request cannot be parsed; answer `status` and close the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class Request:
    """A parsed request head. `path` and `query` are still percent-encoded."""

    __slots__ = (
        "chunked",
        "content_length",
        "headers",
        "host",
        "keep_alive",
        "method",
        "path",
        "query",
        "raw_headers",
        "target",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: str,
        path: str,
        query: str,
        version: str,
        headers: dict[str, str],
        raw_headers: list[tuple[str, str]],
        host: str,
        content_length: int,
        chunked: bool,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.raw_headers = raw_headers
        self.host = host
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} HTTP/{self.version}>"


class Data:
    """One piece of request body bytes."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"<Data {len(self.data)} bytes>"


class EndOfMessage:
    """The current request is complete; use the shared `END_OF_MESSAGE` instance."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "END_OF_MESSAGE"


END_OF_MESSAGE = EndOfMessage()

# Parser states.
_HEAD, _DONE, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _FAILED = range(8)

# A chunk-size line is hex digits plus extensions we ignore; bound it so it cannot grow forever.
_MAX_CHUNK_LINE = 4096

_TCHARS = r"-!#$%&'*+.^_`|~0-9A-Za-z"
_TOKEN = re.compile(f"[{_TCHARS}]+").fullmatch
_HEX = re.compile(rb"[0-9A-Fa-f]+").fullmatch
_NOT_CRLF = re.compile(rb"[^\r\n]").search
_HEAD_END = re.compile(rb"\n\r?\n").search
# Anything below 0x20 and DEL; the request line allows none of them.
_CTL_ANY = re.compile(r"[\x00-\x1f\x7f]").search
# Same minus tab, which field values may contain; line ends are already split off.
_CTL_FIELD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]").search
_ABSOLUTE = re.compile(r"(?i:https?)://([^/?#]*)(/[^?]*)?(?:\?(.*))?").fullmatch
# host[:port] as nginx accepts it: a name of letters, digits and "-._~" with no empty label, or
# a bracketed IPv6 literal; then an optional port. No comma lists, paths, spaces or userinfo.
_HOST = re.compile(
    r"(?:[A-Za-z0-9_~-]+(?:\.[A-Za-z0-9_~-]+)*\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?"
).fullmatch
_VALID_HOSTS: set[str] = set()  # Host values seen valid: clients send few distinct ones
_VALID_HOSTS_MAX = 1024

# The IANA HTTP Method Registry, case-sensitive. Any other token is a bad request (400), as
# eXpServer answers; a registered method that a route does not serve gets 405 there.
_METHODS = frozenset((
    "ACL", "BASELINE-CONTROL", "BIND", "CHECKIN", "CHECKOUT", "CONNECT", "COPY", "DELETE", "GET",
    "HEAD", "LABEL", "LINK", "LOCK", "MERGE", "MKACTIVITY", "MKCALENDAR", "MKCOL", "MKREDIRECTREF",
    "MKWORKSPACE", "MOVE", "OPTIONS", "ORDERPATCH", "PATCH", "POST", "PRI", "PROPFIND", "PROPPATCH",
    "PUT", "QUERY", "REBIND", "REPORT", "SEARCH", "TRACE", "UNBIND", "UNCHECKOUT", "UNLINK",
    "UNLOCK", "UPDATE", "UPDATEREDIRECTREF", "VERSION-CONTROL",
))  # fmt: skip
# A lookup that skips the token regex for the header names almost every request uses.
_COMMON_NAMES = {
    spelling: name.lower()
    for name in (
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Authorization",
        "Cache-Control",
        "Connection",
        "Content-Length",
        "Content-Type",
        "Cookie",
        "Host",
        "If-Modified-Since",
        "If-None-Match",
        "Origin",
        "Pragma",
        "Range",
        "Referer",
        "Transfer-Encoding",
        "Upgrade-Insecure-Requests",
        "User-Agent",
    )
    for spelling in (name, name.lower())
}
_CONNECTION_FAST = {"keep-alive": True, "close": False}


def _request_line(line: str) -> tuple[str, str, str, str, bool, str | None]:
    """Split and validate a control-free request line.

    Returns (method, target, path, query, is_http_1_1, host from an absolute-form target).
    """
    parts = line.split(" ")
    if len(parts) != 3:
        raise ParseError(400, "missing HTTP version" if len(parts) == 2 else "bad request line")
    method, target, version = parts
    if method not in _METHODS:
        raise ParseError(400, "unknown method")
    if version == "HTTP/1.1":
        v11 = True
    elif version == "HTTP/1.0":
        v11 = False
    else:
        raise ParseError(400, "unsupported HTTP version")
    if target[:1] == "/":
        path, _, query = target.partition("?")
        return method, target, path, query, v11, None
    if target == "*":
        if method != "OPTIONS":
            raise ParseError(400, "asterisk-form is only allowed with OPTIONS")
        return method, target, "*", "", v11, None
    m = _ABSOLUTE(target)
    if m is None:
        raise ParseError(400, "bad request-target")
    authority, path, query = m.groups()
    # RFC 9110 §4.2: an http(s) URI needs a host, and userinfo there is deprecated and unsafe.
    if not authority or "@" in authority:
        raise ParseError(400, "bad authority in absolute-form target")
    return method, target, path or "/", query or "", v11, authority


def _check_host(host: str) -> None:
    """400 unless `host` is one host[:port]; remember it as valid otherwise."""
    if _HOST(host) is None:
        raise ParseError(400, "invalid Host")
    if len(_VALID_HOSTS) >= _VALID_HOSTS_MAX:
        _VALID_HOSTS.clear()
    _VALID_HOSTS.add(host)


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
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The fields of `lines[1:]`: by lowercase name (repeats comma-joined), and as received.

    `single_host`: a repeated Host is an error (requests, RFC 9112 §3.2)."""
    headers: dict[str, str] = {}
    raw_headers: list[tuple[str, str]] = []
    add_raw = raw_headers.append
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        lname = common_names.get(name)
        if lname is None or not sep:
            if not sep or _TOKEN(name) is None:
                raise _header_error(line, name, sep)
            lname = name.lower()
        value = value.strip(" \t")
        add_raw((name, value))
        if lname in headers:
            if lname == "host" and single_host:
                raise ParseError(400, "more than one Host header")
            headers[lname] += ", " + value
        else:
            headers[lname] = value
    return headers, raw_headers


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


class MessageParser:
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

    def feed(self, data: bytes) -> None:
        """Append bytes received from the peer; events come from next_event()."""
        if self._state == _FAILED:
            return  # nothing more will be parsed; don't hold on to it
        buf = self._buf
        buf += data
        # Blank lines before a request line are ignored (RFC 9112 §2.2).
        if self._state == _HEAD and buf and buf[0] in b"\r\n":
            self._skip_blank_lines()

    def next_event(self) -> object:
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
                raise self._error.with_traceback(None)
            return self._chunked()
        except ParseError as exc:
            self._state = _FAILED
            self._error = exc
            self._buf.clear()
            raise

    def _head(self) -> object:
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

    def _chunked(self) -> Data | EndOfMessage | _NeedData:
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
                self._state = _DONE
                return self.next_event()
            name, sep, _ = line_str.partition(":")
            if not sep or _TOKEN(name) is None:
                raise _header_error(line_str, name, sep)


class RequestParser(MessageParser):
    """Incremental HTTP/1.x request parser for one connection."""

    __slots__ = ("_line_done", "max_uri_bytes")

    def __init__(
        self,
        max_uri_bytes: int = 8192,
        max_header_bytes: int = 16384,
        max_body_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        super().__init__(max_header_bytes, max_body_bytes)
        self.max_uri_bytes = max_uri_bytes
        self._line_done = False  # the request line of a partial head is complete and valid

    def _head(self) -> Request | _NeedData:
        buf = self._buf
        # The head ends at the first empty line, whether lines end in CRLF or a bare LF. One
        # search for the earliest end keeps a large pipelined buffer from being rescanned.
        m = _HEAD_END(buf, self._scan)
        if m is None:
            return self._partial_head()
        i, end = m.span()
        # buf[0] is never LF, so i >= 1; drop the last line's CR.
        head = buf[: i - 1 if buf[i - 1] == 13 else i].decode("latin-1")
        del buf[:end]
        self._scan = 0
        self._line_done = False
        lines, flat, ctl = head_lines(head)
        request_line = lines[0]
        if len(request_line) > self.max_uri_bytes:
            raise ParseError(414, "request line too long")
        if ctl and _CTL_ANY(request_line):
            raise ParseError(400, "control character in request line")
        method, target, path, query, v11, url_host = _request_line(request_line)
        if end > self.max_header_bytes:
            raise ParseError(431, "request head too large")
        if ctl and _CTL_FIELD(flat, len(request_line)):
            raise ParseError(400, "control character in header")

        headers, raw_headers = header_fields(lines, _COMMON_NAMES)
        content_length = -1
        chunked = False
        te = headers.get("transfer-encoding")
        cl = headers.get("content-length")
        if te is not None:
            if not v11:
                # RFC 9112 §6.1: an HTTP/1.0 message cannot have used it; what framed it is
                # anyone's guess, so refuse it, as nginx does.
                raise ParseError(400, "Transfer-Encoding in an HTTP/1.0 request")
            if cl is not None:
                raise ParseError(400, "both Content-Length and Transfer-Encoding")
            if not is_chunked(te):
                raise ParseError(400, "unsupported Transfer-Encoding")
            chunked = True
        elif cl is not None:
            headers["content-length"], content_length = parse_content_length(cl)
            if content_length > self.max_body_bytes:
                raise ParseError(413, "request body too large")

        host = headers.get("host")
        if host is None:
            if v11:
                raise ParseError(400, "missing Host header")
            host = ""
        elif host not in _VALID_HOSTS:
            _check_host(host)
        if url_host is not None:
            # RFC 9112 §3.2.2: the target's authority wins over Host, for routing and upstream.
            if url_host not in _VALID_HOSTS:
                _check_host(url_host)
            host = url_host

        connection = headers.get("connection")
        if connection is None:
            keep_alive = v11
        else:
            keep_alive = _CONNECTION_FAST.get(connection.lower())
            if keep_alive is None:
                tokens = {t.strip(" \t") for t in connection.lower().split(",")}
                keep_alive = "close" not in tokens and (v11 or "keep-alive" in tokens)
        self._frame_body(chunked, content_length)
        return Request(
            method,
            target,
            path,
            query,
            "1.1" if v11 else "1.0",
            headers,
            raw_headers,
            host,
            content_length,
            chunked,
            keep_alive,
        )

    def _partial_head(self) -> _NeedData:
        """No complete head yet: enforce the limits as early as the bytes allow."""
        buf = self._buf
        n = len(buf)
        if not self._line_done:
            # There is no LF before _scan (else the line would be done), so start there.
            i = buf.find(b"\n", self._scan, self.max_uri_bytes + 2)
            if i < 0:
                # A trailing CR may be the start of the line's CRLF, so it doesn't count yet.
                if n - (buf[-1] == 13) > self.max_uri_bytes:
                    raise ParseError(414, "request line too long")
            else:
                line = buf[: i - 1 if buf[i - 1] == 13 else i].decode("latin-1")
                if len(line) > self.max_uri_bytes:
                    raise ParseError(414, "request line too long")
                if _CTL_ANY(line):
                    raise ParseError(400, "control character in request line")
                _request_line(line)
                self._line_done = True
        if self._line_done and n > self.max_header_bytes:
            raise ParseError(431, "request head too large")
        # The end of the head is up to 3 bytes long and may straddle this feed and the next.
        self._scan = n - 2 if n > 2 else 0
        return NEED_DATA
