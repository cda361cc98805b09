"""A queue consumed on its own channel, each message handed to a `Handler` (the dispatcher).

`QueueConsumer` is a user of the `AMQPLink`: on every (re)connection it opens a channel with the
queue's prefetch and consumes; each message reaches the handler as an `AMQPMessage`, the `Inbound`
port, in a task of its own; `ack()` and `requeue()` go through the channel's `Acker` (coalesced,
in order). On a dead channel they do nothing: RabbitMQ already took the channel's messages back.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Generic, TypeVar

from bridge.amqp import wire
from bridge.amqp.acker import Acker
from bridge.amqp.connection import AMQP_ERRORS, AMQPLink
from bridge.ports import Handler

H = TypeVar("H", bound=Handler)


class AMQPMessage:
    """One consumed message as the `Inbound` port."""

    __slots__ = ("_acker", "_message", "body", "content_type", "headers")

    def __init__(self, message: wire.Message, acker: Acker) -> None:
        properties = message.properties
        self._message = message
        self._acker = acker
        self.headers: dict[str, Any] = properties.headers or {}
        self.content_type: str | None = properties.content_type
        self.body: bytes = message.body

    @property
    def alive(self) -> bool:
        return not self._message.channel.is_closed

    def ack(self) -> None:
        self._acker.ack(self._message.channel, self._message.delivery_tag)

    def requeue(self) -> None:
        self._acker.nack(self._message.channel, self._message.delivery_tag, True)


class QueueConsumer(Generic[H]):
    def __init__(self, queue: str, prefetch: int, link: AMQPLink, handler: H) -> None:
        self.queue = queue
        self.handler = handler
        self._prefetch = prefetch
        self._link = link
        self._acker = Acker()
        self._channel: wire.Channel | None = None
        self._consumer_tag: str | None = None
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()

    # -- link user --
    async def attach(self, connection: wire.Connection) -> None:
        if self._stopping:
            return
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=self._prefetch)
        self._link.watch_channel(channel, f"consumer {self.queue}", lambda: self._stopping)
        channel.closing.add_done_callback(self._cancel_deliveries)
        self._acker.reset(channel)
        self._channel = channel
        self._consumer_tag = await channel.basic_consume(self.queue, self._on_message)

    async def detach(self) -> None:
        self._acker.reset(None)
        self._channel = None
        self._consumer_tag = None
        self.handler.forget_waiting()  # they return to the queue with the channel

    def _on_message(self, message: wire.Message) -> None:
        # Called by the connection's reader, in delivery order; the handler runs in a task.
        task = message.channel.connection.loop.create_task(
            self.handler.offer(AMQPMessage(message, self._acker))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cancel_deliveries(self, _: object) -> None:
        """The channel closed (stopped, or the link failed): deliveries still running are
        cancelled, as RabbitMQ took their messages back (no new delivery arrives on a closed
        channel, and the next one is attached only after this runs)."""
        for task in list(self._tasks):
            task.cancel()

    async def stop(self, timeout: float) -> None:
        """Stop taking messages, then wait (at most `timeout`) for deliveries in flight."""
        self._stopping = True
        self.handler.stop_taking()
        channel, tag = self._channel, self._consumer_tag
        if channel is not None and tag is not None and not channel.is_closed:
            with contextlib.suppress(*AMQP_ERRORS):
                await asyncio.wait_for(channel.basic_cancel(tag), 5.0)
        await self.handler.drain(timeout)
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*AMQP_ERRORS):
                await asyncio.wait_for(channel.close(), 5.0)
        self._channel = None

    @property
    def attached(self) -> bool:
        return self._channel is not None and self._consumer_tag is not None
