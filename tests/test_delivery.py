"""Unit tests for bridge.delivery (backoff, outcome classification, Retry-After) and for the
effective spec bridge.triggers resolves from the configuration."""

from __future__ import annotations

import email.utils
from datetime import timedelta
from typing import Any

import pytest

from bridge.config import BrokerDelivery, DeliverySpec
from bridge.delivery import (
    DEFAULT_RETRY_AFTER_CAP,
    RETRY_AFTER_LEVELS,
    EffectiveDelivery,
    Outcome,
    classify,
    parse_retry_after,
    retry_after_level,
    retry_delay,
)
from bridge.status import NO_RESPONSE
from bridge.triggers import effective_delivery

NOW = 1_700_000_000.0


def delivery(**fields: Any) -> EffectiveDelivery:
    base: dict[str, Any] = {
        "retry": 5,
        "backoff_policy": "exponential",
        "backoff_delay": 0.2,
        "timeout": 30.0,
        "retry_after_max": None,
        "dead_letter_sink": None,
        "format": "binary",
    }
    return EffectiveDelivery(**{**base, **fields})


# --- backoff --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "delay", "n", "seconds"),
    [
        ("exponential", 0.2, 1, 0.4),
        ("exponential", 0.2, 2, 0.8),
        ("exponential", 0.2, 3, 1.6),
        ("exponential", 0.2, 10, 204.8),
        ("exponential", 1.0, 5, 32.0),
        ("exponential", 0.0, 7, 0.0),
        ("linear", 0.2, 1, 0.2),
        ("linear", 0.2, 2, 0.4),
        ("linear", 0.2, 3, 0.6),
        ("linear", 1.5, 10, 15.0),
        ("linear", 0.0, 3, 0.0),
    ],
)
def test_backoff(policy: str, delay: float, n: int, seconds: float) -> None:
    d = delivery(backoff_policy=policy, backoff_delay=delay)
    assert d.backoff(n) == pytest.approx(seconds)
    assert isinstance(d.backoff(n), float)


def test_backoff_is_the_contracts_example() -> None:
    """CONTRACT section 6: with PT0.2S, exponential waits 0.4 s, 0.8 s, 1.6 s ... (2^n, n >= 1)."""
    d = delivery(backoff_delay=0.2)
    assert [d.backoff(n) for n in (1, 2, 3, 4)] == pytest.approx([0.4, 0.8, 1.6, 3.2])
    linear = delivery(backoff_delay=1.0, backoff_policy="linear")
    assert [linear.backoff(n) for n in (1, 2, 3)] == [1.0, 2.0, 3.0]


# --- classification -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SUCCESS),
        (201, Outcome.SUCCESS),
        (202, Outcome.SUCCESS),
        (204, Outcome.SUCCESS),
        (299, Outcome.SUCCESS),
        (NO_RESPONSE, Outcome.RETRY),
        (404, Outcome.RETRY),
        (408, Outcome.RETRY),
        (409, Outcome.RETRY),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (502, Outcome.RETRY),
        (503, Outcome.RETRY),
        (504, Outcome.RETRY),
        (599, Outcome.RETRY),
        (100, Outcome.FAIL),
        (300, Outcome.FAIL),
        (301, Outcome.FAIL),
        (304, Outcome.FAIL),
        (400, Outcome.FAIL),
        (401, Outcome.FAIL),
        (403, Outcome.FAIL),
        (405, Outcome.FAIL),
        (410, Outcome.FAIL),
        (413, Outcome.FAIL),
        (415, Outcome.FAIL),
        (422, Outcome.FAIL),
        (0, Outcome.FAIL),
    ],
)
def test_classify(status: int, outcome: Outcome) -> None:
    assert classify(status) is outcome


def test_no_response_is_minus_one() -> None:
    assert NO_RESPONSE == -1


# --- Retry-After ----------------------------------------------------------------------------


