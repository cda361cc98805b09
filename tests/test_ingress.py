"""The HTTP ingress (CONTRACT section 4) and the admin listener (section 5), against the real local
RabbitMQ: every status code of 4.3, each encoding mode, the broker paths, authentication, the
unmatched queue and the admin endpoints.

Bridge runs with role "ingress" so nothing consumes: what the ingress stored can be counted and
read back exactly from the trigger and unmatched queues.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RABBITMQCTL, eventually, get_all, queue_depth, trigger
from tests.helpers import (
    CATCH_ALL,
    DEFAULT_PATH,
    NOWHERE,
    STRUCTURED,
    UNMATCHED,
    RawResponse,
    close_writer,
    error_of,
    host_port,
    start,
    stored,
    valid_event,
)

DATA = Path(__file__).parent / "data"
DEFAULT_BROKER = "default/eventbridge-default-broker"
BATCH = "application/cloudevents-batch+json"


# --- helpers -------------------------------------------------------------------------------------


def binary_headers(**overrides: str | None) -> dict[str, str]:
    headers: dict[str, str | None] = {
        "ce-specversion": "1.0",
        "ce-id": "b-1",
        "ce-source": "test",
        "ce-type": "t",
    }
    headers.update(overrides)
    return {k: v for k, v in headers.items() if v is not None}


async def admin_get(running: Any, path: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(running.admin + path) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def metrics_text(running: Any) -> str:
    status, headers, body = await admin_get(running, "metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    return body.decode()


def parse_response(data: bytes) -> RawResponse:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete HTTP response in {data[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(body)))
    return RawResponse(status, headers, body[:length])


async def raw_exchange(url: str, request: bytes, timeout: float = 5.0) -> RawResponse:
    """Send bytes as they are; read the answer until the server closes the connection."""
    reader, writer = await asyncio.open_connection(*host_port(url))
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        await close_writer(writer)
    return parse_response(data)


def raw_post(path: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: bridge", "connection: close"]
    lines += [f"content-length: {len(body)}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def header(message: Any, name: str) -> Any:
    return message.header.properties.headers[name]


# --- 202: stored, in each encoding mode ----------------------------------------------------------


async def test_binary_mode_is_stored_before_202_with_ce_headers_and_persistent(
    bridge_factory, amqp
):
    running = await start(bridge_factory)
    status, _, body = await running.post(
        "/",
        body=b"\x00\x01 raw bytes \xff",
        headers=binary_headers(
            **{
                "ce-id": "bin-1",
                "ce-subject": "caf%C3%A9%20au%20lait%25",
                "ce-time": "2023-02-07T09:52:31.000Z",
                "ce-aliyunpublishtime": "2023-02-07T09:52:31.526PRC",
                "content-type": "application/octet-stream",
            }
        ),
    )
    assert status == 202, body
    assert body == b""
    # 202 means stored: no waiting here. (That the answer waits for the confirm is shown
    # deterministically by test_faults.py's resource-alarm test: a publish RabbitMQ cannot
    # confirm stays unanswered, then gets its 202 once confirmed.)
    assert await queue_depth(amqp, CATCH_ALL) == 1
    [message] = await get_all(amqp, CATCH_ALL)
    props = message.header.properties
    assert props.delivery_mode == 2
    assert props.content_type == "application/octet-stream"
    assert props.message_id == "bin-1"
    assert message.body == b"\x00\x01 raw bytes \xff"
    assert header(message, "ce-specversion") == "1.0"
    assert header(message, "ce-id") == "bin-1"
    assert header(message, "ce-source") == "test"
    assert header(message, "ce-type") == "t"
    assert header(message, "ce-subject") == "café au lait%"
    assert header(message, "ce-time") == "2023-02-07T09:52:31.000Z"
    assert header(message, "ce-aliyunpublishtime") == "2023-02-07T09:52:31.526PRC"
    assert await queue_depth(amqp, UNMATCHED) == 0


async def test_binary_mode_raw_utf8_header_value_and_no_content_type(bridge_factory, amqp):
    running = await start(bridge_factory)
    headers = [(k, v) for k, v in binary_headers().items()]
    headers.append(("ce-subject", "汉字".encode().decode("latin-1")))  # raw UTF-8 bytes on the wire
    response = await raw_exchange(running.url, raw_post("/", headers, b"x"))
    assert response.status == 202, response.body
    [message] = await get_all(amqp, CATCH_ALL)
    assert header(message, "ce-subject") == "汉字"
    assert message.header.properties.content_type is None
    assert message.body == b"x"


async def test_structured_mode_json_data_and_data_base64(bridge_factory, amqp):
    running = await start(bridge_factory)
    events = [
        valid_event(id="s-json", datacontenttype="application/json", data={"k": [1, "two"]}),
        valid_event(id="s-b64", datacontenttype="image/png", data_base64="AAH/aGk="),
        valid_event(id="s-text", datacontenttype="text/plain", data="plain words"),
        valid_event(id="s-nodct", data={"n": 1}),
        valid_event(id="s-nodata", subject="only attributes", myext=7, flag=True),
    ]
    for event in events:
        status, _, body = await running.post(
            "/", body=orjson.dumps(event), headers={"content-type": STRUCTURED}
        )
        assert status == 202, (event, body)
    messages = {header(m, "ce-id"): m for m in await get_all(amqp, CATCH_ALL)}
    assert sorted(messages) == sorted(e["id"] for e in events)
    assert orjson.loads(messages["s-json"].body) == {"k": [1, "two"]}
    assert messages["s-json"].header.properties.content_type == "application/json"
    assert messages["s-b64"].body == base64.b64decode("AAH/aGk=")
    assert messages["s-b64"].header.properties.content_type == "image/png"
    assert messages["s-text"].body == b"plain words"
    assert messages["s-nodct"].header.properties.content_type == "application/json"
    assert orjson.loads(messages["s-nodct"].body) == {"n": 1}
    nodata = messages["s-nodata"]
    assert nodata.body == b""
    assert header(nodata, "ce-subject") == "only attributes"
    assert header(nodata, "ce-myext") == "7"
    assert header(nodata, "ce-flag") == "true"
    for message in messages.values():
        assert message.header.properties.delivery_mode == 2
        assert "ce-data" not in message.header.properties.headers
        assert "ce-data_base64" not in message.header.properties.headers


async def test_batched_mode_stores_every_event(bridge_factory, amqp):
    running = await start(bridge_factory)
    batch = [
        valid_event(id=f"batch-{i}", data={"i": i}, datacontenttype="application/json")
        for i in range(3)
    ]
    status, _, body = await running.post(
        "/", body=orjson.dumps(batch), headers={"content-type": BATCH + "; charset=utf-8"}
    )
    assert status == 202, body
    messages = await get_all(amqp, CATCH_ALL)
    assert sorted(header(m, "ce-id") for m in messages) == ["batch-0", "batch-1", "batch-2"]
    for message in messages:
        i = int(header(message, "ce-id").split("-")[1])
        assert orjson.loads(message.body) == {"i": i}


async def test_batched_mode_one_invalid_event_stores_none(bridge_factory, amqp):
    running = await start(bridge_factory)
    invalid: list[Any] = [
        {"specversion": "1.0", "id": "", "source": "s", "type": "t"},
        {"specversion": "0.3", "id": "x", "source": "s", "type": "t"},
        "not an object",
        valid_event(id="both", data="x", data_base64="eA=="),
        valid_event(id="ttl", knativebrokerttl=0),
    ]
    for bad in invalid:
        batch = [valid_event(id="ok-1"), bad, valid_event(id="ok-2")]
        status, _, body = await running.post(
            "/", body=orjson.dumps(batch), headers={"content-type": BATCH}
        )
        assert status == 400, (bad, body)
        assert "[1]" in error_of(body)  # says which event is wrong
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == 0


async def test_batched_mode_not_an_array_is_400(bridge_factory, amqp):
    running = await start(bridge_factory)
    status, _, body = await running.post(
        "/", body=orjson.dumps(valid_event()), headers={"content-type": BATCH}
    )
    assert status == 400
    error_of(body)
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == 0


async def test_eventbridge_envelope_passes_alibaba_extensions_untouched(bridge_factory, amqp):
    running = await start(bridge_factory)
    raw = (DATA / "eventbridge-oss-put-object.json").read_bytes()
    event = json.loads(raw)
    for content_type in ["application/json;charset=utf-8", "application/json"]:
        status, _, body = await running.post("/", body=raw, headers={"content-type": content_type})
        assert status == 202, (content_type, body)
    status, _, body = await running.post(
        "/", body=raw, headers={"content-type": "application/json; charset=utf-8"}
    )
    assert status == 202, body
    messages = await get_all(amqp, CATCH_ALL)
    assert len(messages) == 3
    message = messages[-1]
    props = message.header.properties
    assert props.content_type == event["datacontenttype"]
    assert props.delivery_mode == 2
    assert orjson.loads(message.body) == event["data"]
    for name, value in event.items():
        if name in ("data", "datacontenttype"):
            continue
        assert header(message, "ce-" + name) == value, name
    # Not RFC 3339, passed through as written.
    assert header(message, "ce-aliyunpublishtime") == "2023-02-07T09:52:31.526PRC"
    assert header(message, "ce-aliyunpublishaddr") == "10.10.XX.XX"


async def test_envelope_without_specversion_is_400(bridge_factory, amqp):
    running = await start(bridge_factory)
    event = valid_event()
    del event["specversion"]
    status, _, body = await running.post(
        "/", body=orjson.dumps(event), headers={"content-type": "application/json"}
    )
    assert status == 400
    assert "specversion" in error_of(body)
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == 0


async def test_binary_mode_wins_over_envelope_when_ce_specversion_is_present(bridge_factory, amqp):
    running = await start(bridge_factory)
    payload = orjson.dumps(valid_event(id="inner"))
    status, _, _ = await running.post(
        "/",
        body=payload,
        headers={**binary_headers(**{"ce-id": "outer"}), "content-type": "application/json"},
    )
    assert status == 202
    [message] = await get_all(amqp, CATCH_ALL)
    assert header(message, "ce-id") == "outer"
    assert message.body == payload


async def test_trace_context_is_carried_and_oversized_trace_headers_are_not(bridge_factory, amqp):
    running = await start(bridge_factory)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    for event_id, extra in [
        ("traced", {"traceparent": traceparent, "tracestate": "vendor=1"}),
        ("oversized", {"traceparent": "0" * 300, "tracestate": "v=" + "x" * 600}),
        ("malformed", {"traceparent": traceparent.upper(), "tracestate": "vendor=1"}),
        ("bad-state", {"traceparent": traceparent, "tracestate": "v=\xe9"}),
        # A higher version is read as version 00 and sent on as 00 (W3C Trace Context).
        ("future", {"traceparent": "cc" + traceparent[2:] + "-what-comes-next"}),
        ("invalid-version", {"traceparent": "ff" + traceparent[2:]}),
        ("zero-trace-id", {"traceparent": "00-" + "0" * 32 + traceparent[35:]}),
        ("long-version-00", {"traceparent": traceparent + "-extra"}),
    ]:
        status, _, body = await running.post(
            "/",
            body=orjson.dumps(valid_event(id=event_id)),
            headers={"content-type": STRUCTURED, **extra},
        )
        assert status == 202, body
    messages = {
        header(m, "ce-id"): m.header.properties.headers for m in await get_all(amqp, CATCH_ALL)
    }
    assert messages["traced"]["traceparent"] == traceparent
    assert messages["traced"]["tracestate"] == "vendor=1"
    assert "traceparent" not in messages["oversized"]
    assert "tracestate" not in messages["oversized"]
    assert "traceparent" not in messages["malformed"]
    assert "tracestate" not in messages["malformed"]
    assert messages["bad-state"]["traceparent"] == traceparent
    assert "tracestate" not in messages["bad-state"]
    assert messages["future"]["traceparent"] == traceparent
    for refused in ("invalid-version", "zero-trace-id", "long-version-00"):
        assert "traceparent" not in messages[refused], refused


# --- paths ---------------------------------------------------------------------------------------


async def test_root_goes_to_default_broker_and_named_path_to_its_broker(bridge_factory, amqp):
    running = await start(
        bridge_factory,
        triggers=[
            trigger("catch-all", NOWHERE),
            trigger("orders-all", NOWHERE, broker="orders", namespace="team"),
        ],
    )
    orders_queue = "bridge.trigger.team.orders-all"
    for path, event_id in [
        ("/", "root"),
        (DEFAULT_PATH, "default-path"),
        ("/team/orders", "orders"),
        ("/team/orders/", "orders-slash"),
    ]:
        status, _, body = await running.post(
            path, body=orjson.dumps(valid_event(id=event_id)), headers={"content-type": STRUCTURED}
        )
        assert status == 202, (path, body)
    default_ids = sorted(header(m, "ce-id") for m in await get_all(amqp, CATCH_ALL))
    orders_ids = sorted(header(m, "ce-id") for m in await get_all(amqp, orders_queue))
    assert default_ids == ["default-path", "root"]
    assert orders_ids == ["orders", "orders-slash"]


async def test_unknown_broker_path_is_404_and_nothing_stored(bridge_factory, amqp):
    running = await start(bridge_factory)
    for path in ["/default/no-such-broker", "/team/orders", "/default", "/a/b/c", "/x?y=1"]:
        status, headers, body = await running.post(
            path, body=orjson.dumps(valid_event()), headers={"content-type": STRUCTURED}
        )
        assert status == 404, path
        assert headers["content-type"] == "application/json"
        error_of(body)
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == 0


async def test_query_string_is_ignored_on_a_known_path(bridge_factory, amqp):
    running = await start(bridge_factory)
    status, _, _ = await running.post(
        DEFAULT_PATH + "?via=eventbridge",
        body=orjson.dumps(valid_event()),
        headers={"content-type": STRUCTURED},
    )
    assert status == 202
    assert await queue_depth(amqp, CATCH_ALL) == 1


# --- 400 -----------------------------------------------------------------------------------------

INVALID_STRUCTURED: dict[str, bytes] = {
    "missing-id": orjson.dumps(valid_event(id=...)),
    "empty-id": orjson.dumps(valid_event(id="")),
    "null-id": orjson.dumps(valid_event(id=None)),
    "missing-source": orjson.dumps(valid_event(source=...)),
    "empty-source": orjson.dumps(valid_event(source="")),
    "missing-type": orjson.dumps(valid_event(type=...)),
    "empty-type": orjson.dumps(valid_event(type="")),
    "specversion-0.3": orjson.dumps(valid_event(specversion="0.3")),
    "specversion-missing": orjson.dumps(valid_event(specversion=...)),
    "specversion-number": orjson.dumps(valid_event(specversion=1.0)),
    "id-not-string": orjson.dumps(valid_event(id=5)),
    "name-uppercase": orjson.dumps(valid_event(Bad=1)),
    "name-dash": orjson.dumps(valid_event(**{"my-ext": "x"})),
    "name-underscore": orjson.dumps(valid_event(**{"my_ext": "x"})),
    "name-trailing-newline": orjson.dumps(valid_event(**{"ext\n": "x"})),
    "name-too-long": orjson.dumps(valid_event(**{"a" * 126: "x"})),
    "extension-float": orjson.dumps(valid_event(ratio=0.5)),
    "extension-object": orjson.dumps(valid_event(obj={"a": 1})),
    "data-and-data_base64": orjson.dumps(valid_event(data="x", data_base64="eA==")),
    "data_base64-not-base64": orjson.dumps(valid_event(data_base64="!!!")),
    "time-not-rfc3339": orjson.dumps(valid_event(time="yesterday")),
    "time-trailing-newline": orjson.dumps(valid_event(time="2023-02-07T09:52:31Z\n")),
    "empty-subject": orjson.dumps(valid_event(subject="")),
    "empty-datacontenttype": orjson.dumps(valid_event(datacontenttype="")),
    "datacontenttype-too-long": orjson.dumps(valid_event(datacontenttype="text/" + "x" * 300)),
    "ttl-zero": orjson.dumps(valid_event(knativebrokerttl=0)),
    "ttl-negative": orjson.dumps(valid_event(knativebrokerttl=-1)),
    "ttl-zero-string": orjson.dumps(valid_event(knativebrokerttl="0")),
    "ttl-not-integer": orjson.dumps(valid_event(knativebrokerttl="many")),
    "malformed-json": b'{"specversion": "1.0", "id": "x",',
    "not-json": b"\xff\xfe garbage",
    "json-array": b"[]",
    "empty-body": b"",
}


async def test_invalid_structured_events_are_400_and_nothing_stored(bridge_factory, amqp):
    running = await start(bridge_factory)
    for case, payload in INVALID_STRUCTURED.items():
        status, headers, body = await running.post(
            "/", body=payload, headers={"content-type": STRUCTURED}
        )
        assert status == 400, (case, body)
        assert headers["content-type"] == "application/json", case
        error_of(body)
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == 0


async def test_invalid_envelopes_are_400(bridge_factory, amqp):
    running = await start(bridge_factory)
    for case in ["missing-id", "empty-source", "missing-type", "specversion-0.3", "malformed-json"]:
        status, _, body = await running.post(
            "/",
            body=INVALID_STRUCTURED[case],
            headers={"content-type": "application/json; charset=utf-8"},
        )
        assert status == 400, (case, body)
        error_of(body)
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == 0


INVALID_BINARY: dict[str, dict[str, str]] = {
    "missing-id": binary_headers(**{"ce-id": None}),
    "empty-id": binary_headers(**{"ce-id": ""}),
    "missing-source": binary_headers(**{"ce-source": None}),
    "empty-source": binary_headers(**{"ce-source": ""}),
    "missing-type": binary_headers(**{"ce-type": None}),
    "empty-type": binary_headers(**{"ce-type": ""}),
    "specversion-0.3": binary_headers(**{"ce-specversion": "0.3"}),
    "specversion-1.0.1": binary_headers(**{"ce-specversion": "1.0.1"}),
    "name-underscore": binary_headers(**{"ce-my_ext": "x"}),
    "name-dot": binary_headers(**{"ce-my.ext": "x"}),
    "name-empty": binary_headers(**{"ce-": "x"}),
    "name-too-long": binary_headers(**{"ce-" + "a" * 126: "x"}),
    "ce-data-header": binary_headers(**{"ce-data": "x"}),
    "ce-datacontenttype-header": binary_headers(**{"ce-datacontenttype": "text/plain"}),
    "percent-truncated": binary_headers(**{"ce-subject": "abc%2"}),
    "percent-not-hex": binary_headers(**{"ce-subject": "%zz"}),
    "percent-lone": binary_headers(**{"ce-subject": "100%"}),
    "percent-not-utf8": binary_headers(**{"ce-subject": "%E2%82"}),
    "percent-lone-in-id": binary_headers(**{"ce-id": "%"}),
    "ttl-zero": binary_headers(**{"ce-knativebrokerttl": "0"}),
    "ttl-negative": binary_headers(**{"ce-knativebrokerttl": "-3"}),
    "time-not-rfc3339": binary_headers(**{"ce-time": "2023-02-07 09:52"}),
    "no-ce-headers-at-all": {"content-type": "text/plain"},
}


async def test_invalid_binary_events_are_400_and_nothing_stored(bridge_factory, amqp):
    running = await start(bridge_factory)
    for case, headers in INVALID_BINARY.items():
        status, answer_headers, body = await running.post("/", body=b"payload", headers=headers)
        assert status == 400, (case, body)
        assert answer_headers["content-type"] == "application/json", case
        error_of(body)
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == 0


async def test_ttl_positive_is_kept_and_absent_ttl_gets_default(bridge_factory, amqp):
    running = await start(bridge_factory)
    status, _, _ = await running.post(
        "/", body=b"", headers=binary_headers(**{"ce-id": "ttl-1", "ce-knativebrokerttl": "1"})
    )
    assert status == 202
    status, _, _ = await running.post("/", body=b"", headers=binary_headers(**{"ce-id": "ttl-d"}))
    assert status == 202
    messages = {header(m, "ce-id"): m for m in await get_all(amqp, CATCH_ALL)}
    assert header(messages["ttl-1"], "ce-knativebrokerttl") == "1"
    assert header(messages["ttl-d"], "ce-knativebrokerttl") == "255"


# --- 401 -----------------------------------------------------------------------------------------


async def test_token_required_when_configured(bridge_factory, amqp):
    running = await start(bridge_factory, ingress={"auth_token": "s3cret-token"})
    event = orjson.dumps(valid_event())
    refused: list[dict[str, str]] = [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": "Bearer s3cret-token-and-more"},
        {"authorization": "Basic s3cret-token"},
        {"authorization": "s3cret-token"},
        {"x-eventbridge-signature-token": "wrong"},
        {"x-eventbridge-signature-token": ""},
    ]
    for extra in refused:
        status, headers, body = await running.post(
            "/", body=event, headers={"content-type": STRUCTURED, **extra}
        )
        assert status == 401, extra
        assert headers["content-type"] == "application/json"
        error_of(body)
    # Checked before the path: an unknown broker without a token is 401 as well.
    status, _, _ = await running.post("/nope/nope", body=event)
    assert status == 401
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == 0

    accepted = [
        {"authorization": "Bearer s3cret-token"},
        {"authorization": "bearer s3cret-token"},
        {"x-eventbridge-signature-token": "s3cret-token"},
    ]
    for extra in accepted:
        status, _, body = await running.post(
            "/", body=event, headers={"content-type": STRUCTURED, **extra}
        )
        assert status == 202, (extra, body)
    assert await queue_depth(amqp, CATCH_ALL) == len(accepted)


async def test_non_ascii_token_matches_the_bytes_sent(bridge_factory, amqp):
    running = await start(bridge_factory, ingress={"auth_token": "clé-秘密"})
    wire_token = "clé-秘密".encode().decode("latin-1")  # the UTF-8 bytes, as raw header bytes
    headers = [("content-type", STRUCTURED), ("x-eventbridge-signature-token", wire_token)]
    response = await raw_exchange(running.url, raw_post("/", headers, orjson.dumps(valid_event())))
    assert response.status == 202, response.body
    headers = [("content-type", STRUCTURED), ("authorization", "Bearer " + wire_token[:-1])]
    response = await raw_exchange(running.url, raw_post("/", headers, orjson.dumps(valid_event())))
    assert response.status == 401
    assert await queue_depth(amqp, CATCH_ALL) == 1


# --- 405 and OPTIONS -----------------------------------------------------------------------------


async def test_other_methods_are_405_with_allow(bridge_factory, amqp):
    running = await start(bridge_factory)
    for method in ["GET", "PUT", "DELETE", "PATCH"]:
        for path in ["/", DEFAULT_PATH, "/unknown/broker"]:
            status, headers, body = await running.post(
                path,
                method=method,
                body=orjson.dumps(valid_event()),
                headers={"content-type": STRUCTURED},
            )
            assert status == 405, (method, path)
            assert "POST" in headers["allow"]
            assert headers["content-type"] == "application/json"
            assert method in error_of(body)
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == 0


async def test_options_is_200_for_webhook_validation(bridge_factory):
    running = await start(bridge_factory, ingress={"auth_token": "tok"})
    status, headers, _ = await running.post("/", method="OPTIONS")
    assert status == 200
    assert "POST" in headers["allow"]
    status, headers, _ = await running.post(
        DEFAULT_PATH, method="OPTIONS", headers={"webhook-request-origin": "eventbridge.example"}
    )
    assert status == 200
    assert headers["webhook-allowed-origin"] == "eventbridge.example"


# --- 413 -----------------------------------------------------------------------------------------

LIMIT = 1024


async def test_declared_length_over_limit_is_413_before_the_body_is_sent(bridge_factory, amqp):
    running = await start(bridge_factory, ingress={"max_event_bytes": LIMIT})
    reader, writer = await asyncio.open_connection(*host_port(running.url))
    try:
        writer.write(
            (
                "POST / HTTP/1.1\r\nhost: bridge\r\n"
                f"content-type: {STRUCTURED}\r\ncontent-length: {LIMIT + 1}\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        # Not one byte of the body is sent: the answer must come from the headers alone.
        data = await asyncio.wait_for(reader.read(), 3.0)
    finally:
        await close_writer(writer)
    response = parse_response(data)
    assert response.status == 413
    assert response.headers["connection"] == "close"
    assert str(LIMIT) in error_of(response.body)
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == 0


async def test_huge_declared_length_is_413_at_once(bridge_factory):
    running = await start(bridge_factory, ingress={"max_event_bytes": LIMIT})
    started = time.monotonic()
    response = await raw_exchange(
        running.url,
        b"POST / HTTP/1.1\r\nhost: bridge\r\ncontent-length: 10000000000\r\n\r\n",
        timeout=3.0,
    )
    assert response.status == 413
    error_of(response.body)
    assert time.monotonic() - started < 2.0


async def test_chunked_body_over_limit_is_413(bridge_factory, amqp):
    running = await start(bridge_factory, ingress={"max_event_bytes": LIMIT})
    chunk = b"x" * 600
    reader, writer = await asyncio.open_connection(*host_port(running.url))
    try:
        writer.write(
            f"POST / HTTP/1.1\r\nhost: bridge\r\ncontent-type: {STRUCTURED}\r\n"
            "transfer-encoding: chunked\r\n\r\n".encode()
        )
        for _ in range(2):  # 1200 bytes > 1024; the last chunk is never sent
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 3.0)
    finally:
        await close_writer(writer)
    response = parse_response(data)
    assert response.status == 413
    error_of(response.body)
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == 0


async def test_body_of_exactly_the_limit_is_accepted(bridge_factory, amqp):
    running = await start(bridge_factory, ingress={"max_event_bytes": LIMIT})
    event = valid_event(data="")
    padding = LIMIT - len(orjson.dumps(event))
    event["data"] = "p" * padding
    body = orjson.dumps(event)
    assert len(body) == LIMIT
    status, _, answer = await running.post("/", body=body, headers={"content-type": STRUCTURED})
    assert status == 202, answer
    assert await queue_depth(amqp, CATCH_ALL) == 1


async def test_attributes_too_large_for_one_amqp_frame_are_413_and_the_link_survives(
    bridge_factory, amqp
):
    # RabbitMQ closes the connection on a header frame above frame_max (128 KiB): such an event
    # must be refused, not take the AMQP connection (and every request in flight) down with it.
    running = await start(bridge_factory, ingress={"max_event_bytes": 1 << 20})
    big = valid_event(id="big", big="x" * 200_000)
    many = valid_event(id="many", **{f"e{i}": "y" * 1000 for i in range(100)})
    for event in (big, many):
        status, _, body = await running.post(
            "/", body=orjson.dumps(event), headers={"content-type": STRUCTURED}
        )
        assert status == 413, body
        error_of(body)
        # The link is intact: the next event is stored at once.
        status, _, body = await running.post(
            "/", body=orjson.dumps(valid_event()), headers={"content-type": STRUCTURED}
        )
        assert status == 202, body
    assert await queue_depth(amqp, CATCH_ALL) == 2


async def test_long_id_is_stored_whole(bridge_factory, amqp):
    # The AMQP message_id holds 255 bytes; a longer CloudEvents id must still be accepted.
    running = await start(bridge_factory)
    long_id = "é" * 300
    status, _, body = await running.post(
        "/", body=orjson.dumps(valid_event(id=long_id)), headers={"content-type": STRUCTURED}
    )
    assert status == 202, body
    [message] = await get_all(amqp, CATCH_ALL)
    assert header(message, "ce-id") == long_id


async def test_oversized_request_headers_are_refused(bridge_factory, amqp):
    running = await start(bridge_factory)
    reader, writer = await asyncio.open_connection(*host_port(running.url))
    data = b""
    try:
        writer.write(b"POST / HTTP/1.1\r\nhost: bridge\r\nx-pad: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(40):  # 2.5 MiB of one header value, never finished
                writer.write(b"a" * 65536)
                await writer.drain()
        with contextlib.suppress(ConnectionError):
            data = await asyncio.wait_for(reader.read(), 3.0)
    finally:
        await close_writer(writer)
    # The server answers 431 (a JSON error) and closes instead of buffering.
    response = parse_response(data)
    assert response.status == 431
    error_of(response.body)
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == 0
    status, _, _ = await running.post(
        "/", body=orjson.dumps(valid_event()), headers={"content-type": STRUCTURED}
    )
    assert status == 202


# --- 415 -----------------------------------------------------------------------------------------


async def test_unsupported_structured_format_is_415(bridge_factory, amqp):
    running = await start(bridge_factory)
    for content_type in [
        "application/cloudevents+xml",
        "application/cloudevents+xml; charset=utf-8",
        "application/cloudevents+avro",
        "application/cloudevents-batch+xml",
        "application/cloudevents",
    ]:
        status, headers, body = await running.post(
            "/", body=b"<event/>", headers={"content-type": content_type}
        )
        assert status == 415, content_type
        assert headers["content-type"] == "application/json"
        error_of(body)
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == 0


# --- 503 -----------------------------------------------------------------------------------------


async def test_rabbitmq_unreachable_is_503_with_retry_after_quickly(bridge_factory):
    running = await bridge_factory(
        triggers=[trigger("catch-all", NOWHERE)],
        role="ingress",
        url="amqp://guest:guest@127.0.0.1:1/",
        wait_ready=False,
        ingress={"retry_after": 7},
    )
    requests: list[tuple[bytes, dict[str, str]]] = [
        (orjson.dumps(valid_event()), {"content-type": STRUCTURED}),
        (b"data", binary_headers()),
        (orjson.dumps([valid_event(id="1"), valid_event(id="2")]), {"content-type": BATCH}),
        (
            (DATA / "eventbridge-oss-put-object.json").read_bytes(),
            {"content-type": "application/json"},
        ),
    ]
    for body, headers in requests:
        started = time.monotonic()
        status, answer_headers, answer = await running.post("/", body=body, headers=headers)
        assert time.monotonic() - started < 2.0
        assert status == 503, answer
        assert answer_headers["retry-after"] == "7"
        assert answer_headers["content-type"] == "application/json"
        error_of(answer)
    # Validation still comes first: an invalid event is 400, not 503.
    status, _, _ = await running.post("/", body=b"{", headers={"content-type": STRUCTURED})
    assert status == 400
    # Admin: alive, not ready.
    status, _, _ = await admin_get(running, "healthz")
    assert status == 200
    status, _, body = await admin_get(running, "readyz")
    assert status == 503
    error_of(body)
    text = await metrics_text(running)
    assert metric(text, "bridge_events_received_total", outcome="unavailable") == 5


class FreezableProxy:
    """A TCP proxy to RabbitMQ that can stop passing bytes (a broker that stops answering)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.frozen = False
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pipe(src, dst))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                if not self.frozen:
                    dst.write(data)
                    await dst.drain()
        dst.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self.writers:
            writer.close()
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for writer in self.writers:
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        if self.server is not None:
            await self.server.wait_closed()


