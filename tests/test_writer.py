"""The sans-IO HTTP/1 writer: heads, framing, chunks and pages, read back by h11 (no sockets)."""

from __future__ import annotations

import email.utils

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from xps_server.http import writer as writer_module
from xps_server.http.writer import (
    CHUNKED,
    CLOSE_DELIMITED,
    LAST_CHUNK,
    LENGTH,
    NO_BODY,
    RelayedResponse,
    Response,
    ResponseWriter,
    chunk,
    http_date,
)

# A handler's own fields: never the ones the writer adds (Server, Date, framing, Connection).
WRITERS_FIELDS = ("server", "date", "content-length", "transfer-encoding", "connection")
TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
    lambda name: name not in WRITERS_FIELDS
)
VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 ;=/", max_size=20).map(str.strip)
FIELDS = st.lists(st.tuples(TOKEN, VALUE), max_size=5)
STATUS = st.integers(200, 599).filter(lambda status: status not in (204, 304))


def field_block(fields: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{name}: {value}\r\n".encode() for name, value in fields)


def read_back(wire: bytes, method: str = "GET") -> tuple[h11.Response, bytes, bool]:
    """What an HTTP/1.1 client makes of `wire` (the writer's bytes are all the connection
    carries): the head, the body, and whether the client must close the connection after it."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(wire)
    head = client.next_event()
    assert isinstance(head, h11.Response), head
    body = b""
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(b"")  # the connection ends here
            continue
        if isinstance(event, h11.Data):
            body += event.data
            continue
        assert isinstance(event, h11.EndOfMessage), event
        return head, body, client.their_state is h11.MUST_CLOSE


def header(head: h11.Response, name: bytes) -> list[bytes]:
    return [value for key, value in head.headers if key == name]


@given(st.integers(0, 2**34))
def test_http_date_is_the_imf_fixdate(timestamp: int) -> None:
    assert http_date(timestamp) == email.utils.formatdate(timestamp, usegmt=True)


@pytest.mark.parametrize(
    ("status", "length", "http11", "head_only", "expected"),
    [
        (100, -1, True, False, NO_BODY),
        (204, 10, True, False, NO_BODY),
        (304, 10, True, False, NO_BODY),
        (200, 0, True, False, LENGTH),
        (200, 10, False, True, LENGTH),
        (200, -1, True, False, CHUNKED),
        (200, -1, False, False, CLOSE_DELIMITED),
        (200, -1, True, True, CHUNKED),
        (200, -1, False, True, NO_BODY),
    ],
)
def test_framing_by_status_length_and_version(
    status: int, length: int, http11: bool, head_only: bool, expected: int
) -> None:
    writer = ResponseWriter("xps")
    assert writer.framing(Response(status, length=length), http11, head_only) == expected


@given(STATUS, FIELDS, st.binary(max_size=300), st.booleans())
def test_a_length_framed_answer_reads_back_exactly(
    status: int, fields: list[tuple[str, str]], body: bytes, keep_alive: bool
) -> None:
    writer = ResponseWriter("xps-test")
    response = Response(status, field_block(fields), body, len(body))
    framing = writer.framing(response, http11=True, head_only=False)
    head, got, closed = read_back(writer.head(response, framing, keep_alive, body))
    assert head.status_code == status
    assert got == body
    assert header(head, b"server") == [b"xps-test"]
    assert header(head, b"content-length") == [str(len(body)).encode()]
    assert len(header(head, b"date")) == 1
    assert header(head, b"connection") == [b"keep-alive" if keep_alive else b"close"]
    ours = {b"server", b"date", b"content-length", b"connection"}
    assert [(k.decode(), v.decode()) for k, v in head.headers if k not in ours] == fields
    assert closed is not keep_alive


@given(STATUS, st.lists(st.binary(min_size=1, max_size=100), max_size=6))
def test_a_chunked_answer_reads_back_exactly(status: int, pieces: list[bytes]) -> None:
    writer = ResponseWriter("xps")
    response = Response(status, b"Content-Type: text/plain\r\n", None, -1)
    framing = writer.framing(response, http11=True, head_only=False)
    assert framing == CHUNKED
    wire = writer.head(response, framing, True) + b"".join(map(chunk, pieces)) + LAST_CHUNK
    head, got, closed = read_back(wire)
    assert header(head, b"transfer-encoding") == [b"chunked"]
    assert header(head, b"content-length") == []
    assert got == b"".join(pieces)
    assert not closed


def test_a_close_delimited_answer_says_close_and_ends_with_the_connection() -> None:
    writer = ResponseWriter("xps")
    response = Response(200, b"", None, -1)
    framing = writer.framing(response, http11=False, head_only=False)
    head, got, closed = read_back(writer.head(response, framing, keep_alive=True) + b"tail")
    assert header(head, b"connection") == [b"close"]
    assert header(head, b"transfer-encoding") == header(head, b"content-length") == []
    assert got == b"tail"
    assert closed


def test_a_304_may_state_the_length_and_carries_no_body() -> None:
    writer = ResponseWriter("xps")
    response = Response(304, b'ETag: "x"\r\n', None, 1234)
    framing = writer.framing(response, http11=True, head_only=False)
    head, got, _ = read_back(writer.head(response, framing, True))
    assert head.status_code == 304
    assert header(head, b"content-length") == [b"1234"]
    assert got == b""


def test_a_relayed_answer_keeps_its_reason_and_its_own_server_and_date() -> None:
    writer = ResponseWriter("xps")
    fields = b"Server: upstream\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
    response = RelayedResponse(201, fields, 0, "Made It", server=False, date=False)
    head, _, _ = read_back(writer.head(response, LENGTH, True))
    assert (head.status_code, head.reason) == (201, b"Made It")
    assert header(head, b"server") == [b"upstream"]
    assert header(head, b"date") == [b"Sun, 06 Nov 1994 08:49:37 GMT"]
    added = RelayedResponse(200, b"", 0, "OK", server=True, date=True)
    head, _, _ = read_back(writer.head(added, LENGTH, True))
    assert header(head, b"server") == [b"xps"]
    assert len(header(head, b"date")) == 1


def test_the_date_line_is_rebuilt_once_the_second_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    writer = ResponseWriter("xps")
    now = [784111777.2]
    monkeypatch.setattr(writer_module.time, "time", lambda: now[0])
    first = writer.date_line()
    assert first == b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
    now[0] = 784111777.9
    assert writer.date_line() is first
    now[0] = 784111778.0
    assert writer.date_line() == b"Date: Sun, 06 Nov 1994 08:49:38 GMT\r\n"


def test_an_error_page_names_the_status_and_an_escaped_server_name() -> None:
    writer = ResponseWriter("<xps>")
    response = writer.error(404, b"X-Extra: 1\r\n")
    assert response.fields == b"Content-Type: text/html\r\nX-Extra: 1\r\n"
    assert b"<title>404 Not Found</title>" in response.body
    assert b"&lt;xps&gt;" in response.body and b"<xps>" not in response.body
    assert response.length == len(response.body)


def test_an_unknown_status_gets_a_reason_and_informational_heads_pass_as_they_are() -> None:
    writer = ResponseWriter("xps")
    assert writer.status_line(599) == b"HTTP/1.1 599 Unknown\r\n"
    assert writer.informational(103, "Early Hints", b"Link: </a>\r\n") == (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    )
