"""Run one case: its backend if it needs one, then xps-server and each peer in turn.

For each server: write its config, start it on a free loopback port, wait until it accepts,
check one response (status, encoding, body), warm up for a second, measure, stop it. Any
failure becomes that server's error; the run goes on with the next server and case. With
several rounds the servers take turns, round after round, and each one's median round counts.
"""

import gzip
import http.client
import json
import shutil
import ssl
import subprocess
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench import nginx, peers
from bench.fixtures import write_certificate
from bench.load import LoadError, LoadResult, LoadSpec, run_load
from bench.scenarios import Scenario, Site, nginx_static_http, xps_config, xps_static_config
from bench.servers import STOP_TIMEOUT, Command, Server, ServerError, free_port

WARMUP_SECONDS = 1
_PROBE_TIMEOUT = 10.0
# Descriptors a process needs beyond one per connection (listeners, logs, files, epoll).
_SPARE_DESCRIPTORS = 64
SERVER_CPU = 0
LOAD_CPU = 1  # also the proxy backend's: the server under test keeps its core to itself

XPS = "xps"


class ProbeError(Exception):
    """The server answered the case's request wrongly; measuring it would mean nothing."""


@dataclass(frozen=True)
class Settings:
    """Everything a run needs besides the case."""

    workdir: Path
    docroot: Path
    xps: str
    peers: Mapping[str, str]  # the peers compared: name -> binary
    backend_nginx: str | None  # serves the proxy case's backend; None: xps-server does
    wrk: str | None
    connections: int  # for the cases that do not set their own
    duration: int
    pin: bool
    nofile: int  # the soft RLIMIT_NOFILE the servers and the load tool inherit
    rounds: int = 1  # measurements of each server, taking turns; the median one counts
    log_level: str = "warning"

    def cpu(self, role: int) -> int | None:
        """The core for a role when pinning, else None (no pinning)."""
        return role if self.pin else None


@dataclass
class TargetResult:
    """One server's outcome in one case."""

    name: str
    load: LoadResult | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    rounds: list[float] = field(default_factory=list)  # req/s of every round, in run order

    def rate(self) -> float | None:
        """Requests per second, when the server was measured without error."""
        if self.load is None or self.error:
            return None
        return self.load.requests_per_sec


@dataclass
class ScenarioResult:
    """Every server's outcome in one case, and the verdict against the budget."""

    scenario: Scenario
    connections: int
    xps: TargetResult
    peers: list[TargetResult]  # empty: no peer compared

    def best_peer(self) -> TargetResult | None:
        """The peer with the most requests per second (None when no peer has a rate)."""
        rated = [p for p in self.peers if p.rate() is not None]
        return max(rated, key=lambda p: p.rate() or 0.0, default=None)

    def ratio_to(self, peer: TargetResult | None) -> float | None:
        """xps req/s / peer req/s, when both were measured."""
        ours = self.xps.rate()
        theirs = None if peer is None else peer.rate()
        if ours is None or not theirs:
            return None
        return ours / theirs

    @property
    def ratio(self) -> float | None:
        """xps / the best peer, in requests per second."""
        return self.ratio_to(self.best_peer())

    @property
    def verdict(self) -> str:
        """PASS / FAIL against the budget; ERROR if any server failed; n/a with no peer."""
        if self.xps.error or any(p.error for p in self.peers):
            return "ERROR"
        if not self.peers:
            return "n/a"
        ratio = self.ratio
        if ratio is None:
            return "ERROR"
        return "PASS" if ratio >= self.scenario.budget else "FAIL"


CommandBuilder = Callable[[Site, int], Command]  # (site, port) -> how to run the server


@dataclass(frozen=True)
class _Contender:
    """A server measured in a case: how to run it, and its exit codes on a clean stop."""

    name: str
    command: CommandBuilder
    clean_exits: tuple[int, ...] = (0,)


def run_scenario(scenario: Scenario, settings: Settings) -> ScenarioResult:
    """Measure xps, then each peer of the case that this run compares."""
    connections = scenario.connections or settings.connections
    contenders = [_Contender(XPS, lambda site, port: _xps_command(scenario, settings, site, port))]
    contenders += [
        _peer_contender(scenario, settings, name)
        for name in scenario.peers
        if name in settings.peers
    ]
    results: dict[str, TargetResult] = {}

    def finish() -> ScenarioResult:
        measured = [results[c.name] for c in contenders]
        return ScenarioResult(scenario, connections, measured[0], measured[1:])

    def fail_all(problem: str) -> ScenarioResult:
        _progress(scenario, "all servers", f"ERROR {problem}")
        for contender in contenders:
            results[contender.name] = TargetResult(contender.name, error=problem)
        return finish()

    # A proxy holds two descriptors per connection: the client's and the upstream's.
    needed = connections * (2 if scenario.needs_backend else 1) + _SPARE_DESCRIPTORS
    if needed > settings.nofile:
        return fail_all(f"needs {needed} descriptors, RLIMIT_NOFILE allows {settings.nofile}")
    with ExitStack() as stack:
        site = Site(settings.docroot)
        if scenario.tls:
            try:
                cert, key = write_certificate(settings.workdir / "tls")
            except (OSError, subprocess.SubprocessError) as e:
                return fail_all(f"cannot make a certificate with openssl: {e}")
            site = Site(settings.docroot, cert=cert, key=key)
        if scenario.needs_backend:
            try:
                backend = stack.enter_context(_backend(settings, scenario.name))
            except ServerError as e:
                return fail_all(f"backend: {e}")
            site = Site(settings.docroot, backend.port)
            _progress(scenario, "backend", f"{backend.name} on port {backend.port}")
        # Taking turns spreads a busy machine's drift over every server.
        rounds: dict[str, list[TargetResult]] = {c.name: [] for c in contenders}
        for number in range(1, settings.rounds + 1):
            for contender in contenders:
                if settings.rounds > 1:
                    _progress(scenario, contender.name, f"round {number} of {settings.rounds}")
                rounds[contender.name].append(
                    _measure(scenario, settings, site, connections, contender)
                )
        for name, measured in rounds.items():
            results[name] = _median(measured)
    return finish()


