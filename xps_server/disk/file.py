"""The file module: `file_serve` routes — open, validate, cache metadata, answer from disk.

Every request stats the file; the cache entry (MIME type, validators, the pre-encoded header
block and, for small files, the body) is reused while device, inode, size and mtime still match.
An entry is only ever built from an open descriptor whose target was checked to lie inside
`dir_path` (its path read back from /proc/self/fd), so what a path resolved to a moment before
the open cannot matter: a symlink swapped in and out never gets an outside file served. A large
body is read from a descriptor opened when the answer needs it and checked to be the very file
its entry describes; if the path leads elsewhere by then, the request is answered afresh. Large
bodies move with `os.sendfile` through a file segment in the client pipe; small ones sit in
memory, bounded.
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
    from xps_server.http.parser import Request
    from xps_server.server.session import Session

SMALL_FILE_BYTES = 64 * 1024  # bodies up to this size are kept in memory
CACHE_BODY_BYTES = 32 * 1024 * 1024  # bound on all cached bodies together
CACHE_ENTRIES = 8192
ALLOW_FIELD = b"Allow: GET, HEAD\r\n"
# O_NONBLOCK and O_NOCTTY: a FIFO or terminal swapped in for a file cannot stall the loop.
OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
NOT_FOUND_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP})
_FORBIDDEN_ERRNOS = frozenset({errno.EACCES, errno.EPERM})
_EXHAUSTED_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})
_OWS = " \t"
_MAX_POSITION_DIGITS = 18  # 10**18 bytes is past any file; longer positions need no exact value
_PAST_ANY_FILE = 10**18


def failure_status(exc: OSError) -> int:
    """The status for a file that could not be stat'ed, opened or read.

    Only a missing file is 404; a server out of descriptors or memory is 503 (the file is there,
    try again later); permission is 403; anything else is the server's fault.
    """
    code = exc.errno
    if code in NOT_FOUND_ERRNOS:
        return 404
    if code in _EXHAUSTED_ERRNOS:
        return 503
    if code in _FORBIDDEN_ERRNOS:
        return 403
    return 500


class StaleEntry(Exception):
    """The path no longer leads to the file its entry describes, or cannot be opened now."""


class FileEntry:
    """What one validated file looks like, plus the header block a 200 sends."""

    __slots__ = (
        "body",
        "dev",
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
        self.dev = st.st_dev
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
        """Whether `st` is the very file this entry was built from (and unchanged since)."""
        return (
            self.mtime_ns == st.st_mtime_ns
            and self.size == st.st_size
            and self.ino == st.st_ino
            and self.dev == st.st_dev
        )


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

    def resolve(
        self, fs_path: str, st: os.stat_result, dir_path: str, open_large: bool = False
    ) -> tuple[FileEntry | None, int]:
        """What `fs_path`, just stat'ed as `st`, serves: (entry, descriptor or -1).

        When `st` matches the cached entry, the stat alone answers: the entry came from a
        validated file, and `matches` tells that very file apart from any other. A large body is
        then read through `reopen`, once the answer needs it (unless `open_large`). Otherwise the
        path is opened and what was opened is compared with the entry, or validated and cached
        afresh; a large file then comes with that descriptor, for the caller to send from or
        close. (None, -1) when what was opened lies outside `dir_path` or is neither a regular
        file nor a directory. OSError if the open fails.
        """
        entry = self.entries.get(fs_path)
        if (
            entry is not None
            and entry.matches(st)
            and (entry.body is not None or entry.is_dir or not open_large)
        ):
            return entry, -1
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            return None, -1  # a device or FIFO is not even opened
        fd = os.open(fs_path, OPEN_FLAGS)
        try:
            opened = os.fstat(fd)
            if entry is None or not entry.matches(opened):
                entry = self._validate(fs_path, fd, opened, dir_path)
        except BaseException:
            os.close(fd)
            raise
        if entry is None or entry.body is not None or entry.is_dir:
            os.close(fd)
            return entry, -1
        return entry, fd

    def reopen(self, fs_path: str, entry: FileEntry) -> int:
        """A descriptor on the very file `entry` describes, to read its body from.

        StaleEntry if `fs_path` leads elsewhere by now, or cannot be opened: answered afresh,
        the request then meets what is there (or why the open fails) with the right headers.
        """
        try:
            fd = os.open(fs_path, OPEN_FLAGS)
        except OSError:
            raise StaleEntry from None
        try:
            same = entry.matches(os.fstat(fd))
        except OSError:
            same = False
        if not same:
            os.close(fd)
            raise StaleEntry
        return fd

    def open_dir(self, fs_path: str, dir_path: str) -> int:
        """A descriptor on the directory `fs_path` opens to; -1 if it lies outside `dir_path`."""
        fd = os.open(fs_path, OPEN_FLAGS | os.O_DIRECTORY)
        if self._opened_inside(fd, dir_path):
            return fd
        os.close(fd)
        return -1

    def _validate(
        self, fs_path: str, fd: int, st: os.stat_result, dir_path: str
    ) -> FileEntry | None:
        """A new entry for the file open on `fd` (stat'ed as `st`), if it may be served."""
        is_file = stat.S_ISREG(st.st_mode)
        if not (is_file or stat.S_ISDIR(st.st_mode)) or not self._opened_inside(fd, dir_path):
            return None
        entry = FileEntry(st, guess_type(fs_path))
        if is_file and entry.size <= SMALL_FILE_BYTES:
            entry.body = _read_small(fd, entry.size)
        self._store(fs_path, entry)
        return entry

    def _opened_inside(self, fd: int, dir_path: str) -> bool:
        """Whether the file open on `fd` lies inside `dir_path`, wherever the path led."""
        root = self._roots.get(dir_path)
        if root is None:
            root = self._roots[dir_path] = os.path.realpath(dir_path)
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return False  # no /proc: where the descriptor leads cannot be known, so serve nothing
        return real == root or real.startswith(root + "/") or root == "/"

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


def _read_small(fd: int, size: int) -> bytes | None:
    """One bounded read; None (serve from the descriptor instead) if the file changed meanwhile.

    `pread` leaves the file offset at 0 for a gzip stream that may read the descriptor next.
    """
    try:
        data = os.pread(fd, size + 1, 0)
    except OSError:
        return None
    return data if len(data) == size else None


def serve_file(session: Session, request: Request, route: Route, path: str) -> None:
    """Answer a GET or HEAD for the decoded, normalised `path` on a `file_serve` route."""
    try:
        _serve_file(session, request, route, path, False)
    except StaleEntry:
        # The file changed between the stat and the open (nothing was sent): answer afresh,
        # opening a large file before deciding anything.
        _serve_file(session, request, route, path, True)


def _serve_file(
    session: Session, request: Request, route: Route, path: str, open_large: bool
) -> None:
    method = request.method
    if method != "GET" and method != "HEAD":
        session.error(405, extra=ALLOW_FIELD)
        return
    head_only = method == "HEAD"
    req_path = route.req_path
    rel = path if req_path == "/" else path[len(req_path) :]
    fs_path = route.dir_path + rel
    try:
        entry, fd = session.core.files.resolve(
            fs_path, os.stat(fs_path), route.dir_path, open_large
        )
    except OSError as exc:
        session.error(failure_status(exc), head_only)
        return
    if entry is None:
        session.error(403, head_only)
        return
    if entry.is_dir:
        entry, fd, fs_path = _directory_index(session, route, fs_path, path, head_only, open_large)
        if entry is None:
            return
    # From here `fd` (-1, or open on a large file) is sent from or closed by whoever answers.
    headers = request.headers
    vary = b""
    if route.gzip_enable and entry.size >= GZIP_MIN_LENGTH and compressible(entry.mime, route):
        vary = VARY  # the identity answers below vary by Accept-Encoding too
        if (
            "range" not in headers
            and accepts_gzip(headers)
            and serve_gzip(session, request, route, entry, fs_path, fd, head_only)
        ):
            return
    if ("if-none-match" in headers or "if-modified-since" in headers) and _not_modified(
        headers, entry
    ):
        if fd >= 0:
            os.close(fd)
        fields = b"Content-Length: %d\r\n%s%s" % (entry.size, entry.validators, vary)
        session.respond(304, session.core.responder.head(304, fields, session.keep_alive()), 0)
        return
    if "range" in headers:
        _serve_range(session, headers, entry, fs_path, fd, head_only, vary)
        return
    _send_whole(session, entry, fs_path, fd, head_only, vary)


def _send_whole(
    session: Session,
    entry: FileEntry,
    fs_path: str,
    fd: int,
    head_only: bool,
    extra: bytes = b"",
) -> None:
    """A 200 with the whole file; `extra` is more header lines (Vary on gzip routes)."""
    responder = session.core.responder
    fields = entry.fields + extra if extra else entry.fields
    if head_only:
        if fd >= 0:
            os.close(fd)
        session.respond(200, responder.head(200, fields, session.keep_alive()), 0)
    elif entry.body is not None:
        session.respond_body(200, responder.head(200, fields, session.keep_alive()), entry.body)
    else:
        if fd < 0:
            fd = session.core.files.reopen(fs_path, entry)
        head = responder.head(200, fields, session.keep_alive())
        session.respond_file(200, head, FileSegment(fd, 0, entry.size))


def _directory_index(
    session: Session,
    route: Route,
    dir_fs: str,
    url_path: str,
    head_only: bool,
    open_large: bool,
) -> tuple[FileEntry | None, int, str]:
    """The index file of a directory: (entry, descriptor as `FileCache.resolve` gives, path).

    Without one, answer with a listing or an error and return (None, -1, `dir_fs`).
    """
    files = session.core.files
    base = dir_fs.rstrip("/") + "/"
    for name in route.index:
        index_path = base + name
        try:
            st = os.stat(index_path)
            if not stat.S_ISREG(st.st_mode):
                continue
            entry, fd = files.resolve(index_path, st, route.dir_path, open_large)
        except OSError as exc:
            if exc.errno in NOT_FOUND_ERRNOS:
                continue
            session.error(failure_status(exc), head_only)
            return None, -1, dir_fs
        if entry is not None and not entry.is_dir:
            return entry, fd, index_path
    if route.dir_listing:
        _send_listing(session, route, dir_fs, url_path, head_only)
    else:
        session.error(403, head_only)
    return None, -1, dir_fs


def _send_listing(
    session: Session, route: Route, dir_fs: str, url_path: str, head_only: bool
) -> None:
    """The listing of the directory open on a descriptor checked to lie inside the route."""
    try:
        fd = session.core.files.open_dir(dir_fs, route.dir_path)
    except OSError as exc:
        session.error(failure_status(exc), head_only)
        return
    if fd < 0:
        session.error(403, head_only)
        return
    try:
        body = render_listing(url_path, fd, session.core.config.server_name)
    except OSError as exc:
        session.error(failure_status(exc), head_only)
        return
    finally:
        os.close(fd)
    fields = b"Content-Type: text/html\r\nContent-Length: %d\r\n" % len(body)
    if head_only:
        body = b""
    session.respond(
        200, session.core.responder.head(200, fields, session.keep_alive(), body), len(body)
    )


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


def _digits(text: str) -> str | None:
    """`text` without its leading zeros ("0" for zeros) if it is ASCII digits only, else None.

    `str.isdigit` and `int` alone also take other digits ("²", "٣"), and `int` refuses
    thousands of them: a Range header must not reach either unchecked.
    """
    if not (text.isascii() and text.isdigit()):
        return None
    return text.lstrip("0") or "0"


def _position(digits: str) -> int:
    """The value of `_digits` output, capped where no file reaches (keeps `int` bounded)."""
    return int(digits) if len(digits) <= _MAX_POSITION_DIGITS else _PAST_ANY_FILE


def parse_range(value: str, size: int) -> tuple[int, int] | bool | None:
    """One `bytes=` range -> (start, end inclusive); None to ignore it; False if unsatisfiable.

    RFC 9110 §14.1.2 with ASCII digits only, spaces and tabs allowed around the tokens. Other
    units, several ranges and anything malformed are ignored (the whole body is sent).
    """
    unit, _, spec = value.partition("=")
    if unit.strip(_OWS).lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.partition("-")
    if not dash:
        return None
    first_text = first_text.strip(_OWS)
    last_text = last_text.strip(_OWS)
    last = _digits(last_text) if last_text else ""
    if last is None:
        return None
    if not first_text:
        if not last:
            return None
        suffix = _position(last)
        if suffix == 0 or size == 0:
            return False
        return max(0, size - suffix), size - 1
    first = _digits(first_text)
    if first is None:
        return None
    if last and (len(last), last) < (len(first), first):
        return None  # last-pos before first-pos: invalid, so ignored
    start = _position(first)
    if start >= size:
        return False
    return start, min(_position(last), size - 1) if last else size - 1


def _serve_range(
    session: Session,
    headers: dict[str, str],
    entry: FileEntry,
    fs_path: str,
    fd: int,
    head_only: bool,
    extra: bytes = b"",
) -> None:
    responder = session.core.responder
    if_range = headers.get("if-range")
    wanted = None
    if if_range is None or if_range.strip() in (entry.etag, entry.last_modified):
        wanted = parse_range(headers["range"], entry.size)
    if wanted is None:
        _send_whole(session, entry, fs_path, fd, head_only, extra)
        return
    if wanted is False:
        if fd >= 0:
            os.close(fd)
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
        if fd >= 0:
            os.close(fd)
        session.respond(206, responder.head(206, fields, keep_alive), 0)
    elif entry.body is not None:
        session.respond(
            206, responder.head(206, fields, keep_alive, entry.body[start : end + 1]), length
        )
    else:
        if fd < 0:
            fd = session.core.files.reopen(fs_path, entry)
        session.respond_file(
            206, responder.head(206, fields, keep_alive), FileSegment(fd, start, length)
        )
