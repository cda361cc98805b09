"""`bridge run`: the daemon, as one process or as `--workers N` processes under a supervisor."""

from __future__ import annotations

import argparse
from typing import Any

from bridge.cli.common import EXIT_USAGE, fail, run_async


def register(sub: Any) -> None:
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", help="configuration file (default $BRIDGE_CONFIG, ./config.toml)")
    run.add_argument("--role", choices=("all", "ingress", "dispatcher"), default="all")
    run.add_argument(
        "--workers",
        default="1",
        help="processes sharing the ingress port and the consumers (default 1; auto = cores)",
    )
    # Internal: set by the supervisor on each worker it starts.
    run.add_argument("--worker-admin-file", help=argparse.SUPPRESS)
    run.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from bridge.app import run_daemon
    from bridge.config import load
    from bridge.supervisor import Supervisor, worker_count
    from bridge.telemetry.logging import setup_logging

    try:
        workers = worker_count(args.workers)
    except ValueError as exc:
        return fail(f"{exc}.", EXIT_USAGE)
    loaded = load(args.config)  # fail fast, before logging is JSON
    setup_logging(loaded.settings.logging.level)
    if workers > 1 and args.worker_admin_file is None:
        supervisor = Supervisor(loaded.settings, args.config, args.role, workers)
        return run_async(supervisor.run())
    return run_async(run_daemon(args.config, args.role, worker_admin_file=args.worker_admin_file))
