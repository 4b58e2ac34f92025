"""The routes of the running config as the server uses them.

Config objects stay exactly as the loader made them. What the server keeps beside each route
— its access check (config lists plus runtime blocks), the operator's gzip switch, its
traffic figures, its rate and connection limits and, for a proxy, its upstream balancer —
lives in a `RouteState`, one per route key ("/api", "1:/api"). A `ServerView` is a config
server whose route table holds those states, so the request path finds a route and its state
in the same lookup (`find_server` and `find_route` search views as they would servers). A
reload builds a new `Routing`; what the operator changed is kept by route key and applied to
it again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xps_server.config.routes import route_key
from xps_server.policy.acl import compile_lists

if TYPE_CHECKING:
    from xps_server.config import Config, Route, Server
    from xps_server.network.balancer import Balancer
    from xps_server.policy.acl import Access
    from xps_server.server.limiting import RouteLimits
    from xps_server.traffic import TrafficStats


class RouteState:
    """One route of the running config and the server's state for it."""

    __slots__ = (
        "access",
        "balancer",
        "blacklist",
        "gzip_enable",
        "key",
        "limits",
        "req_path",
        "route",
        "stats",
        "type",
        "whitelist",
    )

    def __init__(self, route: Route, key: str) -> None:
        self.route = route
        self.key = key
        self.req_path = route.req_path
        self.type = route.type
        self.gzip_enable = route.gzip_enable  # the config's, unless the operator switched it
        # The config's ip lists, compiled once per config.
        self.whitelist, self.blacklist = compile_lists(route.ip_whitelist, route.ip_blacklist)
        # The ACL check (None: nothing restricts the route, the per-request fast path).
        self.access: Access | None = None
        self.stats: TrafficStats | None = None  # None when histograms are off
        self.balancer: Balancer | None = None  # reverse_proxy routes only
        self.limits: RouteLimits | None = None  # None: no limit_req nor limit_conn


class ServerView:
    """A config server with its routes' states: `hostnames` and `route_map` as `Server`'s."""

    __slots__ = ("hostnames", "route_map", "server")

    def __init__(self, server: Server, route_map: dict[str, RouteState]) -> None:
        self.server = server
        self.hostnames = server.hostnames
        self.route_map = route_map


class Routing:
    """Every route of one config, as states by key and as a view per server."""

    __slots__ = ("states", "views")

    def __init__(self, config: Config) -> None:
        self.states: dict[str, RouteState] = {}
        self.views: list[ServerView] = []
        for index, server in enumerate(config.servers):
            route_map = {}
            for route in server.routes:
                state = RouteState(route, route_key(index, route.req_path))
                self.states[state.key] = state
                route_map[route.req_path] = state
            self.views.append(ServerView(server, route_map))

    def listeners(self, config: Config) -> dict[tuple[str, int], list[ServerView]]:
        """Each distinct (host, port) to bind, with the views of the servers sharing it."""
        view_of = {id(view.server): view for view in self.views}
        return {
            address: [view_of[id(server)] for server in servers]
            for address, servers in config.listeners().items()
        }
