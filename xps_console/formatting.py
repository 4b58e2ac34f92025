"""Pure functions from snapshot, top, session and event dicts to what the console shows.

No Textual here: numbers and durations, table rows, event-log lines and their kinds, the
questions asked before a destructive command, and the sentence a command's reply becomes.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

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


def human_count(value: int) -> str:
    return f"{value:,}"


def human_ms(value: float | None) -> str:
    """A latency with its unit; `-` when there is none (no request in the window)."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.1f}ms"
    if value < 1000:
        return f"{value:.0f}ms"
    return f"{value / 1000:.1f}s"


def human_pct(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}%" if value < 10 else f"{value:.0f}%"


def human_optional_rate(value: float | None) -> str:
    return "-" if value is None else human_rate(value)


_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def parse_duration(text: str) -> float | None:
    """`never` (or nothing) is None; `30s`, `10m`, `1h`, `2d`, `1h30m` are seconds.

    ValueError, with what to type instead, for anything else.
    """
    text = text.strip().lower()
    if text in ("", "never"):
        return None
    match = _DURATION.fullmatch(text)
    if match is None or not any(match.groups()):
        raise ValueError("a duration: never, 30s, 10m, 1h, 2d or 1h30m")
    seconds = sum(
        int(part or 0) * unit for part, (_, unit) in zip(match.groups(), _UNITS, strict=True)
    )
    if seconds <= 0:
        raise ValueError("a duration longer than 0s, or never")
    return float(seconds)


def format_duration(seconds: float) -> str:
    """`600` is `10m`, `5400` is `1h30m`: what `parse_duration` reads back."""
    left = round(seconds)
    parts = []
    for unit, size in _UNITS:
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    return "".join(parts) or "0s"


def parse_target(text: str) -> str:
    """An address or CIDR block as the operator means it; ValueError if it is neither."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError("an IP address or CIDR block, e.g. 203.0.113.7 or 10.0.0.0/8") from None
    return short_cidr(str(network))


def short_cidr(cidr: str) -> str:
    """`127.0.0.9/32` reads `127.0.0.9`: a one-address block is that address."""
    address, _, length = cidr.partition("/")
    full = "128" if ":" in address else "32"
    return address if length in ("", full) else cidr


def network_contains(cidr: str, ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False


def expiry(block: dict, now: float) -> str:
    """When a runtime block ends: `expires_in` seconds, or at the wall-clock `expires_at`."""
    remaining = block_remaining(block, now)
    return "never" if remaining is None else f"in {human_age(remaining)}"


def block_remaining(block: dict, now: float) -> float | None:
    remaining = block.get("expires_in")
    if remaining is None:
        at = block.get("expires_at", block.get("expires"))
        if at is None:
            return None
        remaining = at - now
    return max(0.0, remaining)


# --- tables ---------------------------------------------------------------------------------

Row = tuple[str, tuple, dict]  # a table row: its key, its cells, the data behind it
Columns = Sequence[tuple[str, str]]  # (key in the row's data, header label)


def sort_value(value: Any) -> tuple:
    """Orders any mix of numbers, text and None: numbers first, then text, None last."""
    if value is None:
        return (2, 0.0, "")
    if isinstance(value, bool | int | float):
        return (0, float(value), "")
    if isinstance(value, Text):
        value = value.plain
    if isinstance(value, list | tuple):
        value = ", ".join(map(str, value))
    return (1, 0.0, str(value).lower())


SESSION_COLUMNS = (
    ("id", "Session"),
    ("client", "Client"),
    ("route", "Route"),
    ("state", "State"),
    ("requests", "Reqs"),
    ("bytes_in", "In"),
    ("bytes_out", "Out"),
    ("age", "Age"),
    ("tls", "TLS"),
    ("request", "Request"),  # free text last: on a narrow screen it is what scrolls off
)

STATE_STYLES = {
    "idle": "dim",
    "reading": "cyan",
    "writing": "green",
    "proxying": "magenta",
    "tunnel": "yellow",
}


def styled(text: str, style: str) -> Text:
    """A cell in a style. The style is a span, not the base style: cells compare by text and
    spans, so a change of style alone still updates the cell."""
    return Text.assemble((text, style)) if style else Text(text)


def number(text: str, style: str = "") -> Text:
    """A numeric cell: right-aligned, so the digits line up."""
    cell = styled(text, style)
    cell.justify = "right"
    return cell


def clip(text: str, width: int = 40) -> str:
    """Free text (a request line, an error) cut to `width` with an ellipsis; never a number."""
    return text if len(text) <= width else text[: width - 1] + "…"


# Columns a sessions row may have after the id: the server it is on (a console attached to
# several) and the worker process it is in (a server with several).
SESSION_ORIGINS = (("instance", "Instance"), ("worker", "W"))


def session_columns(origins: Sequence[str] = ()) -> Columns:
    """The sessions table's columns, with these of `SESSION_ORIGINS` after the id."""
    extra = tuple(column for column in SESSION_ORIGINS if column[0] in origins)
    return (SESSION_COLUMNS[0], *extra, *SESSION_COLUMNS[1:])


