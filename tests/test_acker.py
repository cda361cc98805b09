"""Coalesced acknowledgements: `multiple` covers only tags this consumer settled itself."""

from __future__ import annotations

import asyncio

from bridge.amqp.acker import Acker


class RecordingChannel:
    """Stands in for an AMQP channel: records the acks the Acker sends (no I/O here)."""

    def __init__(self) -> None:
        self.is_closed = False
        self.acks: list[tuple[int, bool]] = []
        self.frames: list[tuple[object, ...]] = []

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        self.acks.append((tag, multiple))
        self.frames.append(("ack", tag, multiple))

    async def basic_nack(self, tag: int, requeue: bool = True, wait: bool = True) -> None:
        self.frames.append(("nack", tag))


def check_like_rabbitmq(channel: RecordingChannel, delivered: int) -> set[int]:
    """Replay the acks as RabbitMQ would: an ack of a tag that is not outstanding is the
    channel error "unknown delivery tag"; returns the tags acknowledged."""
    outstanding = set(range(1, delivered + 1))
    acked: set[int] = set()
    for tag, multiple in channel.acks:
        assert tag in outstanding, f"unknown delivery tag {tag}"
        covered = {t for t in outstanding if t <= tag} if multiple else {tag}
        outstanding -= covered
        acked |= covered
    return acked


async def settle(acker: Acker, channel: RecordingChannel, *tags: int) -> None:
    for tag in tags:
        acker.ack(channel, tag)  # type: ignore[arg-type]
    for _ in range(5):  # the flush runs at the end of this loop turn, the sender just after
        await asyncio.sleep(0)


async def test_a_contiguous_run_becomes_one_multiple_ack():
    channel = RecordingChannel()
    acker = Acker()
    acker.reset(channel)  # type: ignore[arg-type]
    await settle(acker, channel, 3, 1, 2)
    assert channel.acks == [(3, True)]
    assert check_like_rabbitmq(channel, 10) == {1, 2, 3}


async def test_multiple_never_covers_a_tag_not_settled_yet():
    channel = RecordingChannel()
    acker = Acker()
    acker.reset(channel)  # type: ignore[arg-type]
    await settle(acker, channel, 1, 2, 5, 9)  # 3 and 4 are still being delivered
    assert check_like_rabbitmq(channel, 10) == {1, 2, 5, 9}
    await settle(acker, channel, 4)
    assert check_like_rabbitmq(channel, 10) == {1, 2, 4, 5, 9}
    await settle(acker, channel, 3)  # closes the gap: 3 is acked; 4, 5 were already
    assert check_like_rabbitmq(channel, 10) == {1, 2, 3, 4, 5, 9}
    await settle(acker, channel, 6, 7, 8, 10)
    assert check_like_rabbitmq(channel, 10) == set(range(1, 11))


async def test_nacked_tags_close_gaps_without_being_acked():
    channel = RecordingChannel()
    acker = Acker()
    acker.reset(channel)  # type: ignore[arg-type]
    acker.nack(channel, 1)  # type: ignore[arg-type]
    await settle(acker, channel, 2, 3)
    assert channel.frames == [("nack", 1), ("ack", 3, True)]  # the nack goes first


async def test_acks_for_an_old_channel_are_dropped():
    old, new = RecordingChannel(), RecordingChannel()
    acker = Acker()
    acker.reset(old)  # type: ignore[arg-type]
    acker.reset(new)  # type: ignore[arg-type]
    await settle(acker, old, 1)
    assert old.acks == []
    assert new.acks == []


async def test_random_completion_orders_never_make_a_channel_error():
    import random

    for seed in range(50):
        rng = random.Random(seed)
        channel = RecordingChannel()
        acker = Acker()
        acker.reset(channel)  # type: ignore[arg-type]
        order = list(range(1, 101))
        rng.shuffle(order)
        while order:
            size = rng.randint(1, 7)
            batch, order = order[:size], order[size:]
            await settle(acker, channel, *batch)
        assert check_like_rabbitmq(channel, 100) == set(range(1, 101))
