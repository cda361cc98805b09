"""RabbitMQ topology, declared in one place (handlers never declare), and its upkeep.

Per broker: a durable headers exchange whose alternate exchange (fanout) feeds a bounded
`unmatched` queue. Per trigger: a durable queue (quorum unless configured classic; single active
consumer when ordered) bound to its broker's exchange with one x-match=all binding per
combination of exact attribute values, bound to `bridge.retry` on its own name, and its dead-letter
queue. Waiting retries sit in `bridge.delay.<ms>` queues whose expired messages dead-letter into
`bridge.retry`. Queue arguments are built by `queue_arguments` so every declarer agrees.

An archived broker also gets a stream, `bridge.archive.<ns>.<broker>`, bound to both of its
exchanges (match-everything on the headers exchange, and the unmatched fanout): RabbitMQ appends
every event the broker accepts, with no publish from bridge, and each event once, since an event
enters through exactly one of the two. Retries and replays go through `bridge.retry` or the
default exchange, so they are never archived again.

The catalog (`bridge.catalog`) remembers every trigger declared here; `prune_topology` (what
`bridge topology prune` does) deletes the queues of triggers no longer configured, and their
catalog records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import orjson

from bridge import names
from bridge.amqp import wire
from bridge.amqp.connection import TopologyError, delivery_tag
from bridge.triggers import Routes, Trigger

log = logging.getLogger("bridge.amqp")

QueueType = Literal["quorum", "classic"]


class QueueKind(NamedTuple):
    """What every queue bridge declares is: its type, and for quorum queues how many replicas a
    new one gets (`x-quorum-initial-group-size`; 0: RabbitMQ's default)."""

    type: QueueType
    group_size: int = 0


def queue_kind(kind: QueueType | QueueKind) -> QueueKind:
    return kind if isinstance(kind, QueueKind) else QueueKind(kind)


# A delay queue lives this long after its last declaration; any message in it expires sooner.
DELAY_QUEUE_EXPIRES_MS = 3_600_000
DELAY_REDECLARE_S = 900.0


def queue_arguments(
    kind: QueueType | QueueKind,
    *,
    single_active: bool = False,
    max_length: int | None = None,
    overflow: str | None = None,
    message_ttl_ms: int | None = None,
    dead_letter_exchange: str | None = None,
    expires_ms: int | None = None,
) -> dict[str, Any]:
    queue_type, group_size = queue_kind(kind)
    args: dict[str, Any] = {"x-queue-type": queue_type}
    if queue_type == "quorum" and group_size:
        args["x-quorum-initial-group-size"] = group_size
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


def delay_arguments(kind: QueueType | QueueKind, milliseconds: int) -> dict[str, Any]:
    return queue_arguments(
        kind,
        message_ttl_ms=milliseconds,
        dead_letter_exchange=names.RETRY_EXCHANGE,
        expires_ms=milliseconds + DELAY_QUEUE_EXPIRES_MS,
    )


@dataclass(frozen=True, slots=True)
class ArchiveStream:
    """An archive as the Declarer declares it: its broker and the stream's retention."""

    broker: str  # namespace/name
    enabled: bool = True
    max_age_s: int = 0  # 0: no age limit
    max_bytes: int = 0  # 0: no size limit
    segment_bytes: int | None = None  # None: RabbitMQ's default

    @property
    def stream(self) -> str:
        return names.archive_stream(self.broker)


# Archive binding on a broker's headers exchange: no header to match, so every message matches.
ARCHIVE_BINDING: dict[str, Any] = {"x-match": "all"}
_AGE_UNITS = (("D", 86400), ("h", 3600), ("m", 60), ("s", 1))


def stream_max_age(seconds: int) -> str:
    """Whole seconds as RabbitMQ's `x-max-age`: one integer and the largest exact unit of D, h,
    m, s (RabbitMQ accepts nothing else: a malformed value closes the whole connection)."""
    if seconds < 1:
        raise ValueError("a stream's max age is at least one second")
    for unit, size in _AGE_UNITS:
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def archive_arguments(archive: ArchiveStream) -> dict[str, Any]:
    args: dict[str, Any] = {"x-queue-type": "stream"}
    if archive.max_age_s:
        args["x-max-age"] = stream_max_age(archive.max_age_s)
    if archive.max_bytes:
        args["x-max-length-bytes"] = archive.max_bytes
    if archive.segment_bytes is not None:
        args["x-stream-max-segment-size-bytes"] = archive.segment_bytes
    return args


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


GROUP_SIZE = "x-quorum-initial-group-size"
_kept_group_size: set[str] = set()


async def declare_queue(channel: wire.Channel, name: str, arguments: dict[str, Any]) -> None:
    """Declare a durable queue (TopologyError when it exists with other arguments).

    A quorum queue's initial group size only applies when it is created: RabbitMQ refuses a
    declaration whose group size (or its absence) differs from the existing queue's, so a
    quorum queue is declared on a channel of its own, and a refusal about that argument alone
    keeps the queue as it is. RabbitMQ compares the group size after the queue type, single
    active consumer, overflow and dead-lettering, so such a refusal means those matched."""
    if arguments.get("x-queue-type") != "quorum":
        try:
            await channel.queue_declare(name, durable=True, arguments=arguments)
        except wire.PreconditionFailed as exc:
            raise _explain(exc, f"queue {name}") from None
        return
    side = await channel.connection.channel()
    try:
        await declare_quorum_queue(side, name, arguments)
    finally:
        if not side.is_closed:
            await side.close()


async def declare_quorum_queue(channel: wire.Channel, name: str, arguments: dict[str, Any]) -> None:
    """Declare a quorum queue on a channel used for nothing else: a refusal about its initial
    group size alone (which closes the channel) keeps the existing queue as it is."""
    try:
        await channel.queue_declare(name, durable=True, arguments=arguments)
    except wire.PreconditionFailed as exc:
        if GROUP_SIZE not in str(exc):
            raise _explain(exc, f"queue {name}") from None
        if name not in _kept_group_size:
            _kept_group_size.add(name)
            log.info(
                "queue %s exists with another initial group size; its replicas stay as they are "
                "(rabbitmq-queues grow and shrink change them)",
                name,
            )


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


async def read_catalog(connection: wire.Connection) -> dict[str, dict[str, Any]]:
    """Trigger records bridge has declared here, by key (what `topology prune` compares with)."""
    from bridge.amqp.browse import browse

    records: dict[str, dict[str, Any]] = {}
    async with browse(connection, names.CATALOG) as (_, messages):
        async for message in messages:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                record = orjson.loads(message.body)
                records[str(record["key"])] = record
    return records


async def catalog_keys(connection: wire.Connection) -> set[str]:
    return set(await read_catalog(connection))


async def sync_catalog(
    connection: wire.Connection, queue_type: QueueType | QueueKind, routes: Routes
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
                    catalog.basic_ack(delivery_tag(message))  # unreadable: replaced below
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
                catalog.basic_ack(delivery_tag(message))
        for record, bindings in stale:
            await _unbind(connection, record, bindings)
        for record in current.values():
            await channel.publish_confirmed(
                orjson.dumps(record),
                routing_key=names.CATALOG,
                properties=wire.Properties(delivery_mode=2),
            )
    finally:
        if not channel.is_closed:
            await channel.close()


async def _unbind(
    connection: wire.Connection, record: dict[str, Any], bindings: list[dict[str, Any]]
) -> None:
    for arguments in bindings:
        channel = await connection.channel()
        try:
            await channel.queue_unbind(
                str(record["queue"]), str(record["exchange"]), arguments=arguments
            )
        except wire.NotFound:
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
    connection: wire.Connection, configured: Iterable[str], delete: bool
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
                        catalog.basic_ack(delivery_tag(message))
    return found


class Declarer:
    """Declares the whole topology of `routes` each time the link (re)connects."""

    def __init__(
        self,
        routes: Routes,
        queue_type: QueueType | QueueKind,
        unmatched_max_length: int,
        archives: Sequence[ArchiveStream] = (),
    ) -> None:
        self.routes = routes
        self.queue_type = queue_kind(queue_type)
        self.unmatched_max_length = unmatched_max_length
        self.archives = tuple(archives)

    async def attach(self, connection: wire.Connection) -> None:
        await self.apply(connection, self.routes)

    async def apply(
        self,
        connection: wire.Connection,
        routes: Routes,
        archives: Sequence[ArchiveStream] | None = None,
    ) -> None:
        """Declare `routes` (a reload's new ones, or the same on a reconnect), unbind what the
        catalog says is gone, and keep `routes` for the next reconnect. `archives`: a reload's
        archives (None: the same), kept likewise once declared."""
        archives = self.archives if archives is None else tuple(archives)
        channel = await connection.channel()
        try:
            await self.declare(channel, routes)
        finally:
            if not channel.is_closed:
                await channel.close()
        await self.declare_archives(connection, routes, archives)
        await sync_catalog(connection, self.queue_type, routes)
        self.routes = routes
        self.archives = archives

    async def detach(self) -> None:
        return None

    async def declare(self, channel: wire.Channel, routes: Routes) -> None:
        await channel.exchange_declare(names.RETRY_EXCHANGE, exchange_type="headers", durable=True)
        for broker in routes.brokers:
            await self.declare_broker(channel, broker)
        for trigger in routes.triggers:
            await self.declare_trigger(channel, trigger)

    async def declare_broker(self, channel: wire.Channel, broker: str) -> None:
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
        except wire.PreconditionFailed as exc:
            raise _explain(exc, f"exchange {names.broker_exchange(broker)}") from None

    async def declare_trigger(self, channel: wire.Channel, trigger: Trigger) -> None:
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

    async def declare_archives(
        self, connection: wire.Connection, routes: Routes, archives: tuple[ArchiveStream, ...]
    ) -> None:
        """Declare each enabled archive's stream and bind it to its broker's two exchanges; unbind
        the stream of a broker whose archive is disabled or gone (its history stays until its
        retention removes it, or it is deleted)."""
        from bridge.amqp.browse import queue_depths

        enabled = {a.broker: a for a in archives if a.enabled}
        if enabled:
            channel = await connection.channel()
            try:
                for archive in enabled.values():
                    await self.declare_archive(channel, archive)
            finally:
                if not channel.is_closed:
                    await channel.close()
        known = {*routes.brokers, *(a.broker for a in (*self.archives, *archives))}
        others = sorted(known - set(enabled))
        if not others:
            return
        streams = await queue_depths(connection, [names.archive_stream(b) for b in others])
        for broker in others:
            stream = names.archive_stream(broker)
            if streams[stream] is not None:
                record = {"queue": stream, "exchange": names.broker_exchange(broker)}
                await _unbind(connection, record, [ARCHIVE_BINDING])
                await _unbind(connection, {**record, "exchange": names.unmatched(broker)}, [{}])
                log.debug("%s: archive disabled, the stream receives no events", stream)

    async def declare_archive(self, channel: wire.Channel, archive: ArchiveStream) -> None:
        await self.declare_broker(channel, archive.broker)
        stream = archive.stream
        try:
            await channel.queue_declare(stream, durable=True, arguments=archive_arguments(archive))
        except wire.PreconditionFailed as exc:
            raise TopologyError(
                f"RabbitMQ refused to declare the archive stream {stream}: {exc}. A stream's "
                "retention cannot change once it exists: put back the archive's former max_age, "
                "max_bytes and segment_bytes, or delete the stream and its history (rabbitmqctl "
                f"delete_queue {stream}) before starting bridge with the new setting."
            ) from None
        await channel.queue_bind(
            stream, names.broker_exchange(archive.broker), arguments=ARCHIVE_BINDING
        )
        await channel.queue_bind(stream, names.unmatched(archive.broker))


class DelayQueues:
    """Declares `bridge.delay.<ms>` queues on first use, and again before they could expire.

    One declaration at a time: the dispatchers of several triggers often need the same new delay
    queue at once, and RabbitMQ can nack a publish to a quorum queue that concurrent declarations
    are still creating. Quorum delay queues are declared on a channel of their own, kept for the
    connection (see `declare_quorum_queue`): a refused declaration never closes the publisher's.
    """

    def __init__(self, queue_type: QueueType | QueueKind) -> None:
        self.queue_type = queue_kind(queue_type)
        self._declared: dict[int, float] = {}
        self._lock: asyncio.Lock | None = None
        self._channel: wire.Channel | None = None

    def reset(self) -> None:
        """Forget what was declared: each delay queue is declared again on its next use."""
        self._declared.clear()

    def use(self, channel: wire.Channel | None) -> None:
        """A new connection: `channel` is the one to declare quorum delay queues on (opened with
        the connection, so a first retry waits no longer; None: opened when first needed)."""
        self._declared.clear()
        self._channel = channel

    async def _declare(self, channel: wire.Channel, name: str, arguments: dict[str, Any]) -> None:
        if self.queue_type.type != "quorum":
            await declare_queue(channel, name, arguments)
            return
        own = self._channel
        if own is None or own.is_closed or own.connection is not channel.connection:
            own = self._channel = await channel.connection.channel()
        await declare_quorum_queue(own, name, arguments)

    def _due(self, milliseconds: int) -> bool:
        last = self._declared.get(milliseconds)
        return last is None or time.monotonic() - last > DELAY_REDECLARE_S

    async def ensure(self, channel: wire.Channel, milliseconds: int) -> str:
        name = names.delay_queue(milliseconds)
        if not self._due(milliseconds):
            return name
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._due(milliseconds):  # another dispatcher may have declared it meanwhile
                await self._declare(channel, name, delay_arguments(self.queue_type, milliseconds))
                self._declared[milliseconds] = time.monotonic()
        return name
