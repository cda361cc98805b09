"""AMQP 0-9-1 frames: the splitter, the hand-written hot frames, pamqp for everything else.

Hot, by hand: basic.publish + content header + body frames (written), basic.deliver /
basic.get-ok / basic.return + content (read), basic.ack / basic.nack / basic.reject (both
ways: the consumer's acknowledgements and the broker's publisher confirms). Every other method
is marshalled and unmarshalled by pamqp. tests/test_amqp_wire_differential.py checks each
hand-written frame against pamqp, both ways, and the splitter against random chunkings.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pamqp import commands
from pamqp import frame as pamqp_frame
from pamqp.base import Frame as Method

from bridge.amqp.wire.errors import ProtocolError
from bridge.amqp.wire.properties import Properties, decode_properties, encode_properties

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
METHOD = 1
HEADER = 2
BODY = 3
HEARTBEAT = 8
FRAME_END = 0xCE
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"
# AMQP's smallest frame_max: what either side may send before tune.
MIN_FRAME_MAX = 4096
# What this client accepts before the broker's tune says otherwise (connection.start can carry
# long server properties).
HANDSHAKE_FRAME_MAX = 131072

# class_id << 16 | method_id
BASIC_PUBLISH = 0x003C0028
BASIC_RETURN = 0x003C0032
BASIC_DELIVER = 0x003C003C
BASIC_GET_OK = 0x003C0047
BASIC_ACK = 0x003C0050
BASIC_REJECT = 0x003C005A
BASIC_NACK = 0x003C0078

_HEAD = struct.Struct(">BHI")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U64_BITS = struct.Struct(">QB")
# frame type, channel, size, class, method, delivery tag, bits, frame end
_TAG_FRAME = struct.Struct(">BHIHHQBB")
# frame type, channel, size, class, weight, body size (the property list follows)
_CONTENT_HEADER = struct.Struct(">BHIHHQ")
_LENGTH = [bytes((n,)) for n in range(256)]
_END = b"\xce"

FrameHandler = Callable[[int, int, "bytes | bytearray", int, int], None]


class FrameReader:
    """Splits a byte stream into frames, kept in one buffer between reads.

    `feed(data)` calls `on_frame(type, channel, buffer, start, end)` for each complete frame,
    payload = buffer[start:end] (valid during the call only). A frame may arrive split over any
    number of reads, and one read may hold many frames. A frame whose size exceeds `frame_max`
    (payload limit + 8) or whose end octet is not 0xCE raises `ProtocolError` (code 501).
    """

    __slots__ = ("_buffer", "on_frame", "payload_max")

    def __init__(self, on_frame: FrameHandler, frame_max: int = HANDSHAKE_FRAME_MAX) -> None:
        self._buffer = bytearray()
        self.on_frame = on_frame
        self.payload_max = frame_max - 8

    def set_frame_max(self, frame_max: int) -> None:
        self.payload_max = frame_max - 8 if frame_max else 0xFFFFFFFF

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes | bytearray) -> None:
        buffer = self._buffer
        if buffer:
            buffer += data
            data = buffer
        total = len(data)
        position = 0
        limit = self.payload_max
        on_frame = self.on_frame
        unpack = _HEAD.unpack_from
        try:
            while total - position >= 7:
                kind, channel, size = unpack(data, position)
                if not 0 < kind < 4 and kind != 8:
                    raise ProtocolError(_unknown_type(data, position))
                if size > limit:
                    raise ProtocolError(
                        f"a frame of {size} bytes exceeds the negotiated frame_max "
                        f"({limit + 8} bytes with its header)"
                    )
                end = position + 7 + size
                if end >= total:
                    break
                if data[end] != FRAME_END:
                    raise ProtocolError(f"a frame ends with 0x{data[end]:02x}, not 0xce")
                on_frame(kind, channel, data, position + 7, end)
                position = end + 1
        finally:
            if data is buffer:
                del buffer[:position]
            elif position < total:
                buffer += data[position:] if position else data


def _unknown_type(data: bytes | bytearray, position: int) -> str:
    if data[position : position + 4] == b"AMQP":
        header = bytes(data[position : position + 8])
        return f"the peer does not speak AMQP 0-9-1 (it answered with the header {header!r})"
    start = bytes(data[position : position + 8])
    return (
        f"a frame of unknown type {data[position]} (bytes {start!r}): the peer does not speak "
        "AMQP 0-9-1 or the stream is corrupt"
    )


# -- writing --


def method_frame(channel: int, method: Method) -> bytes:
    """Any method, marshalled by pamqp."""
    return pamqp_frame.marshal(method, channel)


def short_string(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 255:
        raise ValueError(f"a short string holds at most 255 bytes, not {len(raw)}")
    return _LENGTH[len(raw)] + raw


def publish_frame(channel: int, exchange: str, routing_key: str, mandatory: bool) -> bytes:
    """The basic.publish method frame (immediate is never set: RabbitMQ refuses it)."""
    payload = (
        b"\x00\x3c\x00\x28\x00\x00"
        + short_string(exchange)
        + short_string(routing_key)
        + (b"\x01" if mandatory else b"\x00")
    )
    return _HEAD.pack(METHOD, channel, len(payload)) + payload + _END


def content_frames(channel: int, body: bytes, properties: bytes, frame_max: int) -> list[bytes]:
    """The content header frame (with `properties` from `encode_properties`) and the body
    frames, each body frame at most `frame_max` bytes in all."""
    size = len(body)
    parts = [
        _CONTENT_HEADER.pack(HEADER, channel, 12 + len(properties), 60, 0, size),
        properties,
        _END,
    ]
    if not size:
        return parts
    chunk = frame_max - 8
    if size <= chunk:
        parts += (_HEAD.pack(BODY, channel, size), body, _END)
        return parts
    view = memoryview(body)
    for start in range(0, size, chunk):
        piece = bytes(view[start : start + chunk])
        parts += (_HEAD.pack(BODY, channel, len(piece)), piece, _END)
    return parts


def publish_frames(
    channel: int,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    body: bytes,
    properties: Properties,
    frame_max: int,
) -> list[bytes]:
    """Everything one publish writes: method, content header and body frames."""
    parts = content_frames(channel, body, encode_properties(properties), frame_max)
    parts.insert(0, publish_frame(channel, exchange, routing_key, mandatory))
    return parts


def ack_frame(channel: int, delivery_tag: int, multiple: bool = False) -> bytes:
    return _TAG_FRAME.pack(METHOD, channel, 13, 60, 80, delivery_tag, multiple, FRAME_END)


def nack_frame(
    channel: int, delivery_tag: int, multiple: bool = False, requeue: bool = True
) -> bytes:
    bits = (1 if multiple else 0) | (2 if requeue else 0)
    return _TAG_FRAME.pack(METHOD, channel, 13, 60, 120, delivery_tag, bits, FRAME_END)


def reject_frame(channel: int, delivery_tag: int, requeue: bool = True) -> bytes:
    return _TAG_FRAME.pack(METHOD, channel, 13, 60, 90, delivery_tag, requeue, FRAME_END)


# -- reading --


def method_index(data: bytes | bytearray, start: int) -> int:
    return int(_U32.unpack_from(data, start)[0])


def decode_method(data: bytes | bytearray, start: int, end: int) -> Method:
    """Any method frame's payload, unmarshalled by pamqp."""
    index = method_index(data, start)
    kind = commands.INDEX_MAPPING.get(index)
    if kind is None:
        raise ProtocolError(f"unknown method {index >> 16}.{index & 0xFFFF}", 503)
    method: Method = kind()
    try:
        method.unmarshal(bytes(data[start + 4 : end]))
    except Exception as exc:
        raise ProtocolError(f"malformed {method.name}: {exc}", 502) from None
    return method


