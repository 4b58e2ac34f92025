"""Operator changes layered over the config: IP blocks, gzip toggles and upstream drains,
kept in `state_file`.

The core exposes these as plain methods (`Core.block`, `unblock`, `blocks`, `set_gzip`,
`drain_upstream`, `enable_upstream`, `routes`) that run on the loop thread and return JSON-able
dicts; bad input raises `CommandError` with a message meant for the operator. Every change is
applied at once (route access checks rebuilt, a global block closing that address's open
connections, a drained upstream taken out of rotation) and written to the state file
atomically, and the state is read back when the core starts and reapplied on every reload, so
blocks, toggles and drains survive a restart or a crash.

Routes are named by their `req_path` in the first server (``"/api"``) and by
``"N:req_path"`` in `servers[N]` (``"1:/api"``); ``"0:/api"`` is accepted for ``"/api"``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

from xps_server.core.state import load_state, save_state
from xps_server.policy.acl import NetSet, build_access, compile_lists, parse_network
from xps_server.policy.blocklist import BlockList

if TYPE_CHECKING:
    from xps_server.config import Config, Route
    from xps_server.core.core import Core

log = logging.getLogger("xps.runtime")


class CommandError(ValueError):
    """An operator command that cannot be applied; the message says why."""


def route_key(server_index: int, req_path: str) -> str:
    """How operators name a route: its req_path, prefixed by the server index past the first."""
    return req_path if server_index == 0 else f"{server_index}:{req_path}"


class Runtime:
    """The runtime layer of one core: block list, gzip overrides, drains, their persistence."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.blocklist = BlockList()
        self.gzip_overrides: dict[str, bool] = {}
        self._config_gzip: dict[str, bool] = {}  # gzip_enable as the config file has it
        # Upstream addresses the operator drained; kept while the config does not name them,
        # so one coming back in a reload comes back drained.
        self.drained: set[str] = set()
        self._lists: dict[int, tuple] = {}  # id(route) -> its compiled config lists
        self._other: dict[str, Any] = {}  # state sections owned by others: kept as they are
        self._timer = core.loop.timer(self._expire)
        self._load()

    # --- config -------------------------------------------------------------------------------
    def attach(self, config: Config) -> None:
        """Compile every route's access check, apply gzip overrides and drains (start and
        reload; the core's upstream registry is configured for `config` first)."""
        lists: dict[int, tuple] = {}
        self._config_gzip = {}
        for index, server in enumerate(config.servers):
            for route in server.routes:
                key = route_key(index, route.req_path)
                found = self._lists.get(id(route))
                if found is None or found[0] is not route:
                    found = (route, *compile_lists(route.ip_whitelist, route.ip_blacklist))
                lists[id(route)] = found
                self._config_gzip[key] = route.gzip_enable
                if key in self.gzip_overrides:
                    route.gzip_enable = self.gzip_overrides[key]
        self._lists = lists
        self._apply_access(config)
        upstreams = self.core.upstreams
        for addr in self.drained:
            state = upstreams.get(addr)
            if state is not None:
                state.drain()  # a no-op for one still draining from before the reload

    def _apply_access(self, config: Config) -> None:
        route_sets = self.blocklist.route_sets
        for index, server in enumerate(config.servers):
            for route in server.routes:
                _, whitelist, blacklist = self._lists[id(route)]
                blocked = route_sets.get(route_key(index, route.req_path))
                route.access = build_access(whitelist, blacklist, blocked)

    def resolve(self, key: object) -> tuple[str, Route]:
        """(canonical key, Route) for a route name; CommandError if there is no such route."""
        if not isinstance(key, str) or not key.strip():
            raise CommandError(f"expected a route such as '/api' or '1:/api', got {key!r}")
        text = key.strip()
        index = 0
        head, sep, rest = text.partition(":")
        if sep and head.isdigit():
            index, text = int(head), rest
        if len(text) > 1 and text.endswith("/"):
            text = text[:-1]  # as the config reads req_path
        servers = self.core.config.servers
        if index >= len(servers):
            raise CommandError(f"unknown route {key!r}: there is no servers[{index}]")
        route = servers[index].route_map.get(text)
        if route is None:
            known = ", ".join(route_key(index, r.req_path) for r in servers[index].routes)
            raise CommandError(f"unknown route {key!r} (routes: {known})")
        return route_key(index, text), route

    # --- blocks -------------------------------------------------------------------------------
    def block(self, cidr: object, route: object = None, seconds: object = None) -> dict[str, Any]:
        network = _network(cidr)
        key = None if route is None else self.resolve(route)[0]
        expires_at = None
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, int | float):
                raise CommandError(f"seconds must be a number, got {seconds!r}")
            if not (math.isfinite(seconds) and seconds > 0):
                raise CommandError(f"seconds must be a finite number > 0, got {seconds!r}")
            expires_at = time.time() + seconds
        self.blocklist.add(network, key, expires_at)
        self._changed()
        closed = 0
        if key is None:
            closed = self._close_connections(NetSet([network]))
        log.info(
            "blocked %s %s%s (%d connections closed)",
            network,
            "globally" if key is None else f"on route {key}",
            "" if seconds is None else f" for {seconds:g} s",
            closed,
        )
        return {
            "cidr": network,
            "route": key,
            "expires_at": expires_at,
            "closed": closed,
            "persisted": self._persisted,
        }

    def unblock(self, cidr: object, route: object = None) -> dict[str, Any]:
        network = _network(cidr)
        key = None
        if route is not None:
            try:
                key = self.resolve(route)[0]
            except CommandError:
                # A block may outlive its route (config reloaded): remove it by its name.
                if route not in {scope for scope, _ in self.blocklist.entries}:
                    raise
                key = route
        removed = self.blocklist.remove(network, key)
        if removed:
            self._changed()
            log.info("unblocked %s %s", network, "globally" if key is None else f"on {key}")
        return {"cidr": network, "route": key, "removed": removed, "persisted": self._persisted}

    def blocks(self) -> list[dict[str, Any]]:
        return self.blocklist.listing(time.time())

    def _close_connections(self, networks: NetSet) -> int:
        doomed = [s for s in self.core.sessions.values() if networks.contains_ip(s.conn.peer_ip)]
        for session in doomed:
            session.conn.close()
        return len(doomed)

    def _expire(self) -> None:
        if self.blocklist.expire(time.time()):
            self._changed()
        else:
            self._schedule()

    def _schedule(self) -> None:
        at = self.blocklist.next_expiry()
        if at is None:
            self._timer.cancel()
        else:
            loop = self.core.loop
            self._timer.reset(loop.now + max(0.0, at - time.time()))

    # --- gzip ---------------------------------------------------------------------------------
    def set_gzip(self, route: object, enabled: object) -> dict[str, Any]:
        """Turn gzip on or off for a route; None drops the override (back to the config)."""
        key, found = self.resolve(route)
        if enabled is None:
            self.gzip_overrides.pop(key, None)
            found.gzip_enable = self._config_gzip.get(key, found.gzip_enable)
        elif isinstance(enabled, bool):
            self.gzip_overrides[key] = enabled
            found.gzip_enable = enabled
        else:
            raise CommandError(f"enabled must be true, false or null, got {enabled!r}")
        self._save()
        log.info("gzip %s on route %s", "on" if found.gzip_enable else "off", key)
        return {
            "route": key,
            "gzip_enable": found.gzip_enable,
            "override": self.gzip_overrides.get(key),
            "persisted": self._persisted,
        }

    # --- upstreams ----------------------------------------------------------------------------
    def drain_upstream(self, addr: str) -> dict[str, Any]:
        """Take an upstream out of rotation (KeyError if unknown) and remember it."""
        row = self.core.upstreams.drain(addr)
        self.drained.add(row["addr"])
        self._save()
        log.info("upstream %s drained", row["addr"])
        row["persisted"] = self._persisted
        return row

    def enable_upstream(self, addr: str) -> dict[str, Any]:
        """Put an upstream back in rotation: undoes a drain (forgotten in the state file too) or
        a passive-health down (never persisted). An address the config no longer names can
        still have its drain forgotten; any other unknown address is a KeyError."""
        upstreams = self.core.upstreams
        if addr in self.drained and addr not in upstreams:
            row: dict[str, Any] = {"addr": addr, "state": "unknown"}
        else:
            row = upstreams.enable(addr)
        if addr in self.drained:
            self.drained.discard(addr)
            self._save()
            log.info("upstream %s enabled", addr)
        row["persisted"] = self._persisted
        return row

    # --- listing ------------------------------------------------------------------------------
    def acl_routes(self) -> list[dict[str, Any]]:
        """Per route: its config lists and its runtime blocks (only routes with any)."""
        per_route: dict[str | None, list[str]] = {}
        for scope, network in self.blocklist.entries:
            per_route.setdefault(scope, []).append(network)
        rows = []
        for index, server in enumerate(self.core.config.servers):
            for route in server.routes:
                key = route_key(index, route.req_path)
                blocked = sorted(per_route.get(key, ()))
                if route.ip_whitelist or route.ip_blacklist or blocked:
                    rows.append(
                        {
                            "route": key,
                            "ip_whitelist": list(route.ip_whitelist),
                            "ip_blacklist": list(route.ip_blacklist),
                            "blocked": blocked,
                        }
                    )
        return rows

    # --- persistence --------------------------------------------------------------------------
    _persisted: bool | None = None  # outcome of the last save; None when there is no state file

    def _changed(self) -> None:
        """The block list changed: re-apply it, persist it and re-arm the expiry timer."""
        self._apply_access(self.core.config)
        self._save()
        self._schedule()

    def _save(self) -> None:
        path = self.core.config.state_file
        if path is None:
            self._persisted = None
            return
        data = dict(self._other)
        data["blocks"] = self.blocklist.to_json()
        data["gzip"] = dict(self.gzip_overrides)
        data["drained"] = sorted(self.drained)
        try:
            save_state(path, data)
        except OSError as exc:
            log.error("cannot write state file %s: %s", path, exc)
            self._persisted = False
        else:
            self._persisted = True

    def _load(self) -> None:
        path = self.core.config.state_file
        if path is None:
            return
        try:
            data = load_state(path)
        except ValueError as exc:
            log.error("ignoring the state file: %s", exc)
            return
        problems = self.blocklist.load_json(data.pop("blocks", []), time.time())
        gzip = data.pop("gzip", {})
        if isinstance(gzip, dict):
            self.gzip_overrides = {k: v for k, v in gzip.items() if isinstance(v, bool)}
        else:
            problems.append("gzip: expected an object")
        drained = data.pop("drained", [])
        if isinstance(drained, list):
            for index, addr in enumerate(drained):
                if isinstance(addr, str) and addr.rpartition(":")[2].isdecimal():
                    self.drained.add(addr)
                else:
                    problems.append(f"drained[{index}]: expected 'host:port', got {addr!r}")
        else:
            problems.append("drained: expected a list of 'host:port'")
        data.pop("version", None)
        self._other = data
        for problem in problems:
            log.warning("state file %s: %s (entry skipped)", path, problem)
        self._schedule()


def _network(cidr: object) -> str:
    try:
        return str(parse_network(cidr))  # type: ignore[arg-type]
    except ValueError as exc:
        raise CommandError(str(exc)) from None
