"""`redirect` routes: answer `http_status_code` with `Location: redirect_url`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xps_server.config import Route
    from xps_server.http.parser import Request
    from xps_server.http.writer import Response
    from xps_server.routes.base import RouteContext


def serve_redirect(ctx: RouteContext, request: Request, route: Route, path: str) -> Response:
    location = b"Location: %s\r\n" % route.redirect_url.encode("latin-1", "replace")
    return ctx.core.writer.error(route.http_status_code, location)
