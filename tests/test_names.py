"""bridge.names: RabbitMQ object names derived from trigger and broker keys, and bridge's own
headers."""

from __future__ import annotations

from bridge import names


def test_names_are_derived_from_keys() -> None:
    assert names.broker_exchange("default/eventbridge-default-broker") == (
        "bridge.broker.default.eventbridge-default-broker"
    )
    assert names.unmatched("default/b") == "bridge.unmatched.default.b"
    assert names.trigger_queue("default/my-service-trigger") == (
        "bridge.trigger.default.my-service-trigger"
    )
    assert names.dead_letter_queue("team/t") == "bridge.dlq.team.t"
    assert names.sink_queue("team/t") == "bridge.dls.team.t"
    assert names.delay_queue(200) == "bridge.delay.200"
    assert names.RETRY_EXCHANGE == "bridge.retry"
    assert names.CATALOG == "bridge.catalog"


def test_names_of_different_triggers_never_collide() -> None:
    keys = ["a/b", "b/a", "a/a", "default/x", "x/default"]
    queues = [
        f(k) for k in keys for f in (names.trigger_queue, names.dead_letter_queue, names.sink_queue)
    ]
    assert len(set(queues)) == len(queues)


def test_bridge_headers_are_not_cloudevents_attributes() -> None:
    own = [
        names.ROUTE,
        names.ATTEMPTS,
        names.RECEIVED,
        names.TRIGGER,
        names.FIRST_FAILURE,
        names.LAST_FAILURE,
        names.LAST_ERROR,
        names.LAST_STATUS,
        names.DEAD_LETTERED,
    ]
    assert len(set(own)) == len(own)
    assert all(h.startswith("bridge-") and not h.startswith("ce-") for h in own)
