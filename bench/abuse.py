"""``python -m bench.abuse {emfile,pipeline,all}``: what two kinds of abuse cost the server.

emfile: the server runs out of descriptors and clients keep coming. It starts with a low
RLIMIT_NOFILE (soft and hard, default 256) and a long keep-alive timeout; idle keep-alive
connections (one answered GET each) are opened until one goes unanswered: the server can
accept no more. Then, for ``--duration`` seconds, one thread opens and closes TCP connections
at ``--rate`` per second without sending anything (non-blocking connects from several
loopback source addresses, so the rate holds whatever the connects do: they complete into
the listen backlog until it is full, then time out after 1 s). Every second it samples the
server's CPU (utime + stime from /proc/PID/stat; 100 % is one core) and the lines it wrote
(its stdout and stderr come through a pipe, counted by a thread; it runs ``--log-level
info``). Reported: CPU% and log lines/s idle, held full before the churn, over the first and
last 5 s of the churn and at their maximum; then whether it recovers: the held connections
are closed and a plain GET must be answered within 10 s, after which CPU and log lines are
sampled for 3 s more.

pipeline: memory a client can pin without reading. A ``file_serve`` route serves a 60 KiB
file; ``--clients`` clients (default 2,000, spread over ``--processes`` helper processes)
each connect with a small SO_RCVBUF, send ``--requests`` (200) pipelined GETs for it in one
write, and never read (the send timeout is raised so that the server does not close them
first). The server's VmRSS (/proc/PID/status) is read at baseline, once every client has
sent and the RSS has stopped moving (within 1 MiB for 2 s, at most 60 s), and again after
every client has closed (same rule, at most 30 s); reported in MiB and KiB per client over
baseline, with the server's own view from a ``metrics`` route (open connections, requests
parsed, bytes sent) and the system's TCP buffer memory (/proc/net/sockstat, both ends). The
server and this process raise RLIMIT_NOFILE to the hard limit. Beware: the server's send
buffers grow to the kernel's limit, so on a small machine 2,000 such clients can fill the
whole system's TCP memory (net.ipv4.tcp_mem) for the length of the run.

``--xps CMD`` is the command that starts the server; the config path and ``--log-level`` are
appended (default: this checkout's .venv/bin/xps-server). The server runs in a temporary
directory, so an arbitrary checkout can be measured with the main venv's Python::

    PYTHONPATH=/path/to/worktree python -m bench.abuse all \\
        --xps "/work/main/.venv/bin/python -m xps_server.cli"

The table goes to stdout and every figure to ``bench/results/abuse-[LABEL-]TIMESTAMP.json``.
Exit code: 0 when every scenario ran (and the emfile server recovered), 1 otherwise, 2 for
bad options, 130 when interrupted. Never run by CI: it needs the machine's loopback, spare
descriptors and quiet cores; the load average is recorded because timings are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import http.client
import json
import multiprocessing as mp
import os
import platform
import resource
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection as PipeEnd
from pathlib import Path
from types import FrameType
from typing import Any

from bench.cli import default_xps
from bench.console_keys import client_socket, response_complete
from bench.fixtures import KIB, write_fixtures
from bench.servers import STOP_TIMEOUT, Server, ServerError, free_port, raise_nofile

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCENARIOS = ("emfile", "pipeline")
REQUEST_KEEP = b"GET /1k.txt HTTP/1.1\r\nHost: bench\r\n\r\n"
SOURCES = [f"127.0.1.{i}" for i in range(1, 9)]  # spreads client ports over 8 addresses
_TICK = os.sysconf("SC_CLK_TCK")
_MIB = 2**20
_PAGE = os.sysconf("SC_PAGE_SIZE")
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
EMFILE_MARK = b"Too many open files"  # strerror(EMFILE), and the start of strerror(ENFILE)

# emfile
ANSWER_TIMEOUT = 3.0  # a held connection's GET unanswered this long: the server is full
CHURN_CONNECT_TIMEOUT = 1.0  # a SYN dropped by a full backlog is retried only after 1 s
RECOVERY_LIMIT = 10.0
IDLE_SECONDS = 2
FULL_SECONDS = 2
AFTER_SECONDS = 3
EDGE_SECONDS = 5  # "first" and "last" windows of the churn

# pipeline
SETTLE_QUIET = 2.0
SETTLE_TOLERANCE = _MIB
SENT_LIMIT = 60.0
CLOSED_LIMIT = 30.0
SETUP_LIMIT = 60.0
HELPER_LIFETIME = 300.0  # helpers give up on their own after this, whatever the parent does
METRICS_PATH = "/_bench/metrics"
FILE_NAME = "60k.bin"


class BenchError(Exception):
    """The scenario could not be run as designed; the message says why."""


# --- the server process -----------------------------------------------------------------------
def xps_argv(xps: str, config: Path, log_level: str) -> list[str]:
    """CMD split as a shell would, plus the config and the log level."""
    words = shlex.split(xps)
    if not words or not (Path(words[0]).is_file() or shutil.which(words[0])):
        raise ServerError(f"cannot find {words[0] if words else '(empty --xps)'}: pass --xps CMD")
    return [*words, str(config), "--log-level", log_level]


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # fields 14 and 15 of proc(5)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) from /proc/PID/status, in KiB."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


def tcp_buffer_kib() -> int | None:
    """Memory in all TCP socket buffers of the system (both ends of loopback), in KiB."""
    try:
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                words = line.split()
                return int(words[words.index("mem") + 1]) * _PAGE // KIB
    except (OSError, ValueError):
        pass
    return None


class LoggedServer(Server):
    """A Server whose output goes through a pipe to a thread that counts its lines."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lines = 0
        self.emfile_lines = 0
        self.first_emfile: str | None = None
        self._tail: deque[bytes] = deque(maxlen=8)
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        proc = self.spawn(subprocess.PIPE)
        self._proc = proc
        assert proc.stdout is not None
        with contextlib.suppress(OSError):  # a bigger pipe: the server never waits on us
            fcntl.fcntl(proc.stdout.fileno(), F_SETPIPE_SZ, _MIB)
        self._reader = threading.Thread(target=self._read, args=(proc.stdout.fileno(),))
        self._reader.start()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        super().stop(timeout)
        if self._reader is not None:
            self._reader.join()
            self._reader = None
            assert self._proc is not None and self._proc.stdout is not None
            self._proc.stdout.close()

    def _read(self, fd: int) -> None:
        partial = b""
        while chunk := os.read(fd, 1 << 16):
            data = partial + chunk
            cut = data.rfind(b"\n") + 1
            complete, partial = data[:cut], data[cut:]
            if not complete:
                continue
            self.lines += complete.count(b"\n")
            emfile = complete.count(EMFILE_MARK)
            if emfile and self.first_emfile is None:
                start = complete.find(EMFILE_MARK)
                line_start = complete.rfind(b"\n", 0, start) + 1
                line_end = complete.find(b"\n", start)
                self.first_emfile = complete[line_start:line_end].decode(errors="replace")
            self.emfile_lines += emfile
            self._tail.extend(complete.rsplit(b"\n", 9)[-9:-1])

    def _log_tail(self) -> str:
        if not self._tail:
            return ""
        tail = "\n    ".join(line.decode(errors="replace") for line in self._tail)
        return f"; its output ends:\n    {tail}"


