"""The core: the container that owns the loop, listeners, sessions and the running config.

It wires accepted connections to sessions, applies a new config on reload (binding new
listeners before letting go of old ones, so a bad reload changes nothing), and runs the
graceful shutdown.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from xps_server.config import Config, ConfigError, Tls, load_config
from xps_server.core.loop import Loop
from xps_server.disk.file import FileCache
from xps_server.disk.gzip import GzipCache
from xps_server.events import (
    AclDenied,
    ConfigReloaded,
    ConnectionClosed,
    ConnectionOpened,
    EventBus,
    RequestFinished,
    TlsError,
)
from xps_server.http.writer import ResponseWriter
from xps_server.network.connection import Connection, Peer
from xps_server.network.listener import Listener
from xps_server.network.tls import TlsConnection, TlsEndpoint, TlsSetupError, server_context
from xps_server.network.upstream import UpstreamRegistry, upstream_key
from xps_server.routes.base import RouteHandler
from xps_server.server.accesslog import AccessLog
from xps_server.server.accounting import Accounting
from xps_server.server.fleetlink import FleetLink
from xps_server.server.limiting import Limiting
from xps_server.server.metrics import Stats, prometheus, snapshot
from xps_server.server.routing import RouteState, Routing, ServerView
from xps_server.server.runtime import Runtime
from xps_server.server.session import Session
from xps_server.toptalkers import TopTalkers

if TYPE_CHECKING:
    from ssl import SSLContext

    from xps_server.config import Fleet

log = logging.getLogger("xps.core")


class Core:
    """Everything one running server holds."""

    def __init__(
        self,
        config: Config,
        handlers: Mapping[str, RouteHandler],
        loop: Loop | None = None,
        state: dict[str, Any] | None = None,
        first_session: int = 1,
    ) -> None:
        """`handlers`: what answers each route type (`xps_server.routes.HANDLERS`). A worker
        process passes `state`, the runtime state its master owns (the state file is the
        master's), and `first_session`, so session ids are unique across the workers."""
        self.config = config
        self.loop = loop or Loop()
        self.writer = ResponseWriter(config.server_name)
        self.files = FileCache()
        self.stats = Stats()
        self.gzip_cache = GzipCache()
        self.bus = EventBus(self.loop)
        # Upstream health, pools and balancers, by "host:port"; shared by routes naming it.
        self.upstreams = UpstreamRegistry(self.loop, self.bus)
        # Per-route and per-upstream figures, and the top talkers; `top` is the tracker, kept
        # here too because every request records into it.
        self.accounting = Accounting(self.loop, self.bus)
        self.top: TopTalkers | None = None
        # Rate and connection limits per route, and the automatic blocks.
        self.limiting = Limiting(self)
        self.routing = self._configure(config)
        self.listeners: dict[tuple[str, int], Listener[ServerView]] = {}
        self.sessions: dict[int, Session] = {}
        # Sessions with nothing in progress (fresh, or idle keep-alive), oldest idle first: at
        # max_connections the oldest is closed to make room, as nginx reuses connections.
        self.idle: dict[int, Session] = {}
        # Open sessions by client address as accept() gave it: what a global block closes.
        self.sessions_by_ip: dict[str, dict[int, Session]] = {}
        self.draining = False
        # In a worker process: how the metrics route asks the master for the fleet's figures.
        self.fleet: Callable[[bool, Callable[[bytes | None], None]], None] | None = None
        self.route_handlers = handlers
        self._next_session_id = first_session - 1
        self.access_log = AccessLog(config.access_log, self.loop) if config.access_log else None
        # Operator changes (blocks, gzip toggles, drains) from the state file, over the config.
        self.runtime = Runtime(self, state)
        self.runtime.attach(config, self.routing)
        # The link to the fleet's Redis (config `fleet`); its thread starts here.
        self.fleet_link: FleetLink | None = None
        self.link_fleet(config.fleet)

    # --- listeners --------------------------------------------------------------------------
    def start(self, sockets: Mapping[tuple[str, int], socket.socket] | None = None) -> None:
        """Load the certificates and bind every listener of the config, or take the listening
        `sockets` given for them (a worker's, bound by its master); raises ConfigError (a
        certificate that cannot be used) or OSError (nothing left bound) on failure."""
        tls = self.tls_endpoints(self.config)
        self.listeners = self._bind(self.config, {}, sockets or {})
        self._serve(self.routing, tls)

    def link_fleet(self, settings: Fleet | None) -> None:
        """Share the runtime's changes with the fleet `settings` name (None: with nobody),
        replacing the link there was (its thread stops on its own). Whatever owns the runtime
        state links: a single server or a master, never a worker."""
        old = self.fleet_link
        if old is not None:
            old.close(wait=False)
        self.fleet_link = self.runtime.fleet = None
        if settings is not None:
            self.fleet_link = FleetLink(self.loop, self.bus, self.runtime, settings)
            self.runtime.fleet = self.fleet_link

    def _bind(
        self,
        config: Config,
        keep: dict[tuple[str, int], Listener[ServerView]],
        sockets: Mapping[tuple[str, int], socket.socket] | None = None,
    ) -> dict[tuple[str, int], Listener[ServerView]]:
        """Listeners for `config`, reusing those in `keep` or taking the sockets given; on
        failure closes what it opened and leaves those in `keep` serving what they served."""
        bound: dict[tuple[str, int], Listener[ServerView]] = {}
        given = sockets or {}
        try:
            for key in config.listeners():
                listener = keep.get(key)
                if listener is None:
                    listener = Listener(self.loop, key[0], key[1], self._on_accept, given.get(key))
                bound[key] = listener
        except OSError:
            for key, listener in bound.items():
                if key not in keep:
                    listener.close()
            raise
        return bound

    def _serve(self, routing: Routing, tls: dict[tuple[str, int], TlsEndpoint]) -> None:
        """Each listener answers with the views of the servers that share it, and its
        certificates on a TLS port."""
        for key, views in routing.listeners(self.config).items():
            listener = self.listeners[key]
            listener.servers = views
            listener.tls = tls.get(key)

    def tls_endpoints(self, config: Config) -> dict[tuple[str, int], TlsEndpoint]:
        """The certificates of each TLS listener of `config`, loaded now (before anything
        changes, so a certificate that cannot be used leaves the running ones in service)."""
        contexts: dict[tuple[str, str, str], SSLContext | None] = {}
        problems: list[str] = []

        def load(tls: Tls) -> SSLContext | None:
            try:
                return server_context(tls.cert, tls.key, tls.min_version)
            except TlsSetupError as exc:
                problems.append(f"tls: {exc}")
                return None

        endpoints: dict[tuple[str, int], TlsEndpoint] = {}
        timeout = config.timeouts.tls_handshake
        for key, servers in config.listener_tls().items():
            # Its own default context per listener: that context's SNI callback is the
            # listener's. Those SNI switches to are shared, each loaded once.
            first = servers[0][1]
            default = load(first)
            by_name: dict[str, SSLContext | None] = {}
            for server, listener_tls in servers:
                tls = server.tls or listener_tls
                if tls == first:
                    context = default
                else:
                    cache_key = (tls.cert, tls.key, tls.min_version)
                    if cache_key not in contexts:
                        contexts[cache_key] = load(tls)
                    context = contexts[cache_key]
                for name in server.hostnames:
                    by_name.setdefault(name, context)
            usable = {name: ctx for name, ctx in by_name.items() if ctx is not None}
            if default is not None and len(usable) == len(by_name):
                endpoints[key] = TlsEndpoint(default, usable, timeout)
        if problems:
            raise ConfigError(list(dict.fromkeys(problems)))  # a file named twice: once
        return endpoints

    def tls_ready(self, conn: TlsConnection) -> None:
        """A handshake completed: the request head is due within client_header from now."""
        session = conn.handler
        assert isinstance(session, Session)  # from accept to close
        session.timer.reset(self.loop.now + self.config.timeouts.client_header)

    def tls_failed(self, conn: TlsConnection, reason: str) -> None:
        """A handshake failed or timed out, or a record was broken: counted and told."""
        self.stats.tls_errors += 1
        log.debug("TLS with %s:%d failed: %s", conn.peer_ip, conn.peer_port, reason)
        bus = self.bus
        if bus.active:
            session = conn.handler
            assert isinstance(session, Session)  # reported before the connection closes
            bus.publish(TlsError(time.time(), session.id, conn.peer_ip, reason))

    def _configure(self, config: Config) -> Routing:
        """The routes of `config` with the state the server keeps for them: the upstreams and
        each proxy route's balancer, and the traffic figures (the runtime adds the access
        checks and the operator's gzip switches when it attaches)."""
        routing = Routing(config)
        upstreams = self.upstreams
        upstreams.configure(config)
        for state in routing.states.values():
            if state.type == "reverse_proxy":
                state.balancer = upstreams.balancer_for(state.route)
        self.accounting.configure(config, routing, upstreams)
        self.limiting.configure(config, routing)
        self.top = self.accounting.top
        return routing

    def _on_accept(self, listener: Listener[ServerView], sock: socket.socket, peer: Peer) -> None:
        stats = self.stats
        blocklist = self.runtime.blocklist
        blocked = blocklist.global_set
        if blocked is not None and blocked.contains_ip(peer[0]):
            stats.conn_blocked += 1
            sock.close()  # refused before a byte is read: the client sees only the close
            self.accounting.refused(peer[0], blocklist.hit(None, peer[0]))
            return
        if len(self.sessions) >= self.config.limits.max_connections or self.draining:
            if not self.idle or self.draining:
                stats.conn_error += 1
                sock.close()
                return
            stats.conn_reclaimed += 1
            next(iter(self.idle.values())).conn.close()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stats.conn_accepted += 1
        stats.conn_current += 1
        self._next_session_id += 1
        tls = listener.tls
        if tls is None:
            conn = Connection(self.loop, sock, peer)
            session = Session(self, listener, conn, self._next_session_id)
        else:
            conn = TlsConnection(self.loop, sock, peer, tls, self)
            session = Session(self, listener, conn, self._next_session_id)
            session.timer.cancel()  # the handshake has its own deadline; the head's follows it
        self.sessions[session.id] = session
        same_ip = self.sessions_by_ip.get(conn.peer_ip)
        if same_ip is None:
            same_ip = self.sessions_by_ip[conn.peer_ip] = {}
        same_ip[session.id] = session
        conn.start(session)
        bus = self.bus
        if bus.traffic:
            bus.publish_traffic(
                ConnectionOpened(
                    time.time(), session.id, peer[0], peer[1], f"{listener.host}:{listener.port}"
                )
            )
        elif bus.active:
            bus.skipped += 1  # every subscriber is at its max_rate

    def session_closed(self, session: Session) -> None:
        self.idle.pop(session.id, None)
        if self.sessions.pop(session.id, None) is not None:
            stats = self.stats
            stats.conn_current -= 1
            if session.limits_counted is not None:
                self.limiting.close_session(session)
            conn = session.conn
            same_ip = self.sessions_by_ip[conn.peer_ip]
            del same_ip[session.id]
            if not same_ip:
                del self.sessions_by_ip[conn.peer_ip]
            stats.traffic_recv_bytes += conn.bytes_in
            stats.traffic_send_bytes += conn.bytes_out
            bus = self.bus
            if bus.traffic:
                bus.publish_traffic(
                    ConnectionClosed(
                        time.time(),
                        session.id,
                        conn.peer_ip,
                        conn.bytes_in,
                        conn.bytes_out,
                        session.requests,
                        round((self.loop.now - session.opened) * 1000, 3),
                    )
                )
            elif bus.active:
                bus.skipped += 1
        if self.draining and not self.sessions:
            self.loop.stop()

    def request_done(self, session: Session, status: int, body_bytes: int) -> None:
        """A response is fully queued: account for it."""
        stats = self.stats
        stats.req_current -= 1
        now = self.loop.now
        elapsed = now - session.started
        stats.record_response(status, elapsed)
        route_state = session.route_state
        if route_state is not None:
            route_stats = route_state.stats  # None when histograms are off
            if route_stats is not None:
                route_stats.record(status, elapsed)
        if status >= 400 and self.limiting.watch_status:
            self.limiting.status(session, status)
        if self.top is not None:
            # Counted on the session (its requests it counts anyway); the accounting reports
            # them to the tracker once a second.
            if status >= 400:
                if status >= 500:
                    session.top_5xx += 1
                else:
                    session.top_4xx += 1
            if not session.top_pending:
                session.top_pending = True
                self.accounting.pending.append(session)
        request = session.request
        session.last_status = status
        session.last_bytes = body_bytes
        session.last_elapsed = elapsed
        session.last_done = now
        access_log = self.access_log
        if access_log is not None:
            access_log.log(session, status, body_bytes)
        bus = self.bus
        if bus.traffic:
            bus.publish_traffic(
                RequestFinished(
                    time.time(),
                    session.id,
                    session.conn.peer_ip,
                    request.method if request is not None else "-",
                    request.target if request is not None else "-",
                    session.route,
                    status,
                    body_bytes,
                    round(elapsed * 1000, 3),
                )
            )
        elif bus.active:
            bus.skipped += 1

    def deny(self, session: Session, route: RouteState, path: str) -> None:
        """403 for a client the route's ACL or a runtime block refuses."""
        self.stats.acl_denied += 1
        ip = session.conn.peer_ip
        access = route.access
        assert access is not None
        reason = access.reason(ip)
        if reason == "blocked":
            # A runtime block: counted against its entry and the client's refusals.
            self.runtime.blocklist.hit(access.scope, ip)
            session.top_refused += 1  # told to the tracker with the session's requests
        if self.bus.active:
            self.bus.publish(AclDenied(time.time(), ip, route.req_path, path, reason))
        session.error(403)

    # --- operator views -----------------------------------------------------------------------
    def routes_snapshot(self) -> list[dict[str, Any]]:
        """Every route of every server, with what the console shows and toggles."""
        rows = []
        now = self.loop.now
        for index, view in enumerate(self.routing.views):
            for state in view.route_map.values():
                route = state.route
                rows.append(
                    {
                        "key": state.key,
                        "server": index,
                        "hostnames": list(view.hostnames),
                        "req_path": route.req_path,
                        "type": route.type,
                        "gzip": state.gzip_enable,
                        "ip_whitelist": list(route.ip_whitelist),
                        "ip_blacklist": list(route.ip_blacklist),
                        "upstreams": [upstream_key(u.host, u.port, u.tls) for u in route.upstreams],
                        **(state.stats.summary(now) if state.stats is not None else {}),
                    }
                )
        return rows

    def upstreams_snapshot(self) -> list[dict[str, Any]]:
        """Every upstream address: state (up, down, draining), requests in flight, counters."""
        return self.upstreams.snapshot()

    def drain_upstream(self, addr: str) -> dict[str, Any]:
        """Take `host:port` out of rotation; requests in flight finish. KeyError if unknown.
        Kept in state_file: a drain survives reloads and restarts."""
        return self.runtime.drain_upstream(addr)

    def enable_upstream(self, addr: str) -> dict[str, Any]:
        """Put `host:port` back in rotation (undoes a drain or a passive-health down)."""
        return self.runtime.enable_upstream(addr)

    def acl_snapshot(self) -> dict[str, Any]:
        """The runtime block list and each route's config lists."""
        return {"blocks": self.runtime.blocks(), "routes": self.runtime.acl_routes()}

    def metrics_snapshot(self) -> dict[str, Any]:
        """What a `metrics` route answers, as a dict."""
        return snapshot(self)

    def metrics_prometheus(self) -> str:
        """The same figures, and the latency histograms, as Prometheus text."""
        return prometheus(snapshot(self), self)

    def fleet_metrics(self, as_prometheus: bool, answer: Callable[[bytes | None], None]) -> bool:
        """In a worker process: ask the master for the figures of every worker, JSON or
        Prometheus text; `answer` gets the body later (None: the master could not answer).
        False, and nothing asked, in a server of one process."""
        if self.fleet is None:
            return False
        self.fleet(as_prometheus, answer)
        return True

    # --- operator functions (loop thread; JSON-able results, ValueError for bad input) -------
    def block(
        self, cidr: str, route: str | None = None, seconds: float | None = None
    ) -> dict[str, Any]:
        """Block an address or CIDR globally (refused at accept, its open connections closed)
        or on one route (403 there, its tunnels there closed), for `seconds` or until
        unblocked; kept in state_file."""
        return self.runtime.block(cidr, route, seconds)

    def unblock(self, cidr: str, route: str | None = None) -> dict[str, Any]:
        return self.runtime.unblock(cidr, route)

    def blocks(self) -> list[dict[str, Any]]:
        return self.runtime.blocks()

    def set_gzip(self, route: str, enabled: bool | None) -> dict[str, Any]:
        """Turn gzip on or off for a route (named as `route_key` does); None reverts to the
        config file's setting. Kept in state_file."""
        return self.runtime.set_gzip(route, enabled)

    # --- reload -----------------------------------------------------------------------------
    def reload(self) -> tuple[bool, str]:
        """Re-read the config file; on any problem keep serving the old one and say why."""
        path = self.config.path
        try:
            config = load_config(path)
            self.apply(config)
        except ConfigError as exc:
            ok, message = False, f"reload of {path} rejected, keeping the running config:\n{exc}"
        except OSError as exc:
            ok, message = False, f"reload of {path} rejected, cannot bind: {exc}"
        else:
            ok, message = True, f"configuration reloaded from {path}"
        log.log(logging.INFO if ok else logging.ERROR, "%s", message)
        if self.bus.active:
            self.bus.publish(ConfigReloaded(time.time(), ok, message))
        return ok, message

    def apply(self, config: Config) -> None:
        """Switch to `config`: certificates loaded and new listeners bound first, then old
        ones closed. Established TLS connections keep the certificate they began with."""
        tls = self.tls_endpoints(config)
        bound = self._bind(config, self.listeners)
        for key, listener in self.listeners.items():
            if key not in bound:
                listener.close()
        self.listeners = bound
        self.reconfigure(config)
        self._serve(self.routing, tls)

    def reconfigure(self, config: Config) -> None:
        """Switch to `config` but for the listeners (`apply` binds them; a master has none)."""
        old_fleet = self.config.fleet
        self.config = config
        self.writer = ResponseWriter(config.server_name)
        self.files.clear()
        self.routing = self._configure(config)
        self.runtime.attach(config, self.routing)
        if config.fleet != old_fleet:
            self.link_fleet(config.fleet)
        old_log = self.access_log
        if config.access_log != (old_log.path if old_log is not None else None):
            if old_log is not None:
                old_log.close(wait=False)
            self.access_log = AccessLog(config.access_log, self.loop) if config.access_log else None

    # --- shutdown ---------------------------------------------------------------------------
    def shutdown(self, grace: float) -> None:
        """Stop accepting, let in-flight responses finish within `grace` seconds, then stop."""
        if self.draining:
            return
        self.draining = True
        for listener in self.listeners.values():
            listener.close()
        self.listeners = {}
        for session in list(self.sessions.values()):
            session.drain()
        if not self.sessions:
            self.loop.stop()
            return
        self.loop.call_later(grace, self._force_stop)

    def _force_stop(self) -> None:
        for session in list(self.sessions.values()):
            session.conn.close()
        self.loop.stop()

    def close(self) -> None:
        """Release every descriptor (after the loop has stopped)."""
        for listener in self.listeners.values():
            listener.close()
        self.listeners = {}
        for session in list(self.sessions.values()):
            session.conn.close()
        if self.access_log is not None:
            self.access_log.close()
        if self.fleet_link is not None:
            self.fleet_link.close()  # it posts to the loop: stopped before the loop closes
        self.runtime.close()
        self.accounting.close()
        self.upstreams.close()
        self.loop.close()
