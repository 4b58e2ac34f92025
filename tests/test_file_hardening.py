"""Static files under attack: symlink races, odd Range digits, a process out of descriptors."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import (
    Client,
    connect,
    free_port,
    raw_exchange,
    server_config,
    status_of,
    wait_until,
    write_config,
)
from xps_server.disk.file import FileCache, StaleEntry
from xps_server.routes.static import parse_range

# --- symlink races -------------------------------------------------------------------------------

MARKER = b"TOPSECRET"
SMALL = 2000  # kept in memory, and worth gzip
BIG = 200_000  # sent from the file


@pytest.fixture
def race_site() -> Iterator[Path]:
    """A site on tmpfs when there is one: a symlink swap there takes microseconds, while on a
    journaled disk it can take half a millisecond, too slow to land in the server's windows."""
    shm = Path("/dev/shm")
    scratch = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() else None))
    (scratch / "www").mkdir()
    yield scratch / "www"
    shutil.rmtree(scratch)


def _race_links(site: Path) -> list[tuple[Path, Path, Path]]:
    """Inside files and their same-sized secret twins outside: (link, inside, outside) triples."""
    outside = site.parent / "outside"
    outside.mkdir()
    (outside / "TOPSECRET.txt").write_bytes(MARKER)  # a name the listing must never show
    links = []
    for name, size in (("small.txt", SMALL), ("big.txt", BIG)):
        (site / f"in-{name}").write_bytes(b"inside ok!" * (size // 10))
        (outside / name).write_bytes(b"TOPSECRET!" * (size // 10))
        links.append((site / f"race-{name}", site / f"in-{name}", outside / name))
    (site / "indexed").mkdir()
    (site / "in-index.html").write_bytes(b"<p>inside ok</p>\n")
    (outside / "index.html").write_bytes(b"<p>TOPSECRET</p>\n")
    links.append((site / "indexed" / "index.html", site / "in-index.html", outside / "index.html"))
    (site / "listed").mkdir()
    (site / "listed" / "plain.txt").write_bytes(b"inside ok!")
    links.append((site / "race-dir", site / "listed", outside))
    for link, inside, _ in links:
        link.symlink_to(inside)
    return links


# Points each link (argv: link, inside, outside, link, ...) out and back in as fast as it can,
# each swap one atomic rename. A process of its own, so no swap waits for the server's GIL.
SWAPPER = """
import os, sys
paths = sys.argv[1:]
triples = [paths[i : i + 3] for i in range(0, len(paths), 3)]
print("swapping", flush=True)
while True:
    for target in (2, 1):
        for triple in triples:
            spare = triple[0] + ".swap"
            os.symlink(triple[target], spare)
            os.replace(spare, triple[0])
"""


@contextmanager
def swapping(triples: list[tuple[Path, Path, Path]], server_thread: int) -> Iterator[None]:
    """The swapper running; with two CPUs or more, it and the server's loop thread get one each:
    sharing a CPU they would take turns, and a swap would seldom land inside a request."""
    paths = [str(path) for triple in triples for path in triple]
    proc = subprocess.Popen([sys.executable, "-c", SWAPPER, *paths], stdout=subprocess.PIPE)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(proc.pid, {cpus[0]})
        os.sched_setaffinity(server_thread, {cpus[1]})
    try:
        assert proc.stdout.readline() == b"swapping\n"
        yield
    finally:
        proc.terminate()
        proc.wait(5)
        proc.stdout.close()


def test_symlink_swapped_in_and_out_never_serves_the_outside_file(start_server, race_site):
    links = _race_links(race_site)
    root = str(race_site)
    server = start_server(
        [
            {"req_path": "/", "type": "file_serve", "dir_path": root, "dir_listing": True},
            {"req_path": "/gz", "type": "file_serve", "dir_path": root, "gzip_enable": True},
        ]
    )
    targets = [
        ("/race-small.txt", {}),
        ("/race-big.txt", {}),
        ("/gz/race-small.txt", {"Accept-Encoding": "gzip"}),
        ("/gz/race-big.txt", {"Accept-Encoding": "gzip"}),
        ("/indexed/", {}),
        ("/race-dir/", {}),
    ]
    leaks: dict[str, int] = {}
    statuses: dict[int, int] = {}
    client = Client(server.port)
    with swapping(links, server.thread.native_id):
        for _ in range(100):
            for target, headers in targets:
                res = client.request("GET", target, headers)
                statuses[res.status] = statuses.get(res.status, 0) + 1
                body = res.body
                if res.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if MARKER in body:
                    leaks[target] = leaks.get(target, 0) + 1
    client.close()
    assert not leaks, f"outside content served: {leaks} (statuses {statuses})"
    assert statuses.get(200, 0) > 0, statuses  # the inside targets were served meanwhile
    assert statuses.get(403, 0) > 0, statuses  # and the swaps landed: the outside was refused
    assert set(statuses) <= {200, 403, 404}, statuses  # refusals, never a failure


def test_a_cached_entry_stands_for_one_file_and_a_body_is_read_from_that_file(tmp_path):
    cache = FileCache()
    big = tmp_path / "big.bin"
    big.write_bytes(b"a" * 100_000)
    entry, fd = cache.resolve(str(big), os.stat(big), str(tmp_path))
    assert entry is not None and entry.body is None and fd >= 0  # validated on this descriptor
    os.close(fd)
    again, fd = cache.resolve(str(big), os.stat(big), str(tmp_path))
    assert again is entry and fd == -1  # a hit opens nothing until the body is wanted
    fd = cache.reopen(str(big), entry)
    assert os.fstat(fd).st_ino == entry.ino
    os.close(fd)
    # The same name, size and mtime on another file (or another device) is another file.
    st = os.stat(big)
    fields = list(st)
    fields[2] = st.st_dev + 1
    assert not entry.matches(os.stat_result(fields, {"st_mtime_ns": st.st_mtime_ns}))
    twin = tmp_path / "twin.bin"
    twin.write_bytes(b"b" * 100_000)
    os.utime(twin, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(twin, big)
    with pytest.raises(StaleEntry):
        cache.reopen(str(big), entry)
    big.unlink()
    with pytest.raises(StaleEntry):  # answered afresh, the request then meets the 404
        cache.reopen(str(big), entry)


# --- Range: ASCII digits only ---------------------------------------------------------------------

_RANGE_MODEL = re.compile(
    r"[ \t]*bytes[ \t]*=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*", re.IGNORECASE | re.ASCII
)


def range_model(value: str, size: int) -> tuple[int, int] | bool | None:
    """RFC 9110 §14.1.2 for one range, as plainly as it can be said: a tuple, None (ignore the
    header, send the whole body) or False (416)."""
    match = _RANGE_MODEL.fullmatch(value)
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if not first:
        suffix = int(last)
        return (max(0, size - suffix), size - 1) if suffix and size else False
    if last and int(last) < int(first):
        return None
    if int(first) >= size:
        return False
    return int(first), min(int(last), size - 1) if last else size - 1


_DIGITS = st.text("0123456789", max_size=22)
_ODD = st.sampled_from(["\xb2", "\xb3", "\xb9", "\u0663", "\uff11", "\xa0", "\x85", "x", ""])


def _spliced(text: str, odd: str, at: int) -> str:
    at = at % (len(text) + 1)
    return text[:at] + odd + text[at:]


_UNIT = st.sampled_from(["bytes", "BYTES", "Bytes", " bytes ", "byte", "items", "bytes\xa0", ""])
_OWS = st.sampled_from(["", " ", "\t", "  "])
_RANGE_VALUES = st.one_of(
    st.builds(
        lambda unit, w1, first, w2, w3, last, w4: f"{unit}={w1}{first}{w2}-{w3}{last}{w4}",
        _UNIT,
        _OWS,
        _DIGITS,
        _OWS,
        _OWS,
        _DIGITS,
        _OWS,
    ),
    st.builds(
        lambda first, last, odd, at, in_last: (
            f"bytes={first}-{_spliced(last, odd, at)}"
            if in_last
            else f"bytes={_spliced(first, odd, at)}-{last}"
        ),
        _DIGITS,
        _DIGITS,
        _ODD,
        st.integers(0, 30),
        st.booleans(),
    ),
    st.text(st.sampled_from(list("bytes=-,0129 \t\xb2\xa0")), max_size=16),
    st.text(st.characters(max_codepoint=255), max_size=16),  # header values are latin-1
)


@settings(max_examples=3000)
@given(_RANGE_VALUES, st.integers(0, 3000))
def test_parse_range_agrees_with_the_model(value, size):
    expected = range_model(value, size)
    got = parse_range(value, size)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes=1\xb200-", None),
        ("bytes=\u0661-", None),  # int() takes Arabic-Indic digits; a Range must not
        ("bytes=-\xb9", None),
        ("bytes=0-" + "9" * 5000, (0, 99)),  # past int()'s digit limit
        ("bytes=" + "0" * 5000 + "7-", (7, 99)),
        ("bytes=" + "1" * 5000 + "-", False),
        ("bytes=-" + "1" * 5000, (0, 99)),
        ("bytes=" + "3" * 30 + "-" + "2" * 30, None),  # last before first, both past any file
        ("bytes=" + "2" * 30 + "-" + "3" * 30, False),
    ],
)
def test_parse_range_takes_ascii_digits_of_any_length(value, expected):
    assert parse_range(value, 100) == expected


@pytest.mark.parametrize("value", [b"bytes=1\xb200-", b"bytes=0-\xb3", b"bytes=0-" + b"9" * 5000])
def test_odd_range_digits_get_the_whole_file_not_a_500(start_server, site, value):
    server = start_server([{"req_path": "/", "type": "file_serve", "dir_path": str(site)}])
    raw = raw_exchange(
        server.port,
        b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\nRange: %s\r\n\r\n" % value,
    )
    assert status_of(raw) in (200, 206)
    assert raw.endswith(b"hello world\n")


# --- out of descriptors ---------------------------------------------------------------------------

FD_LIMIT = 32
# Runs the server with RLIMIT_NOFILE lowered to argv[1]; the rest of argv is the server's.
LIMITED_SERVER = """
import resource, runpy, sys
limit = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
runpy.run_module("xps_server", run_name="__main__", alter_sys=True)
"""


def test_a_server_out_of_descriptors_answers_503_not_404(tmp_path, site):
    (site / "fresh.txt").write_text("not opened yet\n")
    (site / "big.txt").write_bytes(b"compress me, please\n" * 10_000)
    big = (site / "big.bin").read_bytes()
    port = free_port()
    routes = [
        {"req_path": "/", "type": "file_serve", "dir_path": str(site), "dir_listing": True},
        {"req_path": "/gz", "type": "file_serve", "dir_path": str(site), "gzip_enable": True},
    ]
    config = write_config(tmp_path / "config.json", server_config(port, routes))
    log = tmp_path / "server.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", LIMITED_SERVER, str(FD_LIMIT), str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    idle: list[socket.socket] = []
    try:
        wait_until(lambda: "listening on" in log.read_text() or proc.poll() is not None, 10)
        assert proc.poll() is None, log.read_text()
        fd_dir = f"/proc/{proc.pid}/fd"
        client = Client(port)
        assert client.request("GET", "/hello.txt").status == 200  # its body is now cached
        assert client.request("GET", "/big.bin").body == big
        # Idle clients take every descriptor left; each is accepted before the next comes.
        while (used := len(os.listdir(fd_dir))) < FD_LIMIT:
            idle.append(connect(port))
            wait_until(lambda used=used: len(os.listdir(fd_dir)) > used)
        assert len(os.listdir(fd_dir)) == FD_LIMIT
        for target, headers in [
            ("/big.bin", {}),  # sent from a descriptor
            ("/fresh.txt", {}),  # read once to be cached
            ("/test/", {}),  # a listing
            ("/gz/big.txt", {"Accept-Encoding": "gzip"}),  # compressed from a descriptor
        ]:
            res = client.request("GET", target, headers)
            assert res.status == 503, (target, res)
        assert client.request("GET", "/nope.txt").status == 404  # missing is still missing
        assert client.request("GET", "/hello.txt").body == b"hello world\n"  # needs no open
        idle.pop().close()
        wait_until(lambda: len(os.listdir(fd_dir)) < FD_LIMIT)
        assert client.request("GET", "/big.bin").body == big
        client.close()
    finally:
        proc.kill()
        proc.wait()
        for sock in idle:
            sock.close()
    assert "Traceback" not in log.read_text()