def get_status(port: int, path: str, timeout: float) -> int:
    """One GET on a fresh connection: the status, the body read and discarded."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def say(message: str) -> None:
    print(message, flush=True)


# --- emfile -----------------------------------------------------------------------------------
@dataclass
class Sample:
    """One interval: the server's CPU% (of one core) and the lines it wrote per second."""

    seconds: float
    cpu_pct: float
    log_lines_per_s: float
    emfile_lines_per_s: float


@dataclass
class Churn:
    """Counts of the connect-and-close churn."""

    rate: float
    attempted: int = 0
    connected: int = 0  # completed: the kernel queued them in the listen backlog
    timed_out: int = 0  # no SYN-ACK within 1 s: the backlog was full
    failed: int = 0  # refused or another error


@dataclass
class EmfileResult:
    nofile: int
    duration: int
    held: int = 0  # connections answered before one was not
    idle: Sample | None = None
    full: Sample | None = None  # held full, before the churn
    churn: Churn | None = None
    samples: list[Sample] = field(default_factory=list)
    recovered_after_s: float | None = None  # None: no answer within RECOVERY_LIMIT
    after: Sample | None = None
    first_emfile_line: str | None = None
    log_lines_total: int = 0
    emfile_lines_total: int = 0

    def window(self, what: str, first: bool) -> float | None:
        part = self.samples[:EDGE_SECONDS] if first else self.samples[-EDGE_SECONDS:]
        if not part:
            return None
        return sum(getattr(s, what) for s in part) / len(part)

    def peak(self, what: str) -> float | None:
        return max((getattr(s, what) for s in self.samples), default=None)


