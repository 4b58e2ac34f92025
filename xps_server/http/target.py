"""Request-target paths: percent-decoding and dot-segment normalisation before route lookup."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes


def normalize_path(path: str) -> str | None:
    """Decode and normalise an origin-form path; None when it is malformed or climbs above `/`.

    A trailing slash is kept because it distinguishes a directory request.
    """
    if not path.startswith("/"):
        return None
    if "%" in path:
        try:
            path = unquote_to_bytes(path).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if "\x00" in path:
        return None
    if "/." not in path and "//" not in path:
        return path
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if not segments:
                return None
            segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    normalized = "/" + "/".join(segments)
    if path.endswith(("/", "/.", "/..")) and normalized != "/":
        normalized += "/"
    return normalized
