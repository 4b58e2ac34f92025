"""Operator changes layered over the config: IP blocks, gzip toggles and upstream drains,
kept in `state_file`.

The core exposes these as plain methods (`Core.block`, `unblock`, `blocks`, `set_gzip`,
`drain_upstream`, `enable_upstream`, `routes`) that run on the loop thread and return JSON-able
dicts; bad input raises `CommandError` with a message meant for the operator. Every change is
applied at once and costs the same whatever the number of blocks: the block list changes
incrementally, only the route a block names gets a new access check, a global block closes
that address's open connections (a block on a route, its tunnels on that route) through the
core's index of sessions by client address, and a drained upstream is taken out of rotation.
The state file is written off the loop thread (`StateWriter`: one snapshot per write, one
fsync for any number of changes); `when_durable` tells a caller once the state as it is now
is on disk, which is what a command's `persisted` reports. The state is read back when the
core starts and reapplied on every reload, so blocks, toggles and drains survive a restart or
a crash.

In a fleet (config `fleet`), each local change is also handed to `fleet` (the core's
`FleetLink`, see `fleetlink.py`) as a small dict, and changes other instances made come back
through `apply_shared`, which applies them the same way but never hands them on again.

At start, temporary files a crashed write left beside the state file (``<state_file>.<pid>.tmp``)
are removed, and a state file that cannot be read or decoded is kept aside as
``<state_file>.corrupt-<UTC time>`` (the server then starts with empty runtime state) instead
of being overwritten by the next change.

Routes are named by their `req_path` in the first server (``"/api"``) and by
``"N:req_path"`` in `servers[N]` (``"1:/api"``); ``"0:/api"`` is accepted for ``"/api"``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from xps_server.config.routes import parse_route_name, route_key
from xps_server.policy.acl import NetSet, build_access, parse_network, peer_forms
from xps_server.policy.blocklist import BlockList
from xps_server.server.commands import CommandError
from xps_server.server.state import load_state
from xps_server.server.state_writer import Durable, StateWriter

if TYPE_CHECKING:
    from xps_server.config import Config
    from xps_server.server.core import Core
    from xps_server.server.routing import RouteState, Routing
    from xps_server.server.session import Session

log = logging.getLogger("xps.runtime")


class Sharing(Protocol):
    """What the runtime tells of each local change: the fleet link."""

    def publish(self, change: dict[str, Any]) -> None: ...


class SharedState(NamedTuple):
    """The part of the runtime state a fleet shares: blocks as (cidr, route, expires_at,
    reason), gzip overrides by route key, drained upstream addresses."""

    blocks: list[tuple[str, str | None, float | None, str | None]]
    gzip: dict[str, bool]
    drained: list[str]


class Runtime:
    """The runtime layer of one core: block list, gzip overrides, drains, their persistence."""

    def __init__(self, core: Core, state: dict[str, Any] | None = None) -> None:
        """`state`: the runtime state to start from (a worker's, from its master) instead of
        the state file's."""
        self.core = core
        self.blocklist = BlockList()
        self.gzip_overrides: dict[str, bool] = {}
        # Upstream addresses the operator drained; kept while the config does not name them,
        # so one coming back in a reload comes back drained.
        self.drained: set[str] = set()
        self._states: dict[str, RouteState] = {}  # route key -> its state, running config
        self._other: dict[str, Any] = {}  # state sections owned by others: kept as they are
        self._timer = core.loop.timer(self._expire)
        self._state_path = core.config.state_file
        self.state = StateWriter(core.loop, self._snapshot)
        # Where local changes go to be shared with the fleet (the fleet link); None: alone.
        self.fleet: Sharing | None = None
        # Told of each change another instance made, once applied here (a master fans it out
        # to its workers); None: nobody.
        self.on_shared: Callable[[dict[str, Any]], None] | None = None
        if state is None:
            self._load()
        else:
            self._restore(dict(state), "the master's runtime state")

    def content(self) -> dict[str, Any]:
        """The runtime state as the state file holds it (what a new worker starts from)."""
        return self._snapshot()[1]()

    # --- config -------------------------------------------------------------------------------
    def attach(self, config: Config, routing: Routing) -> None:
        """Give every route its access check and the operator's gzip switch, and apply the
        drains (start and reload; the core's upstream registry is configured first)."""
        self._states = routing.states
        for key, state in routing.states.items():
            state.gzip_enable = self.gzip_overrides.get(key, state.route.gzip_enable)
            self._refresh_access(key)
        upstreams = self.core.upstreams
        for addr in self.drained:
            upstream = upstreams.get(addr)
            if upstream is not None:
                upstream.drain()  # a no-op for one still draining from before the reload
        if config.state_file != self._state_path:
            # The state now belongs in another file: write it there.
            self._state_path = config.state_file
            self.state.changed()

    def _refresh_access(self, key: str | None) -> None:
        """Give the route named `key` the access check its lists and blocks make now. A new
        `Access` each time: its memoised verdicts were taken under the old sets."""
        if key is None:
            return  # a global block: checked at accept
        state = self._states.get(key)
        if state is None:
            return  # a block that outlived its route
        blocked = self.blocklist.route_sets.get(key)
        state.access = build_access(state.whitelist, state.blacklist, blocked, key)

    def resolve(self, key: object) -> tuple[str, RouteState]:
        """(canonical key, state) for a route name; CommandError if there is no such route."""
        if not isinstance(key, str) or not key.strip():
            raise CommandError(f"expected a route such as '/api' or '1:/api', got {key!r}")
        index, text = parse_route_name(key.strip())
        servers = self.core.config.servers
        if index >= len(servers):
            raise CommandError(f"unknown route {key!r}: there is no servers[{index}]")
        state = self._states.get(route_key(index, text))
        if state is None:
            known = ", ".join(route_key(index, r.req_path) for r in servers[index].routes)
            raise CommandError(f"unknown route {key!r} (routes: {known})")
        return state.key, state

    # --- blocks -------------------------------------------------------------------------------
    def block(
        self,
        cidr: object,
        route: object = None,
        seconds: object = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Block `cidr` globally (route None) or on a route, for `seconds` or until unblocked;
        `reason` says what made the block (None: the operator). Operators' commands and the
        automatic blocks both come here."""
        network = _network(cidr)
        key = None if route is None else self.resolve(route)[0]
        expires_at = None
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, int | float):
                raise CommandError(f"seconds must be a number, got {seconds!r}")
            if not (math.isfinite(seconds) and seconds > 0):
                raise CommandError(f"seconds must be a finite number > 0, got {seconds!r}")
            expires_at = time.time() + seconds
        closed = self._put_block(network, key, expires_at, reason)
        self._share(
            {
                "op": "block",
                "cidr": network,
                "route": key,
                "expires_at": expires_at,
                "reason": reason,
            }
        )
        log.info(
            "blocked %s %s%s (%d connections closed)%s",
            network,
            "globally" if key is None else f"on route {key}",
            "" if seconds is None else f" for {seconds:g} s",
            closed,
            "" if reason is None else f": {reason}",
        )
        return {
            "cidr": network,
            "route": key,
            "expires_at": expires_at,
            "closed": closed,
            "reason": reason,
        }

    def outlasts(self, ip: str, seconds: float) -> bool:
        """Whether a global block of exactly `ip` already lasts at least `seconds` more (an
        automatic block must never shorten one, an operator's least of all)."""
        at = self.blocklist.entries.get((None, _network(ip)), _NONE)
        return at is None or (at is not _NONE and at >= time.time() + seconds)

    def unblock(self, cidr: object, route: object = None) -> dict[str, Any]:
        network = _network(cidr)
        key = None
        if route is not None:
            try:
                key = self.resolve(route)[0]
            except CommandError:
                # A block may outlive its route (config reloaded): remove it by its name.
                if not (isinstance(route, str) and self.blocklist.has_scope(route)):
                    raise
                key = route
        removed = self._drop_block(network, key)
        # Shared even when it held nothing here: another instance may hold it.
        self._share({"op": "unblock", "cidr": network, "route": key})
        return {"cidr": network, "route": key, "removed": removed}

    def _put_block(
        self, network: str, key: str | None, expires_at: float | None, reason: str | None
    ) -> int:
        """Add or update a block and close what it refuses; the connections closed."""
        if self.blocklist.add(network, key, expires_at, reason):
            self._blocks_changed(key)
        return self._close_connections(network, key)

    def _drop_block(self, network: str, key: str | None) -> bool:
        removed = self.blocklist.remove(network, key)
        if removed:
            self._blocks_changed(key)
            log.info("unblocked %s %s", network, "globally" if key is None else f"on {key}")
        return removed

    def blocks(self) -> list[dict[str, Any]]:
        return self.blocklist.listing(time.time())

    def _close_connections(self, network: str, route: str | None) -> int:
        """Close the open connections of clients in `network`: all of them for a global block;
        for a block on `route`, their tunnels on it (a tunnel makes no further request that
        the block could refuse). One address is a dict probe per way accept() spells it
        (IPv4-mapped on a dual-stack listener); a wider block checks each distinct client
        address once, never every session."""
        by_ip = self.core.sessions_by_ip
        net = parse_network(network)
        if net.prefixlen == net.max_prefixlen:
            groups = [by_ip.get(text) for text in peer_forms(net.network_address)]
        else:
            matcher = NetSet([net])
            groups = [group for ip, group in by_ip.items() if matcher.contains_ip(ip)]
        doomed = [session for group in groups if group for session in group.values()]
        if route is not None:
            doomed = [s for s in doomed if s.tunnel is not None and _on_route(s, route)]
        for session in doomed:
            session.conn.close()  # leaves the index through Core.session_closed
        return len(doomed)

    def _expire(self) -> None:
        gone = self.blocklist.expire(time.time())
        if gone:
            for scope in {scope for scope, _ in gone}:
                self._refresh_access(scope)
            self.state.changed()
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
        if enabled is not None and not isinstance(enabled, bool):
            raise CommandError(f"enabled must be true, false or null, got {enabled!r}")
        self._put_gzip(key, found, enabled)
        self._share({"op": "gzip", "route": key, "enabled": enabled})
        return {
            "route": key,
            "gzip_enable": found.gzip_enable,
            "override": self.gzip_overrides.get(key),
        }

    def _put_gzip(self, key: str, found: RouteState, enabled: bool | None) -> None:
        if enabled is None:
            self.gzip_overrides.pop(key, None)
            found.gzip_enable = found.route.gzip_enable
        else:
            self.gzip_overrides[key] = enabled
            found.gzip_enable = enabled
        self.state.changed()
        log.info("gzip %s on route %s", "on" if found.gzip_enable else "off", key)

    # --- upstreams ----------------------------------------------------------------------------
    def drain_upstream(self, addr: str) -> dict[str, Any]:
        """Take an upstream out of rotation (KeyError if unknown) and remember it."""
        row = self.core.upstreams.drain(addr)
        self.drained.add(row["addr"])
        self.state.changed()
        self._share({"op": "drain", "addr": row["addr"]})
        log.info("upstream %s drained", row["addr"])
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
            self.state.changed()
            self._share({"op": "enable", "addr": addr})
            log.info("upstream %s enabled", addr)
        return row

    # --- the fleet ----------------------------------------------------------------------------
    def _share(self, change: dict[str, Any]) -> None:
        fleet = self.fleet
        if fleet is not None:
            fleet.publish(change)

    def apply_shared(self, change: dict[str, Any]) -> None:
        """Apply a change another instance of the fleet made (validated by the fleet link), as
        the command would here, but without sharing it again. A route or upstream this
        instance does not know is kept as a block or a drain (a reload may bring it) and
        skipped for gzip."""
        op = change["op"]
        if op == "block":
            self._put_block(
                change["cidr"], change["route"], change["expires_at"], change.get("reason")
            )
        elif op == "unblock":
            self._drop_block(change["cidr"], change["route"])
        elif op == "gzip":
            found = self._states.get(change["route"])
            if found is not None and self.gzip_overrides.get(found.key) != change["enabled"]:
                self._put_gzip(found.key, found, change["enabled"])
        elif op == "drain":
            addr = change["addr"]
            if addr not in self.drained:
                self.drained.add(addr)
                self.state.changed()
                if addr in self.core.upstreams:
                    self.core.upstreams.drain(addr)
        elif op == "enable":
            addr = change["addr"]
            if addr in self.drained:
                self.drained.discard(addr)
                self.state.changed()
                if addr in self.core.upstreams:
                    self.core.upstreams.enable(addr)
        if self.on_shared is not None:
            self.on_shared(change)

    def shared_state(self) -> SharedState:
        """Copies of what the fleet shares, as this instance holds it (for a reconciliation)."""
        reasons = self.blocklist.reasons
        return SharedState(
            [
                (network, route, at, reasons.get((route, network)))
                for (route, network), at in self.blocklist.entries.items()
            ],
            dict(self.gzip_overrides),
            sorted(self.drained),
        )

    # --- listing ------------------------------------------------------------------------------
    def acl_routes(self) -> list[dict[str, Any]]:
        """Per route: its config lists and its runtime blocks (only routes with any)."""
        per_route: dict[str | None, list[str]] = {}
        for scope, network in self.blocklist.entries:
            per_route.setdefault(scope, []).append(network)
        rows = []
        for key, state in self._states.items():
            route = state.route
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
    def when_durable(self, callback: Durable) -> None:
        """Call `callback` on the loop thread once the runtime state as it is now is in the
        state file: True when written and fsynced, False when that write failed, None when
        there is no state file. At once if nothing is waiting to be written."""
        if self.core.config.state_file is None:
            callback(None)
        else:
            self.state.when_durable(callback)

    def close(self) -> None:
        """Write what is not on disk yet and stop the writer (after the loop has stopped)."""
        self.state.close()

    def _blocks_changed(self, scope: str | None) -> None:
        """The block list changed on `scope`: re-check that route, persist, re-arm expiry."""
        self._refresh_access(scope)
        self.state.changed()
        self._schedule()

    def _snapshot(self) -> tuple[str | None, Callable[[], dict[str, Any]]]:
        """The state file's path (None: there is none) and a function building its content
        from copies taken now: the writer thread calls it, the loop only copies."""
        path = self.core.config.state_file
        blocks = list(self.blocklist.entries.items())
        reasons = dict(self.blocklist.reasons)
        other = dict(self._other)  # sections of others are replaced whole, never changed
        gzip = dict(self.gzip_overrides)
        drained = sorted(self.drained)

        def build() -> dict[str, Any]:
            return {
                **other,
                "blocks": BlockList.format(blocks, reasons),
                "gzip": gzip,
                "drained": drained,
            }

        return path, build

    def _load(self) -> None:
        path = self.core.config.state_file
        if path is None:
            return
        _remove_stale_temporaries(path)
        try:
            data = load_state(path)
        except ValueError as exc:
            _set_aside(path, str(exc))
            return
        self._restore(data, f"state file {path}")

    def _restore(self, data: dict[str, Any], source: str) -> None:
        """Take the blocks, gzip switches and drains of `data` (decoded state file content)."""
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
            log.warning("%s: %s (entry skipped)", source, problem)
        self._schedule()


def _remove_stale_temporaries(path: str) -> None:
    """Remove ``<path>.<pid>.tmp`` files: half-written states of a writer that crashed."""
    folder = os.path.dirname(path) or "."
    prefix = os.path.basename(path) + "."
    try:
        names = os.listdir(folder)
    except OSError:
        return  # an unreadable folder: loading the file says what is wrong
    for name in names:
        middle = name[len(prefix) : -len(".tmp")]
        if name.startswith(prefix) and name.endswith(".tmp") and middle.isdecimal():
            stale = os.path.join(folder, name)
            try:
                os.unlink(stale)
            except OSError as exc:
                log.warning("cannot remove the stale temporary state file %s: %s", stale, exc)
            else:
                log.warning("removed %s, left by an interrupted write of the state file", stale)


def _set_aside(path: str, problem: str) -> None:
    """Move an unusable state file out of the way, so no later write replaces what it holds."""
    if not os.path.isfile(path):
        log.error("state file unusable: %s; starting with empty runtime state", problem)
        return
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = f"{path}.corrupt-{stamp}"
    suffix = 1
    while os.path.lexists(aside):
        suffix += 1
        aside = f"{path}.corrupt-{stamp}-{suffix}"
    try:
        os.rename(path, aside)
    except OSError as exc:
        log.error(
            "state file unusable: %s; it cannot be moved aside to %s either (%s); starting with "
            "empty runtime state, and the next change will replace %s",
            problem,
            aside,
            exc.strerror or exc,
            path,
        )
    else:
        log.error(
            "state file unusable: %s; moved %s to %s and starting with empty runtime state",
            problem,
            path,
            aside,
        )


def _on_route(session: Session, route: str) -> bool:
    state = session.route_state
    return state is not None and state.key == route


_NONE: Any = object()


def _network(cidr: object) -> str:
    try:
        return str(parse_network(cidr))
    except ValueError as exc:
        raise CommandError(str(exc)) from None
