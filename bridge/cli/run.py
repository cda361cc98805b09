"""`bridge run`: the daemon."""

from __future__ import annotations

import argparse
from typing import Any

from bridge.cli.common import run_async


def register(sub: Any) -> None:
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", help="configuration file (default $BRIDGE_CONFIG, ./config.toml)")
    run.add_argument("--role", choices=("all", "ingress", "dispatcher"), default="all")
    run.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from bridge.app import run_daemon
    from bridge.config import load
    from bridge.telemetry.logging import setup_logging

    loaded = load(args.config)  # fail fast, before logging is JSON
    setup_logging(loaded.settings.logging.level)
    return run_async(run_daemon(args.config, args.role))
