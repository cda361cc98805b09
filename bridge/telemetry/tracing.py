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
import time
from collections.abc import Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event as SpanEvent
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from bridge import __version__
from bridge.config import TracingSettings
from bridge.redact import redact_url
from bridge.telemetry.otlp import GrpcExporter, HttpExporter

log = logging.getLogger("bridge.tracing")

_LOW64 = (1 << 64) - 1
# The first 55 characters of a W3C traceparent (`normalize_traceparent` checks what follows).
_TRACEPARENT_HEAD = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
# The last hex digit of the flags: odd means the sampled bit (0x01) is set.
_SAMPLED_LAST_HEX = frozenset("13579bdf")


def _exporter(settings: TracingSettings) -> GrpcExporter | HttpExporter:
    headers = {k: v.get_secret_value() for k, v in settings.headers.items()}
    if settings.protocol == "grpc":
        return GrpcExporter(settings.endpoint, headers)
    return HttpExporter(settings.endpoint, headers)


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


_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)
_NO_LINKS: tuple[Any, ...] = ()


class Span:
    """One span of a sampled event, recorded by bridge itself and handed, ended, to the
    OpenTelemetry SDK's span processor as a `ReadableSpan` (batching and OTLP export stay the
    SDK's). The SDK's own tracer costs 5-7 times more CPU (a sampler, locks, attribute
    validation and context objects for every span; `python -m benchmarks.otlp_encode`): bridge
    only makes spans for events already sampled, with attributes it builds itself (strings and
    integers), so none of that is needed."""

    __slots__ = (
        "_attributes",
        "_context",
        "_ended",
        "_events",
        "_kind",
        "_name",
        "_parent",
        "_start",
        "_status",
        "_tracing",
    )

    def __init__(
        self,
        tracing: Tracing,
        name: str,
        kind: SpanKind,
        parent: SpanContext | None,
        attributes: dict[str, Any],
    ) -> None:
        self._tracing = tracing
        self._name = name
        self._kind = kind
        self._parent = parent
        if parent is None:
            self._context = SpanContext(_new_id(128), _new_id(64), False, _SAMPLED)
        else:
            self._context = SpanContext(
                parent.trace_id, _new_id(64), False, _SAMPLED, parent.trace_state
            )
        self._attributes = attributes
        self._events: list[SpanEvent] | None = None
        self._status = _UNSET
        self._ended = False
        self._start = time.time_ns()

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return not self._ended

    def set_attribute(self, key: str, value: str | int | float | bool) -> None:
        if not self._ended:
            self._attributes[key] = value

    def add_event(self, name: str, attributes: Mapping[str, str | int | float | bool]) -> None:
        if not self._ended:
            if self._events is None:
                self._events = []
            self._events.append(SpanEvent(name, dict(attributes)))

    def set_status(self, status: Status) -> None:
        if not self._ended:
            self._status = status

    def end(self) -> None:
        """Hand the finished span to the processor (once; later calls do nothing)."""
        if self._ended:
            return
        self._ended = True
        tracing = self._tracing
        processor = tracing.processor
        if processor is None:  # shut down
            return
        processor.on_end(
            ReadableSpan(
                self._name,
                self._context,
                self._parent,
                tracing.resource,
                self._attributes,
                self._events or (),
                _NO_LINKS,
                self._kind,
                None,
                self._status,
                self._start,
                time.time_ns(),
                tracing.scope,
            )
        )


def _new_id(bits: int) -> int:
    """A random, non-zero trace (128 bits) or span (64 bits) id."""
    return random.getrandbits(bits) or 1


def normalize_traceparent(value: object) -> str | None:
    """A W3C `traceparent` as bridge carries it (version 00, 55 characters), or None when the
    value is not valid trace context.

    As the W3C Trace Context specification says: version `ff` is invalid; version 00 is exactly
    55 characters; a higher version is read as version 00 when its first 55 characters have that
    form and whatever follows starts with `-` (and is then sent on as version 00, the version
    bridge knows); an all-zero trace id or parent id is invalid.
    """
    if not isinstance(value, str) or _TRACEPARENT_HEAD.match(value) is None:
        return None
    version = value[:2]
    if version == "00":
        if len(value) != 55:
            return None
    elif version == "ff" or (len(value) > 55 and value[55] != "-"):
        return None
    if value[3:35] == _ZERO_TRACE or value[36:52] == _ZERO_SPAN:
        return None
    return value if version == "00" else "00" + value[2:55]


def parse_traceparent(value: object, tracestate: object = None) -> SpanContext | None:
    """The remote parent a W3C `traceparent` names (with its `tracestate`), or None when the
    value is absent or not valid trace context (the event then starts a new trace)."""
    carried = normalize_traceparent(value)
    if carried is None:
        return None
    state = TraceState.from_header([tracestate]) if isinstance(tracestate, str) else None
    return SpanContext(
        int(carried[3:35], 16),
        int(carried[36:52], 16),
        True,
        TraceFlags(int(carried[53:55], 16)),
        state,
    )


