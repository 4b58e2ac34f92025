"""A link with canned replies, for screenshots that must come out the same on every run.

`CannedLink` answers `snapshot`, `top` and `session` with fixed data in the shapes of the
server/console contract (docs: notes of issue 9), queues a fixed set of events once, and
records every other command it is sent (answering as the server would). Times are fixed too:
the snapshot's `time` never moves, so the sparklines and the expiry column never change.
"""

from __future__ import annotations

import copy
from typing import Any

NOW = 1_780_000_000.0  # the canned snapshots' wall-clock time

SESSIONS = [
    {"id": 7, "client": "127.0.0.9:50312", "ip": "127.0.0.9", "route": "/api",
     "state": "proxying", "request": "GET /api/items?page=2", "requests": 1520,
     "bytes_in": 363_008, "bytes_out": 354_500, "age": 65.0,
     "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "sni": "shop.example"}},
    {"id": 8, "client": "127.0.0.9:50314", "ip": "127.0.0.9", "route": "/api",
     "state": "idle", "request": "", "requests": 12, "bytes_in": 2_100, "bytes_out": 1_234_567,
     "age": 3_725.0,
     "tls": {"version": "TLSv1.2", "cipher": "ECDHE-RSA-AES128-GCM-SHA256", "sni": None}},
    {"id": 12, "client": "10.1.2.3:40100", "ip": "10.1.2.3", "route": "/",
     "state": "writing", "request": "GET /video/big.bin", "requests": 1, "bytes_in": 90,
     "bytes_out": 9_876_543_210, "age": 4.2, "tls": None},
]  # fmt: skip

TOP = {
    "window": 10, "tracked": 37, "capacity": 1000, "enabled": True,
    "clients": [
        {"ip": "127.0.0.9", "requests": 1520, "rps": 152.0, "bytes": 1_556_480,
         "status_4xx": 3, "status_5xx": 0, "refused": 12, "open": 4, "last_path": "/api/x",
         "error_bound": 0},
        {"ip": "10.1.2.3", "requests": 41, "rps": 4.1, "bytes": 9_876_543_210,
         "status_4xx": 0, "status_5xx": 2, "refused": 0, "open": 1,
         "last_path": "/video/big.bin", "error_bound": 3},
    ],
}  # fmt: skip

SNAPSHOT = {
    "server_name": "eXpServer", "pid": 4242, "config": "/etc/xps/config.json", "time": NOW,
    "listeners": ["127.0.0.1:8001", "[::1]:8443"],
    "sessions": {"total": 3, "rows": SESSIONS},
    "routes": [
        {"key": "/", "type": "file_serve", "gzip": True, "ip_whitelist": [],
         "ip_blacklist": [], "upstreams": [], "requests": 91_000, "rps": 354.5,
         "error_pct": 0.0, "p50_ms": 0.4, "p95_ms": 2.5, "p99_ms": 11.0},
        {"key": "/api", "type": "reverse_proxy", "gzip": False, "ip_whitelist": [],
         "ip_blacklist": ["10.9.0.0/16"], "upstreams": ["127.0.0.1:3000", "127.0.0.1:3001"],
         "requests": 12_345, "rps": 152.0, "error_pct": 12.5, "p50_ms": 3.2,
         "p95_ms": 48.0, "p99_ms": 1_250.0},
    ],
    "upstreams": [
        {"addr": "127.0.0.1:3000", "state": "up", "active": 3, "idle": 1, "requests": 9_000,
         "failures": 0, "fails": 0, "down_for": 0, "connects": 40, "last_error": None,
         "last_error_at": None, "rps": 120.0, "error_pct": 0.0, "p50_ms": 3.0,
         "p95_ms": 40.0, "p99_ms": 90.0},
        {"addr": "127.0.0.1:3001", "state": "down", "active": 0, "idle": 0, "requests": 3_345,
         "failures": 17, "fails": 3, "down_for": 65.0, "connects": 12,
         "last_error": "connect: Connection refused", "last_error_at": NOW - 2,
         "rps": 0.0, "error_pct": 100.0, "p50_ms": None, "p95_ms": None, "p99_ms": None},
    ],
    "acl": {"blocks": [
        {"cidr": "203.0.113.7/32", "route": None, "expires_at": NOW + 600,
         "expires_in": 600.0, "hits": 603, "reason": "auto: rate_limited 100/10s"},
        {"cidr": "198.51.100.0/24", "route": "/api", "expires_at": None, "expires_in": None,
         "hits": 0},
    ], "routes": []},
    "metrics": {"conn_current": 3, "req_total": 103_345, "res_code_2xx": 100_000},
    "events": {"published": 5000, "dropped": 0},
}  # fmt: skip

SESSION = {
    "id": 7, "client": "127.0.0.9:50312", "ip": "127.0.0.9", "port": 50312,
    "listener": "127.0.0.1:8001", "route": "/api", "state": "proxying",
    "request": "GET /api/items?page=2", "requests": 1520, "bytes_in": 363_008,
    "bytes_out": 354_500, "age": 65.0,
    "last_request": {"method": "GET", "target": "/api/items?page=1", "version": "1.1",
                     "headers": [["Host", "shop.example"], ["User-Agent", "curl/8.5.0"],
                                 ["Accept", "*/*"]],
                     "user_agent": "curl/8.5.0", "status": 200, "bytes": 512,
                     "duration_ms": 3.2, "ago": 0.8},
    "upstream": "127.0.0.1:3000",
    "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "sni": "shop.example"},
}  # fmt: skip

EVENTS = [
    {"kind": "connection_opened", "ts": NOW - 5, "session": 7, "client": "127.0.0.9",
     "port": 50312, "listener": "127.0.0.1:8001"},
    {"kind": "request_finished", "ts": NOW - 4, "session": 7, "client": "127.0.0.9",
     "method": "GET", "path": "/api/items?page=1", "status": 200, "bytes": 512,
     "duration_ms": 3.2, "route": "/api"},
    {"kind": "request_finished", "ts": NOW - 3, "session": 12, "client": "10.1.2.3",
     "method": "GET", "path": "/api/broken", "status": 502, "bytes": 120,
     "duration_ms": 1250.0, "route": "/api"},
    {"kind": "upstream_health", "ts": NOW - 2, "upstream": "127.0.0.1:3001", "state": "down"},
    {"kind": "connection_refused", "ts": NOW - 1, "ip": "203.0.113.7",
     "cidr": "203.0.113.7/32", "count": 17},
]  # fmt: skip


class CannedLink:
    """A link whose server never changes; see the module docstring."""

    mode = "attached"
    target = "/run/xps/control.sock"
    connected = True
    dropped = 0

    def __init__(self) -> None:
        self.events = copy.deepcopy(EVENTS)
        self.commands: list[tuple[str, dict]] = []

    async def open(self) -> None:
        pass

    async def command(self, name: str, **args: Any) -> dict:
        if name == "snapshot":
            return {"ok": True, "result": copy.deepcopy(SNAPSHOT)}
        if name == "top":
            return {"ok": True, "result": copy.deepcopy(TOP)}
        if name == "session":
            if args.get("id") == SESSION["id"]:
                return {"ok": True, "result": copy.deepcopy(SESSION)}
            return {"ok": False, "error": f"no session {args.get('id')}"}
        self.commands.append((name, args))
        if name == "block":
            return {
                "ok": True,
                "result": {"cidr": args["cidr"], "route": args.get("route"),
                           "expires_at": None, "closed": 0, "persisted": True},
            }  # fmt: skip
        return {"ok": True, "result": {"persisted": None}}

    def take_events(self, limit: int) -> list[dict]:
        taken, self.events = self.events[:limit], self.events[limit:]
        return taken

    async def close(self) -> None:
        pass


class InstanceLink(CannedLink):
    """One server of several attached at once: `CannedLink`'s, named by its socket and its
    fleet name; `sessions` and `events` its own; `connected` False for one that is down."""

    def __init__(
        self,
        target: str,
        fleet_name: str,
        sessions: list[dict],
        events: list[dict],
        connected: bool = True,
    ) -> None:
        super().__init__()
        self.target = target
        self.connected = connected
        self.events = copy.deepcopy(events)
        self.sessions = sessions
        self.fleet = {"name": fleet_name, "redis": "redis://10.0.0.5:6379/0", "prefix": "xps",
                      "connected": True, "alive": 3, "queued": 0}  # fmt: skip

    async def command(self, name: str, **args: Any) -> dict:
        reply = await super().command(name, **args)
        if name == "snapshot":
            snap = reply["result"]
            snap["fleet"] = dict(self.fleet)
            snap["sessions"] = {"total": len(self.sessions), "rows": copy.deepcopy(self.sessions)}
        return reply

    def keep_trying(self) -> None:
        pass


def fleet_links() -> list[InstanceLink]:
    """Three servers of one fleet on one host: two answering (both have a session #7), the
    third down since the console started."""
    second_sessions = [
        {**SESSIONS[0], "client": "192.0.2.44:61000", "ip": "192.0.2.44", "age": 12.0,
         "requests": 3, "bytes_out": 48_000},
        {**SESSIONS[2], "id": 9, "client": "192.0.2.45:61002", "ip": "192.0.2.45", "age": 1.5},
    ]  # fmt: skip
    second_events = [
        {"kind": "request_finished", "ts": NOW - 2.5, "session": 7, "client": "192.0.2.44",
         "method": "GET", "path": "/api/cart", "status": 200, "bytes": 800,
         "duration_ms": 4.0, "route": "/api"},
    ]  # fmt: skip
    return [
        InstanceLink("/run/xps/edge-1.sock", "edge-1", SESSIONS, EVENTS),
        InstanceLink("/run/xps/edge-2.sock", "edge-2", second_sessions, second_events),
        InstanceLink("/run/xps/edge-3.sock", "edge-3", [], [], connected=False),
    ]
