"""Tracing: one trace per event from ingress through every attempt, the dead letter and replies.

Spans are captured in memory (the SDK's InMemorySpanExporter) from a bridge running in process,
and, in one test, received by a real OTLP/HTTP endpoint to show they leave the process.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from bridge.config import TracingSettings
from bridge.telemetry.tracing import Tracing, normalize_traceparent, parse_traceparent
from tests.conftest import eventually, trigger

TYPE = "oss:ObjectCreated:PutObject"
FILTER = {"attributes": {"source": "acs.oss", "type": TYPE}}
INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING = f"00-{INCOMING_TRACE}-00f067aa0ba902b7-01"


def event(event_id: str, **extra: object) -> str:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "acs.oss",
            "type": TYPE,
            "data": {"key": "demo.data"},
            **extra,
        }
    )


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def spans_of(exporter: InMemorySpanExporter, trace_id: int) -> list:
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]


async def test_one_trace_from_ingress_to_dead_letter(bridge_factory, subscriber_factory, exporter):
    sub = await subscriber_factory(script=[(500, {}, b"busy")])
    running = await bridge_factory(
        triggers=[
            trigger("t", sub.url, filter=FILTER, delivery={"retry": 1, "backoffDelay": 0.05})
        ],
        tracing={"enabled": True, "sample_ratio": 1.0},
        span_processor=SimpleSpanProcessor(exporter),
    )
    status, _, _ = await running.post(
        "/",
        body=event(
            "traced-1", traceparent="00-11111111111111111111111111111111-2222222222222222-01"
        ),
        headers={"content-type": "application/json", "traceparent": INCOMING},
    )
    assert status == 202
    await eventually(lambda: len(sub.received) == 2, what="two attempts")
    trace_id = int(INCOMING_TRACE, 16)
    await eventually(
        lambda: any(s.name.startswith("dead-letter") for s in spans_of(exporter, trace_id)),
        what="the dead-letter span",
    )
    spans = spans_of(exporter, trace_id)
    by_kind: dict[SpanKind, list] = {}
    for span in spans:
        by_kind.setdefault(span.kind, []).append(span)
    (server,) = by_kind[SpanKind.SERVER]
    assert server.parent is not None
    assert server.parent.span_id == 0x00F067AA0BA902B7  # continues the incoming traceparent
    assert server.attributes["http.response.status_code"] == 202
    producers = {s.name.split(" ")[0]: s for s in by_kind[SpanKind.PRODUCER]}
    publish, retry, dead = producers["publish"], producers["retry"], producers["dead-letter"]
    assert publish.parent.span_id == server.context.span_id
    assert publish.attributes["cloudevents.event_id"] == "traced-1"
    assert publish.attributes["cloudevents.event_type"] == TYPE
    assert publish.attributes["messaging.system"] == "rabbitmq"
    consumers = sorted(by_kind[SpanKind.CONSUMER], key=lambda s: s.start_time)
    assert len(consumers) == 2
    assert consumers[0].parent.span_id == publish.context.span_id
    assert retry.parent.span_id == consumers[0].context.span_id
    assert consumers[1].parent.span_id == retry.context.span_id  # across the delay queue
    assert dead.parent.span_id == consumers[1].context.span_id
    clients = sorted(by_kind[SpanKind.CLIENT], key=lambda s: s.start_time)
    assert [c.attributes["http.response.status_code"] for c in clients] == [500, 500]
    assert [c.parent.span_id for c in clients] == [c.context.span_id for c in consumers]
    # The subscriber got W3C context whose parent is the CLIENT span of that attempt.
    for received, client in zip(sub.received, clients, strict=True):
        _, trace, parent, _ = received.headers["traceparent"].split("-")
        assert trace == INCOMING_TRACE
        assert int(parent, 16) == client.context.span_id
        # The event's own distributed-tracing extension is left untouched.
        assert received.headers["ce-traceparent"] == (
            "00-11111111111111111111111111111111-2222222222222222-01"
        )


async def test_reply_is_published_in_the_same_trace(bridge_factory, subscriber_factory, exporter):
    reply_headers = {
        "ce-specversion": "1.0",
        "ce-id": "reply-1",
        "ce-source": "replier",
        "ce-type": "bridge.test.reply",
        "content-type": "application/json",
    }
    first = await subscriber_factory(script=[(200, reply_headers, b'{"ok": true}')])
    second = await subscriber_factory()
    running = await bridge_factory(
        triggers=[
            trigger("first", first.url, filter=FILTER),
            trigger("second", second.url, filter={"attributes": {"type": "bridge.test.reply"}}),
        ],
        tracing={"enabled": True},
        span_processor=SimpleSpanProcessor(exporter),
    )
    status, _, _ = await running.post(
        "/", body=event("traced-2"), headers={"content-type": "application/json"}
    )
    assert status == 202
    await eventually(lambda: len(second.received) == 1, what="the reply to be delivered")
    (server,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    trace_id = server.context.trace_id
    _, trace, _, _ = second.received[0].headers["traceparent"].split("-")
    assert int(trace, 16) == trace_id  # the reply stays in the original event's trace
    await eventually(
        lambda: any(s.name == "publish reply" for s in spans_of(exporter, trace_id)),
        what="the reply span",
    )


async def test_untraced_context_still_propagates(bridge_factory, subscriber_factory):
    sub = await subscriber_factory()
    running = await bridge_factory(triggers=[trigger("t", sub.url, filter=FILTER)])
    status, _, _ = await running.post(
        "/",
        body=event("plain-1"),
        headers={"content-type": "application/json", "traceparent": INCOMING},
    )
    assert status == 202
    await eventually(lambda: len(sub.received) == 1, what="delivery")
    assert sub.received[0].headers["traceparent"] == INCOMING


async def test_sampling_ratio_zero_records_nothing(bridge_factory, subscriber_factory, exporter):
    sub = await subscriber_factory()
    running = await bridge_factory(
        triggers=[trigger("t", sub.url, filter=FILTER)],
        tracing={"enabled": True, "sample_ratio": 0.0},
        span_processor=SimpleSpanProcessor(exporter),
    )
    for i in range(5):
        status, _, _ = await running.post(
            "/", body=event(f"unsampled-{i}"), headers={"content-type": "application/json"}
        )
        assert status == 202
    await eventually(lambda: len(sub.received) == 5, what="deliveries")
    assert exporter.get_finished_spans() == ()
    # The subscriber still gets a context (not sampled) so it can join the decision.
    flags = [int(r.headers["traceparent"].rsplit("-", 1)[1], 16) for r in sub.received]
    assert [f & 0x01 for f in flags] == [0] * 5  # the sampled bit is off


async def test_spans_leave_the_process_over_otlp_http(bridge_factory, subscriber_factory):
    exported: list[ExportTraceServiceRequest] = []

    async def receive(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        exported.append(message)
        return web.Response(status=200, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        sub = await subscriber_factory()
        running = await bridge_factory(
            triggers=[trigger("t", sub.url, filter=FILTER)],
            tracing={
                "enabled": True,
                "protocol": "http/protobuf",
                "endpoint": f"http://127.0.0.1:{port}",
                "service_name": "bridge-under-test",
            },
        )
        status, _, _ = await running.post(
            "/", body=event("exported-1"), headers={"content-type": "application/json"}
        )
        assert status == 202
        await eventually(lambda: len(sub.received) == 1, what="delivery")
        await running.app.drain()  # flushes the batch exporter

        def names() -> set[str]:
            out = set()
            for message in exported:
                for resource_spans in message.resource_spans:
                    service = {
                        a.key: a.value.string_value for a in resource_spans.resource.attributes
                    }["service.name"]
                    assert service == "bridge-under-test"
                    for scope in resource_spans.scope_spans:
                        out |= {s.name for s in scope.spans}
            return out

        await eventually(lambda: "POST" in names(), what="the spans to be exported")
        assert any(n.startswith("process ") for n in names())
        assert any(n.startswith("publish ") for n in names())
    finally:
        await runner.cleanup()


async def test_metrics_change_as_events_flow(bridge_factory, subscriber_factory):
    sub = await subscriber_factory()
    running = await bridge_factory(triggers=[trigger("t", sub.url, filter=FILTER)])

    async def metric(name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels`."""
        async with aiohttp.ClientSession() as s, s.get(running.admin + "metrics") as r:
            text = await r.text()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total

    broker = "default/eventbridge-default-broker"
    before = await metric("bridge_events_received_total", broker=broker, outcome="accepted")
    for i in range(3):
        await running.post("/", body=event(f"m-{i}"), headers={"content-type": "application/json"})
    await eventually(lambda: len(sub.received) == 3, what="deliveries")
    await asyncio.sleep(0.1)
    after = await metric("bridge_events_received_total", broker=broker, outcome="accepted")
    assert after - before == 3
    assert await metric("bridge_deliveries_total", trigger="default/t", code="200") == 3
    assert await metric("bridge_dispatch_latency_seconds_count", trigger="default/t") == 3
    assert await metric("bridge_end_to_end_latency_seconds_count", trigger="default/t") == 3
    assert await metric("bridge_rabbitmq_connected") == 1


