"""Queue -> subscriber -> ack, retry later, or dead letter: the delivery use case, on ports.

A `Dispatcher` delivers one queue's messages (a trigger's queue, or its dead-letter sink's) to
one URL, with at most `parallelism` deliveries in flight. It talks to the world only through the
ports of `bridge.ports` (a producer, a subscriber client, a clock, consumed messages), so the
same code runs on RabbitMQ (`bridge.amqp.consumer` feeds it) and on the in-memory fakes of the
tests. Each attempt's answer becomes a disposition value (`decide`), which `_execute` carries out
in one place:

- Ack: a CloudEvent in a 2xx answer is published into the same broker (TTL decremented) first.
- RetryLater: the event is republished, confirmed, into the delay queue for its wait (it comes
  back through `bridge.retry` when it expires), then acknowledged. A waiting retry holds no
  delivery slot and survives a restart. Ordered triggers instead wait in process and block their
  successors.
- DeadLetter: the unchanged event plus `knativeerror*` extensions and a failure record is
  published, confirmed, to the trigger's dead-letter queue (or, with a `deadLetterSink`, to the
  sink's queue, whose own dispatcher delivers with the same retries and falls back to the
  dead-letter queue), then the original is acknowledged.

A message is acknowledged only after what replaces it is confirmed. When that publish fails the
message goes back to its queue after a pause that grows with each consecutive failure (0.5 s
doubling to 30 s, reset by the next success), holding its delivery slot meanwhile: a broker that
refuses dead letters slows the trigger down instead of making it POST the same event in a loop.
Nothing is dropped.

A subscriber that refuses connections costs little: after `UNREACHABLE_AFTER` consecutive
attempts that could not connect, the trigger's attempts are spaced `THROTTLE_GAP` apart (at most
20 a second, whatever the backlog) until one connects again; each attempt doubles as the probe.
Every event keeps Knative's semantics exactly (its attempts, backoff and dead letter); only the
rate of futile attempts is bounded, so a trigger whose subscriber is down does not take the CPU
that healthy triggers and the ingress need.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from bridge import names
from bridge.delivery import EffectiveDelivery, Outcome, classify, retry_delay
from bridge.encodings import encoder
from bridge.errors import BrokerUnavailable
from bridge.events import TRACEPARENT, TRACESTATE, TTL_ATTRIBUTE, Event, event_from_reply
from bridge.filters import EventView
from bridge.ports import SYSTEM_CLOCK, Answer, Clock, Inbound, Producer, Subscribers
from bridge.records import dead_letter_headers, describe_answer, failure_kind, retry_headers
from bridge.telemetry.logging import Aggregator
from bridge.telemetry.metrics import Metrics, exemplar
from bridge.telemetry.tracing import Span, Tracing
from bridge.transform import TransformError
from bridge.triggers import Routes, Trigger

log = logging.getLogger("bridge.dispatch")
# Dead letters and returned messages come in storms: one line per trigger and reason every few
# seconds, with counts (each event in full at DEBUG; `bridge dlq show`, traces).
REPEATED = Aggregator(log, lambda key: f"trigger {key[0]}: {key[1]}")

PREFER_REPLY = "reply"
RETURN_PAUSE = 0.5  # seconds before a message whose settling failed goes back to its queue
RETURN_PAUSE_MAX = 30.0
UNREACHABLE_AFTER = 3  # consecutive attempts that could not connect: the subscriber is down
THROTTLE_GAP = 0.05  # seconds between attempts while it is down

Role = Literal["subscriber", "sink"]


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


def decide(
    answer: Answer, attempts: int, delivery: EffectiveDelivery, role: Role, now: float
) -> Disposition:
    """What an attempt's answer means, after `attempts` attempts (this one included)."""
    if answer.permanent:
        return DeadLetter(attempts, answer)  # the request cannot be sent: a retry cannot help
    outcome = classify(answer.status)
    if outcome is Outcome.SUCCESS:
        reply = None
        if (
            role == "subscriber"
            and not answer.oversized  # a body too large to read is never a reply
            and (answer.body or "ce-specversion" in answer.headers)
        ):
            reply = event_from_reply(answer.headers, answer.body)
        return Ack(reply)
    if outcome is Outcome.RETRY and attempts <= delivery.retry:
        delay = retry_delay(
            delivery, attempts, answer.status, answer.headers.get("retry-after"), now
        )
        return RetryLater(delay, attempts, answer)
    return DeadLetter(attempts, answer)


