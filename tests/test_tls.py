"""TLS termination over real loopback sockets: handshakes, SNI, refusals, the handshake timeout,
certificate reload, files through the encrypting output chain, HTTPS upstreams, config checks.

Certificates come from `trustme`: a throwaway CA per test, certificates issued by it.
"""

from __future__ import annotations

import gc
import gzip
import hashlib
import json
import logging
import socket
import ssl
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st
from websockets.sync.client import connect as ws_client
from websockets.sync.server import serve

from tests.backends import Backend
from tests.helpers import (
    Client,
    RunningServer,
    connect,
    files_route,
    free_port,
    read_until_close,
    server_config,
    wait_until,
    write_config,
)
from tests.test_websocket import UPGRADE, echo, gone, half_closing_upstream
from xps_server.config import ConfigError, find_server, load_config, parse_config
from xps_server.config import Server as ServerBlock
from xps_server.events import TlsError
from xps_server.network.tls import TlsEndpoint
from xps_server.server.lifecycle import Server


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def issue(ca: trustme.CA, folder: Path, name: str, *hosts: str) -> dict:
    """A certificate for `hosts` from `ca`, written as NAME.crt and NAME.key; its tls object."""
    cert = ca.issue_cert(*hosts)
    cert.cert_chain_pems[0].write_to_path(str(folder / f"{name}.crt"))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(folder / f"{name}.crt"), append=True)
    cert.private_key_pem.write_to_path(str(folder / f"{name}.key"))
    return {"cert": str(folder / f"{name}.crt"), "key": str(folder / f"{name}.key")}


def tls_config(port: int, tls: dict, routes: list[dict], **top) -> dict:
    data = server_config(port, routes, **top)
    data["servers"][0]["listeners"][0]["tls"] = tls
    return data