def test_sampling_decision_follows_parent_then_ratio():
    from bridge.config import TracingSettings
    from bridge.telemetry.tracing import Tracing

    tracing = Tracing(TracingSettings(enabled=True, sample_ratio=0.25))
    sampled_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    unsampled_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    assert tracing.sample_at_ingress(sampled_parent) == (True, sampled_parent)
    assert tracing.sample_at_ingress(unsampled_parent) == (False, unsampled_parent)
    decisions = [tracing.sample_at_ingress(None) for _ in range(8000)]
    share = sum(s for s, _ in decisions) / len(decisions)
    assert 0.22 < share < 0.28
    for sampled, carried in decisions[:200]:
        if sampled:
            assert carried is None  # the SERVER span makes the context
        else:
            assert carried is not None
            assert Tracing.sampled(carried) is False
            assert len(carried) == 55
    # A malformed incoming traceparent counts as none.
    assert tracing.sample_at_ingress("garbage")[1] != "garbage"
    never = Tracing(TracingSettings(enabled=True, sample_ratio=0.0))
    assert not any(never.sample_at_ingress(None)[0] for _ in range(1000))
    always = Tracing(TracingSettings(enabled=True, sample_ratio=1.0))
    assert all(always.sample_at_ingress(None)[0] for _ in range(1000))


