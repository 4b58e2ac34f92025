"""Tests for xps_server.config: loading, validation messages, and server/route lookup."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xps_server.config import (
    Config,
    ConfigError,
    Limits,
    Listener,
    Route,
    Server,
    Timeouts,
    Upstream,
    find_route,
    find_server,
    load_config,
    parse_config,
)
from xps_server.config.routes import parse_route_name, route_key

DELETE = object()


def example() -> dict[str, Any]:
    """SPEC §2's example config; its dir_path "public" is relative to the config's folder."""
    return {
        "server_name": "eXpServer",
        "workers": 1,
        "access_log": "logs/access.log",
        "state_file": "xps-state.json",
        "control_socket": "xps.sock",
        "timeouts": {
            "client_header": 10,
            "client_body": 30,
            "keep_alive": 15,
            "send": 30,
            "upstream_connect": 5,
            "upstream_read": 30,
        },
        "limits": {"max_header_bytes": 16384, "max_body_bytes": 10485760, "max_connections": 10000},
        "servers": [
            {
                "listeners": [{"host": "0.0.0.0", "port": 8001}],
                "hostnames": ["example.com"],
                "routes": [
                    {
                        "req_path": "/",
                        "type": "file_serve",
                        "dir_path": "public",
                        "index": ["index.html"],
                        "dir_listing": False,  # not the default, so the key is seen to be read
                        "gzip_enable": True,
                        "gzip_level": 6,
                        "gzip_mime_types": ["text/x-c"],
                        "ip_whitelist": ["10.0.0.0/8"],
                        "ip_blacklist": ["10.0.0.7"],
                    },
                    {
                        "req_path": "/old",
                        "type": "redirect",
                        "http_status_code": 302,
                        "redirect_url": "http://localhost:8002/",
                    },
                    {
                        "req_path": "/api",
                        "type": "reverse_proxy",
                        "upstreams": ["localhost:3000", "localhost:3001"],
                        "lb_method": "round_robin",
                        "max_fails": 1,
                        "fail_timeout": 10,
                    },
                    {"req_path": "/status", "type": "metrics"},
                ],
            }
        ],
    }


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A config folder holding the example's public/ directory."""
    (tmp_path / "public").mkdir()
    return tmp_path


def write(folder: Path, data: object) -> str:
    path = folder / "config.json"
    path.write_text(json.dumps(data))
    return str(path)


def problems_of(data: object, base_dir: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, str(base_dir))
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def mutated(*changes: tuple[tuple[Any, ...], Any]) -> dict[str, Any]:
    """The example with each (key path, value) set, or removed when value is DELETE."""
    data = example()
    for keys, value in changes:
        node = data
        for key in keys[:-1]:
            node = node[key]
        if value is DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return data


def metrics_server(*req_paths: str, hostnames: tuple[str, ...] = ()) -> Server:
    data = {
        "servers": [
            {
                "listeners": [{"port": 8080}],
                "hostnames": list(hostnames),
                "routes": [{"req_path": p, "type": "metrics"} for p in req_paths],
            }
        ]
    }
    return parse_config(data, "/").servers[0]


# -- loading valid configs ------------------------------------------------------------------


def test_spec_example_loads_with_values_and_defaults(site: Path) -> None:
    config = load_config(write(site, example()))

    assert config.path == str(site / "config.json")
    assert config.server_name == "eXpServer"
    assert config.workers == 1
    assert config.access_log == str(site / "logs" / "access.log")
    assert config.state_file == str(site / "xps-state.json")
    assert config.control_socket == str(site / "xps.sock")
    assert config.timeouts == Timeouts()
    assert isinstance(config.timeouts.keep_alive, float)
    assert config.limits == Limits()  # max_uri_bytes absent: default 8192

    (server,) = config.servers
    assert server.listeners == [Listener("0.0.0.0", 8001)]
    assert server.hostnames == ["example.com"]
    files, redirect, proxy, metrics = server.routes
    assert files == Route(
        req_path="/",
        type="file_serve",
        dir_path=str(site / "public"),
        index=["index.html"],
        dir_listing=False,
        gzip_enable=True,
        gzip_level=6,
        gzip_mime_types=["text/x-c"],
        ip_whitelist=["10.0.0.0/8"],
        ip_blacklist=["10.0.0.7/32"],
    )
    assert (redirect.type, redirect.http_status_code, redirect.redirect_url) == (
        "redirect",
        302,
        "http://localhost:8002/",
    )
    assert proxy.upstreams == [Upstream("localhost", 3000, 1), Upstream("localhost", 3001, 1)]
    assert (proxy.lb_method, proxy.max_fails, proxy.fail_timeout) == ("round_robin", 1, 10.0)
    assert (proxy.upstream_connect_timeout, proxy.upstream_read_timeout) == (None, None)
    assert metrics == Route("/status", "metrics")
    assert server.route_map == {"/": files, "/old": redirect, "/api": proxy, "/status": metrics}


