"""gzip: content negotiation, the compressor stage, and the cache of compressed files.

The pieces are meant to be reused by any source (files here, upstream bodies in the proxy):

- `accepts_gzip(headers)`: does the request's Accept-Encoding take gzip (q-values, ``*``,
  ``identity`` as RFC 9110 §12.5.3)?
- `compressible(mime, route)`: text/*, JSON, JavaScript, XML, SVG and the route's
  `gzip_mime_types`, never an already-compressed type (images but SVG, audio, video, archives,
  PDF, woff fonts).
- `GzipEncoder`: the stage itself, ``feed(bytes) -> bytes`` / ``finish() -> bytes``.

For `file_serve`, compressed files are kept in a bounded LRU (`GzipCache`) keyed by path,
device, inode, size, mtime and level, so a repeated request costs no compression at all. A small
file is compressed from its cached body; a large one not yet cached streams through
`GzipFileStream`, which reads the descriptor `file_serve` opened and validated (never the path
again) and compresses 64 KiB at a time only while the client pipe is below its threshold, sends
chunked, and fills the cache as a by-product once the whole file went through.

The gzip variant is a different representation: its ETag is the file's with ``-gzip`` inside
the quotes (``"5f1c2a-3c00-gzip"``), Range requests always get the identity representation,
and every response for a compressible file on a gzip route carries ``Vary: Accept-Encoding``.
"""

from __future__ import annotations

import os
import re
import zlib
from collections import OrderedDict
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xps_server.config import Route
    from xps_server.disk.file import FileEntry
    from xps_server.http.parser import Request
    from xps_server.server.session import Session

MIN_LENGTH = 256  # smaller bodies gain nothing worth the header bytes and the CPU
STREAM_CHUNK = 64 * 1024  # file bytes read and compressed per step of a stream
STREAM_TURN = 4 * STREAM_CHUNK  # file bytes one stream compresses before letting others run
CACHE_BYTES = 64 * 1024 * 1024  # bound on all cached compressed bodies together
CACHE_ENTRY_BYTES = 16 * 1024 * 1024  # a body larger than this is never cached (nor buffered)
VARY = b"Vary: Accept-Encoding\r\n"
_ENCODING = b"Content-Encoding: gzip\r\n"

_ALWAYS = frozenset(
    {
        "application/json",
        "application/javascript",
        "application/xml",
        "image/svg+xml",
        "application/xhtml+xml",
        "application/rss+xml",
        "application/atom+xml",
        "application/manifest+json",
        "application/ld+json",
    }
)
_NEVER = frozenset(
    {
        "application/pdf",
        "application/zip",
        "application/gzip",
        "application/x-gzip",
        "application/x-bzip2",
        "application/x-xz",
        "application/x-7z-compressed",
        "application/x-rar-compressed",
        "application/vnd.rar",
        "application/zstd",
        "application/x-compress",
        "font/woff",
        "font/woff2",
        "text/event-stream",  # buffering a compressor would hold events back
    }
)
_NEVER_PREFIXES = ("image/", "audio/", "video/")


def compressible(mime: str, route: Route) -> bool:
    """Whether a body of type `mime` (bare, lower-case) is worth gzip on `route`."""
    if mime in _NEVER or (mime.startswith(_NEVER_PREFIXES) and mime != "image/svg+xml"):
        return False
    return mime.startswith("text/") or mime in _ALWAYS or mime in route.gzip_mime_types


# --- negotiation -------------------------------------------------------------------------------
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?").fullmatch
_ACCEPT_MEMO: dict[str, bool] = {}  # Accept-Encoding value -> verdict: clients send few values
_ACCEPT_MEMO_SIZE = 1024


def accepts_gzip(headers: dict[str, str]) -> bool:
    """Whether a request with these (lower-case keyed) headers may get a gzip body."""
    value = headers.get("accept-encoding")
    if value is None:
        return False  # no preference stated: identity, as nginx and every browser expect
    verdict = _ACCEPT_MEMO.get(value)
    if verdict is None:
        verdict = negotiate(value)
        if len(_ACCEPT_MEMO) >= _ACCEPT_MEMO_SIZE:
            _ACCEPT_MEMO.clear()
        _ACCEPT_MEMO[value] = verdict
    return verdict


def negotiate(value: str) -> bool:
    """RFC 9110 §12.5.3 for one Accept-Encoding value: is gzip the coding to send?

    gzip (or its alias x-gzip) is taken at its own q, else at ``*``'s; q=0 means "not
    acceptable". An explicit ``identity`` (or ``*`` standing in for it) with a higher q than
    gzip's wins; when identity is not mentioned it is the fallback, not a rival. An empty
    value means identity only. Malformed q-values drop their element.
    """
    weights: dict[str, float] = {}
    for element in value.split(","):
        coding, _, params = element.partition(";")
        coding = coding.strip(" \t").lower()
        if not coding:
            continue
        weight = 1.0
        for param in params.split(";"):
            name, eq, number = param.partition("=")
            if eq and name.strip(" \t").lower() == "q":
                number = number.strip(" \t")
                weight = float(number) if _QVALUE(number) else -1.0
        if weight < 0:
            continue
        if coding == "x-gzip":
            coding = "gzip"
        weights.setdefault(coding, weight)
    star = weights.get("*")
    gzip = weights.get("gzip", star if star is not None else 0.0)
    if gzip <= 0:
        return False
    identity = weights.get("identity", star)
    return identity is None or identity <= gzip


