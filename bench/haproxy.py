"""HAProxy as a peer for the proxy case: one process, one thread, in the foreground.

``-db`` keeps it in the foreground with no master process; ``nbthread 1``; no ``log`` line, so
nothing is logged. SIGTERM stops it hard: it dies of the signal, which here is a clean stop.
(Its soft stop, SIGUSR1, now and then crashes 2.6.12 while it holds idle upstream connections.)
"""

import os
import shutil
import signal
import subprocess
from pathlib import Path

from bench.servers import Command

CLEAN_EXITS = (0, -signal.SIGTERM)
# Room for the client and the upstream side of each connection within the harness's
# descriptor limit (HAProxy refuses to start if it cannot have 2 x maxconn descriptors).
_MAXCONN = 4096


def find_haproxy() -> str | None:
    """haproxy on PATH, else the Debian location, else None."""
    found = shutil.which("haproxy")
    if found:
        return found
    debian = Path("/usr/sbin/haproxy")
    return str(debian) if os.access(debian, os.X_OK) else None


def version(haproxy: str) -> str:
    """``haproxy/2.6.12``-style version string."""
    out = subprocess.run([haproxy, "-v"], capture_output=True, text=True, timeout=10)
    words = (out.stdout or out.stderr).split()
    return f"haproxy/{words[2]}" if len(words) > 2 else "haproxy"


def write_config(prefix: Path, proxies: str) -> Path:
    """Create prefix/ with haproxy.cfg: global and defaults, then proxies; returns its path."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "haproxy.cfg"
    conf.write_text(
        f"""global
    nbthread 1
    maxconn {_MAXCONN}

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
{proxies}
"""
    )
    return conf


def command(haproxy: str, prefix: Path, proxies: str) -> Command:
    """Write haproxy.cfg under prefix; the command that runs HAProxy on it in the foreground."""
    return Command([haproxy, "-db", "-f", str(write_config(prefix, proxies))])
