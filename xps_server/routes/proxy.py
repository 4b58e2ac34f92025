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

A GET that asks to upgrade (WebSocket) keeps its Connection and Upgrade; if the upstream
answers 101 the two connections become a byte tunnel (`routes.tunnel`).

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
from xps_server.disk.gzip import accepts_gzip, compressible, gzip_etag
from xps_server.events import Timeout
from xps_server.http.parser import END_OF_MESSAGE, NEED_DATA, Data, ParseError
from xps_server.http.response_parser import CHUNKED, CLOSED, LENGTH, NO_BODY, UNTIL_CLOSE
from xps_server.http.response_parser import Response as UpstreamResponse
from xps_server.http.writer import LAST_CHUNK, RelayedResponse, Response, chunk
from xps_server.network.connection import NO_HANDLER
from xps_server.network.upstream import LocalConnectError
from xps_server.routes.tunnel import open_tunnel, requested_upgrade, switch_offered

if TYPE_CHECKING:
    from xps_server.config import Route
    from xps_server.http.parser import Request
    from xps_server.network.output import BodyStream
    from xps_server.network.upstream import UpstreamConnection, UpstreamState
    from xps_server.routes.base import RouteContext

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
_OWS = " \t"  # the optional whitespace around a field value
_FORWARDED = frozenset(("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"))
_REQUEST_DROP = HOP_BY_HOP | _FORWARDED | _FRAMING | {"host"}
_RESPONSE_DROP = HOP_BY_HOP | _FRAMING
log = logging.getLogger("xps.proxy")
_CONNECT_LOG = LogThrottle()  # connects failing here: one line per interval

# Requests that may be sent twice (RFC 9110 §9.2.2): a dead pooled connection is retried.
IDEMPOTENT = frozenset(("GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"))
# What a gzip candidate drops besides: the fields a compressed body replaces or invalidates,
# and Vary, which is rewritten on every candidate.
_GZIP_DROP = _RESPONSE_DROP | {"accept-ranges", "etag", "vary"}
_VARY_DROP = _RESPONSE_DROP | {"vary"}
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


def upstream_request_head(
    request: Request, client_ip: str, upgrade: str | None = None, scheme: str = "http"
) -> bytes:
    """The request head for an upstream: always HTTP/1.1 with keep-alive, origin-form target,
    hop-by-hop fields and names with "_" dropped (as nginx does), X-Forwarded-For/-Proto/-Host
    set. Host and the body framing are written from what the parser decided, never copied: the
    upstream sees the host we routed by and exactly the message length we read. `upgrade`
    (from `requested_upgrade`) keeps the request's Upgrade, with `Connection: upgrade`."""
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
    # The checked head lines, read here once rather than through `raw_headers`' list.
    for line in request.lines[1:]:
        name, _, value = line.partition(":")
        lname = name.lower()
        if lname in drop or "_" in lname:
            if lname == "x-forwarded-for":
                value = value.strip(_OWS)
                forwarded_for = value if forwarded_for is None else f"{forwarded_for}, {value}"
            continue
        add(f"{name}: {value.strip(_OWS)}\r\n")
    host = request.host
    add(f"Host: {host}\r\n" if host else "Host: localhost\r\n")
    if request.chunked:
        add("Transfer-Encoding: chunked\r\n")
    elif request.content_length >= 0:
        add(f"Content-Length: {request.content_length}\r\n")
    if forwarded_for:
        client_ip = f"{forwarded_for}, {client_ip}"
    if upgrade is not None:
        add(f"Connection: upgrade\r\nUpgrade: {upgrade}\r\n")
    add(f"X-Forwarded-For: {client_ip}\r\n")
    add(f"X-Forwarded-Proto: {scheme}\r\n")
    if host:
        add(f"X-Forwarded-Host: {host}\r\n")
    add("\r\n")
    return "".join(lines).encode("latin-1")