def test_minimal_config_takes_every_default(tmp_path: Path) -> None:
    config = parse_config({"servers": [{"listeners": [{"port": 80}]}]}, str(tmp_path))
    assert config == Config(servers=[Server([Listener("0.0.0.0", 80)])])
    assert config.access_log is None and config.state_file is None
    assert config.control_socket is None
    nulls = {"access_log": None, "state_file": None, "control_socket": None}
    assert parse_config({**nulls, "servers": [{"listeners": [{"port": 80}]}]}, "/") == config


def test_route_defaults_per_type(site: Path) -> None:
    data = {
        "servers": [
            {
                "listeners": [{"port": 80}],
                "routes": [
                    {"req_path": "/", "type": "file_serve", "dir_path": "public"},
                    {"req_path": "/p", "type": "reverse_proxy", "upstreams": ["[::1]:9000"]},
                ],
            }
        ]
    }
    files, proxy = parse_config(data, str(site)).servers[0].routes
    # dir_listing is on by default, as in eXpServer.
    assert (files.index, files.dir_listing, files.gzip_enable, files.gzip_level) == (
        ["index.html"],
        True,
        False,
        6,
    )
    assert proxy.upstreams == [Upstream("::1", 9000)]
    assert (proxy.lb_method, proxy.max_fails, proxy.fail_timeout) == ("round_robin", 1, 10.0)


def test_reverse_proxy_options(tmp_path: Path) -> None:
    route = {
        "req_path": "/api/",
        "type": "reverse_proxy",
        "upstreams": ["Backend.Local:3000", {"addr": "10.0.0.2:3001", "weight": 3}],
        "lb_method": "least_conn",
        "max_fails": 0,
        "fail_timeout": 2.5,
        "timeouts": {"upstream_connect": 1, "upstream_read": 0.5},
    }
    data = {"servers": [{"listeners": [{"port": 80}], "routes": [route]}]}
    (parsed,) = parse_config(data, str(tmp_path)).servers[0].routes
    assert parsed.req_path == "/api"  # trailing slash normalised away
    assert parsed.upstreams == [Upstream("backend.local", 3000), Upstream("10.0.0.2", 3001, 3)]
    assert (parsed.lb_method, parsed.max_fails, parsed.fail_timeout) == ("least_conn", 0, 2.5)
    assert (parsed.upstream_connect_timeout, parsed.upstream_read_timeout) == (1.0, 0.5)


def test_relative_paths_resolve_against_the_config_folder(
    site: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    (site / "www").mkdir()
    data = mutated(
        (("access_log",), "-"),
        (("state_file",), "/var/tmp/state.json"),
        (("control_socket",), "../run/xps.sock"),
        (("servers", 0, "routes", 0, "dir_path"), "www/../public"),
    )
    path = write(site, data)
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))

    config = load_config(os.path.relpath(path))

    assert config.path == path
    assert config.access_log == "-"
    assert config.state_file == "/var/tmp/state.json"
    assert config.control_socket == str(site.parent / "run" / "xps.sock")
    assert config.servers[0].routes[0].dir_path == str(site / "public")


def test_shared_listener_appears_once(tmp_path: Path) -> None:
    def server(name: str, *listeners: dict[str, Any]) -> dict[str, Any]:
        return {"listeners": list(listeners), "hostnames": [name]}

    data = {
        "servers": [
            server("a.test", {"host": "0.0.0.0", "port": 8001}, {"host": "::1", "port": 8002}),
            server("b.test", {"port": 8001}),
            server("c.test", {"host": "[0:0::1]", "port": 8002}, {"host": "localhost", "port": 1}),
        ]
    }
    config = parse_config(data, str(tmp_path))
    a, b, c = config.servers
    shared = config.listeners()
    assert list(shared) == [("0.0.0.0", 8001), ("::1", 8002), ("localhost", 1)]
    assert [s is x for s, x in zip(shared[("0.0.0.0", 8001)], (a, b), strict=True)] == [True] * 2
    assert [s is x for s, x in zip(shared[("::1", 8002)], (a, c), strict=True)] == [True] * 2
    assert shared[("localhost", 1)][0] is c


