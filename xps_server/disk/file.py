"""The file module: `file_serve` routes — stat, validate, cache metadata, answer from disk.

Every request stats the file; the cache entry (MIME type, validators, the pre-encoded header
block and, for small files, the body) is reused while the inode, size and mtime still match.
A path is resolved with `realpath` only when its entry is (re)built, so symlinks that lead out
of `dir_path` are refused without paying for a resolve on every hit. Large bodies move with
`os.sendfile` through a file segment in the client pipe; small ones sit in memory, bounded.
"""

from __future__ import annotations

import errno
import os
import stat
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from xps_server.core.pipe import FileSegment
from xps_server.disk.gzip import MIN_LENGTH as GZIP_MIN_LENGTH
from xps_server.disk.gzip import VARY, accepts_gzip, compressible, serve_gzip
from xps_server.disk.listing import render_listing
from xps_server.http.mime import guess_type
from xps_server.http.response import http_date

if TYPE_CHECKING:
    from xps_server.config import Route
    from xps_server.core.session import Session
    from xps_server.http.parser import Request

SMALL_FILE_BYTES = 64 * 1024  # bodies up to this size are kept in memory
CACHE_BODY_BYTES = 32 * 1024 * 1024  # bound on all cached bodies together
CACHE_ENTRIES = 8192
ALLOW_FIELD = b"Allow: GET, HEAD\r\n"
_NOT_FOUND_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP}


class FileEntry:
    """What one validated file looks like, plus the header block a 200 sends."""

    __slots__ = (
        "body",
        "etag",
        "fields",
        "ino",
        "is_dir",
        "last_modified",
        "mime",
        "mtime",
        "mtime_ns",
        "size",
        "validators",
    )

    def __init__(self, st: os.stat_result, mime: str) -> None:
        self.ino = st.st_ino
        self.mtime_ns = st.st_mtime_ns
        self.size = st.st_size
        self.mtime = int(st.st_mtime)
        self.is_dir = stat.S_ISDIR(st.st_mode)
        self.mime = mime
        self.etag = f'"{self.mtime:x}-{self.size:x}"'
        self.last_modified = http_date(self.mtime)
        self.validators = f"Last-Modified: {self.last_modified}\r\nETag: {self.etag}\r\n".encode()
        self.fields = b"Content-Type: %s\r\nContent-Length: %d\r\n%sAccept-Ranges: bytes\r\n" % (
            mime.encode(),
            self.size,
            self.validators,
        )
        self.body: bytes | None = None

    def matches(self, st: os.stat_result) -> bool:
        return self.mtime_ns == st.st_mtime_ns and self.size == st.st_size and self.ino == st.st_ino


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root + "/") or root == "/"


class FileCache:
    """Entries by filesystem path, bounded in count and in cached body bytes (oldest out first)."""

    def __init__(self) -> None:
        self.entries: dict[str, FileEntry] = {}
        self.body_bytes = 0
        self._roots: dict[str, str] = {}

    def clear(self) -> None:
        self.entries.clear()
        self._roots.clear()
        self.body_bytes = 0

    def lookup(self, fs_path: str, st: os.stat_result, dir_path: str) -> FileEntry | None:
        """The entry for a freshly stat'ed path; None if it resolves outside `dir_path`."""
        entry = self.entries.get(fs_path)
        if entry is not None and entry.matches(st):
            return entry
        root = self._roots.get(dir_path)
        if root is None:
            root = self._roots[dir_path] = os.path.realpath(dir_path)
        if not _inside(os.path.realpath(fs_path), root):
            return None
        entry = FileEntry(st, guess_type(fs_path))
        if stat.S_ISREG(st.st_mode) and entry.size <= SMALL_FILE_BYTES:
            entry.body = _read_small(fs_path, entry.size)
        self._store(fs_path, entry)
        return entry

    def _store(self, fs_path: str, entry: FileEntry) -> None:
        entries = self.entries
        old = entries.pop(fs_path, None)
        if old is not None and old.body is not None:
            self.body_bytes -= len(old.body)
        if entry.body is not None:
            self.body_bytes += len(entry.body)
        entries[fs_path] = entry
        while len(entries) > CACHE_ENTRIES or self.body_bytes > CACHE_BODY_BYTES:
            oldest = next(iter(entries))
            evicted = entries.pop(oldest)
            if evicted.body is not None:
                self.body_bytes -= len(evicted.body)


def _read_small(fs_path: str, size: int) -> bytes | None:
    """One bounded read; None (serve by sendfile instead) if the file changed meanwhile."""
    try:
        fd = os.open(fs_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, size + 1)
    finally:
        os.close(fd)
    return data if len(data) == size else None