def session_cells(row: dict, origins: Sequence[str] = ()) -> tuple:
    """The cells of one sessions-table row; the id cell is the row key (rows sort by it).
    `origins`: the columns of `SESSION_ORIGINS` shown. Over several servers a row's id is
    made unique (`instance:id`); its cell shows the id its server gave it."""
    state = row.get("state", "")
    extra = tuple(
        number(str(row.get(key, "-"))) if key == "worker" else str(row.get(key, "-"))
        for key, _ in SESSION_ORIGINS
        if key in origins
    )
    return (
        str(row.get("local_id", row["id"])),
        *extra,
        row.get("client", ""),
        row.get("route") or "-",
        styled(state, STATE_STYLES.get(state, "")),
        number(human_count(row.get("requests", 0))),
        number(human_bytes(row.get("bytes_in", 0))),
        number(human_bytes(row.get("bytes_out", 0))),
        number(human_age(row.get("age", 0))),
        tls_cell(row.get("tls")),
        clip(row.get("request") or ""),
    )


def tls_cell(tls: object) -> str:
    """A session's TLS in a few characters: "1.3 AES_256_GCM"; "-" in cleartext."""
    if not isinstance(tls, dict):
        return "-"
    version = str(tls.get("version") or "")
    if not version:
        return "handshake"
    cipher = str(tls.get("cipher") or "")
    # The parts that tell ciphers apart: no TLS_ prefix, key exchange or MAC hash.
    for prefix in ("TLS_", "ECDHE-ECDSA-", "ECDHE-RSA-", "DHE-RSA-"):
        cipher = cipher.removeprefix(prefix)
    for suffix in ("_SHA256", "_SHA384", "-SHA256", "-SHA384"):
        cipher = cipher.removesuffix(suffix)
    return f"{version.removeprefix('TLSv')} {cipher}".strip()


def session_rows(rows: Iterable[dict], origins: Sequence[str] = ()) -> list[Row]:
    return [(str(row["id"]), session_cells(row, origins), row) for row in rows]


WORKER_COLUMNS = (
    ("worker", "Worker"),
    ("pid", "PID"),
    ("conn_current", "Conns"),
    ("rps", "Req/s"),
    ("restarts", "Restarts"),
)


def worker_rows(workers: Iterable[dict], rates: dict[int, float]) -> list[Row]:
    """The workers panel: each worker process the master runs, `rates` its req/s."""
    rows = []
    for worker in workers:
        wid = worker["worker"]
        state = "" if worker.get("ready") else " (starting)"
        if worker.get("retiring"):
            state = " (stopping)"
        cells = (
            f"{wid}{state}",
            number(str(worker.get("pid", "?"))),
            number(human_count(worker.get("conn_current") or 0)),
            number(human_rate(rates.get(wid, 0.0))),
            number(str(worker.get("restarts", 0))),
        )
        rows.append((str(wid), cells, {**worker, "rps": rates.get(wid, 0.0)}))
    return rows


