"""Target transformations (`transformation = {form = ...}`): each form on the reference OSS event,
the JSONPath subset, templates (JSON and text), load-time errors, check-config's display, the
consumer (a failing transformation dead-letters without a POST), and end to end through RabbitMQ.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from bridge import names
from bridge.cli import main
from bridge.config import load_trigger_manifests
from bridge.errors import ConfigError
from bridge.events import Event, event_from_json
from bridge.transform import compile_transformation, evaluate, parse_path
from tests.conftest import eventually, get_all, trigger, write
from tests.fakes import rig, routes_for, trigger_spec

DATA = Path(__file__).parent / "data"
OSS_DOC = json.loads((DATA / "eventbridge-oss-put-object.json").read_text())
OSS = event_from_json(OSS_DOC, "")
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"

BUCKET_TEMPLATE = {
    "form": "TEMPLATE",
    "value": {
        "bucket": "$.data.oss.bucket.name",
        "size": "$.data.oss.object.size",
        "object": "$.data.oss.object",
        "note": "Please deal with it timely.",
    },
    "template": '{"bucket": "${bucket}", "size": ${size}, "meta": ${object}, '
    '"line": "${bucket} got ${size} bytes: \\"${note}\\""}',
}


def apply(spec: dict[str, Any], event: Event = OSS) -> Event:
    transformation = compile_transformation(spec, "t")
    assert transformation is not None
    return transformation.apply(event)


# --- each form -------------------------------------------------------------------------------


def test_original_is_no_transformation() -> None:
    assert compile_transformation(None, "t") is None
    assert compile_transformation({"form": "ORIGINAL"}, "t") is None
    plain = apply({"form": "ORIGINAL", "keepAttributes": False})
    assert (plain.data, plain.content_type) == (OSS.data, OSS.content_type)


@pytest.mark.parametrize(
    ("path", "body", "content_type"),
    [
        ("$.data.oss.bucket.name", b"knative", TEXT),
        ("$.data.oss.object.size", b"225496", JSON),
        ("$.data.oss.object.objectMeta", b'{"mimeType":"application/octet-stream"}', JSON),
        ("$.source", b"acs.oss", TEXT),
        ("$.datacontenttype", b"application/json;charset=utf-8", TEXT),
        ("$['data']['oss']['bucket']['name']", b"knative", TEXT),
        ("$.data.requestParameters.sourceIPAddress", b"XX.XXX.XX.XXX", TEXT),
    ],
)
def test_jsonpath_delivers_a_part_of_the_event(path: str, body: bytes, content_type: str) -> None:
    out = apply({"form": "JSONPATH", "value": path})
    assert (out.data, out.content_type) == (body, content_type)
    assert out.attrs is OSS.attrs  # the attributes stay


def test_jsonpath_dollar_is_the_whole_event_as_json() -> None:
    doc = orjson.loads(apply({"form": "JSONPATH", "value": "$"}).data)
    assert doc == {k: v for k, v in OSS_DOC.items()}  # noqa: C416 (every attribute and the data)


def test_jsonpath_indexes_and_quoted_names() -> None:
    event = event_from_json(
        {
            "specversion": "1.0",
            "id": "1",
            "source": "s",
            "type": "t",
            "data": {"items": [{"content-type": "a"}, {"content-type": "b"}], "it's": 1},
        },
        "",
    )
    assert evaluate(parse_path("$.data.items[1]['content-type']", "t"), event) == "b"
    assert evaluate(parse_path("$.data.items[1].content-type", "t"), event) == "b"
    assert evaluate(parse_path("$.data['it\\'s']", "t"), event) == 1
    assert parse_path("$.data.items[10]", "t") == ("data", "items", 10)


@pytest.mark.parametrize(
    ("value", "content_type"),
    [("Please deal with it timely.", TEXT), ('{"alert": true}', JSON)],
)
def test_constant_delivers_its_value(value: str, content_type: str) -> None:
    out = apply({"form": "CONSTANT", "value": value})
    assert (out.data, out.content_type) == (value.encode(), content_type)


def test_a_json_template_substitutes_values_in_and_out_of_strings() -> None:
    out = apply(BUCKET_TEMPLATE)
    assert out.content_type == JSON
    assert orjson.loads(out.data) == {
        "bucket": "knative",
        "size": 225496,
        "meta": OSS_DOC["data"]["oss"]["object"],
        "line": 'knative got 225496 bytes: "Please deal with it timely."',
    }


def test_a_text_template_as_the_eventbridge_console_writes_it() -> None:
    # The console's form: the variables as a JSON string; a value not starting with $ is a
    # constant (Alibaba's example: "Data is ${name}, constant is ${constant}").
    out = apply(
        {
            "form": "TEMPLATE",
            "value": '{"name": "$.data.oss.bucket.name", "constant": "Please deal with it timely."}',
            "template": "Data is ${name}, constant is ${constant}",
        }
    )
    assert out.data == b"Data is knative, constant is Please deal with it timely."
    assert out.content_type == TEXT


def test_template_values_are_escaped_inside_json_strings() -> None:
    event = event_from_json(
        {
            "specversion": "1.0",
            "id": "1",
            "source": "s",
            "type": "t",
            "data": {"s": 'a "quoted"\n\\ line', "o": {"k": [1, "x"]}},
        },
        "",
    )
    out = apply(
        {
            "form": "TEMPLATE",
            "value": {"s": "$.data.s", "o": "$.data.o"},
            "template": '{"in": "<${s}>", "raw": ${s}, "obj": "${o}"}',
        },
        event,
    )
    assert orjson.loads(out.data) == {
        "in": '<a "quoted"\n\\ line>',
        "raw": 'a "quoted"\n\\ line',
        "obj": '{"k":[1,"x"]}',
    }


def test_content_type_and_keep_attributes_options() -> None:
    transformation = compile_transformation(
        {"form": "CONSTANT", "value": "x", "contentType": "text/csv", "keepAttributes": False},
        "t",
    )
    assert transformation is not None
    out = transformation.apply(OSS)
    assert out.content_type == "text/csv"
    assert transformation.description == 'CONSTANT "x" (contentType=text/csv, keepAttributes=false)'

    def structured(event: Event) -> tuple[dict[str, str], bytes]:
        raise AssertionError("the format is not used without the attributes")

    assert transformation.encoder(structured)(out) == ({"content-type": "text/csv"}, b"x")


# --- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "event_doc", "message"),
    [
        (
            {"form": "JSONPATH", "value": "$.data.oss.nothing"},
            OSS_DOC,
            "the JSONPath $.data.oss.nothing selects nothing in event 7adc8c1a",
        ),
        (
            {"form": "TEMPLATE", "value": {"v": "$.data.x"}, "template": "${v}"},
            OSS_DOC,
            "the JSONPath $.data.x selects nothing",
        ),
        (
            {"form": "JSONPATH", "value": "$.data.a"},
            {**OSS_DOC, "datacontenttype": "text/plain", "data": "plain text"},
            "selects nothing",
        ),
        (
            {"form": "JSONPATH", "value": "$.data.a"},
            {k: v for k, v in OSS_DOC.items() if k != "data"},
            "the event's data is not JSON",
        ),
    ],
)
def test_a_transformation_that_cannot_apply_raises(
    spec: dict[str, Any], event_doc: dict[str, Any], message: str
) -> None:
    from bridge.transform import TransformError

    with pytest.raises(TransformError, match=message.replace("$", r"\$")):
        apply(spec, event_from_json(event_doc, ""))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"form": "XSLT"}, "form: 'XSLT' is not one of ORIGINAL, JSONPATH, CONSTANT, TEMPLATE"),
        ({"form": "JSONPATH"}, "value: a JSONPATH transformation needs a JSONPath string"),
        ({"form": "JSONPATH", "value": "data.x"}, "is not a JSONPath (it starts with $)"),
        ({"form": "JSONPATH", "value": "$.data[*]"}, "cannot read the JSONPath at character 7"),
        ({"form": "JSONPATH", "value": "$..name"}, "cannot read the JSONPath at character 2"),
        ({"form": "CONSTANT", "value": 5}, "a CONSTANT transformation needs a string value"),
        ({"form": "CONSTANT", "value": "x", "template": "y"}, "only a TEMPLATE"),
        ({"form": "TEMPLATE", "value": {"a": "$.x"}}, "needs a template string"),
        ({"form": "TEMPLATE", "value": {"a": "$.x"}, "template": "${b}"}, "${b} names no variable"),
        ({"form": "TEMPLATE", "value": "[1", "template": "x"}, "maps variable names"),
        ({"form": "TEMPLATE", "value": {"a b": "$.x"}, "template": "x"}, "not a variable name"),
        ({"form": "ORIGINAL", "value": "x"}, "an ORIGINAL transformation takes no value"),
        ({"form": "CONSTANT", "value": "x", "contentType": "json"}, "is not a media type"),
        ({"form": "CONSTANT", "value": "x", "keepAttributes": "no"}, "must be true or false"),
        ({"form": "CONSTANT", "value": "x", "tempalte": "y"}, "tempalte: unknown key (typo?)"),
    ],
)
def test_a_wrong_transformation_is_refused_at_load(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        routes_for(trigger_spec(transformation=spec))
    assert message in str(caught.value)
    assert str(caught.value).startswith("test: triggers[0]: transformation")


async def test_the_consumer_dead_letters_an_event_it_cannot_transform_without_a_post() -> None:
    r = rig(triggers=(trigger_spec(transformation={"form": "JSONPATH", "value": "$.data.gone"}),))
    message = r.message("cannot")
    await r.dispatcher.offer(message)
    assert r.subscribers.requests == []  # nothing was sent, nothing retried
    [letter] = r.producer.to(names.dead_letter_queue("default/display"))
    assert letter.body == message.body  # the event, unchanged
    assert letter.headers[names.LAST_ERROR] == (
        "no response: the JSONPATH transformation failed: the JSONPath $.data.gone selects "
        "nothing in event cannot"
    )
    assert letter.headers["ce-knativeerrorcode"] == "-1"
    assert message.acks == 1
    assert r.journal[-1] == ("ack", "cannot")  # after the dead letter was confirmed


async def test_the_consumer_sends_the_transformed_body_and_keeps_the_attributes() -> None:
    r = rig(triggers=(trigger_spec(transformation=BUCKET_TEMPLATE),))
    message = r.message("e-1")
    message.body = orjson.dumps(OSS_DOC["data"])
    await r.dispatcher.offer(message)
    [request] = r.subscribers.requests
    assert request.headers["ce-id"] == "e-1"
    assert request.headers["ce-source"] == "acs.oss"
    assert request.headers["content-type"] == JSON
    assert orjson.loads(request.body)["bucket"] == "knative"


# --- configuration: TOML, manifests, check-config --------------------------------------------


def test_check_config_shows_the_pattern_and_the_transformation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_env: None
) -> None:
    manifest = write(
        tmp_path / "triggers" / "t.yaml",
        """
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata:
          name: sizes
          annotations:
            bridge.knative.dev/transformation: '{"form": "JSONPATH", "value": "$.data.oss.object.size"}'
        spec:
          broker: eventbridge-default-broker
          filters:
            - eventbridge: {"source": ["acs.oss"]}
          subscriber:
            uri: http://127.0.0.1:8082/
        """,
    )
    path = write(
        tmp_path / "bridge.toml",
        f"""
        triggers_path = "{manifest.parent}"

        [[triggers]]
        name = "big-uploads"
        broker = "eventbridge-default-broker"
        subscriber.uri = "http://127.0.0.1:8081/"
        pattern = '{{"source": ["acs.oss"], "data": {{"oss": {{"object": {{"size": [{{"numeric": [">", 1048576]}}]}}}}}}}}'
        transformation = {{ form = "TEMPLATE", value = {{ bucket = "$.data.oss.bucket.name" }}, template = '{{"bucket": "${{bucket}}"}}' }}
        """,
    )
    assert main(["check-config", "--config", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    i = lines.index("trigger default/big-uploads")
    assert lines[i + 2 : i + 4] == [
        '  filter:     eventbridge: {"source":["acs.oss"],"data":{"oss":{"object":{"size":'
        '[{"numeric":[">",1048576]}]}}}}',
        '  transform:  TEMPLATE (JSON) {"bucket": "${bucket}"} with bucket=$.data.oss.bucket.name',
    ]
    j = lines.index("trigger default/sizes")
    assert lines[j + 2 : j + 4] == [
        '  filter:     eventbridge: {"source":["acs.oss"]}',
        "  transform:  JSONPATH $.data.oss.object.size",
    ]
    ((spec, _),) = load_trigger_manifests(manifest)
    assert spec.transformation == {"form": "JSONPATH", "value": "$.data.oss.object.size"}


def test_a_wrong_annotation_names_it(tmp_path: Path) -> None:
    manifest = write(
        tmp_path / "t.yaml",
        """
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata:
          name: t
          annotations:
            bridge.knative.dev/transformation: '{"form": '
        spec:
          broker: b
          subscriber:
            uri: http://127.0.0.1:8082/
        """,
    )
    with pytest.raises(ConfigError, match=r"bridge\.knative\.dev/transformation: not JSON or YAML"):
        load_trigger_manifests(manifest)


# --- end to end through RabbitMQ -------------------------------------------------------------

ENVELOPE = {"content-type": "application/json;charset=utf-8"}


async def test_each_form_end_to_end(bridge_factory, subscriber_factory):
    forms: dict[str, dict[str, Any] | None] = {
        "original": None,
        "jsonpath": {"form": "JSONPATH", "value": "$.data.oss.bucket"},
        "constant": {"form": "CONSTANT", "value": "an upload happened"},
        "template": BUCKET_TEMPLATE,
        "text": {
            "form": "TEMPLATE",
            "value": {"key": "$.data.oss.object.key", "region": "$.aliyunregionid"},
            "template": "${key} uploaded in ${region}",
        },
    }
    subs = {name: await subscriber_factory() for name in forms}
    running = await bridge_factory(
        triggers=[
            trigger(name, subs[name].url, **({"transformation": t} if t else {}))
            for name, t in forms.items()
        ]
    )
    status, _, answer = await running.post("/", body=json.dumps(OSS_DOC), headers=ENVELOPE)
    assert status == 202, answer
    await eventually(lambda: all(len(s.received) == 1 for s in subs.values()))
    got = {name: sub.received[0] for name, sub in subs.items()}
    for request in got.values():  # binary mode: the attributes stay
        assert request.headers["ce-id"] == OSS_DOC["id"]
        assert request.headers["ce-type"] == "oss:ObjectCreated:PutObject"
    assert json.loads(got["original"].body) == OSS_DOC["data"]
    assert got["original"].headers["content-type"] == "application/json;charset=utf-8"
    assert json.loads(got["jsonpath"].body) == OSS_DOC["data"]["oss"]["bucket"]
    assert got["jsonpath"].headers["content-type"] == JSON
    assert got["constant"].body == b"an upload happened"
    assert got["constant"].headers["content-type"] == TEXT
    assert json.loads(got["template"].body)["size"] == 225496
    assert got["template"].headers["content-type"] == JSON
    assert got["text"].body == b"demo.data uploaded in cn-hangzhou"


async def test_structured_and_bare_deliveries(bridge_factory, subscriber_factory):
    structured, bare = await subscriber_factory(), await subscriber_factory()
    template = {"form": "JSONPATH", "value": "$.data.oss.object"}
    running = await bridge_factory(
        triggers=[
            trigger(
                "structured", structured.url, transformation=template, delivery={"format": "json"}
            ),
            trigger("bare", bare.url, transformation={**template, "keepAttributes": False}),
        ]
    )
    status, _, _ = await running.post("/", body=json.dumps(OSS_DOC), headers=ENVELOPE)
    assert status == 202
    await eventually(lambda: len(structured.received) == len(bare.received) == 1)
    envelope = json.loads(structured.received[0].body)
    assert structured.received[0].headers["content-type"] == "application/cloudevents+json"
    assert envelope["id"] == OSS_DOC["id"]
    assert envelope["datacontenttype"] == JSON
    assert envelope["data"] == OSS_DOC["data"]["oss"]["object"]
    assert not [h for h in bare.received[0].headers if h.startswith("ce-")]
    assert json.loads(bare.received[0].body) == OSS_DOC["data"]["oss"]["object"]


async def test_a_failing_transformation_dead_letters_at_once(
    amqp, bridge_factory, subscriber_factory
):
    sub = await subscriber_factory()
    running = await bridge_factory(
        triggers=[
            trigger(
                "sizes",
                sub.url,
                transformation={"form": "JSONPATH", "value": "$.data.oss.object.size"},
                delivery={"retry": 5, "backoffDelay": "PT1S"},
            )
        ]
    )
    no_size = json.loads(json.dumps(OSS_DOC))
    del no_size["data"]["oss"]["object"]["size"]
    no_size["id"] = "no-size"
    for doc in (no_size, OSS_DOC):
        status, _, _ = await running.post("/", body=json.dumps(doc), headers=ENVELOPE)
        assert status == 202
    await eventually(lambda: sub.ids() == [OSS_DOC["id"]])
    dlq = names.dead_letter_queue("default/sizes")

    async def one_letter() -> bool:
        channel = await amqp.channel()
        ok = await channel.queue_declare(dlq, passive=True)
        await channel.close()
        return bool(ok.message_count == 1)

    await eventually(one_letter, what="the dead letter")
    [letter] = await get_all(amqp, dlq)
    headers = {
        k: v.decode() if isinstance(v, bytes) else v
        for k, v in letter.header.properties.headers.items()
    }
    assert headers["ce-id"] == "no-size"
    error = headers[names.LAST_ERROR]
    assert "JSONPath $.data.oss.object.size selects nothing in event no-size" in error
    assert json.loads(letter.body) == no_size["data"]  # the original event
    await asyncio.sleep(0.2)
    assert sub.ids() == [OSS_DOC["id"]]  # never posted, never retried
