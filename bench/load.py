"""Drive load at a server: wrk when installed, else ``bench.loadgen`` in its own process."""

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.servers import pin_prefix

_REPO = Path(__file__).resolve().parent.parent
_GRACE = 30.0  # seconds a load run may overrun its duration before it is killed
_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}  # wrk: base 1024
_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}  # wrk latency units


class LoadError(Exception):
    """The load tool failed or printed nothing usable."""


@dataclass(frozen=True)
class LoadSpec:
    """One load run against SCHEME://127.0.0.1:port/path."""

    port: int
    path: str
    headers: tuple[str, ...]
    connections: int
    duration: int
    cpu: int | None
    scheme: str = "http"


@dataclass(frozen=True)
class LoadResult:
    """Rates, tail latency and error counts of one run; bytes include response headers."""

    tool: str
    requests: int
    requests_per_sec: float
    bytes_per_sec: float
    latency_p99_ms: float | None  # from writing a request to reading its whole response
    bad_status: int
    socket_errors: int

    def errors(self) -> str:
        """A short description of what went wrong, or '' when nothing did."""
        parts = []
        if self.bad_status:
            parts.append(f"{self.bad_status} bad-status responses")
        if self.socket_errors:
            parts.append(f"{self.socket_errors} socket errors")
        return ", ".join(parts)


def find_wrk() -> str | None:
    """wrk on PATH, or None."""
    return shutil.which("wrk")


def run_load(spec: LoadSpec, wrk: str | None) -> LoadResult:
    """Run the load once with wrk if given, else with the Python client."""
    return _run_wrk(spec, wrk) if wrk else _run_loadgen(spec)


def _execute(spec: LoadSpec, tool: str, argv: list[str], cwd: Path | None = None) -> str:
    timeout = spec.duration + _GRACE
    try:
        out = subprocess.run(
            pin_prefix(spec.cpu) + argv, capture_output=True, text=True, timeout=timeout, cwd=cwd
        )
    except subprocess.TimeoutExpired as e:
        raise LoadError(f"{tool} did not finish within {timeout:g} s") from e
    except OSError as e:
        raise LoadError(f"cannot run {tool}: {e.strerror}") from e
    if out.returncode != 0:
        detail = (out.stderr or out.stdout).strip().splitlines()
        raise LoadError(f"{tool} exited with code {out.returncode}: {' | '.join(detail[-3:])}")
    return out.stdout


def _run_wrk(spec: LoadSpec, wrk: str) -> LoadResult:
    argv = [wrk, "-t1", f"-c{spec.connections}", f"-d{spec.duration}s", "--timeout", "5s"]
    argv.append("--latency")
    for header in spec.headers:
        argv += ["-H", header]
    argv.append(f"{spec.scheme}://127.0.0.1:{spec.port}{spec.path}")
    return parse_wrk(_execute(spec, "wrk", argv))


def parse_wrk(output: str) -> LoadResult:
    """Read rates, the 99th percentile latency and errors from wrk's report."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    # A unit of one letter comes with a space after it ("1.35s "), lining up with the others.
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M)
    tps = re.search(r"^Transfer/sec:\s+([\d.]+)([KMGT]?B)", output, re.M)
    total = re.search(r"^\s*(\d+) requests in ", output, re.M)
    if not (rps and tps and total):
        raise LoadError(f"cannot parse wrk output: {output.strip()[-300:]!r}")
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return LoadResult(
        tool="wrk",
        requests=int(total.group(1)),
        requests_per_sec=float(rps.group(1)),
        bytes_per_sec=float(tps.group(1)) * _UNITS[tps.group(2)],
        latency_p99_ms=float(p99.group(1)) * _TIME_UNITS_MS[p99.group(2)] if p99 else None,
        bad_status=int(bad.group(1)) if bad else 0,
        socket_errors=sum(int(n) for n in sock.groups()) if sock else 0,
    )


def _run_loadgen(spec: LoadSpec) -> LoadResult:
    if spec.scheme != "http":
        raise LoadError(f"the {spec.scheme} cases need wrk (bench.loadgen speaks plain HTTP)")
    argv = [sys.executable, "-m", "bench.loadgen", "--port", str(spec.port), "--path", spec.path]
    argv += ["--connections", str(spec.connections), "--duration", str(spec.duration)]
    for header in spec.headers:
        argv += ["--header", header]
    totals = json.loads(_execute(spec, "bench.loadgen", argv, cwd=_REPO))
    seconds = totals["seconds"] or 1.0
    return LoadResult(
        tool="loadgen",
        requests=totals["requests"],
        requests_per_sec=totals["requests"] / seconds,
        bytes_per_sec=totals["bytes"] / seconds,
        latency_p99_ms=totals["latency_p99_ms"],
        bad_status=totals["bad_status"],
        socket_errors=totals["socket_errors"],
    )