TOP_COLUMNS = (
    ("ip", "Client"),
    ("requests", "Reqs"),
    ("rps", "req/s"),
    ("bytes", "Bytes"),
    ("status_4xx", "4xx"),
    ("status_5xx", "5xx"),
    ("refused", "Refused"),
    ("open", "Open"),
    ("last_path", "Last path"),
)
TOP_SORT_BY_COLUMN = {"requests": "requests", "rps": "requests", "bytes": "bytes"}
TOP_SORT_BY_COLUMN |= {"status_4xx": "errors", "status_5xx": "errors"}


def top_rows(clients: Iterable[dict]) -> list[Row]:
    rows = []
    for client in clients:
        requests = human_count(client.get("requests", 0))
        if client.get("error_bound"):
            requests = "≈" + requests  # space-saving: may be over by error_bound
        status_5xx = client.get("status_5xx", 0)
        refused = client.get("refused", 0)
        cells = (
            client["ip"],
            number(requests),
            number(human_rate(client.get("rps", 0.0))),
            number(human_bytes(client.get("bytes", 0))),
            number(human_count(client.get("status_4xx", 0))),
            number(human_count(status_5xx), "red" if status_5xx else ""),
            number(human_count(refused), "bold red" if refused else "dim"),
            number(human_count(client.get("open", 0))),
            clip(client.get("last_path") or "", 30),
        )
        rows.append((client["ip"], cells, client))
    return rows


LATENCY_LABEL = "p50/p95/p99"
ROUTE_COLUMNS = (
    ("key", "Route"),
    ("rps", "req/s"),
    ("error_pct", "5xx"),
    ("latency", LATENCY_LABEL),
    ("requests", "Reqs"),
    ("gzip", "gzip"),
    ("type", "Type"),
    ("acl", "ACL"),
    ("upstreams", "Upstreams"),
)
UPSTREAM_COLUMNS = (
    ("addr", "Upstream"),
    ("state", "State"),
    ("rps", "req/s"),
    ("error_pct", "5xx"),
    ("latency", LATENCY_LABEL),
    ("down_for", "Retry in"),
    ("failures", "Fails"),
    ("active", "Active"),
    ("requests", "Reqs"),
    ("last_error", "Last error"),
)
ACL_COLUMNS = (
    ("kind", "Entry"),
    ("cidr", "CIDR"),
    ("route", "Route"),
    ("hits", "Hits"),
    ("expires", "Expires"),
    ("reason", "Reason"),
)

_UPSTREAM_STYLES = {"up": "green", "down": "bold red", "draining": "yellow"}
_ACL_STYLES = {"block": "bold red", "deny": "red", "allow": "green"}


def latency(row: dict) -> str:
    """`p50/p95/p99` of a route or upstream in one cell: `0.04/2.5/11 ms` (two significant
    figures under a millisecond, so a fast route never reads 0.0); `-` with none."""
    values = [row.get(key) for key in ("p50_ms", "p95_ms", "p99_ms")]
    if all(value is None for value in values):
        return "-"
    return "/".join(_milliseconds(v) for v in values) + " ms"


def _milliseconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value:.2g}"
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def _error_pct_cell(value: float | None) -> Text:
    style = "bold red" if value and value >= 5 else ("yellow" if value else "")
    return number(human_pct(value), style)


def _stats(row: dict) -> dict:
    """What a stats column sorts by: the worst percentile for the latency column."""
    return {"latency": row.get("p99_ms")}


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
            number(human_optional_rate(route.get("rps"))),
            _error_pct_cell(route.get("error_pct")),
            number(latency(route)),
            number(human_count(route.get("requests") or 0)),
            styled("on", "bold green") if route.get("gzip") else styled("off", "dim"),
            route.get("type", ""),
            " ".join(acl) or "-",
            ", ".join(upstreams) if upstreams else "-",
        )
        rows.append((route["key"], cells, {**route, **_stats(route), "acl": " ".join(acl)}))
    return rows


