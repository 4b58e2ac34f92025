"""`xps-console`: the server on a background thread with the dashboard in front, or `--attach`
(given several times: those servers as one).

Exit codes as `xps-server`'s: 0 after a clean quit, 2 for an invalid config, 1 when the server
cannot start or the control socket cannot be reached. While the dashboard is up, log records
go to its event log (and to `--log-file` if given), never to the terminal it is drawn on.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from xps_console.link import AttachedLink, EmbeddedLink, Link
from xps_console.logs import LogBuffer
from xps_console.multi import MultiLink
from xps_server.cli import LOG_LEVELS
from xps_server.config import ConfigError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger("xps.console")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xps-console",
        description="eXpServer operator console: runs the server from CONFIG with a live "
        "dashboard, or steers a running headless server with --attach.",
    )
    parser.add_argument("config", nargs="?", help="config file (JSON; default ./config.json)")
    parser.add_argument(
        "--attach",
        metavar="SOCKET",
        action="append",
        help="steer the headless server on this control socket; give it again for each "
        "server of a fleet on this host, to see them as one (an Instance column tells "
        "them apart)",
    )
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="log threshold")
    parser.add_argument("--log-file", metavar="PATH", help="also append log records to PATH")
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long quitting waits for in-flight responses (embedded; default 10)",
    )
    return parser


def route_logging(level: str, buffer: logging.Handler, log_file: str | None) -> None:
    """Send every log record to `buffer` (the dashboard) and `log_file`, none to the tty."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(level.upper())
    root.addHandler(buffer)
    if log_file:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(file_handler)


@contextlib.contextmanager
def stdout_silenced(active: bool) -> Iterator[None]:
    """Point fd 1 at /dev/null: `access_log: "-"` must not write over the dashboard's tty."""
    if not active:
        yield
        return
    log.warning(
        'access_log "-": the terminal is the dashboard\'s, so access log lines are discarded '
        "while it runs (run `xps-console CONFIG > access.log` to keep them)"
    )
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.attach and args.config:
        parser.error("give a CONFIG to run or --attach SOCKET to steer, not both")
    link: Link
    if args.attach:
        missing = [path for path in args.attach if not os.path.exists(path)]
        if missing:
            print(f"xps-console: no control socket at {', '.join(missing)}", file=sys.stderr)
            return 1
        sockets = list(dict.fromkeys(args.attach))  # the same socket twice is one server
        link = (
            AttachedLink(sockets[0])
            if len(sockets) == 1
            else MultiLink([AttachedLink(path) for path in sockets])
        )
    else:
        config_path = args.config or "config.json"
        try:
            link = EmbeddedLink(config_path, grace=args.shutdown_timeout)
        except ConfigError as exc:
            print(f"xps-console: invalid config {config_path}:", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
            return 2
        try:
            link.start()
        except OSError as exc:
            print(f"xps-console: cannot listen: {exc}", file=sys.stderr)
            return 1

    from xps_console.app import ConsoleApp  # Textual loads only once there is a server to show

    logs = LogBuffer()
    route_logging(args.log_level, logs, args.log_file)
    app = ConsoleApp(link, logs)
    quiet = isinstance(link, EmbeddedLink) and link.config.access_log == "-" and os.isatty(1)
    try:
        with stdout_silenced(quiet):
            app.run()
    finally:
        # The terminal is ours again: what the shutdown says goes to stderr.
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().removeHandler(logs)
        logging.getLogger().addHandler(stderr)
        if isinstance(link, EmbeddedLink):
            link.shutdown()  # a no-op after `q`; graceful after anything else (ctrl+c, a crash)
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
