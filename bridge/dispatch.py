"""Queue -> subscriber -> ack, retry later, or dead letter.

One `TriggerConsumer` per trigger consumes the trigger's queue with `prefetch` and at most
`parallelism` deliveries in flight. Each attempt ends in a disposition value (`Ack`, `RetryLater`,
`DeadLetter`) that `_execute` turns into AMQP calls, in one place:

- Ack: a CloudEvent in a 2xx answer is published into the same broker (TTL decremented) first.
- RetryLater: the event is republished, confirmed, into `bridge.delay.<ms>` (it comes back through
  `bridge.retry` when it expires), then acknowledged. A waiting retry holds no consumer slot and
  survives a restart. Ordered triggers instead wait in process and block their successors.
- DeadLetter: the unchanged event plus `knativeerror*` extensions and a failure record is
  published, confirmed, to the trigger's dead-letter queue (or, with a `deadLetterSink`, to the
  sink's queue, whose own consumer delivers with the same retries and falls back to the
  dead-letter queue), then the original is acknowledged.

A message is acknowledged only after what replaces it is confirmed; when a publish fails the
message is returned to its queue. Nothing is dropped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage

from bridge import names
from bridge.amqp.acker import Acker
from bridge.amqp.connection import AMQP_ERRORS, AMQPLink, delivery_tag
from bridge.amqp.publisher import Publisher
from bridge.delivery import Outcome, classify, retry_delay
from bridge.errors import BrokerUnavailable
from bridge.events import (
    CONTENT_TYPE_ATTRIBUTE,
    TRACEPARENT,
    TRACESTATE,
    TTL_ATTRIBUTE,
    Event,
    binary_headers,
    event_from_reply,
    structured_json,
)
from bridge.http.client import Answer, SubscriberClient
from bridge.status import NO_RESPONSE
from bridge.telemetry.metrics import Metrics, exemplar
from bridge.telemetry.tracing import Span, Tracing
from bridge.triggers import Routes, Trigger

log = logging.getLogger("bridge.dispatch")

ERROR_DATA_MAX_CHARS = 1024
ERROR_EXTENSIONS = ("ce-knativeerrordest", "ce-knativeerrorcode", "ce-knativeerrordata")
PREFER_REPLY = "reply"


@dataclass(slots=True)
class Ack:
    reply: Event | None = None


@dataclass(slots=True)
class RetryLater:
    delay: float
    attempts: int
    answer: Answer


@dataclass(slots=True)
class DeadLetter:
    attempts: int
    answer: Answer


Disposition = Ack | RetryLater | DeadLetter


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def describe_answer(answer: Answer) -> str:
    if answer.status == NO_RESPONSE:
        return f"no response: {answer.error}"
    return f"HTTP {answer.status}"


def carried_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """What a republished copy keeps: the event's attributes, trace context and bridge's record.

    RabbitMQ's own `x-*` headers (x-death, x-delivery-count, ...) are left behind.
    """
    return {k: v for k, v in headers.items() if not k.startswith("x-")}


def dead_letter_headers(
    headers: dict[str, Any],
    trigger: Trigger,
    destination: str,
    attempts: int,
    answer: Answer,
    error: str,
) -> dict[str, Any]:
    """The dead letter: the event unchanged, Knative's error extensions, a failure record."""
    out = carried_headers(headers)
    out.pop(names.ROUTE, None)
    if "ce-knativeerrordest" not in out:
        # A dead letter that fails again at the sink keeps the first failure's extensions.
        out["ce-knativeerrordest"] = destination
        out["ce-knativeerrorcode"] = str(answer.status)
        if answer.body:
            data = base64.b64encode(answer.body[: ERROR_DATA_MAX_CHARS * 3 // 4]).decode("ascii")
            out["ce-knativeerrordata"] = data
    stamp = now_iso()
    out[names.TRIGGER] = trigger.key
    out[names.ATTEMPTS] = attempts
    out.setdefault(names.FIRST_FAILURE, stamp)
    out[names.LAST_FAILURE] = stamp
    out[names.LAST_STATUS] = answer.status
    out[names.LAST_ERROR] = error
    out[names.DEAD_LETTERED] = stamp
    return out


class TriggerConsumer:
    """Delivers one queue's messages to one URL: a trigger's subscriber, or its dead-letter sink."""

    def __init__(
        self,
        trigger: Trigger,
        *,
        link: AMQPLink,
        publisher: Publisher,
        client: SubscriberClient,
        metrics: Metrics,
        routes: Routes,
        prefetch: int,
        tracing: Tracing,
        role: Literal["subscriber", "sink"] = "subscriber",
    ) -> None:
        self.trigger = trigger
        self.role = role
        self.routes = routes
        self._link = link
        self._publisher = publisher
        self._client = client
        self._metrics = metrics
        self._tracing = tracing
        self._acker = Acker()
        if role == "sink":
            assert trigger.delivery.dead_letter_sink is not None
            self.url = trigger.delivery.dead_letter_sink
            self._ca_certs = trigger.sink_ca_certs
            self.queue = trigger.sink_queue
        else:
            self.url = trigger.subscriber
            self._ca_certs = trigger.subscriber_ca_certs
            self.queue = trigger.queue
        self._parallelism = trigger.parallelism
        self._prefetch = 1 if trigger.ordered else max(prefetch, trigger.parallelism)
        self._channel: AbstractChannel | None = None
        self._consumer_tag: str | None = None
        self._waiting: deque[DeliveredMessage] = deque()
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        label = trigger.key if role == "subscriber" else f"{trigger.key}#sink"
        self._label = label
        self._m_latency = metrics.child(metrics.dispatch_latency, label)
        self._m_e2e = metrics.child(metrics.end_to_end_latency, label)
        self._m_retries = metrics.child(metrics.retries, label)
        self._m_filtered = metrics.child(metrics.filtered, label)
        self._json = trigger.delivery.format == "json"

    # -- link user --
    async def attach(self, connection: AbstractConnection) -> None:
        if self._stopping:
            return
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=self._prefetch)
        self._link.watch_channel(channel, f"consumer {self.queue}", lambda: self._stopping)
        self._acker.reset(channel)
        self._channel = channel
        ok = await channel.basic_consume(self.queue, self._on_message)
        self._consumer_tag = ok.consumer_tag

    async def detach(self) -> None:
        self._acker.reset(None)
        self._channel = None
        self._consumer_tag = None
        # Unacknowledged messages return to the queue with the channel; forget local copies.
        self._waiting.clear()

    async def stop(self, timeout: float) -> None:
        """Stop taking messages, then wait (at most `timeout`) for deliveries in flight."""
        self._stopping = True
        channel, tag = self._channel, self._consumer_tag
        if channel is not None and tag is not None and not channel.is_closed:
            with contextlib.suppress(*AMQP_ERRORS):
                await asyncio.wait_for(channel.basic_cancel(tag), 5.0)
        self._waiting.clear()  # prefetched but not started: RabbitMQ gets them back
        if self._active:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*AMQP_ERRORS):
                await asyncio.wait_for(channel.close(), 5.0)
        self._channel = None

    @property
    def attached(self) -> bool:
        return self._channel is not None and self._consumer_tag is not None

    # -- consuming --
    async def _settle(self, message: DeliveredMessage, requeue: bool | None = None) -> None:
        """Ack or, with `requeue`, return the message to its queue; both go through the Acker,
        which coalesces acks and keeps every frame in order. On a dead channel there is
        nothing to do: RabbitMQ already took its messages back."""
        if requeue is None:
            self._acker.ack(message.channel, delivery_tag(message))
        else:
            self._acker.nack(message.channel, delivery_tag(message), requeue)

    async def _on_message(self, message: DeliveredMessage) -> None:
        if self._stopping:
            return
        if self._active >= self._parallelism:
            self._waiting.append(message)
            return
        self._active += 1
        try:
            while True:
                try:
                    await self._handle(message)
                except Exception:
                    log.exception("delivery on %s failed unexpectedly", self.queue)
                    await self._settle(message, requeue=True)
                if not self._waiting or self._stopping:
                    break
                message = self._waiting.popleft()
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def _handle(self, message: DeliveredMessage) -> None:
        properties = message.header.properties
        headers: dict[str, Any] = properties.headers or {}
        if self.role == "subscriber" and not self.trigger.filter.predicate(headers):
            self._m_filtered.inc()
            await self._settle(message)
            return
        event = Event(headers, properties.content_type, message.body)
        attempts = int(str(headers.get(names.ATTEMPTS, 0)))
        tracing = self._tracing
        while True:
            span = None
            if tracing.enabled and tracing.sampled(headers.get(TRACEPARENT)):
                span = tracing.consumer_span(self.queue, self.trigger.key, headers, attempts + 1)
            answer = await self._attempt(event, span)
            attempts += 1
            disposition = self._decide(answer, attempts)
            if isinstance(disposition, RetryLater) and self.trigger.ordered:
                # Ordered: the event keeps its place and blocks its successors while it waits.
                self._m_retries.inc()
                if span is not None:
                    span.add_event("retry in process", {"bridge.delay_s": disposition.delay})
                    span.end()
                await asyncio.sleep(disposition.delay)
                if self._stopping or message.channel.is_closed:
                    return  # not acknowledged: RabbitMQ redelivers it, still first in line
                continue
            try:
                await self._execute(message, event, disposition, span)
            finally:
                if span is not None:
                    span.end()
            return

    async def _attempt(self, event: Event, span: Span | None) -> Answer:
        if self._json:
            headers = {"content-type": "application/cloudevents+json"}
            body = structured_json(event)
        else:
            headers = binary_headers(event)
            body = event.data
        headers["prefer"] = PREFER_REPLY
        if span is None:
            attrs = event.attrs
            traceparent = attrs.get(TRACEPARENT)
            if traceparent is not None:
                headers["traceparent"] = traceparent
                tracestate = attrs.get(TRACESTATE)
                if tracestate is not None:
                    headers["tracestate"] = tracestate
            answer = await self._client.post(
                self.url, headers, body, self.trigger.delivery.timeout, self._ca_certs
            )
            self._m_latency.observe(answer.seconds)
        else:
            tracing = self._tracing
            client = tracing.client_span(span, self.url)
            tracing.inject(client, headers)  # the subscriber's parent is this attempt
            answer = await self._client.post(
                self.url, headers, body, self.trigger.delivery.timeout, self._ca_certs
            )
            tracing.end_client(client, answer.status, answer.error)
            self._m_latency.observe(answer.seconds, exemplar(client))
        self._metrics.delivered(self._label, answer.status).inc()
        return answer

    def _decide(self, answer: Answer, attempts: int) -> Disposition:
        if answer.permanent:
            return DeadLetter(attempts, answer)  # the request cannot be sent: a retry cannot help
        outcome = classify(answer.status)
        if outcome is Outcome.SUCCESS:
            reply = None
            if (
                self.role == "subscriber"
                and not answer.oversized  # a body too large to read is never a reply
                and (answer.body or "ce-specversion" in answer.headers)
            ):
                reply = event_from_reply(answer.headers, answer.body)
            return Ack(reply)
        delivery = self.trigger.delivery
        if outcome is Outcome.RETRY and attempts <= delivery.retry:
            delay = retry_delay(
                delivery, attempts, answer.status, answer.headers.get("retry-after"), time.time()
            )
            return RetryLater(delay, attempts, answer)
        return DeadLetter(attempts, answer)

    async def _execute(
        self,
        message: DeliveredMessage,
        event: Event,
        disposition: Disposition,
        span: Span | None = None,
    ) -> None:
        try:
            if isinstance(disposition, Ack):
                if disposition.reply is not None:
                    await self._publish_reply(event, disposition.reply, span)
                received = event.attrs.get(names.RECEIVED)
                if isinstance(received, int):
                    self._m_e2e.observe(max(0.0, time.time() - received / 1000.0))
            elif isinstance(disposition, RetryLater):
                await self._publish_retry(event, disposition, span)
                self._m_retries.inc()
            else:
                await self._publish_dead_letter(event, disposition, span)
        except BrokerUnavailable as exc:
            log.warning("cannot settle a message of %s, returning it: %s", self.queue, exc)
            await self._settle(message, requeue=True)
            return
        await self._settle(message)

    async def _publish_retry(self, event: Event, retry: RetryLater, span: Span | None) -> None:
        headers = carried_headers(event.attrs)
        headers[names.ATTEMPTS] = retry.attempts
        headers[names.ROUTE] = self.queue
        headers.setdefault(names.FIRST_FAILURE, now_iso())
        headers[names.LAST_FAILURE] = now_iso()
        headers[names.LAST_STATUS] = retry.answer.status
        headers[names.LAST_ERROR] = describe_answer(retry.answer)
        milliseconds = max(0, round(retry.delay * 1000))
        queue = await self._publisher.delay_queue(milliseconds)
        with self._tracing.producing(f"retry {self.queue}", span, queue, headers):
            await self._publisher.publish(
                event.data, headers, event.content_type, routing_key=queue, message_id=event.id
            )

    async def _publish_dead_letter(self, event: Event, dead: DeadLetter, span: Span | None) -> None:
        error = describe_answer(dead.answer)
        if self.role == "sink":
            error = f"the dead-letter sink {self.url} failed too ({error})"
        headers = dead_letter_headers(
            event.attrs, self.trigger, self.url, dead.attempts, dead.answer, error
        )
        if self.role == "subscriber" and self.trigger.delivery.dead_letter_sink:
            # The sink's consumer delivers it, with the same retries, then falls back to the DLQ.
            headers.pop(names.ATTEMPTS, None)
            headers[names.ROUTE] = self.trigger.sink_queue
            target, destination = self.trigger.sink_queue, "sink"
        else:
            target, destination = self.trigger.dead_letter_queue, "queue"
        with self._tracing.producing(f"dead-letter {target}", span, target, headers):
            await self._publisher.publish(
                event.data, headers, event.content_type, routing_key=target, message_id=event.id
            )
        self._metrics.child(self._metrics.dead_letters, self.trigger.key, destination).inc()
        log.warning(
            "dead-lettered event %s of trigger %s after %d attempt(s): %s",
            event.id,
            self.trigger.key,
            dead.attempts,
            error,
            extra=log_fields(event.id, self.trigger.key, span),
        )

    async def _publish_reply(self, original: Event, reply: Event, span: Span | None) -> None:
        try:
            ttl = int(original.attrs.get(TTL_ATTRIBUTE, 255)) - 1
        except ValueError:
            ttl = 254
        if ttl <= 0:
            self._metrics.child(self._metrics.replies, self.trigger.key, "ttl_exhausted").inc()
            log.warning(
                "reply %s to event %s not published: its broker TTL is used up",
                reply.id,
                original.id,
                extra=log_fields(original.id, self.trigger.key, span),
            )
            return
        attrs = reply.attrs
        attrs[TTL_ATTRIBUTE] = str(ttl)
        traceparent = original.attrs.get(TRACEPARENT)
        if traceparent is not None:
            attrs[TRACEPARENT] = traceparent
        attrs[names.RECEIVED] = int(time.time() * 1000)
        if self.routes.content_type_filtered and reply.content_type is not None:
            attrs[CONTENT_TYPE_ATTRIBUTE] = reply.content_type
        broker = self.trigger.broker_key
        if self.routes.matches_any(broker, attrs):
            exchange = names.broker_exchange(broker)
        else:
            exchange = names.unmatched(broker)
            self._metrics.child(self._metrics.unmatched, broker).inc()
        with self._tracing.producing("publish reply", span, exchange, attrs):
            await self._publisher.publish(
                reply.data, attrs, reply.content_type, exchange=exchange, message_id=reply.id
            )
        self._metrics.child(self._metrics.replies, self.trigger.key, "published").inc()


def log_fields(event_id: str, trigger: str, span: Span | None) -> dict[str, str]:
    """Structured fields of a log line: the event, the trigger and, when traced, the trace."""
    fields = {"event_id": event_id, "trigger": trigger}
    if span is not None:
        ctx = span.get_span_context()
        if ctx.is_valid:
            fields["trace_id"] = f"{ctx.trace_id:032x}"
            fields["span_id"] = f"{ctx.span_id:016x}"
    return fields
