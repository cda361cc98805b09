"""Log lines are JSON, carry event/trace fields, and never contain a secret."""

from __future__ import annotations

import json
import logging

from bridge.telemetry.logging import JSONFormatter, register_secrets


def render(record: logging.LogRecord) -> dict[str, object]:
    line = JSONFormatter().format(record)
    assert "\n" not in line
    return json.loads(line)


def make(
    message: str, *args: object, exc: BaseException | None = None, **extra: object
) -> logging.LogRecord:
    record = logging.LogRecord("bridge.test", logging.WARNING, __file__, 1, message, args, None)
    if exc is not None:
        try:
            raise exc
        except BaseException:
            import sys

            record.exc_info = sys.exc_info()
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_secrets_never_reach_a_log_line():
    register_secrets("s3cr3t-token-value")
    doc = render(
        make(
            "publish to %s failed with token %s (Authorization: Bearer abc.def)",
            "amqp://bridge:hunter2@rabbit:5672/%2F",
            "s3cr3t-token-value",
            exc=RuntimeError(
                "cannot reach amqps://u:pw-in-exception@host/ with s3cr3t-token-value"
            ),
        )
    )
    text = json.dumps(doc)
    for secret in ("hunter2", "s3cr3t-token-value", "abc.def", "pw-in-exception"):
        assert secret not in text
    assert "amqp://bridge:***@rabbit:5672/%2F" in doc["message"]
    assert doc["level"] == "warning"
    assert "RuntimeError" in doc["exception"]


def test_event_and_trace_fields_are_structured():
    doc = render(
        make(
            "dead-lettered",
            event_id="e-1",
            trigger="default/t",
            trace_id="ab" * 16,
            span_id="cd" * 8,
        )
    )
    assert doc["event_id"] == "e-1"
    assert doc["trigger"] == "default/t"
    assert doc["trace_id"] == "ab" * 16
    assert doc["time"].endswith("Z")