def upstream_rows(upstreams: Iterable[dict]) -> list[Row]:
    rows = []
    for upstream in upstreams:
        addr = upstream["addr"]  # drain/enable name an address, whichever routes share it
        state = upstream.get("state", "?")
        down_for = upstream.get("down_for") or 0
        cells = (
            addr,
            styled(state, _UPSTREAM_STYLES.get(state, "")),
            number(human_optional_rate(upstream.get("rps"))),
            _error_pct_cell(upstream.get("error_pct")),
            number(latency(upstream)),
            number(human_age(down_for) if down_for > 0 else "-"),
            number(human_count(upstream.get("failures", 0))),
            number(human_count(upstream.get("active", 0))),
            number(human_count(upstream.get("requests", 0))),
            clip(upstream.get("last_error") or "-", 48),
        )
        rows.append((addr, cells, {**upstream, **_stats(upstream)}))
    return rows


def upstream_problems(upstreams: Iterable[dict], selected: str | None, now: float) -> list[str]:
    """The upstreams panel's lines under its table: every upstream that is down, and the
    selected one's last error, in words (the table's last column is often off screen)."""
    lines = []
    for upstream in upstreams:
        addr = upstream["addr"]
        down = upstream.get("state") == "down"
        error = upstream.get("last_error")
        if not (down or (addr == selected and error)):
            continue
        parts = [addr]
        if down:
            down_for = upstream.get("down_for") or 0
            parts.append(
                f"down, retried in {human_age(down_for)}" if down_for > 0 else "down, being retried"
            )
        if error:
            at = upstream.get("last_error_at")
            known = isinstance(at, int | float) and at > 0  # 0: the server never said when
            ago = f" {human_age(now - at)} ago" if known else ""
            parts.append(f"last error{ago}: {error}")
        lines.append(" · ".join(parts))
    return lines


def acl_rows(acl: dict, routes: Iterable[dict], now: float) -> list[Row]:
    """Runtime blocks first (they can be lifted with `u`), then the config's route lists."""
    rows = []
    for block in acl.get("blocks") or []:
        route = block.get("route")
        hits = block.get("hits")
        reason = block.get("reason")  # what made it; None: an operator
        data = {
            "kind": "block",
            "cidr": block["cidr"],
            "route": route,
            "hits": hits,
            "expires": block_remaining(block, now),
            "reason": reason,
        }
        cells = (
            styled("block", _ACL_STYLES["block"]),
            block["cidr"],
            route or "*",
            number("-" if hits is None else human_count(hits)),
            expiry(block, now),
            styled(reason, "yellow") if reason else styled("operator", "dim"),
        )
        rows.append((f"block {route or '*'} {block['cidr']}", cells, data))
    for route in routes:
        for kind, key in (("allow", "ip_whitelist"), ("deny", "ip_blacklist")):
            for cidr in route.get(key) or []:
                data = {"kind": kind, "cidr": cidr, "route": route["key"], "hits": None}
                cells = (
                    styled(kind, _ACL_STYLES[kind]),
                    cidr,
                    route["key"],
                    number("-"),
                    "config",
                    styled("config", "dim"),
                )
                rows.append((f"{kind} {route['key']} {cidr}", cells, data))
    return rows


def open_connections(cidr: str, top: Iterable[dict], sessions: Iterable[dict]) -> int:
    """How many connections a global block of `cidr` closes, as far as the console knows:
    the `open` counts of the top clients inside it, or the sessions listed inside it."""
    from_top = sum(c.get("open", 0) for c in top if network_contains(cidr, c.get("ip", "")))
    listed = sum(1 for s in sessions if network_contains(cidr, s.get("ip", "")))
    return max(from_top, listed)


