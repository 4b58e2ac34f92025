"""Counters and timings kept by the loop thread, and the figures the `metrics` route reports.

Counters are plain attribute increments on the loop thread, no locks. `snapshot` names them as
eXpServer's metrics JSON does (plus extras: ACL denials, blocked connections, gzip and access
log figures, traffic per route and upstream); traffic includes the bytes of connections still
open, summed at snapshot time. `prometheus` renders the same figures in the Prometheus text
exposition format 0.0.4.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from xps_server.config.model import ROUTE_TYPES
from xps_server.traffic import TrafficStats, prometheus_buckets

if TYPE_CHECKING:
    from xps_server.server.core import Core


class Stats:
    """Server-wide counters, named in `snapshot`."""

    __slots__ = (
        "acl_denied",
        "conn_accepted",
        "conn_blocked",
        "conn_current",
        "conn_error",
        "conn_reclaimed",
        "conn_timeout",
        "gzip_responses",
        "pid",
        "req_by_type",
        "req_current",
        "req_total",
        "res_by_class",
        "res_time_peak",
        "res_time_total",
        "started",
        "tls_errors",
        "traffic_recv_bytes",
        "traffic_send_bytes",
        "tunnels_current",
        "tunnels_total",
    )

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.started = time.monotonic()
        self.conn_accepted = 0
        self.conn_current = 0
        self.conn_error = 0
        self.conn_reclaimed = 0  # idle keep-alive connections closed to make room at the limit
        self.conn_timeout = 0
        self.req_total = 0
        self.req_current = 0
        self.req_by_type = dict.fromkeys(ROUTE_TYPES, 0)
        self.res_by_class = [0] * 6  # index: status // 100
        self.res_time_total = 0.0
        self.res_time_peak = 0.0
        self.traffic_recv_bytes = 0
        self.traffic_send_bytes = 0
        self.acl_denied = 0  # requests answered 403 by a route's ACL or runtime block
        self.conn_blocked = 0  # connections refused at accept by the global block list
        self.gzip_responses = 0
        self.tunnels_current = 0  # upgraded connections (WebSocket) open now
        self.tunnels_total = 0
        self.tls_errors = 0  # handshakes failed or timed out, broken records

    def record_response(self, status: int, elapsed: float) -> None:
        self.res_by_class[status // 100 if 100 <= status < 600 else 5] += 1
        self.res_time_total += elapsed
        if elapsed > self.res_time_peak:
            self.res_time_peak = elapsed


# --- snapshot -------------------------------------------------------------------------------
def snapshot(core: Core) -> dict[str, Any]:
    """The metrics JSON of SPEC §3, plus extras, as of now."""
    stats = core.stats
    sent = stats.traffic_send_bytes
    received = stats.traffic_recv_bytes
    for session in core.sessions.values():
        conn = session.conn
        sent += conn.bytes_out
        received += conn.bytes_in
    by_class = stats.res_by_class
    responses = sum(by_class)
    by_type = stats.req_by_type
    data: dict[str, Any] = {
        "server_name": core.config.server_name,
        "pid": stats.pid,
        "workers": core.config.workers,
        "uptime_msec": int((time.monotonic() - stats.started) * 1000),
        "conn_current": stats.conn_current,
        "conn_accepted": stats.conn_accepted,
        "conn_error": stats.conn_error,
        "conn_reclaimed": stats.conn_reclaimed,
        "conn_accept_failures": sum(lst.accept_failures for lst in core.listeners.values()),
        "conn_timeout": stats.conn_timeout,
        "req_current": stats.req_current,
        "req_total": stats.req_total,
        "req_file_serve": by_type.get("file_serve", 0),
        "req_reverse_proxy": by_type.get("reverse_proxy", 0),
        "req_redirect": by_type.get("redirect", 0),
        "req_metrics": by_type.get("metrics", 0),
        "res_avg_res_time_msec": round(stats.res_time_total / responses * 1000, 3)
        if responses
        else 0.0,
        "res_peak_res_time_msec": round(stats.res_time_peak * 1000, 3),
        "res_time_total_msec": round(stats.res_time_total * 1000, 3),
        "res_total": responses,
        "res_code_2xx": by_class[2],
        "res_code_3xx": by_class[3],
        "res_code_4xx": by_class[4],
        "res_code_5xx": by_class[5],
        "traffic_total_send_bytes": sent,
        "traffic_total_recv_bytes": received,
        "acl_denied": stats.acl_denied,
        "conn_blocked": stats.conn_blocked,
        "tls_errors": stats.tls_errors,
        "blocks_active": len(core.runtime.blocklist.entries),
        "gzip_responses": stats.gzip_responses,
        "tunnels_current": stats.tunnels_current,
        "tunnels_total": stats.tunnels_total,
        **core.limiting.snapshot(),
    }
    now = core.loop.now
    data["routes"] = {key: stats.summary(now) for key, stats in core.accounting.routes.items()}
    data["upstreams"] = {
        addr: state.stats.summary(now)
        for addr, state in core.upstreams.items()
        if state.stats is not None
    }
    top = core.top
    data["top_clients_tracked"] = top.tracked(now, 60) if top is not None else 0
    data.update(core.gzip_cache.stats())
    access_log = core.access_log
    if access_log is not None:
        data.update(access_log.stats())
    return data


# --- Prometheus text format 0.0.4 -----------------------------------------------------------
# (snapshot key, metric name, type, help, scale); the scale turns milliseconds into seconds.
_PROMETHEUS: tuple[tuple[str, str, str, str, float], ...] = (
    ("uptime_msec", "xps_uptime_seconds", "gauge", "Seconds since the server started.", 1e-3),
    ("workers", "xps_workers", "gauge", "Configured worker processes.", 1),
    ("conn_current", "xps_connections_current", "gauge", "Open client connections.", 1),
    ("conn_accepted", "xps_connections_accepted_total", "counter", "Connections accepted.", 1),
    (
        "conn_error",
        "xps_connection_errors_total",
        "counter",
        "Connections refused (limits, shutdown).",
        1,
    ),
    (
        "conn_reclaimed",
        "xps_connections_reclaimed_total",
        "counter",
        "Idle keep-alive connections closed to make room at max_connections.",
        1,
    ),
    (
        "conn_accept_failures",
        "xps_accept_failures_total",
        "counter",
        "accept() failures for want of descriptors or memory (accepting pauses 0.1 s).",
        1,
    ),
    ("conn_timeout", "xps_connection_timeouts_total", "counter", "Connections timed out.", 1),
    (
        "conn_blocked",
        "xps_connections_blocked_total",
        "counter",
        "Connections refused at accept by the global block list.",
        1,
    ),
    (
        "tls_errors",
        "xps_tls_errors_total",
        "counter",
        "TLS handshakes failed or timed out, and broken TLS records.",
        1,
    ),
    ("req_current", "xps_requests_current", "gauge", "Requests in progress.", 1),
    ("req_total", "xps_requests_total", "counter", "Requests received.", 1),
    (
        "res_avg_res_time_msec",
        "xps_response_time_avg_seconds",
        "gauge",
        "Mean time from request head to response queued.",
        1e-3,
    ),
    (
        "res_peak_res_time_msec",
        "xps_response_time_peak_seconds",
        "gauge",
        "Longest time from request head to response queued.",
        1e-3,
    ),
    ("traffic_total_send_bytes", "xps_sent_bytes_total", "counter", "Bytes sent to clients.", 1),
    (
        "traffic_total_recv_bytes",
        "xps_received_bytes_total",
        "counter",
        "Bytes received from clients.",
        1,
    ),
    ("acl_denied", "xps_acl_denied_total", "counter", "Requests denied (403) by an ACL.", 1),
    ("blocks_active", "xps_blocks_active", "gauge", "Entries in the runtime block list.", 1),
    (
        "auto_blocks",
        "xps_auto_blocks_total",
        "counter",
        "Blocks applied by auto_block rules.",
        1,
    ),
    ("gzip_responses", "xps_gzip_responses_total", "counter", "Responses sent gzip'ed.", 1),
    (
        "tunnels_current",
        "xps_tunnels_current",
        "gauge",
        "Upgraded connections (WebSocket and other protocols) open now.",
        1,
    ),
    (
        "tunnels_total",
        "xps_tunnels_total",
        "counter",
        "Connections upgraded (101 Switching Protocols) into tunnels.",
        1,
    ),
    ("gzip_cache_hits", "xps_gzip_cache_hits_total", "counter", "gzip cache hits.", 1),
    ("gzip_cache_misses", "xps_gzip_cache_misses_total", "counter", "gzip cache misses.", 1),
    (
        "gzip_cache_evictions",
        "xps_gzip_cache_evictions_total",
        "counter",
        "gzip cache evictions.",
        1,
    ),
    ("gzip_cache_entries", "xps_gzip_cache_entries", "gauge", "Files in the gzip cache.", 1),
    ("gzip_cache_bytes", "xps_gzip_cache_bytes", "gauge", "Bytes in the gzip cache.", 1),
    ("access_log_lines", "xps_access_log_lines_total", "counter", "Access log lines.", 1),
    (
        "access_log_dropped",
        "xps_access_log_dropped_total",
        "counter",
        "Access log lines lost (writer behind or failing).",
        1,
    ),
)
_LABELLED: tuple[tuple[str, str, str, str, tuple[tuple[str, str], ...]], ...] = (
    (
        "xps_requests_by_type_total",
        "counter",
        "Requests by route type.",
        "type",
        tuple((f"req_{kind}", kind) for kind in ROUTE_TYPES),
    ),
    (
        "xps_responses_total",
        "counter",
        "Responses by status class.",
        "code",
        tuple((f"res_code_{n}xx", f"{n}xx") for n in range(2, 6)),
    ),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def prometheus(data: dict[str, Any], core: Core | None = None) -> str:
    """`snapshot`'s figures as Prometheus text exposition (version 0.0.4); with `core`, the
    per-route and per-upstream latency histograms too."""
    lines = [
        "# HELP xps_info Server identity (always 1).",
        "# TYPE xps_info gauge",
        f'xps_info{{server_name="{_label(str(data["server_name"]))}",pid="{data["pid"]}"}} 1',
    ]
    for key, name, kind, text, scale in _PROMETHEUS:
        if key not in data:
            continue
        value = data[key] if scale == 1 else data[key] * scale
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {_number(value)}"]
    for name, kind, text, label, series in _LABELLED:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        lines += [f'{name}{{{label}="{value}"}} {data.get(key, 0)}' for key, value in series]
    lines += [
        "# HELP xps_response_time_seconds Time from request head to response queued.",
        "# TYPE xps_response_time_seconds summary",
        f"xps_response_time_seconds_sum {_number(data['res_time_total_msec'] / 1000)}",
        f"xps_response_time_seconds_count {data['res_total']}",
    ]
    limited = data.get("rate_limited_routes")
    if limited:
        name = "xps_rate_limited_total"
        lines += [
            f"# HELP {name} Requests answered 429 by a route's limit_req or limit_conn.",
            f"# TYPE {name} counter",
        ]
        for route, counts in limited.items():
            for limit in ("req", "conn"):
                lines.append(f'{name}{{route="{_label(route)}",limit="{limit}"}} {counts[limit]}')
    if core is not None:
        routes = core.accounting.routes.items()
        upstreams = [(a, s.stats) for a, s in core.upstreams.items() if s.stats is not None]
        lines += _histograms("xps_route_response_seconds", "route", routes, _ROUTE_HELP)
        lines += _histograms("xps_upstream_response_seconds", "upstream", upstreams, _UP_HELP)
    return "\n".join(lines) + "\n"


def fleet_prometheus(data: dict[str, Any]) -> str:
    """A master's merged figures (`fleet.merge_metrics`) as Prometheus text: the fleet's
    sums, and per worker its connections and requests."""
    lines = [prometheus(data).rstrip("\n")]
    for name, key, kind, text in (
        ("xps_worker_connections_current", "conn_current", "gauge", "Open connections"),
        ("xps_worker_requests_total", "req_total", "counter", "Requests received"),
    ):
        lines += [f"# HELP {name} {text}, per worker process.", f"# TYPE {name} {kind}"]
        lines += [
            f'{name}{{worker="{row["worker"]}",pid="{row["pid"]}"}} {row[key]}'
            for row in data.get("per_worker", ())
        ]
    return "\n".join(lines) + "\n"


_ROUTE_HELP = "Time from request head to response queued, per route."
_UP_HELP = "Time from request sent to response complete, per upstream."


def _histograms(
    name: str, label: str, series: Iterable[tuple[str, TrafficStats]], text: str
) -> list[str]:
    """One Prometheus histogram family, a series per route or upstream."""
    lines = [f"# HELP {name} {text}", f"# TYPE {name} histogram"]
    for key, stats in series:
        totals = stats.cumulative()
        where = f'{label}="{_label(key)}"'
        lines += [
            f'{name}_bucket{{{where},le="{le}"}} {count}'
            for le, count in prometheus_buckets(totals)
        ]
        lines.append(f"{name}_sum{{{where}}} {_number(totals.seconds)}")
        lines.append(f"{name}_count{{{where}}} {totals.count}")
    return lines
