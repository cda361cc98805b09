"""Delivery policy, pure: the effective delivery spec, outcome rules, backoff and Retry-After.

Configuration turns into an `EffectiveDelivery` in `bridge.triggers`; this module knows no
configuration models.

Knative's rules: 2xx is success; connection errors, timeouts, 404, 408, 409, 429 and 5xx are
retried; any other status is final and goes to the dead letters at once. Backoff before retry n
(n = 1..retry): exponential `delay * 2^n`, linear `delay * n` (the Knative API's documented
formulas). A `Retry-After` on 429 or 503 (seconds or an HTTP date) is honoured, capped by
`retryAfterMax`; the wait is the longer of the backoff and the (capped) Retry-After.

Every distinct wait is a RabbitMQ delay queue, so waits a subscriber chooses (Retry-After) are
rounded up to one of the fixed `RETRY_AFTER_LEVELS`: whatever subscribers send, the number of delay
queues stays bounded by the configuration (backoff values and caps) plus those levels.
"""

from __future__ import annotations

import email.utils
import enum
import math
from dataclasses import dataclass
from typing import Literal

from bridge.status import NO_RESPONSE

# Without retryAfterMax a Retry-After is still capped: one subscriber cannot park events for days.
DEFAULT_RETRY_AFTER_CAP = 3600.0
RETRYABLE_STATUSES = frozenset((404, 408, 409, 429))
# Seconds; a Retry-After is rounded up to the first level at or above it. Beyond the last level,
# up to a whole number of hours (only reachable with a retryAfterMax above one hour).
RETRY_AFTER_LEVELS = (
    1,
    2,
    3,
    5,
    10,
    15,
    20,
    30,
    45,
    60,
    90,
    120,
    180,
    300,
    450,
    600,
    900,
    1200,
    1800,
    2700,
    3600,
)


@dataclass(frozen=True, slots=True)
class EffectiveDelivery:
    """A trigger's delivery spec with every field resolved (trigger first, then [delivery])."""

    retry: int
    backoff_policy: Literal["exponential", "linear"]
    backoff_delay: float
    timeout: float
    retry_after_max: float | None
    dead_letter_sink: str | None
    format: str  # a registered delivery format (bridge.encodings)

    def backoff(self, retry_number: int) -> float:
        """Seconds to wait before retry `retry_number` (1-based)."""
        if self.backoff_policy == "linear":
            return self.backoff_delay * retry_number
        return float(self.backoff_delay * (2**retry_number))

    def retry_after_cap(self) -> float:
        return self.retry_after_max if self.retry_after_max is not None else DEFAULT_RETRY_AFTER_CAP


class Outcome(enum.Enum):
    SUCCESS = "success"
    RETRY = "retry"
    FAIL = "fail"


def classify(status: int) -> Outcome:
    """What a subscriber's answer means; NO_RESPONSE (-1) stands for connection errors/timeouts."""
    if 200 <= status < 300:
        return Outcome.SUCCESS
    if status == NO_RESPONSE or status >= 500 or status in RETRYABLE_STATUSES:
        return Outcome.RETRY
    return Outcome.FAIL


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date); None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        # str.isdigit() also holds for non-ASCII digits ("²"), which float() refuses.
        return float(value) if value.isascii() else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def retry_after_level(seconds: float) -> float:
    """`seconds` rounded up to the next of the fixed Retry-After levels."""
    if seconds <= 0:
        return 0.0
    for level in RETRY_AFTER_LEVELS:
        if seconds <= level:
            return float(level)
    return float(math.ceil(seconds / 3600) * 3600) if math.isfinite(seconds) else math.inf


def retry_delay(
    delivery: EffectiveDelivery,
    retry_number: int,
    status: int,
    retry_after: str | None,
    now: float,
) -> float:
    """The wait before retry `retry_number`: the backoff, or a longer honoured Retry-After
    (rounded up to a level, then capped)."""
    delay = delivery.backoff(retry_number)
    if status in (429, 503):
        asked = parse_retry_after(retry_after, now)
        if asked is not None:
            delay = max(delay, min(retry_after_level(asked), delivery.retry_after_cap()))
    return delay
