"""Per-request lookups: which server answers a Host header, and which route a path falls under.

Both run on every request, so they only probe precomputed data: `find_route` walks the path's
"/" boundaries from longest to shortest against a route map (req_path -> route, or -> what the
server keeps for it); `route_key` is how operators and the runtime name a route, and
`parse_route_name` reads such a name back.
"""

from __future__ import annotations

from typing import Protocol, TypeVar


class _Routes(Protocol):
    """What the lookups search: a config `Server`, or a server's runtime view of it."""

    @property
    def hostnames(self) -> list[str]: ...


_S = TypeVar("_S", bound=_Routes)
_R = TypeVar("_R")


def route_key(server_index: int, req_path: str) -> str:
    """How operators name a route: its req_path, prefixed by the server index past the first."""
    return req_path if server_index == 0 else f"{server_index}:{req_path}"


def parse_route_name(name: str) -> tuple[int, str]:
    """(server index, req_path) an operator's route name means: the inverse of `route_key`,
    tolerating a trailing "/" (as the config reads req_path)."""
    index = 0
    head, sep, rest = name.partition(":")
    if sep and head.isascii() and head.isdigit():
        index, name = int(head), rest
    if len(name) > 1 and name.endswith("/"):
        name = name[:-1]
    return index, name


def _bare_host(host: str) -> str:
    """A Host header reduced to the form configured hostnames are stored in.

    Drops the port and IPv6 brackets, lower-cases, and drops a trailing dot (``Example.COM.:80``
    and ``example.com`` name the same site).
    """
    name = host.strip().lower()
    if name.startswith("["):
        end = name.find("]")
        if end > 0:
            name = name[1:end]
    elif name.count(":") == 1:
        # More than one colon is a bare IPv6 literal, which has no port to strip.
        name = name.partition(":")[0]
    return name.removesuffix(".")


def find_server(servers: list[_S], host: str) -> _S:
    """The server among those sharing a listener that answers `host` (a Host header value).

    Order of preference: an exact hostname; the longest matching "*.suffix" wildcard; the first
    server that lists no hostnames (it answers any name, SPEC §2); the first server, as nginx's
    default_server.
    """
    name = _bare_host(host)
    wildcard: _S | None = None
    wildcard_len = 0
    catch_all: _S | None = None
    for server in servers:
        if not server.hostnames and catch_all is None:
            catch_all = server
        for pattern in server.hostnames:
            if pattern == name:
                return server
            # pattern[1:] is ".suffix": "*.example.com" takes "a.example.com", not "example.com".
            if (
                pattern.startswith("*.")
                and len(pattern) > wildcard_len
                and name.endswith(pattern[1:])
            ):
                wildcard, wildcard_len = server, len(pattern)
    return wildcard or catch_all or servers[0]


def find_route(route_map: dict[str, _R], path: str) -> _R | None:
    """The route with the longest `req_path` that is `path` or a "/"-bounded prefix of it.

    "/api" takes "/api", "/api/" and "/api/x" but never "/apix"; a "/" route takes anything.
    `path` should already be percent-decoded and normalised.
    """
    route = route_map.get(path)
    if route is not None:
        return route
    cut = path.rfind("/")
    while cut > 0:
        route = route_map.get(path[:cut])
        if route is not None:
            return route
        cut = path.rfind("/", 0, cut)
    return route_map.get("/")
