"""`file_serve` routes: files, index files, directory listings, ranges, validators and gzip.

The handler maps the decoded path under `dir_path` and answers from the file cache
(`disk.file.FileCache`: an entry is only ever built from a descriptor checked to lie inside
`dir_path`), as a `Response`: a small file's body from memory, a large one as a file segment
that moves with sendfile, from the very descriptor that was checked. A file that changed
between the stat and the open (`StaleEntry`, nothing sent yet) is answered afresh, opening it
before deciding anything.

gzip (a route with `gzip_enable`, a compressible type, a client that takes it, no Range): the
compressed variant from `disk.gzip.GzipCache` when it is there (small files are compressed in
one go and cached); a large file not yet cached streams through the output chain's gzip stage
(`FileStream`), chunked, and fills the cache as a by-product.
"""

from __future__ import annotations

import os
import stat
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Literal

from xps_server.core.pipe import FileSegment
from xps_server.disk.file import NOT_FOUND_ERRNOS, FileEntry, StaleEntry, failure_status
from xps_server.disk.gzip import (
    ENCODING,
    MIN_LENGTH,
    VARY,
    CacheKey,
    GzipVariant,
    accepts_gzip,
    compressible,
    gzip_bytes,
    gzip_etag,
    variant_fields,
)
from xps_server.disk.listing import render_listing
from xps_server.http.writer import Response
from xps_server.routes.base import NoBodyProducer

if TYPE_CHECKING:
    from xps_server.config import Route
    from xps_server.http.parser import Request
    from xps_server.network.output import BodyStream
    from xps_server.routes.base import RouteContext

ALLOW_FIELD = b"Allow: GET, HEAD\r\n"
STREAM_CHUNK = 64 * 1024  # file bytes read per step of a compressed stream
_OWS = " \t"
_MAX_POSITION_DIGITS = 18  # 10**18 bytes is past any file; longer positions need no exact value
_PAST_ANY_FILE = 10**18


def serve_file(ctx: RouteContext, request: Request, route: Route, path: str) -> Response | None:
    """Answer a GET or HEAD for the decoded, normalised `path` on a `file_serve` route."""
    try:
        return _serve_file(ctx, request, route, path, False)
    except StaleEntry:
        # The file changed between the stat and the open (nothing was sent): answer afresh,
        # opening a large file before deciding anything.
        return _serve_file(ctx, request, route, path, True)


def _serve_file(
    ctx: RouteContext, request: Request, route: Route, path: str, open_large: bool
) -> Response | None:
    method = request.method
    if method != "GET" and method != "HEAD":
        return ctx.core.writer.error(405, ALLOW_FIELD)
    head_only = method == "HEAD"
    req_path = route.req_path
    fs_path = route.dir_path + (path if req_path == "/" else path[len(req_path) :])
    files = ctx.core.files
    try:
        entry, fd = files.resolve(fs_path, os.stat(fs_path), route.dir_path, open_large)
    except OSError as exc:
        return ctx.core.writer.error(failure_status(exc))
    if entry is None:
        return ctx.core.writer.error(403)
    if entry.is_dir:
        found = _directory_index(ctx, route, fs_path, path, head_only, open_large)
        if isinstance(found, Response):
            return found
        entry, fd, fs_path = found
    # From here `fd` (-1, or open on a large file) is sent from or closed by what answers.
    headers = request.headers
    vary = b""
    switches = ctx.route_state
    assert switches is not None
    if switches.gzip_enable and entry.size >= MIN_LENGTH and compressible(entry.mime, route):
        vary = VARY  # the identity answers below vary by Accept-Encoding too
        if "range" not in headers and accepts_gzip(headers):
            answer = _gzip(ctx, request, route, entry, fs_path, fd, head_only)
            if not isinstance(answer, _Identity):
                return answer
    if ("if-none-match" in headers or "if-modified-since" in headers) and not_modified(
        headers, entry.etag, entry.mtime
    ):
        _close(fd)
        return Response(
            304, entry.validators + vary if vary else entry.validators, None, entry.size
        )
    if "range" in headers:
        return _range(ctx, headers, entry, fs_path, fd, head_only, vary)
    return _whole(ctx, entry, fs_path, fd, head_only, vary)


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


