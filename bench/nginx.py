"""nginx as a peer (and as the proxy case's backend): a self-contained config under a prefix.

Everything nginx writes (pid, error log, temp dirs) lives under the prefix, so it runs as any
user without touching /etc or /var. One worker, foreground, no access log, sendfile on.
"""

import grp
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from bench.servers import Command

_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def find_nginx() -> str | None:
    """nginx on PATH, else the Debian location, else None."""
    found = shutil.which("nginx")
    if found:
        return found
    debian = Path("/usr/sbin/nginx")
    return str(debian) if os.access(debian, os.X_OK) else None


def version(nginx: str) -> str:
    """``nginx/1.22.1``-style version string (nginx prints it on stderr)."""
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=10)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")


def _user_directive() -> str:
    # As root, workers would drop to "nobody" and could not read a 0700 temp dir.
    if os.geteuid() != 0:
        return ""
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    return f"user {user} {group};"


def write_config(prefix: Path, http_body: str, workers: int = 1) -> Path:
    """Create prefix/ with an nginx.conf wrapping http_body, run by `workers` worker
    processes; returns the config path."""
    prefix.mkdir(parents=True, exist_ok=True)
    temp_paths = "\n".join(
        f"    {name}_temp_path {prefix / ('temp_' + name)};" for name in _TEMP_DIRS
    )
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""{_user_directive()}
worker_processes {workers};
daemon off;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    sendfile on;
    # eXpServer does not cap requests per connection; nginx's default of 1000 would.
    keepalive_requests 1000000;
    default_type application/octet-stream;
    types {{
        text/plain txt;
        text/html html;
        application/octet-stream bin;
    }}
{temp_paths}
{http_body}
}}
"""
    )
    return conf


def command(nginx: str, prefix: Path, http_body: str, workers: int = 1) -> Command:
    """Write the config under prefix; the command that runs nginx on it in the foreground."""
    conf = write_config(prefix, http_body, workers)
    return Command([nginx, "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "error.log")])
