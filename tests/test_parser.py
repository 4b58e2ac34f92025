"""Tests for the sans-IO request parser: unit cases, split invariance, h11 as an oracle."""

from __future__ import annotations

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xps_server.http.parser import (
    END_OF_MESSAGE,
    NEED_DATA,
    Data,
    EndOfMessage,
    ParseError,
    Request,
    RequestParser,
)

# What a request says: its slots, with the fields as received in place of the raw lines.
FIELDS = tuple(sorted({*Request.__slots__, "raw_headers"} - {"lines"}))
HYPOTHESIS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- helpers ------------------------------------------------------------------------------------
def drive(chunks: list[bytes], **limits: int) -> tuple[list[list], int | None]:
    """Feed `chunks` one by one, draining events after each.

    Returns ([[request, body, complete], ...], error status or None). Checks the invariants every
    run must keep: bounded event count, non-empty Data never beyond Content-Length, END_OF_MESSAGE
    the shared instance, and a failed parser that stays failed.
    """
    parser = RequestParser(**limits)
    messages: list[list] = []
    # One NEED_DATA per chunk; every other event except END_OF_MESSAGE consumes input.
    budget = 2 * sum(len(c) for c in chunks) + 4
    for chunk in chunks:
        parser.feed(chunk)
        while True:
            try:
                event = parser.next_event()
            except ParseError as exc:
                assert exc.status in (400, 413, 414, 431)
                for _ in range(2):  # sticky, and fed data is ignored
                    parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                    with pytest.raises(ParseError) as again:
                        parser.next_event()
                    assert (again.value.status, again.value.reason) == (exc.status, exc.reason)
                return messages, exc.status
            budget -= 1
            assert budget >= 0, "parser is producing events without consuming input"
            if event is NEED_DATA:
                break
            if type(event) is Request:
                assert not messages or messages[-1][2], "Request before previous EndOfMessage"
                messages.append([event, b"", False])
            elif type(event) is Data:
                assert event.data and type(event.data) is bytes
                request, body, _ = messages[-1]
                messages[-1][1] = body + event.data
                assert request.chunked or len(messages[-1][1]) <= request.content_length
            else:
                assert event is END_OF_MESSAGE
                request, body, complete = messages[-1]
                assert not complete
                assert request.chunked or len(body) == max(request.content_length, 0)
                messages[-1][2] = True
    return messages, None


def summary(result: tuple[list[list], int | None]) -> tuple:
    messages, status = result
    return [
        (tuple(getattr(r, f) for f in FIELDS), body, done) for r, body, done in messages
    ], status


def parse_one(data: bytes, **limits: int) -> tuple[Request, bytes]:
    messages, status = drive([data], **limits)
    assert status is None
    assert len(messages) == 1 and messages[0][2]
    return messages[0][0], messages[0][1]


def parse_error(data: bytes, **limits: int) -> ParseError:
    parser = RequestParser(**limits)
    parser.feed(data)
    with pytest.raises(ParseError) as info:
        while parser.next_event() is not NEED_DATA:
            pass
    return info.value


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


# --- accepted requests --------------------------------------------------------------------------
def test_simple_get_fields():
    req, body = parse_one(b"GET /a%20b/c?x=1&y=%41 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n")
    assert (req.method, req.target, req.path, req.query, req.version) == (
        "GET",
        "/a%20b/c?x=1&y=%41",
        "/a%20b/c",
        "x=1&y=%41",
        "1.1",
    )
    assert req.headers == {"host": "example.com:8080"}
    assert req.raw_headers == [("Host", "example.com:8080")]
    assert req.host == "example.com:8080"
    assert (req.content_length, req.chunked, req.keep_alive) == (-1, False, True)
    assert body == b""


def test_event_sequence_without_body():
    parser = RequestParser()
    assert parser.next_event() is NEED_DATA
    parser.feed(GET)
    assert type(parser.next_event()) is Request
    assert parser.next_event() is END_OF_MESSAGE
    assert isinstance(END_OF_MESSAGE, EndOfMessage)
    assert parser.next_event() is NEED_DATA


