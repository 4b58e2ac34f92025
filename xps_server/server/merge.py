"""One view of many workers: the master merges the replies its workers give to a read.

Counters and gauges add up (requests, bytes, connections, req/s). Figures that do not add up
take the highest worker's: peaks, percentiles (an upper bound of the fleet's), error rates,
how long an upstream stays down. The mean response time is recomputed from the summed totals.
Each merged view keeps a per-worker breakdown, every row naming its `worker` (an id the master
gives each worker process it starts; a restarted worker gets a new one) and its `pid`.

An upstream's health is per worker (each has its own connections to it and sees its own
failures): a merged row says the state all workers agree on, or ``mixed``, with each worker's
state in ``states``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from typing import Any

# What tells the merged replies apart: a worker's id, or (in a console attached to several
# servers) an instance's name.
Origin = int | str

# Figures of which the fleet's value is the highest worker's, not the sum.
HIGHEST = frozenset(
    (
        "res_peak_res_time_msec",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "error_pct",
        "down_for",
        "last_error_at",
        "fails",
        "error_bound",
        "age",
    )
)
# Top-level metrics that describe the fleet, not a worker: the master's own.
MASTERS = frozenset(("server_name", "pid", "workers", "uptime_msec"))
# Per-worker breakdown of the metrics: these figures, for each worker.
BREAKDOWN = (
    "conn_current",
    "conn_accepted",
    "req_current",
    "req_total",
    "res_total",
    "conn_blocked",
    "traffic_total_send_bytes",
    "traffic_total_recv_bytes",
)


def merge_figures(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Rows of one kind (a route's figures in each worker, say) as one: numbers added (or the
    highest, for `HIGHEST`), anything else the first worker's that is not None."""
    merged: dict[str, Any] = {}
    for row in rows:
        for key, value in row.items():
            old = merged.get(key)
            if _is_number(value) and _is_number(old):
                if key in HIGHEST:
                    merged[key] = max(old, value)
                else:
                    total = old + value
                    merged[key] = round(total, 3) if isinstance(total, float) else total
            elif old is None:
                merged[key] = value
    return merged


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def merge_metrics(
    master: dict[str, Any], workers: Sequence[tuple[Origin, dict[str, Any]]]
) -> dict[str, Any]:
    """The metrics route's figures for the fleet: `master` gives what describes the whole
    (name, pid, workers, uptime), `workers` (id, metrics) the figures, added up."""
    figures = [data for _, data in workers]
    merged = merge_figures(
        {k: v for k, v in data.items() if k not in ("routes", "upstreams")} for data in figures
    )
    for key in MASTERS:
        merged[key] = master[key]
    responses = merged.get("res_total", 0)
    merged["res_avg_res_time_msec"] = (
        round(merged.get("res_time_total_msec", 0.0) / responses, 3) if responses else 0.0
    )
    for section in ("routes", "upstreams"):
        keys: dict[str, list[dict[str, Any]]] = {}
        for data in figures:
            for key, row in data.get(section, {}).items():
                keys.setdefault(key, []).append(row)
        merged[section] = {key: merge_figures(rows) for key, rows in keys.items()}
    merged["blocks_active"] = master.get("blocks_active", merged.get("blocks_active", 0))
    merged["per_worker"] = [
        {"worker": worker, "pid": data.get("pid"), **{k: data.get(k, 0) for k in BREAKDOWN}}
        for worker, data in workers
    ]
    return merged


SESSION_ORDER: dict[str, tuple[Callable[[dict[str, Any]], Any], bool]] = {
    "age": (lambda row: row["age"], True),  # oldest first
    "bytes": (lambda row: row["bytes_in"] + row["bytes_out"], True),
    "id": (lambda row: row["id"], False),
}


def merge_snapshot(
    master: dict[str, Any],
    workers: Sequence[tuple[Origin, dict[str, Any]]],
    limit: int,
    sort: str,
    breakdown: list[dict[str, Any]],
) -> dict[str, Any]:
    """The `snapshot` command for the fleet: `master` is the master's own snapshot (identity,
    routes' switches, ACL, events), `workers` (id, snapshot) give sessions and figures,
    `breakdown` is the master's row for each worker (pid, restarts...)."""
    rows = [
        {**row, "worker": worker} for worker, snap in workers for row in snap["sessions"]["rows"]
    ]
    key, reverse = SESSION_ORDER[sort]
    pick = heapq.nlargest if reverse else heapq.nsmallest
    merged = dict(master)
    merged["sessions"] = {
        "total": sum(snap["sessions"]["total"] for _, snap in workers),
        "rows": pick(max(0, limit), rows, key=key),
    }
    route_rows: dict[str, list[dict[str, Any]]] = {}
    for _, snap in workers:
        for row in snap["routes"]:
            route_rows.setdefault(row["key"], []).append(row)
    merged["routes"] = [
        {**merge_figures(route_rows.get(row["key"], [row])), "gzip": row["gzip"]}
        for row in master["routes"]
    ]
    merged["upstreams"] = merge_upstreams(workers) if workers else master["upstreams"]
    merged["metrics"] = merge_metrics(master["metrics"], [(w, s["metrics"]) for w, s in workers])
    by_id = {w: s["metrics"] for w, s in workers}
    merged["workers"] = [
        {
            **row,
            "conn_current": by_id.get(row["worker"], {}).get("conn_current"),
            "req_total": by_id.get(row["worker"], {}).get("req_total"),
        }
        for row in breakdown
    ]
    return merged


def merge_upstreams(workers: Sequence[tuple[Origin, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each upstream once, its counters added; its state as the workers agree, or ``mixed``
    with each worker's in ``states``."""
    rows: dict[str, list[tuple[Origin, dict[str, Any]]]] = {}
    for worker, snap in workers:
        for row in snap["upstreams"]:
            rows.setdefault(row["addr"], []).append((worker, row))
    merged = []
    for per_worker in rows.values():
        row = merge_figures(r for _, r in per_worker)
        states = {str(worker): r["state"] for worker, r in per_worker}
        distinct = set(states.values())
        row["state"] = distinct.pop() if len(distinct) == 1 else "mixed"
        row["states"] = states
        merged.append(row)
    return merged


TOP_ORDER: dict[str, Callable[[dict[str, Any]], tuple[int, int]]] = {
    "requests": lambda row: (row["requests"], row["bytes"]),
    "bytes": lambda row: (row["bytes"], row["requests"]),
    "errors": lambda row: (row["status_4xx"] + row["status_5xx"], row["requests"]),
}


def merge_top(
    workers: Sequence[tuple[Origin, dict[str, Any]]], limit: int, sort: str
) -> dict[str, Any]:
    """The `top` command for the fleet: each address's figures added over the workers."""
    enabled = [snap for _, snap in workers if snap.get("enabled")]
    if not enabled:
        first = workers[0][1] if workers else {}
        return {**first, "clients": []}
    by_ip: dict[str, list[dict[str, Any]]] = {}
    for snap in enabled:
        for row in snap["clients"]:
            by_ip.setdefault(row["ip"], []).append(row)
    clients = [merge_figures(rows) for rows in by_ip.values()]
    clients.sort(key=TOP_ORDER.get(sort, TOP_ORDER["requests"]), reverse=True)
    return {
        "enabled": True,
        "window": enabled[0]["window"],
        "tracked": sum(snap["tracked"] for snap in enabled),
        "capacity": sum(snap["capacity"] for snap in enabled),
        "clients": clients[:limit],
    }
