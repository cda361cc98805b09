"""bridge's AMQP client (`bridge.amqp.wire`) against pamqp, for every frame it writes and reads.

Written by hand, so each is checked here: basic.publish, the content header (all properties),
body frames (split at frame_max), basic.ack / basic.nack / basic.reject are byte-identical to
pamqp's marshalling of the same method (the content header too when the header table's keys are
in pamqp's sorted order; otherwise it decodes, with pamqp, to the same values). Read by hand:
basic.deliver, basic.get-ok, basic.return, basic.ack / basic.nack (publisher confirms) and the
content header decode pamqp-marshalled frames to the values pamqp gives. Every other method is
pamqp's own marshalling; the client's decoder is checked to hand them over unchanged. The frame
splitter and the content assembly give the same frames and messages whatever the read sizes.

pamqp is the reference in its own configuration: bridge's codecs (installed into pamqp when
`bridge.amqp` is imported) are taken out while pamqp marshals or unmarshals a reference.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import body as pamqp_body
from pamqp import commands
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header
from pamqp import heartbeat as pamqp_heartbeat

from bridge.amqp import codec
from bridge.amqp.wire import frames
from bridge.amqp.wire.channel import Channel, Message
from bridge.amqp.wire.connection import Connection, Parameters
from bridge.amqp.wire.properties import Properties, decode_properties, encode_properties

PROPERTY_NAMES = [n for n in Properties.__slots__ if n != "cluster_id"]


@contextlib.contextmanager
def pure_pamqp() -> Iterator[None]:
    codec.uninstall()
    try:
        yield
    finally:
        codec.install()


# -- strategies --
keys = st.text(min_size=1, max_size=30).filter(lambda k: len(k.encode()) <= 128)
timestamps = st.datetimes(
    min_value=datetime.datetime(1971, 1, 1), max_value=datetime.datetime(2100, 1, 1)
).map(lambda d: d.replace(microsecond=0, tzinfo=datetime.UTC))
# What bridge puts in header tables, and what RabbitMQ adds (x-death: tables in arrays).
exact_scalars = (
    st.text(max_size=200)
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.booleans()
    | st.none()
    | st.binary(max_size=40).map(bytearray)
    | timestamps
)
exact_values = st.recursive(
    exact_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
)
# Everything pamqp encodes (floats are 32-bit on the wire, equal on both sides).
any_values = st.recursive(
    exact_scalars
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.decimals(places=2, min_value=-1000, max_value=1000, allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
)
short = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)
names = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:", max_size=127
)
channels = st.integers(min_value=1, max_value=65535)
tags = st.integers(min_value=1, max_value=2**63 - 1)  # pamqp packs a long-long signed


def properties_strategy(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "content_type": short,
            "content_encoding": short,
            "headers": st.dictionaries(keys, values, max_size=14),
            "delivery_mode": st.sampled_from([1, 2]),
            "priority": st.integers(0, 255),
            "correlation_id": short,
            "reply_to": short,
            "expiration": short,
            "message_id": short,
            "timestamp": timestamps,
            "message_type": short,
            "user_id": short,
            "app_id": short,
        },
    )


def ours(fields: dict[str, Any]) -> Properties:
    return Properties(**fields)


def theirs(fields: dict[str, Any]) -> commands.Basic.Properties:
    return commands.Basic.Properties(**fields)


def as_dict(props: Any) -> dict[str, Any]:
    """Properties (ours or pamqp's) as comparable values; "" and None both mean absent."""
    return {n: getattr(props, n) if getattr(props, n) != "" else None for n in PROPERTY_NAMES}


def pamqp_decoded(raw: bytes) -> commands.Basic.Properties:
    with pure_pamqp():
        props = commands.Basic.Properties()
        props.unmarshal(int.from_bytes(raw[:2], "big"), raw[2:])
    return props


def pamqp_encoded(fields: dict[str, Any]) -> bytes:
    with pure_pamqp():
        return bytes(theirs(fields).marshal())


def sorted_tables(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: sorted_tables(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [sorted_tables(v) for v in value]
    return value


# -- properties --
@settings(max_examples=300, deadline=None)
@given(properties_strategy(any_values))
def test_written_properties_decode_with_pamqp_as_pamqps_own(fields):
    mine = encode_properties(ours(fields))
    reference = pamqp_encoded(fields)
    assert mine[:2] == reference[:2]  # the same flags
    assert as_dict(pamqp_decoded(mine)) == as_dict(pamqp_decoded(reference))


@settings(max_examples=300, deadline=None)
@given(properties_strategy(any_values))
def test_written_properties_are_pamqps_bytes_when_table_keys_are_sorted(fields):
    if "headers" in fields:
        fields["headers"] = sorted_tables(fields["headers"])
    assert encode_properties(ours(fields)) == pamqp_encoded(fields)


@settings(max_examples=300, deadline=None)
@given(properties_strategy(any_values))
def test_read_properties_are_what_pamqp_reads(fields):
    raw = pamqp_encoded(fields)
    assert as_dict(decode_properties(raw, 0, len(raw))) == as_dict(pamqp_decoded(raw))


@settings(max_examples=300, deadline=None)
@given(properties_strategy(exact_values))
def test_bridge_properties_round_trip_exactly(fields):
    props = ours(fields)
    raw = encode_properties(props)
    back = decode_properties(raw, 0, len(raw))
    assert as_dict(back) == as_dict(props)


def test_cloudevent_headers_round_trip_exactly():
    props = Properties(
        content_type="application/json",
        delivery_mode=2,
        message_id="0c7a3c2e-5d3f-4c6e-9a51-3f4f3b0e9d1a",
        timestamp=datetime.datetime(2023, 2, 7, 9, 52, 31, tzinfo=datetime.UTC),
        headers={
            "ce-specversion": "1.0",
            "ce-id": "0c7a3c2e",
            "ce-source": "acs.oss",
            "ce-type": "oss:ObjectCreated:PutObject",
            "ce-time": "2023-02-07T09:52:31.000Z",
            "bridge-attempts": 3,
            "big": 2**40,
            "negative": -7,
            "flag": True,
            "off": False,
            "raw": bytearray(b"\x00\xff\xfe"),
            "nested": {"x-death": [{"count": 1, "queue": "q", "time": 5}], "empty": {}},
            "nothing": None,
            "unicode": "\u00e9\u4e2d\U0001f600",
        },
    )
    raw = encode_properties(props)
    assert decode_properties(raw, 0, len(raw)) == props
    assert as_dict(pamqp_decoded(raw)) == as_dict(props)


def test_empty_properties_are_two_zero_bytes():
    assert encode_properties(Properties()) == b"\x00\x00" == pamqp_encoded({})


# -- frames the client writes --
@settings(max_examples=300, deadline=None)
@given(channels, names, names, st.booleans())
def test_publish_method_is_pamqps(channel, exchange, routing_key, mandatory):
    method = commands.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory)
    assert frames.publish_frame(channel, exchange, routing_key, mandatory) == pamqp_frame.marshal(
        method, channel
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    channels,
    st.binary(max_size=20000),
    properties_strategy(any_values),
    st.sampled_from([4096, 4097, 5000, 8192, 131072]),
)
def test_content_frames_are_pamqps(channel, body, fields, frame_max):
    if "headers" in fields:
        fields["headers"] = sorted_tables(fields["headers"])
    written = b"".join(
        frames.content_frames(channel, body, encode_properties(ours(fields)), frame_max)
    )
    with pure_pamqp():
        expected = [
            pamqp_frame.marshal(pamqp_header.ContentHeader(0, len(body), theirs(fields)), channel)
        ]
    chunk = frame_max - 8
    expected += [
        pamqp_frame.marshal(pamqp_body.ContentBody(body[i : i + chunk]), channel)
        for i in range(0, len(body), chunk)
    ]
    assert written == b"".join(expected)
    # and each frame respects frame_max
    position = 0
    while position < len(written):
        size = int.from_bytes(written[position + 3 : position + 7], "big")
        assert size + 8 <= frame_max
        position += size + 8


@settings(max_examples=300, deadline=None)
@given(channels, tags, st.booleans(), st.booleans())
def test_acknowledgement_frames_are_pamqps(channel, tag, multiple, requeue):
    assert frames.ack_frame(channel, tag, multiple) == pamqp_frame.marshal(
        commands.Basic.Ack(delivery_tag=tag, multiple=multiple), channel
    )
    assert frames.nack_frame(channel, tag, multiple, requeue) == pamqp_frame.marshal(
        commands.Basic.Nack(delivery_tag=tag, multiple=multiple, requeue=requeue), channel
    )
    assert frames.reject_frame(channel, tag, requeue) == pamqp_frame.marshal(
        commands.Basic.Reject(delivery_tag=tag, requeue=requeue), channel
    )


def test_heartbeat_and_protocol_header_are_pamqps():
    heartbeat = pamqp_frame.marshal(pamqp_heartbeat.Heartbeat(), 0)
    assert heartbeat == frames.HEARTBEAT_FRAME
    protocol = pamqp_header.ProtocolHeader().marshal()
    assert protocol == frames.PROTOCOL_HEADER


# -- frames the client reads --
def payload(raw: bytes) -> tuple[bytes, int, int]:
    """A marshalled frame as (buffer, start, end) of its payload."""
    return raw, 7, len(raw) - 1


@settings(max_examples=300, deadline=None)
@given(channels, short, tags, st.booleans(), names, names)
def test_deliver_is_read_as_pamqp_reads_it(channel, consumer_tag, tag, redelivered, ex, rk):
    raw = pamqp_frame.marshal(
        commands.Basic.Deliver(
            consumer_tag=consumer_tag,
            delivery_tag=tag,
            redelivered=redelivered,
            exchange=ex,
            routing_key=rk,
        ),
        channel,
    )
    assert frames.decode_deliver(*payload(raw)) == (consumer_tag, tag, redelivered, ex, rk)


@settings(max_examples=300, deadline=None)
@given(tags, st.booleans(), names, names, st.integers(0, 2**32 - 1))
def test_get_ok_is_read_as_pamqp_reads_it(tag, redelivered, ex, rk, count):
    raw = pamqp_frame.marshal(
        commands.Basic.GetOk(
            delivery_tag=tag,
            redelivered=redelivered,
            exchange=ex,
            routing_key=rk,
            message_count=count,
        ),
        1,
    )
    assert frames.decode_get_ok(*payload(raw)) == (tag, redelivered, ex, rk, count)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 65535), short, names, names)