def _fields(
    response: UpstreamResponse, more: str = "", drop: frozenset[str] = _RESPONSE_DROP
) -> bytes:
    """The response's header lines minus those named in `drop` (the hop-by-hop and framing
    ones, and any the Connection field lists), as received otherwise; then the lines of
    `more`."""
    connection = response.headers.get("connection")
    if connection is not None:
        options = _connection_options(connection)
        if options:
            drop = drop | options
    lines = []
    for line in response.lines[1:]:  # checked by the parser; as received, OWS trimmed
        name, _, value = line.partition(":")
        if name.lower() not in drop:
            lines.append(f"{name}: {value.strip(_OWS)}\r\n")
    if more:
        lines.append(more)
    return "".join(lines).encode("latin-1")


def _gzip_candidate(response: UpstreamResponse, route: Route) -> bool:
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


def _vary_line(response: UpstreamResponse) -> str:
    """The upstream's Vary (all its fields as one) with Accept-Encoding added if missing."""
    vary = response.headers.get("vary", "").strip(" \t")
    if not vary:
        return "Vary: Accept-Encoding\r\n"
    tokens = {token.strip(" \t").lower() for token in vary.split(",")}
    if "*" in tokens or "accept-encoding" in tokens:
        return f"Vary: {vary}\r\n"
    return f"Vary: {vary}, Accept-Encoding\r\n"


def _gzip_etag_line(response: UpstreamResponse) -> str:
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


def serve_proxy(ctx: RouteContext, request: Request, route: Route, path: str) -> None:
    stream = ProxyStream(ctx, request, route)
    ctx.stream(stream)
    if stream.upgrade is not None:
        ctx.expect_upgrade()
    try:
        stream.dispatch(stream.head)
    except BaseException:
        stream.abort()  # the session answers 500; no upstream connection may be left behind
        raise


# The phases of one request's trip (ProxyStream.phase).
CONNECTING = "connecting"  # a new connection to the upstream is being set up
AWAITING_HEAD = "awaiting head"  # the request went out; no final response head yet
STREAMING = "streaming"  # the response head went to the client; its body follows
DONE = "done"  # answered, failed or abandoned: nothing more happens


