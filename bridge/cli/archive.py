"""`bridge archive list|replay`: arguments in, tables, JSON, progress and summaries out.

The operations themselves are `bridge.archive.Archives`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from bridge.archive import (
    ArchiveInfo,
    Archives,
    ReplayResult,
    archive_streams,
    check_replay_id,
    parse_rate,
    parse_time,
)
from bridge.cli.common import EXIT_FAILURE, EXIT_OK, Parser, on_broker, print_rows
from bridge.cli.dlq import trigger_key
from bridge.config import LoadedConfig, load
from bridge.errors import ConfigError
from bridge.triggers import build_routes

if TYPE_CHECKING:
    from bridge.amqp.session import Session


def register(sub: Any) -> None:
    archive = sub.add_parser("archive", help="the archive of accepted events, and its replay")
    asub = archive.add_subparsers(dest="archive_command", required=True, parser_class=Parser)

    p = asub.add_parser("list", help="archives: messages, bytes, first and last event, retention")
    p.add_argument("--config")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(handler=cmd_list)

    p = asub.add_parser("replay", help="send a time window of archived events again")
    p.add_argument("--config")
    p.add_argument("--broker", help="namespace/name (default: the trigger's, or the default one)")
    p.add_argument("--since", help="RFC 3339 time, or a duration before now such as PT2H")
    p.add_argument("--until", help="excluded; RFC 3339 time or duration before now (default now)")
    p.add_argument("--trigger", help="only this trigger (namespace default if omitted)")
    p.add_argument("--type", help="only events of this type")
    p.add_argument("--source", help="only events of this source")
    p.add_argument("--rate", help="at most this many events a second, e.g. 100/s")
    p.add_argument("--dry-run", action="store_true", help="count what would be sent; send nothing")
    p.add_argument("--json", action="store_true", help="the summary as one JSON object")
    p.add_argument("--resume", metavar="REPLAY_ID", help="go on with an interrupted replay")
    p.set_defaults(handler=cmd_replay)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def _state(info: ArchiveInfo) -> str:
    if not info.exists:
        return "not declared yet" if info.enabled else "disabled"
    return "archiving" if info.enabled else "disabled (kept)"


def _load(config: str | None) -> LoadedConfig:
    """The configuration, its archives checked before any connection to RabbitMQ."""
    loaded = load(config)
    archive_streams(loaded, build_routes(loaded))
    return loaded


def cmd_list(args: argparse.Namespace) -> int:
    loaded = _load(args.config)

    async def work(session: Session) -> list[ArchiveInfo]:
        return await Archives(session.connection, loaded).list_archives()

    rows = on_broker(args.config, work)
    return print_rows(
        [r.as_dict() for r in rows],
        ("BROKER", "STATE", "MESSAGES", "BYTES", "FIRST", "LAST", "RETENTION"),
        [
            (
                r.broker,
                _state(r),
                str(r.messages),
                f"~{_human(r.bytes)}",
                r.first or "-",
                r.last or "-",
                r.retention,
            )
            for r in rows
        ],
        args.json,
        "no archives configured ([[archives]] in the configuration)",
    )


def _check_resume(args: argparse.Namespace) -> None:
    selection = {
        "--since": args.since,
        "--until": args.until,
        "--broker": args.broker,
        "--trigger": args.trigger,
        "--type": args.type,
        "--source": args.source,
    }
    given = [option for option, value in selection.items() if value is not None]
    if given:
        raise ConfigError(
            f"{given[0]}: a resumed replay keeps the selection it started with; give only "
            "--resume (and --rate)."
        )
    if args.dry_run:
        raise ConfigError("--dry-run: a resumed replay cannot be a dry run.")
    check_replay_id(args.resume)


def summary(result: ReplayResult) -> str:
    r = result.as_dict()
    target = f"trigger {r['trigger']}" if r["trigger"] else "every matching trigger"
    scope = f"{r['since']} to {r['until']}, broker {r['broker']}, {target}"
    for key, label in (("type", "type"), ("source", "source")):
        if r[key] is not None:
            scope += f", {label} {r[key]}"
    deliveries = "delivery" if result.deliveries == 1 else "deliveries"
    counts = f"{result.replayed} event(s) as {result.deliveries} {deliveries}"
    if result.dry_run:
        return f"dry run: would replay {counts}, skip {result.skipped} ({scope})"
    head = f"replay {result.id}" + (" was already complete" if result.already_complete else "")
    line = f"{head}: replayed {counts}, skipped {result.skipped}, failed {result.failed} ({scope})"
    if result.state != "done":
        line += f"; go on with: bridge archive replay --resume {result.id}"
    return line


def cmd_replay(args: argparse.Namespace) -> int:
    if args.resume is not None:
        _check_resume(args)
    elif args.since is None:
        raise ConfigError("--since is required (or --resume REPLAY_ID).")
    rate = parse_rate(args.rate) if args.rate is not None else None
    now = time.time()
    since = parse_time(args.since, now, "--since") if args.since is not None else 0
    until = parse_time(args.until, now, "--until") if args.until is not None else None
    if args.since is not None and since >= min(until or now * 1000, now * 1000):
        raise ConfigError("--since must be earlier than --until (and than now).")
    loaded = _load(args.config)
    show_bar = sys.stderr.isatty()

    def started(replay_id: str) -> None:
        print(
            f"bridge: replay {replay_id} started; if it is interrupted, go on with: "
            f"bridge archive replay --resume {replay_id}",
            file=sys.stderr,
            flush=True,
        )

    async def work(session: Session) -> ReplayResult:
        archives = Archives(session.connection, loaded)

        async def go(progress: Callable[[int, int], None] | None) -> ReplayResult:
            if args.resume is not None:
                return await archives.resume(
                    args.resume, rate=rate, progress=progress, on_start=started
                )
            request = archives.request(
                since,
                until,
                broker=args.broker,
                trigger=trigger_key(args.trigger),
                event_type=args.type,
                source=args.source,
                now=now,
            )
            return await archives.replay(
                request, rate=rate, dry_run=args.dry_run, progress=progress, on_start=started
            )

        if not show_bar:
            return await go(None)
        from rich.console import Console
        from rich.progress import Progress

        with Progress(transient=True, console=Console(stderr=True)) as bar:
            task = bar.add_task("scanning" if args.dry_run else "replaying", total=None)
            return await go(lambda done, total: bar.update(task, completed=done, total=total))

    result = on_broker(args.config, work)
    line = summary(result)
    if args.json:
        sys.stdout.write(orjson.dumps(result.as_dict()).decode("utf-8") + "\n")
        print(line, file=sys.stderr)
    else:
        print(line)
    return EXIT_FAILURE if result.failed or result.state == "failed" else EXIT_OK