def test_return_is_read_as_pamqp_reads_it(code, text, ex, rk):
    raw = pamqp_frame.marshal(
        commands.Basic.Return(reply_code=code, reply_text=text, exchange=ex, routing_key=rk), 1
    )
    assert frames.decode_return(*payload(raw)) == (code, text, ex, rk)


@settings(max_examples=300, deadline=None)
@given(tags, st.booleans(), st.booleans())
def test_confirms_are_read_as_pamqp_reads_them(tag, multiple, requeue):
    ack = pamqp_frame.marshal(commands.Basic.Ack(delivery_tag=tag, multiple=multiple), 1)
    assert frames.method_index(ack, 7) == frames.BASIC_ACK
    assert frames.decode_tag(*payload(ack)) == (tag, int(multiple))
    nack = pamqp_frame.marshal(
        commands.Basic.Nack(delivery_tag=tag, multiple=multiple, requeue=requeue), 1
    )
    assert frames.method_index(nack, 7) == frames.BASIC_NACK
    assert frames.decode_tag(*payload(nack)) == (tag, int(multiple) | (2 if requeue else 0))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**63), properties_strategy(any_values))
def test_content_header_is_read_as_pamqp_reads_it(size, fields):
    with pure_pamqp():
        raw = pamqp_frame.marshal(pamqp_header.ContentHeader(0, size, theirs(fields)), 1)
        reference = pamqp_frame.unmarshal(raw)[2]
    body_size, props = frames.decode_content_header(*payload(raw))
    assert body_size == reference.body_size == size
    assert as_dict(props) == as_dict(reference.properties)


