"""A client TCP connection: drains the socket on edge-triggered reads, sends out of its pipe.

The connection owns the socket and the pipe toward the client; everything HTTP lives in the
session that handles it (`on_data`, `on_eof`, `on_drain`, `on_close`). EPOLLOUT is registered
only while the pipe holds bytes the socket would not take.
"""

from __future__ import annotations

import os
import socket
from typing import Protocol, TypedDict

from xps_server.core.loop import EPOLLERR, EPOLLET, EPOLLIN, EPOLLOUT, EPOLLRDHUP, Loop
from xps_server.core.pipe import FileSegment, Pipe

RECV_SIZE = 65536
SENDFILE_CHUNK = 1 << 20  # one sendfile call never hogs the loop for more than a MiB
READ_MASK = EPOLLIN | EPOLLRDHUP | EPOLLET
WRITE_MASK = READ_MASK | EPOLLOUT
MSG_MORE = socket.MSG_MORE


# What accept() gives for an AF_INET / AF_INET6 peer (the control socket passes ("unix", 0)).
Peer = tuple[str, int] | tuple[str, int, int, int]


class TlsInfo(TypedDict):
    """A TLS connection as the operator sees it (`Connection.tls_info`)."""

    version: str | None  # None until the handshake is done
    cipher: str | None
    sni: str | None  # the name the client asked for, if it sent one


class ConnectionHandler(Protocol):
    def on_data(self, data: bytes) -> None: ...
    def on_eof(self) -> None: ...
    def on_drain(self) -> None: ...
    def on_close(self) -> None: ...


class _NoHandler:
    """The handler of a connection nobody handles: before `start`, after `close`, or an
    upstream connection let go by its exchange. No event reaches it (the fd is not yet
    registered, or already closed), so it ignores all: the events of an upstream connection
    (see `upstream.UpstreamHandler`) as well as those of any connection."""

    __slots__ = ()

    def on_data(self, data: bytes) -> None:
        pass

    def on_eof(self) -> None:
        pass

    def on_drain(self) -> None:
        pass

    def on_close(self) -> None:
        pass

    def on_connect(self) -> None:
        pass

    def on_connect_failed(self, error: str) -> None:
        pass

    def on_timeout(self) -> None:
        pass


NO_HANDLER = _NoHandler()


