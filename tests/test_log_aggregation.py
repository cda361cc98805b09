"""Repeated warnings are aggregated per trigger and reason: a storm of dead letters writes one
line per (trigger, reason) every few seconds with a count, not one line per event; the first
one is logged at once in full, every event stays in full at DEBUG level."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from bridge import dispatch
from bridge.telemetry.logging import Aggregator, JSONFormatter
from tests.fakes import answer, rig


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno == level]


@pytest.fixture
def logger() -> tuple[logging.Logger, Lines]:
    log = logging.getLogger("bridge.test.aggregation")
    log.setLevel(logging.WARNING)
    handler = Lines()
    log.addHandler(handler)
    log.propagate = False
    yield log, handler
    log.removeHandler(handler)


def test_a_storm_is_one_line_then_one_summary_per_period(logger) -> None:
    log, lines = logger
    clock = Clock()
    agg = Aggregator(log, lambda k: f"trigger {k[0]}: {k[1]}", every=5.0, clock=clock)
    for n in range(1000):
        clock.now += 0.004  # 1000 dead letters in 4 s
        agg.record(
            ("default/t", "dead letters (HTTP 400)"),
            "dead-lettered event %s of trigger %s: %s",
            f"e-{n}",
            "default/t",
            "HTTP 400",
            extra={"event_id": f"e-{n}", "trigger": "default/t"},
        )
    warnings = lines.at(logging.WARNING)
    assert [r.getMessage() for r in warnings] == [
        "dead-lettered event e-0 of trigger default/t: HTTP 400"
    ]
    assert warnings[0].event_id == "e-0"  # type: ignore[attr-defined]
    clock.now += 1.5
    agg.flush()
    summary = lines.at(logging.WARNING)[1]
    assert summary.getMessage() == (
        "trigger default/t: dead letters (HTTP 400): 999 more in the last 5.5 s; "
        "the last: dead-lettered event e-999 of trigger default/t: HTTP 400"
    )
    doc = json.loads(JSONFormatter().format(summary))
    assert doc["count"] == 999
    assert doc["trigger"] == "default/t"
    assert doc["reason"] == "dead letters (HTTP 400)"
    # Quiet for a whole period: the key is forgotten; the next one is logged in full at once.
    clock.now += 5.0
    agg.flush()
    assert len(lines.at(logging.WARNING)) == 2
    agg.record(("default/t", "dead letters (HTTP 400)"), "again %s", "e-x")
    assert lines.at(logging.WARNING)[-1].getMessage() == "again e-x"
    assert not lines.at(logging.DEBUG)  # DEBUG off: no per-event line, no cost


def test_keys_are_counted_apart_and_debug_keeps_every_event(logger) -> None:
    log, lines = logger
    log.setLevel(logging.DEBUG)
    clock = Clock()
    agg = Aggregator(log, lambda k: f"{k[0]} {k[1]}", every=5.0, clock=clock)
    for n in range(10):
        for key in (("a/t", "HTTP 400"), ("a/t", "no response"), ("b/t", "HTTP 400")):
            agg.record(key, "event %s %s %s", n, *key)
    assert len(lines.at(logging.DEBUG)) == 30
    assert len(lines.at(logging.WARNING)) == 3  # the first of each key
    agg.flush_all()
    summaries = [r.getMessage() for r in lines.at(logging.WARNING)[3:]]
    assert sorted(summaries) == sorted(
        [
            "a/t HTTP 400: 9 more in the last 0.0 s; the last: event 9 a/t HTTP 400",
            "a/t no response: 9 more in the last 0.0 s; the last: event 9 a/t no response",
            "b/t HTTP 400: 9 more in the last 0.0 s; the last: event 9 b/t HTTP 400",
        ]
    )


async def test_the_summary_comes_by_itself_after_the_period(logger) -> None:
    log, lines = logger
    agg = Aggregator(log, lambda k: k[0], every=0.2)
    for n in range(50):
        agg.record(("t", "r"), "event %d", n)
    assert len(lines.at(logging.WARNING)) == 1
    await asyncio.sleep(0.35)  # no further record(): the loop's timer closes the period
    messages = [r.getMessage() for r in lines.at(logging.WARNING)]
    assert messages[1].startswith("t: 49 more in the last 0.2 s; the last: event 49")


async def test_a_dead_letter_storm_of_the_dispatcher_logs_a_few_lines(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        dispatch, "REPEATED", Aggregator(dispatch.log, dispatch.REPEATED.describe, every=60.0)
    )
    r = rig(answer(400))
    caplog.set_level(logging.WARNING, logger="bridge.dispatch")
    for n in range(300):
        await r.dispatcher.handle(r.message(f"e-{n}"))
    dlq = [p for p in r.producer.published if p.target.startswith("bridge.dlq.")]
    assert len(dlq) == 300  # every event dead-lettered...
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "bridge.dispatch"]
    assert len(lines) == 1, lines  # ...and one line said so, so far
    assert "dead-lettered event e-0 of trigger default/display" in lines[0]
    dispatch.REPEATED.flush_all()
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "bridge.dispatch"]
    assert len(lines) == 2
    assert lines[1].startswith(
        "trigger default/display: dead letters (HTTP 400): 299 more in the last"
    )
    assert "dead-lettered event e-299" in lines[1]


async def test_503s_while_rabbitmq_is_away_are_one_line_per_broker(
    bridge_factory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bridge import ingress

    monkeypatch.setattr(
        ingress,
        "UNAVAILABLE",
        Aggregator(ingress.log, ingress.UNAVAILABLE.describe, every=60.0, owner="broker"),
    )
    running = await bridge_factory(
        url="amqp://guest:guest@127.0.0.1:9/", wait_ready=False, rabbitmq={"publish_timeout": 1}
    )
    caplog.set_level(logging.WARNING, logger="bridge.ingress")
    body = '{"specversion":"1.0","id":"1","source":"s","type":"t"}'
    for _ in range(30):
        status, _, _ = await running.post(body=body, headers={"content-type": "application/json"})
        assert status == 503
    lines = [r for r in caplog.records if r.name == "bridge.ingress"]
    assert [r.getMessage() for r in lines] == ["answering 503: RabbitMQ is not connected"]
    ingress.UNAVAILABLE.flush_all()
    summary = [r for r in caplog.records if r.name == "bridge.ingress"][-1]
    assert summary.getMessage().startswith(
        "broker default/eventbridge-default-broker: answered 503: 29 more in the last"
    )
    doc = json.loads(JSONFormatter().format(summary))
    assert doc["broker"] == "default/eventbridge-default-broker"
    assert doc["count"] == 29
