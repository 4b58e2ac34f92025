"""The console's parts that need no screen: formatting, rates, log capture, CLI exits."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

from rich.text import Text

from xps_console import cli
from xps_console.formatting import (
    EventHighlighter,
    MetricsHistory,
    acl_rows,
    event_line,
    filter_terms,
    human_age,
    human_bytes,
    matches,
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
    failed = Text(event_line({"kind": "command", "ts": 0, "command": "gzip", "ok": False}))
    EventHighlighter().highlight(failed)
    start = failed.plain.index("FAILED")
    assert any(s.start == start and "red" in str(s.style) for s in failed.spans)


def test_acl_rows_list_blocks_with_expiry_then_route_lists():
    acl = {"blocks": [{"cidr": "10.0.0.0/8", "route": None, "expires_at": None},
                      {"cidr": "1.2.3.4/32", "route": "/api", "expires_in": 90.0}]}  # fmt: skip
    routes = [{"key": "/", "ip_whitelist": ["10.0.0.0/8"], "ip_blacklist": ["10.0.0.7"]}]
    rows = acl_rows(acl, routes, now=0)
    assert [data["kind"] for _, _, data in rows] == ["block", "block", "allow", "deny"]
    assert [str(cells[3]) for _, cells, _ in rows] == ["never", "in 1m30s", "config", "config"]
    assert rows[1][2] == {"kind": "block", "cidr": "1.2.3.4/32", "route": "/api"}


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