def http_date(offset: float) -> str:
    return email.utils.formatdate(NOW + offset, usegmt=True)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("5", 5.0),
        ("120", 120.0),
        (" 7 ", 7.0),
        (http_date(30), 30.0),
        (http_date(3600), 3600.0),
        (http_date(-30), 0.0),  # a date in the past: no extra wait
        ("Tue, 14 Nov 2023 22:13:50 +0000", 30.0),
    ],
)
def test_parse_retry_after(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "soon",
        "-5",
        "1.5",
        "5s",
        "\xb2",  # '²': str.isdigit() is true, float() refuses it
        "\u0663",  # Arabic-Indic digit three
        "Tue, 14 Nov 2023 22:13:50 -0000",  # no usable time zone
        "Tue, 14 Nov 99999 22:13:50 GMT",
        "Mon, 32 Foo 2023 25:61:61 GMT",
    ],
)
def test_unusable_retry_after_is_none(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


@pytest.mark.parametrize(
    ("status", "retry_after", "cap", "n", "seconds"),
    [
        # honoured on 429 and 503 when longer than the backoff
        (429, "10", None, 1, 10.0),
        (503, "10", None, 1, 10.0),
        (503, http_date(20), None, 1, 20.0),
        # capped by retryAfterMax
        (429, "100", 30.0, 1, 30.0),
        (503, http_date(1000), 30.0, 1, 30.0),
        # without retryAfterMax, still capped (one hour)
        (429, "999999", None, 1, DEFAULT_RETRY_AFTER_CAP),
        (429, "9" * 400, None, 1, DEFAULT_RETRY_AFTER_CAP),
        # the backoff wins when it is longer than the Retry-After
        (429, "0", None, 3, 1.6),
        (429, "1", 30.0, 4, 3.2),
        # the cap never shortens the backoff
        (429, "100", 0.1, 3, 1.6),
        # other statuses ignore Retry-After
        (500, "10", None, 1, 0.4),
        (502, "10", None, 2, 0.8),
        (404, "10", None, 1, 0.4),
        (408, "10", None, 1, 0.4),
        (NO_RESPONSE, "10", None, 1, 0.4),
        # no or unusable header: plain backoff
        (429, None, None, 2, 0.8),
        (503, "later", None, 2, 0.8),
        (503, "\xb2", None, 2, 0.8),
        # a Retry-After is rounded up to a fixed level, then capped
        (429, "7", None, 1, 10.0),
        (503, http_date(61), None, 1, 90.0),
        (429, "4000", 7200.0, 1, 7200.0),
        (429, "3601", 9000.0, 1, 7200.0),
    ],
)
def test_retry_delay(
    status: int, retry_after: str | None, cap: float | None, n: int, seconds: float
) -> None:
    d = delivery(backoff_delay=0.2, retry_after_max=cap)
    assert retry_delay(d, n, status, retry_after, NOW) == pytest.approx(seconds)


def test_retry_after_levels_bound_the_delay_queues() -> None:
    """Any Retry-After (seconds or an HTTP date to the millisecond) lands on a fixed level: 200
    different values give at most len(RETRY_AFTER_LEVELS) distinct waits under the default cap."""
    d = delivery(backoff_delay=0.001)
    waits = {
        retry_delay(d, 1, 503, http_date(seconds), NOW)
        for seconds in (0.5 + i * 17.937 for i in range(200))
    } | {retry_delay(d, 1, 429, str(i * 19), NOW) for i in range(200)}
    assert waits <= {float(level) for level in RETRY_AFTER_LEVELS} | {d.backoff(1)}
    assert len(waits) <= len(RETRY_AFTER_LEVELS) + 1
    assert retry_after_level(0.001) == 1.0
    assert retry_after_level(59.5) == 60.0
    assert retry_after_level(0) == 0.0


def test_retry_after_cap() -> None:
    assert delivery(retry_after_max=None).retry_after_cap() == DEFAULT_RETRY_AFTER_CAP == 3600.0
    assert delivery(retry_after_max=12.5).retry_after_cap() == 12.5
    assert delivery(retry_after_max=0.0).retry_after_cap() == 0.0


# --- effective delivery ---------------------------------------------------------------------


def test_effective_delivery_defaults_only() -> None:
    d = effective_delivery(None, BrokerDelivery(), None)
    assert d == EffectiveDelivery(
        retry=10,
        backoff_policy="exponential",
        backoff_delay=0.2,
        timeout=30.0,
        retry_after_max=None,
        dead_letter_sink=None,
        format="binary",
    )


def test_effective_delivery_falls_back_field_by_field() -> None:
    default = BrokerDelivery(
        retry=7,
        backoffPolicy="linear",
        backoffDelay=timedelta(seconds=2),
        timeout=timedelta(seconds=9),
        retryAfterMax=timedelta(seconds=40),
        format="json",
    )
    spec = DeliverySpec(retry=0, backoffDelay=timedelta(milliseconds=500))
    d = effective_delivery(spec, default, "http://sink/")
    assert d.retry == 0  # a falsy trigger value still wins
    assert d.backoff_delay == 0.5
    assert d.backoff_policy == "linear"
    assert d.timeout == 9.0
    assert d.retry_after_max == 40.0
    assert d.format == "json"
    assert d.dead_letter_sink == "http://sink/"


def test_effective_delivery_trigger_overrides_every_field() -> None:
    spec = DeliverySpec(
        retry=2,
        backoffPolicy="linear",
        backoffDelay=timedelta(seconds=1),
        timeout=timedelta(seconds=3),
        retryAfterMax=timedelta(seconds=4),
        format="json",
    )
    d = effective_delivery(spec, BrokerDelivery(), None)
    assert (d.retry, d.backoff_policy, d.backoff_delay, d.timeout, d.retry_after_max, d.format) == (
        2,
        "linear",
        1.0,
        3.0,
        4.0,
        "json",
    )


def test_effective_delivery_from_iso_durations() -> None:
    spec = DeliverySpec.model_validate({"backoffDelay": "PT0.25S", "timeout": "PT1M"})
    d = effective_delivery(spec, BrokerDelivery(), None)
    assert d.backoff_delay == 0.25
    assert d.timeout == 60.0
    assert d.backoff(3) == 2.0


def test_effective_delivery_is_immutable() -> None:
    d = delivery()
    with pytest.raises(AttributeError):
        d.retry = 1  # type: ignore[misc]