def _median(measured: list[TargetResult]) -> TargetResult:
    """The round with the median req/s (the lower middle one of an even count), its notes
    joined by every other round's; any round's error stands for the whole server."""
    notes = [note for result in measured for note in result.notes]
    failed = [result for result in measured if result.error]
    if failed:
        chosen = failed[0]
    else:
        ordered = sorted(measured, key=lambda result: result.rate() or 0.0)
        chosen = ordered[(len(ordered) - 1) // 2]
    return replace(
        chosen,
        notes=list(dict.fromkeys(notes)),
        rounds=[r.load.requests_per_sec for r in measured if r.load is not None],
    )


def _peer_contender(scenario: Scenario, settings: Settings, name: str) -> _Contender:
    peer = peers.by_name(name)
    binary = settings.peers[name]
    config = scenario.peers[name]
    prefix = settings.workdir / f"{name}-{scenario.name}"
    return _Contender(
        name, lambda site, port: peer.command(binary, prefix, config(site, port)), peer.clean_exits
    )


def _progress(scenario: Scenario, who: str, what: str) -> None:
    print(f"[{scenario.name}] {who}: {what}", flush=True)


def _measure(
    scenario: Scenario, settings: Settings, site: Site, connections: int, contender: _Contender
) -> TargetResult:
    name = contender.name
    result = TargetResult(name)
    port = free_port()
    server: Server | None = None
    listened = False
    try:
        command = contender.command(site, port)
        log = settings.workdir / f"{name}-{scenario.name}.log"
        server = Server(
            name,
            command.argv,
            port,
            log,
            settings.cpu(SERVER_CPU),
            env=command.env,
            clean_exits=contender.clean_exits,
        )
        with server:
            listened = True
            _progress(scenario, name, f"listening on port {port}; checking one response")
            _probe(scenario, site, port)
            spec = LoadSpec(
                port=port,
                path=scenario.path,
                headers=scenario.headers,
                connections=connections,
                duration=WARMUP_SECONDS,
                cpu=settings.cpu(LOAD_CPU),
                scheme=scenario.scheme,
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
    elif server.exit_code not in server.clean_exits:
        result.notes.append(f"{server.name} exited with code {server.exit_code} on SIGTERM")


def _report_progress(scenario: Scenario, result: TargetResult) -> None:
    if result.load is not None:
        rate = result.load
        summary = f"{rate.requests_per_sec:,.0f} req/s, {rate.bytes_per_sec / 2**20:,.1f} MiB/s"
        if rate.latency_p99_ms is not None:
            summary += f", p99 {rate.latency_p99_ms:.2f} ms"
        if rate.errors():
            summary += f" ({rate.errors()})"
        _progress(scenario, result.name, summary)
    if result.error:
        _progress(scenario, result.name, f"ERROR {result.error}")
    for note in result.notes:
        _progress(scenario, result.name, f"note: {note}")


def _probe(scenario: Scenario, site: Site, port: int) -> None:
    """One request, checked: 200, the expected Content-Encoding, the file's exact bytes (over
    HTTPS: the certificate verified too)."""
    headers = dict(h.split(": ", 1) for h in scenario.headers)
    what = f"GET {scenario.path}"
    conn: http.client.HTTPConnection
    if scenario.tls:
        context = ssl.create_default_context(cafile=site.cert)
        conn = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=_PROBE_TIMEOUT, context=context
        )
    else:
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
    expected = (site.docroot / scenario.body_file).read_bytes()
    if body != expected:
        raise ProbeError(
            f"{what}: body ({len(body)} bytes) differs from {scenario.body_file} "
            f"({len(expected)} bytes)"
        )


def _xps_command(scenario: Scenario, settings: Settings, site: Site, port: int) -> Command:
    config = settings.workdir / f"xps-{scenario.name}.json"
    config.write_text(json.dumps(xps_config(scenario, site, port), indent=2))
    return _xps_run(settings, config)


def _xps_run(settings: Settings, config: Path) -> Command:
    if not (Path(settings.xps).is_file() or shutil.which(settings.xps)):
        raise ServerError(
            f"xps-server not found at {settings.xps}: run `make install`, or pass --xps PATH"
        )
    return Command([settings.xps, str(config), "--log-level", settings.log_level])


def _backend(settings: Settings, scenario_name: str) -> Server:
    """The proxy case's shared upstream: nginx serving docroot, else xps-server."""
    port = free_port()
    site = Site(settings.docroot)
    log = settings.workdir / f"backend-{scenario_name}.log"
    if settings.backend_nginx is not None:
        prefix = settings.workdir / f"backend-{scenario_name}"
        command = nginx.command(settings.backend_nginx, prefix, nginx_static_http(site, port))
        return Server("nginx backend", command.argv, port, log, settings.cpu(LOAD_CPU))
    config = settings.workdir / f"backend-{scenario_name}.json"
    config.write_text(json.dumps(xps_static_config(settings.docroot, port), indent=2))
    command = _xps_run(settings, config)
    return Server("xps-server backend", command.argv, port, log, settings.cpu(LOAD_CPU))
