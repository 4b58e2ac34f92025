"""A listening socket: binds once per distinct (host, port), accepts a few clients a wake-up.

Each accepted socket becomes a `Connection` handed to the core, which attaches a session. The
servers sharing this listener are kept here so Host matching never looks further.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from xps_server.core.loop import EPOLLIN, Loop
from xps_server.core.throttle import LogThrottle
from xps_server.network.connection import Peer

if TYPE_CHECKING:
    from xps_server.network.tls import TlsEndpoint

log = logging.getLogger("xps.listener")

BACKLOG = 1024
ACCEPT_RETRY_DELAY = 0.1
ACCEPT_BATCH = 64  # clients one wake-up accepts at most
ACCEPT_LOG_INTERVAL = 10.0  # out of descriptors: one log line per this many seconds at most
# accept() failing with these means this process (or the system) is out of a resource: every
# client waiting in the backlog would fail the same way until something is freed.
OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))

_Server = TypeVar("_Server")  # what the layer above keeps per server sharing the listener
AcceptCallback = Callable[["Listener[_Server]", socket.socket, Peer], None]


def _family_for(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def listening_socket(host: str, port: int, reuseport: bool = False) -> socket.socket:
    """A bound, listening, non-blocking TCP socket; OSError (nothing left open) on failure.

    With `reuseport` (SO_REUSEPORT), several sockets can listen on the same address, the kernel
    spreading new connections among them: one per worker process."""
    bind_host = "127.0.0.1" if host == "localhost" else host
    sock = socket.socket(_family_for(bind_host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((bind_host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Listener(Generic[_Server]):
    """One listening, non-blocking socket on the loop: bound here, or `sock` bound already
    (a worker's, handed over by its master)."""

    def __init__(
        self,
        loop: Loop,
        host: str,
        port: int,
        on_accept: AcceptCallback[_Server],
        sock: socket.socket | None = None,
    ) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.servers: list[_Server] = []
        self.tls: TlsEndpoint | None = None  # when clients here speak TLS (the core sets it)
        self._on_accept = on_accept
        if sock is None:
            sock = listening_socket(host, port)
        self.family = sock.family
        self.sock = sock
        self.fd = sock.fileno()
        # Out of resources, accepting pauses: one timer looks again, one log line speaks for
        # the failures of a whole interval.
        self._retry_timer = loop.timer(self._retry)
        self._paused = False
        self._log_throttle = LogThrottle(ACCEPT_LOG_INTERVAL)
        self.accept_failures = 0  # out-of-resource failures, for the metrics
        # Level-triggered: a client still waiting in the backlog wakes the next poll, so a
        # wake-up need not accept() until EAGAIN to learn that the backlog is empty (a raised
        # exception in Python, costlier than the accept). A wake-up takes one client, as nginx
        # without multi_accept; when the backlog wakes the loop turn after turn, twice as many
        # each turn (up to ACCEPT_BATCH), so a burst of new clients is taken in a few turns
        # rather than one turn each.
        self._batch = 1
        self._turn = -2  # the loop turn of the latest wake-up
        loop.add(self.fd, EPOLLIN, self.on_event)

    @property
    def address(self) -> tuple[str, int]:
        address: tuple[str, int] = self.sock.getsockname()[:2]  # AF_INET or AF_INET6
        return address

    def on_event(self, _mask: int) -> None:
        # socket.accept() converts the listener's family and type to enums on every call;
        # taking the descriptor and wrapping it with the known family skips that work. (The
        # stubs do not list _accept, the C method socket.accept() itself calls.)
        accept = self.sock._accept  # type: ignore[attr-defined]
        family = self.family
        on_accept = self._on_accept
        turn = self.loop.turn
        batch = self._batch if turn == self._turn + 1 else 1
        self._turn = turn
        for _ in range(batch):
            try:
                fd, peer = accept()
            except BlockingIOError:
                self._batch = 1  # the backlog is empty: back to one a turn
                return
            except OSError as exc:
                if exc.errno in OUT_OF_RESOURCES:
                    self._batch = 1
                    self._pause(exc)
                    return
                continue  # ECONNABORTED and friends concern only that one client
            on_accept(self, socket.socket(family, socket.SOCK_STREAM, 0, fd), peer)
        self._batch = min(batch * 2, ACCEPT_BATCH)

    def _pause(self, exc: OSError) -> None:
        """Stop listening for a moment, as nginx does: new clients wait in the backlog instead
        of waking the loop for an accept that cannot succeed."""
        self.accept_failures += 1
        now = self.loop.now
        unlogged = self._log_throttle.due(now)
        if unlogged is not None:
            log.error(
                "accept on %s:%d failed: %s; retrying every %gs%s",
                self.host,
                self.port,
                exc.strerror or exc,
                ACCEPT_RETRY_DELAY,
                f" ({unlogged} more failures since the last report)" if unlogged else "",
            )
        if not self._paused:
            self._paused = True
            self.loop.modify(self.fd, 0)
        self._retry_timer.reset(now + ACCEPT_RETRY_DELAY)

    def _retry(self) -> None:
        if self._paused and self.fd in self.loop.handlers:
            self._paused = False
            self.loop.modify(self.fd, EPOLLIN)

    def close(self) -> None:
        self._retry_timer.close()
        self.loop.remove(self.fd)
        self.sock.close()
