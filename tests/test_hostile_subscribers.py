"""Subscribers that misbehave at the byte level, written as raw asyncio servers: informational
answers, a 101 nobody asked for, connections closed after every answer, a 1 GB answer, non-HTTP
bytes, malformed chunked bodies and connections cut mid-answer.

Each is tested at the client (what `SubscriberClient.post` returns) and, where the dispatcher's
decision matters, end to end through a real bridge and RabbitMQ.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from bridge.http.client import MAX_BODY, SubscriberClient
from bridge.ports import Answer
from tests.conftest import Running, eventually, get_all, queue_depth, trigger
from tests.raw_http import Handler, RawConnection, RawServer, answer

GB = 1 << 30
HEADERS = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "test", "ce-type": "t"}

MakeServer = Callable[..., Awaitable[RawServer]]


@pytest.fixture
async def raw_server() -> AsyncIterator[MakeServer]:
    made: list[RawServer] = []

    async def make(handler: Handler, **kwargs: Any) -> RawServer:
        server = await RawServer(handler, **kwargs).start()
        made.append(server)
        return server

    yield make
    for server in made:
        await server.close()


@pytest.fixture
async def client() -> AsyncIterator[SubscriberClient]:
    client = SubscriberClient()
    yield client
    await client.close()


async def post(client: SubscriberClient, url: str, timeout: float = 5.0) -> Answer:
    return await client.post(url, dict(HEADERS), b"x", timeout)


def events(*ids: str, type_: str = "test.event") -> list[dict[str, str]]:
    return [
        {
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-source": "test",
            "ce-type": type_,
            "content-type": "text/plain",
        }
        for event_id in ids
    ]


async def send_all(running: Running, headers: list[dict[str, str]], inflight: int = 16) -> None:
    """POST events to the ingress over a few kept-alive connections; each must get 202."""
    semaphore = asyncio.Semaphore(inflight)
    async with aiohttp.ClientSession() as session:

        async def one(h: dict[str, str]) -> None:
            async with semaphore, session.post(running.url, data=b"x", headers=h) as r:
                assert r.status == 202, await r.read()

        await asyncio.gather(*(one(h) for h in headers))


def metric(running: Running, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels` (0 when there is none)."""
    total = 0.0
    for family in running.app.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


# --- 1xx -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n",
    ],
    ids=["100", "103", "100-102-103"],
)
@pytest.mark.parametrize("apart", [False, True], ids=["one-write", "apart"])
async def test_informational_answers_are_skipped_for_the_final_one(
    raw_server: MakeServer, client: SubscriberClient, interim: bytes, apart: bool
) -> None:
    async def handler(conn: RawConnection) -> None:
        while await conn.request() is not None:
            if apart:
                await conn.send(interim)
                await asyncio.sleep(0.02)
                await conn.send(answer(200, b"ok", "x-final: yes\r\n"))
            else:
                await conn.send(interim + answer(200, b"ok", "x-final: yes\r\n"))

    server = await raw_server(handler)
    for _ in range(2):  # the connection stays usable for the next request
        got = await post(client, server.url)
        assert (got.status, got.body, got.error) == (200, b"ok", None)
        assert got.headers == {"content-length": "2", "x-final": "yes"}  # no 1xx header leaks
    assert server.connections == 1


@pytest.mark.parametrize(
    "switch",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n\x00\x01",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    ],
    ids=["with-upgrade", "then-200"],
)
async def test_a_101_nobody_asked_for_is_an_invalid_answer(
    raw_server: MakeServer, client: SubscriberClient, switch: bytes
) -> None:
    async def handler(conn: RawConnection) -> None:
        await conn.request()
        await conn.send(switch)
        await asyncio.sleep(0.5)

    server = await raw_server(handler)
    got = await post(client, server.url)
    assert got.status == -1
    assert got.error is not None
    assert "switched protocols (HTTP 101)" in got.error
    assert not got.permanent


# --- connections the subscriber closes -----------------------------------------------------------


