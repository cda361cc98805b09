"""End to end (ingress -> RabbitMQ -> subscriber) for the hardened edges: nothing unsendable is
accepted, data reaches subscribers exactly as sent, and subscriber-chosen waits are bounded."""

from __future__ import annotations

import asyncio
import email.utils
import subprocess
import sys
import time
from urllib.parse import unquote, urlsplit

import orjson
import pytest

from tests.conftest import RABBITMQCTL, Received, Reply, eventually, trigger

STRUCTURED = "application/cloudevents+json"
BASE = {"specversion": "1.0", "source": "acs.oss", "type": "oss:ObjectCreated:PutObject"}
INJECTION = (
    "text/plain\r\ncontent-length: 0\r\n\r\nPOST /smuggled HTTP/1.1\r\nhost: evil\r\n"
    "content-length: 0\r\n\r\n"
)


def queue_names(vhost: str) -> list[str]:
    return subprocess.run(
        [RABBITMQCTL, "list_queues", "-p", vhost, "name", "--quiet", "--no-table-headers"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("datacontenttype", INJECTION),
        ("subject", "a\r\nx-forged: 1"),
        ("subject", "nul\x00byte"),
        ("myext", "bell\x07"),
        ("datacontenttype", "text/plain; charset=\u4e2d\u6587"),
    ],
)
async def test_unsendable_attribute_values_are_refused_and_never_delivered(
    bridge_factory, subscriber_factory, attribute, value
):
    """Finding 1: such events were accepted (202), then written raw into the subscriber's POST
    (a forged second request) or failed every attempt and ended as dead letters."""
    sub = await subscriber_factory()
    running = await bridge_factory(triggers=[trigger("t", sub.url)])
    event = {**BASE, "id": "bad", attribute: value, "data": "x"}
    status, _, body = await running.post(
        "/", body=orjson.dumps(event), headers={"content-type": STRUCTURED}
    )
    assert status == 400, body
    assert attribute in orjson.loads(body)["error"]
    marker = {**BASE, "id": "marker", "data": "x"}
    status, _, _ = await running.post(
        "/", body=orjson.dumps(marker), headers={"content-type": STRUCTURED}
    )
    assert status == 202
    await eventually(lambda: "marker" in sub.ids(), what="the marker event")
    assert [r.path for r in sub.received] == ["/"]
    assert sub.ids() == ["marker"]


EXACT = [
    b'{"n":1234567890123456789012345,"d":0.1000000000000000055511151231257827,"x":1E400}',
    b"[" * 300 + b"]" * 300,
    b'{"deep":' * 1000 + b"0" + b"}" * 1000,
    b'{ "spacing" : [ 1.50 , 2e0 ] }',
]


@pytest.mark.parametrize("data", EXACT, ids=["numbers", "nested-300", "nested-1000", "spacing"])
@pytest.mark.parametrize("mode", ["structured", "envelope", "batch"])
async def test_json_data_reaches_the_subscriber_byte_for_byte(
    bridge_factory, subscriber_factory, data, mode
):
    """Findings 2 and 3: data nested 255-1024 levels got 500, and structured data was
    re-serialised (1234567890123456789012345 arrived as 1.2345678901234568e+24). Delivered in
    binary mode (the body is the data) and in the JSON format (`data` member)."""
    binary = await subscriber_factory()
    as_json = await subscriber_factory()
    running = await bridge_factory(
        triggers=[
            trigger("binary", binary.url),
            trigger("json", as_json.url, delivery={"format": "json"}),
        ]
    )
    event = b'{"specversion":"1.0","id":"exact","source":"s","type":"t","data":' + data + b"}"
    if mode == "batch":
        body, content_type = b"[" + event + b"]", "application/cloudevents-batch+json"
    else:
        body = event
        content_type = STRUCTURED if mode == "structured" else "application/json"
    status, _, answer = await running.post("/", body=body, headers={"content-type": content_type})
    assert status == 202, answer
    await eventually(lambda: binary.received and as_json.received, what="both deliveries")
    assert binary.received[0].body == data
    assert binary.received[0].headers["content-type"] == "application/json"
    delivered = as_json.received[0].body
    assert delivered.endswith(b'"data":' + data + b"}"), delivered[:200]


async def test_retry_after_dates_use_a_bounded_set_of_delay_queues(
    bridge_factory, subscriber_factory, amqp_url
):
    """Finding 8: a Retry-After HTTP date gave one delay queue per distinct millisecond value
    (200 events created about 92 queues). Now 60 events answered 503 with dates 1-3 s ahead
    (each turning into a different number of milliseconds) wait in at most two level queues."""
    first_seen: set[str] = set()

    def responder(rec: Received) -> Reply:
        event_id = rec.headers["ce-id"]
        if event_id in first_seen:
            return 200, {}, b""
        first_seen.add(event_id)
        ahead = 1 + int(event_id) % 3
        return 503, {"retry-after": email.utils.formatdate(time.time() + ahead, usegmt=True)}, b""

    sub = await subscriber_factory(responder=responder)
    running = await bridge_factory(
        triggers=[trigger("t", sub.url, delivery={"retry": 2, "backoffDelay": "PT0.001S"})]
    )
    n = 60
    batch = [{**BASE, "id": str(i), "data": i} for i in range(n)]
    status, _, body = await running.post(
        "/",
        body=orjson.dumps(batch),
        headers={"content-type": "application/cloudevents-batch+json"},
    )
    assert status == 202, body
    await eventually(lambda: len(sub.received) >= 2 * n, timeout=30, what="every retry")
    assert sorted({r.headers["ce-id"] for r in sub.received}) == sorted(str(i) for i in range(n))
    vhost = unquote(urlsplit(amqp_url).path.lstrip("/"))
    queues = queue_names(vhost)
    delays = sorted(q for q in queues if q.startswith("bridge.delay."))
    # 1-3 s ahead, less the time it took to answer: levels 1, 2 and 3 s at most.
    assert set(delays) <= {"bridge.delay.1000", "bridge.delay.2000", "bridge.delay.3000"}, delays
    assert delays


async def test_bridge_send_data_keeps_every_digit(bridge_factory, subscriber_factory):
    """`bridge send --data` sends the JSON as written (it used to go through float)."""
    sub = await subscriber_factory()
    running = await bridge_factory(triggers=[trigger("t", sub.url)])
    data = '{"n": 1234567890123456789012345, "d": 0.1000000000000000055511151231257827}'
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "send",
        "--url",
        running.url,
        "--type",
        "t",
        "--source",
        "s",
        "--data",
        data,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert out.decode().strip() == "202"
    await eventually(lambda: sub.received, what="the sent event")
    assert sub.received[0].body == data.encode()
