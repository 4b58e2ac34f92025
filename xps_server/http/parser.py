"""Sans-IO HTTP/1.1 request parser: bytes in, events out, no sockets.

Owns what is particular to requests: the request line and its method, target and version rules,
Host, Connection, and the size limits behind 400/413/414/431. The caller feeds whatever the
socket produced and pulls `Request`, `Data` and `END_OF_MESSAGE` events until `NEED_DATA`.
Errors are raised as `ParseError` carrying the status to answer with; a parser that has failed
keeps raising the same error.

Validation order is fixed so that every way of splitting the input gives the same outcome:
request line too long (414), bad request line (400), head too large (431), bad header (400),
body too large (413). The request line is therefore checked as soon as it is complete.

The buffer, body framing, chunked decoding and sticky errors are `framing.MessageParser`'s,
shared with `response_parser.ResponseParser`; this module re-exports the events and
`ParseError` from there.
"""

from __future__ import annotations

import re
from typing import final

from xps_server.http.framing import (
    END_OF_MESSAGE,
    NEED_DATA,
    Data,
    EndOfMessage,
    MessageParser,
    NeedData,
    ParseError,
    body_framing,
    fields_as_received,
    find_field_control,
    find_head_end,
    head_lines,
    header_fields,
    keeps_alive,
)

__all__ = [
    "END_OF_MESSAGE",
    "NEED_DATA",
    "Data",
    "EndOfMessage",
    "MessageParser",
    "NeedData",
    "ParseError",
    "Request",
    "RequestParser",
]


@final  # the session tells events apart with `type(event) is Request`
class Request:
    """A parsed request head. `path` and `query` are still percent-encoded."""

    __slots__ = (
        "chunked",
        "content_length",
        "headers",
        "host",
        "keep_alive",
        "lines",
        "method",
        "path",
        "query",
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
        lines: list[str],
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
        self.lines = lines  # the head's lines, checked: the fields as received come from them
        self.host = host
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive

    @property
    def raw_headers(self) -> list[tuple[str, str]]:
        """The fields as received: (name, value) in order, names as spelled."""
        return fields_as_received(self.lines)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} HTTP/{self.version}>"


# Anything below 0x20 and DEL; the request line allows none of them.
_CTL_ANY = re.compile(r"[\x00-\x1f\x7f]").search
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
    if method == "CONNECT":
        # RFC 9112 §3.2.3: CONNECT takes the authority-form only, which no route serves. Any
        # other form is malformed, and passed upstream a 2xx to it would make that connection
        # a tunnel (RFC 9112 §6.3) where we read a message and pool the connection.
        raise ParseError(400, "bad request-target")
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


class RequestParser(MessageParser[Request]):
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

    def _head(self) -> Request | NeedData:
        buf = self._buf
        # The head ends at the first empty line, whether lines end in CRLF or a bare LF. One
        # search for the earliest end keeps a large pipelined buffer from being rescanned.
        m = find_head_end(buf, self._scan)
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
        if ctl and find_field_control(flat, len(request_line)):
            raise ParseError(400, "control character in header")

        headers = header_fields(lines, _COMMON_NAMES)
        if "transfer-encoding" in headers or "content-length" in headers:
            if not v11 and "transfer-encoding" in headers:
                # RFC 9112 §6.1: an HTTP/1.0 message cannot have used it; what framed it is
                # anyone's guess, so refuse it, as nginx does.
                raise ParseError(400, "Transfer-Encoding in an HTTP/1.0 request")
            chunked, content_length = body_framing(headers)
            if content_length > self.max_body_bytes:
                raise ParseError(413, "request body too large")
        else:
            chunked = False
            content_length = -1

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

        keep_alive = keeps_alive(headers.get("connection"), v11)
        self._frame_body(chunked, content_length)
        return Request(
            method,
            target,
            path,
            query,
            "1.1" if v11 else "1.0",
            headers,
            lines,
            host,
            content_length,
            chunked,
            keep_alive,
        )

    def _partial_head(self) -> NeedData:
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
