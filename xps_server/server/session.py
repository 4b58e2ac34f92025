"""A session per client connection: parses requests, dispatches them to routes, owns timeouts.

The session sits between the client connection (the pipe's sink) and whatever produces the
response (the file module, a redirect, an upstream). Pipelined requests are answered in order,
one at a time: while a response is still queued no further request is taken and reading from
the socket pauses, so a client that does not read cannot make the server do (or hold) more
than one response's worth of work.

One request gets one response. A request whose body turns out to be malformed after it was
answered (local routes answer at the head) gets no second one: the connection closes. When the
session closes while the client may still be sending, it closes lingering, as nginx does: our
side is shut, what still arrives is read and dropped for a few seconds, so the client's kernel
does not answer our last response with a reset that destroys it unread.

A request that switches protocols (a WebSocket through a proxy route) hands the connection to
a tunnel (`routes.tunnel`) once the upstream agrees: the session stays listed, in state
`tunnel`, until the tunnel closes the connection.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from xps_server.config import find_route, find_server
from xps_server.events import Timeout
from xps_server.http.parser import END_OF_MESSAGE, NEED_DATA, ParseError, Request, RequestParser
from xps_server.http.target import normalize_path
from xps_server.http.writer import CHUNKED, CLOSE_DELIMITED, LENGTH, NO_BODY, Response
from xps_server.network.output import BodyStream
from xps_server.routes.base import Producer

if TYPE_CHECKING:
    from xps_server.network.connection import Connection
    from xps_server.network.listener import Listener
    from xps_server.policy.limits import ConnCounter
    from xps_server.routes.tunnel import Tunnel
    from xps_server.server.core import Core
    from xps_server.server.routing import RouteState, ServerView

log = logging.getLogger("xps.session")


# What the session waits for, which decides the timeout that applies.
IDLE, HEAD, BODY = 0, 1, 2
# A body up to this size is copied after its head for one plain send; a larger one goes out
# with the head by sendmsg, uncopied.
JOIN_BODY_BYTES = 4096
# Lingering close (nginx's lingering_timeout and lingering_time): wait this long for each
# further read from a client we are done with, and no longer than LINGER_TIME in all.
LINGER_TIMEOUT = 5.0
LINGER_TIME = 30.0
# At a graceful stop, how long a connection accepted but still silent may take to send its
# first request (it is answered, then closed; past this it is closed without a word).
FIRST_REQUEST_GRACE = 1.0


class Session:
    """HTTP/1.x over one connection."""

    __slots__ = (
        "body_done",
        "close_after",
        "conn",
        "core",
        "eof",
        "id",
        "last_bytes",
        "last_done",
        "last_elapsed",
        "last_request",
        "last_status",
        "limits_counted",
        "linger_on_close",
        "linger_until",
        "lingering",
        "listener",
        "opened",
        "parser",
        "phase",
        "processing",
        "producer",
        "request",
        "requests",
        "route",
        "route_state",
        "started",
        "timer",
        "top_4xx",
        "top_5xx",
        "top_limited",
        "top_pending",
        "top_refused",
        "top_requests",
        "top_sent",
        "tunnel",
        "upgrading",
        "upstream",
    )

    def __init__(
        self, core: Core, listener: Listener[ServerView], conn: Connection, session_id: int
    ) -> None:
        self.core = core
        self.listener = listener
        self.conn = conn
        self.id = session_id
        limits = core.config.limits
        self.parser = RequestParser(
            limits.max_uri_bytes, limits.max_header_bytes, limits.max_body_bytes
        )
        self.close_after = False
        self.eof = False  # the client half-closed: it sends nothing more
        self.requests = 0
        self.opened = core.loop.now
        self.route = ""  # req_path of the route that took the latest request
        self.route_state: RouteState | None = None  # the server's state of that route
        self.upstream = ""  # the upstream of the latest proxied request
        # The limit_conn counters this connection is counted in (None: none yet).
        self.limits_counted: list[ConnCounter] | None = None
        # The latest finished request, for the operator's detail view.
        self.last_request: Request | None = None
        self.last_status = 0
        self.last_bytes = 0
        self.last_elapsed = 0.0
        self.last_done = 0.0
        # What the top-talker tracker has not been told yet (see accounting.Accounting).
        self.top_pending = False
        self.top_requests = 0  # `requests` when it was last told
        self.top_refused = 0
        self.top_4xx = 0
        self.top_5xx = 0
        self.top_limited = 0
        self.top_sent = 0  # conn.bytes_out when it was last told
        self.request: Request | None = None
        self.started = 0.0
        self.phase = HEAD
        self.producer: Producer | None = None
        self.processing = False
        self.body_done = True
        self.linger_on_close = False  # the client may still be sending when we close
        self.lingering = False
        self.linger_until = 0.0
        # A request asked to switch protocols and waits for the upstream's answer; the tunnel
        # the connection became once it agreed (routes.tunnel).
        self.upgrading = False
        self.tunnel: Tunnel | None = None
        self.timer = core.loop.timer(self.on_timeout)
        # A fresh connection must send its head within client_header, as in nginx.
        self.timer.reset(core.loop.now + core.config.timeouts.client_header)
        core.idle[session_id] = self  # nothing in progress: reclaimable at max_connections

    # --- connection callbacks ---------------------------------------------------------------
    def on_data(self, data: bytes) -> None:
        if self.lingering:
            now = self.core.loop.now
            self.timer.reset(min(now + LINGER_TIMEOUT, self.linger_until))
            return  # what a client sends after we are done is dropped
        self.core.idle.pop(self.id, None)
        self.parser.feed(data)
        self.process()

    def on_eof(self) -> None:
        """The client will send no more: answer what it did send, pipelined requests included
        (as nginx does), then close."""
        if self.lingering:
            self.conn.close()
            return
        self.eof = True
        self.process()

    def on_drain(self) -> None:
        if self.producer is not None:
            self.producer.resume()
        self._continue()

    def on_close(self) -> None:
        self.timer.close()
        producer = self.producer
        if producer is not None:
            self.producer = None
            producer.abort()
            self.finish(499, 0)  # nginx's code for a client that left before its response
        self.core.session_closed(self)

    def on_timeout(self) -> None:
        conn = self.conn
        if conn.closed:
            return
        if self.lingering:
            conn.close()
            return
        core = self.core
        core.stats.conn_timeout += 1
        if conn.out.items:
            phase = "send"
        elif self.parser.in_message and self.phase != IDLE:
            phase = "body" if self.phase == BODY else "header"
        else:
            phase = "keep_alive"
        if core.bus.active:
            core.bus.publish(Timeout(time.time(), self.id, conn.peer_ip, phase))
        if phase == "header" and self.producer is None:
            self.fail(408, linger=False)  # a client this slow is not racing us with more bytes
        else:
            conn.close()  # idle keep-alive, a stalled body, or a client too slow to read

    def drain(self) -> None:
        """Shutdown: finish the response in flight, take no further request. A tunnel stays
        until it ends or the grace does."""
        if self.tunnel is not None:
            return
        if self.producer is not None:
            self.close_after = True  # its request was handled before the drain: close after it
            return
        if self.parser.in_message:
            # `handle` (a head still arriving) or the end of this message (a request already
            # answered) sees core.draining and closes after it.
            return
        if self.requests == 0 and not self.conn.out.items:
            # Accepted just before the drain, its first request likely on the way: closing now
            # would reset it. It gets a moment to arrive, and is answered with a close (`handle`
            # sees core.draining).
            timer = self.timer
            deadline = self.core.loop.now + FIRST_REQUEST_GRACE
            if timer.deadline is None or timer.deadline > deadline:
                timer.reset(deadline)
            return
        self.close_after = True
        if not self.conn.out.items:
            self.conn.close()

    # --- request processing -----------------------------------------------------------------
    def process(self) -> None:
        """Take parsed events while the client pipe (or the producer, for a body) has room."""
        if self.processing:
            return  # re-entered from a response that completed synchronously
        self.processing = True
        try:
            self._process()
        finally:
            self.processing = False

    def _process(self) -> None:
        parser = self.parser
        conn = self.conn
        out = conn.out
        while True:
            producer = self.producer
            if producer is not None:
                if self.body_done:
                    # The response is still streaming: the next request waits, and what the
                    # client pipelines meanwhile waits in the socket beyond one head's worth.
                    if parser.buffered > parser.max_header_bytes:
                        conn.pause_reading()
                    break
                if producer.body_full():
                    conn.pause_reading()
                    break
            elif self.close_after:
                break
            elif out.items:
                # One response at a time: the next pipelined request waits until this one
                # is out, so a client that does not read pins one response, not hundreds.
                conn.pause_reading()
                break
            try:
                event = parser.next_event()
            except ParseError as exc:
                self._parse_error(exc, producer)
                return
            if event is NEED_DATA:
                if self.eof:
                    self.close_after = True  # all that will ever come has been taken
                break
            if event is END_OF_MESSAGE:
                self.phase = IDLE
                self.body_done = True
                if self.core.draining:
                    self.close_after = True
                if producer is not None:
                    producer.on_body_end()
            elif type(event) is Request:
                self.body_done = False
                self.handle(event)
            elif producer is not None:
                producer.on_body(event.data)
            # Data for local routes: request bodies are read and discarded.
            if conn.closed:
                return
        if self.close_after and self.producer is None:
            if not out.items:
                self._close()
            return
        self.arm_timer()

    def _parse_error(self, exc: ParseError, producer: Producer | None) -> None:
        """The client sent something unparsable: one answer for its request, at most."""
        if self.body_done:
            self.fail(exc.status)  # a broken head: nothing was answered yet
        elif producer is None:
            # A local route answered at the head; the body it did not need is broken. The
            # answer stands alone: close once it is out.
            self.close_after = True
            self.linger_on_close = True
            self.conn.pause_reading()
            if not self.conn.out.items:
                self._close()
        elif producer.responded():
            self.conn.close()  # mid-response: it can only be cut short
        else:
            self.producer = None
            producer.abort()
            self.fail(exc.status)

    def _close(self) -> None:
        """Close a session whose last response is out: lingering if the client may still be
        sending, so our response is not lost to the reset its unread bytes would cause."""
        conn = self.conn
        if self.lingering:
            return
        if not (self.linger_on_close or self.parser.buffered or conn.read_pending):
            conn.close()
            return
        try:
            conn.shutdown_write()
        except OSError:
            conn.close()
            return
        self.lingering = True
        self.core.idle.pop(self.id, None)
        now = self.core.loop.now
        self.linger_until = now + LINGER_TIME
        self.timer.reset(now + LINGER_TIMEOUT)
        conn.resume_reading()

    def arm_timer(self) -> None:
        now = self.core.loop.now
        timeouts = self.core.config.timeouts
        if self.conn.out.items:
            self.timer.reset(now + timeouts.send)
        elif self.producer is not None:
            if self.body_done:
                self.timer.cancel()  # the producer's own timers watch the upstream
            else:
                self.timer.reset(now + timeouts.client_body)
        elif self.parser.in_message:
            if self.phase == BODY:
                self.timer.reset(now + timeouts.client_body)
            elif self.phase == IDLE:
                # client_header bounds the whole head: armed once, never extended.
                self.phase = HEAD
                self.timer.reset(now + timeouts.client_header)
        else:
            self.phase = IDLE
            self.timer.reset(now + timeouts.keep_alive)
            self.core.idle[self.id] = self

    # --- streamed responses -------------------------------------------------------------------
    def stream(self, producer: Producer) -> None:
        """Hand the rest of this request (body events) and its response to `producer`."""
        self.producer = producer

    def stream_done(self, status: int, body_bytes: int) -> None:
        """The producer has queued its whole response; take the next request."""
        self.producer = None
        self.finish(status, body_bytes)
        self._continue()

    def stream_failed(self, status: int) -> None:
        """The producer gave up before sending a byte: answer `status` (502, 504) instead."""
        self.producer = None
        self.error(status)
        self._continue()

    def _continue(self) -> None:
        """Output drained or a response ended: close if that was the last, else take more."""
        conn = self.conn
        if conn.closed:
            return
        if self.close_after and self.producer is None:
            if not conn.out.items:
                self._close()
            return
        self.process()
        if conn.read_paused and not conn.out.full() and not conn.closed and not self.upgrading:
            conn.resume_reading()

    def expect_upgrade(self) -> None:
        """The request asks to switch protocols: what the client sends after it is not HTTP,
        so nothing more is read until the upstream answers, and the connection closes after
        any answer but a 101 (as it may hold bytes of another protocol)."""
        self.upgrading = True
        self.close_after = True
        self.conn.pause_reading()

    def switch_protocols(self, tunnel: Tunnel) -> bytes:
        """The upstream switched protocols: the request is done (101) and the connection is
        `tunnel`'s from now on. Returns what the client sent after the request, unparsed."""
        self.upgrading = False
        self.producer = None
        self.tunnel = tunnel
        self.timer.cancel()  # the tunnel's own timer watches the connection
        self.finish(101, 0)
        return self.parser.take_rest()

    def tunnel_closed(self) -> None:
        """The tunnel closed the connection: the session ends with it."""
        self.timer.close()
        self.core.session_closed(self)

    def resume_body(self) -> None:
        """The producer can take request body again."""
        self._continue()

    def handle(self, request: Request) -> None:
        core = self.core
        self.requests += 1
        self.request = request
        self.started = core.loop.now
        stats = core.stats
        stats.req_total += 1
        stats.req_current += 1
        if request.content_length > 0 or request.chunked:
            self.phase = BODY
        if not request.keep_alive or core.draining:
            self.close_after = True
        servers = self.listener.servers
        server = servers[0] if len(servers) == 1 else find_server(servers, request.host)
        path: str | None  # None: normalize_path refused it
        path = request.path
        if "%" in path or "/." in path or "//" in path or path[:1] != "/":
            path = normalize_path(path)
            if path is None:
                self._unrouted()
                self.fail(400)
                return
        state = find_route(server.route_map, path)
        if state is None:
            self._unrouted()
            self.error(404)
            return
        self.route = state.req_path
        self.route_state = state
        access = state.access
        if access is not None and not access.allows(self.conn.peer_ip):
            core.deny(self, state, path)
            return
        limits = state.limits
        if limits is not None and not limits.admit(self):
            return
        stats.req_by_type[state.type] += 1
        try:
            response = core.route_handlers[state.type](self, request, state.route, path)
        except Exception:
            # A bug in a route handler costs this request, never the server.
            log.exception("%s %s failed", request.method, request.target)
            if not self.conn.closed:
                self.producer = None
                self.fail(500)
            return
        if response is not None:
            self.respond(response)

    def _unrouted(self) -> None:
        """The answer about to go out belongs to no route (not the previous request's)."""
        self.route = ""
        self.route_state = None

    # --- responding -------------------------------------------------------------------------
    def respond(self, response: Response) -> None:
        """Answer the current request with a whole `response` and account for it."""
        self.finish(response.status, self.send_response(response))

    def send_response(self, response: Response) -> int:
        """Send a whole `response`: the writer's head and the body (bytes, or a file segment
        moved by sendfile; none for a HEAD request). Returns the body bytes sent."""
        request = self.request
        head_only = request is not None and request.method == "HEAD"
        writer = self.core.writer
        status = response.status
        if response.length >= 0 and status >= 200 and status != 204 and status != 304:
            framing = LENGTH  # the common answer, decided without a call
        else:
            http11 = request is None or request.version == "1.1"
            framing = writer.framing(response, http11, head_only)
        keep_alive = not self.close_after
        body = response.body
        conn = self.conn
        if body is None or head_only or framing == NO_BODY:
            conn.send(writer.head(response, framing, keep_alive))
            sent = 0
        elif type(body) is bytes:
            sent = len(body)
            if sent <= JOIN_BODY_BYTES:
                conn.send(writer.head(response, framing, keep_alive, body))
            else:
                # A shared body (a cached file's bytes) goes out beside its head, uncopied:
                # what waits for a slow client is a view of the cache.
                conn.send_body(writer.head(response, framing, keep_alive), body)
        else:
            sent = body.count
            conn.send_file(writer.head(response, framing, keep_alive), body)
        return sent

    def start_body(
        self, response: Response, gzip_level: int | None = None, collect: bool = False
    ) -> BodyStream | None:
        """Send the head of a streamed response (the producer's); the chain its body goes
        into, gzip'ed at `gzip_level` if given, or None when no body goes out (HEAD)."""
        request = self.request
        head_only = request is not None and request.method == "HEAD"
        writer = self.core.writer
        framing = writer.framing(response, request is None or request.version == "1.1", head_only)
        if framing == CLOSE_DELIMITED:
            self.close_after = True  # an HTTP/1.0 client learns the end from the close
        conn = self.conn
        head = writer.head(response, framing, not self.close_after)
        if head_only or framing == NO_BODY:
            conn.send(head)
            return None
        producer = self.producer
        assert producer is not None, "start_body is for the session's producer"
        # The head waits in the stream, to go out with the first piece of the body.
        return BodyStream(
            self.core.loop, conn, producer, framing == CHUNKED, gzip_level, collect, head
        )

    def error(self, status: int, extra: bytes = b"") -> None:
        """Answer the canned page of `status`, keeping the connection if the request allowed."""
        self.respond(self.core.writer.error(status, extra))

    def fail(self, status: int, linger: bool = True) -> None:
        """A protocol error: answer `status`, then close once it is out (lingering, unless the
        client is known to be idle); read nothing more."""
        self.close_after = True
        self.linger_on_close = linger
        conn = self.conn
        conn.pause_reading()
        if self.request is None:
            # No request head came through, yet it is answered and counted like one (as nginx).
            self._unrouted()
            self.started = self.core.loop.now
            self.core.stats.req_total += 1
            self.core.stats.req_current += 1
        self.error(status)
        if not conn.out.items:
            self._close()
        else:
            self.timer.reset(self.core.loop.now + self.core.config.timeouts.send)

    def finish(self, status: int, body_bytes: int) -> None:
        self.core.request_done(self, status, body_bytes)
        self.last_request = self.request
        self.request = None
