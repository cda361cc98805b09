"""Read a queue without consuming it: take its messages unacknowledged, then give them back.

RabbitMQ returns unacknowledged messages when their channel closes. A classic queue puts them
back in their original positions; a quorum queue appends them to its queue of returned messages,
which it serves first. So on a quorum queue a browse that gave back only the first N messages
would move them behind the rest the second time round (a `dlq list --limit N` would rotate the
queue). A browse therefore always takes every message present when it starts, even beyond `limit`
(those are held, not shown), and gives them all back together: nothing is removed or reordered,
whatever the queue type. The caller may acknowledge some of the messages it saw (to remove
exactly those) before the channel closes. Only messages present when the browse starts are read,
so what is published meanwhile (a replayed event failing again) is not.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable

from bridge.amqp import wire
from bridge.amqp.connection import AMQP_ERRORS


class QueueMissing(Exception):
    """The queue does not exist."""


async def queue_depths(connection: wire.Connection, queues: Iterable[str]) -> dict[str, int | None]:
    """Messages ready in each queue (None for a queue that does not exist), asked by passive
    declares on one channel (a missing queue closes it; the next queue gets a new one)."""
    depths: dict[str, int | None] = {}
    channel: wire.Channel | None = None
    try:
        for queue in queues:
            if channel is None or channel.is_closed:
                channel = await connection.channel()
            try:
                ok = await channel.queue_declare(queue, passive=True)
            except wire.NotFound:
                depths[queue] = None
            else:
                depths[queue] = ok.message_count
    finally:
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*AMQP_ERRORS):
                await channel.close()
    return depths


async def queue_stats(
    connection: wire.Connection, queues: Iterable[str]
) -> dict[str, tuple[int, int] | None]:
    """(messages ready, consumers) of each queue, None for a queue that does not exist; asked
    by passive declares as `queue_depths` does."""
    stats: dict[str, tuple[int, int] | None] = {}
    channel: wire.Channel | None = None
    try:
        for queue in dict.fromkeys(queues):
            if channel is None or channel.is_closed:
                channel = await connection.channel()
            try:
                ok = await channel.queue_declare(queue, passive=True)
            except wire.NotFound:
                stats[queue] = None
            else:
                stats[queue] = (ok.message_count, ok.consumer_count)
    finally:
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*AMQP_ERRORS):
                await channel.close()
    return stats


async def queue_depth(connection: wire.Connection, queue: str) -> int | None:
    """Messages ready in `queue`, or None when it does not exist."""
    return (await queue_depths(connection, (queue,)))[queue]


@contextlib.asynccontextmanager
async def browse(
    connection: wire.Connection, queue: str, limit: int | None = None, timeout: float = 10.0
) -> AsyncIterator[tuple[wire.Channel, AsyncIterator[wire.Message]]]:
    """Yield (channel, messages); leaving the block returns every message not acknowledged."""
    depth = await queue_depth(connection, queue)
    if depth is None:
        raise QueueMissing(queue)
    wanted = depth if limit is None else min(depth, limit)
    channel = await connection.channel()
    inbox: asyncio.Queue[wire.Message] = asyncio.Queue()
    delivered = 0
    all_taken = asyncio.Event()

    def take(message: wire.Message) -> None:
        nonlocal delivered
        delivered += 1
        if delivered >= depth:
            all_taken.set()
        inbox.put_nowait(message)

    async def messages() -> AsyncIterator[wire.Message]:
        if wanted == 0:
            return
        # prefetch = depth: RabbitMQ pushes what was there, no more (0 is unlimited).
        await channel.basic_qos(prefetch_count=depth if depth <= 65535 else 0)
        await channel.basic_consume(queue, take)
        for _ in range(wanted):
            try:
                message = await asyncio.wait_for(inbox.get(), timeout)
            except TimeoutError:
                return  # someone else consumed the rest
            yield message

    try:
        yield channel, messages()
    finally:
        if not channel.is_closed:
            if delivered:
                # Hold every message present before giving any back (see the docstring).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(all_taken.wait(), timeout)
            with contextlib.suppress(*AMQP_ERRORS):
                await channel.close()