# --- the stage ---------------------------------------------------------------------------------
class GzipEncoder:
    """A gzip stream: bytes in, compressed bytes out (often none until enough went in)."""

    __slots__ = ("_z", "bytes_in", "bytes_out")

    def __init__(self, level: int = 6) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)
        self.bytes_in = 0
        self.bytes_out = 0

    def feed(self, data: bytes) -> bytes:
        self.bytes_in += len(data)
        out = self._z.compress(data)
        self.bytes_out += len(out)
        return out

    def flush(self) -> bytes:
        """Everything fed so far, decodable now (a sync flush: for a source that idles)."""
        out = self._z.flush(zlib.Z_SYNC_FLUSH)
        self.bytes_out += len(out)
        return out

    def finish(self) -> bytes:
        """The rest of the stream and the gzip trailer; the encoder is done after this."""
        out = self._z.flush(zlib.Z_FINISH)
        self.bytes_out += len(out)
        return out


def gzip_bytes(data: bytes, level: int) -> bytes:
    encoder = GzipEncoder(level)
    return encoder.feed(data) + encoder.finish()


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (`data` must not be empty: that would end the body)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


# --- the cache -----------------------------------------------------------------------------------
CacheKey = tuple[str, int, int, int, int, int]  # path, device, inode, size, mtime_ns, level


class GzipVariant:
    """A compressed file: the body and the header block of its 200."""

    __slots__ = ("body", "fields")

    def __init__(self, body: bytes, fields: bytes) -> None:
        self.body = body
        self.fields = fields


class GzipCache:
    """Compressed bodies, least recently used out first once `max_bytes` is exceeded."""

    def __init__(self, max_bytes: int = CACHE_BYTES, max_entry: int = CACHE_ENTRY_BYTES) -> None:
        self.max_bytes = max_bytes
        self.max_entry = max_entry
        self.entries: OrderedDict[CacheKey, GzipVariant] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: CacheKey) -> GzipVariant | None:
        found = self.entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self.entries.move_to_end(key)
        return found

    def put(self, key: CacheKey, variant: GzipVariant) -> None:
        size = len(variant.body)
        if size > self.max_entry:
            return
        entries = self.entries
        old = entries.pop(key, None)
        if old is not None:
            self.bytes -= len(old.body)
        entries[key] = variant
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, evicted = entries.popitem(last=False)
            self.bytes -= len(evicted.body)
            self.evictions += 1

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0

    def stats(self) -> dict[str, int]:
        return {
            "gzip_cache_entries": len(self.entries),
            "gzip_cache_bytes": self.bytes,
            "gzip_cache_hits": self.hits,
            "gzip_cache_misses": self.misses,
            "gzip_cache_evictions": self.evictions,
        }


# --- file_serve --------------------------------------------------------------------------------
def gzip_etag(etag: str) -> str:
    return etag[:-1] + '-gzip"'


def _variant_fields(entry: FileEntry, etag: str, length: bytes) -> bytes:
    return b"Content-Type: %s\r\n%sLast-Modified: %s\r\nETag: %s\r\n%s%s" % (
        entry.mime.encode(),
        length,
        entry.last_modified.encode(),
        etag.encode(),
        _ENCODING,
        VARY,
    )


def _not_modified(headers: dict[str, str], etag: str, mtime: int) -> bool:
    """RFC 9110 §13.2.2 for the gzip variant (weak comparison, as for GET)."""
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