class Tracing:
    """The tracer of one bridge process; `enabled` is False when tracing is off."""

    def __init__(
        self,
        settings: TracingSettings,
        processor: SpanProcessor | None = None,
    ) -> None:
        self.settings = settings
        self.enabled = settings.enabled
        self._given = processor
        self.processor: SpanProcessor | None = None  # set while tracing runs
        self._exporter: GrpcExporter | HttpExporter | None = None  # bridge's own, when made
        self.resource = Resource.create(
            {"service.name": settings.service_name, "service.version": __version__}
        )
        self.scope = InstrumentationScope("bridge", __version__)
        self._bound = round(settings.sample_ratio * (_LOW64 + 1))

    def start(self) -> None:
        if not self.enabled:
            return
        # The ratio decision is made by `sample_at_ingress`, before any span exists: spans
        # are only made for sampled events, so every span is recorded and exported.
        if self._given is None:
            self._exporter = _exporter(self.settings)
            self.processor = BatchSpanProcessor(self._exporter)
        else:
            self.processor = self._given
        log.info(
            "tracing on: OTLP %s to %s, sample ratio %s",
            self.settings.protocol,
            redact_url(self.settings.endpoint),
            self.settings.sample_ratio,
        )

    def shutdown(self, timeout: float) -> None:
        """Export what is queued, for at most `timeout` seconds (a collector that is down or
        slow makes the rest be dropped, not the drain wait), then stop exporting."""
        processor = self.processor
        if processor is None:
            return
        self.processor = None
        if self._exporter is not None:
            self._exporter.stop_at = time.monotonic() + timeout
        try:
            processor.force_flush(int(timeout * 1000))
            processor.shutdown()
        except Exception as exc:  # an exporter failing at exit must not block the drain
            log.warning("flushing traces failed: %s", exc)

    # -- sampling, decided once per event --
    def sample_at_ingress(self, traceparent: str | None) -> tuple[bool, str | None]:
        """Whether to record this event's trace, and the `traceparent` to carry when not.

        ParentBased(TraceIdRatioBased(ratio)): an incoming context's sampled flag decides;
        without one the trace id decides, as TraceIdRatioBased does. An event that is not
        sampled creates no span at all (nothing is allocated for it downstream either): it
        carries the incoming context, or a new one with the sampled flag off, so subscribers
        can join the decision.
        """
        carried = normalize_traceparent(traceparent)
        if carried is not None:
            return carried[-1] in _SAMPLED_LAST_HEX, carried
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
    def extract(carrier: Mapping[str, Any]) -> SpanContext | None:
        """The parent context carried as W3C headers (HTTP request or AMQP headers)."""
        return parse_traceparent(carrier.get("traceparent"), carrier.get("tracestate"))

    @staticmethod
    def inject(span: Span, carrier: MutableMapping[str, Any]) -> None:
        """Write `span`'s context as `traceparent` (and `tracestate`) into `carrier`."""
        ctx = span.get_span_context()
        carrier["traceparent"] = (
            f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
        )
        if ctx.trace_state:
            carrier["tracestate"] = ctx.trace_state.to_header()
        else:
            carrier.pop("tracestate", None)

    # -- spans --
    def server_span(self, path: str, headers: Mapping[str, str], peer: str) -> Span:
        attributes: dict[str, Any] = {
            "http.request.method": "POST",
            "url.path": path,
            "network.peer.address": peer.rsplit(":", 1)[0],
        }
        return Span(self, f"POST {path}", SpanKind.SERVER, self.extract(headers), attributes)

    def producer_span(
        self,
        name: str,
        parent: Span | SpanContext | None,
        destination: str,
        attrs: Mapping[str, Any],
        operation: str = "publish",
    ) -> Span:
        ctx = parent.get_span_context() if isinstance(parent, Span) else parent
        attributes: dict[str, Any] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "send",
            "messaging.operation.name": operation,
            "messaging.destination.name": destination,
            "messaging.message.id": str(attrs.get("ce-id", "")),
        }
        attributes.update(event_attributes(attrs))
        return Span(self, name, SpanKind.PRODUCER, ctx, attributes)

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
        return Span(self, f"process {queue}", SpanKind.CONSUMER, self.extract(attrs), attributes)

    def client_span(self, parent: Span, url: str) -> Span:
        parts = urlsplit(url)
        attributes: dict[str, Any] = {
            "http.request.method": "POST",
            "url.full": redact_url(url),
            "server.address": parts.hostname or "",
            "server.port": parts.port or (443 if parts.scheme == "https" else 80),
        }
        return Span(self, "POST", SpanKind.CLIENT, parent.get_span_context(), attributes)

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
