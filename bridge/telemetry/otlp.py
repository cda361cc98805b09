"""OTLP trace export: the request body written straight to protobuf bytes, and the two transports.

The OpenTelemetry SDK's encoder (`opentelemetry-exporter-otlp-proto-common`) builds a protobuf
object for every span, attribute and value before serialising them; on this machine kind it costs
about 58 us per bridge span, nine tenths of what a sampled event costs bridge (side by side in
`python -m benchmarks.otlp_encode`). `encode_request` writes the same `ExportTraceServiceRequest`
(opentelemetry-proto `collector/trace/v1`) directly as wire-format bytes, with the key/value pairs
that repeat (methods, queue and trigger names, event types) encoded once and reused. It only
writes: no byte from a peer is ever parsed here. `tests/test_otlp.py` checks, for generated spans,
that the official protobuf classes parse these bytes into the message the SDK's encoder builds.

The transports send those bytes as the SDK's exporters do (OTLP/HTTP: POST
`application/x-protobuf`; OTLP/gRPC: the `TraceService/Export` method), retrying what the OTLP
specification says is retryable with exponential backoff, within a deadline per batch.
"""

from __future__ import annotations

import logging
import random
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from bridge.redact import redact_url

log = logging.getLogger("bridge.tracing")

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
CONTENT_TYPE = "application/x-protobuf"
# OTLP/HTTP answers worth retrying (the OTLP specification, "Retryable Response Codes").
RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
# A span's `flags`: the HAS_IS_REMOTE bit always, IS_REMOTE when the parent came from elsewhere.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_CACHE_MAX = 4096  # pairs kept; the cache starts afresh when full
_CACHED_LENGTH = 256  # longer strings (a long subject, a URL) are encoded each time

_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack
_pack_double = struct.Struct("<d").pack
_SMALL = [bytes((n,)) for n in range(128)]