def test_listeners_keeps_servers_that_compare_equal() -> None:
    twin = [Server([Listener("127.0.0.1", 80)]), Server([Listener("127.0.0.1", 80)])]
    (on_it,) = Config(servers=twin).listeners().values()
    assert len(on_it) == 2
    repeated = Server([Listener("127.0.0.1", 80), Listener("127.0.0.1", 80)])
    assert Config(servers=[repeated]).listeners() == {("127.0.0.1", 80): [repeated]}


def test_server_built_by_hand_has_a_route_map() -> None:
    route = Route("/x", "metrics")
    server = Server([Listener("127.0.0.1", 80)], routes=[route])
    assert server.route_map == {"/x": route}
    assert "route_map" not in repr(server)


# -- validation problems --------------------------------------------------------------------

R0 = ("servers", 0, "routes", 0)  # file_serve
R1 = ("servers", 0, "routes", 1)  # redirect
R2 = ("servers", 0, "routes", 2)  # reverse_proxy
S0 = ("servers", 0)

ERROR_CASES = [
    ([(("worker",), 2)], "worker: unknown key"),
    ([(("servers",), DELETE)], "servers: required"),
    ([(("servers",), [])], "servers: must list at least one server"),
    ([(("servers",), {})], "servers: expected a list, got an object"),
    ([(("servers", 0), "x")], "servers[0]: expected an object, got 'x'"),
    ([(("server_name",), "")], "server_name: must not be empty"),
    (
        [(("server_name",), "a\r\nX: y")],
        "server_name: contains control or non-printable characters: 'a\\r\\nX: y'",
    ),
    ([(("workers",), 0)], 'workers: expected an integer in 1..1024 or "auto", got 0'),
    ([(("workers",), "many")], "workers: expected an integer in 1..1024 or \"auto\", got 'many'"),
    ([(("workers",), True)], 'workers: expected an integer in 1..1024 or "auto", got true'),
    ([(("access_log",), 5)], "access_log: expected a string, got 5"),
    ([(("control_socket",), "s" * 120)], "control_socket: "),
    ([(("timeouts", "keep_alive"), "x")], "timeouts.keep_alive: expected a number, got 'x'"),
    ([(("timeouts", "send"), True)], "timeouts.send: expected a number, got true"),
    ([(("timeouts", "send"), 0)], "timeouts.send: expected a finite number > 0, got 0"),
    ([(("timeouts", "send"), float("inf"))], "timeouts.send: expected a finite number > 0, "),
    ([(("timeouts", "idle"), 1)], "timeouts.idle: unknown key"),
    ([(("timeouts",), [])], "timeouts: expected an object, got a list"),
    ([(("limits", "max_body_bytes"), 1.5)], "limits.max_body_bytes: expected an integer, got 1.5"),
    (
        [(("limits", "max_uri_bytes"), False)],
        "limits.max_uri_bytes: expected an integer, got false",
    ),
    ([(("limits", "max_connections"), -1)], "limits.max_connections: expected an integer >= 1, "),
    ([((*S0, "listener"), [])], "servers[0].listener: unknown key"),
    ([((*S0, "listeners"), DELETE)], "servers[0].listeners: required"),
    ([((*S0, "listeners"), [])], "servers[0].listeners: must list at least one listener"),
    (
        [((*S0, "listeners", 0, "port"), 70000)],
        "servers[0].listeners[0].port: expected an integer in 1..65535, got 70000",
    ),
    (
        [((*S0, "listeners", 0, "port"), "80")],
        "servers[0].listeners[0].port: expected an integer, got '80'",
    ),
    ([((*S0, "listeners", 0, "port"), DELETE)], "servers[0].listeners[0].port: required"),
    (
        [((*S0, "listeners", 0, "host"), "my host")],
        "servers[0].listeners[0].host: expected an IP address or a host name, got 'my host'",
    ),
    ([((*S0, "listeners", 0, "host"), "1.2.3.999")], "servers[0].listeners[0].host: "),
    (
        [((*S0, "listeners"), [{"port": 1}, {"host": "0.0.0.0", "port": 1}])],
        "servers[0].listeners[1]: duplicate listener 0.0.0.0:1",
    ),
    (
        [((*S0, "hostnames"), ["ok.test", "bad name"])],
        "servers[0].hostnames[1]: expected a "
        "host name such as 'example.com' or '*.example.com', got 'bad name'",
    ),
    ([((*S0, "hostnames"), ["www.*.test"])], "servers[0].hostnames[0]: "),
    ([((*S0, "hostnames"), ["a.test:80"])], "servers[0].hostnames[0]: "),
    ([((*S0, "routes"), "x")], "servers[0].routes: expected a list, got 'x'"),
    ([((*R0, "dir_pth"), "public")], "servers[0].routes[0].dir_pth: unknown key"),
    (
        [((*R0, "dir_path"), DELETE)],
        "servers[0].routes[0].dir_path: required for type 'file_serve'",
    ),
    ([((*R0, "dir_path"), None)], "servers[0].routes[0].dir_path: expected a string, got null"),
    ([((*R0, "dir_path"), "missing")], "servers[0].routes[0].dir_path: directory not found: "),
    ([((*R0, "dir_path"), "config.json")], "servers[0].routes[0].dir_path: not a directory: "),
    (
        [((*R0, "upstreams"), ["a:1"])],
        "servers[0].routes[0].upstreams: not valid for type 'file_serve'",
    ),
    (
        [((*R0, "index"), ["../secret"])],
        "servers[0].routes[0].index[0]: expected a plain file name, got '../secret'",
    ),
    (
        [((*R0, "dir_listing"), "yes")],
        "servers[0].routes[0].dir_listing: expected true or false, got 'yes'",
    ),
    (
        [((*R0, "gzip_level"), 10)],
        "servers[0].routes[0].gzip_level: expected an integer in 1..9, got 10",
    ),
    (
        [((*R0, "gzip_mime_types"), ["text"])],
        "servers[0].routes[0].gzip_mime_types[0]: expected "
        "a MIME type such as 'text/x-c', got 'text'",
    ),
    (
        [((*R0, "gzip_mime_types"), ["text/x-c", "text/x c"])],
        "servers[0].routes[0]."
        "gzip_mime_types[1]: expected a MIME type such as 'text/x-c', got 'text/x c'",
    ),
    (
        [((*R0, "ip_whitelist"), ["10.0.0.300"])],
        "servers[0].routes[0].ip_whitelist[0]: expected "
        "an IP address or CIDR block, got '10.0.0.300'",
    ),
    (
        [((*R0, "ip_blacklist"), "10.0.0.1")],
        "servers[0].routes[0].ip_blacklist: expected a list, got '10.0.0.1'",
    ),
    (
        [((*R0, "req_path"), "api")],
        "servers[0].routes[0].req_path: expected a path starting with '/', got 'api'",
    ),
    (
        [((*R0, "req_path"), "/a//b")],
        "servers[0].routes[0].req_path: expected a normalised path "
        "(no '//', '.' or '..' segments), got '/a//b'",
    ),
    ([((*R0, "req_path"), DELETE)], "servers[0].routes[0].req_path: required"),
    (
        [((*R0, "req_path"), "/api/")],
        "servers[0].routes[2].req_path: duplicate route '/api' (also servers[0].routes[0])",
    ),
    (
        [((*R0, "type"), "files")],
        "servers[0].routes[0].type: expected one of 'file_serve', "
        "'redirect', 'reverse_proxy', 'metrics', got 'files'",
    ),
    ([((*R1, "type"), DELETE)], "servers[0].routes[1].type: required"),
    (
        [((*R1, "redirect_url"), DELETE)],
        "servers[0].routes[1].redirect_url: required for type 'redirect'",
    ),
    ([((*R1, "redirect_url"), "")], "servers[0].routes[1].redirect_url: must not be empty"),
    (
        [((*R1, "http_status_code"), 200)],
        "servers[0].routes[1].http_status_code: expected one of 301, 302, 303, 307, 308, got 200",
    ),
    (
        [((*R1, "http_status_code"), 301.0)],
        "servers[0].routes[1].http_status_code: expected one of 301, 302, 303, 307, 308, got 301.0",
    ),
    (
        [((*R1, "http_status_code"), DELETE)],
        "servers[0].routes[1].http_status_code: required for type 'redirect'",
    ),
    (
        [((*R2, "upstreams"), DELETE)],
        "servers[0].routes[2].upstreams: required for type 'reverse_proxy'",
    ),
    ([((*R2, "upstreams"), [])], "servers[0].routes[2].upstreams: must list at least one upstream"),
    (
        [((*R2, "upstreams", 1), "localhost")],
        "servers[0].routes[2].upstreams[1]: expected 'host:port', got 'localhost'",
    ),
    (
        [((*R2, "upstreams", 1), "::1:80")],
        "servers[0].routes[2].upstreams[1]: expected 'host:port', got '::1:80'",
    ),
    (
        [((*R2, "upstreams", 1), "h:0")],
        "servers[0].routes[2].upstreams[1]: expected 'host:port', got 'h:0'",
    ),
    (
        [((*R2, "upstreams", 1), {"addr": "h:1", "weight": 0})],
        "servers[0].routes[2].upstreams[1].weight: expected an integer >= 1, got 0",
    ),
    ([((*R2, "upstreams", 1), {"weight": 2})], "servers[0].routes[2].upstreams[1].addr: required"),
    (
        [((*R2, "upstreams", 1), {"addr": 80})],
        "servers[0].routes[2].upstreams[1].addr: expected a string, got 80",
    ),
    (
        [((*R2, "upstreams", 1), {"addr": "h:1", "wieght": 2})],
        "servers[0].routes[2].upstreams[1].wieght: unknown key",
    ),
    (
        [((*R2, "lb_method"), "random")],
        "servers[0].routes[2].lb_method: expected one of "
        "'round_robin', 'least_conn', 'ip_hash', got 'random'",
    ),
    (
        [((*R2, "max_fails"), -1)],
        "servers[0].routes[2].max_fails: expected an integer >= 0, got -1",
    ),
    (
        [((*R2, "fail_timeout"), "10s")],
        "servers[0].routes[2].fail_timeout: expected a number, got '10s'",
    ),
    ([((*R2, "timeouts"), {"read": 1})], "servers[0].routes[2].timeouts.read: unknown key"),
    (
        [((*R2, "timeouts"), {"upstream_read": -1})],
        "servers[0].routes[2].timeouts.upstream_read: expected a finite number > 0, got -1",
    ),
]


