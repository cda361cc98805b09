"""HTTP in -> durable publish: the Knative broker ingress that EventBridge delivers to.

Checks in order, from the headers alone before the body is read: method (405; OPTIONS answers
200 for webhook validation), token (401, constant-time), broker path (404), the signature headers
and their age when the broker wants EventBridge's signature (401), declared size (413). With
the body: the signature itself (401), then the body is decoded once (400/415), the broker's
allowed sources checked (403), each event is routed (to its broker's exchange, or to the
broker's `unmatched` queue when no trigger matches) and published; 202 only once RabbitMQ
confirmed every event of the request, else 503 with Retry-After. The token and signature a
broker asks for, and the sources it takes, are its `[[ingress.brokers]]` policy (`Routes.policies`;
a broker without one asks for the token when `auth_token` is set).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from typing import Any

from bridge.amqp.publisher import Publisher
from bridge.errors import BrokerUnavailable, EventError
from bridge.events import (
    TRACEPARENT,
    TRACESTATE,
    Event,
    decode_http,
)
from bridge.http.server import Handler, Request, Response, json_error
from bridge.telemetry.logging import Aggregator
from bridge.telemetry.metrics import Metrics
from bridge.telemetry.tracing import Span, Tracing, normalize_traceparent
from bridge.triggers import Routes

log = logging.getLogger("bridge.ingress")
# While RabbitMQ is away every request is a 503: one line per broker every few seconds, counted.
UNAVAILABLE = Aggregator(log, lambda key: f"broker {key[0]}: {key[1]}", owner="broker")

ACCEPTED = Response(202)
ALLOW = [("allow", "POST, OPTIONS")]
# W3C trace context, carried to subscribers: a valid traceparent (as version 00: see
# `normalize_traceparent`) and a tracestate of at most 512 printable ASCII characters. Anything
# else is not trace context and is not carried (stored headers stay small, outgoing headers
# stay clean).
_TRACESTATE = re.compile(r"[\x20-\x7e]{0,512}\Z")


def _singleton_repeated(repeated: frozenset[str]) -> str | None:
    """A repeated header that must appear once: a CloudEvents attribute, or the content type
    (RFC 9110: a singleton field). Other fields may repeat, as HTTP allows."""
    for name in sorted(repeated):
        if name.startswith("ce-") or name == "content-type":
            return name
    return None


class Ingress(Handler):
    def __init__(
        self,
        routes: Routes,
        publisher: Publisher,
        metrics: Metrics,
        *,
        max_event_bytes: int,
        auth_token: str,
        retry_after: int,
        tracing: Tracing,
    ) -> None:
        self.routes = routes
        self.max_body = max_event_bytes
        self._publisher = publisher
        self._metrics = metrics
        self._token = auth_token.encode("utf-8") if auth_token else b""
        self._retry_after = str(retry_after)
        self._tracing = tracing

    # -- before the body --
    def early(self, request: Request, content_length: int | None) -> Response | None:
        assert self.max_body is not None
        method = request.method
        if method == "OPTIONS":
            return self._options(request)
        if method != "POST":
            return json_error(405, f"{method} is not allowed; send events with POST.", ALLOW)
        broker = self.routes.broker_for_path(request.path)
        policy = self.routes.policies.get(broker) if broker is not None else None
        if (self._token if policy is None else policy.token) and not self._authorized(
            request.headers
        ):
            self._reject("", "unauthorized")
            return json_error(
                401,
                "a valid token is required (Authorization: Bearer or "
                "x-eventbridge-signature-token).",
                [("www-authenticate", "Bearer")],
            )
        if broker is None:
            self._reject("", "unknown_broker")
            return json_error(404, f"no broker is served at {request.path[:200]!r}.")
        if policy is not None and policy.verifier is not None:
            problem = policy.verifier.check_headers(request.headers, time.time())
            if problem is not None:
                return self._unsigned(broker, problem)
        if content_length is not None and content_length > self.max_body:
            self._reject(broker, "too_large")
            return json_error(
                413, f"the body ({content_length} bytes) is larger than {self.max_body} bytes."
            )
        return None

    def _options(self, request: Request) -> Response:
        headers = list(ALLOW)
        origin = request.headers.get("webhook-request-origin")
        if origin is not None:
            headers += [("webhook-allowed-origin", origin), ("webhook-allowed-rate", "*")]
        return Response(200, b"", headers)

    def _authorized(self, headers: dict[str, str]) -> bool:
        given = headers.get("x-eventbridge-signature-token")
        if given is None:
            auth = headers.get("authorization", "")
            scheme, _, value = auth.partition(" ")
            if scheme.lower() != "bearer":
                return False
            given = value.strip()
        # Header values were decoded as latin-1: encoding back gives the bytes as sent.
        return hmac.compare_digest(given.encode("latin-1"), self._token)

    def _reject(self, broker: str, reason: str) -> None:
        self._metrics.received(broker, "rejected", reason).inc()

    def _unsigned(self, broker: str, problem: str) -> Response:
        self._reject(broker, "bad_signature")
        return json_error(401, problem, [("www-authenticate", "EventBridge-Signature")])

    # -- with the body --
    async def handle(self, request: Request) -> Response:
        broker = self.routes.broker_for_path(request.path)
        if broker is None:  # the routes were swapped by a reload since the headers arrived
            self._reject("", "unknown_broker")
            return json_error(404, f"no broker is served at {request.path[:200]!r}.")
        policy = self.routes.policies.get(broker)
        if policy is not None and policy.verifier is not None:
            problem = policy.verifier.verify(
                request.headers, request.path, request.query, request.body, time.time()
            )
            if problem is not None:
                return self._unsigned(broker, problem)
        if request.repeated:
            duplicate = _singleton_repeated(request.repeated)
            if duplicate is not None:
                self._reject(broker, "invalid")
                return json_error(
                    400, f"the header {duplicate[:60]} appears more than once; send it once."
                )
        try:
            events = decode_http(request.headers, request.body)
        except EventError as exc:
            reason = {415: "unsupported_format", 413: "too_large"}.get(exc.status, "invalid")
            self._reject(broker, reason)
            return json_error(exc.status, str(exc))
        if policy is not None and policy.sources is not None:
            for event in events:
                if not policy.allows(event.source):
                    self._reject(broker, "forbidden_source")
                    source = event.source[:200]
                    return json_error(
                        403, f"the broker {broker} does not take events from {source!r}."
                    )
        if self._publisher.blocked is not None:
            # A resource alarm: a publish would only wait for publish_timeout, then be stored
            # anyway after a 503. Refuse at once instead, storing nothing.
            self._metrics.received(broker, "unavailable").inc(len(events))
            return json_error(
                503,
                "RabbitMQ is refusing new messages (a resource alarm); send the event again later.",
                [("retry-after", self._retry_after)],
            )
        headers = request.headers
        traceparent = normalize_traceparent(headers.get("traceparent"))
        tracestate = headers.get("tracestate")
        if traceparent is None:
            tracestate = None  # not W3C trace context: neither is carried
        if tracestate is not None and not _TRACESTATE.match(tracestate):
            tracestate = None
        span = None
        if self._tracing.enabled:
            sampled, carried = self._tracing.sample_at_ingress(traceparent)
            if sampled:
                span = self._tracing.server_span(request.path, headers, request.peer)
            else:
                traceparent = carried
        try:
            if len(events) == 1:
                await self._publish(broker, events[0], traceparent, tracestate, span)
            elif events:
                await asyncio.gather(
                    *(self._publish(broker, e, traceparent, tracestate, span) for e in events)
                )
        except BrokerUnavailable as exc:
            self._metrics.received(broker, "unavailable").inc(len(events))
            UNAVAILABLE.record(
                (broker, "answered 503"), "answering 503: %s", exc, extra={"broker": broker}
            )
            if span is not None:
                span.set_attribute("http.response.status_code", 503)
                self._tracing.fail(span, str(exc))
                span.end()
            return json_error(
                503,
                "bridge cannot store the event right now; send it again later.",
                [("retry-after", self._retry_after)],
            )
        self._metrics.received(broker, "accepted").inc(len(events))
        if span is not None:
            span.set_attribute("http.response.status_code", 202)
            span.end()
        return ACCEPTED

    async def _publish(
        self,
        broker: str,
        event: Event,
        traceparent: str | None,
        tracestate: str | None,
        server_span: Span | None,
    ) -> None:
        attrs: dict[str, Any] = event.attrs
        if traceparent is not None:
            attrs[TRACEPARENT] = traceparent
            if tracestate is not None:
                attrs[TRACESTATE] = tracestate
        exchange, matched = self.routes.exchange_for(
            broker, attrs, event.content_type, time.time(), event.data
        )
        # With tracing, the consumer continues from this publish's span.
        with self._tracing.producing(f"publish {exchange}", server_span, exchange, attrs):
            await self._publisher.publish(
                event.data, attrs, event.content_type, exchange=exchange, message_id=event.id
            )
        if not matched:
            self._metrics.child(self._metrics.unmatched, broker).inc()