def last_upstream_routes(addr: str, routes: Iterable[dict], upstreams: Iterable[dict]) -> list:
    """The routes for which `addr` is the only upstream still up (draining it stops them)."""
    up = {u["addr"] for u in upstreams if u.get("state") == "up"}
    return [
        route["key"]
        for route in routes
        if addr in (route.get("upstreams") or [])
        and [a for a in route.get("upstreams") or [] if a in up] == [addr]
    ]


def session_fields(detail: dict) -> list[tuple[str, str]]:
    """The detail view of one session (the `session` command's result), as label/value."""
    last = detail.get("last_request")
    fields = [
        ("Client", str(detail.get("client", "?"))),
        ("Listener", str(detail.get("listener") or "-")),
        ("Route", str(detail.get("route") or "-")),
        ("State", str(detail.get("state") or "-")),
        ("In progress", str(detail.get("request") or "no request")),
        ("Requests", human_count(detail.get("requests", 0))),
        (
            "Bytes",
            f"in {human_bytes(detail.get('bytes_in', 0))}, "
            f"out {human_bytes(detail.get('bytes_out', 0))}",
        ),
        ("Open for", human_age(detail.get("age", 0))),
        ("Upstream", str(detail.get("upstream") or "-")),
    ]
    if last:
        fields.append(
            (
                "Last request",
                f"{last.get('method')} {last.get('target')} HTTP/{last.get('version')} → "
                f"{last.get('status')}, {human_bytes(last.get('bytes') or 0)}, "
                f"{human_ms(last.get('duration_ms'))}, {_ago(last.get('ago') or 0)}",
            )
        )
        fields.append(("User agent", str(last.get("user_agent") or "-")))
    else:
        fields.append(("Last request", "none finished yet"))
    tls = detail.get("tls")
    if isinstance(tls, dict):
        if tls.get("version"):
            text = f"{tls.get('version')}, {tls.get('cipher') or '?'}"
        else:
            text = "handshake in progress"
        sni = tls.get("sni")
        fields.append(("TLS", f"{text}, SNI {sni}" if sni else f"{text}, no SNI"))
    else:
        fields.append(("TLS", "none (plain TCP)"))
    return fields


def _ago(seconds: float) -> str:
    return f"{seconds:.1f}s ago" if seconds < 10 else f"{human_age(seconds)} ago"


def session_headers(detail: dict) -> list[tuple[str, str]]:
    """The last finished request's headers, in the order the client sent them."""
    last = detail.get("last_request") or {}
    return [(str(name), str(value)) for name, value in last.get("headers") or []]


# --- questions before a destructive command -------------------------------------------------


def _connections(count: int) -> str:
    return f"{count} open connection{'s' if count != 1 else ''}"


def block_question(target: str, route: str | None, seconds: float | None, open_count: int) -> str:
    how_long = "" if seconds is None else f" for {format_duration(seconds)}"
    if route is not None:
        return f"Block {target} on route {route}{how_long}? Its requests there will get 403."
    if open_count:
        return f"Block {target} globally{how_long}? {_connections(open_count)} will close."
    return f"Block {target} globally{how_long}? It has no open connection; new ones are refused."


def kill_question(row: dict) -> str:
    request = row.get("request")
    doing = f", {request}" if request else ""
    return (
        f"Kill session #{row['id']} ({row.get('client', '?')}{doing})? Its connection closes now."
    )


def drain_question(addr: str, routes: Sequence[str]) -> str:
    names = ", ".join(routes)
    plural = "s" if len(routes) > 1 else ""
    return (
        f"Drain {addr}? It is the last upstream up for route{plural} {names}: "
        "requests there fail (502) until another upstream is up."
    )


# --- what a command's reply says ------------------------------------------------------------

SAVED = {
    True: " (saved)",
    False: " (NOT saved: the state file could not be written)",
    None: " (not kept across restarts)",
}


def describe_reply(command: str, args: dict, reply: dict) -> tuple[str, str]:
    """The sentence a command's reply becomes, and its toast severity; over several servers,
    with where it went."""
    message, severity = _describe_reply(command, args, reply)
    result = reply.get("result")
    if isinstance(result, dict) and isinstance(result.get("instances"), list) and reply.get("ok"):
        names = ", ".join(map(str, result["instances"]))
        if result.get("via_fleet"):
            message += f" (sent to {names}: the fleet shares it over Redis)"
        else:
            message += f" (on {names})"
    return message, severity