def measure(server: LoggedServer, seconds: float) -> Sample:
    """CPU and log lines over `seconds`."""
    cpu0, lines0, emfile0, t0 = cpu_seconds(server.pid), server.lines, server.emfile_lines, now()
    time.sleep(seconds)
    cpu1, lines1, emfile1, t1 = cpu_seconds(server.pid), server.lines, server.emfile_lines, now()
    wall = t1 - t0
    return Sample(
        round(wall, 3),
        round((cpu1 - cpu0) / wall * 100, 1),
        round((lines1 - lines0) / wall, 1),
        round((emfile1 - emfile0) / wall, 1),
    )


def now() -> float:
    return time.monotonic()


def answered(sock: socket.socket, timeout: float) -> bool:
    """Whether one whole response arrives on sock within timeout."""
    sock.settimeout(timeout)
    buf = bytearray()
    try:
        while not response_complete(buf):
            data = sock.recv(65536)
            if not data:
                raise BenchError("the server closed a held connection instead of answering")
            buf += data
    except TimeoutError:
        return False
    return True


def hold_until_full(port: int, cap: int) -> list[socket.socket]:
    """Keep-alive connections, one GET each, until one is not answered: the server is full.

    The last one stays unanswered in the listen backlog (or accepted without a descriptor to
    read the file with); the others are idle sessions.
    """
    held: list[socket.socket] = []
    try:
        for _ in range(cap):
            sock = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT)
            held.append(sock)
            sock.sendall(REQUEST_KEEP)
            if not answered(sock, ANSWER_TIMEOUT):
                return held
    except BaseException:
        close_all(held)
        raise
    close_all(held)
    raise BenchError(f"{cap} connections answered: the server never ran out of descriptors")


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()
    socks.clear()


class ChurnThread(threading.Thread):
    """Opens a TCP connection every 1/rate s and closes it once connected or after 1 s."""

    def __init__(self, port: int, rate: float) -> None:
        super().__init__(name="churn")
        self.address = ("127.0.0.1", port)
        self.counts = Churn(rate)
        self.stopping = threading.Event()

    def run(self) -> None:
        counts = self.counts
        pending: dict[socket.socket, float] = {}  # in deadline order: deadlines only grow
        with selectors.DefaultSelector() as sel:
            started = now()
            try:
                while not self.stopping.is_set():
                    while started + counts.attempted / counts.rate <= now():
                        self._open(sel, pending)
                    due = started + counts.attempted / counts.rate
                    if pending:
                        due = min(due, next(iter(pending.values())))
                    for key, _ in sel.select(max(0.0, min(due - now(), 0.1))):
                        sock: socket.socket = key.fileobj  # type: ignore[assignment]
                        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if error:
                            counts.failed += 1
                        else:
                            counts.connected += 1
                        del pending[sock]
                        sel.unregister(sock)
                        sock.close()
                    expired = [s for s, deadline in pending.items() if deadline <= now()]
                    for sock in expired:
                        counts.timed_out += 1
                        del pending[sock]
                        sel.unregister(sock)
                        sock.close()
            finally:
                for sock in pending:
                    sock.close()

    def _open(self, sel: selectors.BaseSelector, pending: dict[socket.socket, float]) -> None:
        counts = self.counts
        counts.attempted += 1
        try:
            sock = client_socket(SOURCES[counts.attempted % len(SOURCES)])
        except OSError:
            counts.failed += 1
            return
        sock.setblocking(False)
        error = sock.connect_ex(self.address)
        if error not in (0, errno.EINPROGRESS):
            counts.failed += 1
            sock.close()
            return
        pending[sock] = now() + CHURN_CONNECT_TIMEOUT
        sel.register(sock, selectors.EVENT_WRITE)


def emfile_config(docroot: Path, port: int) -> dict[str, Any]:
    return {
        "access_log": None,
        "timeouts": {"keep_alive": 600},  # the held sessions must outlive the run
        "servers": [
            {
                "listeners": [{"host": "127.0.0.1", "port": port}],
                "routes": [{"req_path": "/", "type": "file_serve", "dir_path": str(docroot)}],
            }
        ],
    }


