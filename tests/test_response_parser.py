"""Tests for the sans-IO response parser: framing cases, split invariance, h11 as an oracle."""

from __future__ import annotations

import itertools

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xps_server.http.parser import END_OF_MESSAGE, NEED_DATA, Data, ParseError
from xps_server.http.response_parser import (
    CHUNKED,
    CLOSED,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    Response,
    ResponseParser,
)

HYPOTHESIS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- helpers ------------------------------------------------------------------------------------
def drive(chunks: list[bytes], heads: list[bool] | None = None, eof: bool = False) -> tuple:
    """Feed `chunks` one by one (then EOF if asked), draining events after each.

    `heads[i]` says whether the i-th final response answers a HEAD request. Returns
    ([(status, reason, version, raw_headers, framing, keep_alive, body, complete), ...],
    informational statuses, "closed" / error status / None).
    """
    heads = list(heads or [])
    parser = ResponseParser()
    parser.head_request = heads.pop(0) if heads else False
    messages: list[list] = []
    informational: list[int] = []
    budget = 2 * sum(len(c) for c in chunks) + 8
    end = None

    def drain() -> bool:
        nonlocal end, budget
        while True:
            try:
                event = parser.next_event()
            except ParseError as exc:
                assert exc.status == 502
                with pytest.raises(ParseError):  # sticky
                    parser.next_event()
                end = exc.status
                return False
            budget -= 1
            assert budget >= 0, "parser is producing events without consuming input"
            if event is NEED_DATA:
                return True
            if event is CLOSED:
                end = "closed"
                return False
            if type(event) is Response:
                if event.status < 200:
                    informational.append(event.status)
                    continue
                assert not messages or messages[-1][7], "Response before previous EndOfMessage"
                r = event
                messages.append(
                    [r.status, r.reason, r.version, r.raw_headers, r.framing, r.keep_alive, b"", 0]
                )
            elif type(event) is Data:
                assert event.data
                messages[-1][6] += event.data
            else:
                assert event is END_OF_MESSAGE
                messages[-1][7] = True
                parser.head_request = heads.pop(0) if heads else False

    for chunk in chunks:
        parser.feed(chunk)
        if not drain():
            break
    else:
        if eof:
            parser.feed_eof()
            drain()
    return [tuple(m) for m in messages], informational, end


def one(data: bytes, head: bool = False, eof: bool = False) -> tuple:
    messages, informational, end = drive([data], [head], eof)
    return messages, informational, end


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


# --- framing ------------------------------------------------------------------------------------
def test_content_length_body():
    data = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    (msg,), _, end = one(data)
    assert msg[:3] == (200, "OK", "1.1")
    assert msg[3] == [("Content-Type", "text/plain"), ("Content-Length", "5")]
    assert msg[4:] == (LENGTH, True, b"hello", True)
    assert end is None


def test_chunked_body_with_extensions_and_trailers():
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    (msg,), _, _end = one(data)
    assert msg[4:] == (CHUNKED, True, b"hello world", True)


def test_read_to_close_body_ends_at_eof():
    data = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
    messages, _, end = drive([data])
    assert messages[0][4:] == (UNTIL_CLOSE, False, b"until the end", False)
    messages, _, end = drive([data], eof=True)
    assert messages[0][4:] == (UNTIL_CLOSE, False, b"until the end", True)
    assert end == "closed"


@pytest.mark.parametrize(("status", "head"), [(204, False), (304, False), (200, True), (404, True)])
def test_no_body_for_head_204_304(status, head):
    data = b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status
    following = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    messages, _, _end = drive([data + following], [head, False])
    assert messages[0][4:] == (NO_BODY, True, b"", True)
    assert messages[1][6:] == (b"ok", True)


def test_informational_responses_come_before_the_final_one():
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
    )
    messages, informational, _ = one(data)
    assert informational == [100, 103]
    assert messages[0][0] == 200 and messages[0][6:] == (b"x", True)


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nConnection: Upgrade, CLOSE\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\n\r\n", False),  # read to close
    ],
)
def test_keep_alive(head, keep_alive):
    (msg,), _, _ = one(head, eof=True)
    assert msg[5] is keep_alive


def test_status_line_without_reason():
    (msg,), _, _ = one(b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n")
    assert msg[:2] == (404, "")


def test_repeated_fields_are_kept_in_order():
    data = b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n"
    parser = ResponseParser()
    parser.feed(data)
    response = parser.next_event()
    assert response.raw_headers[:2] == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
    assert response.headers["set-cookie"] == "a=1, b=2"


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 099 OK\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nNo colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * 70000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * 70000,  # too large before it ends
    ],
)
def test_bad_responses_are_502(data):
    assert one(data)[2] == 502


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Le",
    ],
)
def test_eof_mid_response_is_an_error(data):
    messages, _, end = drive([data], eof=True)
    assert end == 502
    assert not messages or not messages[0][7]


def test_eof_between_responses_is_closed():
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    messages, _, end = drive([data], eof=True)
    assert messages[0][7] and end == "closed"
    assert drive([], eof=True)[2] == "closed"


