"""Logs as JSON lines on stderr, with trace and span ids, event id and trigger; no secrets."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.redact import redact_text

_EXTRA_FIELDS = ("event_id", "trigger", "broker", "trace_id", "span_id", "count", "reason")
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


@dataclass(slots=True)
class _Window:
    started: float
    count: int = 0  # occurrences not logged in full since `started`
    last: str = ""  # the last of them, in full
    last_event: str | None = None


class Aggregator:
    """Warnings that repeat per key (a trigger and a reason) as one line per key and period.

    The first occurrence of a key is logged at once, in full. Later ones within `every`
    seconds are only counted; when the period ends one line says how many there were, with the
    last one in full (fields `count` and `reason`), and a new period starts. A key quiet for a
    whole period starts afresh: its next occurrence is logged in full at once. Every occurrence
    is still logged in full at DEBUG level (for `[logging] level = "debug"`), so a storm of
    dead letters costs a line per trigger and reason every few seconds, not one per event, and
    each event stays reachable (`bridge dlq show`, its trace, the DEBUG line)."""

    def __init__(
        self,
        logger: logging.Logger,
        describe: Callable[[tuple[str, str]], str],
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        owner: str = "trigger",
    ) -> None:
        self.logger = logger
        self.describe = describe  # (owner, reason) -> what the summary line is about
        self.owner = owner  # the log field the key's first part goes in (trigger, broker)
        self.every = every
        self.clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def record(
        self,
        key: tuple[str, str],
        message: str,
        *args: object,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """One occurrence of `key`: `message % args` is its full text."""
        fields = dict(extra or {})
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug(message, *args, extra=fields)
        now = self.clock()
        window = self._windows.get(key)
        if window is not None and now - window.started >= self.every:
            self._close(key, window, now)
            window = self._windows.get(key)
        if window is None:
            self._windows[key] = _Window(now)
            self.logger.warning(message, *args, extra={**fields, "reason": key[1]})
            self._schedule()
            return
        window.count += 1
        window.last = message % args if args else message
        window.last_event = fields.get("event_id")
        self._schedule()

    def flush(self) -> None:
        """Log every period that has ended (and forget the keys that stayed quiet)."""
        now = self.clock()
        for key, window in list(self._windows.items()):
            if now - window.started >= self.every:
                self._close(key, window, now)

    def flush_all(self) -> None:
        """Log what every period counted so far, ended or not (at shutdown)."""
        now = self.clock()
        for key, window in list(self._windows.items()):
            self._close(key, window, now)
        self._windows.clear()

    def _close(self, key: tuple[str, str], window: _Window, now: float) -> None:
        if not window.count:
            del self._windows[key]  # quiet for a whole period: the next one is logged at once
            return
        self.logger.warning(
            "%s: %d more in the last %.1f s; the last: %s",
            self.describe(key),
            window.count,
            now - window.started,
            window.last,
            extra={self.owner: key[0], "reason": key[1], "count": window.count},
        )
        self._windows[key] = _Window(now)

    def _schedule(self) -> None:
        """Make sure a flush runs when the earliest open period ends (on the running loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: periods are closed by the next record() or flush()
        if self._timer is not None and self._timer_loop is loop and not self._timer.cancelled():
            return
        if not self._windows:
            return
        earliest = min(w.started for w in self._windows.values())
        delay = max(0.0, earliest + self.every - self.clock())
        self._timer = loop.call_later(delay, self._tick)
        self._timer_loop = loop

    def _tick(self) -> None:
        self._timer = None
        self.flush()
        self._schedule()


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