def run_emfile(args: argparse.Namespace, workdir: Path, docroot: Path) -> EmfileResult:
    result = EmfileResult(nofile=args.nofile, duration=args.duration)
    port = free_port()
    config = workdir / "emfile.json"
    config.write_text(json.dumps(emfile_config(docroot, port), indent=2))
    argv = xps_argv(args.xps, config, "info")
    server = LoggedServer(
        "xps", argv, port, workdir / "emfile.log", nofile=(args.nofile, args.nofile), cwd=workdir
    )
    held: list[socket.socket] = []
    with server:
        if get_status(port, "/1k.txt", ANSWER_TIMEOUT) != 200:
            raise BenchError("GET /1k.txt did not answer 200")
        result.idle = measure(server, IDLE_SECONDS)
        say(f"[emfile] idle: {result.idle.cpu_pct} % CPU; opening idle connections until full")
        try:
            held = hold_until_full(port, args.nofile + 64)
            result.held = len(held) - 1
            result.full = measure(server, FULL_SECONDS)
            say(
                f"[emfile] full after {result.held} idle connections: {result.full.cpu_pct} % "
                f"CPU, {result.full.log_lines_per_s:,.0f} log lines/s; churning "
                f"{args.rate:g} connections/s for {args.duration} s"
            )
            churn = ChurnThread(port, args.rate)
            result.churn = churn.counts
            churn.start()
            try:
                for second in range(args.duration):
                    sample = measure(server, 1.0)
                    result.samples.append(sample)
                    if second % 5 == 4:
                        say(
                            f"[emfile] {second + 1:>3} s: {sample.cpu_pct:5.1f} % CPU, "
                            f"{sample.log_lines_per_s:8,.0f} log lines/s"
                        )
            finally:
                churn.stopping.set()
                churn.join()
        finally:
            close_all(held)
        released = now()
        while now() - released < RECOVERY_LIMIT:
            with contextlib.suppress(OSError, http.client.HTTPException):
                if get_status(port, "/1k.txt", 1.0) == 200:
                    result.recovered_after_s = round(now() - released, 2)
                    break
            time.sleep(0.1)
        result.after = measure(server, AFTER_SECONDS)
    result.first_emfile_line = server.first_emfile
    result.log_lines_total = server.lines
    result.emfile_lines_total = server.emfile_lines
    if server.died:
        raise BenchError(f"the server exited (code {server.exit_code}) during the run")
    return result


def emfile_table(r: EmfileResult) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    rows = [("", "idle", "full", "first 5 s", "last 5 s", "max", "recovered")]
    for label, what, fmt in (
        ("server CPU %", "cpu_pct", ".1f"),
        ("log lines/s", "log_lines_per_s", ",.0f"),
        ("EMFILE lines/s", "emfile_lines_per_s", ",.0f"),
    ):
        rows.append(
            (
                label,
                num(getattr(r.idle, what, None), fmt),
                num(getattr(r.full, what, None), fmt),
                num(r.window(what, first=True), fmt),
                num(r.window(what, first=False), fmt),
                num(r.peak(what), fmt),
                num(getattr(r.after, what, None), fmt),
            )
        )
    out = [f"emfile: RLIMIT_NOFILE {r.nofile}, {r.held} idle connections held, {r.duration} s"]
    out += columns(rows)
    if r.churn is not None:
        c = r.churn
        out.append(
            f"churn at {c.rate:g}/s: {c.attempted:,} attempted, {c.connected:,} connected "
            f"(into the backlog), {c.timed_out:,} timed out, {c.failed:,} failed"
        )
    if r.recovered_after_s is None:
        out.append(f"recovery: NO answer within {RECOVERY_LIMIT:g} s of releasing the held ones")
    else:
        out.append(f"recovery: a GET answered {r.recovered_after_s} s after releasing them")
    out.append(f"log: {r.log_lines_total:,} lines, {r.emfile_lines_total:,} naming EMFILE")
    if r.first_emfile_line:
        out.append(f"  e.g. {r.first_emfile_line}")
    return "\n".join(out)


