"""In-memory fakes of bridge's ports (`bridge.ports`): a producer, a subscriber client, a clock and
consumed messages. With them the dispatcher's decisions and their execution run in milliseconds,
without RabbitMQ or a network (the real adapters have their own tests against the real things).

Every fake writes what happens into one shared `journal` (a list of tuples), so a test can check
the order of effects: the dead letter's publish before the original's ack, and so on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bridge import names
from bridge.config import LoadedConfig, Settings
from bridge.dispatch import Dispatcher, Role
from bridge.errors import BrokerUnavailable, PublishRejected
from bridge.ports import Answer
from bridge.telemetry.metrics import Metrics
from bridge.telemetry.tracing import Tracing
from bridge.triggers import Routes, build_routes

Journal = list[tuple[Any, ...]]

# A fixed, plausible wall time (2027-01-15T08:00:00Z) so stamps and Retry-After dates are exact.
EPOCH = 1_800_000_000.0


class FakeClock:
    """Wall time that moves only when something sleeps on it; each sleep is recorded."""

    def __init__(self, now: float = EPOCH) -> None:
        self.now = now
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Wakes (in turn, after one loop pass) at the time it was due: sleepers that started
        together wake in order of their deadlines, the clock at the latest one so far."""
        self.slept.append(seconds)
        wake = self.now + seconds
        await asyncio.sleep(0)
        self.now = max(self.now, wake)


@dataclass
class Published:
    body: bytes
    headers: dict[str, Any]
    content_type: str | None
    exchange: str
    routing_key: str
    message_id: str | None
    mandatory: bool = False

    @property
    def target(self) -> str:
        """The exchange, or for the default exchange the queue named by the routing key."""
        return self.exchange or self.routing_key


class FakeProducer:
    """Confirms every publish, unless `refuse(target)` says to refuse it (as a nack would)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.published: list[Published] = []
        self.refuse: Callable[[str], bool] = lambda target: False
        self.unavailable = False

    async def publish(
        self,
        body: bytes,
        headers: dict[str, Any],
        content_type: str | None,
        *,
        exchange: str = "",
        routing_key: str = "",
        message_id: str | None = None,
        mandatory: bool = False,
    ) -> None:
        await asyncio.sleep(0)
        item = Published(
            body, dict(headers), content_type, exchange, routing_key, message_id, mandatory
        )
        if self.unavailable:
            self.journal.append(("refused", item.target))
            raise BrokerUnavailable("RabbitMQ is not connected")
        if self.refuse(item.target):
            self.journal.append(("refused", item.target))
            raise PublishRejected("RabbitMQ refused the message")
        self.published.append(item)
        self.journal.append(("published", item.target))

    async def delay_queue(self, milliseconds: int) -> str:
        if self.unavailable:
            raise BrokerUnavailable("RabbitMQ is not connected")
        return names.delay_queue(milliseconds)

    def to(self, target: str) -> list[Published]:
        return [p for p in self.published if p.target == target]


@dataclass
class Request:
    url: str
    headers: dict[str, str]
    body: bytes
    timeout: float


Script = Callable[[Request], Answer | Awaitable[Answer]]


class FakeSubscribers:
    """Answers each POST with the next scripted `Answer` (the last one repeats), or with what a
    function of the request returns; records every request and the highest concurrency seen."""

    def __init__(self, journal: Journal, *answers: Answer | Script) -> None:
        self.journal = journal
        self.script: list[Answer | Script] = list(answers) or [answer(200)]
        self.requests: list[Request] = []
        self.active = 0
        self.max_active = 0

    async def post(
        self,
        url: str,
        headers: dict[str, str],
        body: bytes,
        timeout: float,
        ca_certs: str | None = None,
    ) -> Answer:
        request = Request(url, dict(headers), body, timeout)
        self.requests.append(request)
        self.journal.append(("post", url))
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if isinstance(step, Answer):
                await asyncio.sleep(0)
                return step
            result = step(request)
            return await result if not isinstance(result, Answer) else result
        finally:
            self.active -= 1


def answer(
    status: int,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    *,
    error: str | None = None,
    permanent: bool = False,
    oversized: bool = False,
    unreachable: bool = False,
) -> Answer:
    if status == -1 and error is None:
        error = "no answer within 30s"
    return Answer(status, headers or {}, body, error, 0.001, permanent, oversized, unreachable)


def refused() -> Answer:
    """What an attempt gets from a subscriber that is down."""
    return answer(-1, error="cannot connect to 127.0.0.1:9 (connection refused)", unreachable=True)


@dataclass
class FakeMessage:
    """A consumed message; `ack()` and `requeue()` are journaled with the message's id."""

    journal: Journal
    headers: dict[str, Any]
    body: bytes = b'{"bucket":"b"}'
    content_type: str | None = "application/json"
    alive: bool = True
    acks: int = 0
    requeues: int = 0

    @property
    def id(self) -> str:
        return str(self.headers.get("ce-id"))

    def ack(self) -> None:
        self.acks += 1
        self.journal.append(("ack", self.id))

    def requeue(self) -> None:
        self.requeues += 1
        self.journal.append(("requeue", self.id))


