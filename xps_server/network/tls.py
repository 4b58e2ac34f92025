"""TLS over a connection: contexts, certificate choice by SNI, and the encrypting byte stream.

The standard library's `ssl` runs sans-IO here: an `SSLObject` between two `MemoryBIO`s, fed
from and drained to the very socket calls the cleartext `Connection` makes, on the same
edge-triggered loop. Nothing ever blocks: a handshake that needs bytes waits for the next
EPOLLIN, ciphertext the socket will not take waits for EPOLLOUT.

- `TlsStream` is the encrypting half, a `Connection` (or, mixed in, an upstream connection)
  that overrides reading and writing, nothing else, so a session sees the same recv/send seam
  whether its client speaks TLS or not, and the cleartext path carries no TLS branch at all.
  Files go through in bounded `pread`s (no sendfile under TLS), read only once the socket took
  the previous chunk's ciphertext, so back-pressure and memory bounds hold as in cleartext.
- `TlsConnection` is a client connection on a TLS listener: it handshakes first, bounded by
  its own timer, and reports the outcome to its listener's `TlsEndpoint`.
- `TlsEndpoint` holds a TLS listener's contexts: the default one and those chosen by SNI among
  the server blocks' hostnames (exact, else the longest wildcard). A reload swaps them; each
  established connection keeps the context it was made with.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import sys
from collections import deque
from typing import TYPE_CHECKING, Protocol

from xps_server.core.pipe import FileSegment
from xps_server.network.connection import READ_MASK, RECV_SIZE, Connection, Peer, TlsInfo

if TYPE_CHECKING:
    from xps_server.core.loop import Loop
    from xps_server.network.connection import ConnectionHandler

# Mozilla's "intermediate" profile (v5.7) for TLS 1.2; TLS 1.3 suites are OpenSSL's, all good.
INTERMEDIATE_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)
VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
ALPN = ["http/1.1"]
# Plaintext encrypted per batch: bounds both the ciphertext a slow client pins and one
# connection's share of a loop turn; a file is read this much at a time.
TLS_CHUNK = 64 * 1024


class TlsSetupError(Exception):
    """A certificate or key that cannot be used; the message says which file and why."""


class _Encrypted(Exception):
    pass


def _no_passphrase() -> bytes:
    raise _Encrypted  # an encrypted key would otherwise make OpenSSL prompt on the terminal


def server_context(cert: str, key: str, min_version: str = "TLSv1.2") -> ssl.SSLContext:
    """A server context with the intermediate profile, ALPN http/1.1 and session tickets (on
    by default in OpenSSL: TLS 1.2 tickets, two TLS 1.3 tickets per handshake)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[min_version]
    context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.set_alpn_protocols(ALPN)
    # Client-initiated renegotiation costs the server a handshake on the client's whim.
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _Encrypted:
        raise TlsSetupError(f"the key {key} is encrypted: give an unencrypted key file") from None
    except ssl.SSLError as exc:
        raise TlsSetupError(
            f"cannot use certificate {cert} with key {key}: {_reason(exc)}"
        ) from None
    except OSError as exc:
        name = exc.filename or f"{cert} or {key}"
        raise TlsSetupError(f"cannot read {name}: {exc.strerror or exc}") from None
    return context


