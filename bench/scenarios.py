"""The case registry: one entry per benchmark case, the only place a new case is added.

A case says what to request and over how many connections, how to configure eXpServer (its
routes) and each peer that does the same job (its config text: nginx's ``http`` block
contents, Caddy's site blocks, HAProxy's proxy sections), and its budget: xps must reach
``budget`` times the best peer's requests per second.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.peers import CADDY, HAPROXY, NGINX

Route = dict[str, Any]
PeerConfig = Callable[["Site", int], str]  # (site, port) -> the peer's config text


@dataclass(frozen=True)
class Site:
    """What the config builders need to know about this run."""

    docroot: Path
    backend_port: int | None = None
    cert: Path | None = None  # the https cases' certificate and key (bench.fixtures)
    key: Path | None = None

    def backend(self) -> str:
        """``127.0.0.1:PORT`` of the shared proxy backend (only set for cases needing it)."""
        if self.backend_port is None:
            raise ValueError("this case has no backend")
        return f"127.0.0.1:{self.backend_port}"


@dataclass(frozen=True)
class Scenario:
    """One case: a request, the server configs, and the budget it is held to."""

    name: str
    description: str
    path: str
    xps_routes: Callable[[Site], list[Route]]
    peers: Mapping[str, PeerConfig]  # peer name -> its config, in the order they are measured
    budget: float  # xps req/s >= budget x the best peer's req/s
    body_file: str
    headers: tuple[str, ...] = ()
    content_encoding: str | None = None
    connections: int | None = None  # None: the run's --connections
    needs_backend: bool = False
    tls: bool = False  # over HTTPS: every server gets the same certificate

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def budget_text(self) -> str:
        """The budget in words, e.g. ``>= 0.85 x best``."""
        return f">= {self.budget:.2f} x best"


def xps_config(scenario: Scenario, site: Site, port: int) -> dict[str, Any]:
    """The full eXpServer config JSON for one case listening on 127.0.0.1:port."""
    listener: dict[str, Any] = {"host": "127.0.0.1", "port": port}
    if scenario.tls:
        listener["tls"] = {"cert": str(site.cert), "key": str(site.key)}
    return {
        "server_name": "eXpServer",
        "access_log": None,  # off, as for every peer (xps-server's default writes one)
        "servers": [{"listeners": [listener], "routes": scenario.xps_routes(site)}],
    }


def xps_static_config(docroot: Path, port: int) -> dict[str, Any]:
    """A plain file server on docroot: the fallback proxy backend when nginx is missing."""
    return xps_config(SMALL, Site(docroot), port)


def _file_routes(site: Site) -> list[Route]:
    return [{"req_path": "/", "type": "file_serve", "dir_path": str(site.docroot)}]


def _gzip_routes(site: Site) -> list[Route]:
    # The first requests (the probe, the warm-up) fill xps's cache of compressed files: the
    # measurement then compares serving cached gzip bytes with the peers' precompressed file.
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
    """nginx serving docroot: the static cases, and the shared proxy backend."""
    return f"""
    server {{
        listen 127.0.0.1:{port};
        root {site.docroot};
    }}
"""


# Mozilla's "intermediate" TLS 1.2 ciphers, as eXpServer uses (TLS 1.3: OpenSSL's defaults).
_INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)


def _nginx_https(site: Site, port: int) -> str:
    # As Mozilla's generator writes it for "intermediate", minus HSTS and OCSP stapling.
    return f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        root {site.docroot};
        ssl_certificate {site.cert};
        ssl_certificate_key {site.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {_INTERMEDIATE_CIPHERS};
        ssl_prefer_server_ciphers off;
        ssl_session_timeout 1d;
        ssl_session_cache shared:MozSSL:10m;
    }}
"""