# --- pipeline ---------------------------------------------------------------------------------
def pipeline_clients(
    port: int,
    count: int,
    rcvbuf: int,
    payload: bytes,
    offset: int,
    report: PipeEnd,
    stop: Any,
) -> None:
    """In a helper process: `count` clients send `payload` and never read; close on `stop`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    started = now()
    socks: list[socket.socket] = []
    error = None
    try:
        for i in range(count):
            sock = client_socket(SOURCES[(offset + i) % len(SOURCES)])
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(10)
            sock.connect(("127.0.0.1", port))
            sock.sendall(payload)
    except OSError as exc:  # reported to the parent, which fails the run
        error = f"client {offset + len(socks) - 1}: {type(exc).__name__}: {exc}"
    report.send({"sent": len(socks) - 1 if error else len(socks), "error": error})
    try:
        stop.wait(max(0.0, HELPER_LIFETIME - (now() - started)))
    finally:
        close_all(socks)
        report.send({"closed": True})


@dataclass
class Phase:
    """The server's memory and its own counters at one point."""

    name: str
    rss_kib: int
    peak_kib: int
    waited_s: float = 0.0
    settled: bool = True
    tcp_buffers_kib: int | None = None  # system-wide, both ends
    server: dict[str, int] = field(default_factory=dict)


@dataclass
class PipelineResult:
    clients: int
    requests: int
    file_bytes: int
    rcvbuf: int
    processes: int
    server_nofile: int
    sent: int = 0
    send_seconds: float = 0.0
    phases: list[Phase] = field(default_factory=list)


def settle(pid: int, limit: float) -> tuple[float, bool]:
    """Poll VmRSS until it stays within SETTLE_TOLERANCE for SETTLE_QUIET s, or `limit` s.

    Returns the seconds waited and whether it settled.
    """
    started = now()
    reference = memory_kib(pid)["VmRSS"]
    since = started
    while True:
        time.sleep(0.2)
        rss = memory_kib(pid)["VmRSS"]
        if abs(rss - reference) * KIB > SETTLE_TOLERANCE:
            reference, since = rss, now()
        elif now() - since >= SETTLE_QUIET:
            return round(now() - started, 1), True
        if now() - started >= limit:
            return round(now() - started, 1), False


_SERVER_VIEW = (
    "conn_current",
    "conn_timeout",
    "req_total",
    "res_total",
    "traffic_total_send_bytes",
)


def server_view(port: int) -> dict[str, int]:
    """A few figures from the metrics route, or {} if it does not answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", METRICS_PATH, headers={"Accept": "application/json"})
        response = conn.getresponse()
        data = json.loads(response.read()) if response.status == 200 else {}
    except (OSError, http.client.HTTPException, ValueError):
        return {}
    finally:
        conn.close()
    return {name: int(data[name]) for name in _SERVER_VIEW if name in data}


def phase(name: str, server: Server, port: int, limit: float | None) -> Phase:
    """The server's figures now, or once its RSS has settled when `limit` is given."""
    waited, settled = (0.0, True) if limit is None else settle(server.pid, limit)
    memory = memory_kib(server.pid)
    result = Phase(
        name,
        memory["VmRSS"],
        memory["VmHWM"],
        waited,
        settled,
        tcp_buffer_kib(),
        server_view(port),
    )
    say(
        f"[pipeline] {name}: RSS {result.rss_kib / KIB:,.1f} MiB"
        + ("" if limit is None else f" after {waited:g} s")
        + ("" if settled else " (still moving)")
    )
    return result


def pipeline_config(docroot: Path, port: int) -> dict[str, Any]:
    return {
        "access_log": None,
        # The clients never read: with the default 30 s send timeout a slow settle would see
        # some of them closed by the server (a client reading a byte now and then would not be).
        "timeouts": {"send": 600},
        "servers": [
            {
                "listeners": [{"host": "127.0.0.1", "port": port}],
                "routes": [
                    {"req_path": "/", "type": "file_serve", "dir_path": str(docroot)},
                    {"req_path": METRICS_PATH, "type": "metrics"},
                ],
            }
        ],
    }


