"""Worker processes: a real `xps-server` with `workers: 2`, steered through its control socket.

Every test runs the server as a subprocess (a master and two worker processes) and talks to it
over loopback sockets and the control socket only; nothing is timed, everything is polled.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.helpers import Client, free_port, read_until_close, wait_until
from tests.test_control import LineClient
from tests.test_tls import TlsClient, client_context, issue
from xps_server.server.merge import merge_figures, merge_metrics, merge_top, merge_upstreams

START_TIMEOUT = 20.0  # a worker is a new interpreter: on a busy machine it takes a while


class Fleet:
    """`xps-server` with `workers: 2` in a subprocess, its control socket at `socket_path`."""

    def __init__(
        self,
        tmp_path: Path,
        site: Path,
        workers: int = 2,
        routes: list[dict] | None = None,
        tls: dict | None = None,
        extra: dict | None = None,
    ) -> None:
        self.port = free_port()
        self.socket_path = str(tmp_path / "xps.sock")
        self.state_path = tmp_path / "state.json"
        self.config_path = tmp_path / "c.json"
        self.config = {
            "workers": workers,
            "control_socket": self.socket_path,
            "state_file": str(self.state_path),
            "servers": [
                {
                    "listeners": [
                        {"host": "127.0.0.1", "port": self.port, **({"tls": tls} if tls else {})}
                    ],
                    "routes": [
                        {"req_path": "/", "type": "file_serve", "dir_path": str(site)},
                        {"req_path": "/status", "type": "metrics"},
                        *(routes or []),
                    ],
                }
            ],
            **(extra or {}),
        }
        self.config_path.write_text(json.dumps(self.config))
        self.log = (tmp_path / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xps_server", str(self.config_path)], stderr=self.log
        )
        ready = self.serving if workers > 1 else self.answers
        wait_until(lambda: ready(workers), timeout=START_TIMEOUT)

    def answers(self, _count: int) -> bool:
        try:
            return self.result("ping") == "pong"
        except OSError:
            return False

    def command(self, cmd: str, **args: object) -> dict:
        client = LineClient(self.socket_path)
        try:
            client.send({"cmd": cmd, "args": args})
            return client.read()
        finally:
            client.close()

    def result(self, cmd: str, **args: object) -> dict:
        reply = self.command(cmd, **args)
        assert reply["ok"], reply
        return reply["result"]

    def workers(self) -> list[dict]:
        """The master's row for each live worker."""
        return self.result("snapshot", limit=0)["workers"]

    def serving(self, count: int) -> list[dict] | None:
        """The workers' rows once exactly `count` run and all serve, else None."""
        try:
            rows = self.workers()
        except OSError:
            return None
        return rows if len(rows) == count and all(row["ready"] for row in rows) else None

    def per_worker(self) -> dict[int, dict]:
        metrics = self.result("snapshot", limit=0)["metrics"]
        return {row["worker"]: row for row in metrics["per_worker"]}

    def get(self, path: str = "/", source: str | None = None) -> int:
        """One request on a connection of its own (so the kernel picks a worker each time)."""
        client = Client(self.port, source=source)
        try:
            return client.request("GET", path, {"Connection": "close"}).status
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def fleet(tmp_path: Path, site: Path) -> Iterator[Fleet]:
    server = Fleet(tmp_path, site)
    yield server
    server.stop()