def client_context(ca_file: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """A context for HTTPS upstreams: certificates verified against `ca_file` or the system
    store, host names checked, unless `verify` is off."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _reason(exc: BaseException) -> str:
    """A one-line reason for a TLS failure (OpenSSL's reason code when it has one)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or "certificate verify failed"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    # Without a reason code: "[SSL] PEM lib (_ssl.c:3905)", less the source line.
    return re.sub(r" \(_ssl\.c:\d+\)$", "", str(exc)) or type(exc).__name__


def _quiet_bad_server_names() -> None:
    """Keep a client's non-ASCII SNI name off stderr.

    CPython decodes the name before our SNI callback runs and, when that fails, reports the
    UnicodeDecodeError as "unraisable" (a traceback on stderr) and fails the handshake. The
    failure is the right answer, and `_handshake` counts it; the traceback, from input a client
    controls, is not. Everything else goes to the hook installed before, once per process.
    """
    previous = sys.unraisablehook
    if getattr(previous, "xps_sni_guard", False):
        return

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        tb = unraisable.exc_traceback
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if (
            unraisable.exc_type is UnicodeDecodeError
            and type(unraisable.object) is bytes
            and tb is not None
            and tb.tb_frame.f_code.co_filename == ssl.__file__
        ):
            return
        previous(unraisable)

    hook.xps_sni_guard = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


class TlsHooks(Protocol):
    """Who hears of a client connection's handshake (the core)."""

    def tls_ready(self, conn: TlsConnection) -> None: ...
    def tls_failed(self, conn: TlsConnection, reason: str) -> None: ...


class TlsEndpoint:
    """A TLS listener's certificates: `contexts` maps the hostnames of the server blocks
    (lower-case; "*.suffix" wildcards) to the context with their certificate; any other name,
    or none, gets `default`.

    It holds nothing else, the core above all: the default context holds it (its SNI
    callback), and an `SSLObject` holds its context without telling the cyclic garbage
    collector, so anything reachable from here back to a connection would never be freed.
    """

    __slots__ = ("by_name", "default", "handshake_timeout", "wildcards")

    def __init__(
        self,
        default: ssl.SSLContext,
        contexts: dict[str, ssl.SSLContext],
        handshake_timeout: float,
    ) -> None:
        self.default = default
        self.by_name = {name: ctx for name, ctx in contexts.items() if not name.startswith("*.")}
        # Longest suffix first: "*.a.example.com" wins over "*.example.com".
        self.wildcards = sorted(
            ((name[1:], ctx) for name, ctx in contexts.items() if name.startswith("*.")),
            key=lambda item: -len(item[0]),
        )
        self.handshake_timeout = handshake_timeout
        # Also when no name picks another certificate: the name asked for is shown to the
        # operator.
        default.sni_callback = self._on_sni
        _quiet_bad_server_names()

    def context_for(self, name: str) -> ssl.SSLContext:
        name = name.lower().removesuffix(".")
        context = self.by_name.get(name)
        if context is not None:
            return context
        for suffix, context in self.wildcards:
            if name.endswith(suffix):
                return context
        return self.default

    def _on_sni(self, tls: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        if name is not None:
            tls.sni_name = name  # type: ignore[attr-defined]  # read back by the console
            context = self.context_for(name)
            if context is not self.default:
                tls.context = context


class TlsStream(Connection):
    """Reading and writing through an `SSLObject` (see the module docstring). It declares no
    `__slots__`, so that an upstream connection can take it too: each subclass declares the
    attributes below as slots (no instance dict is ever made) and says what a finished or
    failed handshake means."""

    scheme = "https"
    tls: ssl.SSLObject
    tls_in: ssl.MemoryBIO
    tls_out: ssl.MemoryBIO
    cipher: memoryview | bytes | None  # ciphertext the socket has not taken
    handshaking: bool
    peer_done: bool  # the peer ended its side (close_notify, or a bare FIN)
    shut: bool  # we sent close_notify

    def _tls_init(
        self, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
    ) -> None:
        self.tls = tls
        self.tls_in = incoming
        self.tls_out = outgoing
        self.cipher = None
        self.handshaking = True
        self.peer_done = False
        self.shut = False

    # --- the handshake -------------------------------------------------------------------
    def _handshake(self) -> None:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._write()  # our flight, if this step made one
            return
        except (ssl.SSLError, ValueError) as exc:
            self._write()  # the alert, so the peer learns why
            if not self.closed:
                self._handshake_failed(_reason(exc))
            return
        self.handshaking = False
        self._write()  # our Finished, TLS 1.3 session tickets, and anything queued meanwhile
        if not self.closed:
            self._handshake_done()

    def _handshake_done(self) -> None:
        """The handshake is complete (the subclass tells whoever waits for it)."""
        raise NotImplementedError

    def _handshake_failed(self, reason: str) -> None:
        """The handshake failed for `reason` (the subclass reports it and closes)."""
        raise NotImplementedError

    # --- reading -------------------------------------------------------------------------
    def read(self, peer_closed: int = 0) -> None:
        """Decrypt what is buffered, then drain the socket, until EAGAIN, EOF, a pause or a
        close; the handler sees plaintext only."""
        if self.read_paused:
            self.read_pending = True
            return
        recv = self._recv
        incoming = self.tls_in
        drained = False  # a short read: the kernel buffer is empty (see Connection.read)
        # Records left over from a read that paused are delivered first.
        buffered = bool(incoming.pending or self.tls.pending())
        while True:
            if buffered and not self.handshaking and not self._deliver():
                return
            if drained:
                return
            try:
                data = recv(RECV_SIZE)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            if not data:
                self._on_raw_eof()
                return
            self.bytes_in += len(data)
            drained = len(data) < RECV_SIZE and not peer_closed
            buffered = True
            if self.peer_done:
                continue  # records past the peer's close_notify: nothing to decrypt
            incoming.write(data)
            if self.handshaking:
                self._handshake()
                if self.closed:
                    return

    def _deliver(self) -> bool:
        """Hand the handler what the buffered records decrypt to; False once it must stop
        (closed, paused, or the peer's close_notify)."""
        if self.peer_done:
            return True  # nothing is decrypted past the peer's close_notify
        tls = self.tls
        incoming = self.tls_in
        while incoming.pending or tls.pending():
            try:
                data = tls.read(RECV_SIZE)
            except ssl.SSLWantReadError:
                break  # a partial record (the rest is on its way), or a handshake message
            except ssl.SSLZeroReturnError:
                data = b""  # the peer's close_notify after ours
            except ssl.SSLError as exc:
                self._stream_failed(_reason(exc))
                return False
            if not data:  # the peer's close_notify: its side of the stream ended
                self.peer_done = True
                self.handler.on_eof()
                return False
            self.handler.on_data(data)
            if self.closed:
                return False
            if self.read_paused:
                self.read_pending = True
                return False
        if self.tls_out.pending and not self.writing:
            self._write()  # a reply a post-handshake message asked for (a key update)
        return True

    def _on_raw_eof(self) -> None:
        if self.handshaking:
            self.close()
        elif not self.peer_done:
            self.peer_done = True  # a close without close_notify: HTTP framing still holds
            self.handler.on_eof()

    def _stream_failed(self, reason: str) -> None:
        self.close()

    # --- writing -------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Queue `data`; the common case (nothing pending, a response of one batch) is one
        encryption and one `send` syscall."""
        out = self.out
        # Ciphertext left over means `writing`: EPOLLOUT is awaited.
        if self.writing or self.handshaking or out.items or len(data) > TLS_CHUNK:
            out.push(data)
            if not self.writing and not self.handshaking:
                self._write()
            return
        try:
            self.tls.write(data)
        except ssl.SSLError:
            self.close()
            return
        self._send_cipher(self.tls_out.read())

    def _send_cipher(self, cipher: bytes | memoryview) -> bool:
        """One `send` of ciphertext; what the socket does not take waits in `cipher` for
        EPOLLOUT. Whether it all went (False too if the socket failed: we are closed)."""
        try:
            sent = self._send(cipher)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return False
        self.bytes_out += sent
        if sent < len(cipher):
            self.cipher = memoryview(cipher)[sent:]
            self._want_write()
            return False
        return True

    def send_body(self, head: bytes, body: bytes) -> None:
        out = self.out
        out.push(head)
        out.push(body)
        if not self.writing and not self.handshaking:
            self._write()

    def flush(self) -> None:
        if self.handshaking:
            self._write()  # handshake bytes only: no drain to tell anyone about
            return
        super().flush()

    def _write(self) -> None:
        """Send what the socket takes: pending ciphertext first, then the pipe's items,
        encrypted a bounded batch at a time (a file read as it goes), and only once the
        previous batch is all out."""
        if self.closed:
            return
        outgoing = self.tls_out
        out = self.out
        items = out.items
        cipher = self.cipher
        while True:
            if cipher is None:
                if items and not self.handshaking and not self._encrypt_batch(items):
                    return
                if not outgoing.pending:
                    break
                cipher = outgoing.read()
            if not self._send_cipher(cipher):
                return
            cipher = self.cipher = None
        if self.writing:
            self.writing = False
            self.loop.modify(self.fd, READ_MASK)

    def _encrypt_batch(self, items: deque[bytes | memoryview | FileSegment]) -> bool:
        """Encrypt up to TLS_CHUNK bytes of the pipe's head items; False if that closed us."""
        out = self.out
        encrypt = self.tls.write
        budget = TLS_CHUNK
        data: bytes | memoryview
        try:
            while items and budget > 0:
                item = items[0]
                if type(item) is FileSegment:
                    data = os.pread(item.fd, min(item.count, budget), item.offset)
                    if not data:
                        # The file shrank under us: the promised length cannot be met.
                        self.close()
                        return False
                    item.offset += len(data)
                    item.count -= len(data)
                    if item.count == 0:
                        item.close()
                        items.popleft()
                elif len(item) <= budget:
                    data = item
                    items.popleft()
                else:
                    view = memoryview(item)
                    data = view[:budget]
                    items[0] = view[budget:]
                encrypt(data)
                out.size -= len(data)
                budget -= len(data)
        except (OSError, ssl.SSLError):
            self.close()
            return False
        return True

    # --- closing -------------------------------------------------------------------------
    def _close_notify(self) -> bytes:
        """Our close_notify alert, once (empty while no session is established). The peer
        may still send: what it does is still decrypted (a half-closed tunnel)."""
        if self.shut or self.handshaking:
            return b""
        self.shut = True
        try:
            self.tls.unwrap()
        except ssl.SSLError:
            pass  # SSLWantReadError: the peer's close_notify has not come, and need not
        return self.tls_out.read()

    def shutdown_write(self) -> None:
        """Close our sending side: close_notify first, then the TCP FIN."""
        alert = self._close_notify()
        if alert:
            self._send(alert)  # a few bytes after an empty pipe: the socket takes them
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if not self.closed and self.cipher is None and not self.out.items:
            # A clean end (nothing left unsent): tell the peer, best effort, as nginx does.
            alert = self._close_notify()
            if alert:
                try:
                    self._send(alert)
                except OSError:
                    pass
        super().close()


class TlsConnection(TlsStream):
    """A client connection on a TLS listener (see the module docstring)."""

    __slots__ = (
        "cipher",
        "endpoint",
        "handshake_timer",
        "handshaking",
        "hooks",
        "peer_done",
        "shut",
        "tls",
        "tls_in",
        "tls_out",
    )

    def __init__(
        self, loop: Loop, sock: socket.socket, peer: Peer, endpoint: TlsEndpoint, hooks: TlsHooks
    ) -> None:
        super().__init__(loop, sock, peer)
        incoming = ssl.MemoryBIO()
        outgoing = ssl.MemoryBIO()
        self._tls_init(
            endpoint.default.wrap_bio(incoming, outgoing, server_side=True), incoming, outgoing
        )
        self.endpoint = endpoint
        self.hooks = hooks
        self.handshake_timer = loop.timer(self._handshake_expired)

    def start(self, handler: ConnectionHandler) -> None:
        self.handshake_timer.reset(self.loop.now + self.endpoint.handshake_timeout)
        super().start(handler)

    def _handshake_done(self) -> None:
        self.handshake_timer.close()
        self.hooks.tls_ready(self)

    def _handshake_failed(self, reason: str) -> None:
        self.hooks.tls_failed(self, reason)
        self.close()

    def _handshake_expired(self) -> None:
        if self.handshaking and not self.closed:
            self._handshake_failed("handshake timed out")

    def _stream_failed(self, reason: str) -> None:
        self.hooks.tls_failed(self, reason)
        self.close()

    def _on_raw_eof(self) -> None:
        if self.handshaking and self.bytes_in:
            self._handshake_failed("closed during the handshake")
        else:
            super()._on_raw_eof()  # before any byte: a port probe, nothing to report

    def close(self) -> None:
        self.handshake_timer.close()
        super().close()

    def tls_info(self) -> TlsInfo:
        """What the operator sees: protocol version and cipher (None until the handshake is
        done), and the name the client asked for by SNI (None if it sent none)."""
        tls = self.tls
        cipher = None if self.handshaking else tls.cipher()
        return {
            "version": None if self.handshaking else tls.version(),
            "cipher": cipher[0] if cipher else None,
            "sni": getattr(tls, "sni_name", None),
        }
