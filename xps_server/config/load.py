"""Reading and validating the JSON config file into the :mod:`.model` dataclasses.

Validation never stops at the first mistake: every problem is collected, each message starting
with its key path (``servers[1].routes[0].upstreams[2]: ...``), and one :class:`ConfigError`
carries them all. Unknown keys are errors so that typos do not silently fall back to defaults.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import math
import os
import re
import socket
import ssl
from dataclasses import fields
from typing import Any, TypeGuard

from .model import (
    AUTO_BLOCK_EVENTS,
    LB_METHODS,
    LIMIT_KEYS,
    REDIRECT_CODES,
    REDIRECT_PLACEHOLDERS,
    ROUTE_TYPES,
    TLS_VERSIONS,
    AutoBlockRule,
    Config,
    Fleet,
    LimitConn,
    LimitReq,
    Limits,
    Listener,
    Route,
    Server,
    Timeouts,
    Tls,
    Upstream,
)
from .routes import parse_route_name, route_key

MAX_WORKERS = 1024  # worker processes a config may ask for

_TOP_KEYS = frozenset(
    {
        "server_name",
        "workers",
        "top_clients",
        "histograms",
        "access_log",
        "state_file",
        "control_socket",
        "timeouts",
        "limits",
        "servers",
        "fleet",
        "auto_block",
        "allowlist",
    }
)
_FLEET_KEYS = frozenset({"redis", "name", "prefix"})
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_SERVER_KEYS = frozenset({"listeners", "hostnames", "routes", "tls"})
_LISTENER_KEYS = frozenset({"host", "port", "tls"})
_TLS_KEYS = frozenset({"cert", "key", "min_version"})
_UPSTREAM_KEYS = frozenset({"addr", "weight"})
_ROUTE_TIMEOUT_KEYS = frozenset({"upstream_connect", "upstream_read"})
_COMMON_ROUTE_KEYS = frozenset(
    {
        "req_path",
        "type",
        "gzip_enable",
        "gzip_level",
        "gzip_mime_types",
        "ip_whitelist",
        "ip_blacklist",
        "limit_req",
        "limit_conn",
    }
)
_LIMIT_REQ_KEYS = frozenset({"rate", "burst", "key"})
_LIMIT_CONN_KEYS = frozenset({"per_ip"})
_AUTO_BLOCK_KEYS = frozenset({"when", "count", "window", "block", "route"})
# A block duration: seconds, or a number with a unit ("30s", "10m", "1h", "1d").
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])", re.ASCII)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TYPE_ROUTE_KEYS = {
    "file_serve": frozenset({"dir_path", "index", "dir_listing"}),
    "redirect": frozenset({"http_status_code", "redirect_url"}),
    "reverse_proxy": frozenset(
        {"upstreams", "lb_method", "max_fails", "fail_timeout", "timeouts", "ca_file", "tls_verify"}
    ),
    "metrics": frozenset(),
}
_ALL_ROUTE_KEYS = _COMMON_ROUTE_KEYS.union(*_TYPE_ROUTE_KEYS.values())

# Labels of letters, digits, "-" and "_" (container names use "_"), joined by dots.
_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}\Z)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
    r"(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*",
    re.ASCII | re.IGNORECASE,
)
# A Unix socket path lives in sockaddr_un.sun_path: 108 bytes including the final NUL.
_MAX_UNIX_PATH_BYTES = 107
_MISSING: Any = object()
_PLACEHOLDER_RE = re.compile(r"\{[^{}]*\}")


class ConfigError(Exception):
    """An unusable configuration. `problems` holds one message per problem, key path first."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def load_config(path: str) -> Config:
    """Read, decode and validate the config file at `path`.

    Relative paths inside it resolve against the file's folder. Raises :class:`ConfigError`
    for an unreadable file, malformed JSON (with line and column) or any invalid value.
    """
    return config_from(read_config(path), path)


def config_from(data: object, path: str) -> Config:
    """Validate `data`, the decoded content of the config file at `path`."""
    abs_path = os.path.abspath(path)
    config = parse_config(data, os.path.dirname(abs_path))
    config.path = abs_path
    return config


