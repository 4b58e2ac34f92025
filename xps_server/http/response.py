"""Response serialisation: status lines, the headers every response carries, canned pages.

Heads are assembled from pre-encoded pieces (status line with `Server`, a `Date` line refreshed
once a second, the caller's field block, the `Connection` line) so the hot path is one join.
"""

from __future__ import annotations

import html
import time
from email.utils import formatdate
from http import HTTPStatus

CONNECTION_KEEP_ALIVE = b"Connection: keep-alive\r\n\r\n"
CONNECTION_CLOSE = b"Connection: close\r\n\r\n"


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def http_date(timestamp: float) -> str:
    """RFC 9110 IMF-fixdate, e.g. 'Sun, 06 Nov 1994 08:49:37 GMT'."""
    return formatdate(timestamp, usegmt=True)


class Responder:
    """Builds response heads and canned bodies for one `server_name`."""

    def __init__(self, server_name: str) -> None:
        self.server_name = server_name
        self._prefixes: dict[int, bytes] = {}
        self._errors: dict[int, tuple[bytes, bytes]] = {}
        self._date_second = -1
        self._date_line = b""

    def prefix(self, status: int) -> bytes:
        """`HTTP/1.1 <status> <reason>` and the `Server` line."""
        found = self._prefixes.get(status)
        if found is None:
            found = f"HTTP/1.1 {status} {reason(status)}\r\nServer: {self.server_name}\r\n".encode(
                "latin-1", "replace"
            )
            self._prefixes[status] = found
        return found

    def date_line(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date_line = f"Date: {http_date(now)}\r\n".encode()
        return self._date_line

    def head(self, status: int, fields: bytes, keep_alive: bool, body: bytes = b"") -> bytes:
        """A response head, and `body` after it; `fields` are header lines ending in CRLF."""
        return b"".join(
            (
                self.prefix(status),
                self.date_line(),
                fields,
                CONNECTION_KEEP_ALIVE if keep_alive else CONNECTION_CLOSE,
                body,
            )
        )

    def page(self, status: int) -> tuple[bytes, bytes]:
        """(field block, body) of an nginx-style HTML page for an error or redirect status."""
        found = self._errors.get(status)
        if found is None:
            title = html.escape(f"{status} {reason(status)}")
            body = (
                f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
                f"<center><h1>{title}</h1></center>\r\n"
                f"<hr><center>{html.escape(self.server_name)}</center>\r\n</body>\r\n</html>\r\n"
            ).encode()
            fields = b"Content-Type: text/html\r\nContent-Length: %d\r\n" % len(body)
            found = (fields, body)
            self._errors[status] = found
        return found

    def error(
        self, status: int, keep_alive: bool = False, extra: bytes = b"", head_only: bool = False
    ) -> bytes:
        """A complete canned response for `status`, with `extra` header lines."""
        fields, body = self.page(status)
        return self.head(status, fields + extra, keep_alive, b"" if head_only else body)
