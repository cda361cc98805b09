"""`bridge status`: what RabbitMQ and the running replicas say about each trigger and broker.

From RabbitMQ (passive declares, so nothing is created, consumed or reordered): each trigger's
queue depth and consumer count (every replica's consumers: RabbitMQ counts them all), its dead
letters, the events waiting in retry delay queues, each broker's unmatched events and its archive.
From the replicas' admin listeners (`/readyz`, `/metrics`; the configured `[admin]` one unless
others are given): whether each is ready, and per trigger the delivery and error rates (counter
increase between two samples, summed over the replicas) and the last failed attempt.

A trigger is ready when its queue exists and has at least one consumer (and so does its
dead-letter sink's queue when it has a sink). Waiting retries sit in `bridge.delay.<ms>` queues
shared by every trigger: the delays a trigger can use follow from its delivery spec (the backoff
of each retry, the Retry-After levels up to its cap), so a delay queue only one trigger can use
is counted for that trigger, and the rest is reported as shared.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from prometheus_client.parser import text_string_to_metric_families

from bridge import names
from bridge.amqp import wire
from bridge.amqp.browse import queue_stats
from bridge.archive import Archives
from bridge.config import LoadedConfig
from bridge.delivery import RETRY_AFTER_LEVELS, EffectiveDelivery
from bridge.triggers import Routes, Trigger, build_routes

HTTP_TIMEOUT = 2.0
# Retry-After waits beyond the last level are whole hours; counted up to this many.
MAX_HOURS = 24


@dataclass(slots=True)
class TriggerStatus:
    trigger: str  # namespace/name
    broker: str
    subscriber: str
    ready: bool
    reason: str  # why it is not ready; "" when it is
    consumers: int | None  # None: the queue does not exist
    depth: int | None
    retrying: int  # in delay queues only this trigger can use
    retrying_shared: bool  # some of its delay queues hold messages of other triggers' too
    dead_letters: int | None
    delivery_rate: float | None = None  # 2xx attempts a second, all replicas (None: unknown)
    error_rate: float | None = None  # failed attempts a second
    last_error: str | None = None  # e.g. "HTTP 503 at 2024-05-01T10:00:00Z"
    last_error_at: float | None = None


@dataclass(slots=True)
class BrokerStatus:
    broker: str
    accepted_rate: float | None  # events accepted a second, all replicas (None: unknown)
    unmatched: int | None  # events kept in the unmatched queue
    archive_events: int | None = None  # None: no archive
    archive_bytes: int | None = None  # estimated


@dataclass(slots=True)
class ReplicaStatus:
    url: str  # its admin listener
    reachable: bool
    ready: bool
    reason: str = ""


@dataclass(slots=True)
class StatusReport:
    triggers: list[TriggerStatus]
    brokers: list[BrokerStatus]
    replicas: list[ReplicaStatus]
    retrying_shared: int  # messages in delay queues several triggers can use
    shared_delay_queues: list[str]
    notes: list[str] = field(default_factory=list)
    window: float | None = None  # seconds between the two metrics samples
    at: float = field(default_factory=time.time)

    @property
    def ready(self) -> bool:
        return all(t.ready for t in self.triggers)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ready": self.ready}


# --- delay queues --------------------------------------------------------------------------------


def delay_candidates(delivery: EffectiveDelivery) -> set[int]:
    """Milliseconds of every delay queue a trigger with this delivery spec can wait in: each
    retry's backoff, or a longer Retry-After (rounded up to a level, capped)."""
    backoffs = [delivery.backoff(n) for n in range(1, delivery.retry + 1)]
    cap = delivery.retry_after_cap()
    asked = {float(level) for level in RETRY_AFTER_LEVELS if level <= cap}
    last = RETRY_AFTER_LEVELS[-1]
    asked.update(float(3600 * h) for h in range(2, MAX_HOURS + 1) if last < 3600 * h <= cap)
    if math.isfinite(cap):
        asked.add(cap)
    found = {max(0, round(b * 1000)) for b in backoffs}
    for backoff in backoffs:
        found.update(max(0, round(max(backoff, wait) * 1000)) for wait in asked)
    return found