def _whole(
    ctx: RouteContext, entry: FileEntry, fs_path: str, fd: int, head_only: bool, extra: bytes
) -> Response:
    """A 200 with the whole file; `extra` is more header lines (Vary on gzip routes)."""
    fields = entry.fields + extra if extra else entry.fields
    if head_only:
        _close(fd)
        return Response(200, fields, None, entry.size)
    if entry.body is not None:
        return Response(200, fields, entry.body, entry.size)
    if fd < 0:
        fd = ctx.core.files.reopen(fs_path, entry)
    return Response(200, fields, FileSegment(fd, 0, entry.size), entry.size)


def _directory_index(
    ctx: RouteContext, route: Route, dir_fs: str, url_path: str, head_only: bool, open_large: bool
) -> tuple[FileEntry, int, str] | Response:
    """The index file of a directory (entry, descriptor as `FileCache.resolve` gives, path),
    or the answer when there is none: a listing or an error."""
    files = ctx.core.files
    writer = ctx.core.writer
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
            return writer.error(failure_status(exc))
        if entry is not None and not entry.is_dir:
            return entry, fd, index_path
    if not route.dir_listing:
        return writer.error(403)
    # The listing reads a descriptor checked to lie inside the route.
    try:
        fd = files.open_dir(dir_fs, route.dir_path)
    except OSError as exc:
        return writer.error(failure_status(exc))
    if fd < 0:
        return writer.error(403)
    try:
        body = render_listing(url_path, fd, ctx.core.config.server_name)
    except OSError as exc:
        return writer.error(failure_status(exc))
    finally:
        os.close(fd)
    return Response(200, b"Content-Type: text/html\r\n", None if head_only else body, len(body))


def not_modified(headers: dict[str, str], etag: str, mtime: int) -> bool:
    """RFC 9110 §13.2.2: If-None-Match decides when present (a weak comparison, as for a GET),
    else If-Modified-Since."""
    inm = headers.get("if-none-match")
    if inm is not None:
        if inm.strip() == "*":
            return True
        return any(tag.strip().removeprefix("W/") == etag for tag in inm.split(","))
    try:
        since = parsedate_to_datetime(headers["if-modified-since"]).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return False
    return mtime <= since


# --- ranges ------------------------------------------------------------------------------------
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


def parse_range(value: str, size: int) -> tuple[int, int] | Literal[False] | None:
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


def _range(
    ctx: RouteContext,
    headers: dict[str, str],
    entry: FileEntry,
    fs_path: str,
    fd: int,
    head_only: bool,
    extra: bytes,
) -> Response:
    if_range = headers.get("if-range")
    wanted = None
    if if_range is None or if_range.strip() in (entry.etag, entry.last_modified):
        wanted = parse_range(headers["range"], entry.size)
    if wanted is None:
        return _whole(ctx, entry, fs_path, fd, head_only, extra)
    if wanted is False:
        _close(fd)
        return ctx.core.writer.error(416, b"Content-Range: bytes */%d\r\n" % entry.size)
    start, end = wanted
    length = end - start + 1
    fields = b"Content-Type: %s\r\nContent-Range: bytes %d-%d/%d\r\n%s%s" % (
        entry.mime.encode(),
        start,
        end,
        entry.size,
        entry.validators,
        extra,
    )
    if head_only:
        _close(fd)
        return Response(206, fields, None, length)
    if entry.body is not None:
        return Response(206, fields, entry.body[start : end + 1], length)
    if fd < 0:
        fd = ctx.core.files.reopen(fs_path, entry)
    return Response(206, fields, FileSegment(fd, start, length), length)


# --- gzip --------------------------------------------------------------------------------------
class _Identity:
    """What `_gzip` says when the identity representation must answer instead."""


IDENTITY = _Identity()


