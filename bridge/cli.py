"""The `bridge` command line. Exit codes: 0 ok, 1 runtime failure, 2 usage or config error.

Errors are printed to stderr as one readable sentence, never as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn, TypeVar

from bridge.errors import BridgeError, ConfigError

T = TypeVar("T")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"bridge: {message}.\n")


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)


def _fail(message: str, code: int) -> int:
    print(f"bridge: {message}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bridge",
        description="Alibaba Cloud EventBridge -> RabbitMQ -> Knative-style subscribers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", help="configuration file (default $BRIDGE_CONFIG, ./config.toml)")
    run.add_argument("--role", choices=("all", "ingress", "dispatcher"), default="all")

    check = sub.add_parser("check-config", help="validate the configuration and show triggers")
    check.add_argument("--config")

    display = sub.add_parser("event-display", help="a sample subscriber that prints events")
    display.add_argument("--host", default="127.0.0.1")
    display.add_argument("--port", type=int, default=8081)

    send = sub.add_parser("send", help="post one event the way EventBridge does")
    send.add_argument("--url", help="ingress URL (default: the configured ingress, broker /)")
    send.add_argument("--config")
    send.add_argument("--sample", help="a sample event, e.g. oss-put-object")
    send.add_argument("--type", dest="type_")
    send.add_argument("--source")
    send.add_argument("--data", help="the event data, as JSON")
    send.add_argument("--token", help="ingress token (default: the configured auth_token)")

    from bridge.deadletters import add_dlq_commands, add_topology_commands

    add_dlq_commands(sub)
    add_topology_commands(sub)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from bridge.app import run_daemon
    from bridge.config import load
    from bridge.telemetry.logging import setup_logging

    loaded = load(args.config)  # fail fast, before logging is JSON
    setup_logging(loaded.settings.logging.level)
    return _run_async(run_daemon(args.config, args.role))


def _cmd_check_config(args: argparse.Namespace) -> int:
    from bridge.config import load
    from bridge.triggers import build_routes, describe

    loaded = load(args.config)
    routes = build_routes(loaded)
    print(f"configuration: {loaded.source}")
    subscribers = loaded.settings.subscribers
    if subscribers.client_cert:
        key = subscribers.client_key or "in the same file"
        print(f"client certificate (mutual TLS): {subscribers.client_cert}, key {key}")
    print(describe(routes))
    return EXIT_OK


def _cmd_event_display(args: argparse.Namespace) -> int:
    from bridge.eventdisplay import serve

    _run_async(serve(args.host, args.port))
    return EXIT_OK


def _cmd_send(args: argparse.Namespace) -> int:
    from bridge.send import custom_event, post_event, sample_event

    if args.sample and (args.type_ or args.source or args.data):
        return _fail("give either --sample or --type/--source/--data, not both.", EXIT_USAGE)
    if args.sample:
        event = sample_event(args.sample)
    elif args.type_ and args.source:
        event = custom_event(args.type_, args.source, args.data)
    else:
        return _fail("give --sample NAME, or --type and --source.", EXIT_USAGE)
    url, token = args.url, args.token
    if url is None or token is None:
        from bridge.config import load

        settings = load(args.config).settings
        if url is None:
            host = settings.ingress.host
            host = "127.0.0.1" if host in ("0.0.0.0", "") else host
            url = f"http://{host}:{settings.ingress.port}/"
        if token is None:
            token = settings.ingress.auth_token.get_secret_value() or None
    status, body = _run_async(post_event(url, event, token))
    print(f"{status} {body}".rstrip())
    return EXIT_OK if 200 <= status < 300 else EXIT_FAILURE


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _cmd_run,
    "check-config": _cmd_check_config,
    "event-display": _cmd_event_display,
    "send": _cmd_send,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = COMMANDS.get(args.command) or args.handler
    try:
        return int(handler(args))
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except BridgeError as exc:
        return _fail(str(exc), EXIT_FAILURE)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
