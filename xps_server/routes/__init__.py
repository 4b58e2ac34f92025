"""Route handlers: what each route type does with a request (see `base` for the contract).

`HANDLERS` is the table the server container is built with, by route type.
"""

from __future__ import annotations

from xps_server.routes.base import RouteHandler
from xps_server.routes.metrics import serve_metrics
from xps_server.routes.proxy import serve_proxy
from xps_server.routes.redirect import serve_redirect
from xps_server.routes.static import serve_file

HANDLERS: dict[str, RouteHandler] = {
    "file_serve": serve_file,
    "redirect": serve_redirect,
    "reverse_proxy": serve_proxy,
    "metrics": serve_metrics,
}
