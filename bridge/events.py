"""CloudEvents 1.0: decode HTTP requests, validate, and map to and from AMQP and HTTP binary mode.

One representation everywhere, chosen so the hot path parses once and copies little: an `Event` is
its attributes as a dict keyed by their binary-mode header names (`ce-id`, `ce-type`, ...; values
are canonical strings), the `datacontenttype` kept apart (it travels as the AMQP `content_type` and
the HTTP `Content-Type`), and the data as bytes. That dict is, unchanged, the AMQP headers of the
stored message and, after percent-encoding, the headers of the outgoing HTTP request.

Accepted HTTP encodings: binary (`ce-*` headers), structured (`application/cloudevents+json`),
batched (`application/cloudevents-batch+json`, all or nothing) and the EventBridge envelope
(`application/json` without `ce-specversion`, the body a whole event as JSON).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
import orjson

from bridge import rawjson
from bridge.errors import EventError

PREFIX = "ce-"
SPECVERSION = "1.0"
TTL_ATTRIBUTE = "ce-knativebrokerttl"
# Only present when a filter needs it; Content-Type carries it in binary mode.
CONTENT_TYPE_ATTRIBUTE = "ce-datacontenttype"
DEFAULT_TTL = 255

# Attributes travel as AMQP header names, which pamqp silently truncates beyond 128 bytes: a
# longer name ("ce-" + 125) could not be stored unchanged, so it is refused. `\Z`, not `$`: `$`
# also matches before a trailing newline.
MAX_NAME = 125
_NAME = re.compile(rf"[a-z0-9]{{1,{MAX_NAME}}}\Z")
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-]([0-9]{2}):([0-9]{2}))\Z"
)
_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# CloudEvents' String type excludes control characters, surrogates and noncharacters; this also
# keeps every value sendable as an HTTP header (no CR, LF or NUL can reach the wire).
_BAD_CHARACTER = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(chr(plane << 16 | 0xFFFE) + chr(plane << 16 | 0xFFFF) for plane in range(17))
    + "]"
)
# RFC 9110 media type (RFC 2046's type/subtype with parameters), ASCII only: the datacontenttype
# travels as the HTTP Content-Type and the AMQP content_type.
_TCHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[\t !#-\[\]-~]|\\[\t -~])*"'
_MEDIA_TYPE = re.compile(
    rf"{_TCHARS}/{_TCHARS}(?:[ \t]*;[ \t]*(?:{_TCHARS}=(?:{_TCHARS}|{_QUOTED}))?)*[ \t]*\Z"
)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# The attributes are the AMQP headers of the stored message, which must fit in one AMQP frame
# (RabbitMQ's frame_max: 128 KiB); the datacontenttype is the `content_type`, a short string.
MAX_ATTRIBUTES_BYTES = 65536
MAX_CONTENT_TYPE_BYTES = 255
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")
_STRING_ATTRS = frozenset(
    ("specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time")
)
_CONTEXT_ORDER = (
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
)
# Header names of bridge's own AMQP headers; never CloudEvents attributes.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


class Event:
    """One CloudEvent: `attrs` keyed `ce-<name>`, the data content type, the data as bytes."""

    __slots__ = ("attrs", "content_type", "data")

    def __init__(self, attrs: dict[str, Any], content_type: str | None, data: bytes) -> None:
        self.attrs = attrs
        self.content_type = content_type
        self.data = data

    @property
    def id(self) -> str:
        return str(self.attrs.get("ce-id", ""))

    @property
    def type(self) -> str:
        return str(self.attrs.get("ce-type", ""))

    @property
    def source(self) -> str:
        return str(self.attrs.get("ce-source", ""))

    def attributes(self, skip: Iterable[str] = ()) -> dict[str, str]:
        """The attributes by their CloudEvents names (but those in `skip`, header-form), in
        the order people read: context attributes as the specification lists them, then
        the extensions alphabetically."""
        found = {
            k[3:]: str(v) for k, v in self.attrs.items() if k.startswith(PREFIX) and k not in skip
        }
        if self.content_type is not None:
            found["datacontenttype"] = self.content_type
        out = {name: found.pop(name) for name in _CONTEXT_ORDER if name in found}
        for name in sorted(found):
            out[name] = found[name]
        return out


def media_type(content_type: str | None) -> str:
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def is_json_media(content_type: str | None) -> bool:
    """CloudEvents' rule: absent, application/json, text/json or any `+json` type is JSON."""
    mt = media_type(content_type)
    return mt in ("", "application/json", "text/json") or mt.endswith("+json")


# --- HTTP in ---------------------------------------------------------------------------------