def _varint(n: int) -> bytes:
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (`tag` already holds the field number and wire type 2)."""
    n = len(payload)
    return (
        (_SMALL[tag] if tag < 128 else _varint(tag))
        + (_SMALL[n] if n < 128 else _varint(n))
        + payload
    )


# Tags: (field number << 3) | wire type (0 varint, 1 fixed64, 2 length-delimited, 5 fixed32).
def _tag(number: int, wire: int) -> int:
    return (number << 3) | wire


def _any_value(value: Any) -> bytes:
    """The AnyValue message of one attribute value (as the SDK's encoder maps Python types)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return _field(0x0A, value.encode())
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _field(0x3A, value)
    if isinstance(value, Sequence):
        return _field(0x2A, b"".join(_field(0x0A, _any_value(v)) for v in value))
    if isinstance(value, Mapping):
        pairs = b"".join(_field(0x0A, _key_value(str(k), v)) for k, v in value.items())
        return _field(0x32, pairs)
    raise TypeError(f"an attribute value of type {type(value).__name__} cannot be exported")


def _key_value(key: str, value: Any) -> bytes:
    return (_field(0x0A, key.encode()) if key else b"") + _field(0x12, _any_value(value))


class _Pairs:
    """Encoded KeyValue fields, each short string or integer pair encoded once and then reused
    (at most `_CACHE_MAX` pairs of at most `_CACHED_LENGTH` characters: bounded memory whatever
    the events carry)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, str, type, object], bytes] = {}

    def attributes(self, number: int, attributes: Mapping[str, Any] | None) -> bytes:
        """`attributes` as repeated KeyValue field `number`."""
        if not attributes:
            return b""
        cache = self._cache
        tag = _tag(number, 2)
        parts = []
        for key, value in attributes.items():
            kind = type(value)
            if kind is int or kind is bool or (kind is str and len(value) <= _CACHED_LENGTH):
                slot = (tag, key, kind, value)
                encoded = cache.get(slot)
                if encoded is None:
                    if len(cache) >= _CACHE_MAX:
                        cache.clear()
                    encoded = cache[slot] = _field(tag, _key_value(key, value))
                parts.append(encoded)
            else:
                parts.append(_field(tag, _key_value(key, value)))
        return b"".join(parts)


class Encoder:
    """Writes ExportTraceServiceRequest bodies; keeps its caches between batches (one per
    exporter: the export thread is its only user)."""

    def __init__(self) -> None:
        self._pairs = _Pairs()
        self._headers: dict[tuple[int, int], tuple[bytes, bytes]] = {}

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        # Resource -> scope -> spans, in the order they first appear (as the SDK groups them).
        groups: dict[tuple[int, int], list[bytes]] = {}
        owners: dict[tuple[int, int], tuple[Any, Any]] = {}
        for span in spans:
            key = (id(span.resource), id(span.instrumentation_scope))
            group = groups.get(key)
            if group is None:
                group = groups[key] = []
                owners[key] = (span.resource, span.instrumentation_scope)
            group.append(self._span(span))
        by_resource: dict[int, list[bytes]] = {}
        resources: dict[int, Any] = {}
        for key, encoded in groups.items():
            resource, scope = owners[key]
            scope_spans = self._scope(scope) + b"".join(_field(0x12, s) for s in encoded)
            if scope is not None and scope.schema_url:
                scope_spans += _field(0x1A, scope.schema_url.encode())
            by_resource.setdefault(key[0], []).append(_field(0x12, scope_spans))
            resources[key[0]] = resource
        out = []
        for rid, scope_parts in by_resource.items():
            resource = resources[rid]
            body = _field(0x0A, self._pairs.attributes(1, resource.attributes))
            body += b"".join(scope_parts)
            if resource.schema_url:
                body += _field(0x1A, resource.schema_url.encode())
            out.append(_field(0x0A, body))
        return b"".join(out)

    def _scope(self, scope: Any) -> bytes:
        if scope is None:
            return b"\x0a\x00"
        body = b""
        if scope.name:
            body += _field(0x0A, scope.name.encode())
        if scope.version:
            body += _field(0x12, scope.version.encode())
        body += self._pairs.attributes(3, scope.attributes)
        return _field(0x0A, body)

    def _span(self, span: ReadableSpan) -> bytes:
        ctx = span.context
        assert ctx is not None  # every ended span has its context
        parent = span.parent
        parts = [
            b"\x0a\x10" + ctx.trace_id.to_bytes(16, "big"),
            b"\x12\x08" + ctx.span_id.to_bytes(8, "big"),
        ]
        state = ctx.trace_state
        if state:
            parts.append(_field(0x1A, ",".join(f"{k}={v}" for k, v in state.items()).encode()))
        if parent is not None:
            parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        parts.append(_field(0x2A, span.name.encode()))
        parts.append(b"\x30" + _SMALL[span.kind.value + 1])
        if span.start_time:
            parts.append(b"\x39" + _pack_fixed64(span.start_time))
        if span.end_time:
            parts.append(b"\x41" + _pack_fixed64(span.end_time))
        parts.append(self._pairs.attributes(9, span.attributes))
        if span.dropped_attributes:
            parts.append(b"\x50" + _varint(span.dropped_attributes))
        for event in span.events:
            body = b"\x09" + _pack_fixed64(event.timestamp) if event.timestamp else b""
            if event.name:
                body += _field(0x12, event.name.encode())
            body += self._pairs.attributes(3, event.attributes)
            if event.dropped_attributes:
                body += b"\x20" + _varint(event.dropped_attributes)
            parts.append(_field(0x5A, body))
        if span.dropped_events:
            parts.append(b"\x60" + _varint(span.dropped_events))
        for link in span.links:
            body = (
                b"\x0a\x10"
                + link.context.trace_id.to_bytes(16, "big")
                + b"\x12\x08"
                + link.context.span_id.to_bytes(8, "big")
            )
            body += self._pairs.attributes(4, link.attributes)
            if link.dropped_attributes:
                body += b"\x28" + _varint(link.dropped_attributes)
            flags = _HAS_IS_REMOTE | (_IS_REMOTE if link.context.is_remote else 0)
            body += b"\x35" + _pack_fixed32(flags)
            parts.append(_field(0x6A, body))
        if span.dropped_links:
            parts.append(b"\x70" + _varint(span.dropped_links))
        status = span.status
        body = b""
        if status.description:
            body += _field(0x12, status.description.encode())
        if status.status_code.value:
            body += b"\x18" + _SMALL[status.status_code.value]
        parts.append(_field(0x7A, body))
        remote = parent is not None and parent.is_remote
        parts.append(b"\x85\x01" + _pack_fixed32(_HAS_IS_REMOTE | (_IS_REMOTE if remote else 0)))
        return b"".join(parts)


def encode_request(spans: Sequence[ReadableSpan]) -> bytes:
    """One ExportTraceServiceRequest holding `spans` (a fresh encoder: no cache kept)."""
    return Encoder().encode(spans)


# -- transports --


class _Exporter(SpanExporter):
    """Encode a batch once, send it, retry what is retryable until the batch's deadline."""

    def __init__(self, endpoint: str, timeout: float, backoff: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout  # for one batch, its retries included
        self.backoff = backoff  # the first pause before a retry; doubled each time
        self._encoder = Encoder()
        self._stopped = threading.Event()
        self._warned = 0.0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._stopped.is_set():
            return SpanExportResult.FAILURE
        try:
            body = self._encoder.encode(spans)
        except Exception as exc:  # a value of an unknown type: drop the batch, say so once
            self._warn(f"encoding {len(spans)} spans failed: {exc}")
            return SpanExportResult.FAILURE
        deadline = time.monotonic() + self.timeout
        delay = self.backoff
        while True:
            retry, problem = self._send(body, max(0.1, deadline - time.monotonic()))
            if problem is None:
                return SpanExportResult.SUCCESS
            pause = retry if retry is not None else delay * random.uniform(0.8, 1.2)
            if retry is None and not self._retryable(problem):
                pause = -1.0
            if pause < 0 or time.monotonic() + pause > deadline or self._stopped.wait(pause):
                self._warn(
                    f"exporting {len(spans)} spans to {redact_url(self.endpoint)} failed: {problem}"
                )
                return SpanExportResult.FAILURE
            delay *= 2

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned >= 60.0:  # a collector that is down: one line a minute
            self._warned = now
            log.warning("%s", message)

    def _send(self, body: bytes, timeout: float) -> tuple[float | None, str | None]:
        """Send once: (seconds the peer asked to wait or None, the problem or None)."""
        raise NotImplementedError

    def _retryable(self, problem: str) -> bool:
        raise NotImplementedError

    def shutdown(self) -> None:
        self._stopped.set()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class HttpExporter(_Exporter):
    """OTLP/HTTP with protobuf bodies (`requests`, which the OpenTelemetry exporter brings)."""

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str],
        timeout: float = 10.0,
        backoff: float = 1.0,
    ) -> None:
        import requests

        if urlsplit(endpoint).path in ("", "/"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        super().__init__(endpoint, timeout, backoff)
        self._session = requests.Session()
        self._session.headers.update({**headers, "Content-Type": CONTENT_TYPE})
        self._transient: tuple[type[BaseException], ...] = (
            requests.ConnectionError,
            requests.Timeout,
        )

    def _send(self, body: bytes, timeout: float) -> tuple[float | None, str | None]:
        try:
            answer = self._session.post(self.endpoint, data=body, timeout=timeout)
        except self._transient as exc:
            return None, f"retryable: {type(exc).__name__}"
        except Exception as exc:
            return None, f"{type(exc).__name__}"
        if answer.ok:
            return None, None
        if answer.status_code not in RETRYABLE_HTTP:
            return None, f"HTTP {answer.status_code}"
        after = answer.headers.get("Retry-After", "")
        wait = float(after) if after.isdigit() else None
        return wait, f"retryable: HTTP {answer.status_code}"

    def _retryable(self, problem: str) -> bool:
        return problem.startswith("retryable")

    def shutdown(self) -> None:
        super().shutdown()
        self._session.close()


class GrpcExporter(_Exporter):
    """OTLP/gRPC: the TraceService/Export call with the encoded request as its message."""

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str],
        timeout: float = 10.0,
        backoff: float = 1.0,
    ) -> None:
        import grpc

        super().__init__(endpoint, timeout, backoff)
        parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        target = parts.netloc or parts.path
        if parts.scheme == "https":
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials())
        else:
            self._channel = grpc.insecure_channel(target)
        identity: Callable[[bytes], bytes] = bytes
        self._call = self._channel.unary_unary(
            EXPORT_METHOD, request_serializer=identity, response_deserializer=identity
        )
        self._metadata = tuple((k.lower(), v) for k, v in headers.items())
        self._grpc = grpc
        # The OTLP specification's retryable status codes.
        self._retry_codes = {
            grpc.StatusCode.CANCELLED,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.ABORTED,
            grpc.StatusCode.OUT_OF_RANGE,
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DATA_LOSS,
        }

    def _send(self, body: bytes, timeout: float) -> tuple[float | None, str | None]:
        try:
            self._call(body, timeout=timeout, metadata=self._metadata)
        except self._grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            name = code.name if code is not None else "UNKNOWN"
            prefix = "retryable: " if code in self._retry_codes else ""
            return None, f"{prefix}gRPC {name}"
        return None, None

    def _retryable(self, problem: str) -> bool:
        return problem.startswith("retryable")

    def shutdown(self) -> None:
        super().shutdown()
        self._channel.close()


__all__ = ["Encoder", "GrpcExporter", "HttpExporter", "encode_request"]
