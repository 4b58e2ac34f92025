"""`reverse_proxy` routes: pass the request to an upstream and its response back.

`serve_proxy` builds the upstream request head once (hop-by-hop fields out, X-Forwarded-*
in), hands the session a `ProxyStream` and dispatches it: the balancer picks an upstream, a
pooled keep-alive connection is reused or a new one connects. The request body streams
through as the session parses it (re-chunked when the client sent it chunked), held back
while the upstream socket is behind; the response streams to the client as the upstream
sends it, held back while the client pipe is full. Nothing is ever buffered whole.

What can go wrong, and what the client sees:
- connect refused, failed or timed out: the next upstream gets the request (what was queued
  for the failed one moves over); when none is left, 502;
- a pooled connection found dead before any response byte: one retry on a fresh connection
  for idempotent requests whose body has not started;
- no response byte within upstream_read (or a stall mid-response): 504, or a closed
  connection once the response has started;
- an upstream that breaks the protocol or closes mid-response: 502, or a closed connection.
Failures (not a dead pooled connection) count toward the upstream's passive health.

On a route with gzip on, a 200 whose type is compressible (and that the upstream did not
encode itself, nor mark `no-transform`, nor announce under 256 bytes) gets
`Vary: Accept-Encoding`; when the client also accepts gzip the body goes through a
`GzipEncoder` as it arrives and out chunked (HTTP/1.0: until the close), without
Content-Length or Accept-Ranges, its strong ETag given a ``-gzip`` suffix. What the encoder
holds is flushed whenever the upstream has nothing more for the moment, and at most
`STREAM_TURN` upstream bytes are compressed per loop turn.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING

from xps_server.core.throttle import LogThrottle
from xps_server.disk.gzip import MIN_LENGTH as GZIP_MIN_LENGTH
from xps_server.disk.gzip import (
    STREAM_TURN,
    GzipEncoder,
    accepts_gzip,
    chunk,
    compressible,
    gzip_etag,
)
from xps_server.events import Timeout
from xps_server.http.parser import END_OF_MESSAGE, NEED_DATA, Data, ParseError
from xps_server.http.response import CONNECTION_CLOSE, CONNECTION_KEEP_ALIVE
from xps_server.http.response_parser import CHUNKED, LENGTH, NO_BODY, UNTIL_CLOSE, Response
from xps_server.network.upstream import LocalConnectError

if TYPE_CHECKING:
    from xps_server.config import Route
    from xps_server.http.parser import Request
    from xps_server.network.upstream import UpstreamConnection, UpstreamState
    from xps_server.server.session import Session

# RFC 9110 §7.6.1, plus the de-facto Keep-Alive and Proxy-Connection.
HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    )
)
# Fields we always write ourselves from what we parsed, so a peer never sees framing or a Host
# other than ours: whatever a Connection header lists, these are never merely dropped.
_FRAMING = frozenset(("content-length", "transfer-encoding"))
_FORWARDED = frozenset(("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"))
_REQUEST_DROP = HOP_BY_HOP | _FORWARDED | _FRAMING | {"host"}
_RESPONSE_DROP = HOP_BY_HOP | _FRAMING
log = logging.getLogger("xps.proxy")
_CONNECT_LOG = LogThrottle()  # connects failing here: one line per interval

# Requests that may be sent twice (RFC 9110 §9.2.2): a dead pooled connection is retried.
IDEMPOTENT = frozenset(("GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"))
LAST_CHUNK = b"0\r\n\r\n"
CHUNKED_FIELD = b"Transfer-Encoding: chunked\r\n"
_STATUS_LINES: dict[tuple[int, str], bytes] = {}
_STATUS_LINES_MAX = 512  # upstreams choose reason phrases: bound what is cached
# Fields a compressed body replaces or invalidates; Vary is rewritten on every gzip candidate.
_GZIP_DROP = frozenset(("accept-ranges", "etag", "vary"))
_VARY_DROP = frozenset(("vary",))
_STRONG_ETAG = re.compile(r'"[\x21\x23-\x7e\x80-\xff]*"').fullmatch
_WEAK_ETAG = re.compile(r'W/"[\x21\x23-\x7e\x80-\xff]*"').fullmatch


def _connection_options(value: str | None) -> frozenset[str]:
    """Field names listed in a Connection header, lowercased; those are hop-by-hop too."""
    if value is None:
        return frozenset()
    value = value.lower()
    if value == "keep-alive" or value == "close":
        return frozenset()
    return frozenset(t.strip(" \t") for t in value.split(",")) - {"", "close", "keep-alive"}


def upstream_request_head(request: Request, client_ip: str) -> bytes:
    """The request head for an upstream: always HTTP/1.1 with keep-alive, origin-form target,
    hop-by-hop fields and names with "_" dropped (as nginx does), X-Forwarded-For/-Proto/-Host
    set. Host and the body framing are written from what the parser decided, never copied: the
    upstream sees the host we routed by and exactly the message length we read."""
    target = request.target
    if target[:1] != "/" and target != "*":
        target = request.path + ("?" + request.query if request.query else "")
    lines = [f"{request.method} {target} HTTP/1.1\r\n"]
    add = lines.append
    drop = _REQUEST_DROP
    options = _connection_options(request.headers.get("connection"))
    if options:
        drop = drop | options
    forwarded_for = None
    for name, value in request.raw_headers:
        lname = name.lower()
        if lname in drop or "_" in lname:
            if lname == "x-forwarded-for":
                forwarded_for = value if forwarded_for is None else f"{forwarded_for}, {value}"
            continue
        add(f"{name}: {value}\r\n")
    host = request.host
    add(f"Host: {host}\r\n" if host else "Host: localhost\r\n")
    if request.chunked:
        add("Transfer-Encoding: chunked\r\n")
    elif request.content_length >= 0:
        add(f"Content-Length: {request.content_length}\r\n")
    if forwarded_for:
        client_ip = f"{forwarded_for}, {client_ip}"
    add(f"X-Forwarded-For: {client_ip}\r\n")
    add("X-Forwarded-Proto: http\r\n")
    if host:
        add(f"X-Forwarded-Host: {host}\r\n")
    add("\r\n")
    return "".join(lines).encode("latin-1")


def _status_line(status: int, reason: str) -> bytes:
    key = (status, reason)
    line = _STATUS_LINES.get(key)
    if line is None:
        line = f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")
        if len(_STATUS_LINES) < _STATUS_LINES_MAX:
            _STATUS_LINES[key] = line
    return line


def _fields(response: Response, more: str = "", drop_also: frozenset[str] = frozenset()) -> bytes:
    """The response's header lines minus the hop-by-hop and framing ones (and `drop_also`), as
    received otherwise; then the lines of `more`."""
    drop = (_RESPONSE_DROP | drop_also) if drop_also else _RESPONSE_DROP
    connection = response.headers.get("connection")
    if connection is not None:
        options = _connection_options(connection)
        if options:
            drop = drop | options
    lines = [f"{n}: {v}\r\n" for n, v in response.raw_headers if n.lower() not in drop]
    if more:
        lines.append(more)
    return "".join(lines).encode("latin-1")


def _length_field(response: Response) -> bytes:
    """The Content-Length the client gets for a body passed through as it is: the length we
    parsed; for a body-less answer (HEAD, 304), the upstream's figure for the full body."""
    if response.framing == LENGTH:
        return b"Content-Length: %d\r\n" % response.content_length
    if response.framing == NO_BODY and response.status != 204 and response.content_length >= 0:
        return b"Content-Length: %d\r\n" % response.content_length
    return b""


