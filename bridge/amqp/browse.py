"""Read a queue without consuming it: take up to N messages unacknowledged, then give them back.

RabbitMQ returns unacknowledged messages to their original positions when their channel closes,
so a browse neither removes nor reorders. The caller may acknowledge some of the messages it saw
(to remove exactly those) before the channel closes. Only messages present when the browse
starts are read, so what is published meanwhile (a replayed event failing again) is not.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiormq
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage

from bridge.amqp.connection import AMQP_ERRORS


class QueueMissing(Exception):
    """The queue does not exist."""


async def queue_depth(connection: AbstractConnection, queue: str) -> int | None:
    """Messages ready in `queue`, or None when it does not exist."""
    channel = await connection.channel()
    try:
        ok = await channel.queue_declare(queue, passive=True)
        return int(ok.message_count or 0)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return None
    finally:
        if not channel.is_closed:
            with contextlib.suppress(*AMQP_ERRORS):
                await channel.close()


@contextlib.asynccontextmanager
async def browse(
    connection: AbstractConnection, queue: str, limit: int | None = None, timeout: float = 10.0
) -> AsyncIterator[tuple[AbstractChannel, AsyncIterator[DeliveredMessage]]]:
    """Yield (channel, messages); leaving the block returns every message not acknowledged."""
    depth = await queue_depth(connection, queue)
    if depth is None:
        raise QueueMissing(queue)
    wanted = depth if limit is None else min(depth, limit)
    channel = await connection.channel()
    inbox: asyncio.Queue[DeliveredMessage] = asyncio.Queue()

    async def messages() -> AsyncIterator[DeliveredMessage]:
        if wanted == 0:
            return
        # prefetch = wanted: RabbitMQ pushes no more than the browse reads (0 is unlimited).
        await channel.basic_qos(prefetch_count=wanted if wanted <= 65535 else 0)
        await channel.basic_consume(queue, inbox.put)
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
            with contextlib.suppress(*AMQP_ERRORS):
                await channel.close()
