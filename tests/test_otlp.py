"""bridge's OTLP trace export (bridge/telemetry/otlp.py).

The encoder is differential-tested: for generated spans (every field an OTLP span has, attribute
values of every type, several resources and scopes, dropped counts), the official protobuf classes
must parse bridge's bytes into exactly the message the OpenTelemetry SDK's own encoder builds.
The transports are tested against real peers: an HTTP server and a gRPC server in this process,
answering as collectors do (success, retryable and permanent failures).
"""

from __future__ import annotations

import gzip
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
import trustme
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from bridge.telemetry.otlp import EXPORT_METHOD, Encoder, GrpcExporter, HttpExporter, encode_request

RESOURCES = [
    Resource.create({"service.name": "bridge", "service.version": "0.1.0"}),
    Resource({"service.name": "other", "k8s.pod.name": "bridge-7d9f", "n": 3}, "https://s/1"),
    # Equal to the first but another object: one group, as the SDK groups them.
    Resource.create({"service.name": "bridge", "service.version": "0.1.0"}),
]
SCOPES = [
    InstrumentationScope("bridge", "0.1.0"),
    InstrumentationScope("other", None, "https://s/2", {"a": "b"}),
    None,
]

text = st.text(max_size=12)
ids64 = st.integers(1, 2**64 - 1)
ids128 = st.integers(1, 2**128 - 1)
scalar = st.one_of(
    text,
    st.text(min_size=250, max_size=260),  # around the encoder's longest cached string
    # Not encodable: an integer outside int64, a lone surrogate (both encoders leave it out).
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2),
    st.booleans(),
    st.integers(-(2**65), 2**65),
    st.floats(allow_nan=False),
    st.binary(max_size=8),
)
value = st.one_of(
    scalar,
    st.lists(text, max_size=3).map(tuple),
    st.lists(st.integers(-5, 5), max_size=3).map(tuple),
    st.none(),
    st.dictionaries(st.sampled_from(["x", "y"]), st.integers(-5, 5), max_size=2),
)
# Keys repeat across spans and values repeat, so the encoder's cache is exercised.
keys = st.sampled_from(["http.request.method", "url.path", "a", "b", "server.port", "", "é"])
attributes = st.dictionaries(keys, value, max_size=5)
states = st.one_of(
    st.none(),
    st.lists(
        st.tuples(st.sampled_from(["vendor", "rojo", "congo"]), st.sampled_from(["1", "ab"])),
        max_size=2,
        unique_by=lambda kv: kv[0],
    ).map(TraceState),
)


@st.composite
def contexts(draw: st.DrawFn) -> SpanContext:
    return SpanContext(
        draw(ids128),
        draw(ids64),
        draw(st.booleans()),
        TraceFlags(draw(st.sampled_from([0, 1]))),
        draw(states),
    )


@st.composite
def readable_spans(draw: st.DrawFn) -> ReadableSpan:
    attrs = draw(attributes)
    limit = draw(st.one_of(st.none(), st.integers(0, 3)))
    bounded: Any = BoundedAttributes(maxlen=limit, attributes=attrs) if limit is not None else attrs
    start = draw(st.integers(1, 2**63))
    events = [
        Event(draw(text), draw(attributes), draw(st.integers(1, 2**63)))
        for _ in range(draw(st.integers(0, 2)))
    ]
    links = [Link(draw(contexts()), draw(attributes)) for _ in range(draw(st.integers(0, 2)))]
    code = draw(st.sampled_from(list(StatusCode)))
    description = draw(st.one_of(st.none(), text)) if code is StatusCode.ERROR else None
    return ReadableSpan(
        name=draw(st.text(min_size=1, max_size=16)),
        context=draw(contexts()),
        parent=draw(st.one_of(st.none(), contexts())),
        resource=draw(st.sampled_from(RESOURCES)),
        attributes=bounded,
        events=events,
        links=links,
        kind=draw(st.sampled_from(list(SpanKind))),
        status=Status(code, description),
        start_time=start,
        end_time=start + draw(st.integers(0, 10**9)),
        instrumentation_scope=draw(st.sampled_from(SCOPES)),
    )


SHARED = Encoder()  # one encoder over many batches, as an exporter keeps it


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(readable_spans(), max_size=6))
def test_the_encoder_writes_what_the_sdk_encoder_builds(spans: list[ReadableSpan]) -> None:
    expected = encode_spans(spans)
    for body in (SHARED.encode(spans), encode_request(spans)):
        assert ExportTraceServiceRequest.FromString(body) == expected


