"""Dead-letter operations (what `bridge dlq list|show|replay|purge` do), with no printing.

Dead letters live in each trigger's `bridge.dlq.<ns>.<name>` queue. Listing and showing browse
the queue (nothing removed or reordered). Replay republishes a dead letter, confirmed, through
`bridge.retry` to the queue of the trigger it failed on, with its attempts reset and bridge's
error extensions removed, and only then acknowledges (removes) it: a crash in between leaves a
duplicate, never a loss. Purge acknowledges what it deletes.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge import names
from bridge.amqp import wire
from bridge.amqp.browse import QueueMissing, browse, queue_depth
from bridge.amqp.connection import AMQP_ERRORS, delivery_tag
from bridge.amqp.topology import catalog_keys
from bridge.errors import BridgeError
from bridge.events import Event, json_document
from bridge.records import replay_headers


@dataclass(slots=True)
class DeadLetterView:
    """A dead letter in brief: one row of `bridge dlq list`."""

    id: str
    trigger: str
    type: str
    source: str
    error_code: str
    attempts: int
    time: str
    error: str

    @classmethod
    def of(cls, message: wire.Message, queue_trigger: str) -> DeadLetterView:
        h = message.properties.headers or {}
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


def full_record(message: wire.Message, queue_trigger: str) -> dict[str, Any]:
    """`dlq show`: the CloudEvent (attributes + data) and its failure record."""
    props = message.properties
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


@dataclass(slots=True)
class ReplayResult:
    """What a replay did: the dead letters replayed (with dry_run, those it would replay)."""

    replayed: list[DeadLetterView]
    skipped: int
    failed: int


class DeadLetters:
    """The operations, on one connection to RabbitMQ.

    `trigger_keys` are the configured triggers (`namespace/name`); with no `trigger` given, an
    operation covers their dead-letter queues and those of every trigger in the catalog.
    """

    def __init__(self, connection: wire.Connection, trigger_keys: list[str]) -> None:
        self.connection = connection
        self.trigger_keys = trigger_keys

    async def queues(self, trigger: str | None = None) -> list[tuple[str, str]]:
        """(trigger, dead-letter queue) of `trigger`, or of every trigger that has one."""
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
        """Up to `limit` dead letters, in queue order, none removed or reordered."""
        out: list[DeadLetterView] = []
        for key, queue in await self.queues(trigger):
            if len(out) >= limit:
                break
            async with browse(self.connection, queue, limit - len(out)) as (_, messages):
                async for message in messages:
                    out.append(DeadLetterView.of(message, key))
        return out

    async def count(self, trigger: str | None = None) -> int:
        """How many dead letters there are in all (of `trigger` when given)."""
        return sum(
            [
                await queue_depth(self.connection, queue) or 0
                for _, queue in await self.queues(trigger)
            ]
        )

    async def show(self, event_id: str, trigger: str | None = None) -> dict[str, Any] | None:
        """The full record (`full_record`) of the dead letter with this id; None if none has."""
        for key, queue in await self.queues(trigger):
            async with browse(self.connection, queue) as (_, messages):
                async for message in messages:
                    headers = message.properties.headers or {}
                    if headers.get("ce-id") == event_id:
                        return full_record(message, key)
        return None

    async def replay(
        self,
        trigger: str | None = None,
        *,
        event_type: str | None = None,
        ids: list[str] | None = None,
        limit: int | None = None,
        dry_run: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> ReplayResult:
        """Send matching dead letters back to their trigger's queue (see the module docstring).

        `progress(n)` is called as dead letters are looked at (`count` gives the total).
        """
        done: list[DeadLetterView] = []
        skipped = failed = 0
        wanted: set[str] | None = set(ids) if ids else None
        publisher = await self.connection.channel(publisher_confirms=True)
        try:
            for key, queue in await self.queues(trigger):
                async with browse(self.connection, queue) as (channel, messages):
                    async for message in messages:
                        if progress is not None:
                            progress(1)
                        headers = message.properties.headers or {}
                        view = DeadLetterView.of(message, key)
                        if (
                            (limit is not None and len(done) >= limit)
                            or (event_type is not None and view.type != event_type)
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
                        channel.basic_ack(delivery_tag(message))
                        done.append(view)
        finally:
            if not publisher.is_closed:
                with contextlib.suppress(*AMQP_ERRORS):
                    await publisher.close()
        return ReplayResult(done, skipped, failed)

    async def _republish(
        self,
        publisher: wire.Channel,
        message: wire.Message,
        headers: dict[str, Any],
        target: str,
    ) -> bool:
        props = message.properties
        try:
            await publisher.publish_confirmed(
                message.body,
                exchange=names.RETRY_EXCHANGE,
                properties=wire.Properties(
                    delivery_mode=2,
                    headers=replay_headers(headers, target),
                    content_type=props.content_type,
                    message_id=props.message_id,
                ),
                mandatory=True,  # no trigger queue any more: returned, and the dead letter kept
                timeout=10,
            )
        except wire.DeliveryError:
            return False
        return True

    async def purge(self, trigger: str | None = None, ids: list[str] | None = None) -> int:
        """Delete the dead letters (with `ids`, only those); returns how many were deleted."""
        removed = 0
        wanted: set[str] | None = set(ids) if ids else None
        for _, queue in await self.queues(trigger):
            if wanted is None:
                channel = await self.connection.channel()
                try:
                    removed += await channel.queue_purge(queue)
                finally:
                    await channel.close()
                continue
            async with browse(self.connection, queue) as (channel, messages):
                async for message in messages:
                    headers = message.properties.headers or {}
                    if headers.get("ce-id") in wanted:
                        channel.basic_ack(delivery_tag(message))
                        removed += 1
        return removed


__all__ = ["DeadLetterView", "DeadLetters", "ReplayResult", "full_record"]