def decode_http(headers: Mapping[str, str], body: bytes) -> list[Event]:
    """Decode one request into events; `headers` has lower-case names and latin-1 values.

    Raises EventError with the HTTP status to answer (400 invalid, 415 unsupported format).
    """
    content_type = headers.get("content-type")
    mt = media_type(content_type)
    if mt.startswith("application/cloudevents-batch"):
        if mt != "application/cloudevents-batch+json":
            raise EventError(f"the batch format {mt!r} is not supported; use JSON.", 415)
        return _decode_batch(body)
    if mt.startswith("application/cloudevents"):
        if mt != "application/cloudevents+json":
            raise EventError(f"the structured format {mt!r} is not supported; use JSON.", 415)
        return [_structured(body)]
    if "ce-specversion" in headers:
        return [_decode_binary(headers, content_type, body)]
    if mt == "application/json":
        doc = _load_json(body)
        if not isinstance(doc, dict) or "specversion" not in doc:
            raise EventError(
                "the JSON body is not a CloudEvent: it has no specversion, and there is no "
                "ce-specversion header."
            )
        return [event_from_json(doc, "", _raw_data(body))]
    raise EventError(
        "the request is not a CloudEvent: it has no ce-specversion header and no "
        "CloudEvents content type."
    )


def _load_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        doc = _load_json_wide(body)
        if doc is _INVALID:
            raise EventError(f"the body is not valid JSON ({exc.args[0]}).") from None
        return doc


_INVALID = object()
# Python refuses to convert integers of more than 4,300 digits; the value only matters for
# attributes (where such a number is refused anyway), never for data, which is kept as bytes.
_MAX_INT_DIGITS = 4000


def _wide_int(text: str) -> int | float:
    return int(text) if len(text) <= _MAX_INT_DIGITS else math.inf


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _load_json_wide(body: bytes) -> Any:
    """Valid JSON that orjson refuses: numbers beyond a double's range (an integer of 400 digits,
    1E400) and escaped lone surrogates. Only called after orjson failed; `_INVALID` if not JSON."""
    try:
        return json.loads(
            body.decode("utf-8"),
            parse_int=_wide_int,
            parse_float=float,
            parse_constant=_no_constant,
        )
    except (ValueError, RecursionError):
        return _INVALID


def is_json(data: bytes) -> bool:
    """Whether `data` is one JSON document (by the same rules as the ingress)."""
    try:
        _load_json(data)
    except EventError:
        return False
    return True


# The raw JSON text of each member, unparsed (msgspec.Raw: a view of the body, about 3 us for the
# 1 KB reference event). Documents it cannot take (nesting past its limit of about 1,000 levels,
# escaped lone surrogates) are rare and go through bridge.rawjson's scanner instead.
_RAW_MEMBERS = msgspec.json.Decoder(dict[str, msgspec.Raw])
_RAW_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])


def _raw_data(body: bytes) -> bytes | None:
    """The bytes of the `data` member of the (validated) JSON object `body`, unchanged."""
    try:
        raw = _RAW_MEMBERS.decode(body).get("data")
    except (msgspec.DecodeError, RecursionError):
        return rawjson.member_bytes(body, "data")
    return None if raw is None else bytes(raw)


def _raw_batch_data(body: bytes) -> list[bytes | None]:
    """The bytes of each item's `data` member in the (validated) JSON array `body`."""
    try:
        items = [bytes(item) for item in _RAW_ITEMS.decode(body)]
    except (msgspec.DecodeError, RecursionError):
        return [
            rawjson.member_bytes(body, "data", start) if body[start : start + 1] == b"{" else None
            for start in rawjson.item_starts(body)
        ]
    return [_raw_data(item) if item[:1] == b"{" else None for item in items]


def _structured(body: bytes) -> Event:
    doc = _load_json(body)
    return event_from_json(doc, "", _raw_data(body) if isinstance(doc, dict) else None)


def _decode_batch(body: bytes) -> list[Event]:
    doc = _load_json(body)
    if not isinstance(doc, list):
        raise EventError("a batch must be a JSON array of events.")
    raw = _raw_batch_data(body)
    return [event_from_json(item, f"event [{i}]: ", raw[i]) for i, item in enumerate(doc)]


def _percent_decode(raw: str, name: str) -> str:
    if "%" not in raw:
        if raw.isascii():
            return raw
        try:
            return raw.encode("latin-1").decode("utf-8")
        except UnicodeError:
            raise EventError(f"the header {name} is not valid UTF-8.") from None
    data = raw.encode("latin-1")
    if _BAD_PERCENT.search(data):
        raise EventError(f"the header {name} has a malformed percent-encoding.")
    decoded = _PERCENT.sub(lambda m: bytes((int(m.group(1), 16),)), data)
    try:
        return decoded.decode("utf-8")
    except UnicodeError:
        raise EventError(f"the header {name} does not percent-encode valid UTF-8.") from None


