"""Upstreams: the connection to a backend, and the shared state of each backend address.

`UpstreamConnection` is a `Connection` that connects non-blocking (EPOLLOUT only while the
connect or a send is pending) and carries one response parser and one timer for its whole
life: the timer bounds the connect, then the wait for response bytes, then the idle time in
the pool. `UpstreamState` is everything about one `host:port`, shared by every route that
names it: passive health, the operator's drain flag, counters, and the pool of idle
keep-alive connections. `UpstreamRegistry` (the core's `upstreams`) holds the states by
address and makes each reverse_proxy route's balancer over them; the console reads
`snapshot()` and calls `drain` / `enable`. An `https://` upstream is its own address
(`https://host:port`) whose connections are `TlsUpstreamConnection`s: they count as connected
once the TLS handshake (certificate verified, SNI sent) is done, within the connect timeout.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any, Protocol, cast

from xps_server.core.loop import EPOLLOUT, Loop
from xps_server.events import UpstreamConnected, UpstreamFailed, UpstreamHealthChanged
from xps_server.http.response_parser import ResponseParser
from xps_server.network.balancer import Balancer
from xps_server.network.connection import NO_HANDLER, READ_MASK, WRITE_MASK, Connection
from xps_server.network.tls import TlsStream, client_context

if TYPE_CHECKING:
    from collections import deque

    from xps_server.config import Config, Route
    from xps_server.events import EventBus
    from xps_server.traffic import TrafficStats

log = logging.getLogger("xps.upstream")

IDLE_PER_UPSTREAM = 64  # pooled keep-alive connections kept per address (nginx: keepalive N)
IDLE_TIMEOUT = 60.0  # an idle pooled connection is closed after this many seconds

UP, DOWN, DRAINING = "up", "down", "draining"

# A connect that cannot start for want of a local resource (descriptors, memory, ephemeral
# ports) says nothing about the upstream, so it never counts against the upstream's health.
LOCAL_ERRNOS = frozenset(
    (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL)
)


class LocalConnectError(OSError):
    """A connect failed here, not at the upstream (see LOCAL_ERRNOS)."""


def upstream_key(host: str, port: int, tls: bool = False) -> str:
    """How an upstream is named: `host:port`, IPv6 literals in brackets; `https://` first for
    an HTTPS upstream."""
    key = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"https://{key}" if tls else key


class UpstreamHandler(Protocol):
    def on_connect(self) -> None: ...
    def on_connect_failed(self, error: str) -> None: ...
    def on_data(self, data: bytes) -> None: ...
    def on_eof(self) -> None: ...
    def on_drain(self) -> None: ...
    def on_close(self) -> None: ...
    def on_timeout(self) -> None: ...


class UpstreamConnection(Connection):
    """A connection to one upstream; while pooled it is its own handler (any event closes it)."""

    __slots__ = ("connecting", "parser", "reused", "state", "timer")

    handler: UpstreamHandler

    def __init__(self, loop: Loop, sock: socket.socket, state: UpstreamState) -> None:
        super().__init__(loop, sock, (state.host, state.port))
        self.state = state
        self.connecting = False
        self.reused = False  # it served a request before: it may have died in the pool
        self.parser = ResponseParser()
        self.timer = loop.timer(self._on_timer)

    @classmethod
    def open(cls, loop: Loop, state: UpstreamState, handler: UpstreamHandler) -> UpstreamConnection:
        """Start a non-blocking connect; raises OSError if it fails at once (LocalConnectError
        when the failure is ours, not the upstream's)."""
        if state.sockaddr is None:
            raise OSError(errno.EHOSTUNREACH, state.last_error or "cannot resolve")
        try:
            sock = socket.socket(state.family, socket.SOCK_STREAM)
        except OSError as exc:
            if exc.errno in LOCAL_ERRNOS:
                raise LocalConnectError(exc.errno, exc.strerror) from None
            raise
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(state.sockaddr)
            if err and err != errno.EINPROGRESS:
                kind = LocalConnectError if err in LOCAL_ERRNOS else OSError
                raise kind(err, os.strerror(err))
        except OSError:
            sock.close()
            raise
        conn = cls(loop, sock, state)
        conn.handler = handler
        if err:
            conn.connecting = True
            conn.writing = True
            loop.add(conn.fd, WRITE_MASK, conn._on_connect_event)
        else:
            loop.add(conn.fd, READ_MASK, conn.on_event)
        return conn

    def _on_connect_event(self, mask: int) -> None:
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err or not mask & EPOLLOUT:
            # The handler decides: it may move what was queued to another upstream first.
            self.handler.on_connect_failed(os.strerror(err) if err else "connect failed")
            return
        self.loop.handlers[self.fd] = self.on_event  # connected: the ordinary dispatch from now
        self._connected(mask)

    def _connected(self, mask: int) -> None:
        """The TCP connect succeeded: the connection is ready for the handler."""
        self.connecting = False
        self.handler.on_connect()
        if not self.closed:
            self.on_event(mask)  # flushes what was queued meanwhile

    def write(self, data: bytes) -> None:
        """Send `data`, or queue it while the connect is in progress."""
        if self.connecting:
            self.out.push(data)
        else:
            self.send(data)

    def queued(self) -> bytes:
        """Everything `write` queued: while the connect is in progress, none of it was sent.
        An upstream connection never queues a file segment, only bytes and their views."""
        return b"".join(cast("deque[bytes | memoryview]", self.out.items))

    def _on_timer(self) -> None:
        if not self.closed:
            self.handler.on_timeout()

    def close(self) -> None:
        self.timer.close()
        Connection.close(self)

    # --- handler of a pooled, idle connection: nothing should happen, so anything closes it ---
    def on_connect(self) -> None:
        pass

    def on_connect_failed(self, error: str) -> None:
        self.close()

    def on_data(self, data: bytes) -> None:
        self.close()  # bytes nobody asked for: the upstream is confused

    def on_eof(self) -> None:
        self.close()  # the upstream closed its idle end, as keep-alive servers do

    def on_drain(self) -> None:
        pass

    def on_close(self) -> None:
        self.state.forget(self)

    def on_timeout(self) -> None:
        self.close()  # idle too long


class TlsUpstreamConnection(TlsStream, UpstreamConnection):
    """A connection to an HTTPS upstream: `connecting` until the handshake is done, so what
    the proxy writes meanwhile waits (in cleartext) in the pipe; a failed handshake is a
    failed connect, and the next upstream is tried."""

    __slots__ = ("cipher", "handshaking", "peer_done", "shut", "tls", "tls_in", "tls_out")

    def __init__(self, loop: Loop, sock: socket.socket, state: UpstreamState) -> None:
        super().__init__(loop, sock, state)
        assert state.tls is not None
        incoming = ssl.MemoryBIO()
        outgoing = ssl.MemoryBIO()
        # server_hostname: SNI (never sent for an IP) and the name the certificate must carry.
        self._tls_init(
            state.tls.wrap_bio(incoming, outgoing, server_hostname=state.host), incoming, outgoing
        )

    @classmethod
    def open(cls, loop: Loop, state: UpstreamState, handler: UpstreamHandler) -> UpstreamConnection:
        conn = super().open(loop, state, handler)
        if not conn.connecting:
            assert isinstance(conn, TlsUpstreamConnection)
            conn.connecting = True  # connected at once: the handshake is still to come
            conn._handshake()
        return conn

    def _connected(self, mask: int) -> None:
        """The TCP connect succeeded: the handshake comes before the handler hears of it."""
        self._handshake()

    def _handshake_done(self) -> None:
        self.connecting = False
        self.handler.on_connect()
        if not self.closed:
            self._write()  # the request queued meanwhile

    def _handshake_failed(self, reason: str) -> None:
        self.handler.on_connect_failed(f"TLS handshake: {reason}")

    def _on_raw_eof(self) -> None:
        if self.handshaking:
            self._handshake_failed("closed by the upstream")
        else:
            super()._on_raw_eof()


def _client_context(key: str, route: Route) -> ssl.SSLContext:
    """The context an HTTPS upstream is verified with (routes naming it agree: the config
    check says so)."""
    if not route.tls_verify:
        log.warning("%s: tls_verify is false, its certificate is not verified", key)
    return client_context(route.ca_file, route.tls_verify)


class UpstreamState:
    """One upstream address: health, drain flag, counters and its idle connection pool."""

    __slots__ = (
        "active",
        "addr",
        "bus",
        "connects",
        "down_until",
        "draining",
        "fails",
        "fails_since",
        "failures",
        "family",
        "host",
        "idle",
        "last_error",
        "last_error_at",
        "loop",
        "port",
        "requests",
        "sockaddr",
        "stats",
        "tls",
    )

    def __init__(
        self, loop: Loop, bus: EventBus, host: str, port: int, tls: ssl.SSLContext | None = None
    ) -> None:
        self.loop = loop
        self.bus = bus
        self.host = host
        self.port = port
        self.tls = tls  # an HTTPS upstream's client context
        self.addr = upstream_key(host, port, tls is not None)
        self.draining = False
        self.down_until = 0.0  # loop clock; out of rotation until then
        self.fails = 0  # failures counted toward max_fails
        self.fails_since = 0.0  # start of the fail_timeout window they fall in
        self.active = 0  # requests in flight
        self.requests = 0
        self.failures = 0
        self.connects = 0
        self.last_error = ""
        self.last_error_at = 0.0  # wall clock, for the console
        self.idle: list[UpstreamConnection] = []
        self.stats: TrafficStats | None = None  # set by the core's accounting when it is on
        self.family = socket.AF_INET
        # as getaddrinfo types it; for a TCP stream over IPv4 or IPv6, one of the first two
        self.sockaddr: tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes] | None = None
        self.resolve()

    def resolve(self) -> None:
        """Look the address up once (at configure time, never per request: it may block)."""
        host = "127.0.0.1" if self.host == "localhost" else self.host
        try:
            info = socket.getaddrinfo(host, self.port, type=socket.SOCK_STREAM)[0]
        except (OSError, UnicodeError) as exc:
            self.sockaddr = None
            self.last_error = f"cannot resolve {self.host}: {exc}"
            return
        self.family = info[0]
        self.sockaddr = info[4]

    # --- connections ------------------------------------------------------------------------
    def acquire(self) -> UpstreamConnection | None:
        """The most recently parked idle connection, if any."""
        idle = self.idle
        return idle.pop() if idle else None

    def connect(self, handler: UpstreamHandler) -> UpstreamConnection:
        """A fresh connection (connecting); raises OSError if it fails at once."""
        kind = UpstreamConnection if self.tls is None else TlsUpstreamConnection
        conn = kind.open(self.loop, self, handler)
        self.connects += 1
        if not conn.connecting:
            self.connected()  # at once (rare even on loopback): no on_connect will follow
        return conn

    def park(self, conn: UpstreamConnection) -> None:
        """Keep a connection whose exchange ended cleanly, or close it if there is no room."""
        if self.draining or len(self.idle) >= IDLE_PER_UPSTREAM or conn.closed:
            conn.handler = NO_HANDLER
            conn.close()
            return
        conn.reused = True
        conn.handler = conn
        conn.timer.reset(self.loop.now + IDLE_TIMEOUT)
        self.idle.append(conn)
        if conn.read_paused:
            conn.resume_reading()  # anything that arrived meanwhile closes it

    def forget(self, conn: UpstreamConnection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def close_idle(self) -> None:
        for conn in self.idle[:]:
            conn.close()

    # --- health -----------------------------------------------------------------------------
    def available(self, now: float) -> bool:
        return not self.draining and self.down_until <= now

    @property
    def status(self) -> str:
        """draining; down from the moment passive health takes it out until a response
        succeeds (also while it is being tried again after fail_timeout); else up."""
        if self.draining:
            return DRAINING
        return DOWN if self.down_until else UP

    def connected(self) -> None:
        if self.bus.active:
            self.bus.publish(UpstreamConnected(time.time(), self.addr))

    def failed(self, error: str, max_fails: int, fail_timeout: float) -> None:
        """A connect, read or protocol failure; `max_fails` of them within `fail_timeout`
        take the upstream out of rotation for `fail_timeout` seconds (0 never does)."""
        now = self.loop.now
        self.failures += 1
        self.last_error = error
        self.last_error_at = time.time()
        bus = self.bus
        if bus.active:
            bus.publish(UpstreamFailed(self.last_error_at, self.addr, error))
        if max_fails <= 0:
            return
        if self.down_until == 0.0 and now - self.fails_since > fail_timeout:
            self.fails = 0  # the window passed: count afresh
            self.fails_since = now
        self.fails += 1
        if self.fails >= max_fails:
            # Down for fail_timeout; a failed retry after a down period keeps it down.
            was_up = not self.down_until
            self.down_until = now + fail_timeout
            if was_up:
                log.warning("upstream %s is down for %gs: %s", self.addr, fail_timeout, error)
                self._health_changed()

    def succeeded(self) -> None:
        """A response head arrived: the upstream counts as healthy again."""
        self.fails = 0
        if self.down_until:
            self.down_until = 0.0
            log.info("upstream %s is up", self.addr)
            self._health_changed()

    def _health_changed(self) -> None:
        if self.bus.active:
            self.bus.publish(UpstreamHealthChanged(time.time(), self.addr, self.status))

    # --- operator ---------------------------------------------------------------------------
    def drain(self) -> None:
        """No new requests; those in flight finish, then their connections close."""
        if not self.draining:
            self.draining = True
            self.close_idle()
            self._health_changed()

    def enable(self) -> None:
        """Back in rotation, whether it was drained or marked down."""
        changed = self.draining or bool(self.down_until)
        self.draining = False
        self.down_until = 0.0
        self.fails = 0
        if changed:
            self._health_changed()

    def snapshot(self) -> dict[str, Any]:
        now = self.loop.now
        return {
            "addr": self.addr,
            "state": self.status,
            "active": self.active,
            "idle": len(self.idle),
            "requests": self.requests,
            "failures": self.failures,
            "fails": self.fails,
            "down_for": round(max(0.0, self.down_until - now), 3),
            "connects": self.connects,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            **(self.stats.summary(now) if self.stats is not None else {}),
        }


class UpstreamRegistry(dict[str, UpstreamState]):
    """Every upstream address of the running config, by "host:port"; `balancer_for` makes a
    reverse_proxy route's balancer over them."""

    def __init__(self, loop: Loop, bus: EventBus) -> None:
        super().__init__()
        self.loop = loop
        self.bus = bus

    def configure(self, config: Config) -> None:
        """Match the states to `config`; states of addresses kept keep their counters, health
        and drain flag; those of addresses gone lose their idle connections."""
        seen: dict[str, UpstreamState] = {}
        for server in config.servers:
            for route in server.routes:
                for upstream in route.upstreams if route.type == "reverse_proxy" else ():
                    key = upstream_key(upstream.host, upstream.port, upstream.tls)
                    state = seen.get(key) or self.get(key)
                    if state is None:
                        state = UpstreamState(self.loop, self.bus, upstream.host, upstream.port)
                    elif key not in seen:
                        state.resolve()
                    if upstream.tls and key not in seen:
                        state.tls = _client_context(key, route)
                    seen[key] = state
        for key, state in self.items():
            if key not in seen:
                state.draining = True  # requests in flight finish; nothing is pooled again
                state.close_idle()
        self.clear()
        self.update(seen)

    def balancer_for(self, route: Route) -> Balancer:
        """A balancer over the states of `route`'s upstreams (added if the registry lacks one)."""
        peers = []
        for upstream in route.upstreams:
            key = upstream_key(upstream.host, upstream.port, upstream.tls)
            state = self.get(key)
            if state is None:
                tls = _client_context(key, route) if upstream.tls else None
                state = self[key] = UpstreamState(
                    self.loop, self.bus, upstream.host, upstream.port, tls
                )
            peers.append((state, upstream.weight))
        return Balancer(peers, route.lb_method)

    def lookup(self, addr: str) -> UpstreamState:
        state = self.get(addr)
        if state is None:
            raise KeyError(f"no upstream {addr!r}; known: {', '.join(self) or 'none'}")
        return state

    def drain(self, addr: str) -> dict[str, Any]:
        state = self.lookup(addr)
        state.drain()
        return state.snapshot()

    def enable(self, addr: str) -> dict[str, Any]:
        state = self.lookup(addr)
        state.enable()
        return state.snapshot()

    def snapshot(self) -> list[dict[str, Any]]:
        return [state.snapshot() for state in self.values()]

    def close(self) -> None:
        for state in self.values():
            state.close_idle()
