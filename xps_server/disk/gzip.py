"""gzip: content negotiation, what is worth compressing, and the cache of compressed files.

- `accepts_gzip(headers)`: does the request's Accept-Encoding take gzip (q-values, ``*``,
  ``identity`` as RFC 9110 §12.5.3)?
- `compressible(mime, route)`: text/*, JSON, JavaScript, XML, SVG and the route's
  `gzip_mime_types`, never an already-compressed type (images but SVG, audio, video, archives,
  PDF, woff fonts).
- `GzipCache`: compressed files in a bounded LRU keyed by path, device, inode, size, mtime and
  level, so a repeated request costs no compression at all.

The compressor stage that streams bodies (files not yet cached, proxied responses) is part of
the output chain (`network.output`). The gzip variant of a file is a different representation:
its ETag is the file's with ``-gzip`` inside the quotes (``"5f1c2a-3c00-gzip"``), Range
requests always get the identity representation, and every response for a compressible file
on a gzip route carries ``Vary: Accept-Encoding``.
"""

from __future__ import annotations

import re
import zlib
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xps_server.config import Route
    from xps_server.disk.file import FileEntry

MIN_LENGTH = 256  # smaller bodies gain nothing worth the header bytes and the CPU
CACHE_BYTES = 64 * 1024 * 1024  # bound on all cached compressed bodies together
CACHE_ENTRY_BYTES = 16 * 1024 * 1024  # a body larger than this is never cached (nor buffered)
VARY = b"Vary: Accept-Encoding\r\n"
ENCODING = b"Content-Encoding: gzip\r\n"

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


def gzip_bytes(data: bytes, level: int) -> bytes:
    """`data` compressed in one go, as a gzip member."""
    return zlib.compress(data, level, wbits=31)


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


def variant_fields(entry: FileEntry, etag: str) -> bytes:
    """The header block of the gzip variant's 200 (the writer adds the framing)."""
    return b"Content-Type: %s\r\nLast-Modified: %s\r\nETag: %s\r\n%s%s" % (
        entry.mime.encode(),
        entry.last_modified.encode(),
        etag.encode(),
        ENCODING,
        VARY,
    )
