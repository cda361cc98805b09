"""The `bridge` command line: `main()` parses the arguments and runs one command.

Each command group has its module (`run`, `config`, `display`, `send`, `dlq`, `topology`) that
parses its arguments and prints; the work is done by the operations modules they call. Exit
codes: 0 ok, 1 runtime failure, 2 usage or config error. Errors are printed to stderr as one
readable sentence, never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from bridge.cli import archive, config, display, dlq, run, send, status, topology
from bridge.cli.common import EXIT_FAILURE, EXIT_USAGE, Parser, fail
from bridge.errors import BridgeError, ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="bridge",
        description="Alibaba Cloud EventBridge -> RabbitMQ -> Knative-style subscribers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in (run, config, display, send, dlq, topology, archive, status):
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        return fail(str(exc), EXIT_USAGE)
    except BridgeError as exc:
        return fail(str(exc), EXIT_FAILURE)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE


__all__ = ["build_parser", "main"]