def delay_owners(triggers: Iterable[Trigger]) -> dict[str, list[str]]:
    """Delay queue name -> the keys of the triggers that can wait in it."""
    owners: dict[str, list[str]] = {}
    for trigger in triggers:
        if trigger.ordered:
            continue  # an ordered trigger waits in process, not in a delay queue
        for ms in delay_candidates(trigger.delivery):
            owners.setdefault(names.delay_queue(ms), []).append(trigger.key)
    return owners


# --- metrics -------------------------------------------------------------------------------------


async def http_get(url: str, timeout: float = HTTP_TIMEOUT) -> tuple[int, bytes]:
    """GET an http:// URL (an admin listener), connection: close."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// URL")
    port = parts.port or 80
    path = parts.path or "/"
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(parts.hostname, port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nhost: {parts.hostname}:{port}\r\n"
                "connection: close\r\n\r\n".encode("ascii")
            )
            raw = await reader.read()
        finally:
            writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@dataclass(slots=True)
class Sample:
    """The counters `bridge status` reads, summed over the replicas that answered."""

    at: float
    deliveries: dict[tuple[str, str], float] = field(default_factory=dict)  # (trigger, class)
    accepted: dict[str, float] = field(default_factory=dict)  # broker
    last_failure: dict[str, tuple[float, str]] = field(default_factory=dict)  # trigger


def read_exposition(text: str, sample: Sample) -> None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if s.name == "bridge_deliveries_total":
                key = (labels.get("trigger", ""), labels.get("class", ""))
                sample.deliveries[key] = sample.deliveries.get(key, 0.0) + s.value
            elif s.name == "bridge_events_received_total" and labels.get("outcome") == "accepted":
                broker = labels.get("broker", "")
                sample.accepted[broker] = sample.accepted.get(broker, 0.0) + s.value
            elif s.name == "bridge_last_failure_timestamp_seconds":
                trigger = labels.get("trigger", "")
                if s.value > sample.last_failure.get(trigger, (0.0, ""))[0]:
                    sample.last_failure[trigger] = (s.value, labels.get("code", ""))


async def sample_metrics(urls: Sequence[str]) -> tuple[Sample, list[ReplicaStatus]]:
    """One sample of every replica's /metrics, and each replica's /readyz."""
    sample = Sample(at=time.monotonic())
    replicas = []
    for base in urls:
        replica = ReplicaStatus(base, reachable=False, ready=False)
        replicas.append(replica)
        try:
            status, body = await http_get(base.rstrip("/") + "/readyz")
            replica.reachable = True
            replica.ready = status == 200
            if status != 200:
                replica.reason = _reason(body)
            status, body = await http_get(base.rstrip("/") + "/metrics")
        except (OSError, TimeoutError, ValueError, IndexError) as exc:
            replica.reason = f"not reachable ({exc.__class__.__name__}: {exc})"
            continue
        if status == 200:
            read_exposition(body.decode("utf-8", "replace"), sample)
    return sample, replicas


def _reason(body: bytes) -> str:
    try:
        return str(orjson.loads(body).get("error", ""))
    except (orjson.JSONDecodeError, AttributeError):
        return body.decode("utf-8", "replace")[:200]


def admin_url(host: str, port: int) -> str:
    """The admin listener's base URL as seen from this machine."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def describe_failure(code: str, at: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
    what = "no response" if code == "-1" else f"HTTP {code}"
    return f"{what} at {stamp}"


# --- the report ----------------------------------------------------------------------------------


