"""Request smuggling through the reverse proxy: a table of hostile and odd messages.

Each vector is sent, followed by a pipelined `GET /follow` that closes the connection, through
one running server: "/" proxies to a recording upstream (`RawBackend`, framed by h11), and
"/admin" proxies to the same upstream behind an ip_whitelist the test client is not on, so a
smuggled request for it would show up at the upstream.

For every vector the test computes what the proxy parsed (our sans-IO `RequestParser` over
the client bytes) and checks:
- the table's expectation (forward, reject with a 4xx, a body error) against that parse;
- the client got exactly the responses the parse calls for, in order, each framed as h11
  reads it: one per request up to the first that closes the connection, then the refusal of
  a bad head, if any; each 200 is the upstream's answer to that very request;
- the upstream got exactly the complete requests the proxy parsed for "/" (method, origin-form
  target, body), one per connection, nothing left over except the unfinished start of a
  message whose body the proxy refused; each head framed as parsed (one Content-Length of
  plain digits, or chunked, never both), with no underscore field names and one Host, the
  routing host.

The upstream answers with `Connection: close` and closes lingeringly, so each exchange has
its own connection and the records are final once the proxy closed them all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.helpers import RunningServer, connect, free_port, server_config
from tests.raw_backend import RawBackend, RecordedConn
from tests.wire import (
    ClientReading,
    Parsed,
    ProxyView,
    framing_problems,
    proxy_view,
    read_reply,
    read_responses,
)

pytestmark = pytest.mark.timeout(20)

HOST = "localhost"
FOLLOW = b"GET /follow HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
HELLO = b"hello"
CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"
SMUGGLED = b"GET /admin/secret HTTP/1.1\r\nHost: localhost\r\n\r\n"
SMUGGLED_CHUNK = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)


# --- expectations -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Forward:
    """The vector's first message is a complete request that the proxy forwards."""

    body: bytes | None = None  # the body it must have been parsed with, when it matters
    chunked: bool | None = None


@dataclass(frozen=True)
class Reject:
    """The vector's first head is refused with one of `statuses`; nothing goes upstream."""

    statuses: tuple[int, ...] = (400,)


@dataclass(frozen=True)
class BodyError:
    """The head is forwarded, then the body turns out broken: the proxy may answer a 4xx or
    just close, but the upstream never gets a complete request out of it."""


@dataclass(frozen=True)
class Either:
    """RFC and nginx disagree or leave the choice: forwarding and refusing are both right, as
    long as everything the upstream gets is what the proxy parsed."""


Expect = Forward | Reject | BodyError | Either


@dataclass(frozen=True)
class Vector:
    id: str
    data: bytes
    expect: Expect


