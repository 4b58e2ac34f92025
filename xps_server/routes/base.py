"""What a route handler is, and the narrow view of the server it gets.

A handler is called with the request's context, the request, its route and the decoded path.
It answers by returning a `Response` (a whole answer: the session writes and frames it), or by
streaming: it registers itself as the session's producer (`ctx.stream`), sends the head when
it knows it (`ctx.start_body`, which gives the `BodyStream` to write into) and says when it is
done (`ctx.stream_done`, or `ctx.stream_failed` before any byte went out); it then returns
None. Handlers see the server only through the two protocols below, so this package imports
nothing of `xps_server.server`: the container is handed the table of handlers when it is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from xps_server.config import Config, Route
    from xps_server.core.loop import Loop
    from xps_server.disk.file import FileCache
    from xps_server.disk.gzip import GzipCache
    from xps_server.events import EventBus
    from xps_server.http.parser import Request
    from xps_server.http.writer import Response, ResponseWriter
    from xps_server.network.balancer import Balancer
    from xps_server.network.connection import Connection
    from xps_server.network.output import BodyStream
    from xps_server.network.upstream import UpstreamRegistry
    from xps_server.routes.tunnel import Tunnel


class Counters(Protocol):
    conn_timeout: int
    gzip_responses: int
    tunnels_current: int
    tunnels_total: int


class Services(Protocol):
    """The shared things of the running server a handler may use."""

    loop: Loop
    bus: EventBus
    config: Config
    files: FileCache
    gzip_cache: GzipCache
    upstreams: UpstreamRegistry
    writer: ResponseWriter

    @property
    def stats(self) -> Counters: ...  # read-only here, so the core's own `Stats` satisfies it
    def metrics_snapshot(self) -> dict[str, Any]: ...
    def metrics_prometheus(self) -> str: ...
    def fleet_metrics(
        self, as_prometheus: bool, answer: Callable[[bytes | None], None]
    ) -> bool: ...


class Producer(Protocol):
    """A streamed response (the proxy, a file being compressed): takes the request's body as
    it arrives, fills the client pipe as it can."""

    def on_body(self, data: bytes) -> None: ...
    def on_body_end(self) -> None: ...
    def body_full(self) -> bool: ...
    def resume(self) -> None: ...  # the client pipe drained below its threshold
    def abort(self) -> None: ...  # the client went away: release everything
    def responded(self) -> bool: ...  # the final response head went out to the client


class NoBodyProducer:
    """The request-body half of a `Producer` whose request has no body to take (a GET): a body
    that arrives anyway is not read."""

    __slots__ = ()

    def on_body(self, data: bytes) -> None:
        pass

    def on_body_end(self) -> None:
        pass

    def body_full(self) -> bool:
        return False


class RouteSwitches(Protocol):
    """What the server keeps beside the request's route and a handler reads: the operator's
    gzip switch (the config's `gzip_enable` until switched) and a proxy route's balancer."""

    gzip_enable: bool
    balancer: Balancer | None


class RouteContext(Protocol):
    """One client connection's view, as a handler sees it (the session implements it). What
    a handler only reads is a property here, so the session's narrower types (its `Core`,
    its `RouteState`) satisfy it."""

    close_after: bool
    upstream: str  # the upstream the latest proxied request used, for the operator

    @property
    def id(self) -> int: ...
    @property
    def core(self) -> Services: ...
    @property
    def conn(self) -> Connection: ...
    @property
    def route_state(self) -> RouteSwitches | None: ...  # set before the handler runs

    def stream(self, producer: Producer) -> None: ...
    def send_response(self, response: Response) -> int: ...  # a streamed request's whole answer
    def start_body(
        self, response: Response, gzip_level: int | None = None, collect: bool = False
    ) -> BodyStream | None: ...
    def stream_done(self, status: int, body_bytes: int) -> None: ...
    def stream_failed(self, status: int) -> None: ...
    def resume_body(self) -> None: ...
    def arm_timer(self) -> None: ...
    # Protocol upgrades (routes.tunnel): the request asked for one; the upstream agreed (the
    # connection is the tunnel's, and the bytes the client sent past the request come back);
    # the tunnel closed the connection.
    def expect_upgrade(self) -> None: ...
    def switch_protocols(self, tunnel: Tunnel) -> bytes: ...
    def tunnel_closed(self) -> None: ...


class RouteHandler(Protocol):
    def __call__(
        self, ctx: RouteContext, request: Request, route: Route, path: str
    ) -> Response | None: ...
