"""MIME table: file name -> bare Content-Type (no parameters), as SPEC §3 asks."""

from __future__ import annotations

import mimetypes
import posixpath

DEFAULT_TYPE = "application/octet-stream"

# Our own table first so answers do not depend on the host's /etc/mime.types.
_TYPES = {
    ".html": "text/html",
    ".htm": "text/html",
    ".txt": "text/plain",
    ".text": "text/plain",
    ".css": "text/css",
    ".csv": "text/csv",
    ".md": "text/markdown",
    ".c": "text/x-c",
    ".h": "text/x-c",
    ".py": "text/x-python",
    ".js": "application/javascript",
    ".mjs": "application/javascript",
    ".json": "application/json",
    ".xml": "application/xml",
    ".pdf": "application/pdf",
    ".zip": "application/zip",
    ".gz": "application/gzip",
    ".tgz": "application/gzip",
    ".bz2": "application/x-bzip2",
    ".xz": "application/x-xz",
    ".7z": "application/x-7z-compressed",
    ".tar": "application/x-tar",
    ".wasm": "application/wasm",
    ".bin": "application/octet-stream",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".wav": "audio/wav",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
}


def guess_type(name: str) -> str:
    """The bare MIME type for a file name; unknown extensions are application/octet-stream."""
    ext = posixpath.splitext(name)[1].lower()
    found = _TYPES.get(ext)
    if found is None:
        found = mimetypes.types_map.get(ext, DEFAULT_TYPE)
    return found