async def test_a_stale_pooled_connection_is_resent_once_on_a_new_connection(
    raw_server: MakeServer, client: SubscriberClient
) -> None:
    """Every connection answers its first request, then closes on the next without answering:
    the server's idle close crossing a request on the wire."""

    async def handler(conn: RawConnection) -> None:
        if await conn.request() is not None:
            await conn.send(answer(200, b"first"))
            await conn.request()  # read, never answered

    server = await raw_server(handler)
    both = await asyncio.gather(post(client, server.url), post(client, server.url))
    assert [a.status for a in both] == [200, 200]
    assert server.connections == 2  # two idle connections in the pool now, both stale
    got = await post(client, server.url)
    assert (got.status, got.body, got.error) == (200, b"first", None)
    # Sent on a stale connection, then once more on a new one; not on the other stale one.
    assert server.connections == 3
    assert len(server.requests) == 4


async def test_a_request_whose_answer_had_begun_is_not_sent_again(
    raw_server: MakeServer, client: SubscriberClient
) -> None:
    async def handler(conn: RawConnection) -> None:
        await conn.request()
        await conn.send(answer(200))
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")

    server = await raw_server(handler)
    assert (await post(client, server.url)).status == 200
    got = await post(client, server.url)
    assert got.status == -1
    assert got.error == "the connection closed mid-answer (HTTP 200, after 3 body bytes of 10)"
    assert len(server.requests) == 2
    assert server.connections == 1


async def test_a_new_connection_closed_before_an_answer_is_not_sent_again(
    raw_server: MakeServer, client: SubscriberClient
) -> None:
    async def handler(conn: RawConnection) -> None:
        await conn.request()

    server = await raw_server(handler)
    got = await post(client, server.url)
    assert got.status == -1
    assert got.error is not None
    assert got.error.startswith("the connection closed before an answer")
    assert len(server.requests) == 1


async def test_bytes_on_an_idle_connection_retire_it(
    raw_server: MakeServer, client: SubscriberClient
) -> None:
    async def handler(conn: RawConnection) -> None:
        while await conn.request() is not None:
            await conn.send(answer(200, b"mine"))
            await asyncio.sleep(0.05)
            await conn.send(answer(500, b"nobody asked"))  # while the connection is idle

    server = await raw_server(handler)
    first = await post(client, server.url)
    await asyncio.sleep(0.2)
    second = await post(client, server.url)
    assert (first.status, first.body) == (200, b"mine")
    assert (second.status, second.body) == (200, b"mine")
    assert server.connections == 2


async def test_a_subscriber_closing_after_every_answer_causes_no_retry_and_no_dead_letter(
    amqp: Any, bridge_factory: Callable[..., Awaitable[Running]], raw_server: MakeServer
) -> None:
    """Answers 200 and closes, without `Connection: close`: every pooled connection goes stale
    as soon as it is back in the pool, and the next request races the close."""
    seen: collections.Counter[str] = collections.Counter()

    async def handler(conn: RawConnection) -> None:
        request = await conn.request()
        if request is not None:
            seen[request.headers["ce-id"]] += 1
            await conn.send(answer(200))

    server = await raw_server(handler)
    running = await bridge_factory(
        triggers=[trigger("t", server.url, delivery={"retry": 3, "backoffDelay": "PT0.05S"})]
    )
    ids = [f"stale-{i}" for i in range(800)]
    await send_all(running, events(*ids))
    await eventually(lambda: len(seen) == len(ids), timeout=60, what="every event delivered")
    await asyncio.sleep(0.3)
    assert set(seen) == set(ids)
    assert max(seen.values()) == 1  # nothing was delivered twice
    assert metric(running, "bridge_retries_total", trigger="default/t") == 0
    no_answer = metric(running, "bridge_deliveries_total", trigger="default/t", code="-1")
    assert no_answer == 0
    assert metric(running, "bridge_deliveries_total", trigger="default/t", code="200") == len(ids)
    assert await queue_depth(amqp, "bridge.dlq.default.t") == 0
    assert server.connections > 1


