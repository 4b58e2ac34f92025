"""Run one scenario: its backend if it needs one, then each server in turn.

For each server: write its config, start it on a free loopback port, wait until it accepts,
check one response (status, encoding, body), warm up for a second, measure, stop it. Any
failure becomes that server's error; the run goes on with the next server and scenario.
"""

import gzip
import http.client
import json
import shutil
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench import nginx
from bench.load import LoadError, LoadResult, LoadSpec, run_load
from bench.scenarios import Metric, Scenario, Site, nginx_static_http, xps_config, xps_static_config
from bench.servers import STOP_TIMEOUT, Server, ServerError, free_port

WARMUP_SECONDS = 1
_PROBE_TIMEOUT = 10.0
SERVER_CPU = 0
LOAD_CPU = 1  # also the proxy backend's: the server under test keeps its core to itself

XPS = "xps"
NGINX = "nginx"


class ProbeError(Exception):
    """The server answered the scenario's request wrongly; measuring it would mean nothing."""


@dataclass(frozen=True)
class Settings:
    """Everything a run needs besides the scenario."""

    workdir: Path
    docroot: Path
    xps: str
    nginx: str | None
    compare_nginx: bool  # only when nginx was found and not disabled
    wrk: str | None
    connections: int
    duration: int
    pin: bool
    log_level: str = "warning"

    def cpu(self, role: int) -> int | None:
        """The core for a role when pinning, else None (no pinning)."""
        return role if self.pin else None


@dataclass
class TargetResult:
    """One server's outcome in one scenario."""

    name: str
    load: LoadResult | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def value(self, metric: Metric) -> float | None:
        """The measured rate the budget compares, if there is one."""
        if self.load is None:
            return None
        return self.load.requests_per_sec if metric is Metric.RPS else self.load.bytes_per_sec


@dataclass
class ScenarioResult:
    """Both servers' outcomes and the verdict against the budget."""

    scenario: Scenario
    xps: TargetResult
    nginx: TargetResult | None  # None: nginx not compared

    @property
    def ratio(self) -> float | None:
        """xps / nginx on the scenario's metric."""
        if self.nginx is None or self.xps.error or self.nginx.error:
            return None
        ours = self.xps.value(self.scenario.metric)
        theirs = self.nginx.value(self.scenario.metric)
        if ours is None or not theirs:
            return None
        return ours / theirs

    @property
    def verdict(self) -> str:
        """PASS / FAIL against the budget; ERROR if either side failed; n/a without nginx."""
        if self.xps.error or (self.nginx is not None and self.nginx.error):
            return "ERROR"
        if self.nginx is None:
            return "n/a"
        ratio = self.ratio
        if ratio is None:
            return "ERROR"
        return "PASS" if ratio >= self.scenario.budget else "FAIL"


ArgvBuilder = Callable[[Site, int], list[str]]


def run_scenario(scenario: Scenario, settings: Settings) -> ScenarioResult:
    """Measure xps, then nginx (when compared), on one scenario."""
    names = [XPS, NGINX] if settings.compare_nginx else [XPS]
    builders: dict[str, ArgvBuilder] = {
        XPS: lambda site, port: _xps_argv(scenario, settings, site, port),
        NGINX: lambda site, port: _nginx_argv(scenario, settings, site, port),
    }
    results: dict[str, TargetResult] = {}
    with ExitStack() as stack:
        site = Site(settings.docroot)
        if scenario.needs_backend:
            try:
                backend = stack.enter_context(_backend(settings, scenario.name))
            except ServerError as e:
                for name in names:
                    results[name] = TargetResult(name, error=f"backend: {e}")
                return _result(scenario, results)
            site = Site(settings.docroot, backend.port)
            _progress(scenario, "backend", f"{backend.name} on port {backend.port}")
        for name in names:
            results[name] = _measure(scenario, settings, site, name, builders[name])
    return _result(scenario, results)


def _result(scenario: Scenario, results: dict[str, TargetResult]) -> ScenarioResult:
    return ScenarioResult(scenario, results[XPS], results.get(NGINX))


def _progress(scenario: Scenario, who: str, what: str) -> None:
    print(f"[{scenario.name}] {who}: {what}", flush=True)


