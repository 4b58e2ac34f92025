"""The command table: every command answers over the control socket, arguments typed from it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import Client, free_port, server_config, write_config
from tests.test_control import LineClient
from xps_server.config import load_config
from xps_server.server.commands import NUMBER, Arg, CommandError
from xps_server.server.control import COMMANDS
from xps_server.server.lifecycle import Server

# A value of each argument kind, and one of another JSON type.
RIGHT = {str: "x", int: 1, bool: True, NUMBER: 1.5}
WRONG = {str: 5, int: "5", bool: "yes", NUMBER: "5"}


@pytest.fixture
def served(tmp_path: Path, site: Path) -> Iterator[tuple[Server, LineClient, int, str]]:
    """A server from a config file, with a control socket, a state file and an upstream (never
    contacted: drain and enable only name it)."""
    port = free_port()
    upstream = f"127.0.0.1:{free_port()}"
    routes = [
        {"req_path": "/", "type": "file_serve", "dir_path": str(site)},
        {"req_path": "/api", "type": "reverse_proxy", "upstreams": [upstream]},
    ]
    ctl = tmp_path / "ctl.sock"
    data = server_config(
        port, routes, control_socket=str(ctl), state_file=str(tmp_path / "state.json")
    )
    server = Server(load_config(str(write_config(tmp_path / "config.json", data))))
    server.start()
    server.run(background=True)
    control = LineClient(str(ctl))
    yield server, control, port, upstream
    control.close()
    server.stop()


def test_every_command_in_the_table_is_reachable_over_the_control_socket(served):
    server, control, port, upstream = served
    http = Client(port)
    assert http.request("GET", "/hello.txt").status == 200
    watcher = LineClient(server.config.control_socket)
    watcher.send({"id": 0, "cmd": "subscribe"})
    assert watcher.read()["ok"]
    control.send({"id": 0, "cmd": "snapshot"})
    session = control.read()["result"]["sessions"]["rows"][0]["id"]
    args = {
        "ping": {},
        "snapshot": {"limit": 5, "sort": "bytes"},
        "top": {"window": 60, "limit": 3},
        "session": {"id": session},
        "block": {"cidr": "10.9.9.9", "seconds": 60},
        "blocks": {},
        "unblock": {"cidr": "10.9.9.9"},
        "gzip": {"route": "/", "enabled": True},
        "kill": {"session": session},
        "drain": {"upstream": upstream},
        "enable": {"upstream": upstream},
        "reload": {},
        "fleet": {},
    }
    assert set(args) == set(COMMANDS)  # a command added to the table gets a line here
    for request_id, (name, command) in enumerate(COMMANDS.items(), 1):
        control.send({"id": request_id, "cmd": name, "args": args[name]})
        reply = control.read()
        assert reply["id"] == request_id and reply["ok"], (name, reply)
        result = reply["result"]
        assert (isinstance(result, dict) and "persisted" in result) == command.persisted, name
    # Exactly the commands the table calls mutating were announced, in the order sent.
    last = [name for name, command in COMMANDS.items() if command.mutating][-1]
    announced = []
    while not announced or announced[-1] != last:
        message = watcher.read()
        event = message.get("event") or {}
        if event.get("kind") == "operator_action":
            announced.append(event["command"])
    assert announced == [name for name, command in COMMANDS.items() if command.mutating]
    watcher.close()
    http.close()


def test_a_bad_argument_is_an_error_reply_naming_it_and_changes_nothing(served):
    server, control, *_ = served
    request_id = 0

    def ask(name: str, args: dict) -> dict:
        nonlocal request_id
        request_id += 1
        control.send({"id": request_id, "cmd": name, "args": args})
        reply = control.read()
        assert reply.pop("id") == request_id
        return reply

    for name, command in COMMANDS.items():
        # Every other argument valid (its default, or of the right type when it has none), so
        # the error can only be about this one.
        fine = {arg.name: RIGHT[arg.kind] if arg.required else arg.default for arg in command.args}
        for arg in command.args:
            wrong = [WRONG[arg.kind]] + ([True, 1.5] if arg.kind is int else [])
            for value in wrong:
                reply = ask(name, {**fine, arg.name: value})
                assert reply == {"ok": False, "error": f"argument '{arg.name}' has the wrong type"}
            if arg.required:
                reply = ask(name, {k: v for k, v in fine.items() if k != arg.name})
                assert reply == {"ok": False, "error": f"missing argument '{arg.name}'"}
    # None of those reached a handler: no block, no override, nothing drained or killed.
    reply = ask("snapshot", {})
    assert reply["result"]["acl"]["blocks"] == []
    assert server.core.runtime.gzip_overrides == {} and server.core.runtime.drained == set()


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)


# The exact Python types of the JSON values each kind takes (a JSON true is no number).
TAKES = {str: {str}, int: {int}, bool: {bool}, NUMBER: {int, float}}


@given(JSON_SCALARS, st.sampled_from(list(TAKES)))
def test_an_argument_takes_exactly_the_values_of_its_type(value, kind):
    arg = Arg("x", kind, "anything", default="the default")
    if value is None:
        assert arg.take({"x": value}) == "the default"
    elif type(value) in TAKES[kind]:
        assert arg.take({"x": value}) is value
    else:
        with pytest.raises(CommandError, match=r"^argument 'x' has the wrong type$"):
            arg.take({"x": value})