@pytest.mark.parametrize(("changes", "message"), ERROR_CASES)
def test_each_problem_names_its_key_path(
    site: Path, changes: list[tuple[tuple[Any, ...], Any]], message: str
) -> None:
    (site / "config.json").write_text("{}")
    problems = problems_of(mutated(*changes), site)
    # Exactly one problem: a mistake must not cascade into unrelated complaints.
    assert len(problems) == 1, problems
    assert problems[0].startswith(message)


def test_non_object_top_level(tmp_path: Path) -> None:
    assert problems_of([], tmp_path) == ["top level: expected an object, got a list"]


def test_hostname_claimed_twice_on_one_listener(tmp_path: Path) -> None:
    data = {
        "servers": [
            {"listeners": [{"port": 1}], "hostnames": ["a.test"]},
            {"listeners": [{"port": 2}], "hostnames": ["a.test"]},  # other listener: fine
            {"listeners": [{"port": 2}, {"port": 1}], "hostnames": ["b.test", "A.test."]},
        ]
    }
    assert problems_of(data, tmp_path) == [
        "servers[2].hostnames[1]: 'a.test' is already served by servers[1] on 0.0.0.0:2",
        "servers[2].hostnames[1]: 'a.test' is already served by servers[0] on 0.0.0.0:1",
    ]