class ProxyStream:
    """One request's trip through an upstream: the session's producer, the upstream
    connection's handler. `phase` says where it is: CONNECTING → AWAITING_HEAD → STREAMING →
    DONE (a failed connect goes back to CONNECTING on the next upstream; a failure before the
    head answers 502/504 in its place, one after it cuts the response short; a 101 to an
    upgrade request hands the upstream connection to a tunnel and is DONE)."""

    __slots__ = (
        "balancer",
        "body",
        "body_complete",
        "body_started",
        "conn",
        "connect_timeout",
        "ctx",
        "gzip",
        "head",
        "keep_alive",
        "loop",
        "phase",
        "read_timeout",
        "request",
        "retried",
        "route",
        "sent_at",
        "state",
        "status",
        "tried",
        "upgrade",
        "waiting_body",
        "whole_sent",
    )

    def __init__(self, ctx: RouteContext, request: Request, route: Route) -> None:
        core = ctx.core
        self.ctx = ctx
        self.request = request
        self.route = route
        self.loop = core.loop
        switches = ctx.route_state
        assert switches is not None and switches.balancer is not None
        self.balancer = switches.balancer
        self.gzip = switches.gzip_enable  # the operator's switch, as the request came
        timeouts = core.config.timeouts
        connect = route.upstream_connect_timeout
        read = route.upstream_read_timeout
        self.connect_timeout = timeouts.upstream_connect if connect is None else connect
        self.read_timeout = timeouts.upstream_read if read is None else read
        # The protocols the request asks to switch to, when it may (routes.tunnel).
        self.upgrade = requested_upgrade(request) if "upgrade" in request.headers else None
        conn = ctx.conn
        self.head = upstream_request_head(request, conn.peer_ip, self.upgrade, conn.scheme)
        self.phase = CONNECTING
        self.conn: UpstreamConnection | None = None
        self.state: UpstreamState | None = None
        self.sent_at = 0.0  # when the request went to the current upstream
        self.tried: list[UpstreamState] = []
        self.body: BodyStream | None = None  # the client's response body, once streaming
        self.whole_sent = 0  # body bytes of a response sent whole (no body stream)
        self.status = 0
        self.keep_alive = False  # the upstream keeps the connection after this response
        self.body_started = False  # request body bytes went to an upstream: no retry
        self.body_complete = False
        self.waiting_body = False  # the session holds the request body for us
        self.retried = False

    # --- choosing an upstream -------------------------------------------------------------------
    def dispatch(self, data: bytes) -> None:
        """Send `data` (the head, plus any body queued so far) to the next upstream picked."""
        tried = self.tried
        client_ip = self.ctx.conn.peer_ip
        while True:
            state = self.balancer.pick(self.loop.now, client_ip, tried)
            if state is None:
                self._give_up(502)
                return
            tried.append(state)
            conn = state.acquire()
            if conn is not None:
                self._attach(state, conn, data)
                return
            if self._open(state, data):
                return

    def _open(self, state: UpstreamState, data: bytes) -> bool:
        """Open a new connection to `state` and send `data` on it. False if the connect failed
        at once (counted against `state`: the caller tries the next upstream); True otherwise,
        also when no connection could even start (the request was answered 503)."""
        try:
            conn = state.connect(self)
        except LocalConnectError as exc:
            self._out_of_resources(state, exc)
            return True
        except OSError as exc:
            route = self.route
            state.failed(f"connect: {exc.strerror or exc}", route.max_fails, route.fail_timeout)
            return False
        self._attach(state, conn, data)
        return True

    def _attach(self, state: UpstreamState, conn: UpstreamConnection, data: bytes) -> None:
        conn.handler = self
        self.conn = conn
        self.state = state
        now = self.loop.now
        self.sent_at = now
        self.ctx.upstream = state.addr
        state.active += 1
        state.requests += 1
        conn.parser.head_request = self.request.method == "HEAD"
        if conn.connecting:
            self.phase = CONNECTING
            conn.timer.reset(now + self.connect_timeout)
        else:
            self.phase = AWAITING_HEAD
            conn.timer.reset(now + self.read_timeout)
        conn.write(data)  # a dead pooled connection may call on_close from here
        if self.waiting_body and self.conn is conn and not conn.out.full():
            # Moved to another upstream while the body was held: it has room again.
            self.waiting_body = False
            self.ctx.resume_body()

    def _detach(self, reuse: bool) -> None:
        conn = self.conn
        assert conn is not None and self.state is not None
        self.conn = None
        state = self.state
        state.active -= 1
        if reuse:
            state.park(conn)
        else:
            conn.handler = NO_HANDLER
            conn.close()

    def _progress(self) -> None:
        """The exchange moved: push the read deadline (unless the client is what holds it)."""
        conn = self.conn
        if conn is not None and not conn.read_paused and not conn.connecting:
            conn.timer.reset(self.loop.now + self.read_timeout)

    def _failed(self, error: str) -> None:
        route = self.route
        assert self.state is not None
        self.state.failed(error, route.max_fails, route.fail_timeout)

    # --- upstream events ----------------------------------------------------------------------
    def on_connect(self) -> None:
        assert self.conn is not None and self.state is not None
        self.phase = AWAITING_HEAD
        self.conn.timer.reset(self.loop.now + self.read_timeout)
        self.state.connected()

    def on_connect_failed(self, error: str) -> None:
        assert self.conn is not None
        pending = self.conn.queued()
        self._detach(False)
        self._failed(f"connect: {error}")
        self.dispatch(pending)

    def on_data(self, data: bytes) -> None:
        assert self.conn is not None
        self.conn.parser.feed(data)
        self._pump()

    def on_eof(self) -> None:
        assert self.conn is not None
        self.conn.parser.feed_eof()
        self._pump()

    def on_drain(self) -> None:
        """The upstream took request bytes: progress, and room for more of the body."""
        self._progress()
        if self.waiting_body:
            self.waiting_body = False
            self.ctx.resume_body()

    def on_close(self) -> None:
        """The connection failed under us (a reset, a send error); our own closes detach first."""
        if self.conn is not None:
            self._lost("connection reset")

    def on_timeout(self) -> None:
        ctx = self.ctx
        bus = ctx.core.bus
        connecting = self.phase == CONNECTING
        if bus.active:
            phase = "upstream_connect" if connecting else "upstream_read"
            bus.publish(Timeout(time.time(), ctx.id, ctx.conn.peer_ip, phase))
        if connecting:
            self.on_connect_failed("timed out")
            return
        self._failed("read timed out")
        if self.phase == AWAITING_HEAD:
            self._give_up(504)
        else:
            self._cut()

    # --- the upstream's response ------------------------------------------------------------
    def _pump(self) -> None:
        """Take what the upstream sent, event by event, into the client's response; one send
        per batch; then hold the upstream back if the client (or this turn's compression
        budget) has no room."""
        conn = self.conn
        assert conn is not None
        parser = conn.parser
        while self.phase != DONE:
            try:
                event = parser.next_event()
            except ParseError as exc:
                self._broken(exc.reason)
                return
            if event is NEED_DATA:
                self._batch_done(conn)
                return
            if type(event) is Data:
                body = self.body
                if body is not None:
                    body.write(event.data)
            elif event is END_OF_MESSAGE:
                self._end()
                return
            elif event is CLOSED:  # the upstream closed before a response
                self._lost("upstream closed the connection")
                return
            else:
                self._head(event)

    def _head(self, upstream: UpstreamResponse) -> None:
        """A response head: an interim one is relayed, the final one starts the client's."""
        status = upstream.status
        ctx = self.ctx
        if status < 200:
            if status == 101:
                self._switch(upstream)
            elif self.request.version == "1.1":
                writer = ctx.core.writer
                ctx.conn.send(writer.informational(status, upstream.reason, _fields(upstream)))
            return
        state = self.state
        assert state is not None
        if state.fails or state.down_until:
            state.succeeded()
        self.phase = STREAMING
        self.status = status
        self.keep_alive = upstream.keep_alive
        response, gzip_level = self._client_response(upstream)
        conn = self.conn
        assert conn is not None
        parser = conn.parser
        if (
            gzip_level is None
            and upstream.framing == LENGTH
            and (parser.buffered >= upstream.content_length)
        ):
            # The whole body came with the head (the usual small answer): it goes out as one
            # Response, head and body in one send, without a body stream. The end of the
            # message is the parser's next event.
            if upstream.content_length:
                event = parser.next_event()
                assert type(event) is Data
                response.body = event.data
            else:
                response.body = b""
            self.whole_sent = ctx.send_response(response)
            return
        self.body = ctx.start_body(response, gzip_level)

    def _switch(self, upstream: UpstreamResponse) -> None:
        """A 101: the connection becomes a tunnel, if the request asked for it and the
        upstream says to which of the protocols offered; otherwise the upstream is confused
        (502)."""
        protocols = upstream.headers.get("upgrade")
        offered = self.upgrade
        if offered is None or protocols is None or not switch_offered(offered, protocols):
            self._failed("101 Switching Protocols to a protocol the request did not offer")
            self._give_up(502)
            return
        conn = self.conn
        state = self.state
        assert conn is not None and state is not None
        if state.fails or state.down_until:
            state.succeeded()
        self._account(101)
        self.phase = DONE
        self.conn = None  # the tunnel's now, and with it the upstream's count of it in flight
        headers = upstream.headers
        writer = self.ctx.core.writer
        head = b"".join(
            (
                writer.status_line(101, upstream.reason),
                b"" if "server" in headers else writer.server_line,
                b"" if "date" in headers else writer.date_line(),
                _fields(upstream),
                f"Connection: upgrade\r\nUpgrade: {protocols}\r\n\r\n".encode("latin-1"),
            )
        )
        timeout = self.ctx.core.config.timeouts.tunnel
        open_tunnel(self.ctx, conn, state, head, timeout)

    def _client_response(self, upstream: UpstreamResponse) -> tuple[Response, int | None]:
        """The upstream's status and fields minus hop-by-hop ones (with Vary, and rewritten
        for a compressed body, when gzip applies), and the gzip level if the body is
        compressed. The writer adds Server and Date unless the upstream sent them, the framing
        from the length we parsed, and our Connection."""
        route = self.route
        gzip_level = None
        if self.gzip and _gzip_candidate(upstream, route):
            if accepts_gzip(self.request.headers):
                gzip_level = route.gzip_level
                self.ctx.core.stats.gzip_responses += 1
                more = _vary_line(upstream) + _gzip_etag_line(upstream)
                fields = _fields(upstream, more + "Content-Encoding: gzip\r\n", _GZIP_DROP)
            else:
                fields = _fields(upstream, _vary_line(upstream), _VARY_DROP)
        else:
            fields = _fields(upstream)
        framing = upstream.framing
        if gzip_level is not None or framing in (CHUNKED, UNTIL_CLOSE):
            length = -1  # as it comes: chunked to HTTP/1.1 clients, until the close to 1.0
        elif framing == LENGTH or upstream.status != 204:
            length = upstream.content_length  # a HEAD's or 304's says how long the body is
        else:
            length = -1
        headers = upstream.headers
        response = RelayedResponse(
            upstream.status,
            fields,
            length,
            upstream.reason,
            "server" not in headers,
            "date" not in headers,
        )
        return response, gzip_level

    def _batch_done(self, conn: UpstreamConnection) -> None:
        """The upstream has nothing more for now: send what this batch made, and hold the
        upstream back while the client has no room."""
        body = self.body
        if body is None:
            conn.timer.reset(self.loop.now + self.read_timeout)  # still waiting for the head
            return
        body.commit()
        if self.phase == DONE:
            return  # the send failed: the client is gone, and we with it
        if body.room():
            conn.timer.reset(self.loop.now + self.read_timeout)
            return
        conn.pause_reading()
        out = self.ctx.conn.out
        if out.size >= out.threshold:
            # The client is behind: its send timeout watches it meanwhile.
            conn.timer.cancel()
            self.ctx.arm_timer()

    def _end(self) -> None:
        """The upstream's response is complete."""
        body = self.body
        if body is not None:
            body.end()
        if self.phase != DONE:
            self._finish()

    def _broken(self, reason: str) -> None:
        """The upstream broke the protocol: 502 before the head, else the response is cut."""
        body = self.body
        if body is not None:
            body.commit()
            if self.phase == DONE:
                return
        self._failed(reason)
        if self.phase == STREAMING:
            self._cut()
        else:
            self._give_up(502)

    # --- ends -----------------------------------------------------------------------------------
    def _sent(self) -> int:
        body = self.body
        return body.sent if body is not None else self.whole_sent

    def _finish(self) -> None:
        """The whole response is queued for the client."""
        conn = self.conn
        assert conn is not None
        reuse = (
            self.keep_alive
            and self.body_complete
            and not conn.out.items
            and not conn.parser.buffered
        )
        self.phase = DONE
        self._detach(reuse)
        self._account(self.status)
        self.ctx.stream_done(self.status, self._sent())

    def _lost(self, reason: str) -> None:
        """The upstream connection ended without a complete response."""
        conn = self.conn
        state = self.state
        assert conn is not None and state is not None
        reused = conn.reused
        self._detach(False)
        if self.phase != STREAMING:
            if (
                reused
                and not self.retried
                and not self.body_started
                and self.request.method in IDEMPOTENT
            ):
                # Most likely the upstream closed this idle keep-alive connection just as we
                # reused it: not the upstream's fault, and safe to send again.
                self.retried = True
                if not self._open(state, self.head):
                    self.dispatch(self.head)
                return
            if not reused:
                self._failed(reason)
            self._give_up(502)
            return
        self._failed(reason)
        self._cut()

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
        self.phase = DONE
        if self.conn is not None:
            self._detach(False)
        self._account(status)
        self.ctx.stream_failed(status)

    def _cut(self) -> None:
        """The response started and cannot finish: flush what is queued, then close."""
        self.phase = DONE
        if self.conn is not None:
            self._detach(False)
        self._account(502)  # for the upstream's figures, a broken exchange
        if self.body is not None:
            self.body.commit()  # what this batch made still goes out before the close
        ctx = self.ctx
        ctx.close_after = True
        ctx.stream_done(self.status, self._sent())

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
            data = chunk(data)
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
        return self.phase == STREAMING

    def abort(self) -> None:
        """The client went away: never pool a connection in the middle of an exchange."""
        if self.phase == DONE:
            return
        self.phase = DONE
        if self.conn is not None:
            self._detach(False)
