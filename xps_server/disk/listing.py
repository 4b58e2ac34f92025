"""Directory listing: the HTML page for a directory without an index when `dir_listing` is on.

Links sit in `<table><tr><td><a href=...>` with absolute, percent-encoded hrefs (SPEC §3). The
directory is read from a descriptor the caller opened and checked, never by its path.
"""

from __future__ import annotations

import html
import os
import time
from urllib.parse import quote


def render_listing(url_path: str, dir_fd: int, server_name: str) -> bytes:
    """The listing page for the directory open on `dir_fd`, linked under the URL path `url_path`.

    `dir_fd` stays open (the caller closes it); OSError if it cannot be read.
    """
    base = url_path.rstrip("/")
    entries = []
    with os.scandir(dir_fd) as scan:
        for item in scan:
            if item.name.startswith("."):
                continue  # hidden files stay hidden, as with nginx autoindex
            try:
                st = item.stat()
                is_dir = item.is_dir()
            except OSError:
                continue  # a dangling symlink has nothing to show
            entries.append((not is_dir, item.name, is_dir, st.st_size, st.st_mtime))
    entries.sort()
    title = html.escape(url_path if url_path.endswith("/") else url_path + "/")
    rows = []
    if base:
        parent = base.rsplit("/", 1)[0] or "/"
        rows.append(f'<tr><td><a href="{quote(parent)}">../</a></td><td></td><td>-</td></tr>')
    for _, name, is_dir, size, mtime in entries:
        href = quote(f"{base}/{name}")
        label = html.escape(name + ("/" if is_dir else ""))
        stamp = time.strftime("%d-%b-%Y %H:%M", time.gmtime(mtime))
        shown_size = "-" if is_dir else str(size)
        rows.append(
            f'<tr><td><a href="{href}">{label}</a></td><td>{stamp}</td><td>{shown_size}</td></tr>'
        )
    page = (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
        f"<title>Index of {title}</title>\n</head>\n<body>\n<h1>Index of {title}</h1>\n"
        "<table>\n" + "\n".join(rows) + "\n</table>\n"
        f"<hr><address>{html.escape(server_name)}</address>\n</body>\n</html>\n"
    )
    return page.encode("utf-8")
