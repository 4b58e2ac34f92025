"""Caddy as a peer: a Caddyfile under a private prefix, one thread running Go code.

``GOMAXPROCS=1`` lets one thread run Go code at a time (nginx has one worker, xps one loop).
HOME and the XDG directories point into the prefix, so what Caddy saves (``autosave.json``)
stays there. The admin endpoint and automatic HTTPS are off; there is no access log (Caddy
logs requests only for a site that asks), and its own log is at WARN: nothing per request.
"""

import shutil
import subprocess
from pathlib import Path

from bench.servers import Command


def find_caddy() -> str | None:
    """caddy on PATH, or None."""
    return shutil.which("caddy")


def version(caddy: str) -> str:
    """``caddy/2.6.2``-style version string."""
    out = subprocess.run([caddy, "version"], capture_output=True, text=True, timeout=10)
    words = (out.stdout or out.stderr).split()
    return f"caddy/{words[0].removeprefix('v')}" if words else "caddy"


def write_config(prefix: Path, sites: str) -> Path:
    """Create prefix/ with a Caddyfile: the global options, then sites; returns its path.

    Caddyfiles are indented with tabs: Caddy warns about any other layout.
    """
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "Caddyfile"
    conf.write_text(
        f"""{{
	admin off
	auto_https off
	grace_period 1s
	log {{
		level WARN
	}}
}}
{sites}"""
    )
    return conf


def command(caddy: str, prefix: Path, sites: str) -> Command:
    """Write the Caddyfile under prefix; the command and environment that run Caddy on it."""
    conf = write_config(prefix, sites)
    home = prefix / "home"
    env = {
        "GOMAXPROCS": "1",
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
    }
    return Command([caddy, "run", "--config", str(conf), "--adapter", "caddyfile"], env)
