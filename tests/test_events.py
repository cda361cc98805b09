"""Unit tests for bridge.events: decoding every HTTP encoding, strict validation, encoding back.

`decode_http` takes lower-case header names and latin-1 header values, as the ingress gives them.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from bridge.errors import EventError
from bridge.events import (
    DEFAULT_TTL,
    TTL_ATTRIBUTE,
    Event,
    binary_headers,
    decode_http,
    event_from_json,
    event_from_reply,
    is_json_media,
    media_type,
    percent_encode,
    structured_json,
)

DATA = Path(__file__).parent / "data"
OSS_BODY = (DATA / "eventbridge-oss-put-object.json").read_bytes()
CONSOLE_BODY = (DATA / "eventbridge-actiontrail-console-operation.json").read_bytes()
OSS = json.loads(OSS_BODY)
CONSOLE = json.loads(CONSOLE_BODY)
ALIYUN_EXTENSIONS = (
    "aliyunaccountid",
    "aliyunpublishtime",
    "aliyuneventbusname",
    "aliyunregionid",
    "aliyunpublishaddr",
)

BINARY = {
    "ce-specversion": "1.0",
    "ce-id": "id-1",
    "ce-source": "acs.oss",
    "ce-type": "oss:ObjectCreated:PutObject",
}
MINIMAL = {"specversion": "1.0", "id": "id-1", "source": "acs.oss", "type": "t"}
STRUCTURED = {"content-type": "application/cloudevents+json"}
BATCH = {"content-type": "application/cloudevents-batch+json"}
ENVELOPE = {"content-type": "application/json"}


def one(headers: dict[str, str], body: bytes | Any) -> Event:
    if not isinstance(body, bytes):
        body = orjson.dumps(body)
    events = decode_http(headers, body)
    assert len(events) == 1
    return events[0]


def refused(headers: dict[str, str], body: bytes | Any) -> EventError:
    if not isinstance(body, bytes):
        body = orjson.dumps(body)
    with pytest.raises(EventError) as info:
        decode_http(headers, body)
    return info.value


# --- binary mode ----------------------------------------------------------------------------


def test_binary_mode() -> None:
    event = one(
        {
            **BINARY,
            "ce-subject": "demo.data",
            "ce-time": "2023-02-07T09:52:31.000Z",
            "ce-aliyunpublishtime": "2023-02-07T09:52:31.526PRC",
            "content-type": "application/json;charset=utf-8",
            "host": "bridge",
            "content-length": "11",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        },
        b'{"a": [1 ]}',
    )
    assert event.attrs == {
        **BINARY,
        "ce-subject": "demo.data",
        "ce-time": "2023-02-07T09:52:31.000Z",
        "ce-aliyunpublishtime": "2023-02-07T09:52:31.526PRC",
        TTL_ATTRIBUTE: "255",
    }
    assert event.content_type == "application/json;charset=utf-8"
    assert event.data == b'{"a": [1 ]}'  # the body, byte for byte
    assert (event.id, event.type, event.source) == (
        "id-1",
        "oss:ObjectCreated:PutObject",
        "acs.oss",
    )
    assert event.attributes()["datacontenttype"] == "application/json;charset=utf-8"
    assert event.attributes()["id"] == "id-1"


def test_binary_mode_without_content_type_or_body() -> None:
    event = one(BINARY, b"")
    assert event.content_type is None
    assert event.data == b""
    assert "datacontenttype" not in event.attributes()
    assert one({**BINARY, "content-type": "  "}, b"x").content_type is None


def test_binary_mode_ignores_the_structured_body_rules() -> None:
    # ce-specversion present and Content-Type application/json: binary, the body is only data
    event = one({**BINARY, "content-type": "application/json"}, {"specversion": "1.0", "id": "x"})
    assert event.id == "id-1"
    assert json.loads(event.data) == {"specversion": "1.0", "id": "x"}


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("plain", "plain"),
        ("a%20b", "a b"),
        ("%22quoted%22", '"quoted"'),
        ("100%25", "100%"),
        ("caf%C3%A9", "café"),
        ("caf%c3%a9", "café"),
        ("%E4%B8%AD%E6%96%87", "中文"),
        ("caf\xc3\xa9", "café"),  # raw UTF-8 arriving as latin-1
        ("a+b", "a+b"),  # not form encoding
    ],
)
def test_binary_header_percent_decoding(raw: str, decoded: str) -> None:
    assert one({**BINARY, "ce-subject": raw}, b"").attrs["ce-subject"] == decoded


@pytest.mark.parametrize("raw", ["100%", "%2", "%zz", "%%41", "%FF", "%C3", "\xff"])
def test_binary_header_bad_percent_encoding_is_400(raw: str) -> None:
    error = refused({**BINARY, "ce-subject": raw}, b"")
    assert error.status == 400
    assert "ce-subject" in str(error)


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("ce-", "does not name a valid CloudEvents attribute"),
        ("ce-my_ext", "does not name a valid CloudEvents attribute"),
        ("ce-my-ext", "does not name a valid CloudEvents attribute"),
        ("ce-data", "does not name a valid CloudEvents attribute"),
        ("ce-datacontenttype", "does not name a valid CloudEvents attribute"),
        ("ce-" + "a" * 126, "does not name a valid CloudEvents attribute"),
    ],
)
def test_binary_bad_attribute_names_are_400(header: str, problem: str) -> None:
    error = refused({**BINARY, header: "x"}, b"")
    assert error.status == 400
    assert problem in str(error)


def test_binary_longest_attribute_name_is_accepted() -> None:
    name = "ce-" + "a" * 125
    assert one({**BINARY, name: "x"}, b"").attrs[name] == "x"


# --- validation, every encoding ------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"ce-specversion": "0.3"}, "specversion '0.3' is not supported"),
        ({"ce-specversion": "1.0.1"}, "not supported"),
        ({"ce-specversion": ""}, "not supported"),
        ({"ce-id": ""}, "has no id"),
        ({"ce-source": ""}, "has no source"),
        ({"ce-type": ""}, "has no type"),
        ({"ce-subject": ""}, "subject must not be empty"),
        ({"ce-dataschema": ""}, "dataschema must not be empty"),
        ({"ce-time": "yesterday"}, "not an RFC 3339 timestamp"),
        ({"ce-time": "2023-02-07T09:52:31.526PRC"}, "not an RFC 3339 timestamp"),
        ({"ce-time": "2023-02-07 09:52:31Z"}, "not an RFC 3339 timestamp"),
        ({"ce-time": "2023-02-07T09:52:31Z\n"}, "control character"),
        ({"ce-knativebrokerttl": "0"}, "knativebrokerttl is 0"),
        ({"ce-knativebrokerttl": "-3"}, "knativebrokerttl is -3"),
        ({"ce-knativebrokerttl": "many"}, "not an integer"),
    ],
)
def test_binary_invalid_events_are_400(change: dict[str, str], problem: str) -> None:
    error = refused({**BINARY, **change}, b"")
    assert error.status == 400
    assert problem in str(error), str(error)


@pytest.mark.parametrize("missing", ["ce-id", "ce-source", "ce-type"])
def test_binary_missing_required_attribute_is_400(missing: str) -> None:
    headers = {k: v for k, v in BINARY.items() if k != missing}
    error = refused(headers, b"")
    assert error.status == 400
    assert f"has no {missing[3:]}" in str(error)


@pytest.mark.parametrize(
    "time",
    [
        "2023-02-07T09:52:31Z",
        "2023-02-07T09:52:31.000Z",
        "2023-02-07t09:52:31z",
        "2023-02-07T09:52:31+08:00",
        "2023-02-07T09:52:31.123456789-05:30",
    ],
)
def test_rfc3339_times_are_accepted(time: str) -> None:
    assert one({**BINARY, "ce-time": time}, b"").attrs["ce-time"] == time


@pytest.mark.parametrize(("ttl", "kept"), [("1", "1"), ("255", "255"), ("1000", "1000")])
def test_positive_ttl_is_kept(ttl: str, kept: str) -> None:
    assert one({**BINARY, "ce-knativebrokerttl": ttl}, b"").attrs[TTL_ATTRIBUTE] == kept


def test_ttl_defaults_to_255_in_every_mode() -> None:
    assert DEFAULT_TTL == 255
    assert one(BINARY, b"").attrs[TTL_ATTRIBUTE] == "255"
    assert one(STRUCTURED, MINIMAL).attrs[TTL_ATTRIBUTE] == "255"
    assert one(ENVELOPE, MINIMAL).attrs[TTL_ATTRIBUTE] == "255"
    (batched,) = decode_http(BATCH, orjson.dumps([MINIMAL]))
    assert batched.attrs[TTL_ATTRIBUTE] == "255"


@pytest.mark.parametrize(("ttl", "status"), [(0, 400), (-1, 400), ("0", 400), (True, 400)])
def test_structured_ttl_at_or_below_zero_is_400(ttl: Any, status: int) -> None:
    assert refused(STRUCTURED, {**MINIMAL, "knativebrokerttl": ttl}).status == status


def test_structured_integer_ttl_is_kept_as_string() -> None:
    assert one(STRUCTURED, {**MINIMAL, "knativebrokerttl": 3}).attrs[TTL_ATTRIBUTE] == "3"


# --- structured mode ------------------------------------------------------------------------


def test_structured_mode() -> None:
    doc = {
        **MINIMAL,
        "subject": "s",
        "datacontenttype": "application/json",
        "count": 5,
        "flag": True,
        "off": False,
        "gone": None,
        "data": {"k": [1, 2, {"x": None}], "u": "中文"},
    }
    event = one({"content-type": "application/cloudevents+json; charset=utf-8"}, doc)
    assert event.attrs == {
        "ce-specversion": "1.0",
        "ce-id": "id-1",
        "ce-source": "acs.oss",
        "ce-type": "t",
        "ce-subject": "s",
        "ce-count": "5",
        "ce-flag": "true",
        "ce-off": "false",
        TTL_ATTRIBUTE: "255",
    }
    assert event.content_type == "application/json"
    assert json.loads(event.data) == doc["data"]


def test_structured_mode_ignores_ce_headers() -> None:
    event = one({**STRUCTURED, "ce-id": "from-header", "ce-specversion": "1.0"}, MINIMAL)
    assert event.id == "id-1"


@pytest.mark.parametrize(
    ("doc", "content_type", "data"),
    [
        ({"data": {"a": 1}}, "application/json", b'{"a":1}'),
        ({"data": "text"}, "application/json", b'"text"'),  # JSON data is a JSON value
        ({"data": [1, 2]}, "application/json", b"[1,2]"),
        ({"data": None}, None, b""),
        ({"datacontenttype": "text/plain", "data": "héllo"}, "text/plain", "héllo".encode()),
        ({"datacontenttype": "application/xml", "data": "<a/>"}, "application/xml", b"<a/>"),
        (
            {"datacontenttype": "application/vnd.x+json", "data": {"a": 1}},
            "application/vnd.x+json",
            b'{"a":1}',
        ),
        (
            {"datacontenttype": "application/octet-stream", "data_base64": "AAEC/w=="},
            "application/octet-stream",
            b"\x00\x01\x02\xff",
        ),
        ({"data_base64": "aGk="}, None, b"hi"),
        ({"data_base64": None}, None, b""),
        ({}, None, b""),
    ],
)
def test_structured_data_and_data_base64(
    doc: dict[str, Any], content_type: str | None, data: bytes
) -> None:
    event = one(STRUCTURED, {**MINIMAL, **doc})
    assert event.content_type == content_type
    assert event.data == data


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ({"data": "a", "data_base64": "YQ=="}, "both data and data_base64"),
        ({"data": None, "data_base64": "YQ=="}, "both data and data_base64"),
        ({"data_base64": "not base64!"}, "data_base64 is not valid base64"),
        ({"data_base64": 5}, "data_base64 must be a string"),
        ({"specversion": "0.3"}, "not supported"),
        ({"specversion": 1.0}, "specversion must be a string"),
        ({"specversion": None}, "has no specversion"),
        ({"id": ""}, "has no id"),
        ({"id": 5}, "id must be a string"),
        ({"source": None}, "has no source"),
        ({"type": ""}, "has no type"),
        ({"time": "2023-02-07T09:52:31.526PRC"}, "not an RFC 3339 timestamp"),
        ({"datacontenttype": ""}, "datacontenttype must not be empty"),
        ({"datacontenttype": 5}, "datacontenttype must be a string"),
        ({"subject": ""}, "subject must not be empty"),
        ({"Bad": "x"}, "is not a valid CloudEvents attribute name"),
        ({"my_ext": "x"}, "is not a valid CloudEvents attribute name"),
        ({"ext": 1.5}, "must be a string, an integer or a boolean"),
        ({"ext": {"a": 1}}, "must be a string, an integer or a boolean"),
        ({"ext": [1]}, "must be a string, an integer or a boolean"),
    ],
)
def test_structured_invalid_events_are_400(doc: dict[str, Any], problem: str) -> None:
    error = refused(STRUCTURED, {**MINIMAL, **doc})
    assert error.status == 400
    assert problem in str(error), str(error)


@pytest.mark.parametrize("missing", ["specversion", "id", "source", "type"])
def test_structured_missing_required_attribute_is_400(missing: str) -> None:
    doc = {k: v for k, v in MINIMAL.items() if k != missing}
    assert refused(STRUCTURED, doc).status == 400


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b'{"a":1} x', b"\xff\xfe"])
def test_malformed_json_is_400(body: bytes) -> None:
    for headers in (STRUCTURED, BATCH, ENVELOPE):
        error = refused(headers, body)
        assert error.status == 400
        assert "not valid JSON" in str(error)


@pytest.mark.parametrize("body", [b"[]", b'"x"', b"1", b"null"])
def test_structured_body_must_be_an_object(body: bytes) -> None:
    error = refused(STRUCTURED, body)
    assert error.status == 400
    assert "must be an object" in str(error)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/cloudevents+xml",
        "application/cloudevents+avro",
        "application/cloudevents",
        "application/cloudevents-batch+xml",
        "application/cloudevents-batch",
        "Application/CloudEvents+XML; charset=utf-8",
    ],
)
def test_unsupported_structured_formats_are_415(content_type: str) -> None:
    error = refused({"content-type": content_type}, MINIMAL)
    assert error.status == 415


def test_structured_content_type_is_case_insensitive() -> None:
    assert one({"content-type": "Application/CloudEvents+JSON"}, MINIMAL).id == "id-1"


# --- batched mode ---------------------------------------------------------------------------


def test_batched_mode() -> None:
    events = decode_http(
        BATCH, orjson.dumps([MINIMAL, {**MINIMAL, "id": "id-2", "data_base64": "aGk="}])
    )
    assert [e.id for e in events] == ["id-1", "id-2"]
    assert events[1].data == b"hi"


def test_empty_batch_is_no_event() -> None:
    assert decode_http(BATCH, b"[]") == []


def test_batch_is_all_or_nothing_and_names_the_bad_event() -> None:
    error = refused(BATCH, [MINIMAL, MINIMAL, {**MINIMAL, "id": ""}])
    assert error.status == 400
    assert str(error).startswith("event [2]: ")


@pytest.mark.parametrize("body", [MINIMAL, "x", 1, None])
def test_batch_must_be_an_array(body: Any) -> None:
    error = refused(BATCH, body)
    assert error.status == 400
    assert "JSON array" in str(error)


def test_batch_items_must_be_objects() -> None:
    error = refused(BATCH, [MINIMAL, "x"])
    assert str(error).startswith("event [1]: ")


# --- EventBridge envelope -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "doc"),
    [(OSS_BODY, OSS), (CONSOLE_BODY, CONSOLE)],
    ids=["oss-put-object", "actiontrail-console-operation"],
)
@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json;charset=utf-8", "application/json; charset=UTF-8"],
)
def test_eventbridge_envelope_samples(body: bytes, doc: dict[str, Any], content_type: str) -> None:
    event = one({"content-type": content_type, "x-eventbridge-signature-token": "t"}, body)
    assert event.id == doc["id"]
    assert event.source == "acs.oss"
    assert event.type == doc["type"]
    assert event.content_type == "application/json;charset=utf-8"
    assert json.loads(event.data) == doc["data"]
    assert event.attrs["ce-time"] == doc["time"]
    assert event.attrs["ce-subject"] == doc["subject"]
    # Alibaba's extensions pass through untouched, even aliyunpublishtime's "...PRC" value
    for name, value in doc.items():
        if name.startswith("aliyun"):
            assert event.attrs[f"ce-{name}"] == value
    assert set(event.attributes()) == {*doc.keys(), "knativebrokerttl"} - {"data"}


def test_oss_sample_extensions_are_all_there() -> None:
    event = one(ENVELOPE, OSS_BODY)
    for name in ALIYUN_EXTENSIONS:
        assert event.attrs[f"ce-{name}"] == OSS[name]
    assert event.attrs["ce-aliyunpublishtime"] == "2023-02-07T09:52:31.526PRC"


def test_envelope_is_the_same_event_as_structured_mode() -> None:
    a = one(ENVELOPE, OSS_BODY)
    b = one(STRUCTURED, OSS_BODY)
    assert (a.attrs, a.content_type, a.data) == (b.attrs, b.content_type, b.data)


@pytest.mark.parametrize(
    ("headers", "body", "problem"),
    [
        (ENVELOPE, {"id": "1", "source": "s", "type": "t"}, "no specversion"),
        (ENVELOPE, [MINIMAL], "no specversion"),
        (ENVELOPE, {"hello": "world"}, "not a CloudEvent"),
        ({"content-type": "text/plain"}, b"hello", "not a CloudEvent"),
        ({"content-type": "application/xml"}, b"<a/>", "not a CloudEvent"),
        ({}, MINIMAL, "not a CloudEvent"),
        ({"content-type": "text/json"}, MINIMAL, "not a CloudEvent"),
    ],
)
def test_requests_that_are_not_cloudevents_are_400(
    headers: dict[str, str], body: Any, problem: str
) -> None:
    error = refused(headers, body)
    assert error.status == 400
    assert problem in str(error)


def test_envelope_is_validated_like_structured_mode() -> None:
    assert "has no id" in str(refused(ENVELOPE, {**MINIMAL, "id": ""}))
    assert refused(ENVELOPE, {**MINIMAL, "knativebrokerttl": 0}).status == 400


def test_event_error_messages_are_one_sentence() -> None:
    for error in (
        refused(BINARY | {"ce-id": ""}, b""),
        refused(STRUCTURED, b"{"),
        refused({"content-type": "application/cloudevents+xml"}, b""),
    ):
        text = str(error)
        assert text.endswith(".")
        assert "\n" not in text


# --- media types ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "media", "is_json"),
    [
        (None, "", True),
        ("", "", True),
        ("application/json", "application/json", True),
        ("Application/JSON; charset=utf-8", "application/json", True),
        ("text/json", "text/json", True),
        ("application/cloudevents+json", "application/cloudevents+json", True),
        ("application/vnd.api+json;v=1", "application/vnd.api+json", True),
        ("text/plain", "text/plain", False),
        ("application/octet-stream", "application/octet-stream", False),
        ("application/jsonx", "application/jsonx", False),
    ],
)
def test_media_types(content_type: str | None, media: str, is_json: bool) -> None:
    assert media_type(content_type) == media
    assert is_json_media(content_type) is is_json


# --- HTTP out: percent-encoding, binary headers, structured JSON ----------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("plain-ascii_1.2:3/4", "plain-ascii_1.2:3/4"),
        ("a b", "a%20b"),
        ('say "hi"', "say%20%22hi%22"),
        ("100%", "100%25"),
        ("café", "caf%C3%A9"),
        ("中", "%E4%B8%AD"),
        ("line\nbreak", "line%0Abreak"),
        ("tab\t", "tab%09"),
        ("\x7f", "%7F"),
        ("2023-02-07T09:52:31.526PRC", "2023-02-07T09:52:31.526PRC"),
        ("", ""),
    ],
)
def test_percent_encode(value: str, encoded: str) -> None:
    assert percent_encode(value) == encoded


@pytest.mark.parametrize("value", ["a b", '"%"', "café 中文", "100% sure", "plain"])
def test_percent_encoding_round_trips_through_binary_mode(value: str) -> None:
    headers = binary_headers(Event({**BINARY, "ce-subject": value}, None, b""))
    assert all(v.isascii() and v.isprintable() and " " not in v for v in headers.values())
    assert one(headers, b"").attrs["ce-subject"] == value


def test_binary_headers() -> None:
    event = one(
        {
            **BINARY,
            "ce-subject": "a b",
            "ce-knativebrokerttl": "7",
            "content-type": "text/plain",
        },
        b"hi",
    )
    event.attrs["traceparent"] = "00-abc-def-01"  # bridge's own header: never a ce- header
    headers = binary_headers(event)
    assert headers == {
        **BINARY,
        "ce-subject": "a%20b",
        "content-type": "text/plain",
    }
    with_ttl = binary_headers(event, skip=())
    assert with_ttl[TTL_ATTRIBUTE] == "7"


def test_binary_headers_without_content_type() -> None:
    assert "content-type" not in binary_headers(one(BINARY, b""))


def test_binary_headers_stringify_non_string_amqp_values() -> None:
    event = Event({**BINARY, "ce-count": 5}, None, b"")
    assert binary_headers(event)["ce-count"] == "5"


@pytest.mark.parametrize(
    ("content_type", "data", "expected"),
    [
        ("application/json", b'{"a":1}', {"data": {"a": 1}}),
        ("application/json;charset=utf-8", b"[1,2]", {"data": [1, 2]}),
        (None, b'{"a":1}', {"data": {"a": 1}}),
        ("application/json", b"{broken", {"data_base64": base64.b64encode(b"{broken").decode()}),
        ("text/plain", "héllo".encode(), {"data": "héllo"}),
        ("text/plain", b"\xff\xfe", {"data_base64": "//4="}),
        ("application/octet-stream", b"\x00\x01", {"data_base64": "AAE="}),
        ("application/xml", b"<a/>", {"data_base64": "PGEvPg=="}),
        ("application/json", b"", {}),
    ],
)
def test_structured_json(content_type: str | None, data: bytes, expected: dict[str, Any]) -> None:
    event = Event({**BINARY, TTL_ATTRIBUTE: "9", "ce-ext": "v"}, content_type, data)
    doc = json.loads(structured_json(event))
    attributes = {"specversion": "1.0", "id": "id-1", "source": "acs.oss"}
    assert doc["type"] == "oss:ObjectCreated:PutObject"
    assert {k: doc[k] for k in attributes} == attributes
    assert doc["ext"] == "v"
    assert "knativebrokerttl" not in doc
    assert doc.get("datacontenttype") == content_type
    assert {k: doc[k] for k in ("data", "data_base64") if k in doc} == expected


def test_structured_json_round_trips_the_sample() -> None:
    event = one(ENVELOPE, OSS_BODY)
    again = one(STRUCTURED, structured_json(event, skip=()))
    assert (again.attrs, again.content_type, again.data) == (
        event.attrs,
        event.content_type,
        event.data,
    )
    doc = json.loads(structured_json(event))
    assert doc["data"] == OSS["data"]
    assert doc["aliyunpublishtime"] == "2023-02-07T09:52:31.526PRC"


def test_structured_json_skips_bridge_headers() -> None:
    event = Event({**BINARY, "traceparent": "00-x-y-01", "bridge-attempts": 2}, None, b"")
    doc = json.loads(structured_json(event))
    assert set(doc) == {"specversion", "id", "source", "type"}


# --- replies and AMQP -----------------------------------------------------------------------


def test_reply_in_binary_mode_is_an_event() -> None:
    reply = event_from_reply(
        {**BINARY, "ce-type": "reply.type", "content-type": "application/json"}, b'{"ok":true}'
    )
    assert reply is not None
    assert reply.type == "reply.type"
    assert reply.data == b'{"ok":true}'
    assert reply.attrs[TTL_ATTRIBUTE] == "255"


def test_reply_in_structured_mode_is_an_event() -> None:
    reply = event_from_reply(STRUCTURED, orjson.dumps({**MINIMAL, "id": "r1", "data": 1}))
    assert reply is not None
    assert reply.id == "r1"


def test_reply_batch_of_one_is_an_event_and_larger_batches_are_not() -> None:
    assert event_from_reply(BATCH, orjson.dumps([MINIMAL])) is not None
    assert event_from_reply(BATCH, orjson.dumps([MINIMAL, MINIMAL])) is None
    assert event_from_reply(BATCH, b"[]") is None


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({}, b""),
        ({"content-type": "text/plain"}, b"ok"),
        ({"content-type": "application/json"}, b'{"status": "ok"}'),
        # a CloudEvent-shaped JSON body without ce- headers is not a reply event
        ({"content-type": "application/json"}, orjson.dumps(MINIMAL)),
        # invalid CloudEvents are ignored, not errors
        ({**BINARY, "ce-id": ""}, b""),
        ({**BINARY, "ce-knativebrokerttl": "0"}, b""),
        (STRUCTURED, b"{broken"),
        ({"content-type": "application/cloudevents+xml"}, b"<e/>"),
    ],
)
def test_reply_that_is_not_a_valid_cloudevent_is_ignored(
    headers: dict[str, str], body: bytes
) -> None:
    assert event_from_reply(headers, body) is None


def test_event_from_json_prefixes_errors() -> None:
    with pytest.raises(EventError, match=r"^event \[3\]: the event has no type"):
        event_from_json({**MINIMAL, "type": ""}, "event [3]: ")


# --- hardened edges: nothing unsendable is accepted ------------------------------------------

STRUCTURED = {"content-type": "application/cloudevents+json"}
INJECTION = "text/plain\r\ncontent-length: 0\r\n\r\nPOST /smuggled HTTP/1.1\r\nhost: evil\r\n\r\n"


def test_structured_header_injection_in_datacontenttype_is_400() -> None:
    """Finding 1: a datacontenttype carrying CR LF and a second request used to be accepted and
    written raw into the subscriber POST."""
    error = refused(STRUCTURED, {**MINIMAL, "datacontenttype": INJECTION, "data": "x"})
    assert error.status == 400
    assert "datacontenttype" in str(error)


@pytest.mark.parametrize("char", ["\r", "\n", "\x00", "\x1f", "\x7f", "\x85", "\ud800", "\ufffe"])
@pytest.mark.parametrize("attribute", ["id", "source", "type", "subject", "myext"])
def test_excluded_characters_in_any_attribute_are_400(attribute: str, char: str) -> None:
    doc = {**MINIMAL, attribute: f"a{char}b"}
    error = refused(STRUCTURED, orjson.dumps(doc) if char != "\ud800" else _surrogate_doc(doc))
    assert error.status == 400
    assert f"the attribute {attribute} contains a control character" in str(error)
    if char not in ("\ud800", "\x85", "\ufffe"):  # not sendable as a raw header byte either way
        binary = {**BINARY, f"ce-{attribute}": f"a{char}b"}
        assert "contains a control character" in str(refused(binary, b""))


def _surrogate_doc(doc: dict[str, Any]) -> bytes:
    # orjson refuses to write a lone surrogate; JSON may carry one as an escape.
    return json.dumps(doc).encode()


def test_binary_header_values_with_control_characters_after_decoding_are_400() -> None:
    error = refused({**BINARY, "ce-subject": "a%0D%0Ab"}, b"")
    assert error.status == 400
    assert "subject contains a control character" in str(error)


@pytest.mark.parametrize(
    "value",
    ["café", "中文", "emoji \U0001f600", "\u00a0nbsp", "2023-02-07T09:52:31.526PRC"],
)
def test_printable_unicode_is_accepted_and_encoded_safely(value: str) -> None:
    event = one(STRUCTURED, {**MINIMAL, "subject": value})
    wire = "".join(f"{k}: {v}\r\n" for k, v in binary_headers(event).items())
    assert wire.isascii()
    assert "\r" not in wire.replace("\r\n", "")
    assert "\n" not in wire.replace("\r\n", "")


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/json;charset=utf-8",
        "application/json; charset=UTF-8",
        'multipart/form-data; boundary="a b;c"',
        "application/vnd.api+json",
        "text/plain;",
        "application/octet-stream ; x=1 ; y=2",
    ],
)
def test_valid_media_types_are_accepted(content_type: str) -> None:
    event = one(STRUCTURED, {**MINIMAL, "datacontenttype": content_type, "data": "x"})
    assert event.content_type == content_type
    assert one({**BINARY, "content-type": content_type}, b"x").content_type == content_type


@pytest.mark.parametrize(
    "content_type",
    [
        "json",
        "text/",
        "/plain",
        "text/plain charset=utf-8",
        "text/plain; charset",
        "text/plain; charset=",
        'text/plain; a="unterminated',
        "text/pl\u00e4in",
        "text/plain\x00",
        "text /plain",
        " text/plain",
    ],
)
def test_invalid_media_types_are_400(content_type: str) -> None:
    """Finding 12: a datacontenttype that is not an RFC 2046 media type used to be accepted."""
    error = refused(STRUCTURED, {**MINIMAL, "datacontenttype": content_type, "data": "x"})
    assert error.status == 400
    if "\x00" not in content_type:
        assert "is not a media type" in str(error)
        assert "is not a media type" in str(refused({**BINARY, "content-type": content_type}, b""))


@pytest.mark.parametrize(
    "time",
    [
        "2023-02-07T09:52:31+24:00",
        "2023-02-07T09:52:31-99:00",
        "2023-02-07T09:52:31+05:60",
        "2023-13-07T09:52:31Z",
        "2023-00-07T09:52:31Z",
        "2023-02-29T09:52:31Z",
        "2023-04-31T09:52:31Z",
        "2023-02-07T24:00:00Z",
        "2023-02-07T09:60:00Z",
        "2023-02-07T09:52:61Z",
        "2023-02-00T09:52:31Z",
    ],
)
def test_out_of_range_timestamps_are_400(time: str) -> None:
    """Finding 12: a time whose UTC offset (or any field) is out of range used to be accepted."""
    error = refused(STRUCTURED, {**MINIMAL, "time": time})
    assert error.status == 400
    assert "not an RFC 3339 timestamp" in str(error)


@pytest.mark.parametrize(
    "time",
    [
        "2024-02-29T09:52:31Z",
        "2000-02-29T00:00:00Z",
        "2016-12-31T23:59:60Z",
        "2023-02-07T09:52:31.123456789+23:59",
        "2023-02-07t09:52:31-00:00",
    ],
)
def test_in_range_timestamps_are_accepted(time: str) -> None:
    assert one(STRUCTURED, {**MINIMAL, "time": time}).attrs["ce-time"] == time


@pytest.mark.parametrize("value", [2**31, -(2**31) - 1, 10**18, 10**30, 10**400])
def test_integer_extensions_outside_32_bits_are_400(value: int) -> None:
    error = refused(
        STRUCTURED, b'{"specversion":"1.0","id":"1","source":"s","type":"t","n":%d}' % value
    )
    assert error.status == 400
    assert "outside the 32-bit range" in str(error) or (
        value > 2**63 and "must be a string, an integer or a boolean" in str(error)
    )


def test_integer_extensions_at_the_32_bit_limits_are_accepted() -> None:
    event = one(STRUCTURED, {**MINIMAL, "lo": -(2**31), "hi": 2**31 - 1})
    assert (event.attrs["ce-lo"], event.attrs["ce-hi"]) == ("-2147483648", "2147483647")


# --- data is never re-serialised -------------------------------------------------------------

EXACT_DATA = [
    b'{"n":1234567890123456789012345}',
    b'{"d":0.1000000000000000055511151231257827,"e":1E400,"f":-0.0}',
    b"[1.10, 2.000, 3e-7]",
    b'{ "spaced" : [ 1 , 2 ] ,\n "\\u00e9" : "\\u00e9" }',
    b'"a string"',
    b"12345678901234567890123456789",
    b"[" * 600 + b"]" * 600,
    b"[" * 1020 + b"]" * 1020,
    b"9" * 5000,
    b'["\\ud800 a lone surrogate escape"]',
    b'{"a":' * 300 + b"1" + b"}" * 300,
]


@pytest.mark.parametrize("data", EXACT_DATA)
@pytest.mark.parametrize(
    "wrap",
    ["structured", "envelope", "batch"],
)
def test_json_data_keeps_its_exact_bytes(data: bytes, wrap: str) -> None:
    """Findings 2 and 3: data nested deeper than 254 levels gave 500, and numbers lost digits
    (1234567890123456789012345 reached subscribers as 1.2345678901234568e+24)."""
    doc = b'{"specversion":"1.0","id":"1","source":"s","type":"t","data":' + data + b', "x":"y"}'
    if wrap == "batch":
        events = decode_http(
            {"content-type": "application/cloudevents-batch+json"}, b"[" + doc + b" , " + doc + b"]"
        )
        assert [e.data for e in events] == [data, data]
        return
    headers = STRUCTURED if wrap == "structured" else {"content-type": "application/json"}
    event = one(headers, doc)
    assert event.data == data
    assert event.content_type == "application/json"


@pytest.mark.parametrize("data", EXACT_DATA)
def test_structured_output_keeps_json_data_exact(data: bytes) -> None:
    event = Event({**BINARY, "ce-knativebrokerttl": "255"}, "application/json", data)
    out = structured_json(event)
    assert out.endswith(b'"data":' + data + b"}")
    assert one(STRUCTURED, out).data == data


def test_duplicate_data_member_takes_the_last_as_the_parser_does() -> None:
    body = b'{"specversion":"1.0","id":"1","source":"s","type":"t","data":1,"data":{"n":2}}'
    assert one(STRUCTURED, body).data == b'{"n":2}'


def test_escaped_member_name_data_is_data() -> None:
    body = b'{"specversion":"1.0","id":"1","source":"s","type":"t","\\u0064ata":[10000000000000000000001]}'
    assert one(STRUCTURED, body).data == b"[10000000000000000000001]"


def test_too_deep_json_is_400_not_500() -> None:
    body = (
        b'{"specversion":"1.0","id":"1","source":"s","type":"t","data":'
        + b"[" * 2000
        + b"]" * 2000
        + b"}"
    )
    error = refused(STRUCTURED, body)
    assert error.status == 400
    assert "not valid JSON" in str(error)
