"""eXpServer's own tester (github.com/eXpServer/expserver-tester), stages 14-17, replayed here.

Each test sends what a tester check sends and expects what it expects; its docstring names the
check (`stageNN.ts: "title"`). The setup is the tester's: the server runs as a process with
`xps_config.json` read from the served `public` folder (so its `"dir_path": "../public"` is
that folder), and a Python `http.server` serves the same folder as the reverse proxy's
upstream. The config is the tester's, translated only in listen addresses and ports: every
listener is 127.0.0.1 on a free port (the tester's 0.0.0.0:8001-8004) and the upstream is
`localhost` on a free port (the tester's `localhost:3000`).

HTTP traffic copies the tester's. Its stage 14-15 checks write raw requests on a socket; its
other checks use Node's `fetch`, whose request head is copied byte for byte below, redirects
followed as `fetch` follows them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import h11
import pytest

from tests.helpers import Client, Response, accepts, free_port, raw_exchange, wait_until

NAMES = ("main", "proxy", "redirect", "empty")  # the tester's servers on 8001..8004


def translated_config(ports: dict[str, int], upstream_port: int) -> dict:
    """The tester's backend/public/{common,stage17}/xps_config.json, listeners and upstream
    translated to loopback and free ports; nothing else differs."""

    def listeners(name: str) -> list[dict]:
        return [{"host": "127.0.0.1", "port": ports[name]}]

    return {
        "server_name": "eXpServer",
        "workers": 4,
        "servers": [
            {
                "listeners": listeners("main"),
                "routes": [
                    {
                        "req_path": "/",
                        "type": "file_serve",
                        "dir_path": "../public",
                        "index": ["index.html"],
                        "gzip_enable": True,
                        "gzip_level": 8,
                    },
                    {
                        "req_path": "/redirect",
                        "type": "redirect",
                        "http_status_code": 302,
                        "redirect_url": "http://localhost:8002/",
                    },
                ],
            },
            {
                "listeners": listeners("proxy"),
                "routes": [
                    {
                        "req_path": "/",
                        "type": "reverse_proxy",
                        "upstreams": [f"localhost:{upstream_port}"],
                    }
                ],
            },
            {
                "listeners": listeners("redirect"),
                "routes": [
                    {
                        "req_path": "/",
                        "type": "redirect",
                        "http_status_code": 302,
                        "redirect_url": "https://expserver.github.io",
                    }
                ],
            },
            {"listeners": listeners("empty")},
        ],
    }


def write_files(folder: Path) -> None:
    """Stand-ins for the tester's cat.jpg, sample.pdf and sample.txt (types go by extension)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cat.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    (folder / "sample.pdf").write_bytes(b"%PDF-1.4\n" + b"0" * 3000 + b"\n%%EOF\n")
    (folder / "sample.txt").write_text("Lorem ipsum dolor sit amet.\n" * 40)


class QuietHandler(SimpleHTTPRequestHandler):
    """The tester's `python3 -m http.server`, minus the log lines and with a fixed `Date`.

    Its proxy check compares every upstream field with the proxied answer, `Date` included, so
    two requests a second apart would differ; the tester's other dummy upstream pins `Date` the
    same way. A pinned value also proves the proxy passes the upstream's own `Date` through.
    """

    def log_message(self, format: str, *args: object) -> None:
        pass

    def date_time_string(self, timestamp: float | None = None) -> str:
        if timestamp is None:
            return "Thu, 01 Jan 2026 00:00:00 GMT"
        return super().date_time_string(timestamp)


