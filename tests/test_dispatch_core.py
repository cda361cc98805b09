"""The dispatcher's decisions and their execution, against the in-memory fakes of its ports.

No RabbitMQ and no network: each test runs in milliseconds. The same behaviours are tested end to
end through the real broker in test_dispatch.py; here every status class, Retry-After, ordering,
replies, dead letters, flow control and the failure paths are covered one by one, including the
order of effects (what replaces a message is confirmed before the message is acknowledged).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
from typing import Any

import orjson
import pytest

from bridge import names
from bridge.dispatch import (
    PREFER_REPLY,
    RETURN_PAUSE,
    THROTTLE_GAP,
    UNREACHABLE_AFTER,
    Ack,
    DeadLetter,
    RetryLater,
    decide,
)
from bridge.ports import Answer
from tests.fakes import EPOCH, Request, answer, event_headers, refused, rig, trigger_spec

DISPLAY = "default/display"
QUEUE = names.trigger_queue(DISPLAY)
DLQ = names.dead_letter_queue(DISPLAY)
SINK_QUEUE = names.sink_queue(DISPLAY)
BROKER_EXCHANGE = names.broker_exchange("default/eventbridge-default-broker")
UNMATCHED = names.unmatched("default/eventbridge-default-broker")

REPLY_HEADERS = {
    "ce-specversion": "1.0",
    "ce-id": "reply-1",
    "ce-source": "acs.oss",
    "ce-type": "oss:ObjectCreated:Reply",
    "content-type": "application/json",
}


def sample(r: Any, name: str, **labels: str) -> float:
    value = r.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


# --- the decision, pure --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_an_ack(status: int) -> None:
    delivery = rig().dispatcher.trigger.delivery
    assert decide(answer(status), 1, delivery, "subscriber", EPOCH) == Ack(None)


@pytest.mark.parametrize("status", [-1, 404, 408, 409, 429, 500, 502, 503, 504, 599])
def test_retryable_statuses_retry_with_the_exponential_backoff(status: int) -> None:
    delivery = rig().dispatcher.trigger.delivery  # retry 10, exponential, PT0.2S
    for attempts, wait in ((1, 0.4), (2, 0.8), (3, 1.6), (10, 204.8)):
        got = decide(answer(status), attempts, delivery, "subscriber", EPOCH)
        assert isinstance(got, RetryLater)
        assert got.delay == pytest.approx(wait)
        assert got.attempts == attempts


@pytest.mark.parametrize("status", [-1, 404, 429, 500, 503])
def test_a_retryable_status_after_the_last_retry_is_a_dead_letter(status: int) -> None:
    delivery = rig().dispatcher.trigger.delivery
    assert decide(answer(status), 11, delivery, "subscriber", EPOCH) == DeadLetter(
        11, answer(status)
    )


@pytest.mark.parametrize("status", [100, 301, 302, 304, 400, 401, 403, 405, 410, 413, 422, 451])
def test_other_statuses_are_dead_letters_at_once(status: int) -> None:
    delivery = rig().dispatcher.trigger.delivery
    got = decide(answer(status), 1, delivery, "subscriber", EPOCH)
    assert isinstance(got, DeadLetter)
    assert got.attempts == 1


def test_an_unsendable_request_is_a_dead_letter_even_with_retries_left() -> None:
    delivery = rig().dispatcher.trigger.delivery
    unsendable = answer(-1, error="request not sent: bad header", permanent=True)
    assert isinstance(decide(unsendable, 1, delivery, "subscriber", EPOCH), DeadLetter)


def test_linear_backoff() -> None:
    spec = trigger_spec(delivery={"backoffPolicy": "linear", "backoffDelay": "PT1S", "retry": 3})
    delivery = rig(triggers=(spec,)).dispatcher.trigger.delivery
    waits = [decide(answer(500), n, delivery, "subscriber", EPOCH) for n in (1, 2, 3, 4)]
    assert [w.delay for w in waits[:3] if isinstance(w, RetryLater)] == [1.0, 2.0, 3.0]
    assert isinstance(waits[3], DeadLetter)


@pytest.mark.parametrize(
    ("status", "retry_after", "cap", "wait"),
    [
        (429, "7", None, 10.0),  # rounded up to the next level
        (503, "7", None, 10.0),
        (503, "7", "PT5S", 5.0),  # capped by retryAfterMax
        (429, "0", None, 0.4),  # never shorter than the backoff
        (500, "60", None, 0.4),  # only 429 and 503 carry a usable Retry-After
        (429, "soon", None, 0.4),  # unusable: the backoff applies
        (429, email.utils.formatdate(EPOCH + 100, usegmt=True), None, 120.0),  # an HTTP date
    ],
)
def test_retry_after(status: int, retry_after: str, cap: str | None, wait: float) -> None:
    delivery: dict[str, Any] = {"retryAfterMax": cap} if cap else {}
    spec = trigger_spec(delivery=delivery)
    d = rig(triggers=(spec,)).dispatcher.trigger.delivery
    got = decide(answer(status, {"retry-after": retry_after}), 1, d, "subscriber", EPOCH)
    assert isinstance(got, RetryLater)
    assert got.delay == pytest.approx(wait)


def test_a_2xx_cloudevent_is_a_reply_but_not_for_a_sink_nor_when_oversized() -> None:
    delivery = rig().dispatcher.trigger.delivery
    got = decide(answer(200, REPLY_HEADERS, b"{}"), 1, delivery, "subscriber", EPOCH)
    assert isinstance(got, Ack)
    assert got.reply is not None
    assert got.reply.id == "reply-1"
    assert decide(answer(200, REPLY_HEADERS, b"{}"), 1, delivery, "sink", EPOCH) == Ack(None)
    big = answer(200, REPLY_HEADERS, b"", oversized=True)
    assert decide(big, 1, delivery, "subscriber", EPOCH) == Ack(None)
    plain = answer(200, {"content-type": "text/plain"}, b"thanks")
    assert decide(plain, 1, delivery, "subscriber", EPOCH) == Ack(None)


# --- execution ----------------------------------------------------------------------------------


async def test_a_delivery_posts_binary_mode_with_prefer_reply_and_acks() -> None:
    r = rig(answer(200))
    message = r.message(traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01")
    await r.dispatcher.offer(message)
    assert r.journal == [("post", "http://sub.test/"), ("ack", "e-1")]
    (request,) = r.subscribers.requests
    assert request.body == b'{"bucket":"b"}'
    assert request.headers["ce-id"] == "e-1"
    assert request.headers["ce-type"] == "oss:ObjectCreated:PutObject"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["prefer"] == PREFER_REPLY
    assert request.headers["traceparent"] == message.headers["traceparent"]
    assert not any(k.startswith("bridge-") for k in request.headers)  # bridge's record stays home
    assert request.timeout == 30.0
    assert r.producer.published == []
    # end-to-end latency observed from the ingress stamp (250 ms before the fake clock's now)
    assert sample(r, "bridge_end_to_end_latency_seconds_sum", trigger=DISPLAY) == pytest.approx(
        0.25
    )


async def test_json_format_posts_a_structured_event() -> None:
    r = rig(answer(204), triggers=(trigger_spec(delivery={"format": "json"}),))
    await r.dispatcher.offer(r.message())
    (request,) = r.subscribers.requests
    assert request.headers["content-type"] == "application/cloudevents+json"
    assert not any(k.startswith("ce-") for k in request.headers)
    doc = orjson.loads(request.body)
    assert doc["id"] == "e-1"
    assert doc["data"] == {"bucket": "b"}


@pytest.mark.parametrize("status", [-1, 404, 408, 409, 429, 500, 503])
async def test_a_retryable_answer_is_republished_to_a_delay_queue_before_the_ack(
    status: int,
) -> None:
    r = rig(answer(status))
    await r.dispatcher.offer(r.message())
    delay = names.delay_queue(400)
    assert r.journal == [("post", "http://sub.test/"), ("published", delay), ("ack", "e-1")]
    (retry,) = r.producer.published
    assert retry.routing_key == delay
    assert retry.exchange == ""
    assert retry.mandatory  # a missing delay queue must refuse it, not drop it
    assert retry.headers[names.ATTEMPTS] == 1
    assert retry.headers[names.ROUTE] == QUEUE
    assert retry.headers[names.LAST_STATUS] == status
    assert retry.headers[names.FIRST_FAILURE] == "2027-01-15T08:00:00.000Z"
    assert retry.body == b'{"bucket":"b"}'
    assert retry.message_id == "e-1"
    assert sample(r, "bridge_retries_total", trigger=DISPLAY) == 1


async def test_a_returning_retry_counts_its_attempts_and_waits_longer() -> None:
    r = rig(answer(500))
    first = r.message(**{names.ATTEMPTS: 2, names.FIRST_FAILURE: "2027-01-15T07:59:59.000Z"})
    await r.dispatcher.offer(first)
    (retry,) = r.producer.published
    assert retry.routing_key == names.delay_queue(1600)  # before retry 3: 0.2 * 2^3
    assert retry.headers[names.ATTEMPTS] == 3
    assert retry.headers[names.FIRST_FAILURE] == "2027-01-15T07:59:59.000Z"  # kept


async def test_retry_after_chooses_the_delay_queue() -> None:
    r = rig(answer(429, {"retry-after": "7"}))
    await r.dispatcher.offer(r.message())
    assert [p.routing_key for p in r.producer.published] == [names.delay_queue(10_000)]


@pytest.mark.parametrize("status", [400, 401, 403, 410, 301])
async def test_a_final_status_is_dead_lettered_with_knative_extensions_before_the_ack(
    status: int,
) -> None:
    r = rig(answer(status, body=b"no such bucket"))
    await r.dispatcher.offer(r.message())
    assert r.journal == [("post", "http://sub.test/"), ("published", DLQ), ("ack", "e-1")]
    (dead,) = r.producer.published
    h = dead.headers
    assert h["ce-knativeerrordest"] == "http://sub.test/"
    assert h["ce-knativeerrorcode"] == str(status)
    assert base64.b64decode(h["ce-knativeerrordata"]) == b"no such bucket"
    assert h[names.TRIGGER] == DISPLAY
    assert h[names.ATTEMPTS] == 1
    assert h[names.LAST_ERROR] == f"HTTP {status}"
    assert h[names.DEAD_LETTERED] == "2027-01-15T08:00:00.000Z"
    assert names.ROUTE not in h
    assert dead.mandatory  # a missing dead-letter queue must refuse it, not drop it
    # the event itself is unchanged
    assert dead.body == b'{"bucket":"b"}'
    assert dead.content_type == "application/json"
    assert {k: v for k, v in h.items() if k.startswith("ce-") and "knative" not in k} == {
        k: v for k, v in event_headers().items() if k.startswith("ce-")
    }
    assert sample(r, "bridge_dead_letters_total", trigger=DISPLAY, destination="queue") == 1


async def test_the_last_retry_failing_dead_letters_with_the_attempt_count() -> None:
    r = rig(answer(-1, error="no answer within 30s"))
    await r.dispatcher.offer(r.message(**{names.ATTEMPTS: 10}))
    (dead,) = r.producer.published
    assert dead.routing_key == DLQ
    assert dead.headers[names.ATTEMPTS] == 11
    assert dead.headers["ce-knativeerrorcode"] == "-1"
    assert dead.headers[names.LAST_ERROR] == "no response: no answer within 30s"


async def test_with_a_dead_letter_sink_the_dead_letter_goes_to_the_sink_queue() -> None:
    spec = trigger_spec(delivery={"retry": 0, "deadLetterSink": {"uri": "http://sink.test/"}})
    r = rig(answer(500), triggers=(spec,))
    await r.dispatcher.offer(r.message())
    (dead,) = r.producer.published
    assert dead.routing_key == SINK_QUEUE
    assert dead.headers[names.ROUTE] == SINK_QUEUE
    assert names.ATTEMPTS not in dead.headers  # the sink starts counting afresh
    assert dead.headers["ce-knativeerrorcode"] == "500"
    assert sample(r, "bridge_dead_letters_total", trigger=DISPLAY, destination="sink") == 1


async def test_a_failing_sink_dead_letters_into_the_queue_keeping_the_first_failure() -> None:
    spec = trigger_spec(delivery={"retry": 0, "deadLetterSink": {"uri": "http://sink.test/"}})
    r = rig(answer(400), role="sink", triggers=(spec,))
    first = {
        "ce-knativeerrordest": "http://sub.test/",
        "ce-knativeerrorcode": "500",
        names.ROUTE: SINK_QUEUE,
    }
    await r.dispatcher.offer(r.message(**first))
    assert r.subscribers.requests[0].url == "http://sink.test/"
    (dead,) = r.producer.published
    assert dead.routing_key == DLQ
    assert dead.headers["ce-knativeerrorcode"] == "500"  # the subscriber's failure, kept
    assert dead.headers[names.LAST_ERROR] == (
        "the dead-letter sink http://sink.test/ failed too (HTTP 400)"
    )


async def test_a_reply_enters_the_broker_with_the_ttl_decremented_before_the_ack() -> None:
    r = rig(answer(200, REPLY_HEADERS, b'{"ok":true}'))
    trace = "00-" + "c" * 32 + "-" + "d" * 16 + "-01"
    await r.dispatcher.offer(r.message(**{"ce-knativebrokerttl": "5", "traceparent": trace}))
    assert r.journal == [
        ("post", "http://sub.test/"),
        ("published", BROKER_EXCHANGE),
        ("ack", "e-1"),
    ]
    (reply,) = r.producer.published
    assert reply.headers["ce-id"] == "reply-1"
    assert reply.headers["ce-knativebrokerttl"] == "4"
    assert reply.headers["traceparent"] == trace  # the reply continues the event's trace
    assert reply.headers[names.RECEIVED] == int(EPOCH * 1000)
    assert reply.body == b'{"ok":true}'
    assert reply.message_id == "reply-1"
    assert sample(r, "bridge_replies_total", trigger=DISPLAY, outcome="published") == 1


async def test_a_reply_no_trigger_matches_goes_to_the_unmatched_exchange() -> None:
    headers = {**REPLY_HEADERS, "ce-source": "elsewhere"}
    r = rig(answer(200, headers, b"{}"))
    await r.dispatcher.offer(r.message())
    assert [p.exchange for p in r.producer.published] == [UNMATCHED]
    broker = "default/eventbridge-default-broker"
    assert sample(r, "bridge_unmatched_events_total", broker=broker) == 1


async def test_a_reply_whose_ttl_is_used_up_is_not_published() -> None:
    r = rig(answer(200, REPLY_HEADERS, b"{}"))
    await r.dispatcher.offer(r.message(**{"ce-knativebrokerttl": "1"}))
    assert r.producer.published == []
    assert r.journal[-1] == ("ack", "e-1")
    assert sample(r, "bridge_replies_total", trigger=DISPLAY, outcome="ttl_exhausted") == 1


async def test_an_event_the_consumer_filter_rejects_is_acked_without_a_post() -> None:
    spec = trigger_spec(filters=[{"prefix": {"type": "oss:ObjectRemoved:"}}])
    r = rig(triggers=(spec,))
    await r.dispatcher.offer(r.message())
    assert r.journal == [("ack", "e-1")]
    assert sample(r, "bridge_filtered_events_total", trigger=DISPLAY) == 1


# --- ordering and flow control ------------------------------------------------------------------


async def test_an_ordered_trigger_retries_in_process_and_keeps_its_place() -> None:
    r = rig(answer(503), answer(503), answer(200), triggers=(trigger_spec(ordered=True),))
    await r.dispatcher.offer(r.message())
    assert r.clock.slept == [pytest.approx(0.4), pytest.approx(0.8)]
    assert r.producer.published == []  # no delay queue: it waits in place
    assert r.journal == [("post", "http://sub.test/")] * 3 + [("ack", "e-1")]


async def test_an_ordered_trigger_dead_letters_after_the_last_retry() -> None:
    spec = trigger_spec(ordered=True, delivery={"retry": 2})
    r = rig(answer(500), triggers=(spec,))
    await r.dispatcher.offer(r.message())
    assert len(r.subscribers.requests) == 3
    assert [p.routing_key for p in r.producer.published] == [DLQ]


async def test_an_ordered_wait_ends_without_an_ack_when_the_channel_is_gone() -> None:
    r = rig(answer(503), triggers=(trigger_spec(ordered=True),))
    message = r.message()

    async def lose_channel(_: Request) -> Answer:
        message.alive = False
        return answer(503)

    r.subscribers.script = [lose_channel]
    await r.dispatcher.offer(message)
    assert message.acks == 0
    assert message.requeues == 0
    assert len(r.subscribers.requests) == 1


async def test_parallelism_bounds_the_deliveries_in_flight_and_keeps_arrival_order() -> None:
    gate = asyncio.Event()

    async def held(_: Request) -> Answer:
        await gate.wait()
        return answer(200)

    r = rig(held, triggers=(trigger_spec(parallelism=2),))
    messages = [r.message(f"e-{i}") for i in range(6)]
    tasks = [asyncio.ensure_future(r.dispatcher.offer(m)) for m in messages]
    await asyncio.sleep(0.01)
    assert r.subscribers.active == 2
    assert r.dispatcher.in_flight == 2
    gate.set()
    await asyncio.gather(*tasks)
    assert r.subscribers.max_active == 2
    assert [m.acks for m in messages] == [1] * 6
    posted = [req.headers["ce-id"] for req in r.subscribers.requests]
    assert posted == [f"e-{i}" for i in range(6)]


# --- nothing is lost: failures while settling ---------------------------------------------------


async def test_a_refused_dead_letter_returns_the_original_and_never_acks_it() -> None:
    r = rig(answer(400))
    r.producer.refuse = lambda target: target == DLQ
    message = r.message()
    await r.dispatcher.offer(message)
    assert message.acks == 0
    assert message.requeues == 1
    assert r.journal == [("post", "http://sub.test/"), ("refused", DLQ), ("requeue", "e-1")]
    assert sample(r, "bridge_dead_letters_total", trigger=DISPLAY, destination="queue") == 0


async def test_a_refused_retry_publish_returns_the_original() -> None:
    r = rig(answer(503))
    r.producer.unavailable = True
    message = r.message()
    await r.dispatcher.offer(message)
    assert (message.acks, message.requeues) == (0, 1)


async def test_a_refused_reply_returns_the_original() -> None:
    r = rig(answer(200, REPLY_HEADERS, b"{}"))
    r.producer.refuse = lambda target: target == BROKER_EXCHANGE
    message = r.message()
    await r.dispatcher.offer(message)
    assert (message.acks, message.requeues) == (0, 1)


async def test_returns_pause_longer_after_each_consecutive_failure_and_reset_on_success() -> None:
    r = rig(answer(400))
    r.producer.refuse = lambda target: True
    for i in range(4):
        await r.dispatcher.offer(r.message(f"e-{i}"))
    assert r.clock.slept == [RETURN_PAUSE, RETURN_PAUSE * 2, RETURN_PAUSE * 4, RETURN_PAUSE * 8]
    r.producer.refuse = lambda target: False
    await r.dispatcher.offer(r.message("ok"))
    r.producer.refuse = lambda target: True
    await r.dispatcher.offer(r.message("again"))
    assert r.clock.slept[-1] == RETURN_PAUSE  # the success reset the pause


async def test_the_pause_is_capped() -> None:
    r = rig(answer(400))
    r.producer.refuse = lambda target: True
    for i in range(12):
        await r.dispatcher.offer(r.message(f"e-{i}"))
    assert max(r.clock.slept) == 30.0


async def test_an_unexpected_error_returns_the_message() -> None:
    def broken(_: Request) -> Answer:
        raise RuntimeError("a bug")

    r = rig(broken)
    message = r.message()
    await r.dispatcher.offer(message)
    assert (message.acks, message.requeues) == (0, 1)


# --- stopping -----------------------------------------------------------------------------------


async def test_drain_waits_for_a_delivery_in_flight() -> None:
    gate = asyncio.Event()

    async def slow(_: Request) -> Answer:
        await gate.wait()
        return answer(200)

    r = rig(slow)
    message = r.message()
    task = asyncio.ensure_future(r.dispatcher.offer(message))
    await asyncio.sleep(0)
    r.dispatcher.stop_taking()
    drained = asyncio.ensure_future(r.dispatcher.drain(5.0))
    await asyncio.sleep(0.01)
    assert not drained.done()  # the POST is still out
    gate.set()
    await drained
    await task
    assert message.acks == 1


async def test_after_stop_taking_new_and_waiting_messages_are_left_to_the_broker() -> None:
    gate = asyncio.Event()

    async def held(_: Request) -> Answer:
        await gate.wait()
        return answer(200)

    r = rig(held, triggers=(trigger_spec(parallelism=1),))
    first, waiting, late = r.message("first"), r.message("waiting"), r.message("late")
    task = asyncio.ensure_future(r.dispatcher.offer(first))
    await asyncio.sleep(0)
    await r.dispatcher.offer(waiting)  # queued locally: the one slot is busy
    r.dispatcher.stop_taking()
    await r.dispatcher.offer(late)
    gate.set()
    await task
    assert (first.acks, waiting.acks, late.acks) == (1, 0, 0)
    assert [req.headers["ce-id"] for req in r.subscribers.requests] == ["first"]


async def test_stopping_ends_an_ordered_wait_at_once() -> None:
    r = rig(answer(503), triggers=(trigger_spec(ordered=True),))

    async def never(seconds: float) -> None:
        await asyncio.Event().wait()  # a wait that only stopping can end

    r.clock.sleep = never  # type: ignore[method-assign]
    message = r.message()
    task = asyncio.ensure_future(r.dispatcher.offer(message))
    await asyncio.sleep(0.01)
    r.dispatcher.stop_taking()
    await asyncio.wait_for(task, 1.0)
    assert (message.acks, message.requeues) == (0, 0)


# --- a subscriber that refuses connections ------------------------------------------------------


async def test_a_subscriber_that_refuses_connections_throttles_attempts_not_retries() -> None:
    r = rig(refused())
    for i in range(UNREACHABLE_AFTER):
        await r.dispatcher.offer(r.message(f"e-{i}"))
    assert r.clock.slept == []  # full speed until the subscriber is known to be down
    assert r.dispatcher.throttled
    assert sample(r, "bridge_subscriber_unreachable", trigger=DISPLAY) == 1
    for i in range(4):
        await r.dispatcher.offer(r.message(f"later-{i}"))
    # the first later attempt goes at once; each next one waits THROTTLE_GAP after it
    assert r.clock.slept == [pytest.approx(THROTTLE_GAP)] * 3
    # and every event keeps Knative's semantics: one retry scheduled per attempt
    assert len(r.producer.to(names.delay_queue(400))) == UNREACHABLE_AFTER + 4


async def test_concurrent_attempts_share_the_throttle() -> None:
    r = rig(refused(), triggers=(trigger_spec(parallelism=8),))
    for i in range(UNREACHABLE_AFTER):
        await r.dispatcher.offer(r.message(f"e-{i}"))
    await asyncio.gather(*(r.dispatcher.offer(r.message(f"c-{i}")) for i in range(6)))
    # six attempts started together take turns: at once, then 1, 2, ... 5 gaps later
    assert sorted(r.clock.slept) == [pytest.approx(THROTTLE_GAP * k) for k in range(1, 6)]
    assert len(r.subscribers.requests) == UNREACHABLE_AFTER + 6


async def test_a_connected_answer_ends_the_throttle() -> None:
    r = rig(refused(), refused(), refused(), answer(503), answer(503))
    for i in range(5):
        await r.dispatcher.offer(r.message(f"e-{i}"))
    assert not r.dispatcher.throttled
    assert sample(r, "bridge_subscriber_unreachable", trigger=DISPLAY) == 0
    slept = len(r.clock.slept)
    await r.dispatcher.offer(r.message("next"))
    assert len(r.clock.slept) == slept  # full speed again


async def test_an_answer_between_refusals_means_no_throttle() -> None:
    r = rig(refused(), refused(), answer(503), refused(), refused())
    for i in range(5):
        await r.dispatcher.offer(r.message(f"e-{i}"))
    assert not r.dispatcher.throttled


async def test_timeouts_do_not_throttle() -> None:
    r = rig(answer(-1, error="no answer within 30s"))
    for i in range(UNREACHABLE_AFTER + 2):
        await r.dispatcher.offer(r.message(f"e-{i}"))
    assert not r.dispatcher.throttled


async def test_a_throttled_event_is_still_dead_lettered_after_its_last_retry() -> None:
    r = rig(refused(), triggers=(trigger_spec(delivery={"retry": 1}),))
    for i in range(UNREACHABLE_AFTER):
        await r.dispatcher.offer(r.message(f"e-{i}", **{names.ATTEMPTS: 1}))
    assert [p.routing_key for p in r.producer.published] == [DLQ] * UNREACHABLE_AFTER