# --- huge answers --------------------------------------------------------------------------------


def huge_handler(status: int, framing: str, sent: list[int]) -> Handler:
    """Answers with a body of 1 GB: declared by content-length, chunked, or until the close."""

    async def handler(conn: RawConnection) -> None:
        await conn.request()
        head = {
            "content-length": f"content-length: {GB}\r\n",
            "chunked": "transfer-encoding: chunked\r\n",
            "until-close": "",
        }[framing]
        extra = "ce-specversion: 1.0\r\nce-id: reply\r\nce-source: huge\r\nce-type: reply.type\r\n"
        await conn.send(f"HTTP/1.1 {status} Big\r\n{head}{extra}\r\n".encode())
        block = bytes(1 << 20)
        if framing == "chunked":
            block = b"%x\r\n%s\r\n" % (len(block), block)
        while sent[0] < GB:
            await conn.send(block)
            sent[0] += len(block)

    return handler


@pytest.mark.parametrize("framing", ["content-length", "chunked", "until-close"])
@pytest.mark.parametrize("status", [200, 503])
async def test_a_huge_answer_is_not_read_whole(
    raw_server: MakeServer, client: SubscriberClient, status: int, framing: str
) -> None:
    sent = [0]
    server = await raw_server(huge_handler(status, framing, sent))
    tracemalloc.start()
    try:
        started = time.monotonic()
        got = await post(client, server.url, timeout=20)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (got.status, got.error, got.oversized, got.body) == (status, None, True, b"")
    assert got.headers["ce-type"] == "reply.type"  # the head is kept, the body is not
    assert elapsed < 5
    assert peak < 4 * MAX_BODY
    # The client closed the connection: the server could not go on sending.
    await eventually(lambda: server.requests and not server.busy, timeout=5, what="the cut")
    assert sent[0] < 64 * MAX_BODY


async def test_a_huge_2xx_answer_acknowledges_the_event_and_is_never_a_reply(
    amqp: Any,
    bridge_factory: Callable[..., Awaitable[Running]],
    raw_server: MakeServer,
    subscriber_factory: Any,
) -> None:
    sent = [0]
    huge = await raw_server(huge_handler(200, "content-length", sent))
    everything = await subscriber_factory()
    running = await bridge_factory(
        triggers=[
            trigger("huge", huge.url, filter={"attributes": {"type": "huge.event"}}),
            trigger("everything", everything.url),
        ]
    )
    await send_all(running, events("big-1", type_="huge.event"))
    await eventually(lambda: len(huge.requests) == 1, what="the delivery")
    await eventually(lambda: everything.ids() == ["big-1"], what="the catch-all")
    await eventually(
        lambda: metric(running, "bridge_deliveries_total", trigger="default/huge", code="200") == 1,
        what="the 200 counted",
    )
    await asyncio.sleep(0.5)  # a reply would reach the catch-all within this
    assert everything.ids() == ["big-1"]
    assert len(huge.requests) == 1
    assert metric(running, "bridge_retries_total", trigger="default/huge") == 0
    assert await queue_depth(amqp, "bridge.dlq.default.huge") == 0
    assert sent[0] < 64 * MAX_BODY


# --- garbage, malformed chunked bodies, connections cut mid-answer -------------------------------

