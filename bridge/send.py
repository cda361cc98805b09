"""`bridge send`: post one event the way EventBridge does (the whole event as a JSON body)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import orjson

from bridge.errors import BridgeError
from bridge.http.client import SubscriberClient

SAMPLES = {
    "oss-put-object": "oss-put-object.json",
    "actiontrail-console-operation": "actiontrail-console-operation.json",
}


class SendError(BridgeError):
    """The event could not be built or sent."""


def sample_event(name: str) -> dict[str, Any]:
    """A sample of the reference scenario, with a fresh id so each send is a new event."""
    if name not in SAMPLES:
        raise SendError(f"unknown sample {name!r}; choose one of {', '.join(sorted(SAMPLES))}.")
    text = resources.files("bridge").joinpath("samples", SAMPLES[name]).read_text("utf-8")
    event: dict[str, Any] = json.loads(text)
    event["id"] = str(uuid.uuid4())
    return event


def custom_event(type_: str, source: str, data: str | None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": source,
        "type": type_,
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    if data is not None:
        try:
            json.loads(data)  # a check only: the text is sent as written, every digit kept
        except json.JSONDecodeError as exc:
            raise SendError(f"--data is not valid JSON ({exc.msg}).") from None
        event["data"] = orjson.Fragment(data.encode("utf-8"))
        event["datacontenttype"] = "application/json"
    return event


async def post_event(url: str, event: dict[str, Any], token: str | None) -> tuple[int, str]:
    headers = {"content-type": "application/json;charset=utf-8"}
    if token:
        headers["x-eventbridge-signature-token"] = token
    client = SubscriberClient()
    try:
        answer = await client.post(url, headers, orjson.dumps(event), 30.0)
    finally:
        await client.close()
    if answer.error is not None:
        raise SendError(f"cannot post to {url}: {answer.error}.")
    return answer.status, answer.body.decode("utf-8", "replace")
