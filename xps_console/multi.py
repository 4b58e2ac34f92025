"""Several headless servers as one: `xps-console --attach A.sock --attach B.sock`.

`MultiLink` holds one `AttachedLink` per control socket (each reconnects on its own) and is a
`Link` like the others, so the app draws one dashboard:
- reads (`snapshot`, `top`, `blocks`...) go to every instance that is connected and the
  replies are merged with the master's merge functions (`xps_server.server.merge`): counters
  added, peaks the highest, session rows tagged with their `instance`;
- an instance is named by its fleet name (the snapshot's `fleet` object) or else by its
  socket's file name; a session's id becomes `instance:id`, and a command aimed at a session
  (`kill`, `session`) goes to its instance with the id that instance knows;
- `block` and `unblock` go to every instance, unless all of them are in one Redis fleet (same
  Redis, same prefix) and the first reaches Redis: then that one is enough, the fleet shares
  it; `gzip`, `drain`, `enable` and `reload` go to every instance. The reply says where;
- events are merged into one stream, each tagged with its instance. One instance going away
  is news (`instance_lost`, `instance_back`), not a lost console: the dashboard greys out
  (`link_closed`) only when none is left, and comes back (`link_restored`) with the first.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from xps_console.link import AttachedLink, Link, LinkError
from xps_server.server.merge import (
    SESSION_ORDER,
    merge_figures,
    merge_metrics,
    merge_top,
    merge_upstreams,
)

# Commands that change a server: each goes to every instance (blocks perhaps to one, above).
EVERYWHERE = frozenset(("gzip", "drain", "enable", "reload"))
SHARED_BY_FLEET = frozenset(("block", "unblock"))
SESSION_ARG = {"kill": "session", "session": "id"}  # commands aimed at one session: its arg
SEPARATOR = ":"  # between an instance's name and a session id it gave


@dataclass
class Instance:
    """One attached server and what its last snapshot said about it."""

    link: AttachedLink
    default_name: str
    name: str = ""
    fleet: dict[str, Any] | None = None
    snapshot: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = self.name or self.default_name


class MultiLink(Link):
    """Two or more control sockets presented as one server; see the module docstring."""

    mode = "attached"

    def __init__(self, links: Sequence[AttachedLink]) -> None:
        names = instance_names([link.target for link in links])
        self.instances = [Instance(link, name) for link, name in zip(links, names, strict=True)]
        self._announced_up = True  # what the app was last told: connected or not
        # Echoes (operator_action events) of our commands that the app does not expect: it
        # counts one per command, a command sent to N instances makes N.
        self._extra_echoes: Counter[str] = Counter()

    # --- identity -----------------------------------------------------------------------------
    @property
    def target(self) -> str:  # type: ignore[override]
        """The instances, each with its state, for the header and the messages."""
        parts = []
        for instance in self.instances:
            state = "" if instance.link.connected else " DISCONNECTED"
            fleet = instance.fleet
            if instance.link.connected and fleet and not fleet.get("connected"):
                state = " REDIS DOWN"
            parts.append(f"{instance.name}{state}")
        shared = self.shared_fleet()
        suffix = f" · fleet {shared['prefix']}: {shared.get('alive', 0)} alive" if shared else ""
        return ", ".join(parts) + suffix

    def shared_fleet(self) -> dict[str, Any] | None:
        """The fleet every instance belongs to (one Redis, one prefix), if there is one."""
        fleets = [instance.fleet for instance in self.instances]
        first = fleets[0]
        if first is None or first.get("prefix") is None:
            return None
        same = all(
            f is not None and (f.get("redis"), f.get("prefix")) == (first["redis"], first["prefix"])
            for f in fleets
        )
        return first if same else None

    def by_name(self, name: str) -> Instance | None:
        return next((i for i in self.instances if i.name == name), None)

    @property
    def connected(self) -> bool:
        return any(instance.link.connected for instance in self.instances)

    def _up(self) -> list[Instance]:
        return [instance for instance in self.instances if instance.link.connected]

    # --- the link -----------------------------------------------------------------------------
    async def open(self) -> None:
        """Attach to every socket that answers; keep trying the others. Fails if none does."""
        errors = []
        for instance in self.instances:
            try:
                await instance.link.open()
            except LinkError as exc:
                errors.append(str(exc))
                instance.link.keep_trying()
        if len(errors) == len(self.instances):
            await self.close()
            raise LinkError("; ".join(errors))

    async def close(self) -> None:
        await asyncio.gather(*(instance.link.close() for instance in self.instances))

    @property
    def dropped(self) -> int:
        return sum(instance.link.dropped for instance in self.instances)

    def take_events(self, limit: int) -> list[dict]:
        share = max(1, limit // len(self.instances))
        taken: list[dict] = []
        for instance in self.instances:
            for event in instance.link.take_events(share):
                tagged = self._tag(instance, event)
                if tagged is not None:
                    taken.append(tagged)
        taken.sort(key=lambda event: event.get("ts") or 0)
        return taken

    def _tag(self, instance: Instance, event: dict) -> dict | None:
        """The event as the app sees it: named after its instance, ids made unique; None for
        an echo of our own command that the app does not expect."""
        event["instance"] = instance.name
        kind = event.get("kind")
        if kind == "operator_action":
            args = event.get("args")
            arg = SESSION_ARG.get(str(event.get("command")))
            if isinstance(args, dict) and arg in args:
                args[arg] = f"{instance.name}{SEPARATOR}{args[arg]}"
            key = echo_key(str(event.get("command")), args or {})
            if self._extra_echoes[key] > 0:
                self._extra_echoes[key] -= 1
                if not self._extra_echoes[key]:
                    del self._extra_echoes[key]
                return None
        elif kind == "link_closed":
            if self._announced_up and not self.connected:
                self._announced_up = False
            else:
                event["kind"] = "instance_lost"
        elif kind == "link_restored":
            if not self._announced_up:
                self._announced_up = True
            else:
                event["kind"] = "instance_back"
        return event

    async def command(self, name: str, **args: Any) -> dict:
        if name in SESSION_ARG:
            return await self._session_command(name, args)
        if name == "snapshot":
            return await self._snapshot(args)
        if name == "top":
            replies = await self._ask(self._up(), name, args)
            results = [(i.name, r["result"]) for i, r in replies if r.get("ok")]
            if not results:
                return replies[0][1]  # every instance said no: say why, as one would
            return {"ok": True, "result": tag_top(results, args["limit"], args["sort"])}
        if name in SHARED_BY_FLEET or name in EVERYWHERE:
            return await self._change(name, args)
        replies = await self._ask(self._up(), name, args)
        return merge_reads(name, [(i.name, r) for i, r in replies])

    async def _ask(
        self, instances: list[Instance], name: str, args: dict[str, Any]
    ) -> list[tuple[Instance, dict]]:
        """`name` sent to each of `instances` at once: each one's reply (a LinkError becomes
        an error reply). Raises LinkError when none is connected."""
        if not instances:
            raise LinkError("no server is connected")

        async def one(instance: Instance) -> dict:
            try:
                return await instance.link.command(name, **args)
            except LinkError as exc:
                return {"ok": False, "error": f"not sent: {exc}", "unreached": True}

        replies = await asyncio.gather(*(one(instance) for instance in instances))
        return list(zip(instances, replies, strict=True))

    async def _session_command(self, name: str, args: dict[str, Any]) -> dict:
        arg = SESSION_ARG[name]
        instance_name, _, local = str(args.get(arg)).rpartition(SEPARATOR)
        instance = self.by_name(instance_name)
        if instance is None or not local.isdigit():
            return {"ok": False, "error": f"no session {args.get(arg)}"}
        reply = await instance.link.command(name, **{**args, arg: int(local)})
        result = reply.get("result")
        if isinstance(result, dict):  # `session`: the detail; `kill`: what was killed
            detail = result.get("killed") if name == "kill" else result
            if isinstance(detail, dict) and "id" in detail:
                detail["id"] = f"{instance.name}{SEPARATOR}{detail['id']}"
                detail["instance"] = instance.name
        return reply

    async def _change(self, name: str, args: dict[str, Any]) -> dict:
        """A command that changes the servers: to every connected instance, or for a block in
        a shared fleet, to the first that reaches Redis."""
        up = self._up()
        targets = up
        via_fleet = False
        if name in SHARED_BY_FLEET and self.shared_fleet() is not None:
            reaching = [i for i in up if i.fleet is not None and i.fleet.get("connected")]
            if reaching:
                targets, via_fleet = reaching[:1], True
        key = echo_key(name, args)
        self._extra_echoes[key] += max(0, len(targets) - 1)
        replies = await self._ask(targets, name, args)
        unreached = sum(1 for _, reply in replies if reply.get("unreached"))
        if unreached == len(targets):  # sent nowhere: as a single link would, raise
            self._extra_echoes.pop(key, None)
            raise LinkError("; ".join(str(reply.get("error")) for _, reply in replies))
        if unreached:  # no echo comes from where the command never arrived
            left = self._extra_echoes[key] - min(unreached, len(targets) - 1)
            if left > 0:
                self._extra_echoes[key] = left
            else:
                self._extra_echoes.pop(key, None)
        done = [i.name for i, reply in replies if reply.get("ok")]
        failed = [f"{i.name}: {reply.get('error')}" for i, reply in replies if not reply.get("ok")]
        first = next((reply for _, reply in replies if reply.get("ok")), replies[0][1])
        result = first.get("result")
        result = dict(result) if isinstance(result, dict) else {}
        result["instances"] = done
        result["via_fleet"] = via_fleet
        result["persisted"] = _all_persisted([reply for _, reply in replies if reply.get("ok")])
        if failed:
            where = f"done on {', '.join(done)}; " if done else ""
            return {"ok": False, "error": where + "; ".join(failed), "result": result}
        return {"ok": True, "result": result}

    async def _snapshot(self, args: dict[str, Any]) -> dict:
        replies = await self._ask(self._up(), "snapshot", args)
        snaps: list[tuple[Instance, dict]] = []
        for instance, reply in replies:
            if reply.get("ok") and isinstance(reply.get("result"), dict):
                instance.snapshot = reply["result"]
                instance.fleet = instance.snapshot.get("fleet")
                snaps.append((instance, instance.snapshot))
        if not snaps:
            return replies[0][1]
        self._rename()
        return {
            "ok": True,
            "result": merge_instances(self.instances, snaps, args["limit"], args["sort"]),
        }

    def _rename(self) -> None:
        """Name each instance after its fleet name when it has one (and it is unique)."""
        wanted = [str((i.fleet or {}).get("name") or i.default_name) for i in self.instances]
        counts = Counter(wanted)
        for instance, name in zip(self.instances, wanted, strict=True):
            instance.name = name if counts[name] == 1 else instance.default_name


def instance_names(paths: list[str]) -> list[str]:
    """Each socket's file name; the path where two share one."""
    names = [os.path.basename(path) or path for path in paths]
    counts = Counter(names)
    return [name if counts[name] == 1 else path for name, path in zip(names, paths, strict=True)]