def test_bridge_spans_encode_as_the_sdk_encodes_them() -> None:
    """The spans bridge itself makes (a whole traced delivery), through both encoders."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from bridge.config import TracingSettings
    from bridge.telemetry.tracing import Tracing

    memory = InMemorySpanExporter()
    tracing = Tracing(TracingSettings(enabled=True), SimpleSpanProcessor(memory))
    tracing.start()
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    server = tracing.server_span("/default/b", {"traceparent": incoming}, "10.1.2.3:4")
    headers: dict[str, Any] = {"ce-id": "e1", "ce-source": "acs.oss", "ce-type": "t"}
    with tracing.producing("publish bridge.broker", server, "bridge.broker", headers):
        pass
    server.set_attribute("http.response.status_code", 202)
    server.end()
    consumer = tracing.consumer_span("q", "default/t", headers, 2)
    consumer.add_event("retry in process", {"bridge.delay_s": 0.5})
    client = tracing.client_span(consumer, "http://sub.example/")
    tracing.end_client(client, 500, "HTTP 500")
    consumer.end()
    spans = memory.get_finished_spans()
    assert len(spans) == 4
    assert ExportTraceServiceRequest.FromString(encode_request(spans)) == encode_spans(spans)


def test_an_attribute_that_cannot_be_encoded_is_left_out_and_counted() -> None:
    encoder = Encoder()
    attributes = {"a": object(), "b": 2**63, "c": "\ud800", "kept": "yes"}
    span = ReadableSpan("x", SpanContext(1, 1, False), attributes=attributes)
    decoded = ExportTraceServiceRequest.FromString(encoder.encode([span]))
    (kept,) = decoded.resource_spans[0].scope_spans[0].spans[0].attributes
    assert (kept.key, kept.value.string_value) == ("kept", "yes")
    assert encoder.dropped == 3
    assert "'c'" in encoder.problem


# -- transports --


def a_span() -> ReadableSpan:
    return ReadableSpan(
        "POST",
        SpanContext(7, 9, False, TraceFlags(1)),
        resource=RESOURCES[0],
        attributes={"http.request.method": "POST"},
        start_time=1,
        end_time=2,
        instrumentation_scope=SCOPES[0],
    )


class Collector:
    """An OTLP/HTTP endpoint answering with the statuses it is given, then 200."""

    def __init__(self, statuses: list[tuple[int, dict[str, str]]]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[str, dict[str, str], bytes, float]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.requests.append(
                    (self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                )
                status, extra = owner.statuses.pop(0) if owner.statuses else (200, {})
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector_of() -> Iterator[Any]:
    made: list[Collector] = []

    def make(*statuses: tuple[int, dict[str, str]]) -> Collector:
        made.append(Collector(list(statuses)))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_http_export_posts_protobuf_to_v1_traces_with_the_configured_headers(
    collector_of: Any,
) -> None:
    peer = collector_of()
    exporter = HttpExporter(f"http://127.0.0.1:{peer.port}", {"Authorization": "Bearer s3"})
    try:
        assert exporter.export([a_span()]) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    ((path, headers, body, _),) = peer.requests
    assert path == "/v1/traces"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["authorization"] == "Bearer s3"
    assert ExportTraceServiceRequest.FromString(body) == encode_spans([a_span()])


def test_an_endpoint_with_a_path_is_used_as_given(collector_of: Any) -> None:
    peer = collector_of()
    exporter = HttpExporter(f"http://127.0.0.1:{peer.port}/otlp/v1/traces", {})
    assert exporter.export([a_span()]) is SpanExportResult.SUCCESS
    assert peer.requests[0][0] == "/otlp/v1/traces"


def test_http_export_retries_retryable_answers_and_honours_retry_after(
    collector_of: Any,
) -> None:
    peer = collector_of((503, {}), (429, {"Retry-After": "1"}), (502, {}))
    exporter = HttpExporter(f"http://127.0.0.1:{peer.port}", {}, timeout=10, backoff=0.05)
    assert exporter.export([a_span()]) is SpanExportResult.SUCCESS
    assert len(peer.requests) == 4
    stamps = [r[3] for r in peer.requests]
    assert stamps[2] - stamps[1] >= 0.9  # Retry-After: 1


@pytest.mark.parametrize("status", [400, 401, 404, 413])
def test_http_export_does_not_retry_a_permanent_failure(
    collector_of: Any, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    peer = collector_of((status, {}))
    exporter = HttpExporter(f"http://u:pw@127.0.0.1:{peer.port}", {}, backoff=0.05)
    assert exporter.export([a_span()]) is SpanExportResult.FAILURE
    assert len(peer.requests) == 1
    assert f"HTTP {status}" in caplog.text
    assert "pw" not in caplog.text


def test_http_export_gives_up_at_its_deadline_when_the_collector_is_down() -> None:
    from tests.daemon import free_port

    exporter = HttpExporter(f"http://127.0.0.1:{free_port()}", {}, timeout=0.5, backoff=0.05)
    started = time.monotonic()
    assert exporter.export([a_span()]) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 3


def test_an_exporter_shut_down_sends_nothing(collector_of: Any) -> None:
    peer = collector_of()
    exporter = HttpExporter(f"http://127.0.0.1:{peer.port}", {})
    exporter.shutdown()
    assert exporter.export([a_span()]) is SpanExportResult.FAILURE
    assert peer.requests == []


class GrpcCollector:
    """A gRPC server with the OTLP TraceService/Export method, failing with the codes given."""

    def __init__(self, codes: list[grpc.StatusCode]) -> None:
        self.codes = codes
        self.retry_delay: float | None = None  # sent as RetryInfo with the failures when set
        self.calls: list[tuple[bytes, dict[str, str]]] = []
        owner = self

        def export(request: bytes, context: grpc.ServicerContext) -> bytes:
            owner.calls.append((request, dict(context.invocation_metadata())))
            if owner.codes:
                code = owner.codes.pop(0)
                if owner.retry_delay is not None:
                    info = error_details_pb2.RetryInfo(
                        retry_delay=Duration(nanos=int(owner.retry_delay * 1e9))
                    )
                    details = status_pb2.Status(code=code.value[0], message="slow down")
                    details.details.add().Pack(info)
                    context.set_trailing_metadata(
                        (("grpc-status-details-bin", details.SerializeToString()),)
                    )
                context.abort(code, "no")
            return b""  # an empty ExportTraceServiceResponse

        handler = grpc.method_handlers_generic_handler(
            EXPORT_METHOD.split("/")[1],
            {
                EXPORT_METHOD.split("/")[2]: grpc.unary_unary_rpc_method_handler(
                    export,
                    request_deserializer=lambda b: b,
                    response_serializer=lambda b: b,
                )
            },
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


@pytest.fixture
def grpc_collector_of() -> Iterator[Any]:
    made: list[GrpcCollector] = []

    def make(*codes: grpc.StatusCode) -> GrpcCollector:
        made.append(GrpcCollector(list(codes)))
        return made[-1]

    yield make
    for c in made:
        c.server.stop(None)


def test_grpc_export_calls_trace_service_export_with_the_headers_as_metadata(
    grpc_collector_of: Any,
) -> None:
    peer = grpc_collector_of()
    exporter = GrpcExporter(f"http://127.0.0.1:{peer.port}", {"X-Scope-OrgID": "tenant-1"})
    try:
        assert exporter.export([a_span()]) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    ((body, metadata),) = peer.calls
    assert metadata["x-scope-orgid"] == "tenant-1"
    assert ExportTraceServiceRequest.FromString(body) == encode_spans([a_span()])


def test_grpc_export_retries_unavailable_but_not_invalid_argument(grpc_collector_of: Any) -> None:
    peer = grpc_collector_of(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)
    exporter = GrpcExporter(f"127.0.0.1:{peer.port}", {}, backoff=0.05)
    try:
        assert exporter.export([a_span()]) is SpanExportResult.SUCCESS
        assert len(peer.calls) == 3
        peer.codes.append(grpc.StatusCode.INVALID_ARGUMENT)
        assert exporter.export([a_span()]) is SpanExportResult.FAILURE
        assert len(peer.calls) == 4
    finally:
        exporter.shutdown()


def test_a_retry_after_of_zero_still_backs_off(collector_of: Any) -> None:
    peer = collector_of((429, {"Retry-After": "0"}), (429, {"Retry-After": "0"}))
    exporter = HttpExporter(f"http://127.0.0.1:{peer.port}", {}, timeout=10, backoff=0.2)
    assert exporter.export([a_span()]) is SpanExportResult.SUCCESS
    stamps = [r[3] for r in peer.requests]
    assert len(stamps) == 3
    assert stamps[1] - stamps[0] >= 0.15  # the backoff, not an immediate retry


def test_headers_compression_from_the_standard_variables(collector_of: Any) -> None:
    peer = collector_of()
    environ = {
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=generic",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "api-key=s%20ecret,malformed",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
    }
    exporter = HttpExporter(f"http://127.0.0.1:{peer.port}", {}, environ=environ)
    assert exporter.export([a_span()]) is SpanExportResult.SUCCESS
    configured = HttpExporter(f"http://127.0.0.1:{peer.port}", {"x-own": "1"}, environ=environ)
    assert configured.export([a_span()]) is SpanExportResult.SUCCESS
    (_, headers, body, _), (_, own, _, _) = peer.requests
    assert headers["api-key"] == "s ecret"  # the traces variable wins, percent-decoded
    assert headers["content-encoding"] == "gzip"
    assert ExportTraceServiceRequest.FromString(gzip.decompress(body)) == encode_spans([a_span()])
    assert "api-key" not in own  # configured headers replace the variable's
    assert own["x-own"] == "1"


def test_an_https_collector_is_verified_with_the_ca_of_the_certificate_variable(
    tmp_path: Any,
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    peer = Collector([])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    peer.server.socket = context.wrap_socket(peer.server.socket, server_side=True)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    try:
        url = f"https://127.0.0.1:{peer.port}"
        trusted = HttpExporter(url, {}, environ={"OTEL_EXPORTER_OTLP_CERTIFICATE": str(ca_file)})
        assert trusted.export([a_span()]) is SpanExportResult.SUCCESS
        untrusted = HttpExporter(url, {}, timeout=1, backoff=0.05, environ={})
        assert untrusted.export([a_span()]) is SpanExportResult.FAILURE
        assert len(peer.requests) == 1
    finally:
        peer.close()


def test_nothing_is_sent_or_waited_for_past_the_drain_deadline() -> None:
    """A collector that accepts connections and never answers: the export ends at `stop_at`."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        exporter = HttpExporter(f"http://127.0.0.1:{port}", {}, timeout=30, backoff=0.05)
        exporter.stop_at = time.monotonic() + 0.5
        started = time.monotonic()
        assert exporter.export([a_span()]) is SpanExportResult.FAILURE
        assert time.monotonic() - started < 2
        started = time.monotonic()
        assert exporter.export([a_span()]) is SpanExportResult.FAILURE  # past it: at once
        assert time.monotonic() - started < 0.1