def _nginx_gzip_http(site: Site, port: int) -> str:
    # gzip_static: the precompressed 1m.txt.gz, as a production nginx would serve a large
    # text file (compressing 1 MiB per request would measure zlib, not the server).
    return f"""
    server {{
        listen 127.0.0.1:{port};
        root {site.docroot};
        gzip_static on;
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


# Every proxy pools its upstream connections, as eXpServer does: 64 idle ones kept at most.
_POOL = 64


def _nginx_proxy_http(site: Site, port: int) -> str:
    return f"""
    upstream bench_backend {{
        server {site.backend()};
        keepalive {_POOL};
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


# Caddyfiles are indented with tabs (Caddy warns about anything else). The site address
# without a host serves any Host header, as the other servers here do.
def _caddy_static(site: Site, port: int) -> str:
    return f"""http://:{port} {{
\tbind 127.0.0.1
\troot * {site.docroot}
\tfile_server
}}
"""


def _caddy_gzip(site: Site, port: int) -> str:
    return f"""http://:{port} {{
\tbind 127.0.0.1
\troot * {site.docroot}
\tfile_server {{
\t\tprecompressed gzip
\t}}
}}
"""


def _caddy_proxy(site: Site, port: int) -> str:
    return f"""http://:{port} {{
\tbind 127.0.0.1
\treverse_proxy {site.backend()} {{
\t\ttransport http {{
\t\t\tkeepalive_idle_conns_per_host {_POOL}
\t\t}}
\t}}
}}
"""


def _haproxy_proxy(site: Site, port: int) -> str:
    # http-reuse always: any idle upstream connection serves any request (the default, safe,
    # keeps a client's first request off connections other clients used).
    return f"""
frontend bench
    bind 127.0.0.1:{port}
    default_backend upstream

backend upstream
    http-reuse always
    server backend {site.backend()} pool-max-conn {_POOL}
"""


_FILE_PEERS: Mapping[str, PeerConfig] = {NGINX: nginx_static_http, CADDY: _caddy_static}

SMALL = Scenario(
    name="small",
    description="GET /1k.txt over keep-alive connections",
    path="/1k.txt",
    xps_routes=_file_routes,
    peers=_FILE_PEERS,
    budget=0.85,
    body_file="1k.txt",
)

SCENARIOS: tuple[Scenario, ...] = (
    SMALL,
    Scenario(
        name="c1000",
        description="GET /1k.txt over 1,000 keep-alive connections",
        path="/1k.txt",
        xps_routes=_file_routes,
        peers=_FILE_PEERS,
        budget=0.85,
        body_file="1k.txt",
        connections=1000,
    ),
    Scenario(
        name="close",
        description="GET /1k.txt with Connection: close: one connection per request",
        path="/1k.txt",
        xps_routes=_file_routes,
        peers=_FILE_PEERS,
        budget=1.0,
        body_file="1k.txt",
        headers=("Connection: close",),
    ),
    Scenario(
        name="large",
        description="GET /1m.bin (1 MiB of random bytes; sendfile)",
        path="/1m.bin",
        xps_routes=_file_routes,
        peers=_FILE_PEERS,
        budget=1.0,
        body_file="1m.bin",
    ),
    Scenario(
        name="gzip",
        description=(
            "GET /1m.txt with Accept-Encoding: gzip: xps's cache warm, the peers serving "
            "the precompressed 1m.txt.gz"
        ),
        path="/1m.txt",
        xps_routes=_gzip_routes,
        peers={NGINX: _nginx_gzip_http, CADDY: _caddy_gzip},
        budget=0.9,
        body_file="1m.txt",
        headers=("Accept-Encoding: gzip",),
        content_encoding="gzip",
    ),
    Scenario(
        name="proxy",
        description="GET /1k.txt through a reverse proxy to a shared backend, pooled",
        path="/1k.txt",
        xps_routes=_proxy_routes,
        peers={HAPROXY: _haproxy_proxy, NGINX: _nginx_proxy_http, CADDY: _caddy_proxy},
        budget=0.75,
        body_file="1k.txt",
        needs_backend=True,
    ),
    Scenario(
        name="static_1k_acl",
        description="small behind a 1000-entry ip_blacklist (nginx: 1000 deny rules)",
        path="/1k.txt",
        xps_routes=_acl_routes,
        peers={NGINX: _nginx_acl_http},
        budget=0.5,
        body_file="1k.txt",
    ),
    Scenario(
        name="https_small",
        description="GET /1k.txt over keep-alive HTTPS connections",
        path="/1k.txt",
        xps_routes=_file_routes,
        peers={NGINX: _nginx_https},
        budget=0.6,
        body_file="1k.txt",
        tls=True,
    ),
    Scenario(
        name="https_close",
        description="GET /1k.txt over HTTPS with Connection: close: a TLS handshake per request",
        path="/1k.txt",
        xps_routes=_file_routes,
        peers={NGINX: _nginx_https},
        budget=0.5,
        body_file="1k.txt",
        headers=("Connection: close",),
        tls=True,
    ),
    Scenario(
        name="https_large",
        description="GET /1m.bin over HTTPS (no sendfile: read, encrypt, send)",
        path="/1m.bin",
        xps_routes=_file_routes,
        peers={NGINX: _nginx_https},
        budget=0.6,
        body_file="1m.bin",
        tls=True,
    ),
)


def by_name(names: list[str]) -> list[Scenario]:
    """The cases named, in registry order; raises KeyError naming any unknown one."""
    known = {s.name: s for s in SCENARIOS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(", ".join(unknown))
    return [s for s in SCENARIOS if s.name in names]
