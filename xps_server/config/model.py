"""The configuration data model: the typed, validated form of the JSON config (SPEC §2).

Instances come from :mod:`xps_server.config.load`. Everything here is plain data, plus the
route table that :func:`xps_server.config.routes.find_route` consults on every request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROUTE_TYPES = ("file_serve", "redirect", "reverse_proxy", "metrics")
LB_METHODS = ("round_robin", "least_conn", "ip_hash")
REDIRECT_CODES = (301, 302, 303, 307, 308)
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
REDIRECT_PLACEHOLDERS = ("{host}", "{uri}")
LIMIT_KEYS = ("ip", "ip/24")
AUTO_BLOCK_EVENTS = ("rate_limited", "status_4xx", "status_5xx")


@dataclass(slots=True)
class Timeouts:
    """Per-phase deadlines, in seconds."""

    client_header: float = 10.0
    client_body: float = 30.0
    keep_alive: float = 15.0
    send: float = 30.0
    upstream_connect: float = 5.0
    upstream_read: float = 30.0
    tunnel: float = 3600.0  # an upgraded connection (WebSocket) with no byte moving either way
    tls_handshake: float = 10.0


@dataclass(slots=True)
class Limits:
    """Size and count ceilings that protect the server from its clients."""

    max_header_bytes: int = 16384
    max_body_bytes: int = 10485760
    max_connections: int = 10000
    max_uri_bytes: int = 8192


@dataclass(slots=True)
class Tls:
    """A certificate chain and its key (absolute paths), and the oldest TLS version allowed."""

    cert: str
    key: str
    min_version: str = "TLSv1.2"


@dataclass(slots=True)
class Listener:
    """An address to bind: an IP literal (IPv6 without brackets) or a host name, and a port;
    with `tls`, clients there speak HTTPS."""

    host: str
    port: int
    tls: Tls | None = None


@dataclass(slots=True)
class Upstream:
    """One backend of a reverse_proxy route; `weight` biases round_robin."""

    host: str
    port: int
    weight: int = 1
    tls: bool = False  # an https:// upstream


@dataclass(slots=True)
class LimitReq:
    """A route's `limit_req`: nginx's leaky bucket (requests per second, burst without delay),
    one bucket per client address ("ip") or per IPv4 /24 / IPv6 /64 ("ip/24")."""

    rate: float
    burst: int = 0
    key: str = "ip"


@dataclass(slots=True)
class LimitConn:
    """A route's `limit_conn`: connections per client address that have sent it a request."""

    per_ip: int


@dataclass(slots=True)
class AutoBlockRule:
    """An `auto_block` rule: `count` events of kind `when` from one client within `window`
    seconds (on the route keyed `route`, or any) block that client globally for `block` s."""

    when: str
    count: int
    window: float
    block: float
    route: str | None = None  # a route key, as `route_key` makes it

    @property
    def reason(self) -> str:
        """What a block made by this rule records, e.g. "auto: rate_limited 100/10s"."""
        where = "" if self.route is None else f" on {self.route}"
        return f"auto: {self.when} {self.count}/{self.window:g}s{where}"


@dataclass(slots=True)
class Route:
    """One `req_path` prefix and what to do with it.

    All types share this one class; fields that do not apply to `type` keep their defaults.
    """

    req_path: str
    type: str
    # file_serve
    dir_path: str = ""
    index: list[str] = field(default_factory=lambda: ["index.html"])
    dir_listing: bool = True
    # redirect
    http_status_code: int = 0
    redirect_url: str = ""
    # reverse_proxy
    upstreams: list[Upstream] = field(default_factory=list)
    lb_method: str = "round_robin"
    max_fails: int = 1
    fail_timeout: float = 10.0
    upstream_connect_timeout: float | None = None  # None: use Timeouts.upstream_connect
    upstream_read_timeout: float | None = None  # None: use Timeouts.upstream_read
    ca_file: str | None = None  # https upstreams: verify against this, not the system store
    tls_verify: bool = True
    # every type
    gzip_enable: bool = False
    gzip_level: int = 6
    gzip_mime_types: list[str] = field(default_factory=list)
    ip_whitelist: list[str] = field(default_factory=list)
    ip_blacklist: list[str] = field(default_factory=list)
    limit_req: LimitReq | None = None
    limit_conn: LimitConn | None = None


@dataclass(slots=True)
class Server:
    """A virtual server: where it listens, which Host names it answers, and its routes."""

    listeners: list[Listener]
    hostnames: list[str] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    tls: Tls | None = None  # this server's certificate on its TLS listeners, chosen by SNI
    # Built from `routes` so that lookup is a few dict probes rather than a scan per request.
    route_map: dict[str, Route] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.route_map = {route.req_path: route for route in self.routes}


@dataclass(slots=True)
class Fleet:
    """One block list for many instances: where the fleet's Redis is, this instance's name in
    it (unique in the fleet), and the prefix of the fleet's keys and channel."""

    redis: str
    name: str
    prefix: str = "xps"


@dataclass(slots=True)
class Config:
    """The whole configuration; `path` is the absolute config file path, or "" if none."""

    path: str = ""
    server_name: str = "eXpServer"
    workers: int = 1
    top_clients: int = 1000  # capacity of the top-talker tracker per time slot; 0: off
    histograms: bool = True  # per-route and per-upstream latency histograms
    access_log: str | None = None  # absolute path, "-" for stdout, None for no access log
    state_file: str | None = None
    control_socket: str | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    servers: list[Server] = field(default_factory=list)
    fleet: Fleet | None = None  # None: this instance shares nothing
    auto_block: list[AutoBlockRule] = field(default_factory=list)
    allowlist: list[str] = field(default_factory=list)  # CIDRs never blocked automatically

    def listeners(self) -> dict[tuple[str, int], list[Server]]:
        """Each distinct (host, port) to bind, with the servers sharing it in config order."""
        shared: dict[tuple[str, int], list[Server]] = {}
        for server in self.servers:
            for listener in server.listeners:
                on_it = shared.setdefault((listener.host, listener.port), [])
                # Identity, not ==: two servers may be equal field for field. A server that
                # names a listener twice would be last in the list already.
                if not on_it or on_it[-1] is not server:
                    on_it.append(server)
        return shared

    def listener_tls(self) -> dict[tuple[str, int], list[tuple[Server, Tls]]]:
        """Each TLS (host, port), with each server on it and the `tls` its listener entry
        names there, in config order (a server presents its own `tls` if it has one)."""
        found: dict[tuple[str, int], list[tuple[Server, Tls]]] = {}
        for server in self.servers:
            for listener in server.listeners:
                if listener.tls is not None:
                    on_it = found.setdefault((listener.host, listener.port), [])
                    if not on_it or on_it[-1][0] is not server:
                        on_it.append((server, listener.tls))
        return found