def _gzip_candidate(response: Response, route: Route) -> bool:
    """Whether gzip applies to this upstream response on a gzip route (as for files: a 200 of
    a compressible type, not tiny; plus: not encoded upstream, not marked no-transform)."""
    if response.status != 200 or response.framing == NO_BODY:
        return False  # NO_BODY: the answer to a HEAD
    headers = response.headers
    if "content-encoding" in headers:
        return False
    if response.framing == LENGTH and response.content_length < GZIP_MIN_LENGTH:
        return False
    mime = headers.get("content-type")
    if mime is None or not compressible(mime.partition(";")[0].strip(" \t").lower(), route):
        return False
    cache_control = headers.get("cache-control")
    return cache_control is None or "no-transform" not in cache_control.lower()


def _vary_line(response: Response) -> str:
    """The upstream's Vary (all its fields as one) with Accept-Encoding added if missing."""
    vary = response.headers.get("vary", "").strip(" \t")
    if not vary:
        return "Vary: Accept-Encoding\r\n"
    tokens = {token.strip(" \t").lower() for token in vary.split(",")}
    if "*" in tokens or "accept-encoding" in tokens:
        return f"Vary: {vary}\r\n"
    return f"Vary: {vary}, Accept-Encoding\r\n"


def _gzip_etag_line(response: Response) -> str:
    """The ETag of the gzip variant: a strong tag gets -gzip inside its quotes (a different
    representation), a weak one stays (equivalent content); anything malformed is dropped."""
    etag = response.headers.get("etag")
    if etag is None:
        return ""
    if _STRONG_ETAG(etag):
        return f"ETag: {gzip_etag(etag)}\r\n"
    if _WEAK_ETAG(etag):
        return f"ETag: {etag}\r\n"
    return ""