def test_all_problems_reported_at_once(site: Path) -> None:
    data = mutated(
        (("timeouts", "keep_alive"), "x"),
        ((*R0, "dir_pth"), "public"),
        ((*R1, "redirect_url"), DELETE),
        ((*R2, "upstreams", 1), "localhost"),
    )
    data["servers"].append({"listeners": [{"port": 0}], "routes": [{"type": "metrics"}]})
    assert problems_of(data, site) == [
        "timeouts.keep_alive: expected a number, got 'x'",
        "servers[0].routes[0].dir_pth: unknown key",
        "servers[0].routes[1].redirect_url: required for type 'redirect'",
        "servers[0].routes[2].upstreams[1]: expected 'host:port', got 'localhost'",
        "servers[1].listeners[0].port: expected an integer in 1..65535, got 0",
        "servers[1].routes[0].req_path: required",
    ]


def test_bad_route_type_still_checks_shared_keys(tmp_path: Path) -> None:
    route = {"req_path": "/", "type": 3, "gzip_level": 0, "dir_pth": "x"}
    data = {"servers": [{"listeners": [{"port": 1}], "routes": [route]}]}
    assert problems_of(data, tmp_path) == [
        "servers[0].routes[0].dir_pth: unknown key",
        "servers[0].routes[0].type: expected one of 'file_serve', 'redirect', 'reverse_proxy', "
        "'metrics', got 3",
        "servers[0].routes[0].gzip_level: expected an integer in 1..9, got 0",
    ]


