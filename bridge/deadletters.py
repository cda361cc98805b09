"""Dead letters and topology upkeep: `bridge dlq list|show|replay|purge`, `bridge topology prune`.

Dead letters live in each trigger's `bridge.dlq.<ns>.<name>` queue. Listing and showing browse
the queue (nothing removed or reordered). Replay republishes a dead letter, confirmed, through
`bridge.retry` to the queue of the trigger it failed on, with its attempts reset and bridge's
error extensions removed, and only then acknowledges (removes) it: a crash in between leaves a
duplicate, never a loss. Purge acknowledges what it deletes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiormq
import orjson
from aiormq.abc import AbstractConnection, DeliveredMessage

from bridge import names
from bridge.amqp.browse import QueueMissing, browse, queue_depth
from bridge.amqp.connection import (
    AMQP_ERRORS,
    SETUP_ERRORS,
    broker_error,
    delivery_tag,
    with_defaults,
)
from bridge.amqp.topology import catalog_keys
from bridge.config import load
from bridge.dispatch import ERROR_EXTENSIONS
from bridge.errors import BridgeError, ConfigError
from bridge.events import PREFIX, Event, json_document

BRIDGE_RECORD = (
    names.ATTEMPTS,
    names.ROUTE,
    names.TRIGGER,
    names.FIRST_FAILURE,
    names.LAST_FAILURE,
    names.LAST_ERROR,
    names.LAST_STATUS,
    names.DEAD_LETTERED,
)
PROGRESS_THRESHOLD = 50


@dataclass(slots=True)
class DeadLetterView:
    id: str
    trigger: str
    type: str
    source: str
    error_code: str
    attempts: int
    time: str
    error: str

    @classmethod
    def of(cls, message: DeliveredMessage, queue_trigger: str) -> DeadLetterView:
        h = message.header.properties.headers or {}
        return cls(
            id=str(h.get("ce-id", "")),
            trigger=str(h.get(names.TRIGGER, queue_trigger)),
            type=str(h.get("ce-type", "")),
            source=str(h.get("ce-source", "")),
            error_code=str(h.get("ce-knativeerrorcode", "")),
            attempts=int(str(h.get(names.ATTEMPTS, 0))),
            time=str(h.get(names.DEAD_LETTERED, "")),
            error=str(h.get(names.LAST_ERROR, "")),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "trigger": self.trigger,
            "type": self.type,
            "source": self.source,
            "error_code": self.error_code,
            "attempts": self.attempts,
            "time": self.time,
            "error": self.error,
        }


def full_record(message: DeliveredMessage, queue_trigger: str) -> dict[str, Any]:
    """`dlq show`: the CloudEvent (attributes + data) and its failure record."""
    props = message.header.properties
    headers = props.headers or {}
    doc = json_document(Event(headers, props.content_type, message.body))
    failure = {
        "trigger": headers.get(names.TRIGGER, queue_trigger),
        "subscriber": headers.get("ce-knativeerrordest"),
        "error_code": headers.get("ce-knativeerrorcode"),
        "attempts": headers.get(names.ATTEMPTS),
        "first_failure": headers.get(names.FIRST_FAILURE),
        "last_failure": headers.get(names.LAST_FAILURE),
        "last_error": headers.get(names.LAST_ERROR),
        "dead_lettered": headers.get(names.DEAD_LETTERED),
    }
    if "ce-knativeerrordata" in headers:
        raw = base64.b64decode(str(headers["ce-knativeerrordata"]))
        failure["response_body"] = raw.decode("utf-8", "replace")
    return {"event": doc, "failure": failure}


def replay_headers(headers: dict[str, Any], trigger_queue: str) -> dict[str, Any]:
    """The original event again: error extensions and failure record gone, attempts reset."""
    out = {
        k: v
        for k, v in headers.items()
        if not k.startswith("x-") and k not in ERROR_EXTENSIONS and k not in BRIDGE_RECORD
    }
    out[names.ROUTE] = trigger_queue
    return out


class DeadLetters:
    """The operations, on one connection to RabbitMQ."""

    def __init__(self, connection: AbstractConnection, trigger_keys: list[str]) -> None:
        self.connection = connection
        self.trigger_keys = trigger_keys

    async def _queues(self, trigger: str | None) -> list[tuple[str, str]]:
        if trigger is not None:
            queue = names.dead_letter_queue(trigger)
            if await queue_depth(self.connection, queue) is None:
                raise BridgeError(f"trigger {trigger} has no dead-letter queue ({queue}).")
            return [(trigger, queue)]
        keys = set(self.trigger_keys)
        with contextlib.suppress(QueueMissing):
            keys |= await catalog_keys(self.connection)
        found = []
        for key in sorted(keys):
            queue = names.dead_letter_queue(key)
            if await queue_depth(self.connection, queue) is not None:
                found.append((key, queue))
        return found

    async def list_letters(self, trigger: str | None, limit: int) -> list[DeadLetterView]:
        out: list[DeadLetterView] = []
        for key, queue in await self._queues(trigger):
            if len(out) >= limit:
                break
            async with browse(self.connection, queue, limit - len(out)) as (_, messages):
                async for message in messages:
                    out.append(DeadLetterView.of(message, key))
        return out

    async def count(self, trigger: str | None) -> int:
        """How many dead letters there are in all (of `trigger` when given)."""
        return sum(
            [
                await queue_depth(self.connection, queue) or 0
                for _, queue in await self._queues(trigger)
            ]
        )

    async def show(self, event_id: str, trigger: str | None) -> dict[str, Any] | None:
        for key, queue in await self._queues(trigger):
            async with browse(self.connection, queue) as (_, messages):
                async for message in messages:
                    headers = message.header.properties.headers or {}
                    if headers.get("ce-id") == event_id:
                        return full_record(message, key)
        return None

    async def replay(
        self,
        trigger: str | None,
        types: str | None,
        ids: list[str] | None,
        limit: int | None,
        dry_run: bool,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[list[DeadLetterView], int, int]:
        """Returns (replayed or, with dry_run, would-be-replayed; skipped; failed)."""
        done: list[DeadLetterView] = []
        skipped = failed = 0
        wanted: set[str] | None = set(ids) if ids else None
        publisher = await self.connection.channel(publisher_confirms=True)
        try:
            for key, queue in await self._queues(trigger):
                async with browse(self.connection, queue) as (channel, messages):
                    async for message in messages:
                        if progress is not None:
                            progress(1)
                        headers = message.header.properties.headers or {}
                        view = DeadLetterView.of(message, key)
                        if (
                            (limit is not None and len(done) >= limit)
                            or (types is not None and view.type != types)
                            or (wanted is not None and view.id not in wanted)
                        ):
                            skipped += 1
                            continue
                        if dry_run:
                            done.append(view)
                            continue
                        target = names.trigger_queue(view.trigger)
                        if not await self._republish(publisher, message, headers, target):
                            failed += 1
                            continue
                        await channel.basic_ack(delivery_tag(message))
                        done.append(view)
        finally:
            if not publisher.is_closed:
                with contextlib.suppress(*AMQP_ERRORS):
                    await publisher.close()
        return done, skipped, failed

    async def _republish(
        self,
        publisher: Any,
        message: DeliveredMessage,
        headers: dict[str, Any],
        target: str,
    ) -> bool:
        props = message.header.properties
        try:
            confirm = await publisher.basic_publish(
                message.body,
                exchange=names.RETRY_EXCHANGE,
                properties=aiormq.spec.Basic.Properties(
                    delivery_mode=2,
                    headers=replay_headers(headers, target),
                    content_type=props.content_type,
                    message_id=props.message_id,
                ),
                mandatory=True,  # no trigger queue any more: returned, and the dead letter kept
                timeout=10,
            )
        except aiormq.exceptions.DeliveryError:
            return False
        return isinstance(confirm, aiormq.spec.Basic.Ack)

    async def purge(self, trigger: str | None, ids: list[str] | None) -> int:
        removed = 0
        wanted: set[str] | None = set(ids) if ids else None
        for _, queue in await self._queues(trigger):
            if wanted is None:
                channel = await self.connection.channel()
                try:
                    ok = await channel.queue_purge(queue)
                    removed += int(ok.message_count or 0)
                finally:
                    await channel.close()
                continue
            async with browse(self.connection, queue) as (channel, messages):
                async for message in messages:
                    headers = message.header.properties.headers or {}
                    if headers.get("ce-id") in wanted:
                        await channel.basic_ack(delivery_tag(message))
                        removed += 1
        return removed


async def prune_topology(
    connection: AbstractConnection, configured: Iterable[str], delete: bool
) -> list[tuple[str, str, int]]:
    """Queues of triggers that are no longer configured: (trigger, queue, messages)."""
    keys = await catalog_keys(connection)
    stale = sorted(keys - set(configured))
    found: list[tuple[str, str, int]] = []
    for key in stale:
        for queue in (
            names.trigger_queue(key),
            names.dead_letter_queue(key),
            names.sink_queue(key),
        ):
            depth = await queue_depth(connection, queue)
            if depth is not None:
                found.append((key, queue, depth))
    if delete:
        channel = await connection.channel()
        try:
            for _, queue, _ in found:
                await channel.queue_delete(queue)
        finally:
            await channel.close()
        async with browse(connection, names.CATALOG) as (catalog, messages):
            async for message in messages:
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    if str(orjson.loads(message.body)["key"]) in stale:
                        await catalog.basic_ack(delivery_tag(message))
    return found


# --- command line ------------------------------------------------------------------------------


async def _with_connection(config_path: str | None, work: Callable[..., Any]) -> Any:
    loaded = load(config_path)
    url = with_defaults(loaded.settings.rabbitmq.url.get_secret_value())
    try:
        connection = await asyncio.wait_for(aiormq.connect(url), 10)
    except SETUP_ERRORS as exc:
        raise broker_error(exc) from None
    keys = [f"{t.namespace}/{t.name}" for t, _ in loaded.triggers]
    try:
        return await work(connection, keys)
    except QueueMissing as exc:
        raise BridgeError(f"the queue {exc} does not exist in RabbitMQ.") from None
    except AMQP_ERRORS as exc:
        raise broker_error(exc) from None
    finally:
        with contextlib.suppress(Exception):
            await connection.close()


def _run(coro: Any) -> Any:
    from bridge.cli import _run_async

    return _run_async(coro)


def _check_trigger(value: str | None) -> str | None:
    if value is None:
        return None
    if "/" not in value:
        return f"default/{value}"
    return value


def _cmd_list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise ConfigError("--limit must be at least 1.")

    async def work(conn: AbstractConnection, keys: list[str]) -> tuple[list[DeadLetterView], int]:
        letters = DeadLetters(conn, keys)
        trigger = _check_trigger(args.trigger)
        return await letters.list_letters(trigger, args.limit), await letters.count(trigger)

    rows: list[DeadLetterView]
    rows, total = _run(_with_connection(args.config, work))
    if total > len(rows):
        # On stderr, so that --json output stays one object a line.
        print(
            f"showing {len(rows)} of {total} dead letters; use --limit {total} to list them all.",
            file=sys.stderr,
        )
    if args.json:
        for row in rows:
            sys.stdout.write(orjson.dumps(row.as_dict()).decode("utf-8") + "\n")
        return 0
    if not rows:
        print("no dead letters")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("ID", "TRIGGER", "TYPE", "SOURCE", "CODE", "ATTEMPTS", "TIME"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r.id, r.trigger, r.type, r.source, r.error_code, str(r.attempts), r.time)
    Console(width=200).print(table)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    async def work(conn: AbstractConnection, keys: list[str]) -> dict[str, Any] | None:
        return await DeadLetters(conn, keys).show(args.id, _check_trigger(args.trigger))

    record = _run(_with_connection(args.config, work))
    if record is None:
        print(f"bridge: no dead letter has the id {args.id!r}.", file=sys.stderr)
        return 1
    print(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode("utf-8"))
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be at least 1.")
    from rich.progress import Progress

    show_bar = sys.stderr.isatty()

    async def work(conn: AbstractConnection, keys: list[str]) -> Any:
        dl = DeadLetters(conn, keys)
        trigger = _check_trigger(args.trigger)
        if not show_bar:
            return await dl.replay(trigger, args.type, args.id, args.limit, args.dry_run)
        total = 0
        for _, queue in await dl._queues(trigger):
            total += await queue_depth(conn, queue) or 0
        with Progress(transient=True) as bar:
            task = bar.add_task("replaying" if not args.dry_run else "scanning", total=total)
            return await dl.replay(
                trigger,
                args.type,
                args.id,
                args.limit,
                args.dry_run,
                progress=lambda n: bar.advance(task, n),
            )

    done, skipped, failed = _run(_with_connection(args.config, work))
    verb = "would replay" if args.dry_run else "replayed"
    for view in done:
        print(f"{verb} {view.id} ({view.type}) -> {view.trigger}")
    print(f"summary: {verb} {len(done)}, skipped {skipped}, failed {failed}")
    return 1 if failed else 0


def _cmd_purge(args: argparse.Namespace) -> int:
    if not args.yes:
        raise ConfigError("refusing to delete dead letters without --yes.")

    async def work(conn: AbstractConnection, keys: list[str]) -> int:
        return await DeadLetters(conn, keys).purge(_check_trigger(args.trigger), args.id)

    removed = _run(_with_connection(args.config, work))
    print(f"purged {removed} dead letter(s)")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    async def work(conn: AbstractConnection, keys: list[str]) -> list[tuple[str, str, int]]:
        return await prune_topology(conn, keys, args.yes)

    found = _run(_with_connection(args.config, work))
    if not found:
        print("nothing to prune: every trigger queue belongs to a configured trigger")
        return 0
    for key, queue, depth in found:
        state = "deleted" if args.yes else "stale"
        print(f"{state}: {queue} (trigger {key}, {depth} message(s))")
    if not args.yes:
        print("run again with --yes to delete these queues")
    return 0


def add_dlq_commands(sub: Any) -> None:
    dlq = sub.add_parser("dlq", help="inspect, replay and purge dead letters")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True, parser_class=type(dlq))

    p = dsub.add_parser("list", help="list dead letters without removing them")
    p.add_argument("--config")
    p.add_argument("--trigger", help="namespace/name (namespace default if omitted)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(handler=_cmd_list)

    p = dsub.add_parser("show", help="one dead letter in full")
    p.add_argument("id")
    p.add_argument("--config")
    p.add_argument("--trigger")
    p.set_defaults(handler=_cmd_show)

    p = dsub.add_parser("replay", help="send dead letters back to their trigger")
    p.add_argument("--config")
    p.add_argument("--trigger")
    p.add_argument("--type")
    p.add_argument("--id", nargs="+", action="extend")
    p.add_argument("--limit", type=int)
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(handler=_cmd_replay)

    p = dsub.add_parser("purge", help="delete dead letters (needs --yes)")
    p.add_argument("--config")
    p.add_argument("--trigger")
    p.add_argument("--id", nargs="+", action="extend")
    p.add_argument("--yes", action="store_true")
    p.set_defaults(handler=_cmd_purge)


def add_topology_commands(sub: Any) -> None:
    topo = sub.add_parser("topology", help="RabbitMQ topology upkeep")
    tsub = topo.add_subparsers(dest="topology_command", required=True, parser_class=type(topo))
    p = tsub.add_parser("prune", help="list (and with --yes delete) queues of removed triggers")
    p.add_argument("--config")
    p.add_argument("--yes", action="store_true")
    p.set_defaults(handler=_cmd_prune)


__all__ = ["PREFIX", "DeadLetters", "prune_topology"]