@contextlib.contextmanager
def helpers(
    args: argparse.Namespace, port: int, payload: bytes
) -> Iterator[tuple[list[PipeEnd], Any]]:
    """The client processes, each with a report pipe; stopped (and reaped) on the way out."""
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    share, extra = divmod(args.clients, args.processes)
    procs: list[Any] = []
    pipes: list[PipeEnd] = []
    offset = 0
    try:
        for i in range(args.processes):
            count = share + (i < extra)
            ours, theirs = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=pipeline_clients,
                args=(port, count, args.rcvbuf, payload, offset, theirs, stop),
                daemon=True,
            )
            proc.start()
            theirs.close()
            procs.append(proc)
            pipes.append(ours)
            offset += count
        yield pipes, stop
    finally:
        stop.set()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()


def receive_all(pipes: list[PipeEnd], limit: float, what: str) -> list[dict[str, Any]]:
    deadline = now() + limit
    reports = []
    for pipe in pipes:
        if not pipe.poll(max(0.0, deadline - now())):
            raise BenchError(f"a client process did not report {what} within {limit:g} s")
        reports.append(pipe.recv())
    return reports


def run_pipeline(args: argparse.Namespace, workdir: Path, docroot: Path) -> PipelineResult:
    soft = raise_nofile()
    per_process = -(-args.clients // args.processes)
    if soft < per_process + 64:
        raise BenchError(
            f"RLIMIT_NOFILE {soft} is too low for {per_process} clients per process: "
            "raise the hard limit or pass more --processes"
        )
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < args.clients + 256:
        raise BenchError(f"the hard RLIMIT_NOFILE {hard} is too low for {args.clients} clients")
    (docroot / FILE_NAME).write_bytes(os.urandom(args.file_kib * KIB))
    result = PipelineResult(
        clients=args.clients,
        requests=args.requests,
        file_bytes=args.file_kib * KIB,
        rcvbuf=args.rcvbuf,
        processes=args.processes,
        server_nofile=soft,
    )
    port = free_port()
    config = workdir / "pipeline.json"
    config.write_text(json.dumps(pipeline_config(docroot, port), indent=2))
    argv = xps_argv(args.xps, config, "warning")
    request = f"GET /{FILE_NAME} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    payload = request * args.requests
    server = Server("xps", argv, port, workdir / "pipeline.log", nofile=(soft, soft), cwd=workdir)
    with server:
        if get_status(port, f"/{FILE_NAME}", 10) != 200:
            raise BenchError(f"GET /{FILE_NAME} did not answer 200")
        result.phases.append(phase("baseline", server, port, None))
        say(
            f"[pipeline] {args.clients:,} clients x {args.requests} GETs of {args.file_kib} KiB, "
            f"SO_RCVBUF {args.rcvbuf}, from {args.processes} processes"
        )
        started = now()
        with helpers(args, port, payload) as (pipes, stop):
            reports = receive_all(pipes, SETUP_LIMIT, "its clients' sends")
            result.send_seconds = round(now() - started, 2)
            result.sent = sum(r["sent"] for r in reports)
            errors = [r["error"] for r in reports if r["error"]]
            if errors:
                raise BenchError(f"clients failed to send: {'; '.join(errors)}")
            result.phases.append(phase("all sent", server, port, SENT_LIMIT))
            stop.set()
            receive_all(pipes, SETUP_LIMIT, "its clients closed")
        result.phases.append(phase("all closed", server, port, CLOSED_LIMIT))
    if server.died:
        raise BenchError(f"the server exited (code {server.exit_code}) during the run")
    return result


def pipeline_table(r: PipelineResult) -> str:
    base = r.phases[0]
    rows = [
        (
            "phase",
            "RSS MiB",
            "+MiB",
            "+KiB/client",
            "peak MiB",
            "TCP bufs MiB",
            "conns",
            "requests",
            "sent MiB",
        )
    ]
    for p in r.phases:
        grown = p.rss_kib - base.rss_kib
        view = p.server
        sent = view.get("traffic_total_send_bytes")
        rows.append(
            (
                p.name + ("" if p.settled else " (unsettled)"),
                f"{p.rss_kib / KIB:,.1f}",
                f"{grown / KIB:+,.1f}",
                f"{grown / r.clients:+,.1f}",
                f"{p.peak_kib / KIB:,.1f}",
                "-" if p.tcp_buffers_kib is None else f"{p.tcp_buffers_kib / KIB:,.1f}",
                str(view.get("conn_current", "-")),
                str(view.get("req_total", "-")),
                "-" if sent is None else f"{sent / _MIB:,.1f}",
            )
        )
    head = (
        f"pipeline: {r.clients:,} clients x {r.requests} pipelined GETs of "
        f"{r.file_bytes // KIB} KiB, SO_RCVBUF {r.rcvbuf}, never reading; "
        f"all sent in {r.send_seconds} s"
    )
    note = "conns/requests/sent MiB: the server's metrics; TCP bufs: /proc/net/sockstat, both ends"
    return "\n".join([head, *columns(rows), note])


# --- report -----------------------------------------------------------------------------------
def columns(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join([row[0].ljust(widths[0]), *cells]))
    return lines


def write_json(document: dict[str, Any], label: str | None) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = RESULTS_DIR / f"abuse-{label + '-' if label else ''}{stamp}.json"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- main -------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.abuse",
        description="Measure the server under descriptor exhaustion (emfile) and under "
        "pipelining clients that never read (pipeline).",
    )
    p.add_argument("scenario", choices=[*SCENARIOS, "all"])
    p.add_argument(
        "--xps",
        default=default_xps(),
        metavar="CMD",
        help="command starting the server; the config path is appended (default: %(default)s)",
    )
    p.add_argument("--label", help="tag for the JSON file name and contents, e.g. before")
    emfile = p.add_argument_group("emfile")
    emfile.add_argument("--nofile", type=int, default=256, help="server RLIMIT_NOFILE (256)")
    emfile.add_argument("--duration", type=int, default=30, help="seconds of churn (30)")
    emfile.add_argument("--rate", type=float, default=100.0, help="new connections/s (100)")
    pipeline = p.add_argument_group("pipeline")
    pipeline.add_argument("--clients", type=int, default=2000, help="clients (2000)")
    pipeline.add_argument("--requests", type=int, default=200, help="GETs per client (200)")
    pipeline.add_argument("--file-kib", type=int, default=60, help="file size, KiB (60)")
    pipeline.add_argument("--rcvbuf", type=int, default=4096, help="client SO_RCVBUF (4096)")
    pipeline.add_argument("--processes", type=int, default=4, help="client processes (4)")
    return p


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios; see the module docstring for the exit code."""
    p = parser()
    args = p.parse_args(argv)
    if min(args.nofile, args.duration, args.clients, args.requests, args.processes) < 1:
        p.error("--nofile, --duration, --clients, --requests and --processes must be >= 1")
    if args.rate <= 0 or args.file_kib < 1 or args.rcvbuf < 1:
        p.error("--rate, --file-kib and --rcvbuf must be positive")
    chosen = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    runners: dict[str, Callable[[argparse.Namespace, Path, Path], Any]] = {
        "emfile": run_emfile,
        "pipeline": run_pipeline,
    }
    tables = {"emfile": emfile_table, "pipeline": pipeline_table}
    document: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "label": args.label,
        "host": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "xps": args.xps,
        "pythonpath": os.environ.get("PYTHONPATH"),
        "options": {k: v for k, v in vars(args).items() if k not in ("xps", "label")},
        "scenarios": {},
    }
    say(f"xps: {args.xps}; load average {' '.join(map(str, load_average()))}")
    signal.signal(signal.SIGTERM, _interrupt)
    ok = True
    out: list[str] = []
    try:
        for name in chosen:
            entry: dict[str, Any] = {"load_before": load_average()}
            document["scenarios"][name] = entry
            with tempfile.TemporaryDirectory(prefix=f"xps-abuse-{name}-") as tmp:
                workdir = Path(tmp)
                docroot = workdir / "www"
                docroot.mkdir()
                write_fixtures(docroot)
                try:
                    result = runners[name](args, workdir, docroot)
                except (BenchError, ServerError, OSError) as exc:
                    ok = False
                    entry["error"] = str(exc)
                    out.append(f"{name}: ERROR {exc}")
                    say(f"[{name}] ERROR {exc}")
                else:
                    entry["result"] = asdict(result)
                    out.append(tables[name](result))
                    if isinstance(result, EmfileResult) and result.recovered_after_s is None:
                        ok = False
            entry["load_after"] = load_average()
            loads = f"{entry['load_before']} / {entry['load_after']}"
            out[-1] += f"\nload average before/after: {loads}"
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, reporting what was measured", flush=True)
        ok = False
        document["interrupted"] = True
    print()
    print("\n\n".join(out) if out else "nothing measured")
    print(f"\nresults: {write_json(document, args.label)}")
    if document.get("interrupted"):
        return 130
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
