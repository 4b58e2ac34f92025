"""Pure functions from snapshot and event dicts to what the panels show; no Textual here."""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Iterable

from rich.highlighter import Highlighter
from rich.text import Text

# --- numbers --------------------------------------------------------------------------------


def human_bytes(count: float) -> str:
    if abs(count) < 1024:
        return f"{count:.0f}B"
    value = count / 1024
    for unit in "KMG":
        if abs(value) < 1024:
            return f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}T"


def human_age(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def human_rate(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}"


def expiry(block: dict, now: float) -> str:
    """When a runtime block ends: `expires_in` seconds, or at the wall-clock `expires_at`."""
    remaining = block.get("expires_in")
    if remaining is None:
        at = block.get("expires_at", block.get("expires"))
        if at is None:
            return "never"
        remaining = at - now
    return f"in {human_age(remaining)}"


# --- tables ---------------------------------------------------------------------------------

Row = tuple[str, tuple, dict]  # a table row: its key, its cells, the data behind it

SESSION_COLUMNS = (
    ("id", "Session"),
    ("client", "Client"),
    ("route", "Route"),
    ("state", "State"),
    ("request", "Request"),
    ("requests", "Reqs"),
    ("bytes_in", "In"),
    ("bytes_out", "Out"),
    ("age", "Age"),
)

STATE_STYLES = {"idle": "dim", "reading": "cyan", "writing": "green", "proxying": "magenta"}


def session_cells(row: dict) -> tuple:
    """The cells of one sessions-table row; the id cell stays a plain str (it is sorted on)."""
    request = row.get("request") or ""
    return (
        str(row["id"]),
        row.get("client", ""),
        row.get("route") or "-",
        Text(row.get("state", ""), style=STATE_STYLES.get(row.get("state", ""), "")),
        request if len(request) <= 40 else request[:39] + "…",
        str(row.get("requests", 0)),
        human_bytes(row.get("bytes_in", 0)),
        human_bytes(row.get("bytes_out", 0)),
        human_age(row.get("age", 0)),
    )


ROUTE_COLUMNS = (
    ("key", "Route"),
    ("type", "Type"),
    ("gzip", "gzip"),
    ("acl", "ACL"),
    ("upstreams", "Upstreams"),
)
UPSTREAM_COLUMNS = (
    ("addr", "Upstream"),
    ("state", "State"),
    ("active", "Active"),
    ("failures", "Fails"),
    ("requests", "Reqs"),
)
ACL_COLUMNS = (("kind", "Entry"), ("cidr", "CIDR"), ("route", "Route"), ("expires", "Expires"))

_UPSTREAM_STYLES = {"up": "green", "down": "bold red", "draining": "yellow"}
_ACL_STYLES = {"block": "bold red", "deny": "red", "allow": "green"}


def session_rows(rows: Iterable[dict]) -> list[Row]:
    return [(str(row["id"]), session_cells(row), row) for row in rows]


def route_rows(routes: Iterable[dict]) -> list[Row]:
    rows = []
    for route in routes:
        acl = [
            f"{word} {len(route[key])}"
            for word, key in (("allow", "ip_whitelist"), ("deny", "ip_blacklist"))
            if route.get(key)
        ]
        upstreams = route.get("upstreams") or []
        cells = (
            route["key"],
            route.get("type", ""),
            Text("on", style="bold green") if route.get("gzip") else Text("off", style="dim"),
            " ".join(acl) or "-",
            ", ".join(upstreams) if upstreams else "-",
        )
        rows.append((route["key"], cells, route))
    return rows


def upstream_rows(upstreams: Iterable[dict]) -> list[Row]:
    rows = []
    for upstream in upstreams:
        addr = upstream["addr"]  # drain/enable name an address, whichever routes share it
        state = upstream.get("state", "?")
        cells = (
            addr,
            Text(state, style=_UPSTREAM_STYLES.get(state, "")),
            str(upstream.get("active", 0)),
            str(upstream.get("failures", 0)),
            str(upstream.get("requests", 0)),
        )
        rows.append((addr, cells, upstream))
    return rows


def acl_rows(acl: dict, routes: Iterable[dict], now: float) -> list[Row]:
    """Runtime blocks first (they can be lifted with `u`), then the config's route lists."""
    rows = []
    for block in acl.get("blocks") or []:
        route = block.get("route")
        data = {"kind": "block", "cidr": block["cidr"], "route": route}
        cells = (
            Text("block", style=_ACL_STYLES["block"]),
            block["cidr"],
            route or "*",
            expiry(block, now),
        )
        rows.append((f"block {route or '*'} {block['cidr']}", cells, data))
    for route in routes:
        for kind, key in (("allow", "ip_whitelist"), ("deny", "ip_blacklist")):
            for cidr in route.get(key) or []:
                data = {"kind": kind, "cidr": cidr, "route": route["key"]}
                cells = (Text(kind, style=_ACL_STYLES[kind]), cidr, route["key"], "config")
                rows.append((f"{kind} {route['key']} {cidr}", cells, data))
    return rows


# --- the event log --------------------------------------------------------------------------

# The log holds plain strings (cheap to append and to filter); `EventHighlighter` colours the
# few lines on screen when they are drawn, from the label each line carries.
_LABELS = {
    "connection_opened": "open",
    "connection_closed": "close",
    "request_finished": "request",
    "timeout": "timeout",
    "acl_denied": "denied",
    "upstream_connected": "upstream",
    "upstream_failed": "upstream",
    "upstream_health": "health",
    "operator_action": "action",
    "command": "command",
    "config_reloaded": "reload",
    "link_closed": "link",
    "control_reply": "control",
    "log": "log",
}
_LABEL_STYLES = {
    "open": "dim",
    "close": "dim",
    "timeout": "yellow",
    "denied": "bold red",
    "upstream": "blue",
    "health": "bold blue",
    "action": "bold magenta",
    "command": "bold magenta",
    "reload": "bold cyan",
    "link": "bold red",
    "control": "yellow",
}
_STATUS_STYLES = {"2": "green", "3": "cyan", "4": "yellow", "5": "bold red"}
_LOG_STYLES = {"WARNING": "yellow", "ERROR": "bold red", "CRITICAL": "bold red", "DEBUG": "dim"}
_STAMP_WIDTH = 8  # HH:MM:SS
_LABEL_WIDTH = 8
_MESSAGE_START = _STAMP_WIDTH + 1 + _LABEL_WIDTH + 1
# A request line's message: "#id client METHOD path STATUS ..." (a target has no spaces).
_REQUEST_STATUS = re.compile(r"#\S+ \S+ \S+ \S+ ([1-5])\d\d ")
_ALARM = re.compile(r"\b(?:FAILED|failed|rejected)\b")


def format_args(args: dict) -> str:
    return " ".join(f"{key}={value}" for key, value in args.items())


def _one_line(text: object) -> str:
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


def event_message(event: dict) -> str:
    """What the log says about one event, after its time and label."""
    kind = event.get("kind", "?")
    get = event.get
    if kind == "connection_opened":
        return f"#{get('session')} {get('client')}:{get('port')} on {get('listener')}"
    if kind == "connection_closed":
        return (
            f"#{get('session')} {get('client')} {get('requests', 0)} req, "
            f"in {human_bytes(get('bytes_in', 0))} out {human_bytes(get('bytes_out', 0))}, "
            f"{get('duration_ms', 0):.0f} ms"
        )
    if kind == "request_finished":
        return (
            f"#{get('session')} {get('client')} {get('method')} {get('path')} {get('status')} "
            f"{human_bytes(get('bytes', 0))} {get('duration_ms', 0):.1f} ms route {get('route')}"
        )
    if kind == "timeout":
        return f"#{get('session')} {get('client')} {get('phase')}"
    if kind == "acl_denied":
        return f"{get('client')} {get('path')} route {get('route')} ({get('reason')})"
    if kind == "upstream_connected":
        return f"{get('upstream')} connected"
    if kind == "upstream_failed":
        return f"{get('upstream')} failed: {get('error')}"
    if kind == "upstream_health":
        return f"{get('upstream')} is {get('state')}"
    if kind in ("operator_action", "command"):
        outcome = "ok" if get("ok") else "FAILED"
        detail = _one_line(get("result") or "")
        return f"{get('command')} {format_args(get('args') or {})} → {outcome} {detail}".rstrip()
    if kind == "log":
        return f"{get('level', 'INFO')} {get('logger')}: {_one_line(get('message', ''))}"
    if kind in ("config_reloaded", "link_closed", "control_reply"):
        return _one_line(get("message", ""))
    rest = {k: v for k, v in event.items() if k not in ("kind", "ts")}
    return json.dumps(rest, default=str)


def event_line(event: dict) -> str:
    """The log line of an event: time, label, message."""
    kind = event.get("kind", "?")
    label = _LABELS.get(kind, kind)
    ts = event.get("ts")
    stamp = time.strftime("%H:%M:%S", time.localtime(time.time() if ts is None else ts))
    return f"{stamp} {label:<{_LABEL_WIDTH}} {event_message(event)}"


class EventHighlighter(Highlighter):
    """Colours a log line by its label (requests by status class, logs by level)."""

    def highlight(self, text: Text) -> None:
        plain = text.plain
        text.stylize("dim", 0, _STAMP_WIDTH)
        label = plain[_STAMP_WIDTH + 1 : _MESSAGE_START].rstrip()
        if label == "request":
            match = _REQUEST_STATUS.match(plain, _MESSAGE_START)
            style = _STATUS_STYLES.get(match.group(1), "") if match else ""
        elif label == "log":
            style = _LOG_STYLES.get(plain[_MESSAGE_START:].split(" ", 1)[0], "")
        else:
            style = _LABEL_STYLES.get(label, "")
        if style:
            text.stylize(style, _STAMP_WIDTH + 1)
        for alarm in _ALARM.finditer(plain, _MESSAGE_START):
            text.stylize("bold red", alarm.start(), alarm.end())


def matches(plain: str, terms: Iterable[str]) -> bool:
    """The log filter: every whitespace-separated term occurs (case-insensitively)."""
    lowered = plain.lower()
    return all(term in lowered for term in terms)


def filter_terms(query: str) -> tuple[str, ...]:
    return tuple(query.lower().split())


# --- metrics over time ----------------------------------------------------------------------

# Each sparkline: its label and the metrics counters whose sum it charts per second.
SERIES: dict[str, tuple[str, ...]] = {
    "req/s": ("req_total",),
    "bytes/s": ("traffic_total_send_bytes", "traffic_total_recv_bytes"),
    "2xx/s": ("res_code_2xx",),
    "3xx/s": ("res_code_3xx",),
    "4xx/s": ("res_code_4xx",),
    "5xx/s": ("res_code_5xx",),
}
HISTORY = 60  # samples kept per sparkline


class MetricsHistory:
    """Per-second rates of the metrics counters, from successive snapshots."""

    def __init__(self, length: int = HISTORY) -> None:
        self.series: dict[str, deque[float]] = {
            name: deque([0.0] * length, maxlen=length) for name in SERIES
        }
        self.current: dict[str, float] = dict.fromkeys(SERIES, 0.0)
        self._last: tuple[float, dict] | None = None

    def add(self, when: float, metrics: dict) -> bool:
        """Record the snapshot taken at `when`; True when new rates were computed."""
        last = self._last
        self._last = (when, metrics)
        if last is None:
            return False
        elapsed = when - last[0]
        if elapsed <= 0:
            return False
        previous = last[1]
        for name, keys in SERIES.items():
            delta = sum(_number(metrics, k) - _number(previous, k) for k in keys)
            rate = max(0.0, delta) / elapsed  # a counter going back means a restart: no rate
            self.current[name] = rate
            self.series[name].append(rate)
        return True


def _number(metrics: dict, key: str) -> float:
    value = metrics.get(key, 0)
    return value if isinstance(value, int | float) else 0


def summarize(result: object, limit: int = 160) -> str:
    """A command's result in one short line."""
    if result is None:
        return ""
    text = result if isinstance(result, str) else json.dumps(result, default=str)
    text = _one_line(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