def _measure(
    scenario: Scenario, settings: Settings, site: Site, name: str, build: ArgvBuilder
) -> TargetResult:
    result = TargetResult(name)
    port = free_port()
    server: Server | None = None
    listened = False
    try:
        argv = build(site, port)
        log = settings.workdir / f"{name}-{scenario.name}.log"
        server = Server(name, argv, port, log, settings.cpu(SERVER_CPU))
        with server:
            listened = True
            _progress(scenario, name, f"listening on port {port}; checking one response")
            _probe(scenario, settings.docroot, port)
            spec = LoadSpec(
                port=port,
                path=scenario.path,
                headers=scenario.headers,
                connections=settings.connections,
                duration=WARMUP_SECONDS,
                cpu=settings.cpu(LOAD_CPU),
            )
            run_load(spec, settings.wrk)
            _progress(scenario, name, f"measuring for {settings.duration} s")
            spec = replace(spec, duration=settings.duration)
            result.load = run_load(spec, settings.wrk)
    except (ServerError, ProbeError, LoadError) as e:
        result.error = str(e)
    if listened and server is not None:
        _check_exit(server, result)
    if result.load is not None and result.error is None:
        if not result.load.requests:
            result.error = f"no response completed in {settings.duration} s"
        elif result.load.bad_status:
            result.error = (
                f"{result.load.bad_status} of {result.load.requests} responses were not 2xx/3xx"
            )
    _report_progress(scenario, result)
    return result


def _check_exit(server: Server, result: TargetResult) -> None:
    """A crash during the run voids it; a bad shutdown is worth a note."""
    if server.died:
        message = f"{server.name} exited (code {server.exit_code}) during the run"
        if result.error is None:
            result.error = message
        else:
            result.notes.append(message)
    elif server.killed:
        result.notes.append(f"{server.name} ignored SIGTERM for {STOP_TIMEOUT:g} s and was killed")
    elif server.exit_code != 0:
        result.notes.append(f"{server.name} exited with code {server.exit_code} on SIGTERM, not 0")


def _report_progress(scenario: Scenario, result: TargetResult) -> None:
    if result.load is not None:
        rate = result.load
        summary = f"{rate.requests_per_sec:,.0f} req/s, {rate.bytes_per_sec / 2**20:,.1f} MiB/s"
        if rate.errors():
            summary += f" ({rate.errors()})"
        _progress(scenario, result.name, summary)
    if result.error:
        _progress(scenario, result.name, f"ERROR {result.error}")
    for note in result.notes:
        _progress(scenario, result.name, f"note: {note}")


def _probe(scenario: Scenario, docroot: Path, port: int) -> None:
    """One request, checked: 200, the expected Content-Encoding, the file's exact bytes."""
    headers = dict(h.split(": ", 1) for h in scenario.headers)
    what = f"GET {scenario.path}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=_PROBE_TIMEOUT)
    try:
        conn.request("GET", scenario.path, headers=headers)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as e:
        raise ProbeError(f"{what} failed: {e!r}") from e
    finally:
        conn.close()
    if response.status != 200:
        raise ProbeError(f"{what} answered {response.status} {response.reason}, not 200")
    encoding = response.getheader("Content-Encoding")
    if encoding != scenario.content_encoding:
        raise ProbeError(
            f"{what} answered Content-Encoding {encoding!r}, expected {scenario.content_encoding!r}"
        )
    if encoding == "gzip":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError) as e:
            raise ProbeError(f"{what}: the gzip body does not decompress: {e}") from e
    expected = (docroot / scenario.body_file).read_bytes()
    if body != expected:
        raise ProbeError(
            f"{what}: body ({len(body)} bytes) differs from {scenario.body_file} "
            f"({len(expected)} bytes)"
        )


def _xps_argv(scenario: Scenario, settings: Settings, site: Site, port: int) -> list[str]:
    config = settings.workdir / f"xps-{scenario.name}.json"
    config.write_text(json.dumps(xps_config(scenario, site, port), indent=2))
    return _xps_command(settings, config)


def _xps_command(settings: Settings, config: Path) -> list[str]:
    if not (Path(settings.xps).is_file() or shutil.which(settings.xps)):
        raise ServerError(
            f"xps-server not found at {settings.xps}: run `make install`, or pass --xps PATH"
        )
    return [settings.xps, str(config), "--log-level", settings.log_level]


def _nginx_argv(scenario: Scenario, settings: Settings, site: Site, port: int) -> list[str]:
    assert settings.nginx is not None
    prefix = settings.workdir / f"nginx-{scenario.name}"
    conf = nginx.write_config(prefix, scenario.nginx_http(site, port))
    return nginx.argv(settings.nginx, prefix, conf)


def _backend(settings: Settings, scenario_name: str) -> Server:
    """The proxy scenarios' shared upstream: nginx serving docroot, else xps-server."""
    port = free_port()
    site = Site(settings.docroot)
    log = settings.workdir / f"backend-{scenario_name}.log"
    if settings.nginx is not None:
        prefix = settings.workdir / f"backend-{scenario_name}"
        conf = nginx.write_config(prefix, nginx_static_http(site, port))
        argv = nginx.argv(settings.nginx, prefix, conf)
        return Server("nginx backend", argv, port, log, settings.cpu(LOAD_CPU))
    config = settings.workdir / f"backend-{scenario_name}.json"
    config.write_text(json.dumps(xps_static_config(settings.docroot, port), indent=2))
    argv = _xps_command(settings, config)
    return Server("xps-server backend", argv, port, log, settings.cpu(LOAD_CPU))
