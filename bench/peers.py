"""The peers xps-server is compared with: how to find, name, start and stop each one.

Each case (``bench.scenarios``) gives a peer its config text; this module turns that text
into a command to run. Every peer runs one worker (process or thread) on loopback, without
an access log, as xps-server does.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import caddy, haproxy, nginx
from bench.servers import Command

NGINX = "nginx"
CADDY = "caddy"
HAPROXY = "haproxy"


@dataclass(frozen=True)
class Peer:
    """A server to compare xps-server with."""

    name: str
    find: Callable[[], str | None]  # the binary, or None when not installed
    version: Callable[[str], str]
    command: Callable[[str, Path, str], Command]  # binary, private directory, config text
    clean_exits: tuple[int, ...] = (0,)  # its exit codes on SIGTERM that mean a clean stop


PEERS: tuple[Peer, ...] = (
    Peer(NGINX, nginx.find_nginx, nginx.version, nginx.command),
    Peer(CADDY, caddy.find_caddy, caddy.version, caddy.command),
    Peer(HAPROXY, haproxy.find_haproxy, haproxy.version, haproxy.command, haproxy.CLEAN_EXITS),
)
NAMES = tuple(p.name for p in PEERS)


def by_name(name: str) -> Peer:
    """The peer called name; raises KeyError for an unknown one."""
    for peer in PEERS:
        if peer.name == name:
            return peer
    raise KeyError(name)