def echo_key(command: str, args: dict) -> str:
    return json.dumps([command, args], sort_keys=True, default=str)


def _all_persisted(replies: list[dict]) -> bool | None:
    """What the app says about saving: not saved somewhere beats saved, saved beats no file."""
    states = {(reply.get("result") or {}).get("persisted") for reply in replies}
    if False in states:
        return False
    return True if True in states else None


def merge_instances(
    instances: list[Instance], snaps: list[tuple[Instance, dict]], limit: int, sort: str
) -> dict[str, Any]:
    """The snapshots of the instances that answered as one, with what each instance is."""
    first = snaps[0][1]
    rows = [
        {
            **row,
            "id": f"{instance.name}{SEPARATOR}{row['id']}",
            "local_id": row["id"],
            "instance": instance.name,
        }
        for instance, snap in snaps
        for row in snap["sessions"]["rows"]
    ]
    key, reverse = SESSION_ORDER["age" if sort == "id" else sort]
    pick = heapq.nlargest if reverse else heapq.nsmallest
    route_rows: dict[str, list[dict[str, Any]]] = {}
    for _, snap in snaps:
        for row in snap["routes"]:
            route_rows.setdefault(row["key"], []).append(row)
    metrics = [(instance.name, snap["metrics"]) for instance, snap in snaps]
    whole = {
        "server_name": first.get("server_name"),
        "pid": " ".join(str(snap.get("pid")) for _, snap in snaps),
        "workers": sum(int(snap["metrics"].get("workers") or 1) for _, snap in snaps),
        "uptime_msec": max(snap["metrics"].get("uptime_msec") or 0 for _, snap in snaps),
    }
    return {
        "server_name": first.get("server_name"),
        "pid": whole["pid"],
        "config": None,
        "time": max(snap.get("time") or 0 for _, snap in snaps) or time.time(),
        "listeners": [addr for _, snap in snaps for addr in snap.get("listeners") or []],
        "sessions": {
            "total": sum(snap["sessions"]["total"] for _, snap in snaps),
            "rows": pick(max(0, limit), rows, key=key),
        },
        "routes": [
            {**merge_figures(group), "gzip": group[0].get("gzip")} for group in route_rows.values()
        ],
        "upstreams": merge_upstreams([(i.name, snap) for i, snap in snaps]),
        "acl": merge_acl([snap.get("acl") or {} for _, snap in snaps]),
        "metrics": merge_metrics(whole, metrics),
        "events": {
            "published": sum((snap.get("events") or {}).get("published", 0) for _, snap in snaps),
            "dropped": sum((snap.get("events") or {}).get("dropped", 0) for _, snap in snaps),
        },
        "fleet": None,  # the header names each instance's (MultiLink.target)
        "workers": [],
        "instances": [
            {
                "instance": instance.name,
                "connected": instance.link.connected,
                "workers": len(instance.snapshot.get("workers") or []),
            }
            for instance in instances
        ],
    }


