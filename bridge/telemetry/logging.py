"""Logs as JSON lines on stderr, with trace and span ids, event id and trigger; no secrets."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from bridge.redact import redact_text

_EXTRA_FIELDS = ("event_id", "trigger", "broker", "trace_id", "span_id")
_secrets: tuple[str, ...] = ()


class Throttle:
    """For a condition that repeats: True at most once every `every` seconds (the first time
    at once), so its warning is logged now and then, not on every occurrence."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._last = -float("inf")

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.every:
            return False
        self._last = now
        return True


def register_secrets(*secrets: str) -> None:
    """Values that must never appear in a log line (tokens, passwords)."""
    global _secrets
    _secrets = tuple(s for s in (*_secrets, *secrets) if s)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact_text(record.getMessage(), _secrets),
        }
        for field in _EXTRA_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                doc[field] = value
        if "trace_id" not in doc:
            ids = current_trace_ids()
            if ids is not None:
                doc["trace_id"], doc["span_id"] = ids
        if record.exc_info:
            doc["exception"] = redact_text(self.formatException(record.exc_info), _secrets)
        return orjson.dumps(doc).decode("utf-8")


def current_trace_ids() -> tuple[str, str] | None:
    """The active span's ids, when tracing is on and a span is active."""
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
