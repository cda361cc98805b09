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

import gzip
import logging
import os
import random
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

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
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
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
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"the integer {value} is outside int64")
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
    the events carry). A pair that cannot be encoded (an integer outside int64, a string that is
    not valid Unicode, a value of an unknown type) is left out, as the SDK's encoder does, and
    counted in `dropped` with the last reason in `problem`."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, str, type, object], bytes] = {}
        self.dropped = 0
        self.problem = ""

    def attributes(self, number: int, attributes: Mapping[str, Any] | None) -> bytes:
        """`attributes` as repeated KeyValue field `number`."""
        if not attributes:
            return b""
        cache = self._cache
        tag = _tag(number, 2)
        parts = []
        for key, value in attributes.items():
            kind = type(value)
            cacheable = (
                kind is int or kind is bool or (kind is str and len(value) <= _CACHED_LENGTH)
            )
            slot = (tag, key, kind, value)
            encoded = cache.get(slot) if cacheable else None
            if encoded is None:
                try:
                    encoded = _field(tag, _key_value(key, value))
                except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
                    self.dropped += 1
                    self.problem = f"attribute {key[:100]!r} left out: {exc}"
                    continue
                if cacheable:
                    if len(cache) >= _CACHE_MAX:
                        cache.clear()
                    cache[slot] = encoded
            parts.append(encoded)
        return b"".join(parts)


def _text(value: str) -> bytes:
    """A name or message bridge writes: UTF-8, a lone surrogate replaced (never a failed batch)."""
    return value.encode("utf-8", "replace")


class Encoder:
    """Writes ExportTraceServiceRequest bodies; keeps its caches between batches (one per
    exporter: the export thread is its only user)."""

    def __init__(self) -> None:
        self._pairs = _Pairs()
        self._headers: dict[tuple[int, int], tuple[bytes, bytes]] = {}

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        # Resource -> scope -> spans, in the order they first appear; equal resources (and
        # scopes) are one group, as the SDK groups them, compared once per distinct object.
        groups: dict[tuple[int, int], list[bytes]] = {}
        owners: dict[tuple[int, int], tuple[Any, Any]] = {}
        resource_of: dict[int, Any] = {}
        scope_of: dict[int, Any] = {}
        for span in spans:
            resource = _representative(span.resource, resource_of)
            scope = _representative(span.instrumentation_scope or None, scope_of)
            key = (id(resource), id(scope))
            group = groups.get(key)
            if group is None:
                group = groups[key] = []
                owners[key] = (resource, scope)
            group.append(self._span(span))
        by_resource: dict[int, list[bytes]] = {}
        resources: dict[int, Any] = {}
        for key, encoded in groups.items():
            resource, scope = owners[key]
            scope_spans = self._scope(scope) + b"".join(_field(0x12, s) for s in encoded)
            if scope is not None and scope.schema_url:
                scope_spans += _field(0x1A, _text(scope.schema_url))
            by_resource.setdefault(key[0], []).append(_field(0x12, scope_spans))
            resources[key[0]] = resource
        out = []
        for rid, scope_parts in by_resource.items():
            resource = resources[rid]
            body = _field(0x0A, self._pairs.attributes(1, resource.attributes))
            body += b"".join(scope_parts)
            if resource.schema_url:
                body += _field(0x1A, _text(resource.schema_url))
            out.append(_field(0x0A, body))
        return b"".join(out)

    @property
    def dropped(self) -> int:
        """Attributes left out so far (values that cannot be encoded)."""
        return self._pairs.dropped

    @property
    def problem(self) -> str:
        return self._pairs.problem

    def _scope(self, scope: Any) -> bytes:
        if scope is None:
            return b"\x0a\x00"
        body = b""
        if scope.name:
            body += _field(0x0A, _text(scope.name))
        if scope.version:
            body += _field(0x12, _text(scope.version))
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
            parts.append(_field(0x1A, _text(",".join(f"{k}={v}" for k, v in state.items()))))
        if parent is not None:
            parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        parts.append(_field(0x2A, _text(span.name)))
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
                body += _field(0x12, _text(event.name))
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
            body += _field(0x12, _text(status.description))
        if status.status_code.value:
            body += b"\x18" + _SMALL[status.status_code.value]
        parts.append(_field(0x7A, body))
        remote = parent is not None and parent.is_remote
        parts.append(b"\x85\x01" + _pack_fixed32(_HAS_IS_REMOTE | (_IS_REMOTE if remote else 0)))
        return b"".join(parts)


