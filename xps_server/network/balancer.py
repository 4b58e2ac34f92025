"""Load balancing over a route's upstreams, as nginx does it.

- `round_robin` (default): smooth weighted round robin — each pick adds every peer's weight
  to its running score, takes the highest and subtracts the total from it, so weights 5:1:1
  interleave (a a b a c a a) instead of bunching.
- `least_conn`: the fewest requests in flight relative to weight; ties go round robin.
- `ip_hash`: the client address picks the peer (IPv4 by its first three octets, as nginx, so
  a /24 sticks together); an unavailable pick is rehashed, and after 20 tries round robin
  takes over.

A peer is skipped while it is down (passive health), draining, or already tried for this
request; `pick` returns None when nothing is left.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xps_server.network.upstream import UpstreamState

IP_HASH_TRIES = 20


class Peer:
    """An upstream as one route sees it: its weight there and its round-robin score."""

    __slots__ = ("current", "state", "weight")

    def __init__(self, state: UpstreamState, weight: int) -> None:
        self.state = state
        self.weight = weight
        self.current = 0


def ip_hash_key(ip: str) -> bytes:
    """The bytes of `ip` that ip_hash hashes: three octets of IPv4, all of IPv6."""
    if ip.startswith("::ffff:") and "." in ip:
        ip = ip[7:]  # an IPv4 client on a dual-stack socket
    try:
        return socket.inet_aton(ip)[:3]
    except OSError:
        pass
    try:
        return socket.inet_pton(socket.AF_INET6, ip)
    except OSError:
        return ip.encode()


class Balancer:
    """Picks the upstream for each request of one reverse_proxy route."""

    __slots__ = ("method", "peers", "total_weight")

    def __init__(self, peers: Sequence[tuple[UpstreamState, int]], method: str) -> None:
        self.peers = [Peer(state, weight) for state, weight in peers]
        self.method = method
        self.total_weight = sum(p.weight for p in self.peers)

    def pick(
        self, now: float, client_ip: str, tried: Sequence[UpstreamState] = ()
    ) -> UpstreamState | None:
        peers = self.peers
        if len(peers) == 1:
            state = peers[0].state
            if state in tried or not state.available(now):
                return None
            return state
        method = self.method
        if method == "least_conn":
            return self._least_conn(now, tried)
        if method == "ip_hash":
            return self._ip_hash(now, client_ip, tried)
        return self._round_robin(self.peers, now, tried)

    @staticmethod
    def _round_robin(
        peers: list[Peer], now: float, tried: Sequence[UpstreamState]
    ) -> UpstreamState | None:
        best = None
        total = 0
        for peer in peers:
            state = peer.state
            if state in tried or not state.available(now):
                continue
            peer.current += peer.weight
            total += peer.weight
            if best is None or peer.current > best.current:
                best = peer
        if best is None:
            return None
        best.current -= total
        return best.state

    def _least_conn(self, now: float, tried: Sequence[UpstreamState]) -> UpstreamState | None:
        best = None
        ties: list[Peer] = []
        for peer in self.peers:
            state = peer.state
            if state in tried or not state.available(now):
                continue
            if best is None:
                best = peer
                ties = [peer]
                continue
            # active/weight compared without division.
            mine = state.active * best.weight
            theirs = best.state.active * peer.weight
            if mine < theirs:
                best = peer
                ties = [peer]
            elif mine == theirs:
                ties.append(peer)
        if best is None:
            return None
        if len(ties) == 1:
            return best.state
        return self._round_robin(ties, now, tried)

    def _ip_hash(
        self, now: float, client_ip: str, tried: Sequence[UpstreamState]
    ) -> UpstreamState | None:
        key = ip_hash_key(client_ip)
        peers = self.peers
        total = self.total_weight
        value = 89
        for _ in range(IP_HASH_TRIES):
            for octet in key:
                value = (value * 113 + octet) % 6271
            w = value % total
            for peer in peers:
                if w < peer.weight:
                    break
                w -= peer.weight
            state = peer.state
            if state not in tried and state.available(now):
                return state
        return self._round_robin(peers, now, tried)