OTHER_METHODS = [
    commands.Connection.Start(server_properties={"product": "RabbitMQ", "capabilities": {}}),
    commands.Connection.Tune(channel_max=2047, frame_max=131072, heartbeat=60),
    commands.Connection.OpenOk(),
    commands.Connection.Close(
        reply_code=320, reply_text="CONNECTION_FORCED", class_id=0, method_id=0
    ),
    commands.Connection.CloseOk(),
    commands.Connection.Blocked(reason="low on memory"),
    commands.Connection.Unblocked(),
    commands.Channel.OpenOk(),
    commands.Channel.Close(
        reply_code=404, reply_text="NOT_FOUND - no queue", class_id=50, method_id=10
    ),
    commands.Channel.CloseOk(),
    commands.Channel.Flow(active=False),
    commands.Basic.QosOk(),
    commands.Basic.ConsumeOk(consumer_tag="ctag1.1"),
    commands.Basic.Cancel(consumer_tag="ctag1.1", nowait=True),
    commands.Basic.CancelOk(consumer_tag="ctag1.1"),
    commands.Basic.GetEmpty(),
    commands.Confirm.SelectOk(),
    commands.Queue.DeclareOk(queue="q", message_count=7, consumer_count=1),
    commands.Queue.BindOk(),
    commands.Queue.UnbindOk(),
    commands.Queue.PurgeOk(message_count=3),
    commands.Queue.DeleteOk(message_count=2),
    commands.Exchange.DeclareOk(),
    commands.Exchange.DeleteOk(),
]