def _representative(owner: Any, seen: dict[int, Any]) -> Any:
    """The first object of this batch equal to `owner` (a resource or scope)."""
    found = seen.get(id(owner))
    if found is None:
        found = next((known for known in seen.values() if known == owner), owner)
        seen[id(owner)] = found
    return found


def encode_request(spans: Sequence[ReadableSpan]) -> bytes:
    """One ExportTraceServiceRequest holding `spans` (a fresh encoder: no cache kept)."""
    return Encoder().encode(spans)


# -- transports --

# Retryable gRPC codes (the OTLP specification); RESOURCE_EXHAUSTED only when the server sends
# RetryInfo (the delay it asks for).
_RETRYABLE_GRPC = frozenset(
    {"CANCELLED", "DEADLINE_EXCEEDED", "ABORTED", "OUT_OF_RANGE", "UNAVAILABLE", "DATA_LOSS"}
)


def otlp_env(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The standard exporter variable `OTEL_EXPORTER_OTLP_TRACES_<name>`, else
    `OTEL_EXPORTER_OTLP_<name>` (as the OpenTelemetry SDK's exporters read them)."""
    env = os.environ if environ is None else environ
    return env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or env.get(f"OTEL_EXPORTER_OTLP_{name}")


def env_headers(value: str) -> dict[str, str]:
    """`OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs separated by commas, values
    percent-encoded (W3C Baggage form); a malformed pair is skipped."""
    headers = {}
    for pair in value.split(","):
        key, sep, raw = pair.partition("=")
        if sep and key.strip():
            headers[key.strip().lower()] = unquote(raw.strip())
    return headers


@dataclass(frozen=True)
class Sent:
    """What one attempt to send a batch gave."""

    problem: str | None = None  # None: the collector took it
    retryable: bool = False
    wait: float | None = None  # the pause the collector asked for (Retry-After, RetryInfo)


SENT = Sent()


class _Exporter(SpanExporter):
    """Encode a batch once, send it, retry what is retryable until the batch's deadline."""

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str],
        timeout: float,
        backoff: float,
        environ: Mapping[str, str] | None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout  # for one batch, its retries included
        self.backoff = backoff  # the first pause before a retry; doubled each time
        # The configured headers, else those of the standard variable (as the SDK's exporters).
        self.headers = dict(headers) or env_headers(otlp_env("HEADERS", environ) or "")
        self.gzip = (otlp_env("COMPRESSION", environ) or "").strip().lower() == "gzip"
        # Set when the process drains: no batch is sent, nor waited for, past this moment
        # (time.monotonic()), so the drain's telemetry budget holds with a collector down.
        self.stop_at: float | None = None
        self._encoder = Encoder()
        self._stopped = threading.Event()
        self._warned = 0.0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._stopped.is_set():
            return SpanExportResult.FAILURE
        dropped = self._encoder.dropped
        try:
            body = self._encoder.encode(spans)
        except Exception as exc:  # not expected: say so, never raise into the SDK's thread
            self._warn(f"encoding {len(spans)} spans failed: {exc}")
            return SpanExportResult.FAILURE
        if self._encoder.dropped != dropped:
            self._warn(
                f"{self._encoder.dropped - dropped} span attributes were left out of an export "
                f"(the last: {self._encoder.problem})"
            )
        deadline = time.monotonic() + self.timeout
        delay = self.backoff
        while True:
            if self.stop_at is not None:  # read each time: the drain may begin meanwhile
                deadline = min(deadline, self.stop_at)
            left = deadline - time.monotonic()
            sent = self._send(body, left) if left > 0 else Sent("no time left before the drain")
            if sent.problem is None:
                return SpanExportResult.SUCCESS
            pause = max(sent.wait or 0.0, delay * random.uniform(0.8, 1.2))
            if (
                not sent.retryable
                or time.monotonic() + pause > deadline
                or self._stopped.wait(pause)
            ):
                self._warn(
                    f"exporting {len(spans)} spans to {redact_url(self.endpoint)} failed: "
                    f"{sent.problem}"
                )
                return SpanExportResult.FAILURE
            delay *= 2

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned >= 60.0:  # a collector that is down: one line a minute
            self._warned = now
            log.warning("%s", message)

    def _send(self, body: bytes, timeout: float) -> Sent:
        """Send once, within `timeout` seconds."""
        raise NotImplementedError

    def shutdown(self) -> None:
        self._stopped.set()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


class HttpExporter(_Exporter):
    """OTLP/HTTP with protobuf bodies, by `requests`. Besides the configured endpoint and
    headers it reads the standard variables the SDK's exporter reads: `..._CERTIFICATE` (a CA
    bundle), `..._CLIENT_CERTIFICATE` and `..._CLIENT_KEY` (mutual TLS), `..._COMPRESSION`
    (`gzip`), and `..._HEADERS` when no header is configured."""

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str],
        timeout: float = 10.0,
        backoff: float = 1.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        import requests

        if urlsplit(endpoint).path in ("", "/"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        super().__init__(endpoint, headers, timeout, backoff, environ)
        session = requests.Session()
        session.headers.update({**self.headers, "Content-Type": CONTENT_TYPE})
        if self.gzip:
            session.headers["Content-Encoding"] = "gzip"
        # Per request, not on the session: requests lets REQUESTS_CA_BUNDLE override a
        # session's `verify`.
        self._verify: str | bool = otlp_env("CERTIFICATE", environ) or True
        cert, key = otlp_env("CLIENT_CERTIFICATE", environ), otlp_env("CLIENT_KEY", environ)
        self._cert: str | tuple[str, str] | None = (cert, key) if cert and key else cert
        self._session = session
        self._transient: tuple[type[BaseException], ...] = (
            requests.ConnectionError,
            requests.Timeout,
        )

    def _send(self, body: bytes, timeout: float) -> Sent:
        data = gzip.compress(body) if self.gzip else body
        try:
            answer = self._session.post(
                self.endpoint, data=data, timeout=timeout, verify=self._verify, cert=self._cert
            )
        except self._transient as exc:
            return Sent(type(exc).__name__, retryable=True)
        except Exception as exc:
            return Sent(type(exc).__name__)
        if answer.ok:
            return SENT
        retryable = answer.status_code in RETRYABLE_HTTP
        after = answer.headers.get("Retry-After", "").strip()
        wait = float(after) if retryable and after.isdigit() else None
        return Sent(f"HTTP {answer.status_code}", retryable, wait)

    def shutdown(self) -> None:
        super().shutdown()
        self._session.close()


class GrpcExporter(_Exporter):
    """OTLP/gRPC: the TraceService/Export call with the encoded request as its message, by
    grpcio. TLS when the endpoint is `https://`, with the standard variables `..._CERTIFICATE`,
    `..._CLIENT_CERTIFICATE`, `..._CLIENT_KEY`; `..._COMPRESSION` (`gzip`) and `..._HEADERS`
    (when no header is configured) as for HTTP. RetryInfo from the server sets the pause."""

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str],
        timeout: float = 10.0,
        backoff: float = 1.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        import grpc

        super().__init__(endpoint, headers, timeout, backoff, environ)
        parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        target = parts.netloc or parts.path
        compression = grpc.Compression.Gzip if self.gzip else None
        if parts.scheme == "https":
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(otlp_env("CERTIFICATE", environ)),
                private_key=_read(otlp_env("CLIENT_KEY", environ)),
                certificate_chain=_read(otlp_env("CLIENT_CERTIFICATE", environ)),
            )
            self._channel = grpc.secure_channel(target, credentials, compression=compression)
        else:
            self._channel = grpc.insecure_channel(target, compression=compression)
        identity: Callable[[bytes], bytes] = bytes
        self._call = self._channel.unary_unary(
            EXPORT_METHOD, request_serializer=identity, response_deserializer=identity
        )
        self._metadata = tuple((k.lower(), v) for k, v in self.headers.items())
        self._error: type[BaseException] = grpc.RpcError

    def _send(self, body: bytes, timeout: float) -> Sent:
        try:
            self._call(body, timeout=timeout, metadata=self._metadata)
        except self._error as exc:
            code = exc.code() if hasattr(exc, "code") else None
            name = getattr(code, "name", "UNKNOWN")
            wait = _retry_info(exc)
            retryable = name in _RETRYABLE_GRPC or (
                name == "RESOURCE_EXHAUSTED" and wait is not None
            )
            return Sent(f"gRPC {name}", retryable, wait)
        return SENT

    def shutdown(self) -> None:
        super().shutdown()
        self._channel.close()


def _retry_info(error: Any) -> float | None:
    """The delay of a google.rpc.RetryInfo in the error's status details, if any."""
    try:
        from google.rpc import error_details_pb2, status_pb2

        for key, value in error.trailing_metadata() or ():
            if key == "grpc-status-details-bin":
                for detail in status_pb2.Status.FromString(value).details:
                    if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                        info = error_details_pb2.RetryInfo()
                        detail.Unpack(info)
                        return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    except Exception:  # no details, or details that do not parse: no delay asked for
        return None
    return None


__all__ = ["Encoder", "GrpcExporter", "HttpExporter", "encode_request", "otlp_env"]