def merge_acl(acls: list[dict]) -> dict[str, Any]:
    """Each block once (an address blocked everywhere is one block): hits added, the latest
    expiry kept (no expiry is the latest), every instance that holds it named."""
    blocks: dict[tuple[str, str | None], dict[str, Any]] = {}
    for acl in acls:
        for block in acl.get("blocks") or []:
            key = (block["cidr"], block.get("route"))
            held = blocks.get(key)
            if held is None:
                blocks[key] = dict(block)
                continue
            held["hits"] = (held.get("hits") or 0) + (block.get("hits") or 0)
            if held.get("expires_at") is not None and (
                block.get("expires_at") is None or block["expires_at"] > held["expires_at"]
            ):
                held["expires_at"] = block.get("expires_at")
                held["expires_in"] = block.get("expires_in")
    return {**(acls[0] if acls else {}), "blocks": list(blocks.values())}


def tag_top(results: list[tuple[str, dict]], limit: int, sort: str) -> dict[str, Any]:
    """The top clients over the instances, each row naming the instances that saw it."""
    merged = merge_top(results, limit, sort)
    seen: dict[str, list[str]] = {}
    for name, result in results:
        for row in result.get("clients") or []:
            seen.setdefault(row["ip"], []).append(name)
    for row in merged.get("clients") or []:
        row["instances"] = seen.get(row["ip"], [])
    return merged


def merge_reads(name: str, replies: list[tuple[str, dict]]) -> dict:
    """Any other read: lists joined (each item naming its instance; `blocks` each block once),
    anything else per instance."""
    good = [(instance, reply["result"]) for instance, reply in replies if reply.get("ok")]
    if not good:
        return replies[0][1]
    if all(isinstance(result, list) for _, result in good):
        if name == "blocks":
            return {"ok": True, "result": merge_acl([{"blocks": r} for _, r in good])["blocks"]}
        rows = [
            {**item, "instance": instance} if isinstance(item, dict) else item
            for instance, result in good
            for item in result
        ]
        return {"ok": True, "result": rows}
    if all(result == good[0][1] for _, result in good):
        return {"ok": True, "result": good[0][1]}  # `ping`: pong from each
    return {"ok": True, "result": dict(good)}
