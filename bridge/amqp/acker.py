"""Acknowledgements coalesced per event-loop turn, with `multiple=True` where it is exact.

RabbitMQ numbers a channel's deliveries 1, 2, 3, ... A consumer settles them out of order
(deliveries finish when they finish). Acks requested during one loop turn are sent together at
its end: the run of settled tags that starts at the lowest unsettled one is acknowledged with a
single `basic.ack(multiple=True)`; settled tags beyond a gap are acknowledged one by one, at
once, so a slow delivery never keeps others unacknowledged. `multiple` therefore only ever
covers tags this consumer has settled itself: nothing is acknowledged early, and no tag twice.

The frames go out in the order decided here: bridge's channel writes an ack or nack at once
(buffered until the end of the loop turn), so a multiple ack can never overtake an earlier single
ack or nack. A channel whose methods return awaitables instead (a test double) is served in the
same order by one sender task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable
from typing import Any

from bridge.amqp import wire
from bridge.amqp.connection import AMQP_ERRORS


class Acker:
    def __init__(self) -> None:
        self._channel: wire.Channel | None = None
        self._next = 1  # the lowest tag not settled yet
        self._settled: set[int] = set()  # settled tags above the gap
        self._sent: set[int] = set()  # of those, the ones already acked or nacked singly
        self._pending: list[int] = []
        self._scheduled = False
        self._outbox: deque[tuple[wire.Channel, str, int]] = deque()
        self._sender: asyncio.Task[None] | None = None

    def reset(self, channel: wire.Channel | None) -> None:
        """A new channel (or none): tags of the old one are meaningless now."""
        self._channel = channel
        self._outbox.clear()
        self._next = 1
        self._settled.clear()
        self._sent.clear()
        self._pending.clear()

    def nack(self, channel: wire.Channel, tag: int, requeue: bool = True) -> None:
        """Return a message to its queue, in order with the acks (a later multiple ack covers
        only what this consumer settled; the nack is on the wire before it)."""
        if channel is not self._channel or channel.is_closed:
            return
        self._settled.add(tag)
        self._sent.add(tag)
        self._advance()
        self._post((channel, "nack" if requeue else "drop", tag))

    def ack(self, channel: wire.Channel, tag: int) -> None:
        if channel is not self._channel or channel.is_closed:
            return  # the old channel is gone, and RabbitMQ requeued its messages
        self._pending.append(tag)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _advance(self) -> int:
        """Move past the settled run at the bottom; the highest tag in it not yet sent, or 0."""
        cover = 0
        settled, sent = self._settled, self._sent
        while self._next in settled:
            tag = self._next
            settled.discard(tag)
            if tag in sent:
                sent.discard(tag)
            else:
                cover = tag
            self._next = tag + 1
        return cover

    def _flush(self) -> None:
        self._scheduled = False
        channel = self._channel
        tags, self._pending = self._pending, []
        if not tags or channel is None or channel.is_closed:
            return
        self._settled.update(tags)
        cover = self._advance()
        singles = [tag for tag in tags if tag in self._settled]
        self._sent.update(singles)
        if cover:
            self._post((channel, "cover", cover))
        for tag in singles:
            self._post((channel, "ack", tag))

    def _post(self, command: tuple[wire.Channel, str, int]) -> None:
        # In order: a multiple ack must never overtake an earlier single ack or nack (it would
        # settle that tag first, and the later frame would name an unknown tag).
        self._outbox.append(command)
        if self._sender is None or self._sender.done():
            self._send_all()

    def _send_all(self) -> None:
        outbox = self._outbox
        while outbox:
            pending = _send(*outbox.popleft())
            if pending is not None:  # an awaitable: the rest waits for it, in order
                self._sender = asyncio.get_running_loop().create_task(self._send_after(pending))
                return

    async def _send_after(self, pending: Awaitable[None]) -> None:
        outbox = self._outbox
        while True:
            with contextlib.suppress(*AMQP_ERRORS):
                await pending
            while True:
                if not outbox:
                    return
                next_one = _send(*outbox.popleft())
                if next_one is not None:
                    pending = next_one
                    break


def _send(channel: wire.Channel, op: str, tag: int) -> Any:
    """Write one acknowledgement; what the channel returns (None for bridge's channel)."""
    if channel.is_closed:
        return None
    with contextlib.suppress(*AMQP_ERRORS):
        if op == "cover":
            return channel.basic_ack(tag, multiple=True)
        if op == "ack":
            return channel.basic_ack(tag)
        return channel.basic_nack(tag, requeue=op == "nack")
    return None
