"""`bridge topology prune`: list, and with --yes delete, the queues of removed triggers.

The operation itself is `bridge.amqp.topology.prune_topology`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from bridge.amqp.topology import StaleQueue, prune_topology
from bridge.cli.common import EXIT_OK, Parser, on_broker

if TYPE_CHECKING:
    from bridge.amqp.session import Session


def register(sub: Any) -> None:
    topo = sub.add_parser("topology", help="RabbitMQ topology upkeep")
    tsub = topo.add_subparsers(dest="topology_command", required=True, parser_class=Parser)
    p = tsub.add_parser("prune", help="list (and with --yes delete) queues of removed triggers")
    p.add_argument("--config")
    p.add_argument("--yes", action="store_true")
    p.set_defaults(handler=cmd_prune)


def cmd_prune(args: argparse.Namespace) -> int:
    async def work(session: Session) -> list[StaleQueue]:
        return await prune_topology(session.connection, session.trigger_keys, args.yes)

    found = on_broker(args.config, work)
    if not found:
        print("nothing to prune: every trigger queue belongs to a configured trigger")
        return EXIT_OK
    state = "deleted" if args.yes else "stale"
    for stale in found:
        print(f"{state}: {stale.queue} (trigger {stale.trigger}, {stale.messages} message(s))")
    if not args.yes:
        print("run again with --yes to delete these queues")
    return EXIT_OK