def _short_at(data: bytes | bytearray, offset: int) -> tuple[int, str]:
    size = data[offset]
    offset += 1
    return offset + size, bytes(data[offset : offset + size]).decode("utf-8")


def decode_deliver(
    data: bytes | bytearray, start: int, end: int
) -> tuple[str, int, bool, str, str]:
    """basic.deliver: (consumer_tag, delivery_tag, redelivered, exchange, routing_key)."""
    try:
        offset, consumer_tag = _short_at(data, start + 4)
        tag, bits = _U64_BITS.unpack_from(data, offset)
        offset, exchange = _short_at(data, offset + 9)
        offset, routing_key = _short_at(data, offset)
    except Exception as exc:
        raise ProtocolError(f"malformed Basic.Deliver: {exc}", 502) from None
    if offset != end:
        raise ProtocolError("malformed Basic.Deliver: its length does not match", 502)
    return consumer_tag, tag, bool(bits & 1), exchange, routing_key


def decode_get_ok(data: bytes | bytearray, start: int, end: int) -> tuple[int, bool, str, str, int]:
    """basic.get-ok: (delivery_tag, redelivered, exchange, routing_key, message_count)."""
    try:
        tag, bits = _U64_BITS.unpack_from(data, start + 4)
        offset, exchange = _short_at(data, start + 13)
        offset, routing_key = _short_at(data, offset)
        (count,) = _U32.unpack_from(data, offset)
    except Exception as exc:
        raise ProtocolError(f"malformed Basic.GetOk: {exc}", 502) from None
    if offset + 4 != end:
        raise ProtocolError("malformed Basic.GetOk: its length does not match", 502)
    return tag, bool(bits & 1), exchange, routing_key, count


def decode_return(data: bytes | bytearray, start: int, end: int) -> tuple[int, str, str, str]:
    """basic.return: (reply_code, reply_text, exchange, routing_key)."""
    try:
        (code,) = _U16.unpack_from(data, start + 4)
        offset, text = _short_at(data, start + 6)
        offset, exchange = _short_at(data, offset)
        offset, routing_key = _short_at(data, offset)
    except Exception as exc:
        raise ProtocolError(f"malformed Basic.Return: {exc}", 502) from None
    if offset != end:
        raise ProtocolError("malformed Basic.Return: its length does not match", 502)
    return code, text, exchange, routing_key


def decode_tag(data: bytes | bytearray, start: int, end: int) -> tuple[int, int]:
    """basic.ack / basic.nack / basic.reject: (delivery_tag, bits)."""
    if end - start != 13:
        raise ProtocolError("malformed acknowledgement: it is not 13 bytes long", 502)
    tag, bits = _U64_BITS.unpack_from(data, start + 4)
    return tag, bits


def decode_content_header(data: bytes | bytearray, start: int, end: int) -> tuple[int, Properties]:
    """A content header frame's payload: (body_size, properties)."""
    if end - start < 14:
        raise ProtocolError("a content header frame is too short", 502)
    class_id, _, body_size = _CONTENT_HEADER_FIELDS.unpack_from(data, start)
    if class_id != 60:
        raise ProtocolError(f"a content header of class {class_id}, not basic (60)", 502)
    try:
        properties = decode_properties(data, start + 12, end)
    except Exception as exc:
        raise ProtocolError(f"malformed content header: {exc}", 502) from None
    return body_size, properties


_CONTENT_HEADER_FIELDS = struct.Struct(">HHQ")


def describe(kind: int, payload: bytes | bytearray) -> Any:
    """A frame as pamqp reads it (the tests compare with it)."""
    raw = bytes(_HEAD.pack(kind, 0, len(payload)) + payload + _END)
    return pamqp_frame.unmarshal(raw)[2]