def read_config(path: str) -> object:
    """The config file at `path`, decoded but not validated (what a master hands its workers,
    so they run what it validated even if the file changes meanwhile); ConfigError if it
    cannot be read or decoded."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte offset {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except (ValueError, RecursionError) as exc:
        # Integers past Python's digit limit raise plain ValueError; deep nesting recurses.
        raise ConfigError(f"{path}: invalid JSON: {exc}") from None
    return data


def parse_config(data: object, base_dir: str) -> Config:
    """Validate an already-decoded JSON value; relative paths resolve against `base_dir`."""
    return _Checker(os.path.abspath(base_dir)).config(data)


def _describe(value: object) -> str:
    """A short rendering of a JSON value for "got ..." in messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        # Huge integers cannot even be turned into text (Python's digit limit).
        return repr(value) if value.bit_length() <= 64 else "a huge integer"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 60 else text[:56] + "...'"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _join(path: str, key: object) -> str:
    # Keys come from the user's file: quote odd ones so a message stays one readable line.
    shown = key if isinstance(key, str) and key.isidentifier() else repr(key)
    return f"{path}.{shown}" if path else shown


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _ip(text: str) -> str | None:
    """The canonical form of an IPv4/IPv6 literal, or None if `text` is not one."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _host(text: str) -> str | None:
    """A bind or connect host in canonical form (IPs normalised, names lower-cased), or None."""
    if text.startswith("[") and text.endswith("]"):
        inner = _ip(text[1:-1])
        return inner if inner is not None and ":" in inner else None
    ip = _ip(text)
    if ip is not None:
        return ip
    # All digits and dots but not an IPv4 address ("1.2.3.999") is a typo, not a name.
    if _HOSTNAME_RE.fullmatch(text) and not re.fullmatch(r"[0-9.]+", text):
        return text.lower().removesuffix(".")
    return None


def _address(text: str) -> tuple[str, int] | None:
    """Split "host:port" or "[v6]:port" into a canonical host and port, or None."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            return None
        host, port_text = _host(text[: end + 1]), text[end + 2 :]
    else:
        name, sep, port_text = text.rpartition(":")
        # A colon left in the name is an unbracketed IPv6 literal: ambiguous, refuse it.
        host = _host(name) if sep and ":" not in name else None
    if host is None or not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5:
        return None
    port = int(port_text)
    return (host, port) if 1 <= port <= 65535 else None


def _check_cert_pair(cert: str, key: str) -> str | None:
    """Why the certificate chain `cert` and its private key `key` cannot serve, or None."""

    def no_passphrase() -> bytes:
        raise ValueError  # an encrypted key would otherwise make OpenSSL prompt for one

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=no_passphrase)
    except ValueError:
        return f"the key {key} is encrypted: give an unencrypted key file"
    except ssl.SSLError as exc:
        # A reason code, else the message less its source line ("PEM lib (_ssl.c:3905)").
        reason = exc.reason.lower().replace("_", " ") if exc.reason else str(exc)
        reason = re.sub(r" \(_ssl\.c:\d+\)$", "", reason)
        return f"cannot use certificate {cert} with key {key}: {reason}"
    except OSError as exc:
        return f"cannot read {exc.filename or cert + ' or ' + key}: {exc.strerror or exc}"
    return None


def _check_ca_file(path: str) -> str | None:
    """Why `path` is no usable CA bundle (PEM certificates), or None."""
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError as exc:
        return f"no CA certificate could be read from {path}: {exc.reason or exc}"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    return None