HOSTILE: dict[str, tuple[bytes, str]] = {
    "ssh-banner": (b"SSH-2.0-OpenSSH_9.6\r\n", "invalid HTTP answer (Expected HTTP/"),
    "tls-record": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", "invalid HTTP answer"),
    "html": (b"<html><body>hello</body></html>\r\n\r\n", "invalid HTTP answer"),
    "status-2000": (b"HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n", "invalid HTTP answer"),
    "bad-chunk-size": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
        "invalid HTTP answer (Invalid character in chunk size)",
    ),
    "chunk-longer-than-said": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        "invalid HTTP answer (Expected LF after chunk data)",
    ),
    "two-lengths": (
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc",
        "invalid HTTP answer (Duplicate Content-Length)",
    ),
    "cut-mid-body": (
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this",
        "the connection closed mid-answer (HTTP 200, after 9 body bytes of 100)",
    ),
    "cut-mid-chunk": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\nabc",
        "the connection closed mid-answer (HTTP 200, after 3 body bytes)",
    ),
    "cut-in-headers": (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/pl",
        "the connection closed in the middle of the answer's headers",
    ),
    "cut-after-100": (
        b"HTTP/1.1 100 Continue\r\n\r\n",
        "the connection closed after an informational answer (HTTP 100)",
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_garbage_and_broken_answers_are_a_retryable_no_response(
    raw_server: MakeServer,
    client: SubscriberClient,
    caplog: pytest.LogCaptureFixture,
    name: str,
) -> None:
    data, error = HOSTILE[name]

    async def handler(conn: RawConnection) -> None:
        await conn.request()
        await conn.send(data)

    server = await raw_server(handler)
    got = await post(client, server.url)
    assert got.status == -1
    assert got.error is not None
    assert got.error.startswith(error), got.error
    assert not got.permanent
    await asyncio.sleep(0.05)
    no_errors_logged(caplog)
    # The broken connection was not pooled: the next request opens a new one.
    await post(client, server.url)
    assert server.connections == 2


async def test_broken_answers_end_delivered_or_dead_lettered(
    amqp: Any,
    bridge_factory: Callable[..., Awaitable[Running]],
    raw_server: MakeServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A subscriber that answers each event badly once, then 200 (flaky), and one that always
    answers garbage (broken): the first gets everything after one retry each, the second's
    event lands in the dead-letter queue with the reason."""
    attempts: collections.Counter[str] = collections.Counter()

    async def flaky(conn: RawConnection) -> None:
        request = await conn.request()
        if request is None:
            return
        event_id = request.headers["ce-id"]
        attempts[event_id] += 1
        if attempts[event_id] == 1:
            await conn.send(HOSTILE[event_id][0])
        else:
            await conn.send(answer(200))

    async def broken(conn: RawConnection) -> None:
        request = await conn.request()
        if request is not None:
            attempts[request.headers["ce-id"]] += 1
            await conn.send(HOSTILE["ssh-banner"][0])

    flaky_server = await raw_server(flaky)
    broken_server = await raw_server(broken)
    delivery = {"retry": 2, "backoffDelay": "PT0.05S"}
    running = await bridge_factory(
        triggers=[
            trigger(
                "flaky",
                flaky_server.url,
                filter={"attributes": {"type": "flaky"}},
                delivery=delivery,
            ),
            trigger(
                "broken",
                broken_server.url,
                filter={"attributes": {"type": "broken"}},
                delivery=delivery,
            ),
        ]
    )
    await send_all(running, events(*HOSTILE, type_="flaky"))
    await send_all(running, events("never", type_="broken"))
    await eventually(
        lambda: all(attempts[name] == 2 for name in HOSTILE), timeout=15, what="every retry"
    )
    await eventually(
        lambda: queue_depth_is(amqp, "bridge.dlq.default.broken", 1), what="the dead letter"
    )
    await asyncio.sleep(0.3)
    assert all(attempts[name] == 2 for name in HOSTILE), attempts
    assert attempts["never"] == 3
    assert await queue_depth(amqp, "bridge.dlq.default.flaky") == 0
    [letter] = await get_all(amqp, "bridge.dlq.default.broken")
    headers = letter.header.properties.headers
    assert str(headers["ce-knativeerrorcode"]) in ("-1", "b'-1'")
    last_error = headers["bridge-last-error"]
    last_error = last_error.decode() if isinstance(last_error, bytes) else last_error
    assert last_error.startswith("no response: invalid HTTP answer (Expected HTTP/"), last_error
    assert metric(running, "bridge_retries_total", trigger="default/flaky") == len(HOSTILE)
    no_errors_logged(caplog)


async def queue_depth_is(amqp: Any, queue: str, depth: int) -> bool:
    return await queue_depth(amqp, queue) == depth