def consumer_prefetch(trigger: Trigger, prefetch: int) -> int:
    """Messages RabbitMQ may hand a trigger's consumer ahead: one at a time when ordered."""
    return 1 if trigger.ordered else max(prefetch, trigger.parallelism)


class Dispatcher:
    """Delivers one queue's messages to one URL: a trigger's subscriber, or its dead-letter sink."""

    def __init__(
        self,
        trigger: Trigger,
        *,
        producer: Producer,
        client: Subscribers,
        metrics: Metrics,
        routes: Routes,
        tracing: Tracing,
        role: Role = "subscriber",
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.trigger = trigger
        self.role: Role = role
        self.routes = routes
        self._producer = producer
        self._client = client
        self._metrics = metrics
        self._tracing = tracing
        self._clock = clock
        if role == "sink":
            assert trigger.delivery.dead_letter_sink is not None
            self.url = trigger.delivery.dead_letter_sink
            self._ca_certs = trigger.sink_ca_certs
            self.queue = trigger.sink_queue
        else:
            self.url = trigger.subscriber
            self._ca_certs = trigger.subscriber_ca_certs
            self.queue = trigger.queue
        self._encode = encoder(trigger.delivery.format)
        # The trigger's transformation changes what a subscriber gets (a sink gets the event).
        self._transform = trigger.transformation if role == "subscriber" else None
        if self._transform is not None:
            self._encode = self._transform.encoder(self._encode)
        self._parallelism = trigger.parallelism
        self._waiting: deque[Inbound] = deque()
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._settle_failures = 0
        # Throttled: the subscriber refuses connections; attempts are spaced THROTTLE_GAP apart.
        self.throttled = False
        self._unreachable = 0
        self._next_turn = 0.0
        label = trigger.key if role == "subscriber" else f"{trigger.key}#sink"
        self.label = label
        self._m_latency = metrics.child(metrics.dispatch_latency, label)
        self._m_e2e = metrics.child(metrics.end_to_end_latency, label)
        self._m_retries = metrics.child(metrics.retries, label)
        self._m_filtered = metrics.child(metrics.filtered, label)
        self._m_unreachable = metrics.child(metrics.unreachable, label)

    # -- flow control (the Handler port) --
    async def offer(self, message: Inbound) -> None:
        if self._stopping:
            return  # not acknowledged: the broker takes it back with the channel
        if self._active >= self._parallelism:
            self._waiting.append(message)
            return
        self._active += 1
        self._idle.clear()
        try:
            while True:
                try:
                    await self.handle(message)
                except Exception:
                    log.exception("delivery on %s failed unexpectedly", self.queue)
                    await self._give_back(message)
                if not self._waiting or self._stopping:
                    break
                message = self._waiting.popleft()
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    # -- a subscriber that refuses connections --
    def _note(self, answer: Answer) -> None:
        if not answer.unreachable:
            self._unreachable = 0
            if self.throttled:
                self.throttled = False
                self._m_unreachable.set(0)
                log.info(
                    "%s: the subscriber %s accepts connections again; full speed",
                    self.label,
                    self.url,
                    extra={"trigger": self.trigger.key},
                )
            return
        self._unreachable += 1
        if self._unreachable >= UNREACHABLE_AFTER and not self.throttled:
            self.throttled = True
            self._m_unreachable.set(1)
            log.warning(
                "%s: the subscriber %s refuses connections (%s); at most %d attempts a second "
                "until one connects (each event keeps its retries)",
                self.label,
                self.url,
                answer.error,
                round(1 / THROTTLE_GAP),
                extra={"trigger": self.trigger.key},
            )

    async def _wait_turn(self) -> None:
        """While throttled: wait for this attempt's turn, THROTTLE_GAP after the previous one."""
        now = self._clock.time()
        turn = max(now, self._next_turn)
        self._next_turn = turn + THROTTLE_GAP
        if turn > now:
            await self._nap(turn - now)

    def stop_taking(self) -> None:
        self._stopping = True
        self._stopped.set()  # waits in process end now
        self._waiting.clear()  # prefetched but not started: the broker gets them back

    def forget_waiting(self) -> None:
        self._waiting.clear()

    async def drain(self, timeout: float) -> None:
        if self._active:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                log.warning("%s: deliveries still in flight after %.1fs", self.queue, timeout)

    @property
    def in_flight(self) -> int:
        return self._active

    # -- one message --
    async def handle(self, message: Inbound) -> None:
        headers = message.headers
        admits = self.trigger.filter
        view = None  # headers + data parsed once, for a filter and a transformation that read it
        if admits.needs_data and self.role == "subscriber":
            view = EventView(headers, message.body, message.content_type)
        if self.role == "subscriber" and not admits.predicate(headers if view is None else view):
            self._m_filtered.inc()
            message.ack()
            return
        event = outgoing = Event(headers, message.content_type, message.body)
        attempts = int(str(headers.get(names.ATTEMPTS, 0)))
        if self._transform is not None:
            try:
                outgoing = self._transform.apply(event, view)
            except TransformError as exc:  # no request can be made: dead-letter it, no retry
                error = f"the {self._transform.form} transformation failed: {exc}"
                answer = Answer(-1, {}, b"", error, 0.0, permanent=True)
                await self._execute(message, event, DeadLetter(attempts, answer))
                return
        tracing = self._tracing
        while True:
            span = None
            if tracing.enabled and tracing.sampled(headers.get(TRACEPARENT)):
                span = tracing.consumer_span(self.queue, self.trigger.key, headers, attempts + 1)
            answer = await self._attempt(outgoing, span)
            attempts += 1
            disposition = decide(
                answer, attempts, self.trigger.delivery, self.role, self._clock.time()
            )
            if isinstance(disposition, RetryLater) and self.trigger.ordered:
                # Ordered: the event keeps its place and blocks its successors while it waits.
                self._m_retries.inc()
                if span is not None:
                    span.add_event("retry in process", {"bridge.delay_s": disposition.delay})
                    span.end()
                await self._nap(disposition.delay)
                if self._stopping or not message.alive:
                    return  # not acknowledged: the broker redelivers it, still first in line
                continue
            try:
                await self._execute(message, event, disposition, span)
            finally:
                if span is not None:
                    span.end()
            return

    async def _attempt(self, event: Event, span: Span | None) -> Answer:
        """One POST, traced when `span` is given (the subscriber's parent is then this attempt;
        otherwise the event's own trace context is passed on)."""
        if self.throttled:
            await self._wait_turn()
        headers, body = self._encode(event)
        headers["prefer"] = PREFER_REPLY
        tracing = self._tracing
        client = None
        if span is not None:
            client = tracing.client_span(span, self.url)
            tracing.inject(client, headers)
        else:
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
        if client is not None:
            tracing.end_client(client, answer.status, answer.error)
            self._m_latency.observe(answer.seconds, exemplar(client))
        else:
            self._m_latency.observe(answer.seconds)
        self._metrics.delivered(self.label, answer.status).inc()
        self._note(answer)
        return answer

    async def _execute(
        self,
        message: Inbound,
        event: Event,
        disposition: Disposition,
        span: Span | None = None,
    ) -> None:
        """Carry out a disposition: publish what replaces the message, confirmed, then ack it."""
        try:
            if isinstance(disposition, Ack):
                if disposition.reply is not None:
                    await self._publish_reply(event, disposition.reply, span)
                received = event.attrs.get(names.RECEIVED)
                if isinstance(received, int):
                    self._m_e2e.observe(max(0.0, self._clock.time() - received / 1000.0))
            elif isinstance(disposition, RetryLater):
                await self._publish_retry(event, disposition, span)
                self._m_retries.inc()
            else:
                await self._publish_dead_letter(event, disposition, span)
        except BrokerUnavailable as exc:
            REPEATED.record(
                (self.trigger.key, "messages returned to the queue (RabbitMQ unavailable)"),
                "cannot settle a message of %s, returning it: %s",
                self.queue,
                exc,
                extra={"trigger": self.trigger.key},
            )
            await self._give_back(message)
            return
        self._settle_failures = 0
        message.ack()

    async def _give_back(self, message: Inbound) -> None:
        """Return a message to its queue after a pause that grows with consecutive failures."""
        self._settle_failures += 1
        pause = min(RETURN_PAUSE_MAX, RETURN_PAUSE * 2 ** min(self._settle_failures - 1, 16))
        await self._nap(pause)
        message.requeue()

    async def _nap(self, seconds: float) -> None:
        """Sleep on the clock, but wake at once when the dispatcher stops."""
        if self._stopping:
            return
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        waker = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    async def _publish_retry(self, event: Event, retry: RetryLater, span: Span | None) -> None:
        headers = retry_headers(
            event.attrs, self.queue, retry.attempts, retry.answer, self._clock.time()
        )
        queue = await self._producer.delay_queue(max(0, round(retry.delay * 1000)))
        await self._to_queue(f"retry {self.queue}", event, headers, queue, span)

    async def _to_queue(
        self, what: str, event: Event, headers: dict[str, Any], queue: str, span: Span | None
    ) -> None:
        """Publish a copy of `event` straight to `queue`, confirmed; refused (not dropped) when
        the queue does not exist."""
        with self._tracing.producing(what, span, queue, headers):
            await self._producer.publish(
                event.data,
                headers,
                event.content_type,
                routing_key=queue,
                message_id=event.id,
                mandatory=True,
            )

    async def _publish_dead_letter(self, event: Event, dead: DeadLetter, span: Span | None) -> None:
        error = describe_answer(dead.answer)
        if self.role == "sink":
            error = f"the dead-letter sink {self.url} failed too ({error})"
        trigger = self.trigger
        headers = dead_letter_headers(
            event.attrs,
            trigger.key,
            self.url,
            dead.attempts,
            dead.answer,
            error,
            self._clock.time(),
        )
        if self.role == "subscriber" and trigger.delivery.dead_letter_sink:
            # The sink's dispatcher delivers it, with the same retries, then falls back to the DLQ.
            headers.pop(names.ATTEMPTS, None)
            headers[names.ROUTE] = trigger.sink_queue
            target, destination = trigger.sink_queue, "sink"
        else:
            target, destination = trigger.dead_letter_queue, "queue"
        await self._to_queue(f"dead-letter {target}", event, headers, target, span)
        self._metrics.child(self._metrics.dead_letters, trigger.key, destination).inc()
        REPEATED.record(
            (trigger.key, f"dead letters ({failure_kind(dead.answer)})"),
            "dead-lettered event %s of trigger %s after %d attempt(s): %s",
            event.id,
            trigger.key,
            dead.attempts,
            error,
            extra=log_fields(event.id, trigger.key, span),
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
        broker = self.trigger.broker_key
        exchange, matched = self.routes.exchange_for(
            broker, attrs, reply.content_type, self._clock.time(), reply.data
        )
        with self._tracing.producing("publish reply", span, exchange, attrs):
            await self._producer.publish(
                reply.data, attrs, reply.content_type, exchange=exchange, message_id=reply.id
            )
        if not matched:
            self._metrics.child(self._metrics.unmatched, broker).inc()
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
