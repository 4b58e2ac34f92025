"""The file module: open, validate and cache what `file_serve` routes answer from disk.

A path is stat'ed on every request; its cache entry (MIME type, validators, the pre-encoded
header block of a 200 and, for small files, the body) is reused while device, inode, size and
mtime still match. An entry is only ever built from an open descriptor whose target was checked
to lie inside `dir_path` (its path read back from /proc/self/fd), so what a path resolved to a
moment before the open cannot matter: a symlink swapped in and out never gets an outside file
served. A large body is read from a descriptor opened when the answer needs it and checked to
be the very file its entry describes (`reopen`, else `StaleEntry`). Small bodies sit in memory,
bounded.
"""

from __future__ import annotations

import errno
import os
import stat

from xps_server.http.mime import guess_type
from xps_server.http.writer import http_date

SMALL_FILE_BYTES = 64 * 1024  # bodies up to this size are kept in memory
CACHE_BODY_BYTES = 32 * 1024 * 1024  # bound on all cached bodies together
CACHE_ENTRIES = 8192
# O_NONBLOCK and O_NOCTTY: a FIFO or terminal swapped in for a file cannot stall the loop.
OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
NOT_FOUND_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP})
_FORBIDDEN_ERRNOS = frozenset({errno.EACCES, errno.EPERM})
_EXHAUSTED_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


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
        # The header block of a 200 (the writer adds the length).
        self.fields = b"Content-Type: %s\r\n%sAccept-Ranges: bytes\r\n" % (
            mime.encode(),
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
