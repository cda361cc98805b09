"""Confirmed, persistent publishing on one channel: a publish returns once RabbitMQ confirmed it.

Every failure (not connected, nack, no confirm within `timeout`, the link dying while waiting)
raises `BrokerUnavailable`, which the ingress answers with 503 and the dispatcher with a requeue.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from bridge import names
from bridge.amqp import wire
from bridge.amqp.connection import AMQP_ERRORS, AMQPLink, broker_error
from bridge.amqp.topology import DelayQueues, QueueKind, QueueType
from bridge.errors import BrokerUnavailable, PublishRejected

Properties = wire.Properties
PERSISTENT = 2


class Publisher:
    def __init__(self, link: AMQPLink, timeout: float, queue_type: QueueType | QueueKind) -> None:
        self._link = link
        self._timeout = timeout
        self._channel: wire.Channel | None = None
        self.delays = DelayQueues(queue_type)
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def connected(self) -> bool:
        return self._channel is not None

    @property
    def blocked(self) -> str | None:
        """Why RabbitMQ blocks publishing right now (a resource alarm), or None."""
        return self._link.blocked

    async def attach(self, connection: wire.Connection) -> None:
        channel = await connection.channel(publisher_confirms=True)
        self._link.watch_channel(channel, "publisher")
        declaring = await connection.channel() if self.delays.queue_type.type == "quorum" else None
        self.delays.use(declaring)
        self._channel = channel

    async def detach(self) -> None:
        self._channel = None

    async def publish(
        self,
        body: bytes,
        headers: dict[str, Any],
        content_type: str | None,
        *,
        exchange: str = "",
        routing_key: str = "",
        message_id: str | None = None,
        mandatory: bool = False,
    ) -> None:
        """Publish and wait for the confirm. `mandatory`: a message no queue takes (a queue
        deleted behind bridge's back) is returned by RabbitMQ and raises PublishRejected instead
        of being confirmed and dropped."""
        channel = self._channel
        if channel is None:
            raise BrokerUnavailable("RabbitMQ is not connected")
        properties = Properties(
            delivery_mode=PERSISTENT,
            headers=headers,
            content_type=content_type,
            # AMQP short string: an id longer than 255 bytes stays in ce-id only.
            message_id=message_id if message_id and len(message_id.encode()) <= 255 else None,
        )
        self.in_flight += 1
        self._idle.clear()
        try:
            await channel.publish_confirmed(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=mandatory,
                timeout=self._timeout,
            )
        except wire.PublishReturned:
            if routing_key.startswith(names.DELAY_PREFIX):
                self.delays.reset()  # declared again on next use
            raise PublishRejected(
                f"RabbitMQ has no queue {routing_key} to take the message"
            ) from None
        except wire.PublishNacked:
            raise PublishRejected("RabbitMQ refused the message") from None
        except TimeoutError:
            raise BrokerUnavailable("RabbitMQ did not confirm the message in time") from None
        except AMQP_ERRORS as exc:
            raise broker_error(exc) from None
        except asyncio.CancelledError:
            if channel.is_closed:
                raise BrokerUnavailable("the RabbitMQ channel closed") from None
            raise
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def delay_queue(self, milliseconds: int) -> str:
        """The name of the delay queue for `milliseconds`, declared when needed."""
        channel = self._channel
        if channel is None:
            raise BrokerUnavailable("RabbitMQ is not connected")
        try:
            return await self.delays.ensure(channel, milliseconds)
        except AMQP_ERRORS as exc:
            raise broker_error(exc) from None

    async def wait_idle(self, timeout: float) -> None:
        """Wait (at most `timeout`) until no publish is waiting for its confirm."""
        if self.in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)