class StatusReader:
    """Collects status reports on one RabbitMQ connection; keeps the last metrics sample, so
    that `--watch` measures rates between refreshes."""

    def __init__(
        self,
        connection: wire.Connection,
        loaded: LoadedConfig,
        metrics_urls: Sequence[str] | None = None,
    ) -> None:
        self.connection = connection
        self.loaded = loaded
        self.routes: Routes = build_routes(loaded)
        admin = loaded.settings.admin
        self.metrics_urls = list(metrics_urls or [admin_url(admin.host, admin.port)])
        self.archives = Archives(connection, loaded) if loaded.settings.archives else None
        self._previous: Sample | None = None

    async def report(self, window: float = 1.0) -> StatusReport:
        """A report; rates from the previous sample (or from one taken now, `window` seconds
        before the second, on the first call)."""
        first = self._previous is None
        if self._previous is None:
            self._previous, _ = await sample_metrics(self.metrics_urls)
        report = await self._from_rabbitmq()
        if first:
            await asyncio.sleep(max(0.0, window - (time.monotonic() - self._previous.at)))
        sample, replicas = await sample_metrics(self.metrics_urls)
        report.replicas = replicas
        self._apply_metrics(report, self._previous, sample)
        self._previous = sample
        return report

    async def _from_rabbitmq(self) -> StatusReport:
        routes = self.routes
        owners = delay_owners(routes.triggers)
        queues: list[str] = []
        for trigger in routes.triggers:
            queues += [trigger.queue, trigger.dead_letter_queue]
            if trigger.delivery.dead_letter_sink:
                queues.append(trigger.sink_queue)
        queues += [names.unmatched(b) for b in routes.brokers]
        stats = await queue_stats(self.connection, [*queues, *sorted(owners)])
        found = {q: (v if v is not None else (None, None)) for q, v in stats.items()}
        retrying = {t.key: 0 for t in routes.triggers}
        shared_by: dict[str, bool] = {t.key: False for t in routes.triggers}
        shared = 0
        shared_queues = []
        for queue, keys in sorted(owners.items()):
            depth = found.get(queue, (None, 0))[0]
            if not depth:
                continue
            if len(keys) == 1:
                retrying[keys[0]] += depth
            else:
                shared += depth
                shared_queues.append(queue)
                for key in keys:
                    shared_by[key] = True
        rows = []
        for trigger in routes.triggers:
            depth, consumers = found.get(trigger.queue, (None, None))
            reason = ""
            if depth is None:
                reason = "its queue does not exist (no replica has declared it yet)"
            elif not consumers:
                reason = "no replica consumes its queue"
            elif trigger.delivery.dead_letter_sink and not found.get(trigger.sink_queue, (0, 0))[1]:
                reason = "no replica consumes its dead-letter sink's queue"
            rows.append(
                TriggerStatus(
                    trigger=trigger.key,
                    broker=trigger.broker_key,
                    subscriber=trigger.subscriber,
                    ready=not reason,
                    reason=reason,
                    consumers=consumers,
                    depth=depth,
                    retrying=retrying[trigger.key],
                    retrying_shared=shared_by[trigger.key],
                    dead_letters=found.get(trigger.dead_letter_queue, (None, None))[0],
                )
            )
        brokers = [
            BrokerStatus(b, None, found.get(names.unmatched(b), (None, None))[0])
            for b in routes.brokers
        ]
        if self.archives is not None:
            by_broker = {b.broker: b for b in brokers}
            for info in await self.archives.list_archives():
                row = by_broker.get(info.broker)
                if row is not None and info.exists:
                    row.archive_events, row.archive_bytes = info.messages, info.bytes
        return StatusReport(rows, brokers, [], shared, shared_queues)

    def _apply_metrics(self, report: StatusReport, before: Sample, after: Sample) -> None:
        reachable = [r for r in report.replicas if r.reachable]
        if not reachable:
            report.notes.append(
                "no replica's admin listener answered at "
                + ", ".join(self.metrics_urls)
                + ": delivery, error and accepted rates are omitted (pass --metrics URL for "
                "each replica)."
            )
            return
        window = after.at - before.at
        report.window = round(window, 3)
        if window <= 0:
            return

        def rate(now: float, then: float) -> float:
            # A counter that went down: the replica restarted; count from zero.
            return round(max(0.0, now - then if now >= then else now) / window, 2)

        for row in report.triggers:
            ok = error = 0.0
            for (trigger, klass), value in after.deliveries.items():
                if trigger != row.trigger:
                    continue
                increase = rate(value, before.deliveries.get((trigger, klass), 0.0))
                if klass == "2xx":
                    ok += increase
                else:
                    error += increase
            row.delivery_rate, row.error_rate = round(ok, 2), round(error, 2)
            failure = after.last_failure.get(row.trigger)
            if failure is not None:
                row.last_error_at = failure[0]
                row.last_error = describe_failure(failure[1], failure[0])
        for broker in report.brokers:
            broker.accepted_rate = rate(
                after.accepted.get(broker.broker, 0.0), before.accepted.get(broker.broker, 0.0)
            )
        if len(reachable) < len(report.replicas):
            report.notes.append(
                "rates count only the replicas that answered: "
                + ", ".join(r.url for r in reachable)
                + "."
            )


__all__ = [
    "BrokerStatus",
    "ReplicaStatus",
    "StatusReader",
    "StatusReport",
    "TriggerStatus",
    "admin_url",
    "delay_candidates",
]
