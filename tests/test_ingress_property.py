"""Property: whatever arrives over HTTP, the ingress (RabbitMQ up) never answers 5xx, never stops
serving, and stores exactly what it accepted: one message per event when it answers 202, none
otherwise.

One bridge (role "ingress", one catch-all trigger, nothing consuming) serves every example, so the
queue depths count exactly what the ingress stored. Requests are written as raw bytes, so headers
can carry any name and any latin-1 value a client could send.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import queue_depth
from tests.helpers import (
    CATCH_ALL,
    DEFAULT_PATH,
    STRUCTURED,
    UNMATCHED,
    RawResponse,
    close_writer,
    error_of,
    host_port,
    start,
)

TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Headers that frame the request: the test writes these itself.
FRAMING = {"content-length", "transfer-encoding", "connection", "host", "upgrade", "expect"}

INTERESTING_TYPES = [
    "application/cloudevents+json",
    "application/cloudevents+json; charset=utf-8",
    "application/cloudevents-batch+json",
    "application/cloudevents+xml",
    "application/cloudevents-batch+xml",
    "application/cloudevents",
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON;charset=UTF-8",
    "text/json",
    "text/plain",
    "application/octet-stream",
    "multipart/form-data; boundary=x",
    "",
    ";",
    " application/cloudevents+json ",
]
CE_NAMES = [
    "ce-specversion",
    "ce-id",
    "ce-source",
    "ce-type",
    "ce-time",
    "ce-subject",
    "ce-dataschema",
    "ce-knativebrokerttl",
    "ce-datacontenttype",
    "ce-data",
    "ce-data_base64",
    "ce-aliyunpublishtime",
    "ce-aliyunaccountid",
    "ce-",
    "CE-ID",
    "Ce-Type",
    "ce-Bad",
    "ce-a.b",
]
OTHER_NAMES = [
    "content-type",
    "Content-Type",
    "traceparent",
    "tracestate",
    "authorization",
    "x-eventbridge-signature-token",
    "accept",
    "prefer",
]
INTERESTING_VALUES = [
    "1.0",
    "0.3",
    "1.0 ",
    "",
    "%",
    "%zz",
    "%2",
    "%E2%82%AC",
    "%E2%82",
    "%00",
    "%0D%0A",
    "0",
    "-1",
    "255",
    "1_0",
    " 7 ",
    "2023-02-07T09:52:31Z",
    "2023-02-07T09:52:31.526PRC",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "Bearer x",
    "caf\xc3\xa9",  # UTF-8 bytes of "café" as they arrive (latin-1)
    "\xff\xfe",
]

LIMIT = 2048  # max_event_bytes of the bridge under test
# Longer than AMQP short strings (255 bytes) or header-name limits (128 bytes).
LONG_STRINGS = ["x" * 300, "é" * 200, "a" * 130]

header_names = st.one_of(
    st.sampled_from(CE_NAMES + OTHER_NAMES),
    st.text(TOKEN, min_size=1, max_size=12).map(lambda s: "ce-" + s),
    st.just("ce-" + "a" * 130),
    st.text(TOKEN, min_size=1, max_size=12),
).filter(lambda name: name.lower() not in FRAMING)
header_values = st.one_of(
    st.sampled_from(INTERESTING_VALUES + INTERESTING_TYPES + LONG_STRINGS[::2]),
    st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
        max_size=40,
    ),
)
content_types = st.one_of(st.sampled_from(INTERESTING_TYPES), header_values)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(LONG_STRINGS),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
ATTRIBUTES = [
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "subject",
    "dataschema",
    "datacontenttype",
    "data",
    "data_base64",
    "knativebrokerttl",
    "aliyunpublishtime",
]


@st.composite
def events(draw: st.DrawFn) -> Any:
    """A valid event, then zero to three mutations (drop, replace or add an attribute)."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": draw(st.sampled_from(["e-1", "", "long", "text"])),
        "source": "fuzz",
        "type": draw(st.sampled_from(["t", "oss:ObjectCreated:PutObject"])),
    }
    if event["id"] == "long":
        event["id"] = draw(st.sampled_from(LONG_STRINGS))
    elif event["id"] == "text":
        event["id"] = draw(st.text(min_size=1, max_size=12))
    if draw(st.booleans()):
        event["datacontenttype"] = draw(
            st.one_of(st.sampled_from(["application/json", "text/plain"]), content_types)
        )
    shape = draw(st.sampled_from(["none", "data", "base64"]))
    if shape == "data":
        event["data"] = draw(json_values)
    elif shape == "base64":
        event["data_base64"] = draw(st.sampled_from(["", "aGk=", "AAH/", "not base64!"]))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
        action = draw(st.sampled_from(["drop", "replace", "add"]))
        if action == "drop" and event:
            del event[draw(st.sampled_from(sorted(event)))]
        elif action == "replace":
            event[draw(st.sampled_from(ATTRIBUTES))] = draw(json_values)
        else:
            name = draw(
                st.one_of(
                    st.text(max_size=10),
                    st.text("abcxyz019", min_size=1),
                    st.sampled_from(LONG_STRINGS[2:]),
                )
            )
            event[name] = draw(json_values)
    return event


def dump(value: Any) -> bytes:
    # The standard library writes big integers and NaN too (orjson refuses): more to fuzz.
    return json.dumps(value).encode()


