"""Mutated requests against one running server: it answers sanely or closes, and survives.

Hypothesis takes valid requests for a file route, a redirect route and a proxy route, and
breaks them: flipped bytes, inserted CR/LF/NUL/space/colon/high bytes, deletions, repeated or
swapped header lines, truncations, pipelined pairs. Each example goes out on its own
connection, which the client then half-closes, so the server always has a way to finish.
For each one:
- what comes back is zero or more well-formed responses (h11 reads them; status lines are
  `HTTP/1.x NNN`), then the close, well within a socket timeout;
- never more responses than the requests our parser finds in the bytes (plus one refusal
  for bytes that fail to parse): one request, one response;
- no traceback is logged (a route handler that raises is logged by the session with
  `log.exception`);
- a normal request afterwards still gets its 200.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import Client, RunningServer, free_port, read_until_close, server_config
from tests.raw_backend import RawBackend
from tests.wire import proxy_view, read_responses

pytestmark = pytest.mark.timeout(120)

SEEDS = [
    b"GET /hello.txt HTTP/1.1\r\nHost: localhost\r\nRange: bytes=0-4\r\n\r\n",
    b'HEAD /hello.txt HTTP/1.1\r\nHost: localhost\r\nIf-None-Match: "x"\r\n\r\n',
    b"GET /old/path?q=1 HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
    b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /api/y HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    b"GET http://localhost/api/z HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n",
    b"POST /hello.txt HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    b"PUT /old HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\nhi\r\n0\r\nX-T: 1\r\n\r\n",
    b"GET / HTTP/1.0\r\nAccept-Encoding: gzip\r\n\r\n",
]
INSERTS = [b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b",", b"\xff", b"\xb2", b"0", b"_"]
STATUS_LINE = re.compile(rb"HTTP/1\.[01] [1-5][0-9][0-9] ")


@st.composite
def mutation(draw, data: bytes) -> bytes:
    """`data` with one change: a byte flipped, something inserted, a slice deleted, a header
    line repeated or two swapped, or a truncation."""
    kind = draw(st.sampled_from(["flip", "insert", "delete", "repeat", "swap", "truncate"]))
    # Half the changes land in the body, where chunk framing and trailers live.
    head_end = data.find(b"\r\n\r\n")
    start = head_end + 4 if head_end >= 0 and draw(st.booleans()) else 0
    at = draw(st.integers(start, len(data)))
    if kind == "flip":
        return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    if kind == "insert":
        inserted = draw(st.sampled_from(INSERTS) | st.binary(min_size=1, max_size=3))
        return data[:at] + inserted + data[at:]
    if kind == "delete":
        return data[:at] + data[at + draw(st.integers(1, 8)) :]
    if kind in ("repeat", "swap"):
        head, sep, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        if len(lines) > 2:
            i = draw(st.integers(1, len(lines) - 1))
            j = draw(st.integers(1, len(lines) - 1))
            if kind == "repeat":
                lines.insert(j, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
        return b"\r\n".join(lines) + sep + body
    return data[:at]


@st.composite
def hostile(draw) -> bytes:
    data = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 3))):
        data = draw(mutation(data))
    if draw(st.booleans()):  # a pipelined partner, itself maybe broken
        partner = draw(st.sampled_from(SEEDS))
        if draw(st.booleans()):
            partner = draw(mutation(partner))
        data += partner
    return data


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory) -> Iterator[RunningServer]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    (root / "hello.txt").write_text("hello world\n")
    (root / "index.html").write_text("<h1>home</h1>\n")
    backend = RawBackend(keep_alive=False)
    routes = [
        {"req_path": "/", "type": "file_serve", "dir_path": str(root)},
        {"req_path": "/old", "type": "redirect", "http_status_code": 301, "redirect_url": "/"},
        {"req_path": "/api", "type": "reverse_proxy", "upstreams": [backend.addr], "max_fails": 0},
    ]
    # A proxied body cut short waits for upstream_read: keep that short.
    timeouts = {"upstream_connect": 0.5, "upstream_read": 0.5}
    server = RunningServer(server_config(free_port(), routes, timeouts=timeouts), root)
    yield server
    server.stop()
    backend.stop()


def exchange(server: RunningServer, data: bytes) -> bytes:
    """Send, half-close, read until the server closes; fail if it neither answers nor closes."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused early and closed: what it sent is still readable
        try:
            return read_until_close(sock)
        except TimeoutError:
            pytest.fail(f"the server neither answered nor closed for {data!r}")


def check(server: RunningServer, caplog: pytest.LogCaptureFixture, data: bytes) -> None:
    """Send `data` and hold the server to the rules in the module docstring."""
    caplog.clear()
    caplog.set_level(logging.ERROR, logger="xps")
    raw = exchange(server, data)

    limits = server.config.limits
    view = proxy_view(data, limits.max_uri_bytes, limits.max_header_bytes, limits.max_body_bytes)
    reading = read_responses(raw, [m.request.method for m in view.messages])
    assert reading.problem is None, f"{reading.problem} for {data!r}: {raw!r}"
    assert not raw or STATUS_LINE.match(raw), raw  # h11 checked the ones after it
    # One response per request; a refusal only for bytes that failed before a request began.
    last_open = bool(view.messages) and not view.messages[-1].complete
    allowed = len(view.messages) + (1 if view.error is not None and not last_open else 0)
    assert len(reading.responses) <= allowed, (
        f"{len(reading.responses)} responses {[r.status for r in reading.responses]} "
        f"for {len(view.messages)} requests ({view.error}) in {data!r}"
    )
    errors = [r for r in caplog.records if r.name.startswith("xps") and r.levelno >= logging.ERROR]
    assert not errors, f"{data!r} logged: {errors[0].getMessage()} {errors[0].exc_info}"

    client = Client(server.port)
    try:
        assert client.request("GET", "/hello.txt").status == 200
    finally:
        client.close()


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=hostile())
def test_mutated_requests(fuzz_server, caplog, data: bytes) -> None:
    check(fuzz_server, caplog, data)


@pytest.mark.parametrize(
    "data",
    [
        # parse_range takes str.isdigit() for a number, and int() then fails on "²" (a
        # digit to isdigit, not to int) and on more than 4300 digits.
        pytest.param(b"Range: bytes=\xb2-", id="range-superscript-start"),
        pytest.param(b"Range: bytes=0-\xb9", id="range-superscript-end"),
        pytest.param(b"Range: bytes=-" + b"1" * 5000, id="range-5000-digit-suffix"),
        pytest.param(b"Range: bytes=" + b"1" * 5000 + b"-", id="range-5000-digit-start"),
    ],
)
def test_odd_range_numbers_are_no_server_error(fuzz_server, caplog, data: bytes) -> None:
    check(
        fuzz_server, caplog, b"GET /hello.txt HTTP/1.1\r\nHost: localhost\r\n" + data + b"\r\n\r\n"
    )


def test_broken_body_after_a_local_answer_gets_no_second_response(fuzz_server, caplog) -> None:
    """The file route answers at the head; a broken chunk after it must not add a 400."""
    data = (
        b"POST /hello.txt HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nabc\r\n0\r\n\r\n"
    )
    check(fuzz_server, caplog, data)