def event_headers(event_id: str = "e-1", **extra: Any) -> dict[str, Any]:
    """AMQP headers of an accepted OSS upload event, as the ingress stores them."""
    headers: dict[str, Any] = {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "acs.oss",
        "ce-type": "oss:ObjectCreated:PutObject",
        "ce-subject": "acs:oss:cn-hangzhou:1234567:bucket/photo.jpg",
        names.RECEIVED: int(EPOCH * 1000) - 250,
    }
    headers.update(extra)
    return headers


def routes_for(*triggers: dict[str, Any], **sections: Any) -> Routes:
    """Routes built by the real configuration code from `[[triggers]]`-shaped dicts."""
    data: dict[str, Any] = {"triggers": list(triggers), **sections}
    settings = Settings(**data)
    loaded = LoadedConfig(
        settings=settings,
        source="test",
        triggers=[(t, f"test: triggers[{i}]") for i, t in enumerate(settings.triggers)],
    )
    return build_routes(loaded)


def trigger_spec(
    name: str = "display", url: str = "http://sub.test/", **spec: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "broker": "eventbridge-default-broker",
        "filter": {"attributes": {"source": "acs.oss"}},
        "subscriber": {"uri": url},
        **spec,
    }


@dataclass
class Rig:
    """A dispatcher wired to fakes, and the fakes."""

    dispatcher: Dispatcher
    producer: FakeProducer
    subscribers: FakeSubscribers
    clock: FakeClock
    metrics: Metrics
    routes: Routes
    journal: Journal = field(default_factory=list)

    def message(self, event_id: str = "e-1", **headers: Any) -> FakeMessage:
        return FakeMessage(self.journal, event_headers(event_id, **headers))


def rig(
    *answers: Answer | Script,
    role: Role = "subscriber",
    triggers: tuple[dict[str, Any], ...] | None = None,
    **sections: Any,
) -> Rig:
    """A dispatcher for the first trigger of `triggers` (default: one plain trigger)."""
    journal: Journal = []
    routes = routes_for(*(triggers or (trigger_spec(),)), **sections)
    producer = FakeProducer(journal)
    subscribers = FakeSubscribers(journal, *answers)
    clock = FakeClock()
    metrics = Metrics()
    dispatcher = Dispatcher(
        routes.triggers[0],
        producer=producer,
        client=subscribers,
        metrics=metrics,
        routes=routes,
        tracing=Tracing(Settings().tracing),  # off: spans are tested in test_tracing.py
        role=role,
        clock=clock,
    )
    return Rig(dispatcher, producer, subscribers, clock, metrics, routes, journal)
