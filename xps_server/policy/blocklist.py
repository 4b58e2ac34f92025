"""The runtime block list: addresses and CIDR blocks an operator refused, beside the config.

An entry is a network, a scope, an optional expiry and an optional reason (what made it,
e.g. "auto: rate_limited 100/10s"; none for an operator's block). The scope is None for a
global block (refused at accept time) or a route key (that route answers 403). Expiry is
wall-clock time, so it means the same after a restart. This module is pure data: the core
schedules expiry on its loop, applies the sets to routes and persists the entries (`format`)
in the state file.

Every change is incremental, whatever the number of entries: adding or removing a block is
one NetSet operation on its scope's set (`global_set` or `route_sets[route]`, changed in
place), and expiries sit in a heap, so the next one is found and dropped in O(log n). Heap
entries made stale by an unblock or a new expiry are skipped when they surface, and the heap
is rebuilt once they outnumber the live ones.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from typing import Any, NotRequired, TypedDict

from .acl import NetSet, parse_network

COMPACT_SLACK = 1024  # stale heap entries tolerated beyond the live ones before a rebuild


class SavedBlock(TypedDict):
    """One entry as the state file keeps it."""

    cidr: str
    route: str | None
    expires_at: float | None
    reason: NotRequired[str]


class BlockList:
    """Entries keyed by (scope, canonical network), with their sets kept in step for matching."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str | None, str], float | None] = {}
        # Connections or requests each entry refused, since it was added (not persisted).
        self.hits: dict[tuple[str | None, str], int] = {}
        self.reasons: dict[tuple[str | None, str], str] = {}  # only entries with a reason
        self.global_set: NetSet | None = None  # what accept checks; None when nothing is blocked
        self.route_sets: dict[str, NetSet] = {}  # only routes with blocks
        # (expires_at, tie-breaker, route, network); live while `entries` has that expiry.
        self._expiries: list[tuple[float, int, str | None, str]] = []
        self._timed = 0  # entries with an expiry (the live heap entries)
        self._pushed = 0

    def add(
        self, network: str, route: str | None, expires_at: float | None, reason: str | None = None
    ) -> bool:
        """Block `network` (already canonical) globally or on `route`; replaces an expiry and
        a reason. False if exactly that entry was there already."""
        key = (route, network)
        old = self.entries.get(key, _MISSING)
        reasons = self.reasons
        reason_changed = reason != reasons.get(key)
        if reason_changed:
            if reason is None:
                del reasons[key]
            else:
                reasons[key] = reason
        if old == expires_at:
            return reason_changed
        self.entries[key] = expires_at
        if old is _MISSING:
            self._set_for(route).add(network)
        elif old is not None:
            self._timed -= 1
        if expires_at is not None:
            self._timed += 1
            self._pushed += 1
            heapq.heappush(self._expiries, (expires_at, self._pushed, route, network))
        self._compact_if_stale()
        return True

    def remove(self, network: str, route: str | None) -> bool:
        at = self.entries.pop((route, network), _MISSING)
        if at is _MISSING:
            return False
        self.hits.pop((route, network), None)
        self.reasons.pop((route, network), None)
        if at is not None:
            self._timed -= 1
            self._compact_if_stale()
        self._drop_from_set(route, network)
        return True

    def expire(self, now: float) -> list[tuple[str | None, str]]:
        """Drop entries whose time has come; returns their (scope, network)."""
        heap = self._expiries
        entries = self.entries
        gone = []
        while heap and heap[0][0] <= now:
            at, _, route, network = heapq.heappop(heap)
            key = (route, network)
            if entries.get(key, _MISSING) != at:
                continue  # unblocked or given another expiry since
            del entries[key]
            self.hits.pop(key, None)
            self.reasons.pop(key, None)
            self._timed -= 1
            self._drop_from_set(route, network)
            gone.append(key)
        return gone

    def next_expiry(self) -> float | None:
        heap = self._expiries
        entries = self.entries
        while heap and entries.get((heap[0][2], heap[0][3]), _MISSING) != heap[0][0]:
            heapq.heappop(heap)  # a stale entry surfaced
        return heap[0][0] if heap else None

    def hit(self, route: str | None, ip: str) -> str | None:
        """Count a refusal of `ip` on `route` (None: global) against the entry that refused it;
        that entry's network, or None if no entry of that scope holds `ip`."""
        found = self.global_set if route is None else self.route_sets.get(route)
        network = found.match_ip(ip) if found is not None else None
        if network is not None:
            key = (route, network)
            self.hits[key] = self.hits.get(key, 0) + 1
        return network

    def has_scope(self, route: str) -> bool:
        """Whether any entry blocks on `route` (which may be gone from the config)."""
        return route in self.route_sets

    def listing(self, now: float) -> list[dict[str, Any]]:
        """Live entries, global ones first, as JSON-able dicts."""
        rows = []
        hits = self.hits
        reasons = self.reasons
        for key, at in self.entries.items():
            if at is not None and at <= now:
                continue  # expired, about to be dropped by the timer
            route, network = key
            rows.append(
                {
                    "cidr": network,
                    "route": route,
                    "expires_at": at,
                    "expires_in": None if at is None else round(at - now, 3),
                    "hits": hits.get(key, 0),
                    "reason": reasons.get(key),
                }
            )
        rows.sort(key=lambda row: (row["route"] is not None, row["route"] or "", row["cidr"]))
        return rows

    # --- persistence ------------------------------------------------------------------------
    @staticmethod
    def format(
        entries: Iterable[tuple[tuple[str | None, str], float | None]],
        reasons: dict[tuple[str | None, str], str],
    ) -> list[SavedBlock]:
        """Entries (as `entries.items()` has them, or a copy) and their reasons (`reasons` or
        a copy) as the state file keeps them."""
        saved: list[SavedBlock] = []
        for key, at in entries:
            route, network = key
            block: SavedBlock = {"cidr": network, "route": route, "expires_at": at}
            reason = reasons.get(key)
            if reason is not None:
                block["reason"] = reason
            saved.append(block)
        return saved

    def load_json(self, items: object, now: float) -> list[str]:
        """Add the entries of a saved list, skipping expired ones; returns problems found."""
        problems = []
        if not isinstance(items, list):
            return [f"blocks: expected a list, got {type(items).__name__}"]
        for i, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise ValueError("expected an object")
                network = str(parse_network(item.get("cidr")))
                route = item.get("route")
                if route is not None and not isinstance(route, str):
                    raise ValueError("route must be a string or null")
                at = item.get("expires_at")
                if at is not None and (
                    isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at)
                ):
                    raise ValueError("expires_at must be a number or null")
                reason = item.get("reason")
                if reason is not None and not isinstance(reason, str):
                    raise ValueError("reason must be a string or null")
            except ValueError as exc:
                problems.append(f"blocks[{i}]: {exc}")
                continue
            if at is None or at > now:
                self.add(network, route, at, reason)
        return problems

    # --- sets and heap ----------------------------------------------------------------------
    def _set_for(self, route: str | None) -> NetSet:
        if route is None:
            if self.global_set is None:
                self.global_set = NetSet()
            return self.global_set
        found = self.route_sets.get(route)
        if found is None:
            found = self.route_sets[route] = NetSet()
        return found

    def _drop_from_set(self, route: str | None, network: str) -> None:
        if route is None:
            found = self.global_set
            assert found is not None
            found.discard(network)
            if not found:
                self.global_set = None  # accept's fast path: nothing blocked
        else:
            found = self.route_sets[route]
            found.discard(network)
            if not found:
                del self.route_sets[route]

    def _compact_if_stale(self) -> None:
        heap = self._expiries
        if len(heap) > 2 * self._timed + COMPACT_SLACK:
            entries = self.entries
            live = [e for e in heap if entries.get((e[2], e[3]), _MISSING) == e[0]]
            heapq.heapify(live)
            self._expiries = live


_MISSING = object()