class _Checker:
    """One validation pass: builds the model and collects problems instead of raising early."""

    def __init__(self, base_dir: str) -> None:
        self.base_dir = base_dir
        self.problems: list[str] = []
        # Certificate pairs already checked, with the problem found (None: usable).
        self.cert_checks: dict[tuple[str, str], str | None] = {}

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def expected(self, path: str, what: str, value: object) -> None:
        self.problem(path, f"expected {what}, got {_describe(value)}")

    # -- generic shapes -------------------------------------------------------------------

    def obj(self, value: object, path: str, allowed: frozenset[str]) -> dict[str, Any] | None:
        """`value` if it is an object, reporting any key not in `allowed`."""
        if not isinstance(value, dict):
            self.expected(path or "top level", "an object", value)
            return None
        self.known_keys(value, path, allowed)
        return value

    def known_keys(self, data: dict[str, Any], path: str, allowed: frozenset[str]) -> None:
        for key in data:
            if key not in allowed:
                self.problem(_join(path, key), "unknown key")

    def number(self, data: dict[str, Any], key: str, path: str, default: float) -> float:
        """A finite number > 0 (ints accepted, bools not)."""
        value = data.get(key, _MISSING)
        if value is _MISSING:
            return default
        where = _join(path, key)
        if not _is_number(value):
            self.expected(where, "a number", value)
            return default
        try:
            result = float(value)
        except OverflowError:
            result = math.inf
        if not math.isfinite(result) or result <= 0:
            self.expected(where, "a finite number > 0", value)
            return default
        return result

    def integer(
        self,
        data: dict[str, Any],
        key: str,
        path: str,
        default: int,
        low: int,
        high: int | None = None,
    ) -> int:
        """An integer in low..high (bools and floats refused)."""
        value = data.get(key, _MISSING)
        if value is _MISSING:
            return default
        where = _join(path, key)
        if not _is_int(value):
            self.expected(where, "an integer", value)
        elif value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in {low}..{high}"
            self.expected(where, f"an integer {bound}", value)
        else:
            return value
        return default

    def workers(self, value: object) -> int:
        """`workers`: an integer in 1..MAX_WORKERS, or "auto" for one per CPU core."""
        if value == "auto":
            return max(1, min(os.cpu_count() or 1, MAX_WORKERS))
        if not _is_int(value) or not 1 <= value <= MAX_WORKERS:
            self.expected("workers", f'an integer in 1..{MAX_WORKERS} or "auto"', value)
            return 1
        return value

    def boolean(self, data: dict[str, Any], key: str, path: str, default: bool) -> bool:
        value = data.get(key, _MISSING)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self.expected(_join(path, key), "true or false", value)
            return default
        return value

    def choice(
        self, data: dict[str, Any], key: str, path: str, default: str, options: tuple[str, ...]
    ) -> str:
        value = data.get(key, _MISSING)
        if value is _MISSING:
            return default
        if value not in options or not isinstance(value, str):
            self.expected(_join(path, key), "one of " + ", ".join(map(repr, options)), value)
            return default
        return value

    def text(self, value: object, path: str) -> str | None:
        """A non-empty string without control characters (it may end up in a header)."""
        if not isinstance(value, str):
            self.expected(path, "a string", value)
        elif not value:
            self.problem(path, "must not be empty")
        elif not value.isprintable():
            self.problem(path, f"contains control or non-printable characters: {value!r}")
        else:
            return value
        return None

    def items(self, data: dict[str, Any], key: str, path: str) -> list[tuple[str, Any]]:
        """(path, item) pairs of the list at `key`; nothing if absent or not a list."""
        value = data.get(key, _MISSING)
        if value is _MISSING:
            return []
        where = _join(path, key)
        if not isinstance(value, list):
            self.expected(where, "a list", value)
            return []
        return [(f"{where}[{i}]", item) for i, item in enumerate(value)]

    def file_path(self, value: object, where: str) -> str | None:
        """`value` as an absolute path, relative ones taken from the config file's folder."""
        text = self.text(value, where)
        return None if text is None else os.path.abspath(os.path.join(self.base_dir, text))

    # -- sections -------------------------------------------------------------------------

    def config(self, data: object) -> Config:
        top = self.obj(data, "", _TOP_KEYS)
        config = Config()
        if top is not None:
            self.top(top, config)
        if self.problems:
            raise ConfigError(self.problems)
        return config

    def top(self, top: dict[str, Any], config: Config) -> None:
        if "server_name" in top:
            config.server_name = self.text(top["server_name"], "server_name") or "eXpServer"
        config.workers = self.workers(top.get("workers", 1))
        config.top_clients = self.integer(top, "top_clients", "", config.top_clients, 0, 1_000_000)
        config.histograms = self.boolean(top, "histograms", "", config.histograms)
        for key in ("access_log", "state_file", "control_socket"):
            value = top.get(key)
            # null, like an absent key, leaves the feature off.
            if value is not None:
                is_stdout = key == "access_log" and value == "-"
                setattr(config, key, "-" if is_stdout else self.file_path(value, key))
        socket_path = config.control_socket
        if socket_path is not None and len(os.fsencode(socket_path)) > _MAX_UNIX_PATH_BYTES:
            self.problem(
                "control_socket",
                f"{socket_path!r} is longer than a Unix socket path may be "
                f"({_MAX_UNIX_PATH_BYTES} bytes)",
            )
        if "timeouts" in top:
            config.timeouts = self.timeouts(top["timeouts"])
        if "limits" in top:
            config.limits = self.limits(top["limits"])
        fleet = top.get("fleet")
        if fleet is not None:
            config.fleet = self.fleet(fleet)

        servers = top.get("servers", _MISSING)
        if servers is _MISSING:
            self.problem("servers", "required")
        elif not isinstance(servers, list):
            self.expected("servers", "a list", servers)
        elif not servers:
            self.problem("servers", "must list at least one server")
        else:
            numbered: list[tuple[int, Server]] = []
            for i, item in enumerate(servers):
                server = self.server(item, f"servers[{i}]")
                if server is not None:
                    numbered.append((i, server))
                    config.servers.append(server)
            self.check_shared_hostnames(numbered)
            self.check_tls_ports(numbered)
            self.check_https_upstreams(numbered)
        for where, item in self.items(top, "allowlist", ""):
            network = self.network(item, where)
            if network is not None:
                config.allowlist.append(network)
        for where, item in self.items(top, "auto_block", ""):
            rule = self.auto_block(item, where, config)
            if rule is not None:
                config.auto_block.append(rule)

    def timeouts(self, value: object) -> Timeouts:
        timeouts = Timeouts()
        names = [f.name for f in fields(Timeouts)]
        data = self.obj(value, "timeouts", frozenset(names))
        if data is not None:
            for name in names:
                default = getattr(timeouts, name)
                setattr(timeouts, name, self.number(data, name, "timeouts", default))
        return timeouts

    def limits(self, value: object) -> Limits:
        limits = Limits()
        names = [f.name for f in fields(Limits)]
        data = self.obj(value, "limits", frozenset(names))
        if data is not None:
            for name in names:
                default = getattr(limits, name)
                setattr(limits, name, self.integer(data, name, "limits", default, 1))
        return limits

    def fleet(self, value: object) -> Fleet | None:
        data = self.obj(value, "fleet", _FLEET_KEYS)
        if data is None:
            return None
        url = data.get("redis", _MISSING)
        if url is _MISSING:
            self.problem("fleet.redis", "required")
            return None
        url = self.text(url, "fleet.redis")
        if url is not None and not url.startswith(_REDIS_SCHEMES):
            self.expected("fleet.redis", "a redis://, rediss:// or unix:// URL", url)
            url = None
        name = self.text(data.get("name", socket.gethostname()), "fleet.name")
        prefix = self.text(data.get("prefix", "xps"), "fleet.prefix")
        if importlib.util.find_spec("redis") is None:
            self.problem("fleet", "needs the redis package: pip install 'xps[fleet]'")
            return None
        if url is None or name is None or prefix is None:
            return None
        return Fleet(url, name, prefix)

    def server(self, value: object, path: str) -> Server | None:
        data = self.obj(value, path, _SERVER_KEYS)
        if data is None:
            return None
        if "listeners" not in data:
            self.problem(_join(path, "listeners"), "required")
        elif data["listeners"] == []:
            self.problem(_join(path, "listeners"), "must list at least one listener")
        listeners: list[Listener] = []
        for where, item in self.items(data, "listeners", path):
            listener = self.listener(item, where)
            if listener is None:
                continue
            if any((lst.host, lst.port) == (listener.host, listener.port) for lst in listeners):
                self.problem(where, f"duplicate listener {listener.host}:{listener.port}")
            else:
                listeners.append(listener)
        tls = self.tls(data["tls"], _join(path, "tls")) if "tls" in data else None
        if tls is not None and listeners and all(lst.tls is None for lst in listeners):
            self.problem(
                _join(path, "tls"),
                'the server has no TLS listener: give one of its listeners a "tls" object',
            )

        hostnames: list[str] = []
        for where, item in self.items(data, "hostnames", path):
            name = self.hostname(item, where)
            if name is not None and name not in hostnames:
                hostnames.append(name)

        routes: list[Route] = []
        seen: dict[str, str] = {}
        for where, item in self.items(data, "routes", path):
            route = self.route(item, where)
            if route is None:
                continue
            if route.req_path in seen:
                self.problem(
                    _join(where, "req_path"),
                    f"duplicate route {route.req_path!r} (also {seen[route.req_path]})",
                )
            else:
                seen[route.req_path] = where
                routes.append(route)
        return Server(listeners, hostnames, routes, tls)

    def listener(self, value: object, path: str) -> Listener | None:
        data = self.obj(value, path, _LISTENER_KEYS)
        if data is None:
            return None
        # Like nginx's "listen 8001": no host means every IPv4 address.
        host: str | None = "0.0.0.0"
        if "host" in data:
            text = self.text(data["host"], _join(path, "host"))
            host = None if text is None else _host(text)
            if text is not None and host is None:
                self.expected(_join(path, "host"), "an IP address or a host name", text)
        if "port" not in data:
            self.problem(_join(path, "port"), "required")
            return None
        port = self.integer(data, "port", path, 0, 1, 65535)
        tls = self.tls(data["tls"], _join(path, "tls")) if "tls" in data else None
        return Listener(host, port, tls) if host is not None and port else None

    def tls(self, value: object, path: str) -> Tls | None:
        """A certificate chain and key that load together, and an optional min_version."""
        data = self.obj(value, path, _TLS_KEYS)
        if data is None:
            return None
        cert, key = (self.tls_file(data, name, path) for name in ("cert", "key"))
        min_version = self.choice(data, "min_version", path, "TLSv1.2", TLS_VERSIONS)
        if cert is None or key is None:
            return None
        problem = self.cert_checks.get((cert, key), _MISSING)
        if problem is _MISSING:
            problem = self.cert_checks[(cert, key)] = _check_cert_pair(cert, key)
        if problem is not None:
            self.problem(path, problem)
            return None
        return Tls(cert, key, min_version)

    def tls_file(self, data: dict[str, Any], key: str, path: str) -> str | None:
        """The absolute path of an existing file named by `key` (required)."""
        where = _join(path, key)
        if key not in data:
            self.problem(where, "required")
            return None
        name = self.file_path(data[key], where)
        if name is not None and not os.path.isfile(name):
            self.problem(where, f"file not found: {name}")
            return None
        return name

    def check_tls_ports(self, numbered: list[tuple[int, Server]]) -> None:
        """One port speaks TLS or cleartext, whichever server names it."""
        first: dict[tuple[str, int], tuple[bool, int]] = {}
        for i, server in numbered:
            for j, listener in enumerate(server.listeners):
                secure = listener.tls is not None
                key = (listener.host, listener.port)
                other = first.setdefault(key, (secure, i))
                if other[0] != secure:
                    self.problem(
                        f"servers[{i}].listeners[{j}]",
                        f"{listener.host}:{listener.port} is "
                        f"{'cleartext' if secure else 'TLS'} in servers[{other[1]}]: one port "
                        "cannot mix TLS and cleartext",
                    )

    def check_https_upstreams(self, numbered: list[tuple[int, Server]]) -> None:
        """Routes sharing an https upstream share its connections: they must agree on how its
        certificate is verified."""
        seen: dict[tuple[str, int], tuple[str | None, bool, str]] = {}
        for i, server in numbered:
            for j, route in enumerate(server.routes):
                for upstream in route.upstreams:
                    if not upstream.tls:
                        continue
                    mine = (route.ca_file, route.tls_verify)
                    where = f"servers[{i}].routes[{j}]"
                    other = seen.setdefault((upstream.host, upstream.port), (*mine, where))
                    if other[:2] != mine:
                        self.problem(
                            where,
                            f"https upstream {upstream.host}:{upstream.port} is verified "
                            f"differently in {other[2]} (ca_file, tls_verify must match)",
                        )

    def hostname(self, value: object, path: str) -> str | None:
        """A name to match Host against, in find_server's form.

        That is lower-case, without a trailing dot, and IPv6 without brackets.
        """
        text = self.text(value, path)
        if text is None:
            return None
        name = text.lower().removesuffix(".")
        if name.startswith("[") and name.endswith("]"):
            ip = _ip(name[1:-1])
            if ip is not None and ":" in ip:
                return ip
        elif name.startswith("*.") and _HOSTNAME_RE.fullmatch(name[2:]):
            return name
        elif (ip := _ip(name)) is not None:
            return ip
        elif _HOSTNAME_RE.fullmatch(name):
            return name
        self.expected(path, "a host name such as 'example.com' or '*.example.com'", text)
        return None

    def check_shared_hostnames(self, numbered: list[tuple[int, Server]]) -> None:
        """Servers on one listener must not claim the same name: the later one could never win."""
        owners: dict[tuple[str, int, str], int] = {}
        for i, server in numbered:
            for listener in server.listeners:
                for j, name in enumerate(server.hostnames):
                    first = owners.setdefault((listener.host, listener.port, name), i)
                    if first != i:
                        self.problem(
                            f"servers[{i}].hostnames[{j}]",
                            f"{name!r} is already served by servers[{first}] on "
                            f"{listener.host}:{listener.port}",
                        )

    # -- routes ---------------------------------------------------------------------------

    def route(self, value: object, path: str) -> Route | None:
        data = self.obj(value, path, _ALL_ROUTE_KEYS)
        if data is None:
            return None
        req_path = self.req_path(data, path)
        kind = data.get("type", _MISSING)
        if not (isinstance(kind, str) and kind in ROUTE_TYPES):
            where = _join(path, "type")
            if kind is _MISSING:
                self.problem(where, "required")
            else:
                self.expected(where, "one of " + ", ".join(map(repr, ROUTE_TYPES)), kind)
            # Still check the keys every type shares, so their problems surface now too.
            self.common(data, path, Route("/", "metrics"))
            return None
        for key in data:
            if key in _ALL_ROUTE_KEYS and key not in _COMMON_ROUTE_KEYS | _TYPE_ROUTE_KEYS[kind]:
                self.problem(_join(path, key), f"not valid for type {kind!r}")

        # A bad req_path is already reported; check the rest anyway, then drop the route.
        route = Route(req_path or "/", kind)
        self.common(data, path, route)
        if kind == "file_serve":
            self.file_serve(data, path, route)
        elif kind == "redirect":
            self.redirect(data, path, route)
        elif kind == "reverse_proxy":
            self.reverse_proxy(data, path, route)
        return route if req_path is not None else None

    def req_path(self, data: dict[str, Any], path: str) -> str | None:
        """The route prefix, with one trailing "/" dropped ("/api/" means "/api")."""
        where = _join(path, "req_path")
        if "req_path" not in data:
            self.problem(where, "required")
            return None
        text = self.text(data["req_path"], where)
        if text is None:
            return None
        if not text.startswith("/"):
            self.expected(where, "a path starting with '/'", text)
            return None
        prefix = text[:-1] if len(text) > 1 and text.endswith("/") else text
        # Request paths are normalised before lookup, so a prefix with "//", "." or ".."
        # segments could never match anything.
        if prefix != "/" and any(seg in ("", ".", "..") for seg in prefix[1:].split("/")):
            self.expected(where, "a normalised path (no '//', '.' or '..' segments)", text)
            return None
        return prefix

    def required(self, data: dict[str, Any], key: str, path: str, kind: str) -> bool:
        if key in data:
            return True
        self.problem(_join(path, key), f"required for type {kind!r}")
        return False

    def common(self, data: dict[str, Any], path: str, route: Route) -> None:
        route.gzip_enable = self.boolean(data, "gzip_enable", path, False)
        route.gzip_level = self.integer(data, "gzip_level", path, 6, 1, 9)
        for where, item in self.items(data, "gzip_mime_types", path):
            text = self.text(item, where)
            if text is None:
                continue
            kind, slash, sub = text.partition("/")
            if not (slash and kind and sub) or " " in text:
                self.expected(where, "a MIME type such as 'text/x-c'", text)
            else:
                route.gzip_mime_types.append(text.lower())
        for key in ("ip_whitelist", "ip_blacklist"):
            networks: list[str] = getattr(route, key)
            for where, item in self.items(data, key, path):
                network = self.network(item, where)
                if network is not None:
                    networks.append(network)
        if "limit_req" in data:
            route.limit_req = self.limit_req(data["limit_req"], _join(path, "limit_req"))
        if "limit_conn" in data:
            route.limit_conn = self.limit_conn(data["limit_conn"], _join(path, "limit_conn"))

    def network(self, value: object, where: str) -> str | None:
        """An IP address or CIDR block, in canonical form."""
        text = self.text(value, where)
        if text is None:
            return None
        try:
            return str(ipaddress.ip_network(text, strict=False))
        except ValueError:
            self.expected(where, "an IP address or CIDR block", text)
            return None

    def limit_req(self, value: object, path: str) -> LimitReq | None:
        data = self.obj(value, path, _LIMIT_REQ_KEYS)
        if data is None:
            return None
        if "rate" not in data:
            self.problem(_join(path, "rate"), "required")
            return None
        rate = self.number(data, "rate", path, 0.0)
        burst = self.integer(data, "burst", path, 0, 0)
        key = self.choice(data, "key", path, "ip", LIMIT_KEYS)
        return LimitReq(rate, burst, key) if rate else None

    def limit_conn(self, value: object, path: str) -> LimitConn | None:
        data = self.obj(value, path, _LIMIT_CONN_KEYS)
        if data is None:
            return None
        if "per_ip" not in data:
            self.problem(_join(path, "per_ip"), "required")
            return None
        per_ip = self.integer(data, "per_ip", path, 0, 1)
        return LimitConn(per_ip) if per_ip else None

    def auto_block(self, value: object, path: str, config: Config) -> AutoBlockRule | None:
        data = self.obj(value, path, _AUTO_BLOCK_KEYS)
        if data is None:
            return None
        missing = [key for key in ("when", "count", "window", "block") if key not in data]
        for key in missing:
            self.problem(_join(path, key), "required")
        when = self.choice(data, "when", path, "", AUTO_BLOCK_EVENTS)
        count = self.integer(data, "count", path, 0, 1)
        window = self.number(data, "window", path, 0.0)
        block = self.duration(data.get("block"), _join(path, "block")) if "block" in data else 0
        route = None
        if "route" in data:
            route = self.rule_route(data["route"], _join(path, "route"), config)
            if route is None:
                return None
        if missing or not (when and count and window and block):
            return None
        return AutoBlockRule(when, count, window, block, route)

    def duration(self, value: object, where: str) -> float:
        """Seconds > 0: a number, or a string such as "30s", "10m", "1h", "1d"; 0 if bad."""
        seconds: float = 0.0
        if _is_number(value):
            try:
                seconds = float(value)
            except OverflowError:
                seconds = math.inf
        elif isinstance(value, str) and (match := _DURATION_RE.fullmatch(value)):
            seconds = float(match[1]) * _DURATION_UNITS[match[2]]
        if seconds > 0 and math.isfinite(seconds):
            return seconds
        self.expected(where, 'a duration > 0 such as 30, "30s", "10m", "1h" or "1d"', value)
        return 0.0

    def rule_route(self, value: object, where: str, config: Config) -> str | None:
        """The key of the route an auto_block rule watches: "/login" (servers[0]) or
        "N:/login" (servers[N]), naming a configured route."""
        text = self.text(value, where)
        if text is None:
            return None
        index, text = parse_route_name(text)
        servers = config.servers
        if index < len(servers) and text in servers[index].route_map:
            return route_key(index, text)
        self.expected(where, "the req_path of a configured route ('/login' or '1:/login')", value)
        return None

    def file_serve(self, data: dict[str, Any], path: str, route: Route) -> None:
        if self.required(data, "dir_path", path, "file_serve"):
            where = _join(path, "dir_path")
            dir_path = self.file_path(data["dir_path"], where)
            if dir_path is None:
                pass  # already reported
            elif not os.path.exists(dir_path):
                self.problem(where, f"directory not found: {dir_path}")
            elif not os.path.isdir(dir_path):
                self.problem(where, f"not a directory: {dir_path}")
            else:
                route.dir_path = dir_path
        if "index" in data:
            route.index = []
            for where, item in self.items(data, "index", path):
                name = self.text(item, where)
                if name is None:
                    continue
                # Index names are looked up inside the requested directory, never elsewhere.
                if "/" in name or "\\" in name or name in (".", ".."):
                    self.expected(where, "a plain file name", name)
                else:
                    route.index.append(name)
        route.dir_listing = self.boolean(data, "dir_listing", path, True)

    def redirect(self, data: dict[str, Any], path: str, route: Route) -> None:
        if self.required(data, "http_status_code", path, "redirect"):
            code = data["http_status_code"]
            if _is_int(code) and code in REDIRECT_CODES:
                route.http_status_code = code
            else:
                codes = ", ".join(map(str, REDIRECT_CODES))
                self.expected(_join(path, "http_status_code"), f"one of {codes}", code)
        if self.required(data, "redirect_url", path, "redirect"):
            where = _join(path, "redirect_url")
            route.redirect_url = self.text(data["redirect_url"], where) or ""
            for name in _PLACEHOLDER_RE.findall(route.redirect_url):
                if name not in REDIRECT_PLACEHOLDERS:
                    self.problem(
                        where,
                        f"unknown placeholder {name}: use " + " or ".join(REDIRECT_PLACEHOLDERS),
                    )

    def reverse_proxy(self, data: dict[str, Any], path: str, route: Route) -> None:
        if self.required(data, "upstreams", path, "reverse_proxy"):
            if data["upstreams"] == []:
                self.problem(_join(path, "upstreams"), "must list at least one upstream")
            for where, item in self.items(data, "upstreams", path):
                upstream = self.upstream(item, where)
                if upstream is not None:
                    route.upstreams.append(upstream)
        route.lb_method = self.choice(data, "lb_method", path, "round_robin", LB_METHODS)
        route.max_fails = self.integer(data, "max_fails", path, 1, 0)
        route.fail_timeout = self.number(data, "fail_timeout", path, 10.0)
        if "timeouts" in data:
            where = _join(path, "timeouts")
            timeouts = self.obj(data["timeouts"], where, _ROUTE_TIMEOUT_KEYS)
            for key in ("upstream_connect", "upstream_read"):
                if timeouts is not None and key in timeouts:
                    setattr(route, f"{key}_timeout", self.number(timeouts, key, where, 0.0))
        route.tls_verify = self.boolean(data, "tls_verify", path, True)
        if "ca_file" in data:
            where = _join(path, "ca_file")
            ca_file = self.file_path(data["ca_file"], where)
            if ca_file is not None:
                problem = _check_ca_file(ca_file)
                if problem is None:
                    route.ca_file = ca_file
                else:
                    self.problem(where, problem)
        if (
            ("ca_file" in data or "tls_verify" in data)
            and route.upstreams
            and not any(upstream.tls for upstream in route.upstreams)
        ):
            key = "ca_file" if "ca_file" in data else "tls_verify"
            self.problem(_join(path, key), "applies to https:// upstreams only; none listed")

    def upstream(self, value: object, path: str) -> Upstream | None:
        weight = 1
        if isinstance(value, dict):
            self.known_keys(value, path, _UPSTREAM_KEYS)
            weight = self.integer(value, "weight", path, 1, 1)
            if "addr" not in value:
                self.problem(_join(path, "addr"), "required")
                return None
            path, value = _join(path, "addr"), value["addr"]
        elif not isinstance(value, str):
            self.expected(path, '\'host:port\' or an {"addr": ..., "weight": N} object', value)
            return None
        if not isinstance(value, str):
            self.expected(path, "a string", value)
            return None
        tls = value.startswith("https://")
        text = value.removeprefix("https://") if tls else value
        if tls and ":" not in text.rpartition("]")[2]:
            text += ":443"
        address = _address(text)
        if address is None:
            self.expected(path, "'https://host[:port]'" if tls else "'host:port'", value)
            return None
        return Upstream(address[0], address[1], weight, tls)
