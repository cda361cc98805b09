"""What bridge writes on the copies of an event it republishes: a waiting retry, a dead letter,
a replayed dead letter. Pure header arithmetic, in one place.

Every copy keeps the event's attributes and trace context and leaves RabbitMQ's own `x-*`
headers (x-death, x-delivery-count, ...) behind. bridge's failure record travels in `bridge-*`
headers (`bridge.names`); a dead letter also gets Knative's `knativeerror*` extensions.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from bridge import names
from bridge.ports import Answer
from bridge.status import NO_RESPONSE

ERROR_DATA_MAX_CHARS = 1024
ERROR_EXTENSIONS = ("ce-knativeerrordest", "ce-knativeerrorcode", "ce-knativeerrordata")
FAILURE_RECORD = (
    names.ATTEMPTS,
    names.ROUTE,
    names.TRIGGER,
    names.FIRST_FAILURE,
    names.LAST_FAILURE,
    names.LAST_ERROR,
    names.LAST_STATUS,
    names.DEAD_LETTERED,
)


def iso(seconds: float) -> str:
    """Epoch seconds as an RFC 3339 UTC timestamp with milliseconds."""
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def describe_answer(answer: Answer) -> str:
    if answer.status == NO_RESPONSE:
        return f"no response: {answer.error}"
    return f"HTTP {answer.status}"


def failure_kind(answer: Answer) -> str:
    """Why an attempt failed, in a few stable words (what repeated log lines are grouped by)."""
    if answer.permanent:
        return "cannot be sent"
    if answer.status == NO_RESPONSE:
        return "no response"
    return f"HTTP {answer.status}"


def carried_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """What a republished copy keeps: the event's attributes, trace context and bridge's record."""
    return {k: v for k, v in headers.items() if not k.startswith("x-")}


def retry_headers(
    headers: Mapping[str, Any], queue: str, attempts: int, answer: Answer, now: float
) -> dict[str, Any]:
    """A waiting retry: it comes back to `queue` with the attempts made so far."""
    out = carried_headers(headers)
    out[names.ATTEMPTS] = attempts
    out[names.ROUTE] = queue
    _record_failure(out, answer, describe_answer(answer), iso(now))
    return out


def _record_failure(out: dict[str, Any], answer: Answer, error: str, stamp: str) -> None:
    """The failure record: first (kept) and last failure times, the last status and error."""
    out.setdefault(names.FIRST_FAILURE, stamp)
    out[names.LAST_FAILURE] = stamp
    out[names.LAST_STATUS] = answer.status
    out[names.LAST_ERROR] = error


def dead_letter_headers(
    headers: Mapping[str, Any],
    trigger_key: str,
    destination: str,
    attempts: int,
    answer: Answer,
    error: str,
    now: float,
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
    stamp = iso(now)
    out[names.TRIGGER] = trigger_key
    out[names.ATTEMPTS] = attempts
    _record_failure(out, answer, error, stamp)
    out[names.DEAD_LETTERED] = stamp
    return out


def replay_headers(headers: Mapping[str, Any], trigger_queue: str) -> dict[str, Any]:
    """The original event again: error extensions and failure record gone, attempts reset."""
    out = {
        k: v
        for k, v in carried_headers(headers).items()
        if k not in ERROR_EXTENSIONS and k not in FAILURE_RECORD
    }
    out[names.ROUTE] = trigger_queue
    return out
