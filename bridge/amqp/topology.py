"""RabbitMQ topology, declared in one place (handlers never declare), and its upkeep.

Per broker: a durable headers exchange whose alternate exchange (fanout) feeds a bounded
`unmatched` queue. Per trigger: a durable queue (quorum unless configured classic; single active
consumer when ordered) bound to its broker's exchange with one x-match=all binding per
combination of exact attribute values, bound to `bridge.retry` on its own name, and its dead-letter
queue. Waiting retries sit in `bridge.delay.<ms>` queues whose expired messages dead-letter into
`bridge.retry`. Queue arguments are built by `queue_arguments` so every declarer agrees.

The catalog (`bridge.catalog`) remembers every trigger declared here; `prune_topology` (what
`bridge topology prune` does) deletes the queues of triggers no longer configured, and their
catalog records.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any, Literal, NamedTuple

import aiormq
import orjson
from aiormq.abc import AbstractChannel, AbstractConnection

from bridge import names
from bridge.amqp.connection import TopologyError, delivery_tag
from bridge.triggers import Routes, Trigger

log = logging.getLogger("bridge.amqp")

QueueType = Literal["quorum", "classic"]
# A delay queue lives this long after its last declaration; any message in it expires sooner.
DELAY_QUEUE_EXPIRES_MS = 3_600_000
DELAY_REDECLARE_S = 900.0


def queue_arguments(
    queue_type: QueueType,
    *,
    single_active: bool = False,
    max_length: int | None = None,
    overflow: str | None = None,
    message_ttl_ms: int | None = None,
    dead_letter_exchange: str | None = None,
    expires_ms: int | None = None,
) -> dict[str, Any]:
    args: dict[str, Any] = {"x-queue-type": queue_type}
    if single_active:
        args["x-single-active-consumer"] = True
    if max_length is not None:
        args["x-max-length"] = max_length
    if overflow is not None:
        args["x-overflow"] = overflow
    if message_ttl_ms is not None:
        args["x-message-ttl"] = message_ttl_ms
    if dead_letter_exchange is not None:
        args["x-dead-letter-exchange"] = dead_letter_exchange
        if queue_type == "quorum":
            # Quorum queues can dead-letter with confirms: an expiring retry is never lost.
            args["x-dead-letter-strategy"] = "at-least-once"
            args["x-overflow"] = "reject-publish"
    if expires_ms is not None:
        args["x-expires"] = expires_ms
    return args


def delay_arguments(queue_type: QueueType, milliseconds: int) -> dict[str, Any]:
    return queue_arguments(
        queue_type,
        message_ttl_ms=milliseconds,
        dead_letter_exchange=names.RETRY_EXCHANGE,
        expires_ms=milliseconds + DELAY_QUEUE_EXPIRES_MS,
    )


def trigger_bindings(trigger: Trigger) -> list[dict[str, Any]]:
    """Header arguments of the trigger's bindings to its broker exchange."""
    bindings = trigger.filter.bindings or ({},)
    return [{"x-match": "all", **b} for b in bindings]


def _explain(exc: Exception, what: str) -> TopologyError:
    return TopologyError(
        f"RabbitMQ refused to declare {what}: {exc}. It exists with other arguments (was "
        "queue_type or ordered changed?); drain it and delete it (bridge topology prune, or "
        "rabbitmqctl delete_queue) before starting bridge with the new setting."
    )


async def declare_queue(channel: AbstractChannel, name: str, arguments: dict[str, Any]) -> None:
    try:
        await channel.queue_declare(name, durable=True, arguments=arguments)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise _explain(exc, f"queue {name}") from None


def catalog_record(trigger: Trigger) -> dict[str, Any]:
    """What the catalog remembers of a trigger: where its queue is bound, and how."""
    return {
        "key": trigger.key,
        "queue": trigger.queue,
        "exchange": names.broker_exchange(trigger.broker_key),
        "bindings": trigger_bindings(trigger),
    }


