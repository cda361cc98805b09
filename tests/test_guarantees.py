"""Nothing accepted is lost where an early acknowledgement would lose it: `dlq replay` removes a
dead letter only after its republish is confirmed (RabbitMQ is made to refuse the republish with a
policy: max-length 0, reject-publish, on a filled queue), and the drain lets in-flight deliveries
finish instead of cutting them; an event whose dead letter RabbitMQ cannot take (its queue was deleted)
is kept, and comes back after a growing pause instead of in a tight loop."""

from __future__ import annotations

import asyncio
import subprocess
from urllib.parse import unquote, urlsplit

import orjson

from bridge.amqp import wire
from bridge.deadletters import DeadLetters
from tests.conftest import RABBITMQCTL, Received, eventually, get_all, queue_depth, trigger

STRUCTURED = {"content-type": "application/cloudevents+json"}


def event(event_id: str) -> bytes:
    return orjson.dumps({"specversion": "1.0", "id": event_id, "source": "s", "type": "t"})


def vhost_of(amqp_url: str) -> str:
    return unquote(urlsplit(amqp_url).path.lstrip("/"))


async def fill(amqp, queue: str) -> None:
    """One message in `queue`: a quorum queue refuses publishes once it is *over* max-length."""
    channel = await amqp.channel(publisher_confirms=True)
    try:
        await channel.basic_publish(b"filler", routing_key=queue)
    finally:
        await channel.close()


def refuse_publishes(vhost: str, pattern: str) -> None:
    """From now on RabbitMQ nacks every publish to the (filled) queues matching `pattern`."""
    subprocess.run(
        [
            RABBITMQCTL,
            "set_policy",
            "-p",
            vhost,
            "refuse",
            pattern,
            '{"max-length":0,"overflow":"reject-publish"}',
            "--apply-to",
            "queues",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


def accept_publishes(vhost: str) -> None:
    subprocess.run(
        [RABBITMQCTL, "clear_policy", "-p", vhost, "refuse"],
        check=True,
        capture_output=True,
        timeout=60,
    )


async def test_replay_removes_a_dead_letter_only_after_its_republish_is_confirmed(
    amqp_url, amqp, bridge_factory, subscriber_factory
):
    sub = await subscriber_factory(script=[(400, {}, b"")])
    running = await bridge_factory(
        triggers=[trigger("t", sub.url, delivery={"retry": 0})], role="all"
    )
    for i in range(3):
        status, _, _ = await running.post("/", body=event(f"dl-{i}"), headers=STRUCTURED)
        assert status == 202

    async def three() -> bool:
        return await queue_depth(amqp, "bridge.dlq.default.t") == 3

    await eventually(three, timeout=20, what="three dead letters")
    await running.app.drain()  # nothing consumes the trigger queue from now on
    vhost = vhost_of(amqp_url)
    await fill(amqp, "bridge.trigger.default.t")
    connection = await wire.connect(amqp_url)  # bridge's own client, as `bridge dlq` uses
    refuse_publishes(vhost, r"^bridge\.trigger\.")
    try:
        result = await DeadLetters(connection, ["default/t"]).replay("default/t")
    finally:
        accept_publishes(vhost)
    assert (len(result.replayed), result.failed) == (0, 3)
    assert await queue_depth(amqp, "bridge.dlq.default.t") == 3  # none removed
    result = await DeadLetters(connection, ["default/t"]).replay("default/t")
    await connection.close()
    assert (len(result.replayed), result.failed) == (3, 0)
    assert await queue_depth(amqp, "bridge.dlq.default.t") == 0
    assert await queue_depth(amqp, "bridge.trigger.default.t") == 1 + 3


async def test_the_drain_waits_for_a_delivery_in_flight(
    amqp_url, amqp, bridge_factory, subscriber_factory
):
    started = asyncio.Event()

    async def slow(rec: Received):
        started.set()
        await asyncio.sleep(1.5)
        return 200, {}, b""

    sub = await subscriber_factory(responder=slow)
    running = await bridge_factory(triggers=[trigger("t", sub.url)])
    status, _, _ = await running.post("/", body=event("slow"), headers=STRUCTURED)
    assert status == 202
    await asyncio.wait_for(started.wait(), 10)
    await running.app.drain()  # while the POST is in flight
    # The delivery finished and was acknowledged: nothing is left to deliver again.
    assert sub.ids() == ["slow"]
    # Unacknowledged messages went back to the queue when the drain closed the channel.
    assert await queue_depth(amqp, "bridge.trigger.default.t") == 0


async def test_a_dead_letter_without_its_queue_keeps_the_event_and_returns_after_a_growing_pause(
    amqp, bridge_factory, subscriber_factory
):
    sub = await subscriber_factory(script=[(400, {}, b"")])
    running = await bridge_factory(triggers=[trigger("t", sub.url, delivery={"retry": 0})])
    channel = await amqp.channel()
    await channel.queue_delete("bridge.dlq.default.t")  # an operator deleted it
    status, _, _ = await running.post("/", body=event("orphan"), headers=STRUCTURED)
    assert status == 202
    await asyncio.sleep(3.0)
    # RabbitMQ returns the dead letter (no queue takes it): the event goes back to its queue
    # after pauses of 0.5 s, 1 s, 2 s: a handful of attempts, not thousands, and nothing lost.
    attempts = len(sub.received)
    assert 2 <= attempts <= 5, attempts
    await channel.queue_declare(
        "bridge.dlq.default.t", durable=True, arguments={"x-queue-type": "quorum"}
    )
    await channel.close()

    async def dead_lettered() -> bool:
        return await queue_depth(amqp, "bridge.dlq.default.t") == 1

    await eventually(dead_lettered, timeout=20, what="the dead letter once its queue is back")
    await running.app.drain()
    assert await queue_depth(amqp, "bridge.trigger.default.t") == 0
    (dead,) = await get_all(amqp, "bridge.dlq.default.t")
    assert dead.header.properties.headers["ce-id"] == "orphan"
    assert set(sub.ids()) == {"orphan"}
