"""bridge's AMQP client against the real local RabbitMQ (a vhost of each test's own).

Confirms, mandatory returns matched to their publishes, consume / ack / nack / requeue /
reject, a 1 MB body split at frame_max both ways, prefetch, a passive declare of a missing
queue, `connection.blocked` during a memory alarm, and a connection RabbitMQ closes.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from bridge.amqp import wire

RABBITMQCTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
pytestmark = pytest.mark.timeout(120)


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        [RABBITMQCTL, *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


def vhost_of(url: str) -> str:
    return unquote(urlsplit(url).path[1:])


async def connect(url: str, **kwargs: Any) -> wire.Connection:
    try:
        return await wire.connect(url, **kwargs)
    except wire.AMQPError as exc:  # pragma: no cover - the environment is broken
        pytest.fail(f"RabbitMQ is not reachable at {url}: {exc}")


async def collect(channel: wire.Channel, queue: str, count: int, **kwargs: Any) -> list[Any]:
    got: list[wire.Message] = []
    done = asyncio.Event()

    def on_message(message: wire.Message) -> None:
        got.append(message)
        if len(got) >= count:
            done.set()

    tag = await channel.basic_consume(queue, on_message, **kwargs)
    await asyncio.wait_for(done.wait(), 20)
    await channel.basic_cancel(tag)
    return got


async def test_confirmed_publishes_land_in_a_quorum_queue(amqp_url):
    connection = await connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.queue_declare("q", durable=True, arguments={"x-queue-type": "quorum"})
    properties = wire.Properties(delivery_mode=2, headers={"ce-id": "1"})
    await asyncio.gather(
        *(
            channel.publish_confirmed(b"%d" % i, routing_key="q", properties=properties, timeout=10)
            for i in range(300)
        )
    )
    assert channel.unconfirmed == 0
    ok = await channel.queue_declare("q", passive=True)
    assert (ok.queue, ok.message_count) == ("q", 300)
    await connection.close()


async def test_properties_and_headers_survive_rabbitmq_exactly(amqp_url):
    import datetime

    connection = await connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.queue_declare("q")
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "id-\u00e9\u4e2d",
        "bridge-attempts": 3,
        "big": -(2**40),
        "flag": True,
        "raw": bytearray(b"\x00\xff"),
        "nested": {"a": [1, "two", {"three": False}]},
        "nothing": None,
    }
    sent = wire.Properties(
        content_type="application/cloudevents+json",
        delivery_mode=2,
        message_id="m-1",
        timestamp=datetime.datetime(2023, 2, 7, 9, 52, 31, tzinfo=datetime.UTC),
        headers=headers,
    )
    await channel.publish_confirmed(b"body", routing_key="q", properties=sent)
    message = await channel.basic_get("q", no_ack=True)
    assert message is not None
    assert message.properties == sent
    assert message.body == b"body"
    assert await channel.basic_get("q") is None
    await connection.close()


async def test_a_mandatory_publish_no_queue_takes_fails_and_only_that_one(amqp_url):
    connection = await connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.exchange_declare("hx", "headers", durable=True)
    await channel.queue_declare("kept", durable=True, arguments={"x-queue-type": "quorum"})
    await channel.queue_bind("kept", "hx", arguments={"x-match": "all", "route": "kept"})
    # Same exchange, same routing key, same body: only the headers decide, so the return is
    # matched by its place in the sequence of publishes.
    routes = ["kept", "gone", "kept", "gone", "gone", "kept"] * 20
    waiters = [
        channel.publish_confirmed(
            b"same",
            exchange="hx",
            properties=wire.Properties(headers={"route": route}),
            mandatory=True,
            timeout=10,
        )
        for route in routes
    ]
    outcomes = await asyncio.gather(*waiters, return_exceptions=True)
    for route, outcome in zip(routes, outcomes, strict=True):
        if route == "kept":
            assert outcome is None
        else:
            assert isinstance(outcome, wire.PublishReturned), outcome
            assert outcome.returned.reply_code == 312
            assert outcome.returned.properties.headers == {"route": "gone"}
    assert (await channel.queue_declare("kept", passive=True)).message_count == routes.count("kept")
    await connection.close()


async def test_consume_ack_nack_requeue_and_reject(amqp_url):
    connection = await connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.queue_declare("q", durable=True, arguments={"x-queue-type": "quorum"})
    for i in range(10):
        channel.publish(b"%d" % i, routing_key="q")
    await channel.publish_confirmed(b"10", routing_key="q")
    consumer = await connection.channel()
    await consumer.basic_qos(prefetch_count=20)
    first = await collect(consumer, "q", 11)
    assert [m.body for m in first] == [b"%d" % i for i in range(11)]
    assert not any(m.redelivered for m in first)
    consumer.basic_ack(first[2].delivery_tag, multiple=True)  # 0, 1, 2
    consumer.basic_nack(first[3].delivery_tag, requeue=True)  # 3 comes back
    consumer.basic_reject(first[4].delivery_tag, requeue=False)  # 4 is dropped
    consumer.basic_nack(first[6].delivery_tag, multiple=True, requeue=True)  # 5, 6 come back
    for message in first[7:]:
        consumer.basic_ack(message.delivery_tag)
    again = await collect(consumer, "q", 3)
    assert sorted(m.body for m in again) == [b"3", b"5", b"6"]
    assert all(m.redelivered for m in again)
    for message in again:
        consumer.basic_ack(message.delivery_tag)
    await asyncio.sleep(0.2)
    assert (await channel.queue_declare("q", passive=True)).message_count == 0
    await connection.close()


@pytest.mark.parametrize("frame_max", [4096, 131072])
async def test_a_1mb_body_is_split_at_frame_max_both_ways(amqp_url, frame_max):
    connection = await connect(f"{amqp_url}?frame_max={frame_max}")
    assert connection.frame_max == frame_max
    channel = await connection.channel(publisher_confirms=True)
    await channel.queue_declare("big")
    body = bytes(range(256)) * 4096  # 1 MiB
    await channel.publish_confirmed(body, routing_key="big", timeout=20)
    [message] = await collect(channel, "big", 1, no_ack=True)
    assert message.body == body
    await connection.close()


async def test_prefetch_limits_unacknowledged_deliveries(amqp_url):
    connection = await connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.queue_declare("q")
    await asyncio.gather(*(channel.publish_confirmed(b"m", routing_key="q") for _ in range(10)))
    consumer = await connection.channel()
    await consumer.basic_qos(prefetch_count=3)
    got: list[wire.Message] = []
    await consumer.basic_consume("q", got.append)
    await asyncio.sleep(0.3)
    assert len(got) == 3
    consumer.basic_ack(got[0].delivery_tag)
    await asyncio.sleep(0.3)
    assert len(got) == 4
    consumer.basic_ack(got[3].delivery_tag, multiple=True)
    await asyncio.sleep(0.3)
    assert len(got) == 7
    await connection.close()


async def test_passive_declare_of_a_missing_queue_is_a_clear_error_and_closes_the_channel(
    amqp_url,
):
    connection = await connect(amqp_url)
    channel = await connection.channel()
    with pytest.raises(wire.NotFound, match="no queue 'missing'") as caught:
        await channel.queue_declare("missing", passive=True)
    assert caught.value.code == 404
    assert channel.is_closed
    assert isinstance(channel.closing.result(), wire.NotFound)
    with pytest.raises(wire.NotFound):
        await channel.queue_declare("other")
    # the connection is fine: a new channel works
    channel = await connection.channel()
    assert (await channel.queue_declare("now-here")).queue == "now-here"
    await connection.close()


async def test_redeclaring_with_other_arguments_is_precondition_failed(amqp_url):
    connection = await connect(amqp_url)
    channel = await connection.channel()
    await channel.queue_declare("q", durable=True, arguments={"x-queue-type": "quorum"})
    with pytest.raises(wire.PreconditionFailed):
        await channel.queue_declare("q", durable=True, arguments={"x-queue-type": "classic"})
    await connection.close()


async def test_topology_methods(amqp_url):
    connection = await connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.exchange_declare("fx", "fanout", durable=True)
    await channel.exchange_declare("fx", "fanout", passive=True)
    await channel.queue_declare("a", arguments={"x-max-length": 100})
    await channel.queue_bind("a", "fx")
    await channel.publish_confirmed(b"1", exchange="fx")
    assert (await channel.queue_declare("a", passive=True)).message_count == 1
    assert await channel.queue_purge("a") == 1
    await channel.queue_unbind("a", "fx")
    with pytest.raises(wire.PublishReturned):
        await channel.publish_confirmed(b"2", exchange="fx", mandatory=True)
    assert await channel.queue_delete("a") == 0
    await channel.exchange_delete("fx")
    with pytest.raises(wire.NotFound):
        await channel.exchange_declare("fx", "fanout", passive=True)
    server_named = await (await connection.channel()).queue_declare("", exclusive=True)
    assert server_named.queue.startswith("amq.gen-")
    await connection.close()


async def test_connection_blocked_during_a_memory_alarm(amqp_url):
    seen: list[str | None] = []
    changed = asyncio.Event()

    def on_blocked(reason: str | None) -> None:
        seen.append(reason)
        changed.set()

    connection = await connect(amqp_url, on_blocked=on_blocked)
    channel = await connection.channel(publisher_confirms=True)
    await channel.queue_declare("q")
    watermark = rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip()
    try:
        rabbitmqctl("set_vm_memory_high_watermark", "0.0000001")
        # RabbitMQ tells a publishing connection: publish one message to hear it.
        waiting = channel.publish_confirmed(b"during", routing_key="q", timeout=30)
        await asyncio.wait_for(changed.wait(), 20)
        changed.clear()
        assert connection.blocked is not None
        assert "memory" in connection.blocked
        assert not waiting.done()
    finally:
        if watermark.startswith("{absolute,"):
            rabbitmqctl("set_vm_memory_high_watermark", "absolute", watermark[10:-1])
        else:
            rabbitmqctl("set_vm_memory_high_watermark", watermark or "0.4")
    await asyncio.wait_for(waiting, 30)  # stored once the alarm cleared
    if connection.blocked is not None:
        await asyncio.wait_for(changed.wait(), 30)
    assert connection.blocked is None
    assert seen[-1] is None
    await connection.close()


async def test_a_connection_rabbitmq_closes_fails_clearly_and_a_new_one_works(amqp_url):
    connection = await connect(amqp_url, name="wire-broker-test")
    channel = await connection.channel(publisher_confirms=True)
    await channel.queue_declare("q")
    vhost = vhost_of(amqp_url)
    await asyncio.to_thread(
        rabbitmqctl, "close_all_connections", "--vhost", vhost, "wire test says goodbye"
    )
    reason = await asyncio.wait_for(connection.closing, 10)
    assert isinstance(reason, wire.ConnectionClosed)
    assert reason.code == 320
    assert "wire test says goodbye" in reason.text
    with pytest.raises(wire.ConnectionClosed):
        channel.publish(b"late", routing_key="q")
    again = await connect(amqp_url)
    channel = await again.channel(publisher_confirms=True)
    await channel.publish_confirmed(b"after", routing_key="q")
    assert (await channel.queue_declare("q", passive=True)).message_count == 1
    await again.close()


async def test_heartbeats_keep_an_idle_connection_open(amqp_url):
    connection = await connect(f"{amqp_url}?heartbeat=1")
    assert connection.heartbeat == 1
    await asyncio.sleep(3.5)
    assert connection.is_open
    channel = await connection.channel()
    await channel.queue_declare("still-here")
    await connection.close()


async def test_wrong_credentials_and_a_missing_vhost_are_clear_errors(amqp_url):
    with pytest.raises(wire.AuthenticationError):
        await wire.connect(amqp_url.replace("guest:guest", "guest:wrong"))
    base = amqp_url.rsplit("/", 1)[0]
    with pytest.raises(wire.ConnectionClosed) as caught:
        await wire.connect(f"{base}/no-such-vhost-here")
    assert caught.value.code == 530
