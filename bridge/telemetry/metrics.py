"""Prometheus metrics (prefix `bridge_`), one registry per process served on the admin listener.

Labelled children are resolved once per trigger/broker and cached, so the hot path pays one
attribute lookup and an `inc()`/`observe()` per event.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
E2E_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)


def exemplar(span: Any) -> dict[str, str] | None:
    """An exemplar pointing at a sampled span's trace (OpenMetrics shows it; label `trace_id`)."""
    ctx = span.get_span_context()
    if not ctx.is_valid or not ctx.trace_flags.sampled:
        return None
    return {"trace_id": f"{ctx.trace_id:032x}"}


def status_class(code: int) -> str:
    if code < 0:
        return "no_response"
    return f"{code // 100}xx"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_received = Counter(
            "bridge_events_received",
            "Events received by the ingress, by broker and outcome "
            "(accepted, rejected with a reason, unavailable).",
            ["broker", "outcome", "reason"],
            registry=r,
        )
        self.deliveries = Counter(
            "bridge_deliveries",
            "Delivery attempts to subscribers, by trigger, HTTP status code and status class.",
            ["trigger", "code", "class"],
            registry=r,
        )
        self.dispatch_latency = Histogram(
            "bridge_dispatch_latency_seconds",
            "Duration of one delivery attempt (HTTP POST to the subscriber).",
            ["trigger"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_latency = Histogram(
            "bridge_end_to_end_latency_seconds",
            "Time from ingress acceptance to successful delivery.",
            ["trigger"],
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "bridge_retries", "Retries scheduled, by trigger.", ["trigger"], registry=r
        )
        self.dead_letters = Counter(
            "bridge_dead_letters",
            "Events dead-lettered, by trigger and destination (queue or sink).",
            ["trigger", "destination"],
            registry=r,
        )
        self.unmatched = Counter(
            "bridge_unmatched_events",
            "Accepted events that matched no trigger (kept in the unmatched queue).",
            ["broker"],
            registry=r,
        )
        self.replies = Counter(
            "bridge_replies",
            "Reply events from subscribers, by trigger and outcome (published, ttl_exhausted).",
            ["trigger", "outcome"],
            registry=r,
        )
        self.filtered = Counter(
            "bridge_filtered_events",
            "Messages a trigger's consumer skipped because its filter did not match.",
            ["trigger"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "bridge_queue_depth",
            "Messages ready in a queue (polled), by queue kind and trigger or broker.",
            ["kind", "owner"],
            registry=r,
        )
        self.queue_consumers = Gauge(
            "bridge_queue_consumers",
            "Consumers of a trigger's queue, every replica's (polled with the queue depths).",
            ["kind", "owner"],
            registry=r,
        )
        self.unreachable = Gauge(
            "bridge_subscriber_unreachable",
            "1 while a trigger's subscriber (or dead-letter sink) refuses connections and its "
            "attempts are throttled.",
            ["trigger"],
            registry=r,
        )
        self.last_failure = Gauge(
            "bridge_last_failure_timestamp_seconds",
            "When a delivery attempt of the trigger last failed (Unix time), by status code "
            "(-1: no response).",
            ["trigger", "code"],
            registry=r,
        )
        self.rabbitmq_connected = Gauge(
            "bridge_rabbitmq_connected", "1 while connected to RabbitMQ.", registry=r
        )
        self.replays = Counter(
            "bridge_dlq_replayed", "Dead letters replayed, by trigger.", ["trigger"], registry=r
        )
        self._cache: dict[tuple[str, ...], Any] = {}

    def received(self, broker: str, outcome: str, reason: str = "") -> Counter:
        child: Counter = self.child(self.events_received, broker, outcome, reason)
        return child

    def delivered(self, trigger: str, code: int) -> Counter:
        """The attempts counter of (trigger, code); a failed attempt's time is noted too."""
        key = ("d", trigger, str(code))
        child = self._cache.get(key)
        if child is None:
            child = self._cache[key] = self.deliveries.labels(
                trigger, str(code), status_class(code)
            )
        if not 200 <= code < 300:
            self.child(self.last_failure, trigger, str(code)).set(time.time())
        return child

    def child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._cache.get(key)
        if child is None:
            child = self._cache[key] = metric.labels(*labels)
        return child

    def render(self, openmetrics: bool = False) -> tuple[bytes, str]:
        if openmetrics:
            return (
                generate_openmetrics(self.registry),  # type: ignore[no-untyped-call]
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        return generate_latest(self.registry), "text/plain; version=0.0.4; charset=utf-8"