def msg(
    *fields: str,
    body: bytes = b"",
    method: str = "POST",
    target: str = "/",
    version: str = "1.1",
    host: str | None = HOST,
    eol: str = "\r\n",
) -> bytes:
    """A request: the request line, Host (unless None), `fields` as given, then `body`."""
    lines = [f"{method} {target} HTTP/{version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += fields
    return (eol.join(lines) + eol + eol).encode("latin-1") + body


def cl(*fields: str, body: bytes = HELLO, **kw) -> bytes:
    """A POST of `body` framed by `Content-Length: len(body)` plus `fields`."""
    return msg(f"Content-Length: {len(body)}", *fields, body=body, **kw)


def te(*fields: str, body: bytes = CHUNKED_HELLO, **kw) -> bytes:
    """A chunked POST whose chunked `body` is given raw."""
    return msg("Transfer-Encoding: chunked", *fields, body=body, **kw)


def chunks(size_line: bytes, data: bytes = HELLO, rest: bytes = b"\r\n0\r\n\r\n") -> bytes:
    return msg("Transfer-Encoding: chunked", body=size_line + b"\r\n" + data + rest)


UNKNOWN_CODING = Reject((400, 501))  # RFC 9112 §6.1 says 501; nginx 1.22 answers 501 too

VECTORS: list[Vector] = [
    # Baselines: plain requests go through, and the ACL'd path is refused before any upstream.
    Vector("base-get", msg(method="GET"), Forward(b"")),
    Vector("base-head", msg(method="HEAD"), Forward(b"")),
    Vector("base-cl", cl(), Forward(HELLO)),
    Vector("base-cl-zero", msg("Content-Length: 0"), Forward(b"")),
    Vector("base-chunked", te(), Forward(HELLO, chunked=True)),
    Vector("base-admin-denied", msg(method="GET", target="/admin/x"), Forward()),
    Vector("base-body-is-a-request", cl(body=SMUGGLED), Forward(SMUGGLED)),
    Vector("base-chunk-is-a-request", te(body=SMUGGLED_CHUNK), Forward(SMUGGLED, True)),
    Vector("base-http10-close", cl(version="1.0"), Forward(HELLO)),
    Vector("base-http10-keep-alive", cl("Connection: keep-alive", version="1.0"), Forward(HELLO)),
    Vector("base-leading-empty-lines", b"\r\n\r\n" + cl(), Forward(HELLO)),
    # CONNECT needs the authority-form, which we refuse; in any other form it would reach the
    # upstream, whose 2xx to it makes the connection a tunnel (RFC 9112 §6.3) we would pool.
    Vector("connect-origin-form", msg(method="CONNECT"), Reject()),
    Vector("connect-absolute-form", msg(method="CONNECT", target="http://localhost/"), Reject()),
    # CL.TE and TE.CL: both framings at once. RFC 9112 §6.1 lets a server reject it, and
    # nginx (since 1.21.1) answers 400: there is no safe way to pick one.
    Vector(
        "clte-classic",
        msg("Content-Length: 6", "Transfer-Encoding: chunked", body=b"0\r\n\r\nG"),
        Reject(),
    ),
    Vector(
        "tecl-classic",
        msg("Transfer-Encoding: chunked", "Content-Length: 3", body=b"8\r\nSMUGGLED\r\n0\r\n\r\n"),
        Reject(),
    ),
    Vector(
        "clte-smuggle-admin",
        msg(
            f"Content-Length: {5 + len(SMUGGLED)}",
            "Transfer-Encoding: chunked",
            body=b"0\r\n\r\n" + SMUGGLED,
        ),
        Reject(),
    ),
    Vector(
        "clte-lowercase-names",
        msg("content-length: 5", "transfer-encoding: chunked", body=CHUNKED_HELLO),
        Reject(),
    ),
    Vector(
        "clte-cl-zero",
        msg("Content-Length: 0", "Transfer-Encoding: chunked", body=CHUNKED_HELLO),
        Reject(),
    ),
    Vector(
        "clte-xchunked",
        msg("Content-Length: 5", "Transfer-Encoding: xchunked", body=HELLO),
        UNKNOWN_CODING,
    ),
    Vector(
        "clte-te-space-colon",
        msg("Content-Length: 5", "Transfer-Encoding : chunked", body=HELLO),
        Reject(),
    ),
    Vector(
        "clte-te-twice",
        msg(
            "Content-Length: 5",
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: chunked",
            body=HELLO,
        ),
        Reject(),
    ),
    Vector(
        "clte-cl-list",
        msg("Content-Length: 5, 5", "Transfer-Encoding: chunked", body=CHUNKED_HELLO),
        Reject(),
    ),
    Vector(
        "clte-te-underscore",
        msg("Content-Length: 5", "Transfer_Encoding: chunked", body=HELLO),
        Forward(HELLO, False),
    ),
    # TE.TE obfuscations. Coding names are case-insensitive and OWS is stripped (RFC 9110
    # §5.5, §10.1.4): those forward. Anything but exactly one final "chunked" has a length the
    # server cannot determine (RFC 9112 §6.3: 400) or a coding it does not know (§6.1: 501;
    # nginx 1.22 answers 501 to any value but "chunked").
    Vector(
        "te-case-Chunked",
        msg("Transfer-Encoding: Chunked", body=CHUNKED_HELLO),
        Forward(HELLO, True),
    ),
    Vector(
        "te-case-CHUNKED",
        msg("Transfer-Encoding: CHUNKED", body=CHUNKED_HELLO),
        Forward(HELLO, True),
    ),
    Vector(
        "te-name-case", msg("TRANSFER-ENCODING: chunked", body=CHUNKED_HELLO), Forward(HELLO, True)
    ),
    Vector(
        "te-spaces",
        msg("Transfer-Encoding:   chunked   ", body=CHUNKED_HELLO),
        Forward(HELLO, True),
    ),
    Vector(
        "te-tabs", msg("Transfer-Encoding:\tchunked\t", body=CHUNKED_HELLO), Forward(HELLO, True)
    ),
    Vector(
        "te-chunked-identity",
        msg("Transfer-Encoding: chunked, identity", body=CHUNKED_HELLO),
        UNKNOWN_CODING,
    ),
    Vector(
        "te-identity-chunked",
        msg("Transfer-Encoding: identity, chunked", body=CHUNKED_HELLO),
        UNKNOWN_CODING,
    ),
    Vector(
        "te-gzip-chunked",
        msg("Transfer-Encoding: gzip, chunked", body=CHUNKED_HELLO),
        UNKNOWN_CODING,
    ),
    Vector("te-identity", msg("Transfer-Encoding: identity", body=HELLO), UNKNOWN_CODING),
    Vector("te-xchunked", msg("Transfer-Encoding: xchunked", body=CHUNKED_HELLO), UNKNOWN_CODING),
    Vector("te-chunkedx", msg("Transfer-Encoding: chunkedx", body=CHUNKED_HELLO), UNKNOWN_CODING),
    Vector(
        "te-chunked-semicolon-param",
        msg("Transfer-Encoding: chunked;x", body=CHUNKED_HELLO),
        UNKNOWN_CODING,
    ),
    Vector(
        "te-chunked-param-value",
        msg("Transfer-Encoding: chunked; q=1", body=CHUNKED_HELLO),
        UNKNOWN_CODING,
    ),
    Vector("te-quoted", msg('Transfer-Encoding: "chunked"', body=CHUNKED_HELLO), UNKNOWN_CODING),
    Vector(
        "te-chunked-twice-list",
        msg("Transfer-Encoding: chunked, chunked", body=CHUNKED_HELLO),
        UNKNOWN_CODING,
    ),
    Vector(
        "te-duplicate-lines",
        msg("Transfer-Encoding: chunked", "Transfer-Encoding: chunked", body=CHUNKED_HELLO),
        UNKNOWN_CODING,
    ),
    Vector(
        "te-duplicate-identity-line",
        msg("Transfer-Encoding: chunked", "Transfer-Encoding: identity", body=CHUNKED_HELLO),
        UNKNOWN_CODING,
    ),
    Vector("te-empty", msg("Transfer-Encoding: ", body=HELLO), UNKNOWN_CODING),
    # An empty list element is valid list syntax (RFC 9110 §5.6.1) but nginx takes only
    # "chunked": either is safe while the upstream gets the framing the proxy parsed.
    Vector("te-empty-element", msg("Transfer-Encoding: , chunked", body=CHUNKED_HELLO), Either()),
    # Transfer-Encoding in HTTP/1.0 means faulty framing (RFC 9112 §6.1); nginx answers 400.
    Vector(
        "te-http10", msg("Transfer-Encoding: chunked", version="1.0", body=CHUNKED_HELLO), Reject()
    ),
    Vector(
        "te-http10-keep-alive",
        msg(
            "Transfer-Encoding: chunked",
            "Connection: keep-alive",
            version="1.0",
            body=CHUNKED_HELLO,
        ),
        Reject(),
    ),
    # Whitespace between name and colon: RFC 9112 §5.1 says MUST reject with 400.
    Vector(
        "te-space-before-colon", msg("Transfer-Encoding : chunked", body=CHUNKED_HELLO), Reject()
    ),
    Vector(
        "te-tab-before-colon", msg("Transfer-Encoding\t: chunked", body=CHUNKED_HELLO), Reject()
    ),
    # Vertical tab and form feed are not OWS: the value is then not "chunked" (and holds a
    # control character, RFC 9110 §5.5).
    Vector(
        "te-vtab-before", msg("Transfer-Encoding:\x0bchunked", body=CHUNKED_HELLO), UNKNOWN_CODING
    ),
    Vector(
        "te-vtab-after", msg("Transfer-Encoding: chunked\x0b", body=CHUNKED_HELLO), UNKNOWN_CODING
    ),
    Vector("te-formfeed", msg("Transfer-Encoding:\x0cchunked", body=CHUNKED_HELLO), UNKNOWN_CODING),
    # obs-fold: RFC 9112 §5.2 allows rejecting with 400; nginx (since 1.21.1) refuses a
    # space in a header name, which is what a continuation line looks like to it.
    Vector(
        "te-obs-fold-value", msg("Transfer-Encoding:", " chunked", body=CHUNKED_HELLO), Reject()
    ),
    Vector(
        "te-obs-fold-list",
        msg("Transfer-Encoding: chunked", " , identity", body=CHUNKED_HELLO),
        Reject(),
    ),
    Vector("te-obs-fold-into-cl", cl("X-Pad: a", " Transfer-Encoding: chunked"), Reject()),
    # NUL and bare CR: RFC 9110 §5.5 and RFC 9112 §2.2 make them invalid; nginx answers 400.
    Vector("te-nul-value", msg("Transfer-Encoding: chunked\x00", body=CHUNKED_HELLO), Reject()),
    Vector("te-nul-name", msg("Transfer-Encoding\x00: chunked", body=CHUNKED_HELLO), Reject()),
    Vector("te-behind-bare-cr", cl("X-Pad: a\rTransfer-Encoding: chunked"), Reject()),
    # A name nginx drops (underscore) frames nothing: only the real field counts.
    Vector(
        "te-underscore-alone",
        msg("Transfer_Encoding: chunked", body=CHUNKED_HELLO),
        Forward(b"", False),
    ),
    Vector("te-underscore-with-real-te", te("Content_Length: 10"), Forward(HELLO, True)),
    # Connection naming framing fields (finding 1): Content-Length, Transfer-Encoding and Host
    # are never hop-by-hop (RFC 9110 §7.6.1 lists what is; a proxy must keep the framing it
    # parsed), so whatever Connection says, the upstream gets the same framing and Host.
    Vector("conn-content-length", cl("Connection: Content-Length"), Forward(HELLO)),
    Vector("conn-content-length-lower", cl("Connection: content-length"), Forward(HELLO)),
    Vector("conn-content-length-upper", cl("Connection: CONTENT-LENGTH"), Forward(HELLO)),
    Vector(
        "conn-keep-alive-content-length",
        cl("Connection: keep-alive, Content-Length"),
        Forward(HELLO),
    ),
    Vector("conn-close-content-length", cl("Connection: close, Content-Length"), Forward(HELLO)),
    Vector(
        "conn-content-length-spaced-list",
        cl("Connection:  ,Content-Length ,  keep-alive"),
        Forward(HELLO),
    ),
    Vector(
        "conn-two-lines", cl("Connection: keep-alive", "Connection: Content-Length"), Forward(HELLO)
    ),
    Vector(
        "conn-content-length-smuggle-admin",
        cl("Connection: Content-Length", body=SMUGGLED),
        Forward(SMUGGLED),
    ),
    Vector(
        "conn-content-length-http10",
        cl("Connection: keep-alive, Content-Length", version="1.0", body=SMUGGLED),
        Forward(SMUGGLED),
    ),
    Vector(
        "conn-content-length-zero",
        msg("Connection: Content-Length", "Content-Length: 0", method="GET"),
        Forward(b""),
    ),
    Vector(
        "conn-content-length-on-chunked", te("Connection: Content-Length"), Forward(HELLO, True)
    ),
    Vector("conn-transfer-encoding", te("Connection: Transfer-Encoding"), Forward(HELLO, True)),
    Vector(
        "conn-transfer-encoding-smuggle",
        te("Connection: transfer-encoding", body=SMUGGLED_CHUNK),
        Forward(SMUGGLED, True),
    ),
    Vector("conn-host", cl("Connection: Host"), Forward(HELLO)),
    Vector("conn-host-lower", msg("Connection: host", method="GET"), Forward(b"")),
    Vector(
        "conn-all-framing",
        cl("Connection: Content-Length, Host, Transfer-Encoding", body=SMUGGLED),
        Forward(SMUGGLED),
    ),
    # Duplicate and listed Content-Length. Equal values: RFC 9110 §8.6 lets a recipient
    # reject or collapse them (nginx 1.22 rejects a repeated Content-Length with 400), so
    # either is right as long as the upstream gets exactly one plain value. Unequal values
    # and anything but 1*DIGIT are invalid: 400.
    Vector("cl-dup-equal", msg("Content-Length: 5", "Content-Length: 5", body=HELLO), Either()),
    Vector(
        "cl-dup-equal-case", msg("Content-Length: 5", "content-length: 5", body=HELLO), Either()
    ),
    Vector("cl-list-equal", msg("Content-Length: 5, 5", body=HELLO), Either()),
    Vector("cl-list-equal-tight", msg("Content-Length: 5,5", body=HELLO), Either()),
    Vector("cl-dup-unequal", msg("Content-Length: 5", "Content-Length: 6", body=HELLO), Reject()),
    Vector("cl-list-unequal", msg("Content-Length: 5, 6", body=HELLO), Reject()),
    Vector("cl-list-empty-element", msg("Content-Length: 5,", body=HELLO), Reject()),
    Vector(
        "cl-dup-smuggle",
        msg("Content-Length: 0", f"Content-Length: {len(SMUGGLED)}", body=SMUGGLED),
        Reject(),
    ),
    Vector("cl-leading-zeros", msg("Content-Length: 005", body=HELLO), Forward(HELLO)),
    Vector(
        "cl-many-leading-zeros",
        msg("Content-Length: " + "0" * 40 + "5", body=HELLO),
        Forward(HELLO),
    ),
    Vector("cl-ows", msg("Content-Length:   5   ", body=HELLO), Forward(HELLO)),
    Vector("cl-tab", msg("Content-Length:\t5", body=HELLO), Forward(HELLO)),
    Vector("cl-plus", msg("Content-Length: +5", body=HELLO), Reject()),
    Vector("cl-minus", msg("Content-Length: -1", body=HELLO), Reject()),
    Vector("cl-inner-space", msg("Content-Length: 5 5", body=HELLO), Reject()),
    Vector("cl-superscript", msg("Content-Length: 1\xb2", body=HELLO), Reject()),
    Vector("cl-superscript-alone", msg("Content-Length: \xb2", body=HELLO), Reject()),
    Vector("cl-arabic-indic-utf8", msg("Content-Length: \xd9\xa5", body=HELLO), Reject()),
    Vector("cl-fullwidth-utf8", msg("Content-Length: \xef\xbc\x95", body=HELLO), Reject()),
    Vector("cl-hex", msg("Content-Length: 0x5", body=HELLO), Reject()),
    Vector("cl-decimal-point", msg("Content-Length: 5.0", body=HELLO), Reject()),
    Vector("cl-empty", msg("Content-Length: ", body=HELLO), Reject()),
    Vector("cl-nul", msg("Content-Length: 5\x00", body=HELLO), Reject()),
    Vector("cl-space-before-colon", msg("Content-Length : 5", body=HELLO), Reject()),
    Vector(
        "cl-huge", msg("Content-Length: 99999999999999999999999", body=HELLO), Reject((400, 413))
    ),
    Vector("cl-over-body-limit", msg("Content-Length: 10485761", body=HELLO), Reject((413,))),
    Vector("cl-shorter-than-body", msg("Content-Length: 3", body=HELLO), Forward(b"hel")),
    Vector("cl-underscore-alone", msg("Content_Length: 5", body=HELLO), Forward(b"")),
    # Line endings. A bare LF ending a line is accepted (RFC 9112 §2.2 MAY; nginx does); the
    # upstream must get a clean CRLF head. A bare CR anywhere else is invalid (§2.2 MUST
    # reject or replace), and so are obs-fold lines (§5.2; nginx 400).
    Vector("lf-only", cl(eol="\n"), Forward(HELLO)),
    Vector(
        "lf-mixed",
        b"POST / HTTP/1.1\nHost: localhost\r\nContent-Length: 5\n\r\nhello",
        Forward(HELLO),
    ),
    Vector("lf-only-chunked", te(eol="\n"), Forward(HELLO, True)),
    Vector("lf-chunk-lines", msg("Transfer-Encoding: chunked", body=b"5\nhello\n0\n\n"), Either()),
    Vector("cr-bare-in-value", cl("X-Pad: a\rb"), Reject()),
    Vector("cr-double", cl("X-Pad: a\r"), Reject()),
    Vector(
        "cr-in-request-line",
        b"POST /\r HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello",
        Reject(),
    ),
    Vector(
        "cr-line-start",
        b"POST / HTTP/1.1\r\nHost: localhost\r\n\rContent-Length: 5\r\n\r\nhello",
        Reject(),
    ),
    Vector("fold-space", cl("X-Pad: a", " b"), Reject()),
    Vector("fold-tab", cl("X-Pad: a", "\tb"), Reject()),
    Vector(
        "fold-first-line",
        b"POST / HTTP/1.1\r\n Host: localhost\r\nContent-Length: 5\r\n\r\nhello",
        Reject(),
    ),
    Vector("fold-host", cl(" evil.test"), Reject()),
    Vector("fold-content-length", msg("Content-Length: 5", " 0", body=HELLO), Reject()),
    # Control characters and odd names. RFC 9110 §5.1/§5.5: names are tokens, values hold no
    # CTL but HTAB; nginx refuses NUL, spaces and controls in names with 400. obs-text (high
    # bytes) is allowed in values. A non-token name nginx would drop (ignore_invalid_headers)
    # may also be refused: either, as long as it never reaches the upstream.
    Vector("ctl-nul-in-name", cl("X-P\x00ad: 1"), Reject()),
    Vector("ctl-nul-in-value", cl("X-Pad: a\x00b"), Reject()),
    Vector("ctl-soh-in-value", cl("X-Pad: a\x01b"), Reject()),
    Vector("ctl-soh-in-name", cl("X-P\x01ad: 1"), Reject()),
    Vector("ctl-esc-in-value", cl("X-Pad: \x1b[31m"), Reject()),
    Vector("ctl-del-in-value", cl("X-Pad: a\x7fb"), Reject()),
    Vector("ctl-nul-in-target", cl(target="/a\x00b"), Reject()),
    Vector("ctl-in-method", cl(method="PO\x01ST"), Reject()),
    Vector("name-space-inside", cl("X Pad: 1"), Reject()),
    Vector("name-empty", cl(": 1"), Reject()),
    Vector("name-no-colon", cl("X-Pad"), Reject()),
    Vector("name-at-sign", cl("X@Pad: 1"), Either()),
    Vector("name-high-byte", cl("X-P\xe9d: 1"), Either()),
    Vector("value-high-bytes", cl("X-Pad: caf\xe9"), Forward(HELLO)),
    # Underscores in names: nginx drops such fields by default (underscores_in_headers off,
    # ignore_invalid_headers on), so they never reach an upstream.
    Vector("name-underscore", cl("X_Pad: 1"), Forward(HELLO)),
    Vector("name-underscore-host", cl("Host_: evil.test"), Forward(HELLO)),
    # Absolute-form (finding 2): the target's host is the routing host and must be the Host
    # the upstream gets (RFC 9112 §3.2.2). An http URI needs a host and no userinfo (RFC 9110
    # §4.2.1, §4.2.4); a request without a Host field, or with an invalid one, is a 400
    # whatever its target (RFC 9112 §3.2; nginx validates Host first).
    Vector(
        "abs-host-differs",
        msg(host="internal.test", method="GET", target="http://public.test/x"),
        Forward(b""),
    ),
    Vector(
        "abs-port",
        msg(host="internal.test", method="GET", target="http://public.test:8080/x"),
        Forward(b""),
    ),
    Vector(
        "abs-no-path",
        msg(host="internal.test", method="GET", target="http://public.test"),
        Forward(b""),
    ),
    Vector(
        "abs-query",
        msg(host="internal.test", method="GET", target="http://public.test/x?y=1"),
        Forward(b""),
    ),
    Vector(
        "abs-upper-scheme",
        msg(host="internal.test", method="GET", target="HTTP://Public.Test/x"),
        Forward(b""),
    ),
    Vector(
        "abs-https",
        msg(host="internal.test", method="GET", target="https://public.test/x"),
        Forward(b""),
    ),
    Vector(
        "abs-with-body", cl(host="internal.test", target="http://public.test/x"), Forward(HELLO)
    ),
    Vector(
        "abs-http10-no-host",
        msg(host=None, version="1.0", method="GET", target="http://public.test/x"),
        Forward(b""),
    ),
    Vector(
        "abs-admin-path",
        msg(host="public.test", method="GET", target="http://public.test/admin/x"),
        Forward(b""),
    ),
    Vector(
        "abs-userinfo",
        msg(host="internal.test", method="GET", target="http://user@public.test/x"),
        Reject(),
    ),
    Vector(
        "abs-userinfo-password",
        msg(host="internal.test", method="GET", target="http://u:p@public.test/x"),
        Reject(),
    ),
    Vector("abs-empty-host", msg(host="internal.test", method="GET", target="http:///x"), Reject()),
    Vector(
        "abs-ftp", msg(host="internal.test", method="GET", target="ftp://public.test/x"), Reject()
    ),
    Vector(
        "abs-no-host-field", msg(host=None, method="GET", target="http://public.test/x"), Reject()
    ),
    Vector(
        "abs-bad-host-field",
        msg(host="evil.test/x?y", method="GET", target="http://public.test/x"),
        Reject(),
    ),
    Vector(
        "abs-empty-host-field", msg(host="", method="GET", target="http://public.test/x"), Reject()
    ),
    Vector(
        "abs-comma-authority",
        msg(host="internal.test", method="GET", target="http://a.test,b.test/x"),
        Reject(),
    ),
    # Host validation (RFC 9112 §3.2: one Host, a valid uri-host [":" port], else 400; nginx
    # refuses empty hosts, paths, spaces and controls; a comma list is how duplicates fold).
    Vector("host-empty", msg(host="", method="GET"), Reject()),
    Vector("host-comma-list", msg(host="a.test, b.test", method="GET"), Reject()),
    Vector("host-path-query", msg(host="evil.test/x?y", method="GET"), Reject()),
    Vector("host-space", msg(host="evil test", method="GET"), Reject()),
    Vector("host-userinfo", msg(host="user@evil.test", method="GET"), Reject()),
    Vector("host-backslash", msg(host="evil.test\\x", method="GET"), Reject()),
    Vector("host-question", msg(host="evil.test?x", method="GET"), Reject()),
    Vector("host-hash", msg(host="evil.test#x", method="GET"), Reject()),
    Vector("host-two-ports", msg(host="a.test:80:90", method="GET"), Reject()),
    Vector("host-duplicate", msg("Host: other.test", method="GET"), Reject()),
    Vector("host-duplicate-case", msg("host: other.test", method="GET"), Reject()),
    Vector("host-missing-http11", msg(host=None, method="GET"), Reject()),
    Vector("host-missing-http10", msg(host=None, version="1.0", method="GET"), Forward(b"")),
    Vector("host-port", msg(host="public.test:8080", method="GET"), Forward(b"")),
    Vector("host-ipv6", msg(host="[::1]:8080", method="GET"), Forward(b"")),
    Vector("host-underscore-label", msg(host="my_host.test", method="GET"), Forward(b"")),
    Vector("host-ows", msg(host="  public.test  ", method="GET"), Forward(b"")),
    # Chunk sizes: 1*HEXDIG, any number of leading zeros (RFC 9112 §7.1); nginx accepts them
    # and refuses overflow. Anything else is a broken body after a forwarded head.
    Vector("chunk-leading-zeros", chunks(b"0005"), Forward(HELLO, True)),
    Vector("chunk-many-leading-zeros", chunks(b"0" * 200 + b"5"), Forward(HELLO, True)),
    Vector("chunk-upper-hex", chunks(b"A", b"0123456789"), Forward(b"0123456789", True)),
    Vector(
        "chunk-two-chunks",
        msg("Transfer-Encoding: chunked", body=b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"),
        Forward(HELLO, True),
    ),
    Vector("chunk-huge", chunks(b"F" * 20), BodyError()),
    Vector("chunk-2-pow-64", chunks(b"10000000000000000"), BodyError()),
    Vector("chunk-0x-prefix", chunks(b"0x5"), BodyError()),
    Vector("chunk-negative", chunks(b"-5"), BodyError()),
    Vector("chunk-plus", chunks(b"+5"), BodyError()),
    Vector("chunk-leading-space", chunks(b" 5"), BodyError()),
    Vector("chunk-inner-space", chunks(b"5 5"), BodyError()),
    Vector("chunk-empty-size", chunks(b""), BodyError()),
    Vector("chunk-arabic-indic", chunks("\u0665".encode()), BodyError()),
    Vector("chunk-fullwidth", chunks("\uff15".encode()), BodyError()),
    Vector("chunk-superscript", chunks(b"\xb2"), BodyError()),
    Vector("chunk-trailing-space", chunks(b"5 "), Either()),
    # Chunk extensions are ignored (RFC 9112 §7.1.1), BWS before ";" included; a server
    # ought to bound their length and answer a 4xx past it. The proxy re-chunks, so how it
    # reads an odd extension cannot desynchronise the upstream: either is right.
    Vector("ext-simple", chunks(b"5;a=b"), Forward(HELLO, True)),
    Vector("ext-bws", chunks(b"5 ;a=b"), Forward(HELLO, True)),
    Vector("ext-quoted", chunks(b'5;a="b c"'), Forward(HELLO, True)),
    Vector("ext-quoted-semicolon", chunks(b'5;a="x;y";z'), Forward(HELLO, True)),
    Vector("ext-long", chunks(b"5;" + b"a" * 3000), Forward(HELLO, True)),
    Vector("ext-too-long", chunks(b"5;" + b"a" * 5000), BodyError()),
    Vector("ext-unterminated-quote", chunks(b'5;a="b'), Either()),
    Vector(
        "ext-bare-lf", msg("Transfer-Encoding: chunked", body=b"5;a\nhello\r\n0\r\n\r\n"), Either()
    ),
    Vector("ext-bare-cr", chunks(b"5;a\rb"), Either()),
    Vector(
        "ext-smuggle-in-ext", chunks(b"5;" + SMUGGLED.replace(b"\r\n", b" ")), Forward(HELLO, True)
    ),
    # Chunk data must be followed by CRLF (RFC 9112 §7.1).
    Vector("term-missing", chunks(b"5", rest=b"XX0\r\n\r\n"), BodyError()),
    Vector("term-bare-cr", chunks(b"5", rest=b"\r0\r\n\r\n"), BodyError()),
    Vector("term-bare-lf", chunks(b"5", rest=b"\n0\r\n\r\n"), Either()),
    Vector("term-data-too-long", chunks(b"3"), BodyError()),
    Vector("term-data-too-short", chunks(b"7"), BodyError()),
    Vector("term-last-chunk-00", chunks(b"5", rest=b"\r\n00\r\n\r\n"), Forward(HELLO, True)),
    Vector("term-last-chunk-ext", chunks(b"5", rest=b"\r\n0;x=y\r\n\r\n"), Forward(HELLO, True)),
    Vector("term-no-final-crlf", chunks(b"5", rest=b"\r\n0\r\n"), BodyError()),
    # Trailers are read and dropped: framing fields there must not reach the upstream or
    # change the framing (RFC 9110 §6.5.1). Malformed trailer lines are a broken body.
    Vector(
        "trailer-content-length",
        chunks(b"5", rest=b"\r\n0\r\nContent-Length: 50\r\n\r\n"),
        Forward(HELLO, True),
    ),
    Vector(
        "trailer-transfer-encoding",
        chunks(b"5", rest=b"\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Forward(HELLO, True),
    ),
    Vector(
        "trailer-host", chunks(b"5", rest=b"\r\n0\r\nHost: evil.test\r\n\r\n"), Forward(HELLO, True)
    ),
    Vector(
        "trailer-underscore", chunks(b"5", rest=b"\r\n0\r\nX_Y: 1\r\n\r\n"), Forward(HELLO, True)
    ),
    Vector(
        "trailer-then-admin",
        chunks(b"5", rest=b"\r\n0\r\nX: y\r\n\r\n" + SMUGGLED),
        Forward(HELLO, True),
    ),
    Vector("trailer-obs-fold", chunks(b"5", rest=b"\r\n0\r\nX: y\r\n z\r\n\r\n"), BodyError()),
    Vector("trailer-no-colon", chunks(b"5", rest=b"\r\n0\r\nXY\r\n\r\n"), BodyError()),
    Vector("trailer-space-before-colon", chunks(b"5", rest=b"\r\n0\r\nX : y\r\n\r\n"), BodyError()),
    Vector(
        "trailer-too-large",
        chunks(b"5", rest=b"\r\n0\r\n" + b"X: " + b"y" * 17000 + b"\r\n\r\n"),
        BodyError(),
    ),
    # Pipelining: each message stands alone, answered in order.
    Vector(
        "pipe-get-get",
        msg(method="GET", target="/a") + msg(method="GET", target="/b"),
        Forward(b""),
    ),
    Vector("pipe-post-admin", cl() + msg(method="GET", target="/admin/x"), Forward(HELLO)),
    Vector("pipe-chunked-get", te() + msg(method="GET", target="/b"), Forward(HELLO, True)),
    Vector(
        "pipe-http10-stops", cl(version="1.0") + msg(method="GET", target="/never"), Forward(HELLO)
    ),
    Vector(
        "pipe-close-stops",
        cl("Connection: close") + msg(method="GET", target="/never"),
        Forward(HELLO),
    ),
    Vector(
        "pipe-admin-bad-chunk",
        chunks(b"zz", rest=b"\r\n0\r\n\r\n").replace(b"POST / ", b"POST /admin/x "),
        BodyError(),
    ),
]


# --- the server and its upstream ---------------------------------------------------------------
@pytest.fixture(scope="module")
def proxy(tmp_path_factory) -> Iterator[tuple[RunningServer, RawBackend]]:
    backend = RawBackend(keep_alive=False)
    route = {"type": "reverse_proxy", "upstreams": [backend.addr], "max_fails": 0}
    routes = [
        {"req_path": "/", **route},
        {"req_path": "/admin", **route, "ip_whitelist": ["127.0.0.2"]},
    ]
    # A short upstream_read: a request whose body the upstream waits for in vain costs 1 s.
    timeouts = {"upstream_connect": 1.0, "upstream_read": 1.0}
    server = RunningServer(
        server_config(free_port(), routes, timeouts=timeouts), tmp_path_factory.mktemp("smuggle")
    )
    yield server, backend
    server.stop()
    backend.stop()


def upstream_connects(server: RunningServer, backend: RawBackend) -> int:
    return server.call(lambda: server.core.upstreams[backend.addr].connects)


def view_of(server: RunningServer, data: bytes) -> ProxyView:
    limits = server.config.limits
    return proxy_view(data, limits.max_uri_bytes, limits.max_header_bytes, limits.max_body_bytes)


def denied(path: str) -> bool:
    return path == "/admin" or path.startswith("/admin/")


def table_problems(expect: Expect, view: ProxyView) -> list[str]:
    """Where the table and our parser disagree about the vector's first message."""
    first = view.messages[0] if view.messages else None
    if isinstance(expect, Reject):
        if first is not None:
            return [f"expected a refusal {expect.statuses}, the parser took {first.request!r}"]
        if view.error is None or view.error.status not in expect.statuses:
            return [f"expected a refusal {expect.statuses}, the parser said {view.error}"]
    elif isinstance(expect, Forward):
        if first is None or not first.complete:
            return [f"expected a forwarded request, the parser said {view.error}"]
        if expect.body is not None and bytes(first.body) != expect.body:
            return [f"expected body {expect.body!r}, the parser got {bytes(first.body)!r}"]
        if expect.chunked is not None and first.request.chunked != expect.chunked:
            return [f"expected chunked={expect.chunked}, the parser got {first.request.chunked}"]
    elif isinstance(expect, BodyError) and (first is None or first.complete or view.error is None):
        return [f"expected a head then a broken body, the parser said {view.error}"]
    return []


@dataclass
class Plan:
    """What the session must do with the parse: answer each request in order until one closes
    the connection; refuse a bad head with its status; end the connection on a body refused
    mid-stream, with at most one 4xx (nothing else was sent for that request yet)."""

    statuses: list[int]
    methods: list[str]
    forwarded: list[Parsed]  # the complete requests for "/", in order
    broken_body: Parsed | None  # a request whose head went through and whose body did not


def plan_of(view: ProxyView) -> Plan:
    plan = Plan([], [], [], None)
    for parsed in view.messages:
        request = parsed.request
        plan.methods.append(request.method)
        if denied(request.path):
            plan.statuses.append(403)  # answered at the head, before any body
        if not parsed.complete:
            plan.broken_body = parsed
            return plan
        if not denied(request.path):
            plan.statuses.append(200)
            plan.forwarded.append(parsed)
        if not request.keep_alive:
            return plan
    if view.error is not None:
        plan.statuses.append(view.error.status)
    return plan


def client_problems(reading: ClientReading, plan: Plan) -> list[str]:
    problems = [f"client: {reading.problem}"] if reading.problem else []
    statuses = [r.status for r in reading.responses]
    broken = plan.broken_body
    may_refuse = broken is not None and not denied(broken.request.path)
    if statuses != plan.statuses and not (
        may_refuse and statuses[:-1] == plan.statuses and 400 <= statuses[-1] < 500
    ):
        problems.append(f"client got statuses {statuses}, the parse calls for {plan.statuses}")
    return problems


def upstream_problems(conns: list[RecordedConn], plan: Plan, reading: ClientReading) -> list[str]:
    """The upstream got exactly the forwarded requests, one per connection, framed as parsed;
    nothing else but the start of a request whose body the proxy refused."""
    problems = []
    broken = plan.broken_body
    for c in conns:
        if c.error:
            problems.append(f"upstream conn {c.index}: h11 refused what it got: {c.error}")
        if len(c.requests) > 1:
            problems.append(f"upstream conn {c.index} framed {len(c.requests)} requests")
        unfinished = broken is not None and c is conns[-1] and not c.requests
        if c.leftover and not (
            unfinished and c.leftover.startswith(broken.request.method.encode() + b" ")
        ):
            problems.append(f"upstream conn {c.index}: bytes outside any request: {c.leftover!r}")
    seen = [r for c in conns for r in c.requests]
    if len(seen) != len(plan.forwarded):
        problems.append(
            f"upstream framed {[(r.method, r.target) for r in seen]}, the proxy parsed "
            f"{[(p.request.method, p.origin_target) for p in plan.forwarded]}"
        )
    for got, parsed in zip(seen, plan.forwarded, strict=False):
        request = parsed.request
        want = (request.method, parsed.origin_target, bytes(parsed.body))
        if (got.method, got.target, got.body) != want:
            problems.append(f"upstream got {(got.method, got.target, got.body)}, parsed {want}")
        host = request.host or None  # HTTP/1.0 without Host: any one Host will do
        problems += framing_problems(got.head, host, request.chunked, request.content_length)
    # Each 200 the client got is the upstream's answer to that very request.
    answers = [r for r in reading.responses if r.status == 200]
    for response, got in zip(answers, seen, strict=False):
        if got.method != "HEAD" and response.body != f"{got.method} {got.target}".encode():
            problems.append(f"client got {response.body!r} for {got.method} {got.target}")
    return problems


@pytest.mark.parametrize("vector", VECTORS, ids=[v.id for v in VECTORS])
def test_vector(proxy, vector: Vector) -> None:
    server, backend = proxy
    data = vector.data + FOLLOW
    view = view_of(server, data)
    assert not view.in_message, "table error: the vector leaves a message unfinished"
    plan = plan_of(view)

    before = len(backend.snapshot())
    connects = upstream_connects(server, backend)
    with connect(server.port) as sock:
        sock.sendall(data)
        raw = read_reply(sock)
    reading = read_responses(raw, plan.methods)
    # Every upstream connection of this exchange is closed: its record is final.
    conns = backend.wait_closed(before + upstream_connects(server, backend) - connects)[before:]

    problems = table_problems(vector.expect, view)
    problems += client_problems(reading, plan)
    problems += upstream_problems(conns, plan, reading)
    assert not problems, "\n".join(problems)


def test_the_table_is_large_and_its_ids_unique() -> None:
    ids = [v.id for v in VECTORS]
    assert len(ids) >= 100
    assert len(set(ids)) == len(ids)
