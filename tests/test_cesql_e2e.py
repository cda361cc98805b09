"""CESQL filters end to end: Knative Trigger manifests with `filters: [{cesql: ...}]`, loaded as
written, bridge in process on the real RabbitMQ, events posted the way EventBridge and Knative
clients send them, and what each subscriber receives."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp

from bridge.config import load_trigger_manifests
from tests.conftest import Running, Subscriber, eventually

DATA = Path(__file__).parent / "data"

MANIFESTS = """
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: uploads
spec:
  broker: eventbridge-default-broker
  filters:
    - cesql: "source = 'acs.oss' AND type LIKE 'oss:ObjectCreated:%'"
  subscriber:
    uri: {uploads}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: console
spec:
  broker: eventbridge-default-broker
  filters:
    - cesql: >-
        aliyunregionid IN ('cn-hangzhou', 'cn-beijing')
        AND NOT (type LIKE 'oss:ObjectCreated:%')
  subscriber:
    uri: {console}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: sequenced
spec:
  broker: eventbridge-default-broker
  filters:
    - cesql: "datacontenttype LIKE 'application/json%' AND sequence >= 2"
    - exact:
        source: acs.ecs
  subscriber:
    uri: {sequenced}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: errors
spec:
  broker: eventbridge-default-broker
  filters:
    - cesql: "nosuchext = 'x' OR subject LIKE '%.data'"
  subscriber:
    uri: {errors}
"""


def envelope(name: str, **changes: Any) -> tuple[str, dict[str, str]]:
    """A sample event as EventBridge posts it (the whole event as JSON)."""
    doc = {**json.loads((DATA / name).read_text()), **changes}
    return json.dumps(doc), {"content-type": "application/json;charset=utf-8"}


def binary(event_id: str, source: str, type_: str, **ext: str) -> tuple[str, dict[str, str]]:
    """A binary-mode CloudEvent with JSON data (as Knative's clients send)."""
    headers = {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": source,
        "ce-type": type_,
        "content-type": "application/json",
        **{f"ce-{k}": v for k, v in ext.items()},
    }
    return "{}", headers


async def metric(running: Running, name: str, trigger: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(running.admin + "metrics") as r:
        text = await r.text()
    pattern = rf'^{name}\{{[^}}]*trigger="{re.escape(trigger)}"[^}}]*\}} (\S+)$'
    return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.MULTILINE))


async def test_knative_triggers_with_cesql_filters_deliver_what_the_spec_matches(
    tmp_path, bridge_factory, subscriber_factory
):
    subs: dict[str, Subscriber] = {
        name: await subscriber_factory() for name in ("uploads", "console", "sequenced", "errors")
    }
    manifest = tmp_path / "triggers.yaml"
    manifest.write_text(MANIFESTS.format(**{name: sub.url for name, sub in subs.items()}))
    specs = [spec.model_dump(exclude_none=True) for spec, _ in load_trigger_manifests(manifest)]
    running = await bridge_factory(triggers=specs)

    oss_put = json.loads((DATA / "eventbridge-oss-put-object.json").read_text())["id"]
    console = json.loads((DATA / "eventbridge-actiontrail-console-operation.json").read_text())
    events = [
        # uploads (and not errors: its `nosuchext` is missing, an error, so no match)
        envelope("eventbridge-oss-put-object.json"),
        # console: a region in the list and not an upload
        envelope("eventbridge-actiontrail-console-operation.json"),
        # the same from another region: nobody
        envelope(
            "eventbridge-actiontrail-console-operation.json",
            id="other-region",
            aliyunregionid="eu-central-1",
        ),
        # sequenced: JSON data, `sequence` cast to Integer
        binary("seq-3", "acs.ecs", "ecs:Instance:StatusChanged", sequence="3"),
        binary("seq-1", "acs.ecs", "ecs:Instance:StatusChanged", sequence="1"),
        binary("seq-abc", "acs.ecs", "ecs:Instance:StatusChanged", sequence="abc"),  # CastError
        binary("seq-none", "acs.ecs", "ecs:Instance:StatusChanged"),  # MissingAttributeError
        binary("seq-oss", "acs.oss", "oss:Bucket:Other", sequence="3"),  # not acs.ecs
        # errors: the extension present, so OR's left operand is true
        binary("has-ext", "acs.other", "other:Thing", nosuchext="x"),
    ]
    # Last, one event per trigger that only it matches: once each is delivered, the events
    # before it have been filtered.
    sentinels = {
        "uploads": binary("s-uploads", "acs.oss", "oss:ObjectCreated:Done"),
        "console": binary(
            "s-console", "acs.oss", "oss:ActionTrail:Done", aliyunregionid="cn-beijing"
        ),
        "sequenced": binary("s-sequenced", "acs.ecs", "ecs:Done", sequence="2"),
        "errors": binary("s-errors", "acs.other", "other:Done", nosuchext="x"),
    }
    for body, headers in [*events, *sentinels.values()]:
        status, _, answer = await running.post("/", body=body, headers=headers)
        assert status == 202, answer

    async def all_sentinels() -> bool:
        return all(f"s-{name}" in sub.ids() for name, sub in subs.items())

    await eventually(all_sentinels, what="every trigger to get its last event")
    await asyncio.sleep(0.3)  # nothing else arrives late
    assert sorted(subs["uploads"].ids()) == sorted([oss_put, "s-uploads"])
    assert sorted(subs["console"].ids()) == sorted([console["id"], "s-console"])
    assert sorted(subs["sequenced"].ids()) == ["s-sequenced", "seq-3"]
    assert sorted(subs["errors"].ids()) == ["has-ext", "s-errors"]

    # The delivered event is the one sent, in binary mode.
    got = next(r for r in subs["sequenced"].received if r.headers["ce-id"] == "seq-3")
    assert got.headers["ce-sequence"] == "3"
    assert got.headers["content-type"] == "application/json"

    # RabbitMQ did its part. Eight events matched some trigger and entered the broker (the
    # others went to the unmatched queue). `source = 'acs.oss'` is a binding of uploads, so of
    # the six uploads does not match, only the two acs.oss ones (console's) reached its consumer
    # to be filtered there; the four acs.ecs and acs.other ones never entered its queue.
    assert await metric(running, "bridge_filtered_events_total", "default/uploads") == 2