def children(pid: int) -> set[int]:
    """The live child processes of `pid`."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --- spreading and merged figures -----------------------------------------------------------
def test_two_worker_processes_serve_and_connections_land_on_both(fleet: Fleet) -> None:
    rows = fleet.workers()
    pids = {row["pid"] for row in rows}
    assert pids == children(fleet.proc.pid) and len(pids) == 2
    served: dict[int, int] = {}
    # SO_REUSEPORT hashes each connection's addresses: new connections reach both workers.
    for _ in range(400):
        assert fleet.get() == 200
        served = {w: row["req_total"] for w, row in fleet.per_worker().items()}
        if all(served.values()):
            break
    assert len(served) == 2 and all(served.values()), served


def test_workers_serve_tls_and_a_key_they_could_not_load_stops_the_master(
    tmp_path: Path, site: Path
) -> None:
    ca = trustme.CA()
    tls = issue(ca, tmp_path, "site", "localhost")
    fleet = Fleet(tmp_path, site, tls=tls)
    try:
        served: dict[int, int] = {}
        for _ in range(400):
            client = TlsClient(fleet.port, client_context(ca))
            assert client.request("GET", "/hello.txt").body == b"hello world\n"
            client.close()
            served = {w: row["req_total"] for w, row in fleet.per_worker().items()}
            if all(served.values()):
                break
        assert len(served) == 2 and all(served.values()), served
    finally:
        fleet.stop()
    (tmp_path / "site.key").write_text("not a key")
    done = subprocess.run(
        [sys.executable, "-m", "xps_server", str(fleet.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "site.key" in done.stderr and "Traceback" not in done.stderr


def test_metrics_route_and_snapshot_sum_exactly_over_the_workers(fleet: Fleet) -> None:
    requests = 30
    for _ in range(requests):
        assert fleet.get() == 200
    client = Client(fleet.port)
    response = client.request("GET", "/status")
    client.close()
    assert response.status == 200
    figures = json.loads(response.body)
    # Counted when it started: the metrics request itself is in req_total, not in res_total.
    assert figures["req_total"] == requests + 1
    assert figures["res_code_2xx"] == requests
    assert figures["req_file_serve"] == requests
    assert figures["workers"] == 2 and figures["pid"] == fleet.proc.pid
    per_worker = figures["per_worker"]
    assert {row["pid"] for row in per_worker} == children(fleet.proc.pid)
    assert sum(row["req_total"] for row in per_worker) == requests + 1
    client = Client(fleet.port)
    text = client.request("GET", "/status?format=prometheus").body.decode()
    client.close()
    assert f"xps_requests_total {requests + 2}" in text.splitlines()
    assert text.count("xps_worker_requests_total{worker=") == 2
    metrics = fleet.result("snapshot")["metrics"]
    assert metrics["req_total"] == requests + 2
    assert metrics["res_code_2xx"] == requests + 2


# --- commands reach every worker ----------------------------------------------------------
def test_a_block_closes_the_address_on_every_worker_and_each_refuses_it(fleet: Fleet) -> None:
    clients: list[Client] = []
    workers: set[int] = set()
    # Keep-alive connections from 127.0.0.2 until both workers hold some.
    while len(workers) < 2:
        assert len(clients) < 200, "the connections never reached both workers"
        client = Client(fleet.port, source="127.0.0.2")
        assert client.request("GET", "/").status == 200
        clients.append(client)
        rows = fleet.result("snapshot", limit=1000)["sessions"]["rows"]
        workers = {row["worker"] for row in rows if row["ip"] == "127.0.0.2"}
    bystander = Client(fleet.port)
    assert bystander.request("GET", "/").status == 200

    result = fleet.result("block", cidr="127.0.0.2")
    assert result["closed"] == len(clients)
    assert result["workers"] == 2 and result["persisted"] is True
    # Answered once every worker applied it: every connection is closed already.
    assert all(client.closed_by_peer() for client in clients)
    assert bystander.request("GET", "/").status == 200
    state = json.loads(fleet.state_path.read_text())
    assert [block["cidr"] for block in state["blocks"]] == ["127.0.0.2/32"]

    # Each worker refuses the address at accept: closed before a byte is read.
    for _ in range(400):
        with socket.create_connection(("127.0.0.1", fleet.port), 5, ("127.0.0.2", 0)) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_until_close(sock) == b""
        blocked = [row["conn_blocked"] for row in fleet.per_worker().values()]
        if all(blocked):
            break
    assert len(blocked) == 2 and all(blocked), blocked
    for client in clients:
        client.close()
    bystander.close()


def test_gzip_and_drain_apply_to_every_worker(tmp_path: Path, site: Path) -> None:
    upstream = f"127.0.0.1:{free_port()}"
    fleet = Fleet(
        tmp_path,
        site,
        routes=[{"req_path": "/api", "type": "reverse_proxy", "upstreams": [upstream]}],
    )
    try:
        result = fleet.result("gzip", route="/", enabled=True)
        assert result["gzip_enable"] is True and result["workers"] == 2
        routes = fleet.result("snapshot")["routes"]
        assert [row["gzip"] for row in routes if row["key"] == "/"] == [True]
        events = LineClient(fleet.socket_path)
        events.send({"cmd": "subscribe"})
        assert events.read()["ok"]
        result = fleet.result("drain", upstream=upstream)
        assert result["workers"] == 2 and result["persisted"] is True
        (row,) = fleet.result("snapshot")["upstreams"]
        assert row["state"] == "draining" and set(row["states"].values()) == {"draining"}
        # One health event per worker (health is per worker), none from the master (its own
        # would come before the command's operator_action).
        told: list[int] = []
        announced = False
        while len(told) < 2 or not announced:
            event = events.read_until(
                lambda m: m.get("event", {}).get("kind") in ("upstream_health", "operator_action")
            )["event"]
            if event["kind"] == "operator_action":
                announced = True
            else:
                assert event["state"] == "draining"
                told.append(event["worker"])
        assert sorted(told) == sorted(row["worker"] for row in fleet.workers())
        events.close()
        reply = fleet.command("drain", upstream="127.0.0.1:1")
        assert not reply["ok"] and "127.0.0.1:1" in reply["error"]
    finally:
        fleet.stop()


# --- lifecycle ------------------------------------------------------------------------------
def test_a_killed_worker_is_restarted_with_the_runtime_state_and_traffic_flows(
    fleet: Fleet,
) -> None:
    fleet.result("block", cidr="127.0.0.3")
    events = LineClient(fleet.socket_path)
    events.send({"cmd": "subscribe"})
    assert events.read()["ok"]
    victim = fleet.workers()[0]
    os.kill(victim["pid"], signal.SIGKILL)

    exited = events.read_until(lambda m: m.get("event", {}).get("kind") == "worker_exited")["event"]
    events.close()
    assert exited["pid"] == victim["pid"] and exited["worker"] == victim["worker"]
    assert exited["status"] == "signal SIGKILL" and exited["reason"] == "crashed"
    assert exited["restart_in"] is not None
    rows = wait_until(
        lambda: (
            (rows := fleet.serving(2)) and victim["pid"] not in {r["pid"] for r in rows} and rows
        ),
        timeout=START_TIMEOUT,
    )
    assert [row["restarts"] for row in rows if row["slot"] == victim["slot"]] == [1]
    assert {row["pid"] for row in rows} == children(fleet.proc.pid)
    for _ in range(20):
        assert fleet.get() == 200
    # The new worker started with the block: every worker refuses 127.0.0.3.
    for _ in range(400):
        with socket.create_connection(("127.0.0.1", fleet.port), 5, ("127.0.0.3", 0)) as sock:
            assert read_until_close(sock) == b""
        blocked = [row["conn_blocked"] for row in fleet.per_worker().values()]
        if all(blocked):
            break
    assert len(blocked) == 2 and all(blocked), blocked


def test_a_worker_that_keeps_dying_is_restarted_later_and_later(fleet: Fleet) -> None:
    events = LineClient(fleet.socket_path)
    events.send({"cmd": "subscribe"})
    assert events.read()["ok"]
    delays = []
    for _ in range(3):
        rows = wait_until(lambda: fleet.serving(2), timeout=START_TIMEOUT)
        victim = min(rows, key=lambda row: row["slot"])  # slot 0, dying young each time
        os.kill(victim["pid"], signal.SIGKILL)
        exited = events.read_until(
            lambda m, pid=victim["pid"]: m.get("event", {}).get("pid") == pid
        )["event"]
        delays.append(exited["restart_in"])
    events.close()
    # At once the first time, then backing off: 0.1 s, doubled at each death in a row.
    assert delays == [0.0, 0.1, 0.2]
    rows = wait_until(lambda: fleet.serving(2), timeout=START_TIMEOUT)
    assert [row["restarts"] for row in rows if row["slot"] == 0] == [3]


def test_sighup_under_load_fails_no_request(fleet: Fleet, tmp_path: Path) -> None:
    before = {row["worker"] for row in fleet.workers()}
    failures: list[str] = []
    done = threading.Event()
    counts = [0, 0]

    def load(index: int) -> None:
        while not done.is_set():
            try:
                status = fleet.get()
            except OSError as exc:
                failures.append(repr(exc))
                continue
            if status != 200:
                failures.append(f"status {status}")
            counts[index] += 1

    threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: all(counts))
        fleet.proc.send_signal(signal.SIGHUP)

        def replaced() -> bool:
            rows = fleet.serving(2)
            return bool(rows) and not before & {row["worker"] for row in rows}

        wait_until(replaced, timeout=START_TIMEOUT)
        served = list(counts)
        wait_until(lambda: all(now > then + 20 for now, then in zip(counts, served, strict=True)))
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert b"configuration reloaded" in (tmp_path / "server.log").read_bytes()


def test_worker_events_reach_the_masters_subscribers_naming_their_worker(fleet: Fleet) -> None:
    events = LineClient(fleet.socket_path)
    events.send({"cmd": "subscribe"})
    assert events.read()["ok"]
    ids = {row["worker"] for row in fleet.workers()}
    seen: set[int] = set()

    def forwarded() -> bool:
        # Workers build events once they hear that the master has a subscriber: the first
        # requests may go unreported, so requests go on until both workers' events came.
        assert fleet.get("/hello.txt") == 200
        events.sock.setblocking(False)
        try:
            events.buffer += events.sock.recv(1 << 20)
        except BlockingIOError:
            pass
        finally:
            events.sock.settimeout(5)
        *lines, events.buffer = events.buffer.split(b"\n")
        for line in lines:
            event = json.loads(line).get("event", {})
            if event.get("kind") == "request_finished":
                assert event["path"] == "/hello.txt" and event["status"] == 200
                seen.add(event["worker"])
        return seen == ids

    wait_until(forwarded, timeout=START_TIMEOUT)
    events.close()


def test_the_reload_command_replaces_the_workers_with_the_new_config(fleet: Fleet) -> None:
    before = {row["worker"] for row in fleet.workers()}
    fleet.config_path.write_text(json.dumps({**fleet.config, "server_name": "reloaded"}))
    assert fleet.result("reload") == {"reloaded": str(fleet.config_path)}
    # Answered once the new workers serve and the old ones accept no more (they may still
    # be finishing): every connection from now on meets the new config.
    rows = fleet.workers()
    assert [row["ready"] for row in rows if row["worker"] not in before] == [True, True]
    assert all(row["retiring"] for row in rows if row["worker"] in before)
    for _ in range(20):
        client = Client(fleet.port)
        assert client.request("GET", "/").headers["server"] == "reloaded"
        client.close()


def test_a_bad_reload_keeps_the_workers(fleet: Fleet) -> None:
    before = fleet.workers()
    fleet.config_path.write_text('{"workers": 2, "servers": 1}')
    reply = fleet.command("reload")
    assert not reply["ok"] and "servers" in reply["error"]
    pids = [(row["worker"], row["pid"]) for row in fleet.workers()]
    assert pids == [(row["worker"], row["pid"]) for row in before]
    assert fleet.get() == 200


def test_sigterm_drains_every_worker_and_exits_0(fleet: Fleet) -> None:
    pids = {row["pid"] for row in fleet.workers()}
    fleet.proc.send_signal(signal.SIGTERM)
    assert fleet.proc.wait(30) == 0
    assert not any(alive(pid) for pid in pids)
    assert not os.path.exists(fleet.socket_path)


def test_one_worker_stays_one_process(tmp_path: Path, site: Path) -> None:
    server = Fleet(tmp_path, site, workers=1)
    try:
        assert children(server.proc.pid) == set()
        assert server.get() == 200
    finally:
        server.stop()


# --- merging ----------------------------------------------------------------------------------
def test_an_upstream_the_workers_disagree_on_is_mixed_with_each_workers_state() -> None:
    one = {"upstreams": [{"addr": "a:1", "state": "up", "requests": 2, "down_for": 0.0}]}
    two = {"upstreams": [{"addr": "a:1", "state": "down", "requests": 3, "down_for": 4.5}]}
    (row,) = merge_upstreams([(1, one), (2, two)])
    assert row["state"] == "mixed" and row["states"] == {"1": "up", "2": "down"}
    assert row["requests"] == 5 and row["down_for"] == 4.5
    (row,) = merge_upstreams([(1, one), (3, one)])
    assert row["state"] == "up"


def test_top_clients_add_up_over_the_workers_and_rank_again() -> None:
    def client(ip: str, requests: int, nbytes: int) -> dict:
        return {
            "ip": ip,
            "requests": requests,
            "bytes": nbytes,
            "status_4xx": 0,
            "status_5xx": 0,
            "open": 1,
        }

    one = {
        "enabled": True,
        "window": 10,
        "tracked": 2,
        "capacity": 10,
        "clients": [client("a", 5, 10), client("b", 4, 900)],
    }
    two = {
        "enabled": True,
        "window": 10,
        "tracked": 1,
        "capacity": 10,
        "clients": [client("b", 3, 100)],
    }
    merged = merge_top([(1, one), (2, two)], 10, "requests")
    assert [(c["ip"], c["requests"], c["open"]) for c in merged["clients"]] == [
        ("b", 7, 2),
        ("a", 5, 1),
    ]
    assert merged["tracked"] == 3
    assert [c["ip"] for c in merge_top([(1, one), (2, two)], 1, "bytes")["clients"]] == ["b"]


def test_merging_adds_counters_and_keeps_the_highest_peak() -> None:
    merged = merge_figures(
        [
            {"requests": 3, "p99_ms": 2.0, "state": "up", "rps": 1.5},
            {"requests": 4, "p99_ms": 5.0, "state": "down", "rps": 0.25},
        ]
    )
    assert merged == {"requests": 7, "p99_ms": 5.0, "state": "up", "rps": 1.75}
    master = {"server_name": "x", "pid": 1, "workers": 2, "uptime_msec": 9, "blocks_active": 1}
    one = {"pid": 10, "req_total": 2, "res_total": 2, "res_time_total_msec": 4.0, "routes": {}}
    two = {"pid": 11, "req_total": 3, "res_total": 2, "res_time_total_msec": 8.0, "routes": {}}
    data = merge_metrics(master, [(1, one), (2, two)])
    assert data["req_total"] == 5 and data["pid"] == 1 and data["res_avg_res_time_msec"] == 3.0
    assert [(row["worker"], row["pid"]) for row in data["per_worker"]] == [(1, 10), (2, 11)]