def recording_tracing() -> tuple[Tracing, InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    tracing = Tracing(
        TracingSettings(enabled=True, service_name="bridge-test"), SimpleSpanProcessor(spans)
    )
    tracing.start()
    return tracing, spans


@pytest.mark.parametrize(
    "value",
    [
        None,
        17,
        "",
        "garbage",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  # upper case
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # 00 is 55 chars
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01extra",  # no dash after 55
    ],
)
def test_a_malformed_traceparent_names_no_parent(value: object) -> None:
    assert parse_traceparent(value) is None


def test_a_higher_traceparent_version_is_read_and_carried_as_version_00() -> None:
    future = "cc" + INCOMING[2:] + "-what-the-future-will-be-like"
    assert normalize_traceparent(future) == INCOMING
    assert normalize_traceparent("01" + INCOMING[2:]) == INCOMING
    ctx = parse_traceparent(future)
    assert ctx is not None
    assert ctx.trace_id == int(INCOMING_TRACE, 16)
    tracing = Tracing(TracingSettings(enabled=True, sample_ratio=0.0))
    assert tracing.sample_at_ingress(future) == (True, INCOMING)
    assert tracing.sample_at_ingress("ff" + INCOMING[2:])[1] != "ff" + INCOMING[2:]


def test_a_traceparent_names_its_remote_parent_and_state() -> None:
    ctx = parse_traceparent(INCOMING, "vendor=abc,other=1")
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id) == (int(INCOMING_TRACE, 16), 0x00F067AA0BA902B7)
    assert ctx.is_remote
    assert ctx.trace_flags.sampled
    assert ctx.trace_state.to_header() == "vendor=abc,other=1"
    unsampled = parse_traceparent(INCOMING[:-2] + "00")
    assert unsampled is not None
    assert not unsampled.trace_flags.sampled