def _describe_reply(command: str, args: dict, reply: dict) -> tuple[str, str]:
    if not reply.get("ok"):
        return f"{_what(command, args)} failed: {reply.get('error')}", "error"
    result = reply.get("result")
    if command == "blocks" and isinstance(result, list):
        automatic = sum(1 for block in result if isinstance(block, dict) and block.get("reason"))
        text = f"{len(result)} runtime blocks, {automatic} automatic (the ACL panel lists them)"
        return text, "information"
    result = result if isinstance(result, dict) else {}
    persisted = result.get("persisted", ...)
    saved = "" if persisted is ... else SAVED.get(persisted, "")
    severity = "warning" if persisted is False else "information"
    if command == "block":
        target = short_cidr(str(result.get("cidr") or args.get("cidr")))
        route = result.get("route", args.get("route"))
        where = f" on route {route}" if route else ""
        seconds = args.get("seconds")
        how_long = f" for {format_duration(seconds)}" if seconds else ""
        closed = result.get("closed") or 0
        closing = f", {_closed(closed)}" if closed else ""
        return f"Blocked {target}{where}{how_long}{closing}{saved}", severity
    if command == "unblock":
        target = short_cidr(str(result.get("cidr") or args.get("cidr")))
        route = result.get("route", args.get("route"))
        where = f" on route {route}" if route else ""
        if result.get("removed") is False:
            return f"{target}{where} was not blocked", "warning"
        return f"Unblocked {target}{where}{saved}", severity
    if command == "gzip":
        state = "on" if result.get("gzip_enable") else "off"
        return f"gzip {state} for route {result.get('route', args.get('route'))}{saved}", severity
    if command == "kill":
        killed = result.get("killed") or {}
        session = killed.get("id", args.get("session"))
        return f"Killed session #{session} ({killed.get('client', '?')})", "information"
    if command == "drain":
        return f"Drained {args.get('upstream')}: it gets no new requests{saved}", severity
    if command == "enable":
        return f"Enabled {args.get('upstream')}: back in rotation{saved}", severity
    if command == "reload":
        return f"Reloaded the configuration from {result.get('reloaded', 'its file')}", severity
    return f"{_what(command, args)}: done", "information"


def _closed(count: int) -> str:
    return f"{count} connection{'s' if count != 1 else ''} closed"


def _what(command: str, args: dict) -> str:
    target = args.get("cidr") or args.get("route") or args.get("upstream")
    if command == "kill":
        target = f"session #{args.get('session')}"
    return f"{command.capitalize()} {target}" if target else command.capitalize()


def format_args(args: dict) -> str:
    return " ".join(f"{key}={value}" for key, value in args.items())


# --- the event log --------------------------------------------------------------------------

