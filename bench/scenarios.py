"""The scenario registry: one entry per benchmark, the only place a new scenario is added.

A scenario says what to request, how to configure eXpServer (its routes) and nginx (its
``http``-level text: a ``server`` block plus anything it needs, such as an ``upstream``), and
the SPEC §6 budget: xps must reach ``budget`` times nginx on ``metric``.
"""

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

Route = dict[str, Any]


class Metric(Enum):
    """What a budget compares."""

    RPS = "req/s"
    BPS = "bytes/s"


@dataclass(frozen=True)
class Site:
    """What the config builders need to know about this run."""

    docroot: Path
    backend_port: int | None = None

    def backend(self) -> str:
        """``127.0.0.1:PORT`` of the shared proxy backend (only set for scenarios needing it)."""
        if self.backend_port is None:
            raise ValueError("this scenario has no backend")
        return f"127.0.0.1:{self.backend_port}"


@dataclass(frozen=True)
class Scenario:
    """One benchmark: a request, the two server configs, and the budget it is held to."""

    name: str
    description: str
    path: str
    xps_routes: Callable[[Site], list[Route]]
    nginx_http: Callable[[Site, int], str]
    budget: float
    metric: Metric
    body_file: str
    headers: tuple[str, ...] = ()
    content_encoding: str | None = None
    requires: tuple[str, ...] = ()
    needs_backend: bool = False


def xps_config(scenario: Scenario, site: Site, port: int) -> dict[str, Any]:
    """The full eXpServer config JSON for one scenario listening on 127.0.0.1:port."""
    return {
        "server_name": "eXpServer",
        "access_log": None,  # off, as in the nginx config: SPEC §2 defaults it to a file
        "servers": [
            {
                "listeners": [{"host": "127.0.0.1", "port": port}],
                "routes": scenario.xps_routes(site),
            }
        ],
    }


def xps_static_config(docroot: Path, port: int) -> dict[str, Any]:
    """A plain file server on docroot: the static scenarios, and the fallback proxy backend."""
    return xps_config(STATIC_1K, Site(docroot), port)


def _file_routes(site: Site) -> list[Route]:
    return [{"req_path": "/", "type": "file_serve", "dir_path": str(site.docroot)}]


def _gzip_routes(site: Site) -> list[Route]:
    return [
        {
            "req_path": "/",
            "type": "file_serve",
            "dir_path": str(site.docroot),
            "gzip_enable": True,
            "gzip_level": 6,
        }
    ]


# 1000 addresses and blocks, none of them the load generator's 127.0.0.1: every request pays
# the full check and passes.
_ACL_ENTRIES = tuple(
    f"10.{i >> 8}.{i & 255}.7" if i % 4 else f"172.{16 + i % 16}.{i >> 4 & 255}.0/24"
    for i in range(1000)
)


def _acl_routes(site: Site) -> list[Route]:
    return [
        {
            "req_path": "/",
            "type": "file_serve",
            "dir_path": str(site.docroot),
            "ip_blacklist": list(_ACL_ENTRIES),
        }
    ]


def _proxy_routes(site: Site) -> list[Route]:
    return [{"req_path": "/", "type": "reverse_proxy", "upstreams": [site.backend()]}]


def nginx_static_http(site: Site, port: int) -> str:
    """nginx serving docroot: the static scenarios, and the shared proxy backend."""
    return f"""
    server {{
        listen 127.0.0.1:{port};
        root {site.docroot};
    }}
"""


def _nginx_gzip_http(site: Site, port: int) -> str:
    return f"""
    server {{
        listen 127.0.0.1:{port};
        root {site.docroot};
        gzip on;
        gzip_comp_level 6;
        gzip_types text/plain;
        gzip_vary on;
    }}
"""


def _nginx_acl_http(site: Site, port: int) -> str:
    denies = "\n".join(f"        deny {entry};" for entry in _ACL_ENTRIES)
    return f"""
    server {{
        listen 127.0.0.1:{port};
        root {site.docroot};
{denies}
        allow all;
    }}
"""


def _nginx_proxy_http(site: Site, port: int) -> str:
    # Pooled upstream connections, as eXpServer pools them (SPEC §3).
    return f"""
    upstream bench_backend {{
        server {site.backend()};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://bench_backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""


STATIC_1K = Scenario(
    name="static_1k",
    description="GET /1k.txt over keep-alive connections",
    path="/1k.txt",
    xps_routes=_file_routes,
    nginx_http=nginx_static_http,
    budget=0.5,
    metric=Metric.RPS,
    body_file="1k.txt",
)

SCENARIOS: tuple[Scenario, ...] = (
    STATIC_1K,
    Scenario(
        name="static_1k_acl",
        description="static_1k behind a 1000-entry ip_blacklist (compare with static_1k)",
        path="/1k.txt",
        xps_routes=_acl_routes,
        nginx_http=_nginx_acl_http,
        budget=0.5,
        metric=Metric.RPS,
        body_file="1k.txt",
    ),
    Scenario(
        name="static_1m",
        description="GET /1m.bin (1 MiB random bytes; sendfile)",
        path="/1m.bin",
        xps_routes=_file_routes,
        nginx_http=nginx_static_http,
        budget=0.9,
        metric=Metric.BPS,
        body_file="1m.bin",
    ),
    Scenario(
        name="proxy_1k",
        description="GET /1k.txt through a reverse proxy to a shared backend",
        path="/1k.txt",
        xps_routes=_proxy_routes,
        nginx_http=_nginx_proxy_http,
        budget=0.5,
        metric=Metric.RPS,
        body_file="1k.txt",
        requires=("reverse_proxy",),
        needs_backend=True,
    ),
    Scenario(
        name="gzip_1m",
        description="GET /1m.txt with Accept-Encoding: gzip (level 6)",
        path="/1m.txt",
        xps_routes=_gzip_routes,
        nginx_http=_nginx_gzip_http,
        budget=1.0,
        metric=Metric.RPS,
        body_file="1m.txt",
        headers=("Accept-Encoding: gzip",),
        content_encoding="gzip",
    ),
)

DEFAULT = tuple(s for s in SCENARIOS if not s.requires)


def by_name(names: list[str]) -> list[Scenario]:
    """The scenarios named, in registry order; raises KeyError naming any unknown one."""
    known = {s.name: s for s in SCENARIOS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(", ".join(unknown))
    return [s for s in SCENARIOS if s.name in names]
