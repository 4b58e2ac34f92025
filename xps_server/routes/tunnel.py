"""Protocol upgrades on reverse_proxy routes (WebSocket, or any other protocol) and the byte
tunnel a `101 Switching Protocols` makes of the client and upstream connections.

Which requests may upgrade (`requested_upgrade`): a GET over HTTP/1.1 without a body whose
Connection lists `upgrade` and whose Upgrade names well-formed protocols, as nginx passes them
when configured for WebSockets; a 101 to it must name only protocols it offered
(`switch_offered`), else the upstream is a bad gateway. `h2c` is never passed on: an HTTP/2
connection to the upstream would let the client send it any request, past the route's path
and access rules. Any other request loses both fields on its way upstream, as hop-by-hop
fields always do. An upgrade request's session reads nothing more from the client until the
upstream answers (what follows it is the new protocol's, never HTTP), and closes after any
answer but a 101.

On a 101 that names its protocol (`open_tunnel`), the head goes to the client and a `Tunnel`
takes both connections over:
- bytes read on one side are sent on the other; a side stops being read while its peer's pipe
  is over its threshold and resumes when that pipe drains, so each direction holds at most a
  pipe's threshold plus one read, however fast one side sends and slowly the other reads;
- an end of stream from one side is passed on as a half-close (shutdown SHUT_WR) once what it
  sent is out; the tunnel closes once both directions ended, or at once when either
  connection fails or is closed;
- `timeouts.tunnel` seconds with no byte read either way and no pipe draining close it;
- the client's session stays in the server's tables in state `tunnel`, its connection's byte
  counts being the tunnel's each way, so a block on its address, a kill and the end of a
  shutdown's grace close it like any session. The upstream counts the tunnel as a request in
  flight (least_conn sees it) until it closes.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from xps_server.events import Timeout

if TYPE_CHECKING:
    from xps_server.http.parser import Request
    from xps_server.network.connection import Connection
    from xps_server.network.upstream import UpstreamConnection, UpstreamState
    from xps_server.routes.base import RouteContext

# protocol-name ["/" protocol-version], both tokens (RFC 9110 §7.8).
_PROTOCOL = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+(?:/[-!#$%&'*+.^_`|~0-9A-Za-z]+)?").fullmatch
_NEVER = frozenset(("h2c",))


def requested_upgrade(request: Request) -> str | None:
    """The protocols `request` asks to switch to (its Upgrade, normalised), if it may: a GET
    over HTTP/1.1 without a body, whose Connection lists `upgrade`; else None."""
    if request.method != "GET" or request.version != "1.1":
        return None
    if request.chunked or request.content_length > 0:
        return None  # a body would have to be framed ahead of bytes of another protocol
    headers = request.headers
    upgrade = headers.get("upgrade")
    connection = headers.get("connection")
    if upgrade is None or connection is None:
        return None
    if "upgrade" not in {t.strip(" \t") for t in connection.lower().split(",")}:
        return None
    protocols = [p for p in (p.strip(" \t") for p in upgrade.split(",")) if p]
    if not protocols:
        return None
    for protocol in protocols:
        if _PROTOCOL(protocol) is None or protocol.partition("/")[0].lower() in _NEVER:
            return None
    return ", ".join(protocols)


def switch_offered(upgrade: str, protocols: str) -> bool:
    """Whether a 101's Upgrade (`protocols`) names only protocols the request offered
    (`upgrade`, from `requested_upgrade`): a server may switch to no other (RFC 9110 §7.8),
    and one that does (to `h2c`, say) would let the client past the route's rules."""
    offered = {p.lower() for p in upgrade.split(", ")}
    named = [p for p in (p.strip(" \t").lower() for p in protocols.split(",")) if p]
    return bool(named) and offered.issuperset(named)