def client_context(ca: trustme.CA, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.set_alpn_protocols(["http/1.1"])
    if version is not None:
        context.minimum_version = context.maximum_version = version
    return context


class TlsClient(Client):
    """The tests' keep-alive client (h11 as the oracle) over TLS."""

    def __init__(self, port: int, context: ssl.SSLContext, name: str = "localhost") -> None:
        super().__init__(port)
        self.sock = context.wrap_socket(self.sock, server_hostname=name)


def peer_names(sock: ssl.SSLSocket) -> set[str]:
    cert = sock.getpeercert()
    return {value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"}


@pytest.fixture
def tls_server(
    start_server, ca: trustme.CA, tmp_path: Path, site: Path
) -> Callable[..., RunningServer]:
    def start(routes: list[dict] | None = None, **top) -> RunningServer:
        tls = issue(ca, tmp_path, "localhost", "localhost", "127.0.0.1")
        return start_server(
            config=tls_config(free_port(), tls, routes or [files_route(site)], **top)
        )

    return start


# --- handshakes -----------------------------------------------------------------------------
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_request_over_tls_12_and_13(tls_server, ca, version):
    server = tls_server()
    client = TlsClient(server.port, client_context(ca, version))
    assert client.sock.version() == version.name.replace("_", ".")
    assert client.sock.selected_alpn_protocol() == "http/1.1"
    assert client.request("GET", "/hello.txt").body == b"hello world\n"
    assert client.request("GET", "/data.json").body == b'{"a": 1}\n'  # keep-alive
    client.close()
    snapshot = server.call(server.core.metrics_snapshot)
    assert snapshot["tls_errors"] == 0 and snapshot["res_code_2xx"] == 2


def test_the_snapshot_and_session_detail_carry_version_cipher_and_sni(tls_server, ca):
    server = tls_server()
    client = TlsClient(server.port, client_context(ca, ssl.TLSVersion.TLSv1_3))
    assert client.request("GET", "/hello.txt").status == 200
    api = server.server.api
    snapshot = api.submit({"cmd": "snapshot"}).result(5)
    (row,) = snapshot["result"]["sessions"]["rows"]
    assert row["tls"] == {
        "version": "TLSv1.3",
        "cipher": client.sock.cipher()[0],
        "sni": "localhost",
    }
    detail = api.submit({"cmd": "session", "args": {"id": row["id"]}}).result(5)
    assert detail["result"]["tls"] == row["tls"]
    client.close()


@pytest.mark.parametrize("lingering", [False, True])
def test_the_server_ends_a_tls_connection_with_close_notify(tls_server, ca, lingering):
    server = tls_server()
    sock = client_context(ca).wrap_socket(
        connect(server.port), server_hostname="localhost", suppress_ragged_eofs=False
    )
    request = b"GET /hello.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    # A request sent after one that closes the connection: the server closes lingering.
    sock.sendall(request + (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" if lingering else b""))
    received = b""
    while chunk := sock.recv(65536):  # a close without close_notify raises SSLEOFError
        received += chunk
    assert received.startswith(b"HTTP/1.1 200 OK") and received.endswith(b"hello world\n")
    sock.close()


def test_sni_picks_the_server_blocks_certificate(start_server, ca, tmp_path, site):
    port = free_port()
    default = issue(ca, tmp_path, "default", "localhost")
    exact = issue(ca, tmp_path, "exact", "a.test")
    wildcard = issue(ca, tmp_path, "wild", "*.b.test")
    listener = {"host": "127.0.0.1", "port": port, "tls": default}
    route = [files_route(site)]
    config = {
        "servers": [
            {"listeners": [listener], "routes": route},
            {"listeners": [listener], "hostnames": ["a.test"], "tls": exact, "routes": route},
            {"listeners": [listener], "hostnames": ["*.b.test"], "tls": wildcard, "routes": route},
        ]
    }
    # Another port with the same certificate and no server naming a.test.
    other_port = free_port()
    config["servers"].append(
        {
            "listeners": [{"host": "127.0.0.1", "port": other_port, "tls": default}],
            "hostnames": ["c.test"],
            "routes": route,
        }
    )
    server = start_server(config=config)
    context = client_context(ca)
    context.check_hostname = False  # the names are checked below, the fallbacks included
    for port, name, expected in [
        (server.port, "a.test", {"a.test"}),
        (server.port, "x.b.test", {"*.b.test"}),
        (server.port, "localhost", {"localhost"}),
        (server.port, "other.test", {"localhost"}),  # no server claims it: the listener's
        (other_port, "a.test", {"localhost"}),  # a.test's server is not on this port
    ]:
        client = TlsClient(port, context, name)
        assert peer_names(client.sock) == expected, (port, name)
        assert client.request("GET", "/hello.txt").status == 200
        client.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1 is deprecated")
def test_a_tls_10_only_client_is_refused(tls_server, ca):
    server = tls_server()
    context = client_context(ca, ssl.TLSVersion.TLSv1)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.0 at all
    sock = connect(server.port)
    with pytest.raises(ssl.SSLError):
        context.wrap_socket(sock, server_hostname="localhost")
    sock.close()
    # The server saw the hello and refused it: a TLS error, not a crash or a hang.
    wait_until(lambda: server.call(server.core.metrics_snapshot)["tls_errors"] == 1)
    assert TlsClient(server.port, client_context(ca)).request("GET", "/").status == 200


def client_hello(ca: trustme.CA, name: str) -> bytes:
    """The first flight of a TLS client asking for `name` by SNI."""
    flight = ssl.MemoryBIO()
    tls = client_context(ca).wrap_bio(ssl.MemoryBIO(), flight, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return flight.read()


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_server_name_that_is_not_ascii_fails_the_handshake_quietly(tls_server, ca, capfd):
    server = tls_server()
    hello = client_hello(ca, "aaaa.test")
    sock = connect(server.port)
    # The same length, so every length field of the hello stays right.
    sock.sendall(hello.replace(b"aaaa.test", b"\xff\xfe\xfd\xfc.test"))
    assert read_until_close(sock).startswith(b"\x15\x03")  # a TLS alert, then the close
    sock.close()
    wait_until(lambda: server.call(server.core.metrics_snapshot)["tls_errors"] == 1)
    assert "Traceback" not in capfd.readouterr().err


def test_a_client_stalling_in_the_handshake_is_cut_at_the_timeout(tls_server, ca):
    server = tls_server(timeouts={"tls_handshake": 0.3, "client_header": 60})
    subscription = server.call(lambda: server.core.bus.subscribe())
    hello = client_hello(ca, "localhost")
    sock = connect(server.port)  # half a real ClientHello, then silence
    sock.sendall(hello[: len(hello) // 2])
    assert read_until_close(sock, timeout=10) == b""  # cut by the server, not the client
    sock.close()
    events = wait_until(
        lambda: [e for e in subscription.take() if isinstance(e, TlsError)], timeout=5
    )
    assert events[0].reason == "handshake timed out" and events[0].client == "127.0.0.1"
    assert server.call(server.core.metrics_snapshot)["tls_errors"] == 1
    wait_until(lambda: server.call(lambda: len(server.core.sessions)) == 0)


def test_a_stopped_tls_server_is_freed(ca, tmp_path, site):
    """An SSLObject holds its context without telling the cyclic collector: nothing reachable
    from a context (its SNI callback) may lead back to the connections, or none is freed."""
    tls = issue(ca, tmp_path, "localhost", "localhost")
    server = RunningServer(tls_config(free_port(), tls, [files_route(site)]), tmp_path)
    client = TlsClient(server.port, client_context(ca))
    assert client.request("GET", "/hello.txt").status == 200  # a session kept for the figures
    client.close()
    core = weakref.ref(server.core)
    server.stop()
    del server
    gc.collect()
    assert core() is None


# --- reload ---------------------------------------------------------------------------------
@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[Callable[[dict], tuple[Server, Path]]]:
    servers: list[Server] = []

    def start(data: dict) -> tuple[Server, Path]:
        path = write_config(tmp_path / "config.json", data)
        server = Server(load_config(str(path)), grace=1.0)
        servers.append(server)
        server.start()
        server.run(background=True)
        return server, path

    yield start
    for server in servers:
        server.close()


def test_reload_swaps_the_certificate_and_old_connections_keep_working(
    file_server, ca, tmp_path, site
):
    port = free_port()
    tls = issue(ca, tmp_path, "site", "localhost", "old.test")
    server, _ = file_server(tls_config(port, tls, [files_route(site)]))
    context = client_context(ca)
    old = TlsClient(port, context)
    assert "old.test" in peer_names(old.sock)
    assert old.request("GET", "/hello.txt").status == 200

    issue(ca, tmp_path, "site", "localhost", "new.test")  # same files, new contents
    ok, message = server.reload().result(5)
    assert ok, message
    new = TlsClient(port, context)
    assert "new.test" in peer_names(new.sock)
    assert new.request("GET", "/hello.txt").status == 200
    # The connection made before the reload goes on with its session and certificate.
    assert old.request("GET", "/data.json").body == b'{"a": 1}\n'
    assert "old.test" in peer_names(old.sock)

    # A key that cannot be used is refused with the reason; the certificate in service stays.
    Path(tls["key"]).write_text("not a key\n")
    ok, message = server.reload().result(5)
    assert not ok and tls["key"] in message
    newest = TlsClient(port, context)
    assert "new.test" in peer_names(newest.sock)
    assert newest.request("GET", "/hello.txt").status == 200
    for client in (old, new, newest):
        client.close()


# --- files through the encrypting chain -----------------------------------------------------
def test_large_files_ranges_and_gzip_over_tls_are_byte_exact(tls_server, ca, site):
    text = b"".join(b"line %d of a compressible text file\n" % i for i in range(200_000))
    (site / "big.txt").write_bytes(text)
    server = tls_server([files_route(site, gzip_enable=True)])
    big = (site / "big.bin").read_bytes()
    client = TlsClient(server.port, client_context(ca))
    assert client.request("GET", "/big.bin").body == big
    ranged = client.request("GET", "/big.bin", {"Range": "bytes=1000-1500000"})
    assert ranged.status == 206 and ranged.body == big[1000:1500001]
    tail = client.request("GET", "/big.bin", {"Range": "bytes=-70000"})
    assert tail.status == 206 and tail.body == big[-70000:]
    zipped = client.request("GET", "/big.txt", {"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert gzip.decompress(zipped.body) == text
    # Again, from the gzip cache this time.
    again = client.request("GET", "/big.txt", {"Accept-Encoding": "gzip"})
    assert gzip.decompress(again.body) == text
    assert client.request("GET", "/big.txt").body == text
    client.close()


def test_pipelined_requests_over_tls_are_answered_in_order(tls_server, ca, site):
    server = tls_server()
    big = (site / "big.bin").read_bytes()
    client = TlsClient(server.port, client_context(ca))
    paths = ["/big.bin", "/hello.txt", "/big.bin", "/data.json"] * 5
    # A TLS record each, sent at once: the server pauses reading behind each large response
    # with the next requests still in its TLS buffers, and goes on when it drains.
    for path in paths:
        client.send_raw(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    expected = {"/big.bin": big, "/hello.txt": b"hello world\n", "/data.json": b'{"a": 1}\n'}
    for path in paths:
        assert client.read_response().body == expected[path], path
    client.close()


def test_a_client_that_does_not_read_pins_a_bounded_part_of_a_file(tls_server, ca, site):
    (site / "huge.bin").write_bytes(b"x" * (64 << 20))
    server = tls_server()
    client = TlsClient(server.port, client_context(ca))
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.send_raw(b"GET /huge.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")

    def pending() -> tuple[int, int] | None:
        (session,) = server.core.sessions.values()
        conn = session.conn
        if not conn.writing:
            return None
        return conn.out.size, len(conn.cipher or b"")

    # The server waits for the socket with most of the file still on disk, not in memory.
    size, cipher = wait_until(lambda: server.call(pending))
    assert size > 32 << 20
    assert cipher <= 80 * 1024  # one encrypted batch at most
    client.close()


# --- proxying -------------------------------------------------------------------------------
def test_x_forwarded_proto_says_https_on_a_tls_listener(tls_server, ca):
    backend = Backend()
    route = {"req_path": "/", "type": "reverse_proxy", "upstreams": [backend.addr]}
    server = tls_server([route])
    client = TlsClient(server.port, client_context(ca))
    seen = json.loads(client.request("GET", "/x").body)
    assert ["X-Forwarded-Proto", "https"] in seen["headers"]
    client.close()
    backend.stop()


def test_https_upstreams_are_verified(start_server, ca, tmp_path, site, caplog):
    upstream_port = free_port()
    upstream = start_server(
        config=tls_config(
            upstream_port, issue(ca, tmp_path, "up", "localhost"), [files_route(site)]
        )
    )
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    (tmp_path / "other-ca.pem").write_bytes(trustme.CA().cert_pem.bytes())

    def proxy(**extra) -> Client:
        route = {
            "req_path": "/",
            "type": "reverse_proxy",
            "upstreams": [f"https://localhost:{upstream.port}"],
            "max_fails": 0,
            **extra,
        }
        return Client(start_server([route]).port)

    trusted = proxy(ca_file=str(tmp_path / "ca.pem"))
    assert trusted.request("GET", "/big.bin").body == (site / "big.bin").read_bytes()
    assert trusted.request("GET", "/hello.txt").body == b"hello world\n"  # pooled connection
    wrong_ca = proxy(ca_file=str(tmp_path / "other-ca.pem"))
    assert wrong_ca.request("GET", "/hello.txt").status == 502
    system_store = proxy()  # a throwaway CA is in no system store
    assert system_store.request("GET", "/hello.txt").status == 502
    with caplog.at_level(logging.WARNING, logger="xps.upstream"):
        unverified = proxy(tls_verify=False)
    assert "tls_verify is false" in caplog.text
    assert unverified.request("GET", "/hello.txt").body == b"hello world\n"


# --- upgrades through a TLS listener -------------------------------------------------------
def test_a_websocket_over_tls_echoes_through_the_proxy(tls_server, ca):
    upstream = serve(echo, "127.0.0.1", 0, compression=None, ping_interval=None)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = upstream.socket.getsockname()[1]
    server = tls_server(
        [{"req_path": "/", "type": "reverse_proxy", "upstreams": [f"127.0.0.1:{port}"]}]
    )
    with ws_client(
        f"wss://localhost:{server.port}/chat", ssl=client_context(ca), open_timeout=5
    ) as ws:
        ws.send("hello over TLS")
        assert ws.recv(timeout=5) == "hello over TLS"
        ws.send(bytes(range(256)) * 1000)
        assert ws.recv(timeout=5) == bytes(range(256)) * 1000
    wait_until(lambda: gone(server))
    upstream.shutdown()


class SansIoClient:
    """A TLS client over a blocking socket, driven by hand: it can half-close (close_notify,
    then FIN) and go on reading, which `ssl.SSLSocket` cannot."""

    def __init__(self, port: int, ca: trustme.CA) -> None:
        self.sock = connect(port)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = client_context(ca).wrap_bio(
            self.incoming, self.outgoing, server_hostname="localhost"
        )
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self.incoming.write(self.sock.recv(65536))
        self._flush()

    def _flush(self) -> None:
        if self.outgoing.pending:
            self.sock.sendall(self.outgoing.read())

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def half_close(self) -> None:
        with pytest.raises(ssl.SSLWantReadError):  # the server's close_notify is not here yet
            self.tls.unwrap()
        self._flush()
        self.sock.shutdown(socket.SHUT_WR)

    def read_to_end(self) -> bytes:
        """Everything until the server's close_notify (a FIN without one fails)."""
        received = b""
        while True:
            try:
                data = self.tls.read(65536)
            except ssl.SSLWantReadError:
                raw = self.sock.recv(65536)
                assert raw, "closed without close_notify"
                self.incoming.write(raw)
                continue
            except ssl.SSLZeroReturnError:
                return received
            if not data:
                return received
            received += data


def test_half_close_over_tls_passes_both_ways(tls_server, ca):
    backend = Backend(half_closing_upstream)
    server = tls_server([{"req_path": "/", "type": "reverse_proxy", "upstreams": [backend.addr]}])
    client = SansIoClient(server.port, ca)
    client.send(UPGRADE)
    body = bytes(range(256)) * 4000
    client.send(body)
    # Our close_notify and FIN: the server passes the end on, and still sends us the answer.
    client.half_close()
    received = client.read_to_end()
    head, _, answer = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert answer == f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()
    client.sock.close()
    wait_until(lambda: gone(server))
    backend.stop()


# --- redirects ------------------------------------------------------------------------------
def test_redirect_placeholders_build_the_https_url(start_server):
    route = {
        "req_path": "/",
        "type": "redirect",
        "http_status_code": 301,
        "redirect_url": "https://{host}{uri}",
    }
    server = start_server([route])
    client = Client(server.port)
    client.send_raw(b"GET /a/b?c=1&d=%20 HTTP/1.1\r\nHost: Example.com:8080\r\n\r\n")
    response = client.read_response()
    assert response.status == 301
    assert response.headers["location"] == "https://Example.com/a/b?c=1&d=%20"
    client.send_raw(b"GET /v6 HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n")
    assert client.read_response().headers["location"] == "https://[::1]/v6"
    client.close()


# --- config ---------------------------------------------------------------------------------
def check(data: dict, base: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, str(base))
    return info.value.problems


def test_config_refuses_what_cannot_work(ca, tmp_path):
    tls = issue(ca, tmp_path, "a", "localhost")
    other = issue(ca, tmp_path, "b", "localhost")
    metrics = [{"req_path": "/", "type": "metrics"}]
    mixed = {
        "servers": [
            {"listeners": [{"port": 8443, "tls": tls}], "routes": metrics},
            {"listeners": [{"port": 8443}], "hostnames": ["x.test"], "routes": metrics},
        ]
    }
    assert check(mixed, tmp_path) == [
        "servers[1].listeners[0]: 0.0.0.0:8443 is TLS in servers[0]: one port cannot mix TLS "
        "and cleartext"
    ]
    no_tls_listener = {"servers": [{"listeners": [{"port": 80}], "tls": tls, "routes": metrics}]}
    assert check(no_tls_listener, tmp_path)[0].startswith(
        "servers[0].tls: the server has no TLS listener"
    )
    mismatched = {"cert": tls["cert"], "key": other["key"]}
    problems = check({"servers": [{"listeners": [{"port": 1, "tls": mismatched}]}]}, tmp_path)
    assert problems[0].startswith("servers[0].listeners[0].tls: cannot use certificate")
    key = serialization.load_pem_private_key(Path(tls["key"]).read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    locked = {"cert": tls["cert"], "key": str(encrypted)}
    problems = check({"servers": [{"listeners": [{"port": 1, "tls": locked}]}]}, tmp_path)
    assert problems == [
        f"servers[0].listeners[0].tls: the key {encrypted} is encrypted: give an unencrypted "
        "key file"
    ]
    missing = {"cert": "nope.crt", "key": tls["key"], "min_version": "TLSv1.1"}
    problems = check({"servers": [{"listeners": [{"port": 1, "tls": missing}]}]}, tmp_path)
    assert problems == [
        f"servers[0].listeners[0].tls.cert: file not found: {tmp_path / 'nope.crt'}",
        "servers[0].listeners[0].tls.min_version: expected one of 'TLSv1.2', 'TLSv1.3', "
        "got 'TLSv1.1'",
    ]
    redirect = {
        "req_path": "/",
        "type": "redirect",
        "http_status_code": 301,
        "redirect_url": "https://{hots}/",
    }
    proxy = {"req_path": "/p", "type": "reverse_proxy", "upstreams": ["a:1"], "ca_file": "x"}
    problems = check(
        {"servers": [{"listeners": [{"port": 1}], "routes": [redirect, proxy]}]}, tmp_path
    )
    assert problems == [
        "servers[0].routes[0].redirect_url: unknown placeholder {hots}: use {host} or {uri}",
        f"servers[0].routes[1].ca_file: cannot read {tmp_path / 'x'}: No such file or directory",
        "servers[0].routes[1].ca_file: applies to https:// upstreams only; none listed",
    ]


def test_tls_config_is_read(ca, tmp_path):
    tls = issue(ca, tmp_path, "a", "localhost")
    route = {"req_path": "/", "type": "reverse_proxy", "upstreams": ["https://api.test"]}
    data = {
        "timeouts": {"tls_handshake": 2},
        "servers": [
            {
                "listeners": [{"port": 443, "tls": {**tls, "min_version": "TLSv1.3"}}],
                "routes": [route],
            }
        ],
    }
    config = parse_config(data, str(tmp_path))
    listener = config.servers[0].listeners[0]
    assert listener.tls is not None and listener.tls.min_version == "TLSv1.3"
    assert config.timeouts.tls_handshake == 2
    upstream = config.servers[0].routes[0].upstreams[0]
    assert (upstream.host, upstream.port, upstream.tls) == ("api.test", 443, True)


# --- SNI and Host agree ---------------------------------------------------------------------
_LABEL = st.sampled_from(["a", "b", "api", "www", "x-1"])
_NAME = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)


def _patterns_for(name: str) -> st.SearchStrategy[list[str]]:
    """Hostnames of servers: some claim `name` (exactly, or by a wildcard over one of its
    suffixes), some other names."""
    labels = name.split(".")
    near = [name] + ["*." + ".".join(labels[i:]) for i in range(1, len(labels))]
    pattern = st.one_of(st.sampled_from(near), _NAME, _NAME.map(lambda other: "*." + other))
    return st.lists(pattern, unique=True, max_size=6)


@given(st.data())
def test_sni_picks_the_certificate_of_the_server_the_host_would_pick(data):
    """For a name some server claims (exactly or by wildcard), the certificate presented is
    that server's, the one `find_server` routes the request to; otherwise the listener's."""
    name = data.draw(_NAME)
    hostnames = data.draw(_patterns_for(name))
    servers = [ServerBlock([], [pattern]) for pattern in hostnames]
    contexts = {pattern: object() for pattern in hostnames}
    default = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    endpoint = TlsEndpoint(default, contexts, 10.0)  # type: ignore[arg-type]
    chosen = endpoint.context_for(name)
    routed = find_server(servers, name).hostnames[0] if servers else None
    if routed == name or (routed and routed[:2] == "*." and name.endswith(routed[1:])):
        assert chosen is contexts[routed]
    else:
        assert chosen is default  # find_server fell back: no server claims the name