def test_every_other_method_is_read_as_pamqp_reads_it():
    for method in OTHER_METHODS:
        raw = pamqp_frame.marshal(method, 3)
        decoded = frames.decode_method(*payload(raw))
        assert type(decoded) is type(method)
        assert dict(decoded) == dict(pamqp_frame.unmarshal(raw)[2])


# -- the splitter and the content assembly, whatever the read sizes --
def stream_frames(draw: Any) -> tuple[list[bytes], list[tuple[int, str, bytes, dict[str, Any]]]]:
    """Frames of deliveries (channel 1, consumer 'c', bodies split at frame_max 4096),
    heartbeats and publisher confirms, and the deliveries they make."""
    out: list[bytes] = []
    expected = []
    count = draw(st.integers(1, 6))
    for tag in range(1, count + 1):
        body = draw(st.binary(max_size=10000))
        headers = draw(st.dictionaries(keys, exact_scalars, max_size=4))
        rk = draw(names)
        out.append(
            pamqp_frame.marshal(
                commands.Basic.Deliver(
                    consumer_tag="c", delivery_tag=tag, exchange="x", routing_key=rk
                ),
                1,
            )
        )
        out += frames.content_frames(
            1, body, encode_properties(Properties(headers=headers or None)), 4096
        )
        if draw(st.booleans()):
            out.append(frames.HEARTBEAT_FRAME)
        if draw(st.booleans()):
            out.append(pamqp_frame.marshal(commands.Basic.Ack(delivery_tag=tag), 2))
        expected.append((tag, rk, body, headers))
    return out, expected


@st.composite
def chunked_streams(draw: Any) -> tuple[bytes, list[int], list[Any]]:
    parts, expected = stream_frames(draw)
    data = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=40)))
    return data, cuts, expected


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    pieces, last = [], 0
    for cut in [*cuts, len(data)]:
        pieces.append(data[last:cut])
        last = cut
    return pieces


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunked_streams())
def test_the_splitter_gives_the_same_frames_whatever_the_chunks(stream):
    data, cuts, _ = stream
    whole: list[tuple[int, int, bytes]] = []
    chunked: list[tuple[int, int, bytes]] = []
    reader = frames.FrameReader(lambda k, c, d, s, e: whole.append((k, c, bytes(d[s:e]))))
    reader.feed(data)
    reader = frames.FrameReader(lambda k, c, d, s, e: chunked.append((k, c, bytes(d[s:e]))))
    for piece in split_at(data, cuts):
        reader.feed(piece)
    assert chunked == whole
    assert reader.buffered == 0
    # and they are pamqp's frames
    position = 0
    for kind, channel, body in whole:
        consumed, number, frame = pamqp_frame.unmarshal(data[position:])
        assert number == channel
        assert frames.describe(kind, body).__class__ is frame.__class__
        position += consumed
    assert position == len(data)


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


async def test_messages_are_assembled_the_same_whatever_the_chunks():
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(chunked_streams())
    def check(stream: tuple[bytes, list[int], list[Any]]) -> None:
        data, cuts, expected = stream
        connection = Connection(Parameters())
        connection.connection_made(FakeTransport())  # type: ignore[arg-type]
        connection._reader.set_frame_max(4096)
        received: list[Message] = []
        consumer = Channel(connection, 1)
        connection.channels[1] = consumer
        consumer._consumers["c"] = received.append
        publisher = Channel(connection, 2)
        publisher.confirming = True
        connection.channels[2] = publisher
        for piece in split_at(data, cuts):
            connection.data_received(piece)
        assert not connection.is_closed, connection._error
        got = [
            (m.delivery_tag, m.routing_key, m.body, m.properties.headers or {}) for m in received
        ]
        assert got == expected

    check()
