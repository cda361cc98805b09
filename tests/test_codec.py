"""bridge's AMQP table/properties codecs agree with pamqp's own, in both directions."""

from __future__ import annotations

import datetime
import decimal

from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands

from bridge.amqp import codec

keys = st.text(min_size=1, max_size=40).filter(lambda k: len(k.encode()) <= 128)
scalars = (
    st.text(max_size=300)
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.datetimes(
        min_value=datetime.datetime(1971, 1, 1), max_value=datetime.datetime(2100, 1, 1)
    ).map(lambda d: d.replace(microsecond=0, tzinfo=datetime.UTC))
    | st.decimals(places=2, min_value=-1000, max_value=1000, allow_nan=False, allow_infinity=False)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
)
short = st.text(max_size=60).filter(lambda s: len(s.encode()) <= 255)
properties = st.builds(
    commands.Basic.Properties,
    content_type=st.none() | short,
    content_encoding=st.none() | short,
    headers=st.none() | st.dictionaries(keys, values, max_size=12),
    delivery_mode=st.none() | st.sampled_from([1, 2]),
    priority=st.none() | st.integers(0, 9),
    correlation_id=st.none() | short,
    message_id=st.none() | short,
    timestamp=st.none()
    | st.datetimes(
        min_value=datetime.datetime(1971, 1, 1), max_value=datetime.datetime(2100, 1, 1)
    ).map(lambda d: d.replace(microsecond=0, tzinfo=datetime.UTC)),
    app_id=st.none() | short,
)


def _flags(data: bytes) -> int:
    return int.from_bytes(data[:2], "big")


@settings(max_examples=300, deadline=None)
@given(properties)
def test_properties_round_trip_against_pamqp(props):
    codec.uninstall()
    try:
        theirs = props.marshal()
        reference = commands.Basic.Properties()
        reference.unmarshal(_flags(theirs), theirs[2:])
    finally:
        codec.install()
    ours = props.marshal()
    # Our bytes decode (with pamqp) to what pamqp's bytes decode to, and vice versa.
    codec.uninstall()
    try:
        via_pamqp = commands.Basic.Properties()
        via_pamqp.unmarshal(_flags(ours), ours[2:])
    finally:
        codec.install()
    via_ours = commands.Basic.Properties()
    via_ours.unmarshal(_flags(theirs), theirs[2:])
    assert _flags(ours) == _flags(theirs)
    assert via_pamqp == reference
    assert via_ours == reference


def test_typical_event_headers_round_trip():
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "7adc8c1a-645d-4476-bdef-5d6fb57f",
        "ce-aliyunpublishtime": "2023-02-07T09:52:31.526PRC",
        "ce-type": "oss:ObjectCreated:PutObject",
        "bridge-received": 1700000000000,
        "bridge-attempts": 3,
        "ü-key": "välue ✓",
        "flag": True,
        "nothing": None,
        "raw": bytearray(b"\x00\xff"),
        "nested": {"a": [1, "two", {"three": 3}]},
        "price": decimal.Decimal("1.25"),
    }
    props = commands.Basic.Properties(headers=headers, content_type="application/json")
    data = props.marshal()
    back = commands.Basic.Properties()
    back.unmarshal(_flags(data), data[2:])
    assert back.content_type == "application/json"
    assert back.headers == {**headers, "raw": b"\x00\xff"}


def test_installed_in_pamqp():
    assert commands.Basic.Properties.marshal is codec.marshal_properties
    assert commands.Basic.Properties.unmarshal is codec.unmarshal_properties
