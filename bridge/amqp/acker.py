"""Acknowledgements coalesced per event-loop turn, with `multiple=True` where it is exact.

RabbitMQ numbers a channel's deliveries 1, 2, 3, ... A consumer settles them out of order
(deliveries finish when they finish). Acks requested during one loop turn are sent together at
its end: the run of settled tags that starts at the lowest unsettled one is acknowledged with a
single `basic.ack(multiple=True)`; settled tags beyond a gap are acknowledged one by one, at
once, so a slow delivery never keeps others unacknowledged. `multiple` therefore only ever
covers tags this consumer has settled itself: nothing is acknowledged early, and no tag twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from aiormq.abc import AbstractChannel

from bridge.amqp.connection import AMQP_ERRORS


class Acker:
    def __init__(self) -> None:
        self._channel: AbstractChannel | None = None
        self._next = 1  # the lowest tag not settled yet
        self._settled: set[int] = set()  # settled tags above the gap
        self._sent: set[int] = set()  # of those, the ones already acked or nacked singly
        self._pending: list[int] = []
        self._scheduled = False
        self._outbox: deque[tuple[AbstractChannel, str, int]] = deque()
        self._sender: asyncio.Task[None] | None = None

    def reset(self, channel: AbstractChannel | None) -> None:
        """A new channel (or none): tags of the old one are meaningless now."""
        self._channel = channel
        self._outbox.clear()
        self._next = 1
        self._settled.clear()
        self._sent.clear()
        self._pending.clear()

    def nack(self, channel: AbstractChannel, tag: int, requeue: bool = True) -> None:
        """Return a message to its queue, in order with the acks (a later multiple ack covers
        only what this consumer settled; the nack is on the wire before it)."""
        if channel is not self._channel or channel.is_closed:
            return
        self._settled.add(tag)
        self._sent.add(tag)
        self._advance()
        self._post((channel, "nack" if requeue else "drop", tag))

    def ack(self, channel: AbstractChannel, tag: int) -> None:
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

    def _post(self, command: tuple[AbstractChannel, str, int]) -> None:
        # One sender, in order: a multiple ack must never overtake an earlier single ack or nack
        # (it would settle that tag first, and the later frame would name an unknown tag).
        self._outbox.append(command)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_all())

    async def _send_all(self) -> None:
        outbox = self._outbox
        while outbox:
            channel, op, tag = outbox.popleft()
            if channel.is_closed:
                continue
            with contextlib.suppress(*AMQP_ERRORS):
                if op == "cover":
                    await channel.basic_ack(tag, multiple=True, wait=False)
                elif op == "ack":
                    await channel.basic_ack(tag, wait=False)
                else:
                    await channel.basic_nack(tag, requeue=op == "nack", wait=False)
