"""Basic content properties (the content header's property list), encoded and decoded by hand.

The attribute names are pamqp's (`message_type` for AMQP's `type`), and so are the rules: a
property that is None or "" is not sent; a timestamp is a `datetime` (UTC when naive), decoded
as pamqp does. Field tables go through bridge's offset-based codec (`bridge.amqp.codec`), which
falls back to pamqp's own functions for value types other than str/int/bool/None. Checked
against pamqp in both directions by tests/test_amqp_wire_differential.py.
"""

from __future__ import annotations

import datetime
import struct
from typing import Any

from pamqp import decode as pamqp_decode
from pamqp import encode as pamqp_encode

from bridge.amqp.codec import decode_table_at, encode_table

_U16 = struct.Struct(">H")
_LENGTH = [bytes((n,)) for n in range(256)]

# Flag bits, in wire order.
CONTENT_TYPE = 0x8000
CONTENT_ENCODING = 0x4000
HEADERS = 0x2000
DELIVERY_MODE = 0x1000
PRIORITY = 0x0800
CORRELATION_ID = 0x0400
REPLY_TO = 0x0200
EXPIRATION = 0x0100
MESSAGE_ID = 0x0080
TIMESTAMP = 0x0040
MESSAGE_TYPE = 0x0020
USER_ID = 0x0010
APP_ID = 0x0008
CLUSTER_ID = 0x0004

NAMES = (
    "content_type",
    "content_encoding",
    "headers",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "message_type",
    "user_id",
    "app_id",
    "cluster_id",
)


class Properties:
    """A message's properties (None: absent)."""

    __slots__ = NAMES

    def __init__(
        self,
        *,
        content_type: str | None = None,
        content_encoding: str | None = None,
        headers: dict[str, Any] | None = None,
        delivery_mode: int | None = None,
        priority: int | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        expiration: str | None = None,
        message_id: str | None = None,
        timestamp: datetime.datetime | None = None,
        message_type: str | None = None,
        user_id: str | None = None,
        app_id: str | None = None,
        cluster_id: str | None = None,
    ) -> None:
        self.content_type = content_type
        self.content_encoding = content_encoding
        self.headers = headers
        self.delivery_mode = delivery_mode
        self.priority = priority
        self.correlation_id = correlation_id
        self.reply_to = reply_to
        self.expiration = expiration
        self.message_id = message_id
        self.timestamp = timestamp
        self.message_type = message_type
        self.user_id = user_id
        self.app_id = app_id
        self.cluster_id = cluster_id

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Properties):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in NAMES)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in NAMES if getattr(self, name) is not None
        )
        return f"Properties({shown})"


def _short(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 255:
        raise ValueError(f"a short string holds at most 255 bytes, not {len(raw)}")
    return _LENGTH[len(raw)] + raw


def _octet(value: int) -> bytes:
    if type(value) is not int or not 0 <= value <= 255:
        raise ValueError(f"an octet property must be an int 0-255, not {value!r}")
    return _LENGTH[value]


def encode_properties(p: Properties) -> bytes:
    """The flags word and property list (what follows body-size in a content header)."""
    flags = 0
    parts = [b""]
    append = parts.append
    v: Any = p.content_type
    if v is not None and v != "":
        flags = CONTENT_TYPE
        append(_short(v))
    v = p.content_encoding
    if v is not None and v != "":
        flags |= CONTENT_ENCODING
        append(_short(v))
    v = p.headers
    if v is not None and v != "":
        flags |= HEADERS
        append(encode_table(v))
    v = p.delivery_mode
    if v is not None and v != "":
        flags |= DELIVERY_MODE
        append(_octet(v))
    v = p.priority
    if v is not None and v != "":
        flags |= PRIORITY
        append(_octet(v))
    v = p.correlation_id
    if v is not None and v != "":
        flags |= CORRELATION_ID
        append(_short(v))
    v = p.reply_to
    if v is not None and v != "":
        flags |= REPLY_TO
        append(_short(v))
    v = p.expiration
    if v is not None and v != "":
        flags |= EXPIRATION
        append(_short(v))
    v = p.message_id
    if v is not None and v != "":
        flags |= MESSAGE_ID
        append(_short(v))
    v = p.timestamp
    if v is not None and v != "":
        flags |= TIMESTAMP
        append(pamqp_encode.timestamp(v))
    v = p.message_type
    if v is not None and v != "":
        flags |= MESSAGE_TYPE
        append(_short(v))
    v = p.user_id
    if v is not None and v != "":
        flags |= USER_ID
        append(_short(v))
    v = p.app_id
    if v is not None and v != "":
        flags |= APP_ID
        append(_short(v))
    v = p.cluster_id
    if v is not None and v != "":
        flags |= CLUSTER_ID
        append(_short(v))
    parts[0] = _U16.pack(flags)
    return b"".join(parts)


def _short_at(data: bytes | bytearray, offset: int) -> tuple[int, str]:
    size = data[offset]
    offset += 1
    return offset + size, bytes(data[offset : offset + size]).decode("utf-8")


def decode_properties(data: bytes | bytearray, offset: int, end: int) -> Properties:
    """Decode the flags word(s) and property list in data[offset:end]. Raises ValueError (or
    another exception of the codecs) when the list is malformed or overruns `end`."""
    (flags,) = _U16.unpack_from(data, offset)
    offset += 2
    extra = flags
    while extra & 1:  # continuation flag words: no properties are defined in them
        (extra,) = _U16.unpack_from(data, offset)
        offset += 2
    p = Properties()
    if flags & CONTENT_TYPE:
        offset, p.content_type = _short_at(data, offset)
    if flags & CONTENT_ENCODING:
        offset, p.content_encoding = _short_at(data, offset)
    if flags & HEADERS:
        consumed, p.headers = decode_table_at(data, offset)  # type: ignore[arg-type]
        offset += consumed
    if flags & DELIVERY_MODE:
        p.delivery_mode = data[offset]
        offset += 1
    if flags & PRIORITY:
        p.priority = data[offset]
        offset += 1
    if flags & CORRELATION_ID:
        offset, p.correlation_id = _short_at(data, offset)
    if flags & REPLY_TO:
        offset, p.reply_to = _short_at(data, offset)
    if flags & EXPIRATION:
        offset, p.expiration = _short_at(data, offset)
    if flags & MESSAGE_ID:
        offset, p.message_id = _short_at(data, offset)
    if flags & TIMESTAMP:
        if offset + 8 > end:
            raise ValueError("the timestamp property is truncated")
        p.timestamp = pamqp_decode.timestamp(bytes(data[offset : offset + 8]))[1]
        offset += 8
    if flags & MESSAGE_TYPE:
        offset, p.message_type = _short_at(data, offset)
    if flags & USER_ID:
        offset, p.user_id = _short_at(data, offset)
    if flags & APP_ID:
        offset, p.app_id = _short_at(data, offset)
    if flags & CLUSTER_ID:
        offset, p.cluster_id = _short_at(data, offset)
    if offset != end:
        raise ValueError(
            f"the property list is {'longer' if offset > end else 'shorter'} than its frame"
        )
    return p
