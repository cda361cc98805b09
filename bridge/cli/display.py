"""`bridge event-display`: the sample subscriber that prints every event it gets."""

from __future__ import annotations

import argparse
from typing import Any

from bridge.cli.common import EXIT_OK, run_async


def register(sub: Any) -> None:
    display = sub.add_parser("event-display", help="a sample subscriber that prints events")
    display.add_argument("--host", default="127.0.0.1")
    display.add_argument("--port", type=int, default=8081)
    display.set_defaults(handler=cmd_event_display)


def cmd_event_display(args: argparse.Namespace) -> int:
    from bridge.eventdisplay import serve

    run_async(serve(args.host, args.port))
    return EXIT_OK