def test_tracing_shutdown_keeps_to_its_budget_when_the_collector_hangs() -> None:
    from bridge.config import TracingSettings
    from bridge.telemetry.tracing import Tracing

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        settings = TracingSettings(
            enabled=True, protocol="http/protobuf", endpoint=f"http://127.0.0.1:{port}"
        )
        tracing = Tracing(settings)
        tracing.start()
        for _ in range(1100):  # three batches queued
            tracing.server_span("/default/b", {}, "127.0.0.1:1").end()
        started = time.monotonic()
        tracing.shutdown(1.0)
        assert time.monotonic() - started < 3


def test_grpc_resource_exhausted_is_retried_only_with_retry_info(grpc_collector_of: Any) -> None:
    peer = grpc_collector_of(grpc.StatusCode.RESOURCE_EXHAUSTED)
    exporter = GrpcExporter(f"127.0.0.1:{peer.port}", {}, backoff=0.05)
    try:
        assert exporter.export([a_span()]) is SpanExportResult.FAILURE
        assert len(peer.calls) == 1
        peer.codes.append(grpc.StatusCode.RESOURCE_EXHAUSTED)
        peer.retry_delay = 0.6
        started = time.monotonic()
        assert exporter.export([a_span()]) is SpanExportResult.SUCCESS
        assert len(peer.calls) == 3
        assert time.monotonic() - started >= 0.55  # the server's RetryInfo delay
    finally:
        exporter.shutdown()


def test_grpc_headers_from_the_standard_variable(grpc_collector_of: Any) -> None:
    peer = grpc_collector_of()
    environ = {"OTEL_EXPORTER_OTLP_HEADERS": "X-Scope-OrgID=tenant-2"}
    exporter = GrpcExporter(f"http://127.0.0.1:{peer.port}", {}, environ=environ)
    try:
        assert exporter.export([a_span()]) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert peer.calls[0][1]["x-scope-orgid"] == "tenant-2"