class _End:
    """One connection of a tunnel, as that connection's handler: what it reads goes to the
    other end's connection."""

    __slots__ = ("conn", "eof", "other", "shut", "tunnel")

    def __init__(self, tunnel: Tunnel, conn: Connection) -> None:
        self.tunnel = tunnel
        self.conn = conn
        self.other: _End = self
        self.eof = False  # this side ended its stream: nothing more comes from it
        self.shut = False  # the other side's end was passed on: our writing to it is shut

    def on_data(self, data: bytes) -> None:
        tunnel = self.tunnel
        tunnel.timer.reset(tunnel.loop.now + tunnel.timeout)
        conn = self.other.conn
        conn.send(data)
        out = conn.out
        if out.size >= out.threshold:
            self.conn.pause_reading()  # until that pipe drains (its on_drain)

    def on_eof(self) -> None:
        if self.eof:
            return  # a later event on a connection that already ended reads EOF again
        self.eof = True
        other = self.other
        if not other.conn.out.items:
            other.shut_write()

    def on_drain(self) -> None:
        """Our pipe went below its threshold: the other side may be read again, and once the
        pipe is empty its end of stream (if it came) is passed on to us."""
        tunnel = self.tunnel
        tunnel.timer.reset(tunnel.loop.now + tunnel.timeout)
        other = self.other
        if other.eof:
            if not self.shut and not self.conn.out.items:
                self.shut_write()
        elif other.conn.read_paused:
            other.conn.resume_reading()

    def on_close(self) -> None:
        self.tunnel.close()

    def shut_write(self) -> None:
        """The other side ended and all it sent is out: end our stream to this side too."""
        self.shut = True
        try:
            self.conn.shutdown_write()  # over TLS, close_notify first
        except OSError:
            self.tunnel.close()
            return
        if self.other.shut:
            self.tunnel.close()  # both directions ended

    # An upstream connection's handler also hears of its connect and its timer; neither is in
    # use once the connection is a tunnel's.
    def on_connect(self) -> None:
        pass

    def on_connect_failed(self, error: str) -> None:
        self.tunnel.close()

    def on_timeout(self) -> None:
        pass


class Tunnel:
    """The client connection and an upstream connection joined after a 101 (module doc)."""

    __slots__ = ("client", "closed", "ctx", "loop", "state", "timeout", "timer", "upstream")

    def __init__(
        self, ctx: RouteContext, conn: UpstreamConnection, state: UpstreamState, timeout: float
    ) -> None:
        core = ctx.core
        self.ctx = ctx
        self.loop = core.loop
        self.state = state
        self.timeout = timeout
        self.closed = False
        self.client = _End(self, ctx.conn)
        self.upstream = _End(self, conn)
        self.client.other = self.upstream
        self.upstream.other = self.client
        self.timer = self.loop.timer(self._idle)
        stats = core.stats
        stats.tunnels_current += 1
        stats.tunnels_total += 1

    def _idle(self) -> None:
        if self.closed:
            return
        ctx = self.ctx
        core = ctx.core
        core.stats.conn_timeout += 1
        if core.bus.active:
            core.bus.publish(Timeout(time.time(), ctx.id, ctx.conn.peer_ip, "tunnel"))
        self.close()

    def close(self) -> None:
        """Close both connections (either may have closed already) and release the session."""
        if self.closed:
            return
        self.closed = True
        self.timer.close()
        self.ctx.core.stats.tunnels_current -= 1
        self.state.active -= 1
        client, upstream = self.client, self.upstream
        client.conn.close()
        upstream.conn.close()
        self.ctx.tunnel_closed()
        # Unlink: the tunnel, its ends and the session must not keep each other alive until
        # the cyclic garbage collector runs (no event reaches the ends any more).
        del client.tunnel, client.other, upstream.tunnel, upstream.other, self.ctx


def open_tunnel(
    ctx: RouteContext,
    conn: UpstreamConnection,
    state: UpstreamState,
    head: bytes,
    timeout: float,
) -> None:
    """The upstream on `conn` switched protocols: send the client `head` (the relayed 101) and
    join the two connections. Bytes either side sent past the exchange (the upstream's after
    its 101, the client's after its request) are the tunnel's first."""
    conn.timer.cancel()  # the tunnel's own timer watches from now on
    tunnel = Tunnel(ctx, conn, state, timeout)
    client = ctx.conn
    from_client = ctx.switch_protocols(tunnel)
    from_upstream = conn.parser.take_rest()
    client.handler = tunnel.client
    conn.handler = tunnel.upstream
    tunnel.timer.reset(tunnel.loop.now + timeout)
    tunnel.upstream.on_data(head + from_upstream)  # the head goes to the client first
    if from_client and not tunnel.closed:
        tunnel.client.on_data(from_client)
    if not tunnel.closed and client.read_paused and not conn.out.full():
        client.resume_reading()  # the session held reading since the request
    if not tunnel.closed and conn.read_paused and not client.out.full():
        conn.resume_reading()
