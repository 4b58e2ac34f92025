"""The runtime block list: addresses and CIDR blocks an operator refused, beside the config.

An entry is a network, a scope and an optional expiry. The scope is None for a global block
(refused at accept time) or a route key (that route answers 403). Expiry is wall-clock time,
so it means the same after a restart. This module is pure data: the core schedules expiry on
its loop, applies the compiled sets to routes and persists `to_json()` in the state file.
"""

from __future__ import annotations

import math
from typing import Any

from .acl import NetSet, parse_network


class BlockList:
    """Entries keyed by (scope, canonical network), with compiled sets for matching."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str | None, str], float | None] = {}
        self.global_set: NetSet | None = None  # what accept checks; None when nothing is blocked
        self.route_sets: dict[str, NetSet] = {}

    def add(self, network: str, route: str | None, expires_at: float | None) -> None:
        """Block `network` (already canonical) globally or on `route`; replaces an expiry."""
        self.entries[(route, network)] = expires_at
        self._rebuild()

    def remove(self, network: str, route: str | None) -> bool:
        found = self.entries.pop((route, network), _MISSING) is not _MISSING
        if found:
            self._rebuild()
        return found

    def expire(self, now: float) -> bool:
        """Drop entries whose time has come; True if any went."""
        gone = [key for key, at in self.entries.items() if at is not None and at <= now]
        for key in gone:
            del self.entries[key]
        if gone:
            self._rebuild()
        return bool(gone)

    def next_expiry(self) -> float | None:
        times = [at for at in self.entries.values() if at is not None]
        return min(times) if times else None

    def listing(self, now: float) -> list[dict[str, Any]]:
        """Live entries, global ones first, as JSON-able dicts."""
        rows = []
        for (route, network), at in self.entries.items():
            if at is not None and at <= now:
                continue  # expired, about to be dropped by the timer
            rows.append(
                {
                    "cidr": network,
                    "route": route,
                    "expires_at": at,
                    "expires_in": None if at is None else round(at - now, 3),
                }
            )
        rows.sort(key=lambda row: (row["route"] is not None, row["route"] or "", row["cidr"]))
        return rows

    # --- persistence ------------------------------------------------------------------------
    def to_json(self) -> list[dict[str, Any]]:
        return [
            {"cidr": network, "route": route, "expires_at": at}
            for (route, network), at in self.entries.items()
        ]

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
            except ValueError as exc:
                problems.append(f"blocks[{i}]: {exc}")
                continue
            if at is None or at > now:
                self.entries[(route, network)] = at
        self._rebuild()
        return problems

    # --- compiled form ----------------------------------------------------------------------
    def _rebuild(self) -> None:
        scoped: dict[str | None, list[str]] = {}
        for route, network in self.entries:
            scoped.setdefault(route, []).append(network)
        found = scoped.pop(None, None)
        self.global_set = NetSet(found) if found else None
        self.route_sets = {route: NetSet(networks) for route, networks in scoped.items()}


_MISSING = object()
