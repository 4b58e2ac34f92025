"""Fixtures: a served site in a temp dir, in-process servers on free loopback ports, and
scripted upstreams."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backends import Backend, BackendConn, Req, echo
from tests.helpers import RunningServer, free_port, server_config
from tests.redis_server import RedisServer


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    (root / "test").mkdir(parents=True)
    (root / "index.html").write_text("<h1>home</h1>\n")
    (root / "hello.txt").write_text("hello world\n")
    (root / "data.json").write_text('{"a": 1}\n')
    (root / "test" / "cat.jpg").write_bytes(b"\xff\xd8\xff" + b"j" * 100)
    (root / "big.bin").write_bytes(bytes(range(256)) * 4096 * 2)  # 2 MiB
    return root


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    servers: list[RunningServer] = []

    def start(routes: list[dict] | None = None, config: dict | None = None, **top) -> RunningServer:
        if config is None:
            config = server_config(free_port(), routes or [], **top)
        server = RunningServer(config, tmp_path)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of its own for the test, on a free loopback port, no persistence."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def backends() -> Iterator[Callable[..., Backend]]:
    """Start scripted upstreams on demand (`handler`, by default `echo`); all stop at the end."""
    made: list[Backend] = []

    def make(
        handler: Callable[[Req, BackendConn], None] = echo, name: str | None = None, **kw: Any
    ) -> Backend:
        backend = Backend(handler, name or f"b{len(made)}", **kw)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.stop()
