"""The dispatcher against the real RabbitMQ: what a subscriber receives (binary and structured
mode, filters), reply events, the backoff schedule measured at the subscriber, each status class,
Retry-After, no head-of-line blocking, ordered triggers, dead letters and the dead-letter sink.

Every delay is kept small (0.05-0.4 s, Retry-After 1 s) so the file runs in seconds; measured gaps
have a strict lower bound (RabbitMQ never expires a waiting retry early) and a generous upper one.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import socket
import time
from email.utils import formatdate
from typing import Any

import aiohttp
import aiohttp.web
import aiormq
import orjson
import pytest

from tests.conftest import Received, Reply, Running, eventually, get_all, queue_depth, trigger

BROKER = "bridge.broker.default.eventbridge-default-broker"
UNMATCHED = "bridge.unmatched.default.eventbridge-default-broker"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
# A gap may not be shorter than its backoff (minus timer granularity), and not much longer.
EARLY = 0.01
LATE = 0.3


def ce(
    event_id: str, type_: str = "test.event", source: str = "test", **extra: str
) -> dict[str, str]:
    """Binary-mode request headers of one event (text data unless content-type is given)."""
    headers = {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": source,
        "ce-type": type_,
        "content-type": "text/plain",
    }
    headers.update(extra)
    return headers


async def send(running: Running, headers: dict[str, str], body: bytes | str = b"x") -> None:
    status, _, answer = await running.post("/", body=body, headers=headers)
    assert status == 202, answer


def closed_port_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def gaps(received: list[Received]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(received)]


def headers_of(message: Any) -> dict[str, Any]:
    return dict(message.header.properties.headers or {})


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _depth_is(connection: Any, queue: str, depth: int) -> bool:
    return await queue_depth(connection, queue) == depth


# --- what the subscriber receives ------------------------------------------------------------


async def test_binary_mode_carries_attributes_content_type_prefer_and_traceparent(
    bridge_factory, subscriber_factory
):
    sub = await subscriber_factory()
    running = await bridge_factory(triggers=[trigger("t", sub.url)])
    headers = ce(
        "b-1",
        type_="oss:ObjectCreated:PutObject",
        source="acs.oss",
        **{
            "ce-subject": "hello%20w%C3%B6rld",
            "ce-time": "2023-02-07T09:52:31Z",
            "ce-aliyunpublishtime": "2023-02-07T09:50:03.012PRC",
            "content-type": "application/json;charset=utf-8",
            "traceparent": TRACEPARENT,
        },
    )
    await send(running, headers, b'{"key": "demo.data"}')
    await eventually(lambda: len(sub.received) == 1, what="the delivery")
    got = sub.received[0]
    assert got.method == "POST"
    assert got.headers["ce-specversion"] == "1.0"
    assert got.headers["ce-id"] == "b-1"
    assert got.headers["ce-source"] == "acs.oss"
    assert got.headers["ce-type"] == "oss:ObjectCreated:PutObject"
    assert got.headers["ce-time"] == "2023-02-07T09:52:31Z"
    assert got.headers["ce-aliyunpublishtime"] == "2023-02-07T09:50:03.012PRC"
    # Percent-encoded again on the way out (CloudEvents HTTP binding).
    assert got.headers["ce-subject"] == "hello%20w%C3%B6rld"
    assert got.headers["content-type"] == "application/json;charset=utf-8"
    assert got.headers["prefer"] == "reply"
    version, trace_id, parent, flags = got.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert len(parent) == 16
    assert got.body == b'{"key": "demo.data"}'
    assert not any(h.startswith("bridge-") for h in got.headers)


async def test_structured_mode_when_delivery_format_is_json(bridge_factory, subscriber_factory):
    sub = await subscriber_factory()
    running = await bridge_factory(triggers=[trigger("t", sub.url, delivery={"format": "json"})])
    await send(
        running,
        ce(
            "s-1",
            **{"ce-myext": "v1", "content-type": "application/json", "traceparent": TRACEPARENT},
        ),
        b'{"a": [1, 2]}',
    )
    await send(running, ce("s-2", **{"content-type": "application/octet-stream"}), b"\x00\xff\x01")
    await eventually(lambda: len(sub.received) == 2, what="both deliveries")
    by_id = {orjson.loads(r.body)["id"]: r for r in sub.received}
    first = by_id["s-1"]
    assert first.headers["content-type"] == "application/cloudevents+json"
    assert first.headers["prefer"] == "reply"
    assert first.headers["traceparent"].split("-")[1] == TRACE_ID
    assert not any(h.startswith("ce-") for h in first.headers)
    doc = orjson.loads(first.body)
    assert doc["specversion"] == "1.0"
    assert doc["source"] == "test"
    assert doc["type"] == "test.event"
    assert doc["myext"] == "v1"
    assert doc["datacontenttype"] == "application/json"
    assert doc["data"] == {"a": [1, 2]}
    assert "knativebrokerttl" not in doc
    binary = orjson.loads(by_id["s-2"].body)
    assert binary["datacontenttype"] == "application/octet-stream"
    assert base64.b64decode(binary["data_base64"]) == b"\x00\xff\x01"
    assert "data" not in binary


async def test_filters_pick_triggers_and_each_matching_trigger_gets_its_own_delivery(
    amqp, bridge_factory, subscriber_factory
):
    oss = await subscriber_factory()
    either = await subscriber_factory()
    prefix = await subscriber_factory()
    nothing = await subscriber_factory()
    running = await bridge_factory(
        triggers=[
            trigger("oss", oss.url, filter={"attributes": {"source": "acs.oss"}}),
            trigger("either", either.url, filter={"attributes": {"type": "a.one,a.two"}}),
            trigger("prefix", prefix.url, filters=[{"prefix": {"type": "a."}}]),
            trigger("nothing", nothing.url, filter={"attributes": {"type": "never"}}),
        ]
    )
    await send(running, ce("e1", type_="a.one", source="acs.oss"))  # oss, either, prefix
    await send(running, ce("e2", type_="a.two"))  # either, prefix
    await send(running, ce("e3", type_="a.three"))  # prefix
    await send(running, ce("e4", type_="b.one", source="acs.oss"))  # oss
    await send(running, ce("e5", type_="A.one"))  # none (case-sensitive)
    expected = {
        "oss": (oss, {"e1", "e4"}),
        "either": (either, {"e1", "e2"}),
        "prefix": (prefix, {"e1", "e2", "e3"}),
        "nothing": (nothing, set()),
    }
    total = sum(len(ids) for _, ids in expected.values())
    await eventually(
        lambda: sum(len(s.received) for s, _ in expected.values()) >= total,
        what="every matching delivery",
    )
    await asyncio.sleep(0.3)  # nothing else arrives
    for name, (sub, ids) in expected.items():
        assert sorted(sub.ids()) == sorted(ids), name
    await eventually(lambda: _depth_is(amqp, UNMATCHED, 1), what="e5 kept as unmatched")
    [unmatched] = await get_all(amqp, UNMATCHED)
    assert text(headers_of(unmatched)["ce-id"]) == "e5"


# --- reply events ----------------------------------------------------------------------------


async def test_binary_reply_enters_the_broker_with_ttl_decremented(
    amqp, bridge_factory, subscriber_factory
):
    reply_headers = {
        "ce-specversion": "1.0",
        "ce-id": "reply-1",
        "ce-source": "origin-subscriber",
        "ce-type": "order.confirmed",
        "content-type": "application/json",
    }
    origin = await subscriber_factory(script=[(200, reply_headers, b'{"ok": true}')])
    follow = await subscriber_factory()
    audit = await subscriber_factory(script=[(400, {}, b"")])
    running = await bridge_factory(
        triggers=[
            trigger("origin", origin.url, filter={"attributes": {"type": "order.created"}}),
            trigger("follow", follow.url, filter={"attributes": {"type": "order.confirmed"}}),
            # Dead-letters what it gets, so the stored reply (TTL included) can be inspected.
            trigger(
                "audit",
                audit.url,
                filter={"attributes": {"type": "order.confirmed"}},
                delivery={"retry": 0},
            ),
        ]
    )
    await send(
        running,
        ce(
            "order-1",
            type_="order.created",
            **{"ce-knativebrokerttl": "10", "traceparent": TRACEPARENT},
        ),
    )
    await eventually(lambda: len(follow.received) == 1, what="the reply at the second trigger")
    got = follow.received[0]
    assert got.headers["ce-id"] == "reply-1"
    assert got.headers["ce-source"] == "origin-subscriber"
    assert got.headers["content-type"] == "application/json"
    assert got.body == b'{"ok": true}'
    assert got.headers["traceparent"].split("-")[1] == TRACE_ID
    assert origin.ids() == ["order-1"]
    dlq = "bridge.dlq.default.audit"
    await eventually(lambda: _depth_is(amqp, dlq, 1), what="the reply dead-lettered at audit")
    [stored] = await get_all(amqp, dlq)
    assert text(headers_of(stored)["ce-knativebrokerttl"]) == "9"
    assert text(headers_of(stored)["ce-id"]) == "reply-1"


async def test_structured_replies_stop_when_the_broker_ttl_is_used_up(
    amqp, bridge_factory, subscriber_factory
):
    def echo(request: Received) -> Reply:
        n = len(echo_sub.received)
        reply = {
            "specversion": "1.0",
            "id": f"pong-{n}",
            "source": "echo",
            "type": "ping",
            "datacontenttype": "application/json",
            "data": {"n": n},
        }
        return 200, {"content-type": "application/cloudevents+json"}, orjson.dumps(reply)

    echo_sub = await subscriber_factory(responder=echo)
    running = await bridge_factory(
        triggers=[trigger("echo", echo_sub.url, filter={"attributes": {"type": "ping"}})]
    )
    await send(running, ce("ping-0", type_="ping", **{"ce-knativebrokerttl": "3"}))
    # TTL 3 -> reply with 2 -> reply with 1 -> its reply would have 0: not published.
    await eventually(lambda: len(echo_sub.received) == 3, what="three hops")
    await asyncio.sleep(0.4)
    assert echo_sub.ids() == ["ping-0", "pong-1", "pong-2"]
    assert orjson.loads(echo_sub.received[1].body) == {"n": 1}
    assert echo_sub.received[1].headers["content-type"] == "application/json"
    assert await queue_depth(amqp, UNMATCHED) == 0


async def test_a_2xx_body_that_is_not_a_cloudevent_is_ignored(
    amqp, bridge_factory, subscriber_factory
):
    answers: dict[str, Reply] = {
        "plain-text": (200, {"content-type": "text/plain"}, b"thanks"),
        "plain-json": (200, {"content-type": "application/json"}, b'{"status": "ok"}'),
        "created": (201, {}, b""),
        # Claims to be structured but is not a valid CloudEvent (no id).
        "bad-structured": (
            200,
            {"content-type": "application/cloudevents+json"},
            b'{"specversion": "1.0", "source": "x", "type": "t"}',
        ),
    }
    replier = await subscriber_factory(responder=lambda r: answers[r.headers["ce-id"]])
    everything = await subscriber_factory()
    running = await bridge_factory(
        triggers=[
            trigger("replier", replier.url, filter={"attributes": {"source": "test"}}),
            trigger("everything", everything.url),
        ]
    )
    for event_id in answers:
        await send(running, ce(event_id))
    await eventually(lambda: len(replier.received) == len(answers), what="the deliveries")
    await eventually(lambda: len(everything.received) == len(answers), what="the catch-all")
    await asyncio.sleep(0.4)
    assert sorted(everything.ids()) == sorted(answers)  # no reply re-entered the broker
    assert len(replier.received) == len(answers)  # each acknowledged once, none retried
    assert await queue_depth(amqp, UNMATCHED) == 0
    assert await queue_depth(amqp, "bridge.dlq.default.replier") == 0


# --- backoff ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "delay", "expected"),
    [
        ("exponential", 0.05, [0.1, 0.2, 0.4, 0.8]),
        ("linear", 0.1, [0.1, 0.2, 0.3, 0.4]),
    ],
)
async def test_backoff_schedule_measured_at_the_subscriber(
    amqp, bridge_factory, subscriber_factory, policy, delay, expected
):
    sub = await subscriber_factory(script=[(500, {}, b"")])
    running = await bridge_factory(
        triggers=[
            trigger(
                "t",
                sub.url,
                delivery={"retry": 4, "backoffPolicy": policy, "backoffDelay": f"PT{delay}S"},
            )
        ]
    )
    await send(running, ce("backoff-1"))
    await eventually(lambda: len(sub.received) == 5, timeout=5, what="five attempts")
    measured = gaps(sub.received)
    for n, (gap, want) in enumerate(zip(measured, expected, strict=True), start=1):
        assert want - EARLY <= gap <= want + LATE, f"retry {n}: waited {gap:.3f}s, want {want}s"
    await eventually(
        lambda: _depth_is(amqp, "bridge.dlq.default.t", 1), what="the dead letter after retries"
    )
    await asyncio.sleep(0.2)
    assert len(sub.received) == 5


# --- status classes --------------------------------------------------------------------------

RETRIED = [404, 408, 409, 429, 500, 502, 503, 504]
FINAL = [302, 400, 401, 403, 410, 413, 422]
SUCCESS = [200, 201, 202, 204]


async def test_each_status_class(amqp, bridge_factory, subscriber_factory):
    """2xx: one attempt, acknowledged. Retried statuses, connection refused and timeouts:
    1 + retry attempts, then a dead letter. Any other status: a dead letter after one attempt."""

    async def answer(request: Received) -> Reply:
        code = request.path.rsplit("/", 1)[-1]
        if code == "slow":
            await asyncio.sleep(0.5)
            return 200, {}, b""
        return int(code), {}, b""

    sub = await subscriber_factory(responder=answer)
    delivery = {"retry": 2, "backoffDelay": "PT0.05S", "timeout": "PT5S"}
    cases: dict[str, str] = {str(code): f"{sub.url}s/{code}" for code in RETRIED + FINAL + SUCCESS}
    cases["refused"] = closed_port_url()
    cases["timeout"] = f"{sub.url}s/slow"
    triggers = []
    for name, url in cases.items():
        spec = dict(delivery, timeout="PT0.15S") if name == "timeout" else delivery
        triggers.append(
            trigger(
                f"st-{name}", url, filter={"attributes": {"type": f"case.{name}"}}, delivery=spec
            )
        )
    running = await bridge_factory(triggers=triggers)
    for name in cases:
        await send(running, ce(f"id-{name}", type_=f"case.{name}"))

    def attempts(path_tail: str) -> int:
        return sum(1 for r in sub.received if r.path.endswith(f"/{path_tail}"))

    dead = [str(c) for c in RETRIED + FINAL] + ["refused", "timeout"]

    async def all_dead_lettered() -> bool:
        depths = [await queue_depth(amqp, f"bridge.dlq.default.st-{n}") for n in dead]
        return all(d == 1 for d in depths)

    await eventually(all_dead_lettered, timeout=10, what="every failing case dead-lettered")
    await asyncio.sleep(0.3)  # a wrong extra retry would arrive within this
    for code in RETRIED:
        assert attempts(str(code)) == 3, f"HTTP {code} must be retried twice"
    for code in FINAL + SUCCESS:
        assert attempts(str(code)) == 1, f"HTTP {code} must get exactly one attempt"
    assert attempts("slow") == 3
    for code in SUCCESS:
        assert await queue_depth(amqp, f"bridge.dlq.default.st-{code}") == 0
    expectations = {str(c): (str(c), 3) for c in RETRIED}
    expectations |= {str(c): (str(c), 1) for c in FINAL}
    expectations |= {"refused": ("-1", 3), "timeout": ("-1", 3)}
    for name, (error_code, tries) in expectations.items():
        [letter] = await get_all(amqp, f"bridge.dlq.default.st-{name}")
        h = headers_of(letter)
        assert text(h["ce-id"]) == f"id-{name}"
        assert text(h["ce-knativeerrorcode"]) == error_code, name
        assert int(text(h["bridge-attempts"])) == tries, name
        assert text(h["ce-knativeerrordest"]) == cases[name]
    await running.app.drain()
    for name in cases:  # nothing was left unacknowledged to come back
        assert await queue_depth(amqp, f"bridge.trigger.default.st-{name}") == 0, name


async def test_retry_after_is_honoured_on_429_and_503_and_capped_by_retry_after_max(
    bridge_factory, subscriber_factory
):
    soon = formatdate(time.time() + 2.5, usegmt=True)  # 1.5-2.5 s away: whole seconds
    cases: dict[str, tuple[int, str, str]] = {
        # name: (status, Retry-After, retryAfterMax)
        "r429": (429, "1", "PT5S"),
        "r503": (503, "1", "PT5S"),
        "cap429": (429, "30", "PT0.4S"),
        "cap503": (503, "30", "PT0.4S"),
        "date503": (503, soon, "PT10S"),
        "r500": (500, "30", "PT5S"),  # only 429 and 503 carry a Retry-After that counts
    }
    failed: set[str] = set()

    def answer(request: Received) -> Reply:
        name = request.path.strip("/")
        if name in failed:
            return 200, {}, b""
        failed.add(name)
        status, retry_after, _ = cases[name]
        return status, {"retry-after": retry_after}, b""

    sub = await subscriber_factory(responder=answer)
    running = await bridge_factory(
        triggers=[
            trigger(
                name,
                f"{sub.url}{name}",
                filter={"attributes": {"type": name}},
                delivery={"retry": 1, "backoffDelay": "PT0.05S", "retryAfterMax": cap},
            )
            for name, (_, _, cap) in cases.items()
        ]
    )
    for name in cases:
        await send(running, ce(f"id-{name}", type_=name))
    await eventually(lambda: len(sub.received) == 2 * len(cases), timeout=8, what="retries")
    waited = {}
    for name in cases:
        first, second = (r for r in sub.received if r.path == f"/{name}")
        waited[name] = second.at - first.at
    assert 1.0 - EARLY <= waited["r429"] <= 1.0 + LATE + 0.2, waited
    assert 1.0 - EARLY <= waited["r503"] <= 1.0 + LATE + 0.2, waited
    assert 0.4 - EARLY <= waited["cap429"] <= 0.4 + LATE, waited
    assert 0.4 - EARLY <= waited["cap503"] <= 0.4 + LATE, waited
    # 1.5-2.5 s asked, rounded up to the next Retry-After level: 2 or 3 s.
    assert 2.0 - EARLY <= waited["date503"] <= 3.0 + LATE, waited
    assert waited["r500"] <= 0.05 + LATE, waited


# --- waiting without blocking, and ordered triggers -------------------------------------------


async def test_a_waiting_retry_does_not_block_other_events_of_its_trigger(
    bridge_factory, subscriber_factory
):
    def answer(request: Received) -> Reply:
        if request.headers["ce-id"] == "slow" and sum(1 for i in sub.ids() if i == "slow") == 1:
            return 503, {}, b""
        return 200, {}, b""

    sub = await subscriber_factory(responder=answer)
    running = await bridge_factory(
        triggers=[trigger("t", sub.url, delivery={"retry": 2, "backoffDelay": "PT1S"})]
    )
    await send(running, ce("slow"))
    await eventually(lambda: len(sub.received) == 1, what="the first attempt")
    others = [f"other-{i}" for i in range(20)]
    for event_id in others:
        await send(running, ce(event_id))
    await eventually(lambda: sub.ids().count("slow") == 2, timeout=5, what="the retry")
    ids = sub.ids()
    first_try = sub.received[0].at
    second_try = sub.received[len(ids) - 1 - ids[::-1].index("slow")].at
    assert second_try - first_try >= 1.0 - EARLY
    # Every other event was delivered while the failed one waited.
    assert set(ids[1 : ids.index("slow", 1)]) == set(others)
    last_other = max(r.at for r in sub.received if r.headers["ce-id"] != "slow")
    assert last_other < second_try


async def test_ordered_trigger_delivers_one_at_a_time_in_order_and_a_retry_blocks(
    bridge_factory, subscriber_factory
):
    in_flight = 0
    most = 0
    failures = {"o-2": 2}

    async def answer(request: Received) -> Reply:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            await asyncio.sleep(0.02)
            event_id = request.headers["ce-id"]
            if failures.get(event_id, 0) > 0:
                failures[event_id] -= 1
                return 500, {}, b""
            return 200, {}, b""
        finally:
            in_flight -= 1

    sub = await subscriber_factory(responder=answer)
    running = await bridge_factory(
        triggers=[
            trigger(
                "ordered",
                sub.url,
                ordered=True,
                parallelism=16,
                delivery={"retry": 3, "backoffPolicy": "linear", "backoffDelay": "PT0.15S"},
            )
        ]
    )
    events = [f"o-{i}" for i in range(8)]
    for event_id in events:
        await send(running, ce(event_id))
    await eventually(lambda: len(sub.received) == len(events) + 2, timeout=8, what="deliveries")
    assert sub.ids() == ["o-0", "o-1", "o-2", "o-2", "o-2", "o-3", "o-4", "o-5", "o-6", "o-7"]
    assert most == 1
    tries = [r for r in sub.received if r.headers["ce-id"] == "o-2"]
    waited = gaps(tries)
    assert waited[0] >= 0.15 - EARLY, waited  # linear backoff, waited in process
    assert waited[1] >= 0.3 - EARLY, waited
    successor = sub.received[5]
    assert successor.headers["ce-id"] == "o-3"
    assert successor.at >= tries[-1].at


# --- dead letters ----------------------------------------------------------------------------


async def test_dead_letter_keeps_the_event_and_adds_error_extensions_and_failure_record(
    amqp, bridge_factory, subscriber_factory
):
    long_body = b"E" * 700 + b"F" * 2300  # base64 of all of it would be 4000 characters
    sub = await subscriber_factory(
        responder=lambda r: (
            500,
            {},
            long_body if r.headers["ce-id"] == "long" else b'{"error":"boom"}',
        )
    )
    refused = closed_port_url()
    running = await bridge_factory(
        triggers=[
            trigger(
                "t",
                sub.url,
                filter={"attributes": {"source": "test"}},
                delivery={"retry": 1, "backoffDelay": "PT0.05S"},
            ),
            trigger(
                "gone",
                refused,
                filter={"attributes": {"source": "elsewhere"}},
                delivery={"retry": 1, "backoffDelay": "PT0.05S"},
            ),
        ]
    )
    original = ce(
        "short",
        **{
            "ce-subject": "demo.data",
            "ce-aliyunregionid": "cn-hangzhou",
            "content-type": "application/json",
        },
    )
    await send(running, original, b'{"size": 1}')
    await send(running, ce("long"), b"payload")
    await send(running, ce("nobody", source="elsewhere"), b"payload")
    dlq, gone = "bridge.dlq.default.t", "bridge.dlq.default.gone"
    await eventually(lambda: _depth_is(amqp, dlq, 2), what="two dead letters")
    await eventually(lambda: _depth_is(amqp, gone, 1), what="the unreachable one")
    await running.app.drain()
    # The originals were acknowledged, not left to come back.
    assert await queue_depth(amqp, "bridge.trigger.default.t") == 0
    assert await queue_depth(amqp, "bridge.trigger.default.gone") == 0
    letters = {text(headers_of(m)["ce-id"]): m for m in await get_all(amqp, dlq)}
    short = letters["short"]
    h = headers_of(short)
    for name, value in original.items():
        if name.startswith("ce-"):
            assert text(h[name]) == value, name
    assert short.header.properties.content_type == "application/json"
    assert short.body == b'{"size": 1}'
    assert text(h["ce-knativeerrordest"]) == sub.url
    assert text(h["ce-knativeerrorcode"]) == "500"
    assert base64.b64decode(text(h["ce-knativeerrordata"])) == b'{"error":"boom"}'
    assert text(h["bridge-trigger"]) == "default/t"
    assert int(text(h["bridge-attempts"])) == 2
    assert int(text(h["bridge-last-status"])) == 500
    assert "500" in text(h["bridge-last-error"])
    for stamp in ("bridge-first-failure", "bridge-last-failure", "bridge-dead-lettered"):
        assert text(h[stamp]).startswith("20"), stamp
    assert text(h["bridge-first-failure"]) <= text(h["bridge-last-failure"])
    data = text(headers_of(letters["long"])["ce-knativeerrordata"])
    assert 0 < len(data) <= 1024
    assert long_body.startswith(base64.b64decode(data))
    assert letters["long"].body == b"payload"
    [nobody] = await get_all(amqp, gone)
    h = headers_of(nobody)
    assert text(h["ce-knativeerrorcode"]) == "-1"
    assert text(h["ce-knativeerrordest"]) == refused
    assert "ce-knativeerrordata" not in h
    assert int(text(h["bridge-attempts"])) == 2
    assert text(h["bridge-trigger"]) == "default/gone"


async def test_dead_letter_sink_down_keeps_the_dead_letter_in_the_queue(
    amqp, bridge_factory, subscriber_factory
):
    sub = await subscriber_factory(script=[(400, {}, b"no")])
    running = await bridge_factory(
        triggers=[
            trigger(
                "t",
                sub.url,
                delivery={
                    "retry": 1,
                    "backoffDelay": "PT0.05S",
                    "deadLetterSink": {"uri": closed_port_url()},
                },
            )
        ]
    )
    await send(running, ce("sinkless"), b"keep me")
    dlq = "bridge.dlq.default.t"
    await eventually(lambda: _depth_is(amqp, dlq, 1), timeout=5, what="the dead letter kept")
    await running.app.drain()
    assert await queue_depth(amqp, "bridge.dls.default.t") == 0
    assert await queue_depth(amqp, "bridge.trigger.default.t") == 0
    [letter] = await get_all(amqp, dlq)
    h = headers_of(letter)
    assert text(h["ce-id"]) == "sinkless"
    assert letter.body == b"keep me"
    assert text(h["ce-knativeerrorcode"]) == "400"  # the subscriber's failure, not the sink's
    assert text(h["ce-knativeerrordest"]) == sub.url
    assert base64.b64decode(text(h["ce-knativeerrordata"])) == b"no"
    assert len(sub.received) == 1


async def test_dead_letter_sink_up_receives_the_event_with_error_extensions(
    bridge_factory, subscriber_factory
):
    sub = await subscriber_factory(script=[(503, {}, b"busy")])
    sink = await subscriber_factory()
    running = await bridge_factory(
        triggers=[
            trigger(
                "t",
                sub.url,
                delivery={
                    "retry": 1,
                    "backoffDelay": "PT0.05S",
                    "deadLetterSink": {"uri": sink.url},
                },
            )
        ]
    )
    await send(running, ce("to-sink", **{"ce-subject": "s"}), b"the data")
    await eventually(lambda: len(sink.received) == 1, timeout=5, what="the sink delivery")
    got = sink.received[0]
    assert got.headers["ce-id"] == "to-sink"
    assert got.headers["ce-subject"] == "s"
    assert got.headers["content-type"] == "text/plain"
    assert got.body == b"the data"
    assert got.headers["ce-knativeerrordest"] == sub.url
    assert got.headers["ce-knativeerrorcode"] == "503"
    assert base64.b64decode(got.headers["ce-knativeerrordata"]) == b"busy"
    assert len(sub.received) == 2


# --- requests that cannot be sent --------------------------------------------------------------

UNSENDABLE = {
    # The datacontenttype travels as the AMQP content type and goes out as Content-Type as is.
    "content-type": (
        {},
        "text/plain\r\nx-injected: yes",
        "the value of header 'content-type' contains a carriage return (CR)",
    ),
    "traceparent": (
        {"traceparent": TRACEPARENT + "\nx-injected: yes"},
        "text/plain",
        "the value of header 'traceparent' contains a line feed (LF)",
    ),
    "attribute-name": (
        {"ce-bad name": "x"},
        "text/plain",
        "the header name 'ce-bad name' is not an RFC 9110 token",
    ),
}


@pytest.mark.parametrize("case", list(UNSENDABLE))
async def test_an_event_with_an_unsendable_header_is_dead_lettered_after_one_attempt(
    amqp, bridge_factory, subscriber_factory, case
):
    """Published straight to the trigger's queue (the ingress refuses such values): the request
    is never written, and retrying cannot help, so the event is dead-lettered at once."""
    extra, content_type, reason = UNSENDABLE[case]
    sub = await subscriber_factory()
    running = await bridge_factory(
        triggers=[trigger("t", sub.url, delivery={"retry": 3, "backoffDelay": "PT0.05S"})]
    )
    headers = {
        "ce-specversion": "1.0",
        "ce-id": f"unsendable-{case}",
        "ce-source": "test",
        "ce-type": "test.event",
        **extra,
    }
    channel = await amqp.channel(publisher_confirms=True)
    await channel.basic_publish(
        b"data",
        routing_key="bridge.trigger.default.t",
        properties=aiormq.spec.Basic.Properties(
            headers=headers, content_type=content_type, delivery_mode=2
        ),
    )
    dlq = "bridge.dlq.default.t"
    await eventually(lambda: _depth_is(amqp, dlq, 1), what="the dead letter")
    await asyncio.sleep(0.3)  # a retry would reach the subscriber within this
    assert sub.received == []
    [letter] = await get_all(amqp, dlq)
    h = headers_of(letter)
    assert text(h["ce-id"]) == f"unsendable-{case}"
    assert letter.body == b"data"
    assert text(h["ce-knativeerrorcode"]) == "-1"
    assert int(text(h["bridge-attempts"])) == 1
    error = text(h["bridge-last-error"])
    assert error.startswith("no response: request not sent: "), error
    assert reason in error, error
    assert running.app.metrics.registry.get_sample_value(
        "bridge_retries_total", {"trigger": "default/t"}
    ) in (None, 0.0)
    assert await queue_depth(amqp, "bridge.trigger.default.t") == 0


async def test_a_subscriber_that_refuses_connections_gets_throttled_attempts_then_everything(
    bridge_factory,
):
    """Down: futile attempts are bounded (20 a second), whatever the backlog and its backoff;
    back up on the same port: every event arrives."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    delivery = {"retry": 1000, "backoffPolicy": "linear", "backoffDelay": "PT0.01S"}
    running = await bridge_factory(triggers=[trigger("down", url, delivery=delivery)])
    for i in range(40):
        await send(running, ce(f"d-{i}"))
    registry = running.app.metrics.registry
    labels = {"trigger": "default/down", "code": "-1", "class": "no_response"}

    def attempts() -> float:
        return registry.get_sample_value("bridge_deliveries_total", labels) or 0.0

    await eventually(
        lambda: (
            attempts() >= 3
            and bool(
                registry.get_sample_value(
                    "bridge_subscriber_unreachable", {"trigger": "default/down"}
                )
            )
        ),
        timeout=10,
        what="the trigger throttled",
    )
    before = attempts()
    await asyncio.sleep(2.0)
    # At most 20 attempts a second (plus timer slack); unthrottled, 40 events retried every
    # 10-400 ms would make hundreds.
    assert attempts() - before <= 2.0 * 20 + 5
    received: list[str] = []

    async def handle(request: aiohttp.web.Request) -> aiohttp.web.Response:
        received.append(request.headers["ce-id"])
        return aiohttp.web.Response(status=200)

    app = aiohttp.web.Application()
    app.router.add_post("/", handle)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await eventually(
            lambda: set(received) == {f"d-{i}" for i in range(40)},
            timeout=30,
            what="every event once the subscriber is back",
        )
        assert (
            registry.get_sample_value("bridge_subscriber_unreachable", {"trigger": "default/down"})
            == 0
        )
    finally:
        await runner.cleanup()