def serve_file(session: Session, request: Request, route: Route, path: str) -> None:
    method = request.method
    if method != "GET" and method != "HEAD":
        session.error(405, extra=ALLOW_FIELD)
        return
    head_only = method == "HEAD"
    req_path = route.req_path
    rel = path if req_path == "/" else path[len(req_path) :]
    fs_path = route.dir_path + rel
    try:
        st = os.stat(fs_path)
    except OSError as exc:
        session.error(404 if exc.errno in _NOT_FOUND_ERRNOS else 403, head_only)
        return
    files = session.core.files
    entry = files.lookup(fs_path, st, route.dir_path)
    if entry is None:
        session.error(403, head_only)
        return
    if entry.is_dir:
        entry, fs_path = _directory_index(session, route, fs_path, path, head_only)
        if entry is None:
            return
    elif not stat.S_ISREG(st.st_mode):
        session.error(403, head_only)
        return
    headers = request.headers
    vary = b""
    if route.gzip_enable and entry.size >= GZIP_MIN_LENGTH and compressible(entry.mime, route):
        vary = VARY  # the identity answers below vary by Accept-Encoding too
        if (
            "range" not in headers
            and accepts_gzip(headers)
            and serve_gzip(session, request, route, entry, fs_path, head_only)
        ):
            return
    if ("if-none-match" in headers or "if-modified-since" in headers) and _not_modified(
        headers, entry
    ):
        fields = b"Content-Length: %d\r\n%s%s" % (entry.size, entry.validators, vary)
        session.respond(304, session.core.responder.head(304, fields, session.keep_alive()), 0)
        return
    if "range" in headers:
        _serve_range(session, headers, entry, fs_path, head_only, vary)
        return
    _send_whole(session, entry, fs_path, head_only, vary)


def _send_whole(
    session: Session, entry: FileEntry, fs_path: str, head_only: bool, extra: bytes = b""
) -> None:
    """A 200 with the whole file; `extra` is more header lines (Vary on gzip routes)."""
    responder = session.core.responder
    fields = entry.fields + extra if extra else entry.fields
    if head_only:
        session.respond(200, responder.head(200, fields, session.keep_alive()), 0)
    elif entry.body is not None:
        body = entry.body
        session.respond(200, responder.head(200, fields, session.keep_alive(), body), len(body))
    else:
        head = responder.head(200, fields, session.keep_alive())
        _send_segment(session, 200, head, fs_path, 0, entry.size)


def _directory_index(
    session: Session, route: Route, dir_fs: str, url_path: str, head_only: bool
) -> tuple[FileEntry | None, str]:
    """The index file's entry for a directory, or answer with a listing or 403 and return None."""
    base = dir_fs.rstrip("/") + "/"
    for name in route.index:
        index_path = base + name
        try:
            st = os.stat(index_path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            entry = session.core.files.lookup(index_path, st, route.dir_path)
            if entry is not None:
                return entry, index_path
    if not route.dir_listing:
        session.error(403, head_only)
        return None, dir_fs
    try:
        body = render_listing(url_path, dir_fs, session.core.config.server_name)
    except OSError:
        session.error(403, head_only)
        return None, dir_fs
    fields = b"Content-Type: text/html\r\nContent-Length: %d\r\n" % len(body)
    if head_only:
        body = b""
    session.respond(
        200, session.core.responder.head(200, fields, session.keep_alive(), body), len(body)
    )
    return None, dir_fs


def _not_modified(headers: dict[str, str], entry: FileEntry) -> bool:
    """RFC 9110 §13.2.2: If-None-Match decides when present, else If-Modified-Since."""
    inm = headers.get("if-none-match")
    if inm is not None:
        if inm.strip() == "*":
            return True
        etag = entry.etag
        return any(tag.strip().removeprefix("W/") == etag for tag in inm.split(","))
    try:
        since = parsedate_to_datetime(headers["if-modified-since"]).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return False
    return entry.mtime <= since


def parse_range(value: str, size: int) -> tuple[int, int] | bool | None:
    """One `bytes=` range -> (start, end inclusive); None to ignore it; False if unsatisfiable."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # other units and multi-range requests get the whole body
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    first = first.strip()
    last = last.strip()
    if not (first.isdigit() or (not first and last.isdigit())) or (last and not last.isdigit()):
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            return False
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # syntactically invalid: ignore the header
    if start >= size:
        return False
    return start, min(end, size - 1)


def _serve_range(
    session: Session,
    headers: dict[str, str],
    entry: FileEntry,
    fs_path: str,
    head_only: bool,
    extra: bytes = b"",
) -> None:
    responder = session.core.responder
    if_range = headers.get("if-range")
    wanted = None
    if if_range is None or if_range.strip() in (entry.etag, entry.last_modified):
        wanted = parse_range(headers["range"], entry.size)
    if wanted is None:
        _send_whole(session, entry, fs_path, head_only, extra)
        return
    if wanted is False:
        session.error(416, head_only, b"Content-Range: bytes */%d\r\n" % entry.size)
        return
    start, end = wanted
    length = end - start + 1
    fields = b"Content-Type: %s\r\nContent-Length: %d\r\nContent-Range: bytes %d-%d/%d\r\n%s%s" % (
        entry.mime.encode(),
        length,
        start,
        end,
        entry.size,
        entry.validators,
        extra,
    )
    keep_alive = session.keep_alive()
    if head_only:
        session.respond(206, responder.head(206, fields, keep_alive), 0)
    elif entry.body is not None:
        session.respond(
            206, responder.head(206, fields, keep_alive, entry.body[start : end + 1]), length
        )
    else:
        _send_segment(session, 206, responder.head(206, fields, keep_alive), fs_path, start, length)


def _send_segment(
    session: Session, status: int, head: bytes, fs_path: str, offset: int, count: int
) -> None:
    try:
        fd = os.open(fs_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        session.error(404)
        return
    session.respond_file(status, head, FileSegment(fd, offset, count))
