"""`redirect` routes: answer `http_status_code` with `Location: redirect_url`.

`redirect_url` may hold `{host}` (the name the client asked for, without its port, as nginx's
`$host`) and `{uri}` (the request target as received, path and query, as `$request_uri`): the
usual HTTP → HTTPS redirect is `"https://{host}{uri}"`. Both come from the parsed request,
whose Host and target hold no byte that could break out of the header line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xps_server.config import Route
    from xps_server.http.parser import Request
    from xps_server.http.writer import Response
    from xps_server.routes.base import RouteContext


def serve_redirect(ctx: RouteContext, request: Request, route: Route, path: str) -> Response:
    url = route.redirect_url
    if "{" in url:
        target = request.target
        if target[:1] != "/":  # absolute-form: the path and query of it
            target = request.path + ("?" + request.query if request.query else "")
        url = url.replace("{host}", _host(ctx, request)).replace("{uri}", target)
    location = b"Location: %s\r\n" % url.encode("latin-1", "replace")
    return ctx.core.writer.error(route.http_status_code, location)


def _host(ctx: RouteContext, request: Request) -> str:
    """The Host without its port; an HTTP/1.0 request without one gets our address."""
    host = request.host
    if not host:
        local = ctx.conn.sock.getsockname()[0]
        return f"[{local}]" if ":" in local else local
    if host[0] == "[":
        return host[: host.find("]") + 1]
    return host.partition(":")[0]
