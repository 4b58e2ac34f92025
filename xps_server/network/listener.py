"""A listening socket: binds once per distinct (host, port), accepts until EAGAIN.

Each accepted socket becomes a `Connection` handed to the core, which attaches a session. The
servers sharing this listener are kept here so Host matching never looks further.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable

from xps_server.core.loop import EPOLLET, EPOLLIN, Loop

log = logging.getLogger("xps.listener")

BACKLOG = 1024
ACCEPT_RETRY_DELAY = 0.1

AcceptCallback = Callable[["Listener", socket.socket, tuple], None]


def _family_for(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class Listener:
    """One bound, listening, non-blocking socket on the loop."""

    def __init__(self, loop: Loop, host: str, port: int, on_accept: AcceptCallback) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.servers: list = []
        self._on_accept = on_accept
        bind_host = "127.0.0.1" if host == "localhost" else host
        sock = socket.socket(_family_for(bind_host), socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((bind_host, port))
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.fd = sock.fileno()
        loop.add(self.fd, EPOLLIN | EPOLLET, self.on_event)

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    def on_event(self, _mask: int) -> None:
        accept = self.sock.accept
        on_accept = self._on_accept
        while True:
            try:
                sock, peer = accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: no new edge will come for what waits in the backlog,
                    # so look again shortly instead of spinning now.
                    log.error("accept on %s:%d failed: %s", self.host, self.port, exc)
                    self.loop.call_later(ACCEPT_RETRY_DELAY, self._retry)
                    return
                continue  # ECONNABORTED and friends concern only that one client
            on_accept(self, sock, peer)

    def _retry(self) -> None:
        if self.fd in self.loop.handlers:
            self.on_event(0)

    def close(self) -> None:
        self.loop.remove(self.fd)
        self.sock.close()
