"""`bridge dlq list|show|replay|purge`: arguments in, tables, JSON lines and progress out.

The operations themselves are `bridge.deadletters.DeadLetters`.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import orjson

from bridge.cli.common import EXIT_FAILURE, EXIT_OK, Parser, on_broker, print_rows
from bridge.deadletters import DeadLetters, DeadLetterView, ReplayResult
from bridge.errors import ConfigError

if TYPE_CHECKING:
    from bridge.amqp.session import Session


def register(sub: Any) -> None:
    dlq = sub.add_parser("dlq", help="inspect, replay and purge dead letters")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True, parser_class=Parser)

    p = dsub.add_parser("list", help="list dead letters without removing them")
    p.add_argument("--config")
    p.add_argument("--trigger", help="namespace/name (namespace default if omitted)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(handler=cmd_list)

    p = dsub.add_parser("show", help="one dead letter in full")
    p.add_argument("id")
    p.add_argument("--config")
    p.add_argument("--trigger")
    p.set_defaults(handler=cmd_show)

    p = dsub.add_parser("replay", help="send dead letters back to their trigger")
    p.add_argument("--config")
    p.add_argument("--trigger")
    p.add_argument("--type")
    p.add_argument("--id", nargs="+", action="extend")
    p.add_argument("--limit", type=int)
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(handler=cmd_replay)

    p = dsub.add_parser("purge", help="delete dead letters (needs --yes)")
    p.add_argument("--config")
    p.add_argument("--trigger")
    p.add_argument("--id", nargs="+", action="extend")
    p.add_argument("--yes", action="store_true")
    p.set_defaults(handler=cmd_purge)


def trigger_key(value: str | None) -> str | None:
    """`--trigger name` means `default/name`."""
    if value is None:
        return None
    if "/" not in value:
        return f"default/{value}"
    return value


def cmd_list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise ConfigError("--limit must be at least 1.")

    async def work(session: Session) -> tuple[list[DeadLetterView], int]:
        letters = DeadLetters(session.connection, session.trigger_keys)
        trigger = trigger_key(args.trigger)
        return await letters.list_letters(trigger, args.limit), await letters.count(trigger)

    rows, total = on_broker(args.config, work)
    if total > len(rows):
        # On stderr, so that --json output stays one object a line.
        print(
            f"showing {len(rows)} of {total} dead letters; use --limit {total} to list them all.",
            file=sys.stderr,
        )
    return print_rows(
        [r.as_dict() for r in rows],
        ("ID", "TRIGGER", "TYPE", "SOURCE", "CODE", "ATTEMPTS", "TIME"),
        [(r.id, r.trigger, r.type, r.source, r.error_code, str(r.attempts), r.time) for r in rows],
        args.json,
        "no dead letters",
    )


def cmd_show(args: argparse.Namespace) -> int:
    async def work(session: Session) -> dict[str, Any] | None:
        letters = DeadLetters(session.connection, session.trigger_keys)
        return await letters.show(args.id, trigger_key(args.trigger))

    record = on_broker(args.config, work)
    if record is None:
        print(f"bridge: no dead letter has the id {args.id!r}.", file=sys.stderr)
        return EXIT_FAILURE
    print(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode("utf-8"))
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be at least 1.")
    from rich.progress import Progress

    show_bar = sys.stderr.isatty()

    async def work(session: Session) -> ReplayResult:
        letters = DeadLetters(session.connection, session.trigger_keys)
        trigger = trigger_key(args.trigger)
        selection: dict[str, Any] = {
            "event_type": args.type,
            "ids": args.id,
            "limit": args.limit,
            "dry_run": args.dry_run,
        }
        if not show_bar:
            return await letters.replay(trigger, **selection)
        total = await letters.count(trigger)
        with Progress(transient=True) as bar:
            task = bar.add_task("replaying" if not args.dry_run else "scanning", total=total)
            return await letters.replay(
                trigger, **selection, progress=lambda n: bar.advance(task, n)
            )

    result = on_broker(args.config, work)
    verb = "would replay" if args.dry_run else "replayed"
    for view in result.replayed:
        print(f"{verb} {view.id} ({view.type}) -> {view.trigger}")
    print(
        f"summary: {verb} {len(result.replayed)}, skipped {result.skipped}, failed {result.failed}"
    )
    return EXIT_FAILURE if result.failed else EXIT_OK


def cmd_purge(args: argparse.Namespace) -> int:
    if not args.yes:
        raise ConfigError("refusing to delete dead letters without --yes.")

    async def work(session: Session) -> int:
        letters = DeadLetters(session.connection, session.trigger_keys)
        return await letters.purge(trigger_key(args.trigger), args.id)

    removed = on_broker(args.config, work)
    print(f"purged {removed} dead letter(s)")
    return EXIT_OK