def _decode_binary(headers: Mapping[str, str], content_type: str | None, body: bytes) -> Event:
    attrs: dict[str, Any] = {}
    for name, raw in headers.items():
        if not name.startswith(PREFIX):
            continue
        attr = name[3:]
        if not _NAME.match(attr) or attr in ("data", "datacontenttype"):
            raise EventError(
                f"the header {name[:60]} does not name a valid CloudEvents attribute "
                f"(a-z and 0-9, at most {MAX_NAME} characters)."
            )
        attrs[name] = _percent_decode(raw, name)
    if content_type is not None and content_type.strip() == "":
        content_type = None
    _validate(attrs, content_type, "")
    return Event(attrs, content_type, body)


def event_from_json(doc: Any, where: str, raw_data: bytes | None = None) -> Event:
    """A structured-mode (JSON format) event; `where` prefixes error messages in batches.

    `raw_data` is the `data` member's JSON text as received: it becomes the event's data as is,
    so numbers keep every digit. Without it (a document built in code) the value is serialised.
    """
    if not isinstance(doc, dict):
        raise EventError(f"{where}a CloudEvent in JSON must be an object.")
    attrs: dict[str, Any] = {}
    content_type: str | None = None
    has_data = has_b64 = False
    value: Any
    for key, value in doc.items():
        if key == "data":
            has_data = True
            continue
        if key == "data_base64":
            has_b64 = True
            continue
        if not _NAME.match(key):
            raise EventError(
                f"{where}{key[:60]!r} is not a valid CloudEvents attribute name "
                f"(a-z and 0-9, at most {MAX_NAME} characters)."
            )
        if value is None:
            continue  # null means absent
        if key in _STRING_ATTRS:
            if not isinstance(value, str):
                raise EventError(f"{where}the attribute {key} must be a string.")
            if key == "datacontenttype":
                content_type = value
                continue
        elif isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, int):
            if not INT32_MIN <= value <= INT32_MAX:
                raise EventError(
                    f"{where}the extension {key} is an integer outside the 32-bit range of "
                    "CloudEvents Integer."
                )
            value = str(value)
        elif not isinstance(value, str):
            raise EventError(
                f"{where}the extension {key} must be a string, an integer or a boolean."
            )
        attrs[PREFIX + key] = value
    if has_data and has_b64:
        raise EventError(f"{where}an event must not carry both data and data_base64.")
    _validate(attrs, content_type, where)
    data = b""
    if has_b64:
        encoded = doc["data_base64"]
        if encoded is not None:
            if not isinstance(encoded, str):
                raise EventError(f"{where}data_base64 must be a string.")
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise EventError(f"{where}data_base64 is not valid base64.") from None
    elif has_data:
        value = doc["data"]
        if value is not None:
            if isinstance(value, str) and not is_json_media(content_type):
                data = value.encode("utf-8")
            else:
                data = raw_data if raw_data is not None else _dumps(value, where)
                if content_type is None:
                    content_type = "application/json"
    return Event(attrs, content_type, data)


def _dumps(value: Any, where: str) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise EventError(f"{where}the data cannot be written as JSON ({exc}).") from None


def _check_time(time: str, where: str) -> None:
    """RFC 3339: the pattern, then every field in its range (an offset up to 23:59)."""
    match = _RFC3339.match(time)
    if match is not None:
        year, month, day, hour, minute, second, off_h, off_m = match.groups()
        leap = int(year) % 4 == 0 and (int(year) % 100 != 0 or int(year) % 400 == 0)
        month_n = int(month)
        if (
            1 <= month_n <= 12
            and 1 <= int(day) <= (_DAYS[month_n - 1] if month_n != 2 or leap else 28)
            and int(hour) <= 23
            and int(minute) <= 59
            and int(second) <= 60  # a leap second
            and (off_h is None or (int(off_h) <= 23 and int(off_m) <= 59))
        ):
            return
    raise EventError(f"{where}time {time[:80]!r} is not an RFC 3339 timestamp.")


def _check_characters(attrs: dict[str, Any], where: str) -> None:
    """No attribute value may hold a character CloudEvents' String type excludes."""
    joined = "".join(attrs.values())
    # For ASCII text, "printable" excludes exactly CloudEvents' ASCII control characters.
    if joined.isascii():
        if joined.isprintable():
            return
    elif not _BAD_CHARACTER.search(joined):
        return
    for name, value in attrs.items():
        if _BAD_CHARACTER.search(value):
            raise EventError(
                f"{where}the attribute {name.removeprefix(PREFIX)} contains a control "
                "character, a surrogate or a noncharacter, which CloudEvents strings exclude."
            )


