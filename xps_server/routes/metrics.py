"""`metrics` routes: the server's figures as JSON, or as Prometheus text when asked."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from xps_server.http.writer import Response

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


def serve_metrics(ctx: RouteContext, request: Request, route: Route, path: str) -> Response:
    method = request.method
    if method != "GET" and method != "HEAD":
        return ctx.core.writer.error(405, ALLOW_FIELD)
    if wants_prometheus(request):
        body = ctx.core.metrics_prometheus().encode()
        fields = _TEXT_FIELDS
    else:
        body = json.dumps(ctx.core.metrics_snapshot(), indent=1).encode() + b"\n"
        fields = _JSON_FIELDS
    return Response(200, fields, body, len(body))