class Site:
    """The tester's container: the upstream and our server, both serving `public`."""

    def __init__(self, public: Path, logs: Path) -> None:
        self.upstream = ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(QuietHandler, directory=str(public))
        )
        threading.Thread(target=self.upstream.serve_forever, daemon=True).start()
        self.upstream_port = self.upstream.server_address[1]
        self.ports = {name: free_port() for name in NAMES}
        config = public / "xps_config.json"
        config.write_text(json.dumps(translated_config(self.ports, self.upstream_port), indent=2))
        self.log = logs.open("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xps_server.cli", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        wait_until(lambda: self.proc.poll() is not None or all(map(accepts, self.ports.values())))
        assert self.proc.poll() is None, self.server_log()

    def server_log(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.upstream.shutdown()
        self.upstream.server_close()
        self.log.close()


@pytest.fixture(scope="module")
def common(tmp_path_factory) -> Iterator[Site]:
    """backend/public/common, served for stages 14-16."""
    root = tmp_path_factory.mktemp("common")
    write_files(root / "public")
    site = Site(root / "public", root / "server.log")
    yield site
    site.close()


@pytest.fixture(scope="module")
def stage17(tmp_path_factory) -> Iterator[Site]:
    """backend/public/stage17: the same files, plus copies in test/, and no index.html."""
    root = tmp_path_factory.mktemp("stage17")
    write_files(root / "public")
    write_files(root / "public" / "test")
    site = Site(root / "public", root / "server.log")
    yield site
    site.close()


# --- the two ways the tester talks HTTP --------------------------------------------------------
def parse_response(raw: bytes) -> Response:
    """A whole response as the server sent it before closing."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    conn.receive_data(b"")
    head = conn.next_event()
    assert isinstance(head, h11.Response), raw
    body = b""
    while isinstance(event := conn.next_event(), h11.Data):
        body += event.data
    assert isinstance(event, h11.EndOfMessage), raw
    headers = {k.decode().lower(): v.decode() for k, v in head.headers}
    return Response(head.status_code, headers, body, head.reason.decode())


def fetch(port: int, path: str, follow: bool = True) -> Response:
    """Node's `fetch("http://127.0.0.1:<port><path>")`: its request head, and redirects
    followed (at most 20) unless `follow` is false, as with `{redirect: "manual"}`."""
    for _ in range(21):
        client = Client(port)
        try:
            client.send_raw(
                f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: keep-alive\r\n"
                "accept: */*\r\naccept-language: *\r\nsec-fetch-mode: cors\r\n"
                "user-agent: node\r\naccept-encoding: gzip, deflate\r\n\r\n".encode()
            )
            res = client.read_response()
        finally:
            client.close()
        if not (follow and res.status in (301, 302, 303, 307, 308)):
            return res
        target = urlsplit(res.headers["location"])
        # Every redirect the tester follows stays on the server it asked.
        assert target.netloc in ("", f"127.0.0.1:{port}"), res.headers["location"]
        path = target.path + (f"?{target.query}" if target.query else "")
    raise AssertionError("redirect loop")


class TableLinks(HTMLParser):
    """The hrefs cheerio's `$('table tr td a')` finds: links inside a cell of a table row."""

    def __init__(self) -> None:
        super().__init__()
        self.open = {"table": 0, "tr": 0, "td": 0}
        self.hrefs: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.open:
            self.open[tag] += 1
        elif tag == "a" and all(self.open.values()):
            href = dict(attrs).get("href")
            if href:
                self.hrefs.add(href)

    def handle_endtag(self, tag: str) -> None:
        if self.open.get(tag):
            self.open[tag] -= 1


def table_links(body: bytes) -> set[str]:
    parser = TableLinks()
    parser.feed(body.decode())
    parser.close()
    return parser.hrefs


# --- stages 14 and 15: raw requests ------------------------------------------------------------
# (title, request with {host} for the tester's "<container>:8001", status, expected fields).
# Stage 15 repeats stage 14's list unchanged.
RAW_CHECKS = [
    (
        "Valid request - jpg",
        "GET /cat.jpg HTTP/1.1\r\nHost: {host}\r\nUser-Agent: TestClient/1.0\r\n"
        "Accept: image/jpeg\r\nConnection: close\r\n\r\n",
        200,
        {"content-type": "image/jpeg", "server": "eXpServer"},
    ),
    (
        "Valid request - pdf",
        "GET /sample.pdf HTTP/1.1\r\nHost: {host}\r\nUser-Agent: TestClient/1.0\r\n"
        "Accept: application/pdf\r\nConnection: close\r\n\r\n",
        200,
        {"content-type": "application/pdf", "server": "eXpServer"},
    ),
    (
        "Valid request - plain",
        "GET /sample.txt HTTP/1.1\r\nHost: {host}\r\nUser-Agent: TestClient/1.0\r\n"
        "Accept: text/plain\r\nConnection: close\r\n\r\n",
        200,
        {"content-type": "text/plain", "server": "eXpServer"},
    ),
    (
        "File not found",
        "GET /test.html HTTP/1.1\r\nHost: {host}\r\nUser-Agent: TestClient/1.0\r\n"
        "Accept: text/html\r\nConnection: close\r\n\r\n",
        404,
        {"server": "eXpServer"},
    ),
    (
        "Missing HTTP Version",
        "GET /index.html\r\nHost: {host}\r\n\r\n",
        400,
        {"server": "eXpServer"},
    ),
    (
        "Invalid HTTP method",
        "GOT /index.html HTTP/1.1\r\nHost: {host}\r\n\r\n",
        400,
        {"server": "eXpServer"},
    ),
    ("Missing host header", "GET /index.html HTTP/1.1\r\n\r\n", 400, {"server": "eXpServer"}),
    (
        "Invalid HTTP Version",
        "GET /index.html HTTX/2.0\r\nHost: {host}\r\n\r\n",
        400,
        {"server": "eXpServer"},
    ),
    (
        "Improperly formatted request (headers)",
        "GET /index.html HTTP/1.1\r\nHost {host}\r\n\r\n",
        400,
        {"server": "eXpServer"},
    ),
]


@pytest.mark.parametrize(
    ("request_text", "status", "fields"),
    [check[1:] for check in RAW_CHECKS],
    ids=[check[0] for check in RAW_CHECKS],
)
def test_stage14_15_raw_requests(common, request_text, status, fields):
    """stage14.ts and stage15.ts, each check by its title (the test id)."""
    port = common.ports["main"]
    raw = raw_exchange(port, request_text.format(host=f"127.0.0.1:{port}").encode())
    res = parse_response(raw)
    assert res.status == status, raw
    assert {name: res.headers.get(name) for name in fields} == fields


def test_registered_method_a_route_does_not_serve_is_still_405(common):
    """Not a tester check: the other side of "Invalid HTTP method". A registered method that
    file_serve does not serve gets 405 with Allow, where an unregistered one gets 400."""
    client = Client(common.ports["main"])
    res = client.request("PROPFIND", "/sample.txt")
    client.close()
    assert (res.status, res.headers["allow"]) == (405, "GET, HEAD")


# --- stage 16: the config's file server, redirect and proxy ------------------------------------
@pytest.mark.parametrize(
    ("name", "mime"),
    [("cat.jpg", "image/jpeg"), ("sample.pdf", "application/pdf"), ("sample.txt", "text/plain")],
    ids=["File server (1)", "File server (2)", "File server (3)"],
)
def test_stage16_file_server(common, name, mime):
    """stage16.ts: "File server (1)", "(2)", "(3)" (httpFileServerTest)."""
    res = fetch(common.ports["main"], f"/{name}")
    assert (res.status, res.headers.get("content-type")) == (200, mime)


def test_stage16_redirect(common):
    """stage16.ts: "Redirect (1)" (httpRedirectTest, `redirect: "manual"`)."""
    res = fetch(common.ports["main"], "/redirect", follow=False)
    assert (res.status, res.headers.get("location")) == (302, "http://localhost:8002/")


def test_stage16_http_proxy(common):
    """stage16.ts: "HTTP Proxy" (httpProxyTest): the upstream's answer for /cat.jpg, fetched
    directly, and ours through the proxy have the same status and body, and every upstream
    field has the same value in ours."""
    direct = fetch(common.upstream_port, "/cat.jpg")
    proxied = fetch(common.ports["proxy"], "/cat.jpg")
    assert direct.status == 200
    assert proxied.status == direct.status
    assert {name: proxied.headers.get(name) for name in direct.headers} == direct.headers
    assert proxied.body == direct.body


# --- stage 17: directory browsing --------------------------------------------------------------
FILE_TYPES = {
    "/cat.jpg": "image/jpeg",
    "/sample.pdf": "application/pdf",
    "/sample.txt": "text/plain",
}
# The tester's directoryStructure: a dict is a directory, keyed by the hrefs it must list.
TREE = {
    **FILE_TYPES,
    "/xps_config.json": "application/json",
    "/test": {f"/test{path}": mime for path, mime in FILE_TYPES.items()},
}


def test_stage17_verify_headers(stage17):
    """stage17.ts: "Verify Headers" (httpFileServerTest on '/', so the URL path is '//')."""
    res = fetch(stage17.ports["main"], "//")
    assert (res.status, res.headers.get("content-type")) == (200, "text/html")


def test_stage17_population_of_directories(stage17):
    """stage17.ts: "Verify population of content on directories" (httpDirectoryBrowsingTest)."""
    res = fetch(stage17.ports["main"], "/")
    assert res.headers.get("content-type") == "text/html"
    assert table_links(res.body) >= set(TREE)


def test_stage17_file_serving(stage17):
    """stage17.ts: "Verify file serving" (httpFileServerTest on '/sample.pdf': '//sample.pdf')."""
    res = fetch(stage17.ports["main"], "//sample.pdf")
    assert (res.status, res.headers.get("content-type")) == (200, "application/pdf")


def test_stage17_full_directory_walk(stage17):
    """stage17.ts: "Full Directory walk" (directoryWalk): every directory is an HTML page that
    links each of its entries, and every file comes with its type. The tester checks only the
    type of a file's answer; a 200 is checked here too."""
    port = stage17.ports["main"]
    pending: list[tuple[str, str | dict]] = [("/", TREE)]
    walked = []
    while pending:
        path, entry = pending.pop()
        res = fetch(port, path)
        walked.append(path)
        assert res.status == 200, path
        if isinstance(entry, dict):
            assert res.headers.get("content-type") == "text/html", path
            assert table_links(res.body) >= set(entry), path
            pending.extend(entry.items())
        else:
            assert res.headers.get("content-type") == entry, path
    assert len(walked) == 9  # /, four files, /test and its three files