# The log holds plain strings (cheap to append and to filter); `EventHighlighter` colours the
# few lines on screen when they are drawn, from the label each line carries.
_LABELS = {
    "connection_opened": "open",
    "connection_closed": "close",
    "connection_refused": "refused",
    "request_finished": "request",
    "timeout": "timeout",
    "tls_error": "tls",
    "acl_denied": "denied",
    "rate_limited": "limited",
    "auto_blocked": "autoblk",
    "upstream_connected": "upstream",
    "upstream_failed": "upstream",
    "upstream_health": "health",
    "operator_action": "action",
    "command": "command",
    "config_reloaded": "reload",
    "link_closed": "link",
    "link_restored": "link",
    "instance_lost": "link",
    "instance_back": "link",
    "control_reply": "control",
    "fleet_connected": "fleet",
    "fleet_disconnected": "fleet",
    "fleet_change": "fleet",
    "log": "log",
}
_LABEL_STYLES = {
    "open": "dim",
    "close": "dim",
    "refused": "bold red",
    "timeout": "yellow",
    "tls": "yellow",
    "denied": "bold red",
    "limited": "yellow",
    "autoblk": "bold red",
    "upstream": "blue",
    "health": "bold blue",
    "action": "bold magenta",
    "command": "bold magenta",
    "reload": "bold cyan",
    "link": "bold red",
    "control": "yellow",
    "fleet": "bold cyan",
    "dropped": "reverse yellow",
}
_STATUS_STYLES = {"2": "green", "3": "cyan", "4": "yellow", "5": "bold red"}
_LOG_STYLES = {"WARNING": "yellow", "ERROR": "bold red", "CRITICAL": "bold red", "DEBUG": "dim"}
_STAMP_WIDTH = 8  # HH:MM:SS
_LABEL_WIDTH = 8
_MESSAGE_START = _STAMP_WIDTH + 1 + _LABEL_WIDTH + 1
# A request line's message: "#id client METHOD path STATUS ..." (a target has no spaces).
_REQUEST_STATUS = re.compile(r"#\S+ \S+ \S+ \S+ ([1-5])\d\d ")
_ALARM = re.compile(r"\b(?:FAILED|failed|rejected|NOT saved)\b")

# Kinds of log lines the log can be narrowed to (`e`); a line may be of several.
KINDS = ("request", "error", "acl", "upstream", "operator")
REQUEST, ERROR, ACL, UPSTREAM, OPERATOR = (1 << i for i in range(len(KINDS)))
KIND_BITS = dict(zip(KINDS, (REQUEST, ERROR, ACL, UPSTREAM, OPERATOR), strict=True))
_POLICY_COMMANDS = frozenset(("block", "unblock"))
_UPSTREAM_COMMANDS = frozenset(("drain", "enable"))


def event_kinds(event: dict) -> int:
    """The kinds (a bit set over KINDS) an event's line belongs to."""
    kind = event.get("kind")
    if kind == "request_finished":
        status = event.get("status")
        return REQUEST | (ERROR if isinstance(status, int) and status >= 500 else 0)
    if kind in ("acl_denied", "connection_refused", "rate_limited", "auto_blocked"):
        return ACL
    if kind == "upstream_failed":
        return UPSTREAM | ERROR
    if kind == "upstream_health":
        return UPSTREAM | (ERROR if event.get("state") == "down" else 0)
    if kind == "upstream_connected":
        return UPSTREAM
    if kind in ("operator_action", "command"):
        bits = OPERATOR | (0 if event.get("ok") else ERROR)
        command = event.get("command")
        if command in _POLICY_COMMANDS:
            bits |= ACL
        elif command in _UPSTREAM_COMMANDS:
            bits |= UPSTREAM
        return bits
    if kind == "config_reloaded":
        return OPERATOR | (0 if event.get("ok") else ERROR)
    if kind in (
        "timeout",
        "tls_error",
        "link_closed",
        "instance_lost",
        "control_reply",
        "fleet_disconnected",
    ):
        return ERROR
    if kind == "fleet_connected":
        return ACL
    if kind == "fleet_change":
        op = (event.get("change") or {}).get("op")
        return OPERATOR | (
            ACL if op in ("block", "unblock") else UPSTREAM if op in _UPSTREAM_COMMANDS else 0
        )
    if kind == "log":
        return ERROR if event.get("level") in ("ERROR", "CRITICAL") else 0
    return 0


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
    if kind == "connection_refused":
        count = get("count", 1)
        times = f" {count} times" if count != 1 else ""
        return f"{get('ip')}{times} at connect (block {short_cidr(str(get('cidr')))})"
    if kind == "request_finished":
        return (
            f"#{get('session')} {get('client')} {get('method')} {get('path')} {get('status')} "
            f"{human_bytes(get('bytes', 0))} {get('duration_ms', 0):.1f} ms "
            f"route {get('route') or '-'}"
        )
    if kind == "timeout":
        return f"#{get('session')} {get('client')} {get('phase')}"
    if kind == "tls_error":
        return f"#{get('session')} {get('client')} {get('reason')}"
    if kind == "acl_denied":
        return f"{get('client')} {get('path')} route {get('route')} ({get('reason')})"
    if kind == "rate_limited":
        count = get("count", 1)
        times = f" {count} times" if count != 1 else ""
        return f"{get('client')}{times} 429 on route {get('route')} (limit_{get('limit')})"
    if kind == "auto_blocked":
        return (
            f"{get('client')} blocked for {human_age(get('seconds') or 0)}: {get('reason')} "
            f"({get('closed', 0)} connections closed)"
        )
    if kind == "upstream_connected":
        return f"{get('upstream')} connected"
    if kind == "upstream_failed":
        return f"{get('upstream')} failed: {get('error')}"
    if kind == "upstream_health":
        return f"{get('upstream')} is {get('state')}"
    if kind == "command":
        return str(get("result") or "")
    if kind == "operator_action":
        outcome = "ok" if get("ok") else "FAILED"
        detail = _one_line(get("result") or "")
        return f"{get('command')} {format_args(get('args') or {})} → {outcome} {detail}".rstrip()
    if kind == "log":
        return f"{get('level', 'INFO')} {get('logger')}: {_one_line(get('message', ''))}"
    if kind == "fleet_change":
        change = {k: v for k, v in (get("change") or {}).items() if v is not None}
        op = change.pop("op", "?")
        return f"{get('by')}: {op} {format_args(change)}".rstrip()
    if kind == "fleet_connected":
        return f"Redis {get('redis')} connected: blocks are shared with the fleet"
    if kind == "fleet_disconnected":
        return (
            f"Redis {get('redis')} unreachable ({_one_line(get('error', ''))}): "
            "enforcing what is known, changes queued"
        )
    if kind in (
        "config_reloaded",
        "link_closed",
        "link_restored",
        "instance_lost",
        "instance_back",
        "control_reply",
    ):
        return _one_line(get("message", ""))
    rest = {k: v for k, v in event.items() if k not in ("kind", "ts")}
    return json.dumps(rest, default=str)


