"""`redirect` routes: answer `http_status_code` with `Location: redirect_url`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xps_server.config import Route
    from xps_server.http.parser import Request
    from xps_server.server.session import Session


def serve_redirect(session: Session, request: Request, route: Route, path: str) -> None:
    location = b"Location: %s\r\n" % route.redirect_url.encode("latin-1", "replace")
    session.error(route.http_status_code, request.method == "HEAD", location)