# --- generated responses ------------------------------------------------------------------------
TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VCHAR = "".join(map(chr, range(0x21, 0x7F)))
SPECIAL = {"content-length", "transfer-encoding", "connection"}

tokens = st.text(TCHAR, min_size=1, max_size=10).filter(lambda t: t.lower() not in SPECIAL)
values = st.text(VCHAR + " ", max_size=12).map(lambda v: v.strip(" "))
reasons = st.text(VCHAR + " ", max_size=20).map(lambda v: v.strip(" "))


@st.composite
def responses(draw) -> tuple[bytes, dict]:
    """One final response (maybe after a 100 Continue) with a random framing and fields."""
    v11 = draw(st.booleans())
    status = draw(st.sampled_from([200, 201, 204, 301, 304, 404, 500, 503]))
    head = draw(st.booleans())
    framing = draw(st.sampled_from(["length", "chunked", "close"] if v11 else ["length", "close"]))
    body = draw(st.binary(max_size=300))
    bodyless = head or status in (204, 304)
    if bodyless:
        body = b""
    fields = draw(st.lists(st.tuples(tokens, values), max_size=6))
    if framing == "length":
        fields.append(("Content-Length", str(len(body))))
    elif framing == "chunked":
        fields.append(("Transfer-Encoding", "chunked"))
    if draw(st.booleans()):
        fields.append(("Connection", draw(st.sampled_from(["close", "keep-alive"]))))
    reason = draw(reasons)
    lines = [f"HTTP/1.{int(v11)} {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in fields]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    prefix = b"HTTP/1.1 100 Continue\r\n\r\n" if v11 and draw(st.booleans()) else b""
    if bodyless:
        pass  # not even a last chunk
    elif framing == "chunked" and body:
        cuts = sorted(set(draw(st.lists(st.integers(1, len(body)), max_size=4))))
        edges = [0, *cuts, len(body)]
        for a, b in itertools.pairwise(edges):
            if b > a:
                data += b"%x\r\n%s\r\n" % (b - a, body[a:b])
    elif framing != "chunked":
        data += body
    if framing == "chunked" and not bodyless:
        data += b"0\r\n\r\n"
    case = {
        "status": status,
        "reason": reason,
        "head": head,
        "fields": fields,
        "body": body,
        "close": framing == "close",
        "v11": v11,
    }
    return prefix + data, case


@HYPOTHESIS
@given(responses(), st.lists(st.integers(0, 10_000), max_size=6))
def test_any_split_gives_the_same_events(generated, cuts):
    data, case = generated
    whole = drive([data], [case["head"]], eof=True)
    assert drive(splits(data, cuts), [case["head"]], eof=True) == whole
    assert drive([data[i : i + 1] for i in range(len(data))], [case["head"]], eof=True) == whole


@HYPOTHESIS
@given(st.lists(responses(), min_size=1, max_size=4), st.lists(st.integers(0, 10_000), max_size=6))
def test_responses_in_a_row(generated, cuts):
    # A read-to-close response ends the connection: only the last one may be one.
    generated = [g for g in generated[:-1] if not g[1]["close"]] + generated[-1:]
    data = b"".join(g[0] for g in generated)
    heads = [g[1]["head"] for g in generated]
    messages, _, end = drive(splits(data, cuts), heads, eof=True)
    assert end == "closed"
    assert [m[6] for m in messages] == [g[1]["body"] for g in generated]
    assert [m[0] for m in messages] == [g[1]["status"] for g in generated]


def h11_parse(data: bytes, head: bool) -> tuple:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="HEAD" if head else "GET", target="/", headers=[("Host", "a")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    status, reason, headers, body, done = None, None, None, b"", False
    informational = []
    while True:
        event = conn.next_event()
        if isinstance(event, h11.InformationalResponse):
            informational.append(event.status_code)
        elif isinstance(event, h11.Response):
            status, reason = event.status_code, event.reason.decode("latin-1")
            headers = [(k.decode(), v.decode("latin-1")) for k, v in event.headers.raw_items()]
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            done = True
        elif isinstance(event, h11.ConnectionClosed) or event is h11.NEED_DATA:
            break
        if done:
            break
    return status, reason, headers, body, done, informational


@HYPOTHESIS
@given(responses())
def test_matches_h11(generated):
    data, case = generated
    messages, informational, _ = drive([data], [case["head"]], eof=True)
    status, reason, headers, body, done, h11_informational = h11_parse(data, case["head"])
    (msg,) = messages
    assert (msg[0], msg[1]) == (status, reason)
    assert msg[3] == headers
    assert msg[6] == body == case["body"]
    assert msg[7] is done is True
    assert informational == h11_informational
    if case["close"] and not (case["head"] or case["status"] in (204, 304)):
        assert msg[4] == UNTIL_CLOSE and msg[5] is False


@HYPOTHESIS
@given(st.binary(max_size=200), st.lists(st.integers(0, 300), max_size=4), st.booleans())
def test_arbitrary_bytes_never_crash(data, cuts, eof):
    whole = drive([b"HTTP/1.1 200 OK\r\n" + data], eof=eof)
    assert drive(splits(b"HTTP/1.1 200 OK\r\n" + data, cuts), eof=eof) == whole