def _validate(attrs: dict[str, Any], content_type: str | None, where: str) -> None:
    specversion = attrs.get("ce-specversion")
    if specversion != SPECVERSION:
        if specversion is None:
            raise EventError(f"{where}the event has no specversion.")
        raise EventError(f"{where}specversion {specversion!r} is not supported; use 1.0.")
    for required in ("id", "source", "type"):
        value = attrs.get(PREFIX + required)
        if not value:
            raise EventError(f"{where}the event has no {required}, or it is empty.")
    for optional in ("subject", "dataschema"):
        if attrs.get(PREFIX + optional) == "":
            raise EventError(f"{where}the attribute {optional} must not be empty when present.")
    _check_characters(attrs, where)
    if content_type is not None:
        if content_type == "":
            raise EventError(f"{where}datacontenttype must not be empty when present.")
        if len(content_type) > MAX_CONTENT_TYPE_BYTES:
            raise EventError(
                f"{where}datacontenttype is longer than {MAX_CONTENT_TYPE_BYTES} bytes."
            )
        if not _MEDIA_TYPE.match(content_type):
            raise EventError(
                f"{where}datacontenttype {content_type[:80]!r} is not a media type "
                "(type/subtype with optional parameters, RFC 2046)."
            )
    size = sum(map(len, attrs)) + sum(map(len, attrs.values()))
    if size > MAX_ATTRIBUTES_BYTES // 4 and (
        sum(map(len, attrs)) + sum(len(v.encode()) for v in attrs.values()) > MAX_ATTRIBUTES_BYTES
    ):
        raise EventError(
            f"{where}the event's attributes take more than {MAX_ATTRIBUTES_BYTES} bytes.", 413
        )
    time = attrs.get("ce-time")
    if time is not None:
        _check_time(time, where)
    ttl = attrs.get(TTL_ATTRIBUTE)
    if ttl is None:
        attrs[TTL_ATTRIBUTE] = "255"
    else:
        try:
            number = int(ttl)
        except ValueError:
            raise EventError(f"{where}knativebrokerttl {ttl!r} is not an integer.") from None
        if number <= 0:
            raise EventError(
                f"{where}knativebrokerttl is {number}: the event has used up its broker hops."
            )


# --- HTTP out --------------------------------------------------------------------------------


def _needs_encoding(value: str) -> bool:
    if not value.isascii():
        return True
    return not value.isprintable() or " " in value or '"' in value or "%" in value


def percent_encode(value: str) -> str:
    """CloudEvents HTTP binding: encode space, `"`, `%` and anything outside printable ASCII."""
    if not _needs_encoding(value):
        return value
    out = []
    for byte in value.encode("utf-8"):
        if 0x21 <= byte <= 0x7E and byte not in (0x22, 0x25):
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def binary_headers(
    event: Event, skip: Iterable[str] = (TTL_ATTRIBUTE, CONTENT_TYPE_ATTRIBUTE)
) -> dict[str, str]:
    """HTTP binary-mode headers for an event (without the broker's TTL, as Knative does)."""
    headers: dict[str, str] = {}
    for name, value in event.attrs.items():
        if name.startswith(PREFIX) and name not in skip:
            text = value if isinstance(value, str) else str(value)
            headers[name] = percent_encode(text)
    if event.content_type is not None:
        headers["content-type"] = event.content_type
    return headers


def json_document(
    event: Event, skip: Iterable[str] = (TTL_ATTRIBUTE, CONTENT_TYPE_ATTRIBUTE)
) -> dict[str, Any]:
    """The event in the JSON event format, as a dict: JSON data inline (its bytes unchanged, as an
    `orjson.Fragment`), text data (`text/*`) as a string, anything else as `data_base64`."""
    doc: dict[str, Any] = dict(event.attributes(skip))
    data = event.data
    if not data:
        return doc
    content_type = event.content_type
    if is_json_media(content_type):
        if is_json(data):  # only a check: the data goes out as it came, every digit kept
            doc["data"] = orjson.Fragment(data)
            return doc
    elif content_type is not None and media_type(content_type).startswith("text/"):
        try:
            doc["data"] = data.decode("utf-8")
            return doc
        except UnicodeError:
            pass
    doc["data_base64"] = base64.b64encode(data).decode("ascii")
    return doc


def structured_json(
    event: Event, skip: Iterable[str] = (TTL_ATTRIBUTE, CONTENT_TYPE_ATTRIBUTE)
) -> bytes:
    """The event in the JSON event format (`application/cloudevents+json`)."""
    return orjson.dumps(json_document(event, skip))


def event_from_reply(headers: Mapping[str, str], body: bytes) -> Event | None:
    """A subscriber's 2xx answer as a CloudEvent, or None when it is not one (it is ignored)."""
    mt = media_type(headers.get("content-type"))
    if "ce-specversion" not in headers and not mt.startswith("application/cloudevents"):
        return None
    try:
        events = decode_http(headers, body)
    except EventError:
        return None
    return events[0] if len(events) == 1 else None