def test_config_error_from_one_message() -> None:
    err = ConfigError("config.json: cannot read")
    assert err.problems == ["config.json: cannot read"]
    assert str(err) == "config.json: cannot read"


# -- reading the file -----------------------------------------------------------------------


def test_bad_json_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n  "servers": [\n    {"listeners": [],}\n  ]\n}\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: invalid JSON at line 3, column 22: ")


def test_missing_file_is_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.problems == [f"{path}: cannot read config file: No such file or directory"]


def test_directory_and_binary_files_are_clear_messages(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path))
    path = tmp_path / "config.json"
    path.write_bytes(b'{"server_name": "\xff"}')
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte offset 17\)"):
        load_config(str(path))


def test_pathological_json_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"workers": ' + "9" * 5000 + "}")
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_config(str(path))
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_config(str(path))


# -- route names ----------------------------------------------------------------------------


@settings(max_examples=200)
@given(
    index=st.integers(0, 20),
    path=st.from_regex(r"/([a-z0-9:._-]+(/[a-z0-9:._-]+)*)?", fullmatch=True),
)
def test_route_names_read_back(index: int, path: str) -> None:
    assert parse_route_name(route_key(index, path)) == (index, path)
    if path != "/":
        assert parse_route_name(route_key(index, path) + "/") == (index, path)


def test_route_name_forms() -> None:
    assert parse_route_name("/") == (0, "/")
    assert parse_route_name("2:/api/") == (2, "/api")
    assert parse_route_name("x:/api") == (0, "x:/api")  # not a server index


# -- find_route -----------------------------------------------------------------------------


def test_find_route_longest_prefix_on_segment_boundary() -> None:
    server = metrics_server("/", "/api", "/api/v2/", "/static")
    route = {path: find_route(server.route_map, path).req_path for path in (
        "/", "/index.html", "/api", "/api/", "/api/x", "/apix", "/api/v2", "/api/v2/users",
        "/api/v20", "/static/a/b.css", "/staticx", "", "*",
    )}  # fmt: skip
    assert route == {
        "/": "/",
        "/index.html": "/",
        "/api": "/api",
        "/api/": "/api",
        "/api/x": "/api",
        "/apix": "/",
        "/api/v2": "/api/v2",
        "/api/v2/users": "/api/v2",
        "/api/v20": "/api",
        "/static/a/b.css": "/static",
        "/staticx": "/",
        "": "/",
        "*": "/",
    }


def test_find_route_without_root_can_miss() -> None:
    server = metrics_server("/api", "/api/v1")
    assert find_route(server.route_map, "/apix") is None
    assert find_route(server.route_map, "/") is None
    assert find_route(server.route_map, "/ap") is None
    assert find_route(server.route_map, "/api/v1x").req_path == "/api"
    assert find_route(metrics_server().route_map, "/x") is None


SEGMENTS = st.sampled_from(["a", "b", "ab", "api", "x.y"])
PREFIXES = st.lists(SEGMENTS, max_size=3).map(lambda segs: "/" + "/".join(segs))


