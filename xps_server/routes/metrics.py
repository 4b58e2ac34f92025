"""`metrics` routes: the server's figures as JSON, or as Prometheus text when asked."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from xps_server.http.writer import Response
from xps_server.routes.base import NoBodyProducer

if TYPE_CHECKING:
    from xps_server.config import Route
    from xps_server.http.parser import Request
    from xps_server.routes.base import RouteContext

ALLOW_FIELD = b"Allow: GET, HEAD\r\n"
_JSON_FIELDS = b"Content-Type: application/json\r\nCache-Control: no-store\r\n"
_TEXT_FIELDS = b"Content-Type: text/plain\r\nCache-Control: no-store\r\n"


def wants_prometheus(request: Request) -> bool:
    """`?format=prometheus`, or an Accept header asking for text (as Prometheus does)."""
    if request.query:
        for name, value in parse_qsl(request.query):
            if name == "format":
                return value.lower() in ("prometheus", "text")
    accept = request.headers.get("accept", "").lower()
    return ("text/plain" in accept or "openmetrics" in accept) and "application/json" not in accept


def serve_metrics(ctx: RouteContext, request: Request, route: Route, path: str) -> Response | None:
    method = request.method
    if method != "GET" and method != "HEAD":
        return ctx.core.writer.error(405, ALLOW_FIELD)
    as_prometheus = wants_prometheus(request)
    fleet = FleetAnswer(ctx, as_prometheus)
    if ctx.core.fleet_metrics(as_prometheus, fleet.answer):
        # A worker: the answer comes (never within this call) once the master has every
        # worker's figures.
        ctx.stream(fleet)
        return None
    body, fields = own_figures(ctx, as_prometheus)
    return Response(200, fields, body, len(body))


def own_figures(ctx: RouteContext, as_prometheus: bool) -> tuple[bytes, bytes]:
    """This process's figures: the body and its header fields."""
    if as_prometheus:
        return ctx.core.metrics_prometheus().encode(), _TEXT_FIELDS
    return json.dumps(ctx.core.metrics_snapshot(), indent=1).encode() + b"\n", _JSON_FIELDS


class FleetAnswer(NoBodyProducer):
    """A worker's metrics request, answered once the master sends the fleet's figures."""

    def __init__(self, ctx: RouteContext, as_prometheus: bool) -> None:
        self.ctx: RouteContext | None = ctx
        self.as_prometheus = as_prometheus
        self.sent = False

    def answer(self, body: bytes | None) -> None:
        ctx = self.ctx
        if ctx is None:
            return  # the client left meanwhile
        self.ctx = None
        if body is None:
            body, fields = own_figures(ctx, self.as_prometheus)
        else:
            fields = _TEXT_FIELDS if self.as_prometheus else _JSON_FIELDS
        self.sent = True
        ctx.stream_done(200, ctx.send_response(Response(200, fields, body, len(body))))

    # --- the producer protocol (a metrics request's body, if any, is not read) -------------
    def resume(self) -> None:
        pass

    def abort(self) -> None:
        self.ctx = None

    def responded(self) -> bool:
        return self.sent