def trigger_queues(trigger_key: str) -> tuple[str, str, str]:
    """Every queue a trigger can have: its queue, its dead letters, its dead-letter sink's."""
    return (
        names.trigger_queue(trigger_key),
        names.dead_letter_queue(trigger_key),
        names.sink_queue(trigger_key),
    )


async def read_catalog(connection: AbstractConnection) -> dict[str, dict[str, Any]]:
    """Trigger records bridge has declared here, by key (what `topology prune` compares with)."""
    from bridge.amqp.browse import browse

    records: dict[str, dict[str, Any]] = {}
    async with browse(connection, names.CATALOG) as (_, messages):
        async for message in messages:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                record = orjson.loads(message.body)
                records[str(record["key"])] = record
    return records


async def catalog_keys(connection: AbstractConnection) -> set[str]:
    return set(await read_catalog(connection))


async def sync_catalog(
    connection: AbstractConnection, queue_type: QueueType, routes: Routes
) -> None:
    """Bring the catalog and the bindings in line with `routes`.

    A configured trigger whose filter changed loses the bindings it no longer has; a trigger
    that is no longer configured loses all of its broker bindings (its queue is kept until
    `bridge topology prune --yes`). Then every configured trigger's record is written anew.
    """
    from bridge.amqp.browse import browse

    current = {t.key: catalog_record(t) for t in routes.triggers}
    channel = await connection.channel(publisher_confirms=True)
    try:
        await declare_queue(channel, names.CATALOG, queue_arguments(queue_type))
        stale: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        async with browse(connection, names.CATALOG) as (catalog, messages):
            async for message in messages:
                try:
                    record = orjson.loads(message.body)
                    key = str(record["key"])
                except (ValueError, TypeError, KeyError):
                    await catalog.basic_ack(delivery_tag(message))  # unreadable: replaced below
                    continue
                wanted = current.get(key)
                if wanted is None:
                    stale.append((record, list(record.get("bindings", []))))
                    continue
                if record != wanted:
                    old = [b for b in record.get("bindings", []) if b not in wanted["bindings"]]
                    if record.get("exchange") != wanted["exchange"]:
                        old = list(record.get("bindings", []))
                    stale.append((record, old))
                await catalog.basic_ack(delivery_tag(message))
        for record, bindings in stale:
            await _unbind(connection, record, bindings)
        for record in current.values():
            await channel.basic_publish(
                orjson.dumps(record),
                routing_key=names.CATALOG,
                properties=aiormq.spec.Basic.Properties(delivery_mode=2),
            )
    finally:
        if not channel.is_closed:
            await channel.close()


async def _unbind(
    connection: AbstractConnection, record: dict[str, Any], bindings: list[dict[str, Any]]
) -> None:
    for arguments in bindings:
        channel = await connection.channel()
        try:
            await channel.queue_unbind(
                str(record["queue"]), str(record["exchange"]), arguments=arguments
            )
        except aiormq.exceptions.ChannelNotFoundEntity:
            return  # the queue or exchange is gone already
        finally:
            if not channel.is_closed:
                await channel.close()


class StaleQueue(NamedTuple):
    """A queue of a trigger that is no longer configured."""

    trigger: str
    queue: str
    messages: int


async def prune_topology(
    connection: AbstractConnection, configured: Iterable[str], delete: bool
) -> list[StaleQueue]:
    """Queues of catalogued triggers that are not in `configured` (`namespace/name` keys).

    With `delete`, the queues are deleted (their messages with them) and the triggers' catalog
    records removed. Raises `QueueMissing` when there is no catalog.
    """
    from bridge.amqp.browse import browse, queue_depth

    keys = await catalog_keys(connection)
    stale = sorted(keys - set(configured))
    found: list[StaleQueue] = []
    for key in stale:
        for queue in trigger_queues(key):
            depth = await queue_depth(connection, queue)
            if depth is not None:
                found.append(StaleQueue(key, queue, depth))
    if delete:
        channel = await connection.channel()
        try:
            for item in found:
                await channel.queue_delete(item.queue)
        finally:
            await channel.close()
        async with browse(connection, names.CATALOG) as (catalog, messages):
            async for message in messages:
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    if str(orjson.loads(message.body)["key"]) in stale:
                        await catalog.basic_ack(delivery_tag(message))
    return found


