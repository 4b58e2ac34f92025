"""Oracles for the proxy security tests: what each side of the proxy made of the bytes.

- `proxy_view`: what our own sans-IO `RequestParser` parses from the client's bytes, i.e.
  the requests the proxy believes it received and must forward, framing and body included;
- `read_responses`: h11's strict reading of what the server sent back to the client;
- `framing_problems`: independent checks on the head an upstream received (one Content-Length
  of plain digits or chunked, never both, no field names with underscores, one Host).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field

import h11

from xps_server.http.parser import (
    END_OF_MESSAGE,
    NEED_DATA,
    Data,
    ParseError,
    Request,
    RequestParser,
)

_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+").fullmatch


@dataclass
class Parsed:
    """One request as our parser saw it; `complete` once its body ended cleanly."""

    request: Request
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False

    @property
    def origin_target(self) -> str:
        """The target the upstream must get: origin-form, as RFC 9112 §3.2.1 wants it."""
        request = self.request
        if request.target[:1] == "/" or request.target == "*":
            return request.target
        return request.path + ("?" + request.query if request.query else "")


@dataclass
class ProxyView:
    messages: list[Parsed]
    error: ParseError | None  # where parsing stopped, if it failed
    in_message: bool  # bytes of an unfinished message are still waiting for more


def proxy_view(data: bytes, max_uri: int, max_header: int, max_body: int) -> ProxyView:
    """Run our parser over `data` as the session would, and say what it made of them."""
    parser = RequestParser(max_uri, max_header, max_body)
    parser.feed(data)
    messages: list[Parsed] = []
    while True:
        try:
            event = parser.next_event()
        except ParseError as exc:
            return ProxyView(messages, exc, False)
        if event is NEED_DATA:
            return ProxyView(messages, None, parser.in_message)
        if isinstance(event, Request):
            messages.append(Parsed(event))
        elif isinstance(event, Data):
            messages[-1].body += event.data
        elif event is END_OF_MESSAGE:
            messages[-1].complete = True


@dataclass
class ClientResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class ClientReading:
    responses: list[ClientResponse]
    problem: str | None  # what h11 refused, or bytes after a response that closed the exchange


def read_reply(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes; a timeout or reset ends the reading too."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def read_responses(raw: bytes, methods: list[str], closed: bool = True) -> ClientReading:
    """Frame `raw` (what the server sent, then EOF if `closed`) as responses with h11.

    `methods` says what each response answers (HEAD ones have no body); a missing method
    means GET, so that stray responses are framed too."""
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(raw)
    if closed:
        conn.receive_data(b"")
    responses: list[ClientResponse] = []
    index = 0
    try:
        while True:
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            rest = conn.trailing_data[0]
            if conn.their_state is h11.MUST_CLOSE:
                problem = f"bytes after a response that closed: {rest!r}" if rest else None
                return ClientReading(responses, problem)
            if not rest:
                return ClientReading(responses, None)  # nothing more came
            if conn.our_state is h11.IDLE:
                method = methods[index] if index < len(methods) else "GET"
                conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
                conn.send(h11.EndOfMessage())
                index += 1
            status = 0
            headers: list[tuple[str, str]] = []
            body = bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    return ClientReading(responses, "an unfinished response")
                if isinstance(event, h11.ConnectionClosed):
                    return ClientReading(responses, "closed mid-response")
                if isinstance(event, h11.Response):
                    status = event.status_code
                    headers = [
                        (k.decode("latin-1"), v.decode("latin-1"))
                        for k, v in event.headers.raw_items()
                    ]
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    responses.append(ClientResponse(status, headers, bytes(body)))
                    break
    except h11.RemoteProtocolError as exc:
        return ClientReading(responses, f"h11 refused a response: {exc}")


def head_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """The field lines of a head that an upstream received, split on CRLF only."""
    lines = head.split(b"\r\n")
    assert lines[-2:] == [b"", b""], f"head does not end in CRLF CRLF: {head!r}"
    fields = []
    for line in lines[1:-2]:
        name, _, value = line.partition(b":")
        fields.append((name, value.strip(b" \t")))
    return fields


def framing_problems(
    head: bytes, host: str | None, chunked: bool, content_length: int
) -> list[str]:
    """What is wrong with an upstream request head, checked without h11 (which hides repeats).

    The head must frame the body as the proxy parsed it (`chunked`, or `content_length` >= 0,
    or neither), carry no field name h11 might accept but nginx would drop
    (underscores), and exactly one Host, equal to `host` (the routing host) unless that is
    None."""
    problems = []
    fields = head_fields(head)
    for name, _ in fields:
        if _TOKEN(name) is None:
            problems.append(f"field name is not a token: {name!r}")
        if b"_" in name:
            problems.append(f"field name with an underscore reached the upstream: {name!r}")
    lengths = [v for n, v in fields if n.lower() == b"content-length"]
    codings = [v for n, v in fields if n.lower() == b"transfer-encoding"]
    hosts = [v for n, v in fields if n.lower() == b"host"]
    if lengths and codings:
        problems.append("both Content-Length and Transfer-Encoding reached the upstream")
    if len(lengths) > 1:
        problems.append(f"{len(lengths)} Content-Length fields reached the upstream: {lengths}")
    for value in lengths:
        if not (value.isdigit() and value.isascii()):
            problems.append(f"Content-Length is not plain digits: {value!r}")
    # No body fields and `Content-Length: 0` frame the same empty body.
    expected = max(content_length, 0)
    if chunked:
        if codings != [b"chunked"]:
            problems.append(f"chunked body, but the upstream got Transfer-Encoding {codings}")
    else:
        if codings:
            problems.append(f"no chunked body was parsed, upstream got {codings}")
        if (expected or lengths) and not (
            len(lengths) == 1 and lengths[0].isdigit() and int(lengths[0]) == expected
        ):
            problems.append(f"the proxy parsed a {expected}-byte body, upstream got {lengths}")
    if len(hosts) != 1:
        problems.append(f"upstream got {len(hosts)} Host fields: {hosts}")
    elif host is not None and hosts[0].decode("latin-1").lower() != host.lower():
        problems.append(f"upstream Host {hosts[0]!r}, but the proxy routed on {host!r}")
    return problems