class Connection:
    """Socket + outgoing pipe; reads until EAGAIN (or a short read), writes with back-pressure."""

    __slots__ = (
        "_recv",
        "_send",
        "bytes_in",
        "bytes_out",
        "closed",
        "fd",
        "handler",
        "loop",
        "out",
        "peer_ip",
        "peer_port",
        "read_paused",
        "read_pending",
        "sock",
        "writing",
    )
    scheme = "http"  # what X-Forwarded-Proto says for this client

    handler: ConnectionHandler

    def __init__(self, loop: Loop, sock: socket.socket, peer: Peer) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.peer_ip: str = peer[0]
        self.peer_port: int = peer[1]
        self.out = Pipe()
        self.handler = NO_HANDLER
        self.closed = False
        self.writing = False
        self.read_paused = False
        self.read_pending = False
        self.bytes_in = 0
        self.bytes_out = 0
        self._recv = sock.recv
        self._send = sock.send

    def start(self, handler: ConnectionHandler) -> None:
        self.handler = handler
        self.loop.add(self.fd, READ_MASK, self.on_event)

    # --- events -----------------------------------------------------------------------------
    def on_event(self, mask: int) -> None:
        try:
            if mask & EPOLLOUT:
                self.flush()
            if mask & ~EPOLLOUT and not self.closed:
                if mask & EPOLLERR:
                    self.close()
                else:
                    self.read(mask & EPOLLRDHUP)
        except Exception:
            self.close()
            raise

    def read(self, peer_closed: int = 0) -> None:
        """Drain the socket into the handler until EAGAIN, EOF, a pause or a close."""
        if self.read_paused:
            self.read_pending = True
            return
        recv = self._recv
        while True:
            try:
                data = recv(RECV_SIZE)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            # The handler is looked up each time: an upstream connection changes hands (back
            # to the pool) in the middle of a read.
            if not data:
                self.handler.on_eof()
                return
            self.bytes_in += len(data)
            self.handler.on_data(data)
            if self.closed:
                return
            if self.read_paused:
                self.read_pending = True
                return
            # A short read of a stream socket means the kernel buffer is empty and the next
            # byte will raise a fresh edge; only a pending FIN needs the extra recv to see EOF.
            if len(data) < RECV_SIZE and not peer_closed:
                return

    def pause_reading(self) -> None:
        self.read_paused = True

    def resume_reading(self) -> None:
        """Undo `pause_reading`; bytes that arrived meanwhile raised no new edge, so read now."""
        self.read_paused = False
        if self.read_pending and not self.closed:
            self.read_pending = False
            self.read()

    # --- output -----------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Queue `data` after anything pending; the common case is one `send` syscall."""
        out = self.out
        if out.items:
            out.push(data)
            return
        try:
            sent = self._send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        self.bytes_out += sent
        if sent < len(data):
            out.push(memoryview(data)[sent:])
            self._want_write()

    def send_body(self, head: bytes, body: bytes) -> None:
        """Queue a head and a body without joining them (one `sendmsg`): the body, a cached
        file say, is shared, so a client that reads nothing pins a view of it, not a copy."""
        out = self.out
        if out.items:
            out.push(head)
            out.push(body)
            return
        try:
            sent = self.sock.sendmsg((head, body))
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        self.bytes_out += sent
        head_len = len(head)
        if sent < head_len:
            out.push(memoryview(head)[sent:])
            out.push(body)
        elif sent < head_len + len(body):
            out.push(memoryview(body)[sent - head_len :])
        else:
            return
        self._want_write()

    def send_file(self, head: bytes, segment: FileSegment) -> None:
        """Queue a head and a file segment; the file moves with sendfile as the socket drains."""
        out = self.out
        out.push(head)
        out.push_file(segment)
        if not self.writing:
            self._write()

    def flush(self) -> None:
        """EPOLLOUT: write what the socket takes; tell the handler once below the threshold."""
        self._write()
        out = self.out
        if out.size < out.threshold and not self.closed:
            self.handler.on_drain()

    def _write(self) -> None:
        out = self.out
        items = out.items
        while items:
            item = items[0]
            try:
                if type(item) is FileSegment:
                    sent = os.sendfile(
                        self.fd, item.fd, item.offset, min(item.count, SENDFILE_CHUNK)
                    )
                    if sent == 0:
                        # The file shrank under us: the promised length can no longer be met.
                        self.close()
                        return
                    item.offset += sent
                    item.count -= sent
                    if item.count == 0:
                        item.close()
                        items.popleft()
                else:
                    more = len(items) > 1 and type(items[1]) is FileSegment
                    sent = self._send(item, MSG_MORE if more else 0)
                    if sent < len(item):
                        items[0] = memoryview(item)[sent:]
                    else:
                        items.popleft()
            except BlockingIOError:
                break
            except OSError:
                self.close()
                return
            out.size -= sent
            self.bytes_out += sent
        if items:
            self._want_write()
        elif self.writing:
            self.writing = False
            self.loop.modify(self.fd, READ_MASK)

    def _want_write(self) -> None:
        if not self.writing and not self.closed:
            self.writing = True
            self.loop.modify(self.fd, WRITE_MASK)

    def tls_info(self) -> TlsInfo | None:
        """TLS version, cipher and SNI name, for the operator; None in cleartext."""
        return None

    # --- teardown ---------------------------------------------------------------------------
    def shutdown_write(self) -> None:
        """Send our FIN (a lingering close): the client may still send, we send no more."""
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove(self.fd)
        self.out.clear()
        try:
            self.sock.close()
        except OSError:
            pass
        handler = self.handler
        if handler is not NO_HANDLER:
            # Unlink first: a closed connection and its session must not keep each other
            # alive until the cyclic garbage collector runs.
            self.handler = NO_HANDLER
            handler.on_close()