def test_headers_raw_case_stripping_and_duplicates():
    req, _ = parse_one(
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Thing:  a \t\r\nAccept: x\r\nx-thing:b\r\n"
        b"Empty:\r\nTabbed: a\tb\r\nLatin: caf\xe9\r\n\r\n"
    )
    assert req.headers == {
        "host": "h",
        "x-thing": "a, b",
        "accept": "x",
        "empty": "",
        "tabbed": "a\tb",
        "latin": "caf\xe9",
    }
    assert req.raw_headers == [
        ("Host", "h"),
        ("X-Thing", "a"),
        ("Accept", "x"),
        ("x-thing", "b"),
        ("Empty", ""),
        ("Tabbed", "a\tb"),
        ("Latin", "caf\xe9"),
    ]


@pytest.mark.parametrize(
    ("target", "path", "query", "host"),
    [
        ("http://example.com/p/q?x=1", "/p/q", "x=1", "example.com"),
        ("https://example.com:8443/p", "/p", "", "example.com:8443"),
        ("HTTP://Example.com", "/", "", "Example.com"),
        ("http://h?x", "/", "x", "h"),
        ("http://[::1]:80/", "/", "", "[::1]:80"),
    ],
)
def test_absolute_form(target, path, query, host):
    req, _ = parse_one(f"GET {target} HTTP/1.1\r\nHost: other\r\n\r\n".encode())
    assert (req.target, req.path, req.query, req.host) == (target, path, query, host)
    assert req.headers["host"] == "other"