def fleet_label(fleet: dict | None) -> str:
    """The fleet in the header: this instance's name, the instances alive, Redis's state."""
    if not fleet:
        return ""
    name = fleet.get("name", "?")
    if not fleet.get("connected"):
        queued = fleet.get("queued") or 0
        return f"fleet {name}: REDIS DOWN" + (f", {queued} queued" if queued else "")
    return f"fleet {name}: {fleet.get('alive', 0)} alive"


def event_line(event: dict) -> str:
    """The log line of an event: time, label, message."""
    kind = event.get("kind", "?")
    label = _LABELS.get(kind, kind)
    # Over several servers, each line names the one it comes from.
    instance = event.get("instance")
    origin = f"[{instance}] " if instance else ""
    return f"{stamp(event.get('ts'))} {label:<{_LABEL_WIDTH}} {origin}{event_message(event)}"


def stamp(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(time.time() if ts is None else ts))


def dropped_line(count: int, ts: float | None = None) -> str:
    """The marker where the log has a gap: events the console never received."""
    return f"{stamp(ts)} {'dropped':<{_LABEL_WIDTH}} … {count:,} events dropped …"


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


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int) -> str:
    """`values` in `width` cells, each the highest of its share of them, scaled to the highest
    of all (a flat line when all are 0)."""
    if not values or width <= 0:
        return ""
    count = len(values)
    if count <= width:
        buckets = list(values)
    else:
        buckets = [max(values[i * count // width : (i + 1) * count // width]) for i in range(width)]
    top = max(buckets)
    if top <= 0:
        return SPARKS[0] * len(buckets)
    last = len(SPARKS) - 1
    return "".join(SPARKS[min(last, int(value / top * last + 0.5))] for value in buckets)


def _number(metrics: dict, key: str) -> float:
    value = metrics.get(key, 0)
    return value if isinstance(value, int | float) else 0
