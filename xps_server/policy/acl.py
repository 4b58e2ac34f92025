"""IP access lists: CIDR sets compiled once, matched per request in a few set probes.

A `NetSet` keeps, per address family and per prefix length present, the set of network
numbers (the address shifted right past its host bits). Matching an address probes one set per
distinct prefix length, never the entries: a 10,000-entry list of /32s is one probe, a list
mixing every IPv4 length at most 33. IPv4-mapped IPv6 (``::ffff:a.b.c.d``) is IPv4 on both
sides, so a dual-stack listener's clients match IPv4 rules.

An `Access` is what a route checks: its config lists (`ip_whitelist` / `ip_blacklist`) plus
the operator's runtime blocks for that route. Verdicts are memoised per client address string,
so a keep-alive client or a busy address costs one dict probe per request. The runtime blocks
are a NetSet changed in place; on each change the route gets a new Access, hence a new memo.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

_V4MAPPED = b"\x00" * 10 + b"\xff\xff"
_BITS = {4: 32, 6: 128}
VERDICT_CACHE = 65536  # memoised addresses per Access before the memo starts over


def parse_ip(text: str) -> tuple[int, int] | None:
    """(4 or 6, the address as an integer) of an IP literal; None if it is not one.

    IPv4-mapped IPv6 becomes IPv4; an IPv6 zone (``fe80::1%eth0``) is ignored.
    """
    try:
        if ":" in text:
            packed = socket.inet_pton(socket.AF_INET6, text.partition("%")[0])
            if packed[:12] == _V4MAPPED:
                return 4, int.from_bytes(packed[12:], "big")
            return 6, int.from_bytes(packed, "big")
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, ValueError):
        return None


def peer_forms(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[str, ...]:
    """Every way accept() spells `addr` as a peer address (inet_ntop's text): an IPv4 client
    is ``a.b.c.d`` on an IPv4 listener and ``::ffff:a.b.c.d`` on a dual-stack one."""
    if addr.version == 4:
        return str(addr), socket.inet_ntop(socket.AF_INET6, _V4MAPPED + addr.packed)
    return (socket.inet_ntop(socket.AF_INET6, addr.packed),)


def parse_network(text: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address or CIDR block in canonical form (host bits cleared); ValueError if invalid.

    IPv4-mapped IPv6 blocks of /96 or longer become the IPv4 block they contain.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected an IP address or CIDR block, got {type(text).__name__}")
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"not an IP address or CIDR block: {text!r}") from None
    if net.version == 6 and net.prefixlen >= 96 and net.network_address.ipv4_mapped is not None:
        net = ipaddress.IPv4Network((net.network_address.ipv4_mapped, net.prefixlen - 96))
    return net


class NetSet:
    """A set of networks answering "does it contain this address" in O(prefix lengths).

    It changes in place (`add`, `discard`: one set operation each, plus a re-sort of the
    prefix lengths when one appears or goes), so a runtime block costs no rebuild. Whoever
    memoises answers over a NetSet must forget them when it changes (see `Access`).
    """

    __slots__ = ("_by_shift", "_tables", "count")

    def __init__(
        self, networks: Iterable[str | ipaddress.IPv4Network | ipaddress.IPv6Network] = ()
    ) -> None:
        self._by_shift: dict[tuple[int, int], set[int]] = {}  # (version, host bits) -> nets
        self._tables: dict[int, tuple[tuple[int, set[int]], ...]] = {4: (), 6: ()}
        self.count = 0
        for item in networks:
            self.add(item)

    def __len__(self) -> int:
        return self.count

    def add(self, network: str | ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
        """Put a network in; False if it was there already."""
        version, shift, number = _key(network)
        nets = self._by_shift.get((version, shift))
        if nets is None:
            nets = self._by_shift[(version, shift)] = set()
            self._retable(version)
        elif number in nets:
            return False
        nets.add(number)
        self.count += 1
        return True

    def discard(self, network: str | ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
        """Take a network out; False if it was not there."""
        version, shift, number = _key(network)
        nets = self._by_shift.get((version, shift))
        if nets is None or number not in nets:
            return False
        nets.remove(number)
        self.count -= 1
        if not nets:
            del self._by_shift[(version, shift)]
            self._retable(version)
        return True

    def _retable(self, version: int) -> None:
        # Longest prefixes first: the order does not change the answer, only how soon it comes.
        self._tables[version] = tuple(
            (shift, nets)
            for (v, shift), nets in sorted(self._by_shift.items(), key=lambda kv: kv[0][1])
            if v == version
        )

    def contains(self, version: int, value: int) -> bool:
        # A plain loop: any() over a generator costs twice as much on this per-request path.
        for shift, nets in self._tables[version]:  # noqa: SIM110
            if value >> shift in nets:
                return True
        return False

    def contains_ip(self, text: str) -> bool:
        """Whether the IP literal `text` is in the set (False for anything unparsable)."""
        addr = parse_ip(text)
        return addr is not None and self.contains(*addr)

    def match_ip(self, text: str) -> str | None:
        """The network (canonical text) of the set that holds the IP literal `text`, the
        longest prefix if several do; None if none does."""
        addr = parse_ip(text)
        if addr is None:
            return None
        version, value = addr
        for shift, nets in self._tables[version]:
            number = value >> shift
            if number in nets:
                bits = _BITS[version]
                return str(ipaddress.ip_network((number << shift, bits - shift)))
        return None


def _key(network: str | ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int, int]:
    """(version, host bits, network number) of a network: where a NetSet keeps it."""
    net = parse_network(network) if isinstance(network, str) else network
    shift = _BITS[net.version] - net.prefixlen
    return net.version, shift, int(net.network_address) >> shift


class Access:
    """A route's verdict on client addresses: config whitelist/blacklist plus runtime blocks.

    Whitelist only: only listed addresses pass. Blacklist only: all but those. Both: whitelist
    minus blacklist. Runtime blocks (`blocked`) act as more blacklist entries. The memoised
    verdicts hold only while the sets stay as they are: after changing one, build a new Access.
    """

    __slots__ = ("_verdicts", "blacklist", "blocked", "scope", "whitelist")

    def __init__(
        self,
        whitelist: NetSet | None = None,
        blacklist: NetSet | None = None,
        blocked: NetSet | None = None,
        scope: str | None = None,
    ) -> None:
        self.whitelist = whitelist
        self.blacklist = blacklist
        self.blocked = blocked
        self.scope = scope  # the route key whose runtime blocks `blocked` holds
        self._verdicts: dict[str, bool] = {}

    def allows(self, ip: str) -> bool:
        verdict = self._verdicts.get(ip)
        if verdict is None:
            verdict = self._decide(ip)
            if len(self._verdicts) >= VERDICT_CACHE:
                self._verdicts.clear()
            self._verdicts[ip] = verdict
        return verdict

    def reason(self, ip: str) -> str:
        """Why `ip` is refused: "blocked" (a runtime block) or "acl" (the config lists)."""
        addr = parse_ip(ip)
        if addr is not None and self.blocked is not None and self.blocked.contains(*addr):
            return "blocked"
        return "acl"

    def _decide(self, ip: str) -> bool:
        addr = parse_ip(ip)
        if addr is None:
            # Not an IP (a Unix socket peer, say): only an open route lets it through.
            return self.whitelist is None
        if self.whitelist is not None and not self.whitelist.contains(*addr):
            return False
        if self.blacklist is not None and self.blacklist.contains(*addr):
            return False
        return not (self.blocked is not None and self.blocked.contains(*addr))


def compile_lists(whitelist: list[str], blacklist: list[str]) -> tuple[NetSet | None, ...]:
    """The config lists of a route as NetSets (None for an empty list)."""
    return (NetSet(whitelist) if whitelist else None, NetSet(blacklist) if blacklist else None)


def build_access(
    whitelist: NetSet | None, blacklist: NetSet | None, blocked: NetSet | None, scope: str
) -> Access | None:
    """The Access for the route named `scope`, or None when nothing restricts it (the
    per-request fast path)."""
    if whitelist is None and blacklist is None and blocked is None:
        return None
    return Access(whitelist, blacklist, blocked, scope)