def serve_proxy(session: Session, request: Request, route: Route, path: str) -> None:
    stream = ProxyStream(session, request, route)
    session.stream(stream)
    try:
        stream.dispatch(stream.head)
    except BaseException:
        stream.abort()  # the session answers 500; no upstream connection may be left behind
        raise


class ProxyStream:
    """One request's trip through an upstream: the session's Producer, the upstream's handler."""

    __slots__ = (
        "balancer",
        "body_bytes",
        "body_complete",
        "body_started",
        "conn",
        "connect_timeout",
        "done",
        "encoder",
        "gz_fed",
        "gz_scheduled",
        "gz_turn",
        "head",
        "loop",
        "read_timeout",
        "rechunk",
        "request",
        "response",
        "retried",
        "route",
        "sent_at",
        "session",
        "state",
        "status",
        "tried",
        "waiting_body",
    )

    def __init__(self, session: Session, request: Request, route: Route) -> None:
        core = session.core
        self.session = session
        self.request = request
        self.route = route
        self.loop = core.loop
        self.balancer = core.upstreams.balancer(route)
        timeouts = core.config.timeouts
        connect = route.upstream_connect_timeout
        read = route.upstream_read_timeout
        self.connect_timeout = timeouts.upstream_connect if connect is None else connect
        self.read_timeout = timeouts.upstream_read if read is None else read
        self.head = upstream_request_head(request, session.conn.peer_ip)
        self.conn: UpstreamConnection | None = None
        self.state: UpstreamState | None = None
        self.sent_at = 0.0  # when the request went to the current upstream
        self.tried: list[UpstreamState] = []
        self.response: Response | None = None
        self.status = 0
        self.body_bytes = 0
        self.body_started = False  # request body bytes went to an upstream: no retry
        self.body_complete = False
        self.waiting_body = False  # the session holds the request body for us
        self.rechunk = False
        self.retried = False
        self.done = False
        self.encoder: GzipEncoder | None = None  # set when the response body is compressed
        self.gz_fed = False  # the encoder took bytes since its last flush
        self.gz_turn = 0  # upstream bytes compressed in this loop turn
        self.gz_scheduled = False  # `_gzip_turn` is posted

    # --- choosing an upstream -------------------------------------------------------------------
    def dispatch(self, data: bytes) -> None:
        """Send `data` (the head, plus any body queued so far) to the next upstream picked."""
        tried = self.tried
        route = self.route
        client_ip = self.session.conn.peer_ip
        while True:
            state = self.balancer.pick(self.loop.now, client_ip, tried)
            if state is None:
                self._give_up(502)
                return
            tried.append(state)
            conn = state.acquire()
            if conn is None:
                try:
                    conn = state.connect(self)
                except LocalConnectError as exc:
                    self._out_of_resources(state, exc)
                    return
                except OSError as exc:
                    error = f"connect: {exc.strerror or exc}"
                    state.failed(error, route.max_fails, route.fail_timeout)
                    continue
            self._attach(state, conn, data)
            return

    def _attach(self, state: UpstreamState, conn: UpstreamConnection, data: bytes) -> None:
        conn.handler = self
        self.conn = conn
        self.state = state
        self.sent_at = self.loop.now
        self.session.upstream = state.addr
        state.active += 1
        state.requests += 1
        conn.parser.head_request = self.request.method == "HEAD"
        if conn.connecting:
            conn.timer.reset(self.loop.now + self.connect_timeout)
        else:
            conn.timer.reset(self.loop.now + self.read_timeout)
        conn.write(data)  # a dead pooled connection may call on_close from here
        if self.waiting_body and self.conn is conn and not conn.out.full():
            # Moved to another upstream while the body was held: it has room again.
            self.waiting_body = False
            self.session.resume_body()

    def _detach(self, reuse: bool) -> None:
        conn = self.conn
        self.conn = None
        state = self.state
        state.active -= 1
        if reuse:
            state.park(conn)
        else:
            conn.handler = None
            conn.close()

    def _progress(self) -> None:
        """The exchange moved: push the read deadline (unless the client is what holds it)."""
        conn = self.conn
        if not conn.read_paused and not conn.connecting:
            conn.timer.reset(self.loop.now + self.read_timeout)

    def _failed(self, error: str) -> None:
        route = self.route
        self.state.failed(error, route.max_fails, route.fail_timeout)

    # --- upstream events ----------------------------------------------------------------------
    def on_connect(self) -> None:
        self.conn.timer.reset(self.loop.now + self.read_timeout)
        self.state.connected()

    def on_connect_failed(self, error: str) -> None:
        pending = b"".join(self.conn.out.items)  # all still queued: none of it was sent
        self._detach(False)
        self._failed(f"connect: {error}")
        self.dispatch(pending)

    def on_data(self, data: bytes) -> None:
        self.conn.parser.feed(data)
        self._pump()

    def on_eof(self) -> None:
        self.conn.parser.feed_eof()
        self._pump()

    def on_drain(self) -> None:
        """The upstream took request bytes: progress, and room for more of the body."""
        self._progress()
        if self.waiting_body:
            self.waiting_body = False
            self.session.resume_body()

    def on_close(self) -> None:
        """The connection failed under us (a reset, a send error); our own closes detach first."""
        if self.conn is not None:
            self._lost("connection reset")

    def on_timeout(self) -> None:
        conn = self.conn
        session = self.session
        bus = session.core.bus
        connecting = conn.connecting
        if bus.active:
            phase = "upstream_connect" if connecting else "upstream_read"
            bus.publish(Timeout(time.time(), session.id, session.conn.peer_ip, phase))
        if connecting:
            self.on_connect_failed("timed out")
            return
        self._failed("read timed out")
        if self.response is None:
            self._give_up(504)
        else:
            self._cut()

    def _pump(self) -> None:
        """Turn what the upstream sent into bytes for the client: one send per batch."""
        conn = self.conn
        parser = conn.parser
        parts: list[bytes] = []
        while True:
            try:
                event = parser.next_event()
            except ParseError as exc:
                if parts:
                    self._send(parts)
                    if self.done:
                        return
                self._failed(exc.reason)
                if self.response is None:
                    self._give_up(502)
                else:
                    self._cut()
                return
            if event is NEED_DATA:
                break
            kind = type(event)
            if kind is Data:
                data = event.data
                encoder = self.encoder
                if encoder is not None:
                    self.gz_fed = True
                    self.gz_turn += len(data)
                    data = encoder.feed(data)
                    if not data:
                        continue  # never an empty chunk: it would end the body
                self.body_bytes += len(data)
                if self.rechunk:
                    data = b"%x\r\n%s\r\n" % (len(data), data)
                parts.append(data)
            elif kind is Response:
                status = event.status
                if status < 200:
                    if status == 101:  # Upgrade is never forwarded, so it cannot be honoured
                        self._failed("101 Switching Protocols without an Upgrade")
                        self._give_up(502)
                        return
                    if self.request.version == "1.1":
                        parts.append(_status_line(status, event.reason))
                        parts.append(_fields(event))
                        parts.append(b"\r\n")
                    continue
                self.response = event
                state = self.state
                if state.fails or state.down_until:
                    state.succeeded()
                parts.append(self._client_head(event))
            elif event is END_OF_MESSAGE:
                encoder = self.encoder
                if encoder is not None:
                    self.encoder = None
                    tail = encoder.finish()  # never empty: at least the gzip trailer
                    self.body_bytes += len(tail)
                    parts.append(chunk(tail) if self.rechunk else tail)
                if self.rechunk:
                    parts.append(LAST_CHUNK)
                self._send(parts)
                if not self.done:
                    self._finish()
                return
            else:  # CLOSED: the upstream closed before a response
                self._lost("upstream closed the connection")
                return
        if parts:
            self._send(parts)
            if self.done:
                return
        if self.gz_fed and not self.gz_scheduled:
            # Flush what the encoder holds once the upstream has nothing more this turn.
            self.gz_scheduled = True
            self.loop.call_soon(self._gzip_turn)
        client_out = self.session.conn.out
        if client_out.size >= client_out.threshold:
            # The client is behind: stop reading the upstream; the session's send timeout
            # watches the client meanwhile.
            conn.pause_reading()
            conn.timer.cancel()
            self.session.arm_timer()
        else:
            conn.timer.reset(self.loop.now + self.read_timeout)
            if self.gz_turn >= STREAM_TURN:
                conn.pause_reading()  # enough compressing for one turn: the rest on the next

    def _gzip_turn(self) -> None:
        """Next loop turn of a compressed response: flush what the encoder holds (the upstream
        idles, so the client gets everything so far), and read on if this turn's budget
        paused the upstream."""
        self.gz_scheduled = False
        self.gz_turn = 0
        encoder = self.encoder
        if self.done or encoder is None:
            return
        if self.gz_fed:
            self.gz_fed = False
            data = encoder.flush()
            if data:
                self.body_bytes += len(data)
                self._send([chunk(data) if self.rechunk else data])
                if self.done:
                    return
        conn = self.conn
        client_out = self.session.conn.out
        if conn is not None and conn.read_paused and client_out.size < client_out.threshold:
            self.resume()

    def _send(self, parts: list[bytes]) -> None:
        # A failed send closes the client, which aborts us: callers check `done` after.
        self.session.conn.send(parts[0] if len(parts) == 1 else b"".join(parts))

    def _client_head(self, response: Response) -> bytes:
        """The upstream's status and fields minus hop-by-hop ones (with Vary, and rewritten for
        a compressed body, when gzip applies), plus Server, Date, framing and our Connection."""
        session = self.session
        self.status = response.status
        headers = response.headers
        fields = None
        route = self.route
        if route.gzip_enable and _gzip_candidate(response, route):
            if accepts_gzip(self.request.headers):
                self.encoder = GzipEncoder(route.gzip_level)
                session.core.stats.gzip_responses += 1
                more = _vary_line(response) + _gzip_etag_line(response)
                fields = _fields(response, more + "Content-Encoding: gzip\r\n", _GZIP_DROP)
            else:
                fields = _fields(response, _vary_line(response), _VARY_DROP)
        framing = response.framing
        length = b""
        if framing in (CHUNKED, UNTIL_CLOSE) or self.encoder is not None:
            if self.request.version == "1.1":
                self.rechunk = True
                length = CHUNKED_FIELD
            else:
                session.close_after = True  # an HTTP/1.0 client learns the end from the close
        else:
            length = _length_field(response)
        responder = session.core.responder
        return b"".join(
            (
                _status_line(response.status, response.reason),
                _fields(response) if fields is None else fields,
                b"" if "server" in headers else b"Server: %s\r\n" % responder.server_name.encode(),
                b"" if "date" in headers else responder.date_line(),
                length,
                CONNECTION_CLOSE if session.close_after else CONNECTION_KEEP_ALIVE,
            )
        )

    # --- ends -----------------------------------------------------------------------------------
    def _finish(self) -> None:
        """The whole response is queued for the client."""
        conn = self.conn
        reuse = (
            self.response.keep_alive
            and self.body_complete
            and not conn.out.items
            and not conn.parser.buffered
        )
        self.done = True
        self._detach(reuse)
        self._account(self.status)
        self.session.stream_done(self.status, self.body_bytes)

    def _lost(self, reason: str) -> None:
        """The upstream connection ended without a complete response."""
        conn = self.conn
        state = self.state
        reused = conn.reused
        self._detach(False)
        if self.response is None:
            if (
                reused
                and not self.retried
                and not self.body_started
                and self.request.method in IDEMPOTENT
            ):
                # Most likely the upstream closed this idle keep-alive connection just as we
                # reused it: not the upstream's fault, and safe to send again.
                self.retried = True
                self._retry(state)
                return
            if not reused:
                self._failed(reason)
            self._give_up(502)
            return
        self._failed(reason)
        self._cut()

    def _retry(self, state: UpstreamState) -> None:
        try:
            conn = state.connect(self)
        except LocalConnectError as exc:
            self._out_of_resources(state, exc)
            return
        except OSError as exc:
            self._failed(f"connect: {exc.strerror or exc}")
            self.dispatch(self.head)
            return
        self._attach(state, conn, self.head)

    def _out_of_resources(self, state: UpstreamState, exc: OSError) -> None:
        """No connection could even start here (out of descriptors, say): 503, and the upstream
        keeps its health; any upstream would fail the same way, so none other is tried."""
        unlogged = _CONNECT_LOG.due(self.loop.now)
        if unlogged is not None:
            log.error(
                "cannot connect to upstream %s: %s (not counted against it)%s",
                state.addr,
                exc.strerror or exc,
                f"; {unlogged} more since the last report" if unlogged else "",
            )
        self.state = None  # this request never reached it: nothing to account for
        self._give_up(503)

    def _give_up(self, status: int) -> None:
        """Nothing reached the client yet: answer `status` (502, 504) in place of a response."""
        self.done = True
        if self.conn is not None:
            self._detach(False)
        self._account(status)
        self.session.stream_failed(status)

    def _cut(self) -> None:
        """The response started and cannot finish: flush what is queued, then close."""
        self.done = True
        if self.conn is not None:
            self._detach(False)
        self._account(502)  # for the upstream's figures, a broken exchange
        session = self.session
        session.close_after = True
        session.stream_done(self.status, self.body_bytes)

    def _account(self, status: int) -> None:
        """The exchange with the last upstream tried is over: into its figures."""
        state = self.state
        if state is not None and state.stats is not None:
            state.stats.record(status, self.loop.now - self.sent_at)

    # --- the session's side (Producer) ----------------------------------------------------------
    def on_body(self, data: bytes) -> None:
        conn = self.conn
        if conn is None:
            return
        self.body_started = True
        if self.request.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self._progress()
        conn.write(data)

    def on_body_end(self) -> None:
        self.body_complete = True
        conn = self.conn
        if conn is not None and self.request.chunked:
            self.body_started = True
            conn.write(LAST_CHUNK)

    def body_full(self) -> bool:
        conn = self.conn
        if conn is not None and conn.out.size >= conn.out.threshold:
            self.waiting_body = True
            return True
        return False

    def resume(self) -> None:
        conn = self.conn
        if conn is not None and conn.read_paused:
            conn.timer.reset(self.loop.now + self.read_timeout)
            conn.resume_reading()

    def responded(self) -> bool:
        return self.response is not None

    def abort(self) -> None:
        """The client went away: never pool a connection in the middle of an exchange."""
        if self.done:
            return
        self.done = True
        if self.conn is not None:
            self._detach(False)
