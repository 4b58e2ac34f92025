"""The console's parts that need no screen: formatting, rates, log capture, CLI exits."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.text import Text

from xps_console import cli
from xps_console.formatting import (
    KIND_BITS,
    EventHighlighter,
    MetricsHistory,
    acl_rows,
    block_question,
    describe_reply,
    dropped_line,
    event_kinds,
    event_line,
    event_message,
    filter_terms,
    fleet_label,
    format_duration,
    human_age,
    human_bytes,
    last_upstream_routes,
    latency,
    matches,
    open_connections,
    parse_duration,
    parse_target,
    session_fields,
    tls_cell,
    top_rows,
)
from xps_console.logs import LogBuffer

ROOT = Path(__file__).resolve().parent.parent


def test_the_server_never_imports_the_console_or_textual():
    for path in (ROOT / "xps_server").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not name.startswith(("textual", "xps_console", "rich")), (path, name)


def test_numbers_read_well():
    assert human_bytes(0) == "0B"
    assert human_bytes(1536) == "1.5K"
    assert human_bytes(3 * 1024**3) == "3.0G"
    assert human_age(59.9) == "59s"
    assert human_age(65) == "1m05s"
    assert human_age(7300) == "2h01m"


def test_rates_come_from_successive_snapshots():
    history = MetricsHistory(length=5)
    first = {"req_total": 100, "res_code_2xx": 90, "res_code_4xx": 10}
    assert history.add(1000.0, first) is False  # one snapshot is no rate yet
    second = {"req_total": 300, "res_code_2xx": 250, "res_code_4xx": 50}
    second |= {"traffic_total_send_bytes": 4096, "traffic_total_recv_bytes": 1024}
    assert history.add(1002.0, second) is True
    assert history.current["req/s"] == 100
    assert history.current["2xx/s"] == 80
    assert history.current["4xx/s"] == 20
    assert history.current["5xx/s"] == 0
    assert history.current["bytes/s"] == 2560
    assert list(history.series["req/s"]) == [0, 0, 0, 0, 100]
    history.add(1003.0, {"req_total": 5})  # a restarted server: counters went back
    assert history.current["req/s"] == 0


def test_every_event_kind_makes_one_filterable_line():
    events = [
        {"kind": "connection_opened", "session": 7, "client": "10.0.0.1", "port": 5,
         "listener": "x"},
        {"kind": "connection_closed", "session": 7, "client": "10.0.0.1", "bytes_in": 10,
         "bytes_out": 2048, "requests": 2, "duration_ms": 12.5},
        {"kind": "request_finished", "session": 7, "client": "10.0.0.1", "method": "GET",
         "path": "/a", "route": "/", "status": 404, "bytes": 10, "duration_ms": 0.3},
        {"kind": "timeout", "session": 7, "client": "10.0.0.1", "phase": "keep_alive"},
        {"kind": "acl_denied", "client": "10.0.0.1", "route": "/", "path": "/a", "reason": "acl"},
        {"kind": "upstream_connected", "upstream": "h:1"},
        {"kind": "upstream_failed", "upstream": "h:1", "error": "refused"},
        {"kind": "upstream_health", "upstream": "h:1", "state": "down"},
        {"kind": "operator_action", "command": "block", "args": {"cidr": "10.0.0.1"},
         "ok": False, "result": "bad\ncidr"},
        {"kind": "config_reloaded", "ok": True, "message": "reloaded\nfrom x"},
        {"kind": "log", "level": "ERROR", "logger": "xps.core", "message": "boom"},
        {"kind": "something_new", "value": 1},
    ]  # fmt: skip
    lines = [event_line({"ts": 1e9, **event}) for event in events]
    assert all("\n" not in line for line in lines)
    assert "#7 10.0.0.1 GET /a 404" in lines[2]
    assert "block cidr=10.0.0.1 → FAILED bad | cidr" in lines[8]
    refused = event_line({"kind": "connection_refused", "ts": 0, "ip": "127.0.0.9",
                          "cidr": "127.0.0.9/32", "count": 17})  # fmt: skip
    assert "refused  127.0.0.9 17 times at connect (block 127.0.0.9)" in refused
    assert '{"value": 1}' in lines[-1]
    assert [line for line in lines if matches(line, filter_terms("UPSTREAM h:1"))] == lines[5:7]


def test_highlighter_colours_by_status_class_and_flags_failures():
    request = event_line(
        {"kind": "request_finished", "ts": 0, "session": 1, "client": "c", "method": "GET",
         "path": "/x", "status": 503, "route": "/", "bytes": 0, "duration_ms": 1}
    )  # fmt: skip
    text = Text(request)
    EventHighlighter().highlight(text)
    assert any("red" in str(span.style) for span in text.spans)
    failed = Text(event_line({"kind": "operator_action", "ts": 0, "command": "gzip", "ok": False}))
    EventHighlighter().highlight(failed)
    start = failed.plain.index("FAILED")
    assert any(s.start == start and "red" in str(s.style) for s in failed.spans)


def test_acl_rows_list_blocks_with_expiry_then_route_lists():
    acl = {"blocks": [{"cidr": "10.0.0.0/8", "route": None, "expires_at": None, "hits": 603},
                      {"cidr": "1.2.3.4/32", "route": "/api", "expires_in": 90.0}]}  # fmt: skip
    routes = [{"key": "/", "ip_whitelist": ["10.0.0.0/8"], "ip_blacklist": ["10.0.0.7"]}]
    rows = acl_rows(acl, routes, now=0)
    assert [data["kind"] for _, _, data in rows] == ["block", "block", "allow", "deny"]
    assert [str(cells[4]) for _, cells, _ in rows] == ["never", "in 1m30s", "config", "config"]
    assert [str(cells[3]) for _, cells, _ in rows] == ["603", "-", "-", "-"]
    assert rows[1][2] == {
        "kind": "block",
        "cidr": "1.2.3.4/32",
        "route": "/api",
        "hits": None,
        "expires": 90.0,
        "reason": None,
    }
    assert [str(cells[5]) for _, cells, _ in rows] == ["operator", "operator", "config", "config"]


def test_acl_rows_show_what_made_a_block():
    acl = {"blocks": [{"cidr": "10.0.0.9/32", "route": None, "expires_in": 600.0, "hits": 3,
                       "reason": "auto: rate_limited 100/10s"}]}  # fmt: skip
    [(_, cells, data)] = acl_rows(acl, [], now=0)
    assert str(cells[5]) == data["reason"] == "auto: rate_limited 100/10s"


def test_blocks_reply_in_words():
    blocks = [{"cidr": "10.0.0.9/32", "reason": "auto: rate_limited 100/10s"},
              {"cidr": "10.0.0.0/8", "reason": None}]  # fmt: skip
    assert describe_reply("blocks", {}, {"ok": True, "result": blocks}) == (
        "2 runtime blocks, 1 automatic (the ACL panel lists them)",
        "information",
    )


def test_limit_events_in_the_log():
    limited = {"kind": "rate_limited", "ts": 0, "client": "10.0.0.1", "route": "/api",
               "limit": "req", "count": 12}  # fmt: skip
    blocked = {"kind": "auto_blocked", "ts": 0, "client": "10.0.0.1", "cidr": "10.0.0.1/32",
               "seconds": 600.0, "reason": "auto: rate_limited 100/10s", "closed": 2}  # fmt: skip
    assert event_message(limited) == "10.0.0.1 12 times 429 on route /api (limit_req)"
    assert event_message(blocked) == (
        "10.0.0.1 blocked for 10m00s: auto: rate_limited 100/10s (2 connections closed)"
    )
    assert event_kinds(limited) == event_kinds(blocked) == KIND_BITS["acl"]
    assert "limited" in event_line(limited) and "autoblk" in event_line(blocked)


def test_log_buffer_keeps_records_for_the_panel():
    buffer = LogBuffer(maxlen=2)
    logger = logging.getLogger("xps.test.console")
    logger.addHandler(buffer)
    logger.propagate = False
    try:
        logger.warning("one %d", 1)
        logger.warning("two")
        try:
            raise ValueError("bad thing")
        except ValueError:
            logger.exception("three")
    finally:
        logger.removeHandler(buffer)
        logger.propagate = True
    taken = buffer.take(10)
    assert [r["message"] for r in taken] == ["two", "three | ValueError: bad thing"]
    assert taken[0]["kind"] == "log" and taken[0]["level"] == "WARNING"
    assert buffer.take(10) == []


def test_cli_invalid_config_exits_2_with_every_problem(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text('{"servers": [{"listeners": [{"port": "x"}], "routes": []}], "bogus": 1}')
    assert cli.main([str(config)]) == 2
    err = capsys.readouterr().err
    assert "invalid config" in err and "bogus" in err and "servers[0]" in err
    assert "Traceback" not in err
    assert cli.main([str(tmp_path / "missing.json")]) == 2


def test_cli_attach_to_nothing_exits_1(tmp_path, capsys):
    assert cli.main(["--attach", str(tmp_path / "none.sock")]) == 1
    assert "no control socket" in capsys.readouterr().err


# --- durations, addresses, sentences --------------------------------------------------------
@given(st.integers(min_value=1, max_value=400 * 86400))
def test_durations_read_back_what_they_write(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


def test_durations_as_an_operator_types_them():
    assert parse_duration("never") is None
    assert parse_duration(" ") is None
    assert parse_duration("10m") == 600
    assert parse_duration("1h30m") == 5400
    assert parse_duration("2D") == 172800
    for wrong in ("10", "m", "1x", "-5m", "0s", "10m1h"):
        with pytest.raises(ValueError):
            parse_duration(wrong)


def test_targets_are_addresses_or_networks():
    assert parse_target(" 127.0.0.9 ") == "127.0.0.9"
    assert parse_target("10.1.2.3/8") == "10.0.0.0/8"  # host bits cleared, as the server does
    assert parse_target("::1") == "::1"
    for wrong in ("300.1.2.3", "example.com", "", "10.0.0.0/33"):
        with pytest.raises(ValueError):
            parse_target(wrong)


def test_replies_become_sentences_and_unsaved_is_a_warning():
    block = {"cidr": "127.0.0.9/32", "route": None, "closed": 3}
    args = {"cidr": "127.0.0.9", "seconds": 600}
    saved = describe_reply("block", args, {"ok": True, "result": {**block, "persisted": True}})
    assert saved == ("Blocked 127.0.0.9 for 10m, 3 connections closed (saved)", "information")
    lost = describe_reply("block", args, {"ok": True, "result": {**block, "persisted": False}})
    assert lost == (
        "Blocked 127.0.0.9 for 10m, 3 connections closed "
        "(NOT saved: the state file could not be written)",
        "warning",
    )
    none = describe_reply("block", args, {"ok": True, "result": {**block, "persisted": None}})
    assert none[0].endswith("(not kept across restarts)") and none[1] == "information"
    failed = describe_reply("block", {"cidr": "x"}, {"ok": False, "error": "not an IP"})
    assert failed == ("Block x failed: not an IP", "error")
    unblocked = {"cidr": "10.0.0.0/8", "route": "/api", "removed": False, "persisted": None}
    assert describe_reply("unblock", {}, {"ok": True, "result": unblocked}) == (
        "10.0.0.0/8 on route /api was not blocked",
        "warning",
    )
    killed = {"killed": {"id": 7, "client": "127.0.0.1:5000"}}
    assert describe_reply("kill", {"session": 7}, {"ok": True, "result": killed}) == (
        "Killed session #7 (127.0.0.1:5000)",
        "information",
    )


def test_questions_say_what_will_happen():
    assert block_question("127.0.0.9", None, None, 3) == (
        "Block 127.0.0.9 globally? 3 open connections will close."
    )
    assert block_question("127.0.0.9", None, 3600, 1) == (
        "Block 127.0.0.9 globally for 1h? 1 open connection will close."
    )
    assert "on route /api for 10m? Its requests there will get 403." in block_question(
        "10.0.0.0/8", "/api", 600, 5
    )
    top = [{"ip": "10.0.0.1", "open": 4}, {"ip": "10.0.0.2", "open": 2}, {"ip": "11.0.0.1"}]
    sessions = [{"ip": "10.0.0.1"}]
    assert open_connections("10.0.0.0/8", top, sessions) == 6
    assert open_connections("10.0.0.1", [], sessions + sessions) == 2


def test_the_last_upstream_up_of_a_route():
    routes = [{"key": "/api", "upstreams": ["a:1", "b:1"]}, {"key": "/b", "upstreams": ["b:1"]}]
    up = [{"addr": "a:1", "state": "up"}, {"addr": "b:1", "state": "up"}]
    assert last_upstream_routes("b:1", routes, up) == ["/b"]
    assert last_upstream_routes("a:1", routes, up) == []
    one_down = [{"addr": "a:1", "state": "down"}, {"addr": "b:1", "state": "up"}]
    assert last_upstream_routes("b:1", routes, one_down) == ["/api", "/b"]


def test_numbers_keep_their_units_and_lines_their_kinds():
    assert latency({"p50_ms": 0.4, "p95_ms": 2.5, "p99_ms": 1250.0}) == "0.4/2.5/1250 ms"
    assert latency({"p50_ms": None, "p95_ms": None, "p99_ms": None}) == "-"
    assert latency({"p50_ms": 0.011, "p95_ms": 0.04, "p99_ms": None}) == "0.011/0.04/- ms"
    ok = {"kind": "request_finished", "status": 200}
    assert event_kinds(ok) == KIND_BITS["request"]
    assert event_kinds({**ok, "status": 502}) == KIND_BITS["request"] | KIND_BITS["error"]
    assert event_kinds({"kind": "connection_refused"}) == KIND_BITS["acl"]
    block = {"kind": "operator_action", "command": "block", "ok": True}
    assert event_kinds(block) == KIND_BITS["operator"] | KIND_BITS["acl"]
    drain = {"kind": "command", "command": "drain", "ok": False}
    assert event_kinds(drain) == KIND_BITS["operator"] | KIND_BITS["upstream"] | KIND_BITS["error"]
    (row,) = top_rows([{"ip": "10.0.0.1", "requests": 1520, "error_bound": 3}])
    assert str(row[1][1]) == "≈1,520"  # may be over-counted: said so
    assert dropped_line(603, ts=0).endswith("… 603 events dropped …")


def test_the_fleet_in_the_header_and_its_events_in_the_log():
    assert fleet_label(None) == ""
    assert fleet_label({"name": "edge-1", "connected": True, "alive": 3}) == "fleet edge-1: 3 alive"
    down = {"name": "edge-1", "connected": False, "alive": 3, "queued": 2}
    assert fleet_label(down) == "fleet edge-1: REDIS DOWN, 2 queued"
    lost = {"kind": "fleet_disconnected", "ts": 0, "redis": "redis://r:6379/0", "error": "refused"}
    line = event_line(lost)
    assert "fleet    Redis redis://r:6379/0 unreachable (refused)" in line
    assert event_kinds(lost) & KIND_BITS["error"]
    change = {"kind": "fleet_change", "ts": 0, "by": "edge-2",
              "change": {"op": "block", "cidr": "10.0.0.7/32", "route": None}}  # fmt: skip
    assert event_line(change).endswith("fleet    edge-2: block cidr=10.0.0.7/32")
    assert event_kinds(change) & KIND_BITS["acl"]
    back = {"kind": "fleet_connected", "ts": 0, "redis": "redis://r:6379/0"}
    assert "fleet    Redis redis://r:6379/0 connected" in event_line(back)


def test_tls_in_the_sessions_table_the_detail_view_and_the_log():
    tls13 = {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "sni": "shop.example"}
    tls12 = {"version": "TLSv1.2", "cipher": "ECDHE-RSA-CHACHA20-POLY1305", "sni": None}
    assert tls_cell(tls13) == "1.3 AES_256_GCM"
    assert tls_cell(tls12) == "1.2 CHACHA20-POLY1305"
    assert tls_cell({"version": None, "cipher": None, "sni": "x"}) == "handshake"
    assert tls_cell(None) == "-"
    assert dict(session_fields({"tls": tls13}))["TLS"] == (
        "TLSv1.3, TLS_AES_256_GCM_SHA384, SNI shop.example"
    )
    assert dict(session_fields({"tls": tls12}))["TLS"].endswith(", no SNI")
    assert dict(session_fields({"tls": None}))["TLS"] == "none (plain TCP)"
    event = {"kind": "tls_error", "ts": 0, "session": 4, "client": "10.0.0.1", "reason": "x y"}
    assert event_line(event).endswith(" tls      #4 10.0.0.1 x y")
    assert event_kinds(event) == KIND_BITS["error"]