@pytest.mark.parametrize(
    "host", ["a", "A.Example.COM.", "a-b_c.d~e:8080", "x:", "127.0.0.1:80", "[::1]", "[::1]:443"]
)
def test_valid_hosts(host):
    req, _ = parse_one(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert req.host == host


def test_options_asterisk():
    req, _ = parse_one(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (req.method, req.target, req.path, req.query) == ("OPTIONS", "*", "*", "")


def test_http10_without_host():
    req, _ = parse_one(b"GET / HTTP/1.0\r\n\r\n")
    assert (req.version, req.host, req.keep_alive, req.headers) == ("1.0", "", False, {})


def test_bare_lf_line_endings():
    req, body = parse_one(b"POST /x HTTP/1.1\nHost: a\r\nContent-Length: 2\n\nhi")
    assert (req.path, req.headers, body) == (
        "/x",
        {"host": "a", "content-length": "2"},
        b"hi",
    )
    req, _ = parse_one(b"GET / HTTP/1.1\r\nHost: a\n\r\n")
    assert req.raw_headers == [("Host", "a")]


def test_bare_lf_head_ends_before_a_later_crlfcrlf():
    # The first head ends at "\n\n"; the CRLFCRLF belongs to the second request.
    data = b"GET /1 HTTP/1.0\n\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    messages, status = drive([data])
    assert status is None
    assert [m[0].path for m in messages] == ["/1", "/2"]


def test_leading_blank_lines_are_ignored():
    parser = RequestParser()
    parser.feed(b"\r\n\n\r\n")
    assert (parser.in_message, parser.buffered) == (False, 0)
    assert parser.next_event() is NEED_DATA
    messages, status = drive([b"\r\n\r\n" + GET + b"\r\n\n" + GET])
    assert status is None and len(messages) == 2


def test_pipelining_one_event_at_a_time():
    data = (
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        b"POST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n"
        b"GET /4 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    parser = RequestParser()
    parser.feed(data)
    seen = []
    while (event := parser.next_event()) is not NEED_DATA:
        seen.append(event.path if type(event) is Request else getattr(event, "data", event))
    assert seen == [
        "/1",
        END_OF_MESSAGE,
        "/2",
        b"abc",
        END_OF_MESSAGE,
        "/3",
        b"de",
        END_OF_MESSAGE,
        "/4",
        END_OF_MESSAGE,
    ]
    assert parser.buffered == 0


def test_content_length_body_never_overruns():
    parser = RequestParser()
    parser.feed(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab")
    req = parser.next_event()
    assert (req.content_length, req.headers["content-length"]) == (5, "5")
    assert parser.next_event().data == b"ab"
    assert parser.next_event() is NEED_DATA
    parser.feed(b"cdeGET")
    assert parser.next_event().data == b"cde"
    assert parser.next_event() is END_OF_MESSAGE
    assert parser.buffered == 3 and parser.in_message


@pytest.mark.parametrize(
    ("lines", "value"),
    [
        (b"Content-Length: 0\r\n", 0),
        (b"Content-Length: 3\r\nContent-Length: 3\r\n", 3),
        (b"Content-Length: 3, 3\r\n", 3),
        (b"Content-Length: 007\r\n", 7),
    ],
)
def test_content_length_accepted(lines, value):
    req, body = parse_one(b"POST / HTTP/1.1\r\nHost: a\r\n" + lines + b"\r\n" + b"x" * value)
    assert (req.content_length, body) == (value, b"x" * value)
    assert "," not in req.headers["content-length"]


def test_chunked_with_extensions_and_trailers():
    req, body = parse_one(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b'A ; a ; b="q"\r\n0123456789\r\n'
        b"1\nx\n"
        b"0;last\r\nExpires: never\r\nX-Checksum: 1\r\n\r\n"
    )
    assert (req.chunked, req.content_length, body) == (True, -1, b"hello0123456789x")


def test_chunk_data_split_across_feeds():
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nab")
    assert type(parser.next_event()) is Request
    assert parser.next_event().data == b"ab"
    assert parser.next_event() is NEED_DATA
    parser.feed(b"cdef\r")
    assert parser.next_event().data == b"cdef"
    assert parser.next_event() is NEED_DATA
    parser.feed(b"\n0\r\n\r\n")
    assert parser.next_event() is END_OF_MESSAGE


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        ("1.1", None, True),
        ("1.1", "close", False),
        ("1.1", "Close", False),
        ("1.1", "keep-alive", True),
        ("1.1", "upgrade, CLOSE", False),
        ("1.1", "closed", True),
        ("1.0", None, False),
        ("1.0", "keep-alive", True),
        ("1.0", "Keep-Alive", True),
        ("1.0", "foo ,\tkeep-alive", True),
        ("1.0", "keep-alive, close", False),
        ("1.0", "close", False),
    ],
)
def test_keep_alive(version, connection, keep_alive):
    head = f"GET / HTTP/{version}\r\nHost: a\r\n"
    if connection is not None:
        head += f"Connection: {connection}\r\n"
    req, _ = parse_one((head + "\r\n").encode())
    assert req.keep_alive is keep_alive


def test_transfer_encoding_in_http10_is_refused():
    err = parse_error(
        b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\nx\r\n0\r\n\r\n"
    )
    assert (err.status, err.reason) == (400, "Transfer-Encoding in an HTTP/1.0 request")


def test_in_message_and_buffered():
    parser = RequestParser()
    assert (parser.in_message, parser.buffered) == (False, 0)
    parser.feed(b"P")
    assert (parser.in_message, parser.buffered) == (True, 1)
    assert parser.next_event() is NEED_DATA
    parser.feed(b"OST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n")
    assert type(parser.next_event()) is Request
    assert (parser.in_message, parser.buffered) == (True, 0)
    parser.feed(b"x\r\n")
    assert parser.next_event().data == b"x"
    assert parser.in_message
    assert parser.next_event() is END_OF_MESSAGE
    assert (parser.in_message, parser.buffered) == (False, 0)  # the trailing CRLF was skipped


# --- limits -------------------------------------------------------------------------------------
def test_uri_limit():
    line = b"GET /" + b"a" * 11 + b" HTTP/1.1"  # 25 bytes
    parse_one(line + b"\r\nHost: a\r\n\r\n", max_uri_bytes=25)
    assert parse_error(line + b"\r\nHost: a\r\n\r\n", max_uri_bytes=24).status == 414
    parser = RequestParser(max_uri_bytes=25)
    parser.feed(line + b"\r")  # the CR may start the line's CRLF
    assert parser.next_event() is NEED_DATA
    # More than max_uri_bytes with no line end: no need to wait for the rest of the line.
    assert parse_error(b"GET /" + b"a" * 30, max_uri_bytes=25).status == 414
    assert parse_error(line + b"x\r", max_uri_bytes=25).status == 414


def test_header_limit():
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 20 + b"\r\n\r\n"
    parse_one(head, max_header_bytes=len(head))
    assert parse_error(head, max_header_bytes=len(head) - 1).status == 431
    incomplete = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 100
    assert parse_error(incomplete, max_header_bytes=len(incomplete) - 1).status == 431
    parser = RequestParser(max_header_bytes=len(incomplete))
    parser.feed(incomplete)
    assert parser.next_event() is NEED_DATA


def test_request_line_is_checked_before_the_head_size():
    data = b"GET / HTTP/9.9\r\nX: " + b"v" * 100
    assert parse_error(data, max_header_bytes=50).status == 400


def test_body_limit_content_length():
    parse_one(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n" + b"x" * 10, max_body_bytes=10
    )
    err = parse_error(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n", max_body_bytes=10
    )
    assert err.status == 413
    err = parse_error(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: " + b"9" * 30 + b"\r\n\r\n")
    assert err.status == 413


def test_body_limit_chunked():
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    parse_one(head + b"5\r\naaaaa\r\n5\r\nbbbbb\r\n0\r\n\r\n", max_body_bytes=10)
    messages, status = drive([head + b"5\r\naaaaa\r\n6\r\nbbbbbb\r\n0\r\n\r\n"], max_body_bytes=10)
    assert status == 413 and messages[0][1] == b"aaaaa"


def test_trailer_limit():
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
    trailer = b"X: " + b"v" * 100 + b"\r\n\r\n"  # longer than the head, so only it can trip
    parse_one(head + trailer, max_header_bytes=len(trailer))
    messages, status = drive([head + trailer], max_header_bytes=len(trailer) - 1)
    assert status == 431 and len(messages) == 1


def test_error_is_sticky():
    parser = RequestParser()
    parser.feed(b"GET / HTTP/2.0\r\n\r\n")
    with pytest.raises(ParseError) as first:
        parser.next_event()
    parser.feed(GET)
    with pytest.raises(ParseError) as second:
        parser.next_event()
    assert second.value is first.value
    assert (first.value.status, first.value.reason) == (400, "unsupported HTTP version")
    assert parser.buffered == 0


# --- rejected requests --------------------------------------------------------------------------
H = b"Host: a\r\n"
BAD_REQUESTS = {
    "tls-handshake": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    "one-word-line": b"GET\r\n\r\n",
    "empty-method": b" / HTTP/1.1\r\n" + H + b"\r\n",
    "double-space": b"GET  / HTTP/1.1\r\n" + H + b"\r\n",
    "trailing-space": b"GET / HTTP/1.1 \r\n" + H + b"\r\n",
    "method-not-token": b"G(T / HTTP/1.1\r\n" + H + b"\r\n",
    "method-unregistered": b"GOT /index.html HTTP/1.1\r\n" + H + b"\r\n",
    "method-lowercase": b"get / HTTP/1.1\r\n" + H + b"\r\n",
    "method-asterisk": b"* / HTTP/1.1\r\n" + H + b"\r\n",
    "method-latin1": b"G\xc9T / HTTP/1.1\r\n" + H + b"\r\n",
    "no-version": b"GET /\r\n\r\n",
    "no-version-line-only": b"GET /\r\n",
    "http-2": b"GET / HTTP/2.0\r\n" + H + b"\r\n",
    "http-1.2": b"GET / HTTP/1.2\r\n" + H + b"\r\n",
    "lowercase-http": b"GET / http/1.1\r\n" + H + b"\r\n",
    "http-0.9-ish": b"GET / HTTP/1\r\n" + H + b"\r\n",
    "relative-target": b"GET a/b HTTP/1.1\r\n" + H + b"\r\n",
    "authority-form": b"CONNECT example.com:443 HTTP/1.1\r\n" + H + b"\r\n",
    "connect-origin-form": b"CONNECT / HTTP/1.1\r\n" + H + b"\r\n",
    "connect-absolute-form": b"CONNECT http://example.com/ HTTP/1.1\r\n" + H + b"\r\n",
    "asterisk-with-get": b"GET * HTTP/1.1\r\n" + H + b"\r\n",
    "ftp-scheme": b"GET ftp://h/ HTTP/1.1\r\n" + H + b"\r\n",
    "empty-authority": b"GET http:///p HTTP/1.1\r\n" + H + b"\r\n",
    "userinfo": b"GET http://u@h/ HTTP/1.1\r\n" + H + b"\r\n",
    "tab-in-target": b"GET /a\tb HTTP/1.1\r\n" + H + b"\r\n",
    "ctl-in-target": b"GET /a\x01b HTTP/1.1\r\n" + H + b"\r\n",
    "del-in-target": b"GET /a\x7fb HTTP/1.1\r\n" + H + b"\r\n",
    "nul-in-target": b"GET /a\x00 HTTP/1.1\r\n" + H + b"\r\n",
    "cr-in-request-line": b"GET /a\rb HTTP/1.1\r\n" + H + b"\r\n",
    "no-colon": b"GET / HTTP/1.1\r\n" + H + b"Bogus header\r\n\r\n",
    "no-colon-known-name": b"GET / HTTP/1.1\r\n" + H + b"Accept\r\n\r\n",
    "empty-name": b"GET / HTTP/1.1\r\n" + H + b": x\r\n\r\n",
    "name-not-token": b"GET / HTTP/1.1\r\n" + H + b"X(y): z\r\n\r\n",
    "name-latin1": b"GET / HTTP/1.1\r\n" + H + b"N\xe4me: z\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    "tab-before-colon": b"GET / HTTP/1.1\r\n" + H + b"X\t: a\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n  b\r\n\r\n",
    "obs-fold-tab": b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n\tb\r\n\r\n",
    "space-after-request-line": b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
    "missing-host": b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
    "missing-host-absolute": b"GET http://h/ HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
    "host-empty": b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
    "host-empty-http10": b"GET / HTTP/1.0\r\nHost: \r\n\r\n",
    "host-comma-list": b"GET / HTTP/1.1\r\nHost: a.test, b.test\r\n\r\n",
    "host-path": b"GET / HTTP/1.1\r\nHost: evil.test/x?y\r\n\r\n",
    "host-space": b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    "host-userinfo": b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
    "host-empty-label": b"GET / HTTP/1.1\r\nHost: a..b\r\n\r\n",
    "host-port-letters": b"GET / HTTP/1.1\r\nHost: a:8o\r\n\r\n",
    "host-port-superscript": b"GET / HTTP/1.1\r\nHost: a:8\xb2\r\n\r\n",
    "host-unclosed-ipv6": b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
    "absolute-host-path-chars": b"GET http://a.test\\x/ HTTP/1.1\r\n" + H + b"\r\n",
    "absolute-host-comma": b"GET http://a.test,b.test/ HTTP/1.1\r\n" + H + b"\r\n",
    "absolute-valid-host-bad": b"GET http://a.test/ HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "cl-letters": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: abc\r\n\r\n",
    "cl-negative": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n",
    "cl-plus": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +1\r\n\r\n",
    "cl-empty": b"POST / HTTP/1.1\r\n" + H + b"Content-Length:\r\n\r\n",
    "cl-hex": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x10\r\n\r\n",
    "cl-inner-space": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1 2\r\n\r\n",
    "cl-superscript": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: \xb2\r\n\r\n",
    "cl-differ": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n",
    "cl-differ-list": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1, 2\r\n\r\n",
    "cl-list-empty": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1,\r\n\r\n",
    "cl-and-te": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    ),
    "te-gzip": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n",
    "te-gzip-chunked": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n",
    "te-chunked-gzip": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n",
    "te-chunked-twice": (
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
    ),
    "te-identity": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n\r\n",
    "te-empty": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n",
    "ctl-in-value": b"GET / HTTP/1.1\r\n" + H + b"X: a\x01\r\n\r\n",
    "del-in-value": b"GET / HTTP/1.1\r\n" + H + b"X: \x7f\r\n\r\n",
    "vt-in-value": b"GET / HTTP/1.1\r\n" + H + b"X: a\x0bb\r\n\r\n",
    "bare-cr-in-value": b"GET / HTTP/1.1\r\n" + H + b"X: a\rb\r\n\r\n",
    "bare-cr-in-value-lf-head": b"GET / HTTP/1.1\n" + H + b"X: a\rb\n\n",
    "double-cr-line-end": b"GET / HTTP/1.1\r\n" + H + b"X: a\r\r\n\r\n",
}
CHUNKED = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
BAD_REQUESTS |= {
    "chunk-size-not-hex": CHUNKED + b"zz\r\n",
    "chunk-size-empty": CHUNKED + b"\r\n",
    "chunk-size-negative": CHUNKED + b"-5\r\n",
    "chunk-size-0x": CHUNKED + b"0x5\r\n",
    "chunk-size-inner-space": CHUNKED + b"5 5\r\nhello\r\n",
    "chunk-size-leading-space": CHUNKED + b" 5\r\nhello\r\n",
    "chunk-size-line-too-long": CHUNKED + b"5;" + b"x" * 5000,
    "chunk-data-no-crlf": CHUNKED + b"3\r\nabcX\r\n0\r\n\r\n",
    "chunk-data-cr-only": CHUNKED + b"3\r\nabc\rX",
    "bad-trailer": CHUNKED + b"0\r\nnot a trailer\r\n\r\n",
    "folded-trailer": CHUNKED + b"0\r\nX: a\r\n b\r\n\r\n",
}


@pytest.mark.parametrize("data", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_request(data):
    messages, status = drive([data])
    assert status == 400
    # The same outcome when the bytes trickle in.
    assert summary(drive([data[i : i + 1] for i in range(len(data))])) == summary(
        (messages, status)
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (BAD_REQUESTS["no-colon"], "header line without a colon"),
        (BAD_REQUESTS["empty-name"], "empty header name"),
        (BAD_REQUESTS["space-before-colon"], "whitespace between header name and colon"),
        (BAD_REQUESTS["obs-fold"], "obsolete line folding in header"),
        (BAD_REQUESTS["missing-host"], "missing Host header"),
        (BAD_REQUESTS["no-version"], "missing HTTP version"),
        (BAD_REQUESTS["method-unregistered"], "unknown method"),
        (BAD_REQUESTS["cl-and-te"], "both Content-Length and Transfer-Encoding"),
    ],
)
def test_error_reasons(data, reason):
    assert parse_error(data).reason == reason


def test_missing_version_is_reported_without_waiting_for_headers():
    parser = RequestParser()
    parser.feed(b"GET /index.html\r\n")
    with pytest.raises(ParseError) as info:
        parser.next_event()
    assert info.value.status == 400


# The IANA HTTP Method Registry (RFC 9110 §18.2, RFC 7237, PRI from RFC 9113, QUERY).
METHODS = (
    "ACL", "BASELINE-CONTROL", "BIND", "CHECKIN", "CHECKOUT", "CONNECT", "COPY", "DELETE", "GET",
    "HEAD", "LABEL", "LINK", "LOCK", "MERGE", "MKACTIVITY", "MKCALENDAR", "MKCOL", "MKREDIRECTREF",
    "MKWORKSPACE", "MOVE", "OPTIONS", "ORDERPATCH", "PATCH", "POST", "PRI", "PROPFIND", "PROPPATCH",
    "PUT", "QUERY", "REBIND", "REPORT", "SEARCH", "TRACE", "UNBIND", "UNCHECKOUT", "UNLINK",
    "UNLOCK", "UPDATE", "UPDATEREDIRECTREF", "VERSION-CONTROL",
)  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
def test_every_registered_method_is_accepted(method):
    target = b"example.com:443" if method == "CONNECT" else b"/"
    data = method.encode() + b" " + target + b" HTTP/1.1\r\n" + H + b"\r\n"
    if method == "CONNECT":
        # The method passes; the authority-form target is what we refuse.
        assert parse_error(data).reason == "bad request-target"
    else:
        assert parse_one(data)[0].method == method


# --- generated requests -------------------------------------------------------------------------
TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
PCHAR = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%"
VCHAR = "".join(map(chr, range(0x21, 0x7F))) + "\x80\x85\xa0\xe9\xff"
SPECIAL = {"host", "content-length", "transfer-encoding", "connection"}

tokens = st.text(TCHAR, min_size=1, max_size=10)
ows = st.sampled_from(["", " ", "  ", "\t", " \t"])


@st.composite
def field_values(draw) -> str:
    words = draw(st.lists(st.text(VCHAR, min_size=1, max_size=8), max_size=3))
    return "".join(w + draw(st.sampled_from([" ", "\t", "  "])) for w in words[:-1]) + (
        words[-1] if words else ""
    )


# host[:port] values the parser accepts: names of non-empty labels, or IPv6 literals.
hosts = st.from_regex(
    r"([a-z0-9_-]{1,8}(\.[a-z0-9-]{1,8}){0,2}|\[[0-9a-f:]{2,12}\])(:[0-9]{1,5})?", fullmatch=True
)


@st.composite
def targets(draw, method: str) -> tuple[str, str, str, str | None]:
    """(target, path, query, host from the URL)."""
    form = draw(st.sampled_from(["origin", "origin", "origin", "absolute", "asterisk"]))
    if form == "asterisk" and method == "OPTIONS":
        return "*", "*", "", None
    path = "/" + "/".join(draw(st.lists(st.text(PCHAR, max_size=6), max_size=4)))
    query = draw(st.none() | st.text(PCHAR + "/?", max_size=8))
    target = path if query is None else f"{path}?{query}"
    if form != "absolute":
        return target, path, query or "", None
    host = draw(hosts)
    scheme = draw(st.sampled_from(["http", "https", "HTTP"]))
    return f"{scheme}://{host}{target}", path, query or "", host


@st.composite
def valid_requests(draw, line_ends: tuple[str, ...] = ("\r\n", "\n")) -> tuple[bytes, dict]:
    """A valid request as bytes, and what the parser should report for it."""
    v11 = draw(st.booleans())
    method = draw(
        st.sampled_from(["GET", "POST", "OPTIONS"])
        | st.sampled_from(METHODS).filter(lambda m: m != "CONNECT")
    )
    target, path, query, url_host = draw(targets(method))
    fields = [
        (n, draw(field_values()))
        for n in draw(st.lists(tokens.filter(lambda n: n.lower() not in SPECIAL), max_size=5))
    ]
    host = None
    if v11 or draw(st.booleans()):
        host = draw(hosts)
        fields.insert(
            draw(st.integers(0, len(fields))), (draw(st.sampled_from(["Host", "host"])), host)
        )
    connection = draw(
        st.none() | st.sampled_from(["close", "keep-alive", "Keep-Alive", "upgrade", "x, close"])
    )
    if connection is not None:
        fields.append(("Connection", connection))
    body_kind = draw(st.sampled_from(["none", "length", "chunked"] if v11 else ["none", "length"]))
    body = draw(st.binary(max_size=40)) if body_kind != "none" else b""
    encoded = body
    if body_kind == "length":
        fields.insert(draw(st.integers(0, len(fields))), ("Content-Length", str(len(body))))
    elif body_kind == "chunked":
        fields.append(("Transfer-Encoding", "chunked"))
        encoded = b""
        rest = body
        while rest:
            size = draw(st.integers(1, len(rest)))
            hex_size = draw(st.sampled_from([f"{size:x}", f"{size:X}", f"0{size:x}"]))
            ext = draw(st.sampled_from(["", ";a", ";a=b", ';name="v v";x']))
            encoded += f"{hex_size}{ext}\r\n".encode() + rest[:size] + b"\r\n"
            rest = rest[size:]
        encoded += b"0" + draw(st.sampled_from([b"", b";end"])) + b"\r\n"
        trailer_names = tokens.filter(lambda n: n.lower() not in SPECIAL)
        for name, value in draw(st.lists(st.tuples(trailer_names, field_values()), max_size=2)):
            encoded += f"{name}: {value}\r\n".encode("latin-1")
        encoded += b"\r\n"

    head = f"{method} {target} HTTP/{'1.1' if v11 else '1.0'}" + draw(st.sampled_from(line_ends))
    for name, value in fields:
        head += f"{name}:{draw(ows)}{value}{draw(ows)}" + draw(st.sampled_from(line_ends))
    head += draw(st.sampled_from(line_ends))

    headers: dict[str, str] = {}
    for name, value in fields:
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    tokens_ = {t.strip().lower() for t in (connection or "").split(",")}
    expected = {
        "method": method,
        "target": target,
        "path": path,
        "query": query,
        "version": "1.1" if v11 else "1.0",
        "headers": headers,
        "raw_headers": fields,
        "host": url_host if url_host is not None else host or "",
        "content_length": len(body) if body_kind == "length" else -1,
        "chunked": body_kind == "chunked",
        "keep_alive": "close" not in tokens_ and (v11 or "keep-alive" in tokens_),
        "body": body,
    }
    return head.encode("latin-1") + encoded, expected


@HYPOTHESIS
@given(tokens.filter(lambda m: m not in METHODS))
def test_unregistered_method_tokens_are_bad_requests(method):
    error = parse_error(f"{method} / HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert (error.status, error.reason) == (400, "unknown method")


def check_expected(messages: list[list], expected: list[dict]) -> None:
    assert len(messages) == len(expected)
    for (request, body, done), want in zip(messages, expected, strict=True):
        got = {f: getattr(request, f) for f in FIELDS}
        got["body"] = body
        assert got == want
        assert done


@HYPOTHESIS
@given(
    st.lists(valid_requests(), min_size=1, max_size=3), st.lists(st.integers(0, 10**6)), st.data()
)
def test_generated_requests_any_split(requests, cuts, data):
    blank = [data.draw(st.sampled_from([b"", b"\r\n", b"\n", b"\r\n\r\n"])) for _ in requests]
    stream = b"".join(b + r for b, (r, _) in zip(blank, requests, strict=True))
    whole = drive([stream])
    check_expected(whole[0], [want for _, want in requests])
    assert whole[1] is None
    assert summary(drive([stream[i : i + 1] for i in range(len(stream))])) == summary(whole)
    assert summary(drive(split_at(stream, cuts))) == summary(whole)


@HYPOTHESIS
@given(valid_requests(line_ends=("\r\n", "\r\n", "\n")))
def test_generated_requests_match_h11(request):
    raw, _ = request
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    theirs = conn.next_event()
    their_body = b""
    while type(event := conn.next_event()) is h11.Data:
        their_body += event.data
    assert type(event) is h11.EndOfMessage

    (ours, our_body, done), *rest = drive([raw])[0]
    assert done and not rest
    assert ours.method == theirs.method.decode()
    assert ours.target == theirs.target.decode()
    assert ours.version == theirs.http_version.decode()
    assert ours.raw_headers == [
        (n.decode(), v.decode("latin-1")) for n, v in theirs.headers.raw_items()
    ]
    assert our_body == their_body


# --- arbitrary input ----------------------------------------------------------------------------
LIMITS = {"max_uri_bytes": 40, "max_header_bytes": 150, "max_body_bytes": 10}
NOISE = b"\r\n\t :;,0aF\x00\x7f\xe9/?*"


@st.composite
def mangled(draw) -> bytes:
    """A valid request, perhaps with a few bytes inserted, replaced or deleted."""
    data = bytearray(draw(valid_requests())[0])
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "replace", "delete"]))
        byte = draw(st.sampled_from(NOISE)) if draw(st.booleans()) else draw(st.integers(0, 255))
        if op == "insert":
            data.insert(pos, byte)
        elif pos < len(data):
            if op == "replace":
                data[pos] = byte
            else:
                del data[pos]
    return bytes(data)


@HYPOTHESIS
@given(
    st.binary(max_size=300) | mangled() | st.lists(mangled(), max_size=3).map(b"".join),
    st.lists(st.integers(0, 10**6), max_size=6),
    st.sampled_from([{}, LIMITS]),
)
def test_arbitrary_bytes(data, cuts, limits):
    whole = drive([data], **limits)  # drive() asserts statuses, termination, stickiness
    assert summary(drive(split_at(data, cuts), **limits)) == summary(whole)
    assert summary(drive([data[i : i + 1] for i in range(len(data))], **limits)) == summary(whole)
