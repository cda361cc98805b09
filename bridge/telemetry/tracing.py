"""OpenTelemetry tracing: one trace per event, from ingress through every delivery attempt.

Off by default. When off, bridge still carries the W3C `traceparent`/`tracestate` it received
(AMQP headers in between) and pays nothing else. When on, spans follow the OpenTelemetry
messaging, HTTP and CloudEvents conventions:

    POST /<ns>/<broker>            SERVER   ingress receive (continues an incoming traceparent)
      publish <exchange>           PRODUCER one per event; its context rides in AMQP headers
        process <queue>            CONSUMER one per delivery attempt
          POST                     CLIENT   the HTTP request; its context goes to the subscriber
          retry <queue>            PRODUCER a retry scheduled in a delay queue
          dead-letter <queue>      PRODUCER the dead letter
          publish reply            PRODUCER a reply event re-entering the broker

The ParentBased(TraceIdRatioBased) sampler keeps the subscriber's view consistent with the
sampling decision made at ingress. Spans are exported by OTLP (gRPC or HTTP) in batches.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
from collections.abc import Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bridge import __version__
from bridge.config import TracingSettings
from bridge.redact import redact_url

log = logging.getLogger("bridge.tracing")

_PROPAGATOR = TraceContextTextMapPropagator()
_LOW64 = (1 << 64) - 1
# W3C traceparent, the 55-character form (`\Z`: `$` would also let a trailing newline through).
TRACEPARENT_FORMAT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z")
# The last hex digit of the flags: odd means the sampled bit (0x01) is set.
_SAMPLED_LAST_HEX = frozenset("13579bdf")


def _exporter(settings: TracingSettings) -> SpanExporter:
    headers = {k: v.get_secret_value() for k, v in settings.headers.items()}
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        parts = urlsplit(settings.endpoint)
        return GrpcExporter(
            endpoint=settings.endpoint,
            insecure=parts.scheme != "https",
            headers=headers or None,
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    endpoint = settings.endpoint
    if urlsplit(endpoint).path in ("", "/"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    return HttpExporter(endpoint=endpoint, headers=headers or None)


def event_attributes(attrs: Mapping[str, Any]) -> dict[str, str]:
    """OpenTelemetry CloudEvents attributes of an event (header-form keys)."""
    out = {
        "cloudevents.event_id": str(attrs.get("ce-id", "")),
        "cloudevents.event_source": str(attrs.get("ce-source", "")),
        "cloudevents.event_type": str(attrs.get("ce-type", "")),
        "cloudevents.event_spec_version": str(attrs.get("ce-specversion", "")),
    }
    subject = attrs.get("ce-subject")
    if subject is not None:
        out["cloudevents.event_subject"] = str(subject)
    return out


class Tracing:
    """The tracer of one bridge process; `enabled` is False when tracing is off."""

    def __init__(
        self,
        settings: TracingSettings,
        processor: SpanProcessor | None = None,
    ) -> None:
        self.settings = settings
        self.enabled = settings.enabled
        self._processor = processor
        self._provider: TracerProvider | None = None
        self.tracer: trace.Tracer = trace.NoOpTracer()
        self._bound = round(settings.sample_ratio * (_LOW64 + 1))

    def start(self) -> None:
        if not self.enabled:
            return
        resource = Resource.create(
            {"service.name": self.settings.service_name, "service.version": __version__}
        )
        provider = TracerProvider(
            resource=resource,
            # The ratio decision is made by `sample_at_ingress`, before any span exists; the
            # SDK only ever sees events that are sampled.
            sampler=ParentBased(ALWAYS_ON),
        )
        processor = self._processor or BatchSpanProcessor(_exporter(self.settings))
        provider.add_span_processor(processor)
        self._provider = provider
        self.tracer = provider.get_tracer("bridge", __version__)
        log.info(
            "tracing on: OTLP %s to %s, sample ratio %s",
            self.settings.protocol,
            redact_url(self.settings.endpoint),
            self.settings.sample_ratio,
        )

    def shutdown(self, timeout: float) -> None:
        provider = self._provider
        if provider is None:
            return
        try:
            provider.force_flush(int(timeout * 1000))
            provider.shutdown()
        except Exception as exc:  # an exporter failing at exit must not block the drain
            log.warning("flushing traces failed: %s", exc)
        self._provider = None

    # -- sampling, decided once per event --
    def sample_at_ingress(self, traceparent: str | None) -> tuple[bool, str | None]:
        """Whether to record this event's trace, and the `traceparent` to carry when not.

        ParentBased(TraceIdRatioBased(ratio)): an incoming context's sampled flag decides;
        without one the trace id decides, as TraceIdRatioBased does. An event that is not
        sampled creates no span at all (nothing is allocated for it downstream either): it
        carries the incoming context, or a new one with the sampled flag off, so subscribers
        can join the decision.
        """
        if traceparent is not None and TRACEPARENT_FORMAT.match(traceparent):
            return traceparent[-1] in _SAMPLED_LAST_HEX, traceparent
        trace_id = random.getrandbits(128) or 1
        if (trace_id & _LOW64) < self._bound:
            return True, None
        return False, f"00-{trace_id:032x}-{random.getrandbits(64) or 1:016x}-00"

    @staticmethod
    def sampled(traceparent: object) -> bool:
        """Whether a carried `traceparent` says the trace is recorded."""
        return (
            isinstance(traceparent, str)
            and len(traceparent) == 55
            and traceparent[-1] in _SAMPLED_LAST_HEX
        )

    # -- context propagation --
    @staticmethod
    def extract(carrier: Mapping[str, Any]) -> otel_context.Context:
        """The parent context carried as W3C headers (HTTP request or AMQP headers)."""
        traceparent = carrier.get("traceparent")
        if traceparent is None:
            return otel_context.Context()
        values = {"traceparent": str(traceparent)}
        tracestate = carrier.get("tracestate")
        if tracestate is not None:
            values["tracestate"] = str(tracestate)
        return _PROPAGATOR.extract(values)

    @staticmethod
    def inject(span: Span, carrier: MutableMapping[str, Any]) -> None:
        """Write `span`'s context as `traceparent` (and `tracestate`) into `carrier`."""
        ctx = span.get_span_context()
        if not ctx.is_valid:
            return
        carrier["traceparent"] = (
            f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
        )
        if ctx.trace_state:
            carrier["tracestate"] = ctx.trace_state.to_header()
        else:
            carrier.pop("tracestate", None)

    # -- spans --
    def server_span(self, path: str, headers: Mapping[str, str], peer: str) -> Span:
        return self.tracer.start_span(
            f"POST {path}",
            context=self.extract(headers),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": "POST",
                "url.path": path,
                "network.peer.address": peer.rsplit(":", 1)[0],
            },
        )

    def producer_span(
        self,
        name: str,
        parent: Span | otel_context.Context | None,
        destination: str,
        attrs: Mapping[str, Any],
        operation: str = "publish",
    ) -> Span:
        ctx = trace.set_span_in_context(parent) if isinstance(parent, Span) else parent
        attributes: dict[str, Any] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "send",
            "messaging.operation.name": operation,
            "messaging.destination.name": destination,
            "messaging.message.id": str(attrs.get("ce-id", "")),
        }
        attributes.update(event_attributes(attrs))
        return self.tracer.start_span(
            name, context=ctx, kind=SpanKind.PRODUCER, attributes=attributes
        )

    def consumer_span(
        self, queue: str, trigger: str, attrs: Mapping[str, Any], attempt: int
    ) -> Span:
        attributes: dict[str, Any] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.destination.name": queue,
            "messaging.message.id": str(attrs.get("ce-id", "")),
            "bridge.trigger": trigger,
            "bridge.attempt": attempt,
        }
        attributes.update(event_attributes(attrs))
        return self.tracer.start_span(
            f"process {queue}",
            context=self.extract(attrs),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )

    def client_span(self, parent: Span, url: str) -> Span:
        parts = urlsplit(url)
        return self.tracer.start_span(
            "POST",
            context=trace.set_span_in_context(parent),
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": "POST",
                "url.full": redact_url(url),
                "server.address": parts.hostname or "",
                "server.port": parts.port or (443 if parts.scheme == "https" else 80),
            },
        )

    @staticmethod
    def end_client(span: Span, status: int, error: str | None) -> None:
        if status >= 0:
            span.set_attribute("http.response.status_code", status)
        if status < 0 or status >= 400:
            span.set_attribute("error.type", str(status) if status >= 0 else "no_response")
            span.set_status(Status(StatusCode.ERROR, error or f"HTTP {status}"))
        span.end()

    @staticmethod
    def fail(span: Span, message: str) -> None:
        span.set_status(Status(StatusCode.ERROR, message))

    def producing(
        self,
        name: str,
        parent: Span | None,
        destination: str,
        headers: MutableMapping[str, Any],
    ) -> AbstractContextManager[Span | None]:
        """Around one publish: a PRODUCER span whose context `headers` carry, ended (and
        marked failed on an error) when the block ends. Without a parent (the event is not
        traced) nothing is made: a shared do-nothing context is returned."""
        if parent is None:
            return _NOT_TRACED
        span = self.producer_span(name, parent, destination, headers)
        self.inject(span, headers)
        return _Producing(span)


class _Producing(AbstractContextManager[Span | None]):
    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    def __enter__(self) -> Span:
        return self._span

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        if error is not None:
            Tracing.fail(self._span, str(error))
        self._span.end()


_NOT_TRACED: AbstractContextManager[Span | None] = contextlib.nullcontext()


__all__ = ["Span", "Tracing", "event_attributes"]