def _gzip(
    ctx: RouteContext,
    request: Request,
    route: Route,
    entry: FileEntry,
    fs_path: str,
    fd: int,
    head_only: bool,
) -> Response | _Identity | None:
    """The gzip variant of a compressible file; IDENTITY to fall back to identity (`fd` is
    then still the caller's). None when it streams. `fd` is -1 or a descriptor checked to be the
    file `entry` describes; a stream with none yet gets one from `FileCache.reopen`."""
    core = ctx.core
    cache = core.gzip_cache
    level = route.gzip_level
    key = (fs_path, entry.dev, entry.ino, entry.size, entry.mtime_ns, level)
    etag = gzip_etag(entry.etag)
    variant = cache.get(key)
    if variant is None and entry.body is not None:
        variant = GzipVariant(gzip_bytes(entry.body, level), variant_fields(entry, etag))
        cache.put(key, variant)
    headers = request.headers
    if ("if-none-match" in headers or "if-modified-since" in headers) and not_modified(
        headers, etag, entry.mtime
    ):
        _close(fd)
        fields = b"Last-Modified: %s\r\nETag: %s\r\n%s%s" % (
            entry.last_modified.encode(),
            etag.encode(),
            ENCODING,
            VARY,
        )
        return Response(304, fields, None, -1 if variant is None else len(variant.body))
    if variant is not None:
        _close(fd)
        core.stats.gzip_responses += 1
        body = variant.body
        return Response(200, variant.fields, None if head_only else body, len(body))
    if request.version == "1.0":
        return IDENTITY  # no chunked framing for HTTP/1.0 and the length is not known yet
    fields = variant_fields(entry, etag)
    if head_only:
        _close(fd)
        return Response(200, fields, None, -1)
    if fd < 0:
        fd = core.files.reopen(fs_path, entry)
    core.stats.gzip_responses += 1
    stream = FileStream(ctx, fd, entry, key, etag)
    ctx.stream(stream)
    body_stream = ctx.start_body(Response(200, fields, None, -1), level, stream.collecting)
    if body_stream is None:  # cannot happen for a GET; keeps the descriptor from leaking
        stream.abort()
        return None
    stream.body = body_stream
    stream.pump()
    return None


class FileStream(NoBodyProducer):
    """A session producer: a file read into the output chain (whose gzip stage compresses it)
    while the chain has room; once the whole file went through unchanged, its compressed body
    joins the gzip cache."""

    __slots__ = ("body", "collecting", "ctx", "done", "entry", "etag", "fd", "key", "remaining")

    def __init__(self, ctx: RouteContext, fd: int, entry: FileEntry, key: CacheKey, etag: str):
        self.ctx = ctx
        self.fd = fd
        self.entry = entry
        self.key = key
        self.etag = etag
        self.remaining = entry.size
        self.body: BodyStream | None = None
        self.done = False
        # The compressed body is kept for the cache while it may still fit there; a file more
        # than 8 times the entry bound would not compress small enough to be worth trying.
        self.collecting = entry.size <= ctx.core.gzip_cache.max_entry * 8

    # Producer protocol (a GET has no body to take: NoBodyProducer).
    def resume(self) -> None:
        self.pump()

    def responded(self) -> bool:
        return True  # the head goes out before the stream starts

    def abort(self) -> None:
        self.done = True
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def pump(self) -> None:
        """Read into the chain while it has room; finish the response at the end of the file."""
        body = self.body
        if self.done or body is None:
            return
        ctx = self.ctx
        conn = ctx.conn
        while body.room() and self.remaining:
            want = min(STREAM_CHUNK, self.remaining)
            try:
                data = os.read(self.fd, want)
            except OSError:
                data = b""
            if len(data) < want:
                conn.close()  # unreadable, or the file shrank: the body cannot be completed
                return
            self.remaining -= want
            body.write(data)
            collected = body.collected
            if collected is not None and body.sent > ctx.core.gzip_cache.max_entry:
                body.collected = None  # too big to cache after all
        if self.remaining:
            body.commit()
            if not conn.closed:
                ctx.arm_timer()
            return
        body.end()
        if conn.closed:
            return
        self._finish(body)

    def _finish(self, body: BodyStream) -> None:
        try:
            st = os.fstat(self.fd)
            unchanged = (st.st_size, st.st_mtime_ns) == (self.entry.size, self.entry.mtime_ns)
        except OSError:
            unchanged = False
        self.abort()
        collected = body.collected
        if collected is not None and unchanged:  # a file rewritten meanwhile is not cached
            variant = GzipVariant(b"".join(collected), variant_fields(self.entry, self.etag))
            self.ctx.core.gzip_cache.put(self.key, variant)
        body.collected = None
        self.ctx.stream_done(200, body.sent)