async def test_publish_not_confirmed_in_time_is_503(bridge_factory, amqp_url, amqp):
    proxy = FreezableProxy(("127.0.0.1", 5672))
    await proxy.start()
    try:
        vhost = amqp_url.rsplit("/", 1)[1]
        running = await bridge_factory(
            triggers=[trigger("catch-all", NOWHERE)],
            role="ingress",
            url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}",
            rabbitmq={"publish_timeout": 0.5},
        )
        status, _, _ = await running.post(
            "/", body=orjson.dumps(valid_event(id="before")), headers={"content-type": STRUCTURED}
        )
        assert status == 202
        proxy.frozen = True  # neither the publish nor its confirm get through now
        started = time.monotonic()
        status, headers, body = await running.post(
            "/", body=orjson.dumps(valid_event(id="during")), headers={"content-type": STRUCTURED}
        )
        assert status == 503, body
        assert time.monotonic() - started < 3.0
        assert headers["retry-after"].isdigit()
        error_of(body)
        assert await queue_depth(amqp, CATCH_ALL) == 1
    finally:
        await proxy.close()


def set_policy(vhost: str, name: str, pattern: str, definition: dict[str, Any]) -> None:
    subprocess.run(
        [
            RABBITMQCTL,
            "set_policy",
            "-p",
            vhost,
            "--apply-to",
            "queues",
            name,
            pattern,
            json.dumps(definition),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


async def test_publish_nacked_is_503_and_not_stored(bridge_factory, amqp_url, amqp):
    vhost = amqp_url.rsplit("/", 1)[1]
    # The trigger queue is bounded and nacks what does not fit (overflow reject-publish).
    await asyncio.to_thread(
        set_policy,
        vhost,
        "full",
        r"^bridge\.trigger\.",
        {"max-length": 1, "overflow": "reject-publish"},
    )
    running = await start(bridge_factory)

    async def post(event_id: str) -> tuple[int, dict[str, str], bytes]:
        return await running.post(
            "/", body=orjson.dumps(valid_event(id=event_id)), headers={"content-type": STRUCTURED}
        )

    # Quorum queues reject once they are over the limit (a soft limit): the first events are
    # stored, then publishes are nacked.
    accepted: list[str] = []
    refused: list[str] = []
    for i in range(6):
        status, headers, body = await post(f"e-{i}")
        if status == 202:
            accepted.append(f"e-{i}")
            continue
        assert status == 503, body
        assert headers["retry-after"].isdigit()
        error_of(body)
        refused.append(f"e-{i}")
    assert accepted[:1] == ["e-0"]
    assert len(refused) >= 3, (accepted, refused)
    messages = await get_all(amqp, CATCH_ALL)
    assert [header(m, "ce-id") for m in messages] == accepted
    assert await queue_depth(amqp, UNMATCHED) == 0


# --- unmatched -----------------------------------------------------------------------------------


async def test_event_matching_no_trigger_lands_in_bounded_unmatched_queue(bridge_factory, amqp):
    running = await start(
        bridge_factory,
        triggers=[trigger("only-puts", NOWHERE, filter={"attributes": {"type": "oss:PutObject"}})],
        rabbitmq={"unmatched_max_length": 2},
    )
    trigger_queue = "bridge.trigger.default.only-puts"
    text = await metrics_text(running)
    assert metric(text, "bridge_unmatched_events_total", broker=DEFAULT_BROKER) == 0
    for i in range(3):
        status, _, body = await running.post(
            "/",
            body=orjson.dumps(valid_event(id=f"other-{i}", type="oss:DeleteObject")),
            headers={"content-type": STRUCTURED},
        )
        assert status == 202, body
    status, _, _ = await running.post(
        "/",
        body=orjson.dumps(valid_event(id="put", type="oss:PutObject")),
        headers={"content-type": STRUCTURED},
    )
    assert status == 202
    assert await queue_depth(amqp, trigger_queue) == 1
    # Bounded: the oldest unmatched event made room for the newest.
    unmatched = await get_all(amqp, UNMATCHED)
    assert [header(m, "ce-id") for m in unmatched] == ["other-1", "other-2"]
    assert unmatched[0].header.properties.delivery_mode == 2
    text = await metrics_text(running)
    assert metric(text, "bridge_unmatched_events_total", broker=DEFAULT_BROKER) == 3
    assert metric(text, "bridge_events_received_total", outcome="accepted") == 4


async def test_broker_without_triggers_keeps_events_as_unmatched(bridge_factory, amqp):
    running = await start(bridge_factory, triggers=[])
    status, _, _ = await running.post(
        "/", body=orjson.dumps(valid_event()), headers={"content-type": STRUCTURED}
    )
    assert status == 202
    assert await queue_depth(amqp, UNMATCHED) == 1


# --- admin listener ------------------------------------------------------------------------------


async def test_admin_health_ready_and_metrics(bridge_factory):
    running = await start(bridge_factory)
    status, _, _ = await admin_get(running, "healthz")
    assert status == 200
    status, _, _ = await admin_get(running, "readyz")
    assert status == 200
    status, _, _ = await running.post(
        "/", body=orjson.dumps(valid_event()), headers={"content-type": STRUCTURED}
    )
    assert status == 202
    status, _, _ = await running.post("/", body=b"{", headers={"content-type": STRUCTURED})
    assert status == 400
    status, _, _ = await running.post(
        "/", body=b"<e/>", headers={"content-type": "application/cloudevents+xml"}
    )
    assert status == 415
    text = await metrics_text(running)
    assert "# TYPE bridge_events_received_total counter" in text
    assert (
        metric(text, "bridge_events_received_total", broker=DEFAULT_BROKER, outcome="accepted") == 1
    )
    assert (
        metric(
            text,
            "bridge_events_received_total",
            broker=DEFAULT_BROKER,
            outcome="rejected",
            reason="invalid",
        )
        == 1
    )
    assert (
        metric(
            text, "bridge_events_received_total", outcome="rejected", reason="unsupported_format"
        )
        == 1
    )
    assert metric(text, "bridge_rabbitmq_connected") == 1
    # The ingress does not serve the admin endpoints.
    status, _, _ = await running.post("/healthz", method="GET")
    assert status == 405


async def test_readyz_turns_503_when_rabbitmq_goes_away(bridge_factory, amqp_url):
    proxy = FreezableProxy(("127.0.0.1", 5672))
    await proxy.start()
    try:
        vhost = amqp_url.rsplit("/", 1)[1]
        running = await bridge_factory(
            triggers=[trigger("catch-all", NOWHERE)],
            role="ingress",
            url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}",
        )
        status, _, _ = await admin_get(running, "readyz")
        assert status == 200
        await proxy.close()  # RabbitMQ is gone (and the port refuses new connections)

        async def not_ready() -> bool:
            return (await admin_get(running, "readyz"))[0] == 503

        await eventually(not_ready, timeout=5, what="/readyz to answer 503")
        status, headers, body = await running.post(
            "/", body=orjson.dumps(valid_event()), headers={"content-type": STRUCTURED}
        )
        assert status == 503
        assert headers["retry-after"].isdigit()
        error_of(body)
        status, _, _ = await admin_get(running, "healthz")
        assert status == 200
    finally:
        await proxy.close()


async def test_keep_alive_connection_serves_many_requests_in_order(bridge_factory, amqp):
    running = await start(bridge_factory)
    statuses = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for i in range(5):
            body = orjson.dumps(valid_event(id=f"ka-{i}")) if i % 2 == 0 else b"{"
            async with session.post(
                running.url, data=body, headers={"content-type": STRUCTURED}
            ) as response:
                await response.read()
                statuses.append(response.status)
    assert statuses == [202, 400, 202, 400, 202]
    assert await queue_depth(amqp, CATCH_ALL) == 3


async def test_head_answers_carry_no_body(bridge_factory):
    """RFC 9110: a HEAD answer has headers only; the connection stays usable afterwards."""
    running = await bridge_factory(role="ingress")
    host, port = running.url.removeprefix("http://").rstrip("/").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\nOPTIONS / HTTP/1.1\r\nhost: x\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 405 ")
        assert b"content-length: " in head.lower()
        # The next bytes are the OPTIONS answer, not a body of the HEAD answer.
        options = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert options.startswith(b"HTTP/1.1 200 ")
    finally:
        writer.close()
