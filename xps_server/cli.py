"""`xps-server`: run eXpServer headless from a config file.

Exit codes: 0 after a clean shutdown or a passing `--check`, 2 for an invalid config, 1 when
the server cannot start (a port already taken, say). No traceback reaches the user.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from xps_server.config import ConfigError, config_from, read_config
from xps_server.core.loop import tune_gc
from xps_server.server.lifecycle import Server
from xps_server.server.master import Master

log = logging.getLogger("xps.cli")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xps-server", description="eXpServer: an nginx-style web server (headless)."
    )
    parser.add_argument("config", nargs="?", default="config.json", help="config file (JSON)")
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="log threshold")
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long SIGTERM waits for in-flight responses (default 10)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        data = read_config(args.config)
        config = config_from(data, args.config)
    except ConfigError as exc:
        print(f"xps-server: invalid config {args.config}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    if args.check:
        print(f"xps-server: {args.config} is valid")
        return 0
    server: Server | Master
    if config.workers > 1:
        server = Master(config, grace=args.shutdown_timeout, data=data)
    else:
        server = Server(config, grace=args.shutdown_timeout)
    try:
        server.start(signals=True)
    except ConfigError as exc:  # a certificate or key that cannot be used
        print(f"xps-server: invalid config {args.config}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"xps-server: cannot listen: {exc}", file=sys.stderr)
        return 1
    for host, port in server.listen_addresses:
        log.info("listening on %s:%d", host, port)
    if config.workers > 1:
        log.info("master pid %d, %d workers", os.getpid(), config.workers)
    if server.control is not None:
        log.info("control socket on %s", config.control_socket)
    tune_gc()
    try:
        server.run()
    finally:
        server.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