random_json_bodies = json_values.map(dump)
bodies = st.one_of(
    st.binary(max_size=300),
    random_json_bodies,
    events().map(dump),
    st.lists(events(), max_size=4).map(dump),
    st.sampled_from(
        [
            b"",
            b"{",
            b"[",
            b"null",
            b"[]",
            b"[{}]",
            b'{"specversion":"1.0","id":"\\ud800","source":"s","type":"t"}',
            b'{"specversion":"1.0","id":"x","source":"s","type":"t","data":"\\u0000"}',
            b"\xef\xbb\xbf{}",
            b"x" * (LIMIT + 1),
            dump(
                {"specversion": "1.0", "id": "big", "source": "s", "type": "t", "data": "x" * LIMIT}
            ),
        ]
    ),
)
extra_headers = st.lists(st.tuples(header_names, header_values), max_size=4)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, list[tuple[str, str]], bytes]:
    mode = draw(st.sampled_from(["binary", "structured", "envelope", "batch", "anything"]))
    headers: list[tuple[str, str]] = []
    if mode == "binary":
        base = {"ce-specversion": "1.0", "ce-id": "b", "ce-source": "fuzz", "ce-type": "t"}
        for name in draw(st.lists(st.sampled_from(sorted(base)), unique=True, max_size=2)):
            base[name] = draw(header_values)
        headers += list(base.items())
        if draw(st.booleans()):
            headers.append(("content-type", draw(content_types)))
        body = draw(bodies)
    elif mode == "structured":
        headers.append(("content-type", draw(st.sampled_from(INTERESTING_TYPES[:2]))))
        body = draw(st.one_of(events().map(dump), bodies))
    elif mode == "envelope":
        headers.append(("content-type", draw(st.sampled_from(INTERESTING_TYPES[6:9]))))
        body = draw(st.one_of(events().map(dump), bodies))
    elif mode == "batch":
        headers.append(("content-type", "application/cloudevents-batch+json"))
        body = draw(st.one_of(st.lists(events(), max_size=4).map(dump), bodies))
    else:
        if draw(st.booleans()):
            headers.append(("content-type", draw(content_types)))
        body = draw(bodies)
    if draw(st.booleans()):
        headers += draw(extra_headers)
    if draw(st.booleans()):
        headers = draw(st.permutations(headers))
    method = draw(st.sampled_from(["POST"] * 15 + ["GET", "PUT", "OPTIONS", "PATCH", "HEAD"]))
    path = draw(st.sampled_from(["/", DEFAULT_PATH, DEFAULT_PATH + "/", "/?x=1"] * 4 + [""]))
    if not path:
        path = "/" + draw(st.text(TOKEN + "/", max_size=20))
    return method, path, headers, body


def encode_request(method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: bridge", f"content-length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def expected_events(headers: list[tuple[str, str]], body: bytes) -> int:
    """How many events a request that got 202 carried: a batch's length, else one."""
    values = [v for k, v in headers if k.lower() == "content-type"]
    media = ",".join(values).split(";", 1)[0].strip().lower()
    if media.startswith("application/cloudevents-batch"):
        doc = orjson.loads(body)
        assert isinstance(doc, list)
        return len(doc)
    return 1


async def read_response(reader: asyncio.StreamReader, to_head: bool = False) -> RawResponse:
    """One HTTP/1.1 answer; an answer to HEAD has no body whatever its content-length."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if to_head:
        return RawResponse(status, headers, b"")
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5.0)
    return RawResponse(status, headers, body)


VALID = encode_request(
    "POST",
    "/",
    [("content-type", STRUCTURED)],
    orjson.dumps({"specversion": "1.0", "id": "alive", "source": "fuzz", "type": "t"}),
)


@pytest.fixture
async def fuzz_target(bridge_factory: Any, amqp: Any) -> Any:
    return await start(bridge_factory, ingress={"max_event_bytes": LIMIT}), amqp


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(request=requests())
async def test_ingress_never_5xx_never_stores_what_it_refused(
    fuzz_target: Any, request: tuple[str, str, list[tuple[str, str]], bytes]
) -> None:
    running, amqp = fuzz_target
    method, path, headers, body = request

    async def depth() -> int:
        return await queue_depth(amqp, CATCH_ALL) + await queue_depth(amqp, UNMATCHED)

    before = await depth()
    reader, writer = await asyncio.open_connection(*host_port(running.url))
    try:
        writer.write(encode_request(method, path, headers, body))
        await writer.drain()
        response = await read_response(reader, to_head=method == "HEAD")
        event(f"answer {response.status}")
        assert response.status < 500, (response.status, response.body)
        if response.status >= 400 and method != "HEAD":
            error_of(response.body)
        stored = await depth() - before
        expected = expected_events(headers, body) if response.status == 202 else 0
        assert stored == expected, (response.status, response.body)
        # Still serving, on the same connection when it was kept open.
        if response.headers.get("connection") == "close":
            await close_writer(writer)
            reader, writer = await asyncio.open_connection(*host_port(running.url))
        writer.write(VALID)
        await writer.drain()
        alive = await read_response(reader)
        assert alive.status == 202, alive.body
        assert await depth() - before == expected + 1
    finally:
        await close_writer(writer)
