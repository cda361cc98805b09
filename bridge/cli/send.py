"""`bridge send`: post one event the way EventBridge does and print the HTTP status."""

from __future__ import annotations

import argparse
from typing import Any

from bridge.cli.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, fail, run_async


def register(sub: Any) -> None:
    send = sub.add_parser("send", help="post one event the way EventBridge does")
    send.add_argument("--url", help="ingress URL (default: the configured ingress, broker /)")
    send.add_argument("--config")
    send.add_argument("--sample", help="a sample event, e.g. oss-put-object")
    send.add_argument("--type", dest="type_")
    send.add_argument("--source")
    send.add_argument("--data", help="the event data, as JSON")
    send.add_argument("--token", help="ingress token (default: the configured auth_token)")
    send.set_defaults(handler=cmd_send)


def cmd_send(args: argparse.Namespace) -> int:
    from bridge.send import custom_event, post_event, sample_event

    if args.sample and (args.type_ or args.source or args.data):
        return fail("give either --sample or --type/--source/--data, not both.", EXIT_USAGE)
    if args.sample:
        event = sample_event(args.sample)
    elif args.type_ and args.source:
        event = custom_event(args.type_, args.source, args.data)
    else:
        return fail("give --sample NAME, or --type and --source.", EXIT_USAGE)
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
    status, body = run_async(post_event(url, event, token))
    print(f"{status} {body}".rstrip())
    return EXIT_OK if 200 <= status < 300 else EXIT_FAILURE