def test_a_span_reaches_the_processor_once_when_it_ends_with_what_was_recorded() -> None:
    tracing, spans = recording_tracing()
    server = tracing.server_span(
        "/default/b", {"traceparent": INCOMING, "tracestate": "vendor=abc"}, "10.0.0.7:5555"
    )
    assert spans.get_finished_spans() == ()  # nothing before the end
    server.set_attribute("http.response.status_code", 202)
    server.add_event("queued", {"n": 1})
    server.set_status(Status(StatusCode.ERROR, "boom"))
    server.end()
    server.end()  # a second end hands nothing more
    server.set_attribute("late", "ignored")
    (done,) = spans.get_finished_spans()
    assert done.name == "POST /default/b"
    assert done.kind == SpanKind.SERVER
    assert done.parent is not None
    assert done.parent.span_id == 0x00F067AA0BA902B7
    assert done.context.trace_id == int(INCOMING_TRACE, 16)
    assert done.context.span_id not in (0, done.parent.span_id)
    assert done.context.trace_state.to_header() == "vendor=abc"
    assert done.attributes == {
        "http.request.method": "POST",
        "url.path": "/default/b",
        "network.peer.address": "10.0.0.7",
        "http.response.status_code": 202,
    }
    assert [(e.name, dict(e.attributes or {})) for e in done.events] == [("queued", {"n": 1})]
    assert done.status.status_code == StatusCode.ERROR
    assert done.status.description == "boom"
    assert done.resource.attributes["service.name"] == "bridge-test"
    assert done.instrumentation_scope is not None
    assert done.instrumentation_scope.name == "bridge"
    assert done.start_time is not None
    assert done.end_time is not None
    assert done.start_time <= done.end_time


def test_child_spans_continue_their_parent_and_a_root_starts_a_trace() -> None:
    tracing, spans = recording_tracing()
    root = tracing.server_span("/default/b", {}, "127.0.0.1:1")
    headers: dict[str, object] = {"ce-id": "e1"}
    with tracing.producing("publish x", root, "x", headers) as publish:
        assert publish is not None
    root.end()
    consumer = tracing.consumer_span("q", "t", headers, 1)
    client = tracing.client_span(consumer, "http://user:secret@sub.example:8080/path")
    tracing.end_client(client, 503, None)
    consumer.end()
    by_name = {s.name: s for s in spans.get_finished_spans()}
    server = by_name["POST /default/b"]
    assert server.parent is None
    trace_id = server.context.trace_id
    assert all(s.context.trace_id == trace_id for s in by_name.values())
    assert by_name["publish x"].parent.span_id == server.context.span_id
    # The consumer continues from the publish span whose context the headers carried.
    assert headers["traceparent"] == (
        f"00-{trace_id:032x}-{by_name['publish x'].context.span_id:016x}-01"
    )
    assert by_name["process q"].parent.span_id == by_name["publish x"].context.span_id
    assert by_name["process q"].parent.is_remote
    post = by_name["POST"]
    assert post.parent.span_id == by_name["process q"].context.span_id
    assert post.attributes["url.full"] == "http://user:***@sub.example:8080/path"
    assert post.attributes["http.response.status_code"] == 503
    assert post.status.status_code.name == "ERROR"


def test_spans_ended_after_shutdown_are_dropped_quietly() -> None:
    tracing, spans = recording_tracing()
    span = tracing.server_span("/default/b", {}, "127.0.0.1:1")
    tracing.shutdown(1.0)
    span.end()
    assert spans.get_finished_spans() == ()