class Declarer:
    """Declares the whole topology of `routes` each time the link (re)connects."""

    def __init__(self, routes: Routes, queue_type: QueueType, unmatched_max_length: int) -> None:
        self.routes = routes
        self.queue_type = queue_type
        self.unmatched_max_length = unmatched_max_length

    async def attach(self, connection: AbstractConnection) -> None:
        await self.apply(connection, self.routes)

    async def apply(self, connection: AbstractConnection, routes: Routes) -> None:
        """Declare `routes` (a reload's new ones, or the same on a reconnect), unbind what the
        catalog says is gone, and keep `routes` for the next reconnect."""
        channel = await connection.channel()
        try:
            await self.declare(channel, routes)
        finally:
            if not channel.is_closed:
                await channel.close()
        await sync_catalog(connection, self.queue_type, routes)
        self.routes = routes

    async def detach(self) -> None:
        return None

    async def declare(self, channel: AbstractChannel, routes: Routes) -> None:
        await channel.exchange_declare(names.RETRY_EXCHANGE, exchange_type="headers", durable=True)
        for broker in routes.brokers:
            await self.declare_broker(channel, broker)
        for trigger in routes.triggers:
            await self.declare_trigger(channel, trigger)

    async def declare_broker(self, channel: AbstractChannel, broker: str) -> None:
        unmatched = names.unmatched(broker)
        await channel.exchange_declare(unmatched, exchange_type="fanout", durable=True)
        await declare_queue(
            channel,
            unmatched,
            queue_arguments(
                self.queue_type, max_length=self.unmatched_max_length, overflow="drop-head"
            ),
        )
        await channel.queue_bind(unmatched, unmatched)
        try:
            await channel.exchange_declare(
                names.broker_exchange(broker),
                exchange_type="headers",
                durable=True,
                arguments={"alternate-exchange": unmatched},
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise _explain(exc, f"exchange {names.broker_exchange(broker)}") from None

    async def declare_trigger(self, channel: AbstractChannel, trigger: Trigger) -> None:
        queue = trigger.queue
        await declare_queue(
            channel, queue, queue_arguments(self.queue_type, single_active=trigger.ordered)
        )
        exchange = names.broker_exchange(trigger.broker_key)
        for arguments in trigger_bindings(trigger):
            await channel.queue_bind(queue, exchange, arguments=arguments)
        await channel.queue_bind(
            queue, names.RETRY_EXCHANGE, arguments={"x-match": "all", names.ROUTE: queue}
        )
        await declare_queue(channel, trigger.dead_letter_queue, queue_arguments(self.queue_type))
        if trigger.delivery.dead_letter_sink:
            sink = trigger.sink_queue
            await declare_queue(channel, sink, queue_arguments(self.queue_type))
            await channel.queue_bind(
                sink, names.RETRY_EXCHANGE, arguments={"x-match": "all", names.ROUTE: sink}
            )


class DelayQueues:
    """Declares `bridge.delay.<ms>` queues on first use, and again before they could expire."""

    def __init__(self, queue_type: QueueType) -> None:
        self.queue_type = queue_type
        self._declared: dict[int, float] = {}

    def reset(self) -> None:
        self._declared.clear()

    async def ensure(self, channel: AbstractChannel, milliseconds: int) -> str:
        name = names.delay_queue(milliseconds)
        now = time.monotonic()
        last = self._declared.get(milliseconds)
        if last is None or now - last > DELAY_REDECLARE_S:
            await declare_queue(channel, name, delay_arguments(self.queue_type, milliseconds))
            self._declared[milliseconds] = now
        return name