def serve_gzip(
    session: Session,
    request: Request,
    route: Route,
    entry: FileEntry,
    fs_path: str,
    fd: int,
    head_only: bool,
) -> bool:
    """Answer a compressible file with its gzip variant; False to fall back to identity.

    The caller has checked that the route enables gzip, the type is compressible, the file is
    big enough, the client accepts gzip and the request is not a Range request. `fd` is -1 or
    a descriptor `file_serve` checked to be the file `entry` describes: once this answers, it
    has streamed from `fd` or closed it; on False, `fd` is still the caller's. A stream with no
    descriptor yet gets one from `FileCache.reopen` (which may raise `StaleEntry`).
    """
    core = session.core
    responder = core.responder
    cache = core.gzip_cache
    level = route.gzip_level
    key = (fs_path, entry.dev, entry.ino, entry.size, entry.mtime_ns, level)
    etag = gzip_etag(entry.etag)
    headers = request.headers
    variant = cache.get(key)
    if variant is None and entry.body is not None:
        body = gzip_bytes(entry.body, level)
        length = b"Content-Length: %d\r\n" % len(body)
        variant = GzipVariant(body, _variant_fields(entry, etag, length))
        cache.put(key, variant)
    if ("if-none-match" in headers or "if-modified-since" in headers) and _not_modified(
        headers, etag, entry.mtime
    ):
        if fd >= 0:
            os.close(fd)
        length = b"" if variant is None else b"Content-Length: %d\r\n" % len(variant.body)
        fields = b"%sLast-Modified: %s\r\nETag: %s\r\n%s%s" % (
            length,
            entry.last_modified.encode(),
            etag.encode(),
            _ENCODING,
            VARY,
        )
        session.respond(304, responder.head(304, fields, session.keep_alive()), 0)
        return True
    keep_alive = session.keep_alive()
    if variant is not None:
        if fd >= 0:
            os.close(fd)
        core.stats.gzip_responses += 1
        if head_only:
            session.respond(200, responder.head(200, variant.fields, keep_alive), 0)
        else:
            session.respond_body(200, responder.head(200, variant.fields, keep_alive), variant.body)
        return True
    if request.version == "1.0":
        return False  # no chunked framing for HTTP/1.0 and the length is not known yet
    fields = _variant_fields(entry, etag, b"Transfer-Encoding: chunked\r\n")
    if head_only:
        if fd >= 0:
            os.close(fd)
        session.respond(200, responder.head(200, fields, keep_alive), 0)
        return True
    if fd < 0:
        fd = core.files.reopen(fs_path, entry)
    core.stats.gzip_responses += 1
    stream = GzipFileStream(session, fd, entry, key, level, etag)
    session.stream(stream)
    session.conn.send(responder.head(200, fields, keep_alive))
    stream.pump()
    return True


class GzipFileStream:
    """A session producer: the file through a `GzipEncoder` into the client pipe, chunked.

    It compresses only while the client pipe is below its threshold and at most `STREAM_TURN`
    file bytes per loop turn, so neither a slow client nor a big file can hog memory or the
    loop. Once the whole file went through, the compressed body joins the cache.
    """

    __slots__ = (
        "done",
        "encoder",
        "entry",
        "etag",
        "fd",
        "key",
        "parts",
        "remaining",
        "scheduled",
        "sent",
        "session",
    )

    def __init__(
        self, session: Session, fd: int, entry: FileEntry, key: CacheKey, level: int, etag: str
    ) -> None:
        self.session = session
        self.fd = fd
        self.entry = entry
        self.key = key
        self.etag = etag
        self.encoder = GzipEncoder(level)
        self.remaining = entry.size
        # The compressed body is kept for the cache while it may still fit there; a file more
        # than 8 times the entry bound would not compress small enough to be worth trying.
        cache = session.core.gzip_cache
        self.parts: list[bytes] | None = [] if entry.size <= cache.max_entry * 8 else None
        self.sent = 0
        self.scheduled = False
        self.done = False

    # Producer protocol: a GET has no body to take.
    def on_body(self, data: bytes) -> None:
        pass

    def on_body_end(self) -> None:
        pass

    def body_full(self) -> bool:
        return False

    def resume(self) -> None:
        self.pump()

    def responded(self) -> bool:
        return True  # the head goes out before the stream starts

    def abort(self) -> None:
        self._close()

    def _close(self) -> None:
        self.done = True
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _next_turn(self) -> None:
        self.scheduled = False
        self.pump()

    def pump(self) -> None:
        """Compress and send while the client pipe has room; finish the response at EOF."""
        if self.done:
            return
        session = self.session
        conn = session.conn
        out = conn.out
        encoder = self.encoder
        budget = STREAM_TURN
        while out.size < out.threshold and budget > 0:
            want = min(STREAM_CHUNK, self.remaining)
            try:
                data = os.read(self.fd, want)
            except OSError:
                data = None
            if data is None or len(data) < want:
                conn.close()  # unreadable, or the file shrank: the body cannot be completed
                return
            self.remaining -= want
            budget -= want
            compressed = encoder.feed(data)
            last = self.remaining == 0
            if last:
                compressed += encoder.finish()
            if compressed:
                self.sent += len(compressed)
                if self.parts is not None:
                    self.parts.append(compressed)
                    if self.sent > session.core.gzip_cache.max_entry:
                        self.parts = None
                framed = chunk(compressed)
                conn.send(framed + b"0\r\n\r\n" if last else framed)
            elif last:
                conn.send(b"0\r\n\r\n")
            if conn.closed:
                return
            if last:
                self._finish()
                return
        if out.size < out.threshold and not self.scheduled:
            # The socket took everything: no drain will come, so continue on the next turn.
            self.scheduled = True
            session.core.loop.call_soon(self._next_turn)
        session.arm_timer()

    def _finish(self) -> None:
        session = self.session
        try:
            st = os.fstat(self.fd)
            unchanged = (st.st_size, st.st_mtime_ns) == (self.entry.size, self.entry.mtime_ns)
        except OSError:
            unchanged = False
        self._close()
        if self.parts is not None and unchanged:  # a file rewritten meanwhile is not cached
            body = b"".join(self.parts)
            length = b"Content-Length: %d\r\n" % len(body)
            variant = GzipVariant(body, _variant_fields(self.entry, self.etag, length))
            session.core.gzip_cache.put(self.key, variant)
        self.parts = None
        session.stream_done(200, self.sent)