@settings(max_examples=300, deadline=None)
@given(
    routes=st.lists(st.tuples(PREFIXES, st.booleans()), max_size=8, unique_by=lambda r: r[0]),
    path=st.one_of(PREFIXES, st.text(alphabet="ab/ipx.", max_size=14)),
    tail=st.sampled_from(["", "/", "x", "/b", "//a"]),
)
def test_find_route_agrees_with_brute_force(
    routes: list[tuple[str, bool]], path: str, tail: str
) -> None:
    # Routes may be written with a trailing slash; load time normalises it away.
    server = metrics_server(*(p + "/" if slash and p != "/" else p for p, slash in routes))
    prefixes = [p for p, _ in routes]
    path += tail
    matches = [
        p
        for p in prefixes
        if path == p or path.startswith(p.rstrip("/") + "/") or p == "/"
    ]  # fmt: skip
    expected = max(matches, key=len) if matches else None
    found = find_route(server.route_map, path)
    assert (found.req_path if found else None) == expected


# -- find_server ----------------------------------------------------------------------------


def servers_on_one_listener(*hostnames: list[str]) -> list[Server]:
    data = {"servers": [{"listeners": [{"port": 80}], "hostnames": h} for h in hostnames]}
    config = parse_config(data, "/")
    (servers,) = config.listeners().values()
    return servers


def test_find_server_exact_name_port_and_case_insensitive() -> None:
    first, second = servers_on_one_listener(["example.com"], ["Other.TEST", "[::1]", "10.0.0.1"])
    assert find_server([first, second], "other.test") is second
    assert find_server([first, second], "OTHER.test:8080") is second
    assert find_server([first, second], "other.test.") is second
    assert find_server([first, second], "[::1]:80") is second
    assert find_server([first, second], "10.0.0.1:80") is second
    assert find_server([first, second], "EXAMPLE.COM") is first


def test_find_server_wildcards() -> None:
    default, broad, narrow, exact = servers_on_one_listener(
        ["default.test"], ["*.example.org"], ["*.api.example.org"], ["www.api.example.org"]
    )
    servers = [default, broad, narrow, exact]
    assert find_server(servers, "www.example.org") is broad
    assert find_server(servers, "a.b.example.org:80") is broad
    assert find_server(servers, "v1.api.example.org") is narrow  # longest wildcard wins
    assert find_server(servers, "www.api.example.org") is exact  # exact beats any wildcard
    assert find_server(servers, "example.org") is default  # "*.x" needs a label before ".x"
    assert find_server(servers, "badexample.org") is default


def test_find_server_default_fallback() -> None:
    first, second = servers_on_one_listener(["a.test"], ["b.test"])
    assert find_server([first, second], "c.test") is first
    assert find_server([first, second], "") is first
    # A server that lists no hostnames answers any name (SPEC §2), ahead of the default.
    named, any_name = servers_on_one_listener(["a.test"], [])
    assert find_server([named, any_name], "c.test") is any_name
    assert find_server([named, any_name], "a.test") is named


# -- robustness -----------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(JSON_VALUES)
def test_parse_config_on_arbitrary_json_only_raises_config_error(value: object) -> None:
    try:
        result = parse_config(value, "/")
    except ConfigError as err:
        assert err.problems
    else:
        assert isinstance(result, Config)


def node_paths(node: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path inside a JSON value."""
    if isinstance(node, dict):
        items: Any = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return []
    paths = []
    for key, child in items:
        paths.append((*prefix, key))
        paths.extend(node_paths(child, (*prefix, key)))
    return paths


EXAMPLE_PATHS = node_paths(example())


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    (folder / "public").mkdir()
    return folder


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(EXAMPLE_PATHS), JSON_VALUES), min_size=1, max_size=3))
def test_parse_config_on_damaged_example_only_raises_config_error(
    example_site: Path, changes: list[tuple[tuple[Any, ...], Any]]
) -> None:
    # Damaging the valid example reaches deep into the validator, unlike fully random values.
    data = example()
    for keys, value in changes:
        node: Any = data
        try:
            for key in keys[:-1]:
                node = node[key]
            node[keys[-1]] = copy.deepcopy(value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change replaced this part of the tree
    try:
        result = parse_config(data, str(example_site))
    except ConfigError as err:
        assert err.problems
        assert all(": " in problem and "\n" not in problem for problem in err.problems)
    else:
        assert isinstance(result, Config)


def test_workers_takes_a_count_or_auto(tmp_path: Path) -> None:
    base = {"servers": [{"listeners": [{"host": "127.0.0.1", "port": 8001}], "routes": []}]}
    assert parse_config({**base, "workers": 3}, str(tmp_path)).workers == 3
    assert parse_config({**base, "workers": "auto"}, str(tmp_path)).workers == (os.cpu_count() or 1)
