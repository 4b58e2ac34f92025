"""Counters and timings kept by the loop thread: plain attribute increments, no locks."""

from __future__ import annotations

import os
import time

ROUTE_TYPES = ("file_serve", "reverse_proxy", "redirect", "metrics")


class Stats:
    """Server-wide counters; `snapshot` names them as SPEC §3's metrics JSON does."""

    __slots__ = (
        "conn_accepted",
        "conn_current",
        "conn_error",
        "conn_timeout",
        "pid",
        "req_by_type",
        "req_current",
        "req_total",
        "res_by_class",
        "res_time_peak",
        "res_time_total",
        "started",
        "traffic_recv_bytes",
        "traffic_send_bytes",
    )

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.started = time.monotonic()
        self.conn_accepted = 0
        self.conn_current = 0
        self.conn_error = 0
        self.conn_timeout = 0
        self.req_total = 0
        self.req_current = 0
        self.req_by_type = dict.fromkeys(ROUTE_TYPES, 0)
        self.res_by_class = [0] * 6  # index: status // 100
        self.res_time_total = 0.0
        self.res_time_peak = 0.0
        self.traffic_recv_bytes = 0
        self.traffic_send_bytes = 0

    def record_response(self, status: int, elapsed: float) -> None:
        self.res_by_class[status // 100 if 100 <= status < 600 else 5] += 1
        self.res_time_total += elapsed
        if elapsed > self.res_time_peak:
            self.res_time_peak = elapsed
