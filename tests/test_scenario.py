"""The reference scenario end to end: a Knative Trigger manifest, EventBridge's delivery of an OSS
upload, the durable queue, and the subscriber receiving the event in binary mode."""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from bridge.config import load
from bridge.triggers import build_routes
from tests.conftest import eventually, trigger

DATA = Path(__file__).parent / "data"


def oss_event() -> dict[str, object]:
    return json.loads((DATA / "eventbridge-oss-put-object.json").read_text())


async def test_reference_manifest_routes_oss_upload_to_subscriber(
    tmp_path, amqp_url, bridge_factory, subscriber_factory
):
    sub = await subscriber_factory()
    # The reference manifest, unchanged, with its ref resolved to the local subscriber.
    (tmp_path / "triggers").mkdir()
    (tmp_path / "triggers" / "trigger.yaml").write_text(
        (DATA / "trigger-reference.yaml").read_text()
    )
    (tmp_path / "triggers" / "service.yaml").write_text(
        (DATA / "service-event-display.yaml").read_text()
    )
    config = tmp_path / "config.toml"
    config.write_text(
        f'triggers_path = "triggers"\n[resolver]\noverrides = {{ "default/helloworld-go" = "{sub.url}" }}\n'
    )
    loaded = load(str(config))
    routes = build_routes(loaded)
    assert [t.key for t in routes.triggers] == ["default/my-service-trigger"]
    assert routes.triggers[0].subscriber == sub.url
    spec = loaded.triggers[0][0]
    running = await bridge_factory(
        triggers=[spec.model_dump(exclude_none=True)],
        resolver={"overrides": {"default/helloworld-go": sub.url}},
    )
    # The trigger of the reference manifest filters on the ActionTrail type.
    event = json.loads((DATA / "eventbridge-actiontrail-console-operation.json").read_text())
    status, _, body = await running.post(
        "/", body=json.dumps(event), headers={"content-type": "application/json;charset=utf-8"}
    )
    assert status == 202, body
    await eventually(lambda: len(sub.received) == 1, what="the subscriber to get the event")
    got = sub.received[0]
    assert got.headers["ce-id"] == event["id"]
    assert got.headers["ce-source"] == "acs.oss"
    assert got.headers["ce-type"] == "oss:ActionTrail:ConsoleOperation"
    assert got.headers["ce-aliyunpublishtime"] == "2023-02-07T09:50:03.012PRC"
    assert got.headers["ce-aliyunoriginalaccountid"] == "1581204543170042"
    assert got.headers["content-type"] == "application/json;charset=utf-8"
    assert got.headers["prefer"] == "reply"
    assert orjson.loads(got.body) == event["data"]


async def test_oss_upload_reaches_event_display_trigger(bridge_factory, subscriber_factory):
    sub = await subscriber_factory()
    running = await bridge_factory(
        triggers=[
            trigger(
                "my-service-trigger",
                sub.url,
                filter={"attributes": {"source": "acs.oss", "type": "oss:ObjectCreated:PutObject"}},
            )
        ]
    )
    event = oss_event()
    status, _, _ = await running.post(
        "/default/eventbridge-default-broker",
        body=json.dumps(event),
        headers={"content-type": "application/json"},
    )
    assert status == 202
    await eventually(lambda: len(sub.received) == 1, what="delivery")
    got = sub.received[0]
    assert got.headers["ce-specversion"] == "1.0"
    assert got.headers["ce-subject"] == event["subject"]
    assert "ce-knativebrokerttl" not in got.headers
    assert orjson.loads(got.body) == event["data"]
