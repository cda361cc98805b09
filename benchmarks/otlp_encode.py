"""What a sampled event's spans cost bridge: recording them and encoding them for OTLP.

`python -m benchmarks.otlp_encode` makes the four spans of one traced delivery (server, publish,
process, POST, with bridge's attributes) many times, two ways, and prints CPU microseconds per
event for each step, medians of alternating runs:

- recording: the OpenTelemetry SDK's tracer (`TracerProvider.get_tracer().start_span`) vs
  bridge's own `Span` (bridge/telemetry/tracing.py), both ending in a span processor that keeps
  the `ReadableSpan`s;
- encoding those spans into an OTLP `ExportTraceServiceRequest` body, in batches of 512 as the
  batch processor exports them: the SDK's encoder (`encode_spans(...).SerializeToString()`) vs
  bridge's (`bridge/telemetry/otlp.py`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from bridge.config import TracingSettings
from bridge.telemetry.otlp import Encoder
from bridge.telemetry.tracing import Tracing

HEADERS = {
    "ce-id": "8f4f2f4c-6a2b-4a11-9f10-5e1d2b6c7d01",
    "ce-source": "acs.oss",
    "ce-type": "oss:ObjectCreated:PostObject",
    "ce-specversion": "1.0",
    "ce-subject": "acs:oss:cn-hangzhou:1234567890:knative/demo.data",
}
INCOMING = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Keep(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def one_delivery(tracing: Tracing) -> None:
    server = tracing.server_span("/default/eventbridge-default-broker", {}, "127.0.0.1:40000")
    headers = dict(HEADERS, traceparent=INCOMING)
    with tracing.producing("publish bridge.broker.default", server, "bridge.broker", headers):
        pass
    server.set_attribute("http.response.status_code", 202)
    server.end()
    consumer = tracing.consumer_span("bridge.trigger.default.t", "default/t", headers, 1)
    client = tracing.client_span(consumer, "http://event-display.default.svc.cluster.local/")
    tracing.end_client(client, 200, None)
    consumer.end()


def sdk_delivery(tracer: trace.Tracer) -> None:
    """The same four spans and attributes through the SDK's tracer (bridge before its own)."""
    attrs = {
        "cloudevents.event_id": HEADERS["ce-id"],
        "cloudevents.event_source": HEADERS["ce-source"],
        "cloudevents.event_type": HEADERS["ce-type"],
        "cloudevents.event_spec_version": "1.0",
        "cloudevents.event_subject": HEADERS["ce-subject"],
    }
    server = tracer.start_span(
        "POST /default/eventbridge-default-broker",
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": "POST", "url.path": "/", "network.peer.address": "x"},
    )
    ctx = trace.set_span_in_context(server)
    publish = tracer.start_span(
        "publish bridge.broker.default",
        context=ctx,
        kind=trace.SpanKind.PRODUCER,
        attributes={
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.destination.name": "bridge.broker",
            "messaging.message.id": HEADERS["ce-id"],
            **attrs,
        },
    )
    publish.end()
    server.set_attribute("http.response.status_code", 202)
    server.end()
    consumer = tracer.start_span(
        "process bridge.trigger.default.t",
        context=trace.set_span_in_context(publish),
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.destination.name": "bridge.trigger.default.t",
            "messaging.message.id": HEADERS["ce-id"],
            "bridge.trigger": "default/t",
            "bridge.attempt": 1,
            **attrs,
        },
    )
    client = tracer.start_span(
        "POST",
        context=trace.set_span_in_context(consumer),
        kind=trace.SpanKind.CLIENT,
        attributes={
            "http.request.method": "POST",
            "url.full": "http://event-display.default.svc.cluster.local/",
            "server.address": "event-display.default.svc.cluster.local",
            "server.port": 80,
        },
    )
    client.set_attribute("http.response.status_code", 200)
    client.end()
    consumer.end()


def cpu_us_per_event(step: Callable[[], None], events: int) -> float:
    started = time.process_time()
    for _ in range(events):
        step()
    return (time.process_time() - started) / events * 1e6


def encode_us_per_event(
    encode: Callable[[Sequence[ReadableSpan]], bytes], spans: list[ReadableSpan]
) -> float:
    started = time.process_time()
    for i in range(0, len(spans), 512):
        encode(spans[i : i + 512])
    return (time.process_time() - started) / (len(spans) / 4) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    results: dict[str, list[float]] = {}
    for _ in range(args.runs):
        keep_sdk = Keep()
        provider = TracerProvider()
        provider.add_span_processor(keep_sdk)
        tracer = provider.get_tracer("bridge")
        results.setdefault("record: SDK tracer", []).append(
            cpu_us_per_event(lambda t=tracer: sdk_delivery(t), args.events)  # type: ignore[misc]
        )
        keep_own = Keep()
        tracing = Tracing(TracingSettings(enabled=True), keep_own)
        tracing.start()
        results.setdefault("record: bridge Span", []).append(
            cpu_us_per_event(lambda t=tracing: one_delivery(t), args.events)  # type: ignore[misc]
        )
        spans = keep_own.spans
        results.setdefault("encode: SDK encoder", []).append(
            encode_us_per_event(lambda s: encode_spans(s).SerializeToString(), spans)
        )
        encoder = Encoder()
        results.setdefault("encode: bridge encoder", []).append(
            encode_us_per_event(encoder.encode, spans)
        )
    print(f"CPU us per traced event (4 spans), medians of {args.runs} alternating runs")
    for name, values in results.items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name:24} {statistics.median(values):8.1f}   runs: {runs}")


if __name__ == "__main__":
    main()
