"""Hostile and odd HTTP clients against the real ingress (raw sockets, real RabbitMQ).

Request smuggling variants are refused with 400 before anything is handled and are never read as
two requests; pipelined requests are answered in order, also when a wire-level refusal follows
them; upgrade requests (what `curl --http2` sends) are served as HTTP/1.1 with their real body;
repeated CloudEvents headers, huge and slow requests, idle connections and too many connections.

Bridge runs with role "ingress" (nothing consumes) so what was stored is counted exactly from the
queues, except where a test checks the delivery to a subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass

import aiohttp
import orjson
import pytest

from bridge.http import server as http_server
from tests.conftest import eventually, get_all, queue_depth, trigger
from tests.helpers import (
    CATCH_ALL,
    STRUCTURED,
    UNMATCHED,
    close_writer,
    error_of,
    host_port,
    start,
    stored,
    valid_event,
)

LIMIT = 1024


# --- helpers -------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_answers(data: bytes) -> list[Answer]:
    """Every complete HTTP/1.1 response in `data` (bodies framed by content-length)."""
    answers = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"an incomplete response: {data[:300]!r}"
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 "), lines[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"repeated response header {name}"
            headers[name.lower()] = value.strip()
        length = int(headers["content-length"])
        answers.append(Answer(int(lines[0].split(" ", 2)[1]), headers, rest[:length]))
        data = rest[length:]
    return answers


async def exchange(url: str, *parts: bytes, pause: float = 0.0, timeout: float = 10.0) -> bytes:
    """Write `parts` (with `pause` between them), read until the server closes: all it sent."""
    reader, writer = await asyncio.open_connection(*host_port(url))
    try:
        for i, part in enumerate(parts):
            if i and pause:
                await asyncio.sleep(pause)
            writer.write(part)
            await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        await close_writer(writer)


def request(
    body: bytes = b"",
    *,
    headers: list[tuple[str, str]] | None = None,
    path: str = "/",
    length: bool = True,
    close: bool = False,
) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: bridge"]
    lines += [f"{k}: {v}" for k, v in headers or [("content-type", STRUCTURED)]]
    if length:
        lines.append(f"content-length: {len(body)}")
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def event_request(event_id: str, *, close: bool = False) -> bytes:
    return request(orjson.dumps(valid_event(id=event_id)), close=close)


def binary_headers(event_id: str) -> list[tuple[str, str]]:
    return [
        ("ce-specversion", "1.0"),
        ("ce-id", event_id),
        ("ce-source", "test"),
        ("ce-type", "t"),
        ("content-type", "application/octet-stream"),
    ]


def chunked(body: bytes, size: int = 7, extension: bytes = b"") -> bytes:
    out = b""
    for i in range(0, len(body), size):
        piece = body[i : i + size]
        out += b"%x%s\r\n%s\r\n" % (len(piece), extension, piece)
    return out + b"0\r\n"


# A valid event, as the body a smuggling attempt would hide: stored only if a request is misread.
SMUGGLED = event_request("smuggled")
UPGRADE = [
    ("connection", "Upgrade, HTTP2-Settings"),
    ("upgrade", "h2c"),
    ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
]


# --- 1: upgrade requests -------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("split", [False, True])
async def test_h2c_upgrade_post_is_served_as_http11_with_its_body_and_delivered(
    bridge_factory, subscriber_factory, framing, split
):
    sub = await subscriber_factory()
    running = await bridge_factory(triggers=[trigger("display", sub.url)])
    # The body looks like requests and carries CR, LF and every byte value: only real framing
    # delivers it whole.
    data = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n" + bytes(range(256)) + b"\r\n0\r\n\r\n"
    headers = [*UPGRADE, *binary_headers("upgraded")]
    if framing == "chunked":
        first = request(
            chunked(data, extension=b';x="y z"') + b"x-trailer: 1\r\n\r\n",
            headers=[*headers, ("transfer-encoding", "chunked")],
            length=False,
        )
    else:
        first = request(data, headers=headers)
    second = event_request("after-upgrade", close=True)
    head_end = first.index(b"\r\n\r\n") + 4
    parts = [first[:head_end], first[head_end:] + second] if split else [first + second]
    answers = parse_answers(await exchange(running.url, *parts, pause=0.2))
    assert [a.status for a in answers] == [202, 202], answers
    assert "connection" not in answers[0].headers  # still keep-alive: no switch, no close
    await eventually(lambda: len(sub.received) == 2, what="both events delivered")
    by_id = {r.headers["ce-id"]: r for r in sub.received}
    assert by_id["upgraded"].body == data
    assert by_id["after-upgrade"].headers["ce-source"] == "test"


async def test_upgrade_request_answered_from_its_headers_keeps_the_connection(bridge_factory, amqp):
    running = await start(bridge_factory)
    refused = request(SMUGGLED, path="/nowhere/at-all", headers=[*UPGRADE])
    answers = parse_answers(
        await exchange(running.url, refused + event_request("next", close=True))
    )
    assert [a.status for a in answers] == [404, 202]
    error_of(answers[0].body)
    [message] = await get_all(amqp, CATCH_ALL)
    assert message.header.properties.message_id == "next"


@pytest.mark.parametrize(("coding", "status"), [("identity", 400), ("gzip, chunked", 501)])
async def test_upgrade_request_with_a_transfer_coding_other_than_chunked_is_refused(
    bridge_factory, amqp, coding, status
):
    # llhttp checks the transfer coding after the headers, a check it skips for an upgrade
    # request: the body framing after the upgrade must check it again.
    running = await start(bridge_factory)
    body = chunked(orjson.dumps(valid_event(id="coded"))) + b"\r\n"
    bad = request(body, headers=[*UPGRADE, ("transfer-encoding", coding)], length=False)
    answers = parse_answers(await exchange(running.url, bad + SMUGGLED))
    assert [a.status for a in answers] == [status]
    assert answers[0].headers["connection"] == "close"
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == 0


async def test_connect_is_answered_and_the_connection_closed(bridge_factory, amqp):
    running = await start(bridge_factory)
    tunnel = b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n" + SMUGGLED
    answers = parse_answers(await exchange(running.url, tunnel))
    assert [a.status for a in answers] == [405]
    assert answers[0].headers["connection"] == "close"
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == 0


# --- 2: pipelining, also with a trailing refusal -------------------------------------------------


async def test_hundred_pipelined_events_are_all_answered_202_in_order(bridge_factory, amqp):
    running = await start(bridge_factory)
    burst = b"".join(event_request(f"p-{i:03}") for i in range(99)) + event_request(
        "p-099", close=True
    )
    answers = parse_answers(await exchange(running.url, burst))
    assert [a.status for a in answers] == [202] * 100
    assert answers[-1].headers["connection"] == "close"
    messages = await get_all(amqp, CATCH_ALL)
    assert [m.header.properties.message_id for m in messages] == [f"p-{i:03}" for i in range(100)]


def _unparsable() -> bytes:
    return b"POST / HTTP/1.1\r\nhost: bridge\r\nbad header\r\n\r\n"


def _oversized() -> bytes:
    # Declared over the limit; the body is not sent (it must not be needed for the answer).
    return b"POST / HTTP/1.1\r\nhost: bridge\r\ncontent-length: %d\r\n\r\n" % (LIMIT + 1)


def _chunked_oversized() -> bytes:
    body = chunked(b"x" * (LIMIT + 100), size=512)
    return request(body, headers=[("transfer-encoding", "chunked")], length=False)


@pytest.mark.parametrize(
    ("tail", "status"),
    [(_unparsable, 400), (_oversized, 413), (_chunked_oversized, 413)],
    ids=["unparsable-400", "declared-oversize-413", "chunked-oversize-413"],
)
async def test_pipelined_events_then_a_refused_request_are_answered_in_order(
    bridge_factory, amqp, tail, status
):
    running = await start(bridge_factory, ingress={"max_event_bytes": LIMIT})
    burst = b"".join(event_request(f"ok-{i}") for i in range(3)) + tail() + SMUGGLED
    answers = parse_answers(await exchange(running.url, burst))
    assert [a.status for a in answers] == [202, 202, 202, status]
    assert "connection" not in answers[0].headers
    assert answers[-1].headers["connection"] == "close"
    error_of(answers[-1].body)
    # The three answered 202 are stored; the refused one and what followed it are not.
    messages = await get_all(amqp, CATCH_ALL)
    assert [m.header.properties.message_id for m in messages] == ["ok-0", "ok-1", "ok-2"]
    assert await queue_depth(amqp, UNMATCHED) == 0


async def test_oversized_request_is_refused_without_reading_its_body(bridge_factory, amqp):
    running = await start(bridge_factory, ingress={"max_event_bytes": LIMIT})
    reader, writer = await asyncio.open_connection(*host_port(running.url))
    try:
        writer.write(event_request("first") + _oversized())
        await writer.drain()
        # The answers come while the body has not been sent at all.
        data = await asyncio.wait_for(reader.read(), 5.0)
    finally:
        await close_writer(writer)
    assert [a.status for a in parse_answers(data)] == [202, 413]


async def test_pipelined_events_then_huge_headers_are_answered_in_order(bridge_factory, amqp):
    running = await start(bridge_factory)
    reader, writer = await asyncio.open_connection(*host_port(running.url))
    huge = b"POST / HTTP/1.1\r\nhost: bridge\r\nx-pad: " + b"a" * (http_server.MAX_HEAD_BYTES + 1)

    async def send() -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(event_request("a") + event_request("b") + huge)  # never finished
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        data = await asyncio.wait_for(reader.read(), 10.0)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        await close_writer(writer)
    answers = parse_answers(data)
    assert [a.status for a in answers] == [202, 202, 431]
    assert answers[-1].headers["connection"] == "close"
    error_of(answers[-1].body)
    assert await queue_depth(amqp, CATCH_ALL) == 2


async def test_half_closed_client_gets_every_answer(bridge_factory, amqp):
    running = await start(bridge_factory)
    reader, writer = await asyncio.open_connection(*host_port(running.url))
    try:
        writer.write(b"".join(event_request(f"h-{i}") for i in range(5)) + b"POST / HTT")
        writer.write_eof()  # sent everything: the last request stays incomplete
        data = await asyncio.wait_for(reader.read(), 10.0)
    finally:
        await close_writer(writer)
    assert [a.status for a in parse_answers(data)] == [202] * 5
    assert await queue_depth(amqp, CATCH_ALL) == 5


# --- smuggling: refused with 400, nothing handled ------------------------------------------------

EVENT = orjson.dumps(valid_event(id="framed"))
SMUGGLING = {
    "content-length-then-chunked": b"POST / HTTP/1.1\r\nhost: b\r\ncontent-type: "
    + STRUCTURED.encode()
    + b"\r\ncontent-length: %d\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n" % len(EVENT)
    + EVENT,
    "chunked-then-content-length": b"POST / HTTP/1.1\r\nhost: b\r\ncontent-type: "
    + STRUCTURED.encode()
    + b"\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n"
    + SMUGGLED,
    "two-different-content-lengths": b"POST / HTTP/1.1\r\nhost: b\r\ncontent-type: "
    + STRUCTURED.encode()
    + b"\r\ncontent-length: %d\r\ncontent-length: 0\r\n\r\n" % len(EVENT)
    + EVENT,
    "two-equal-content-lengths": b"POST / HTTP/1.1\r\nhost: b\r\ncontent-type: "
    + STRUCTURED.encode()
    + b"\r\ncontent-length: %d\r\ncontent-length: %d\r\n\r\n" % (len(EVENT), len(EVENT))
    + EVENT,
    "content-length-list": b"POST / HTTP/1.1\r\nhost: b\r\ncontent-type: "
    + STRUCTURED.encode()
    + b"\r\ncontent-length: %d, %d\r\n\r\n" % (len(EVENT), len(EVENT))
    + EVENT,
    "chunked-then-identity": b"POST / HTTP/1.1\r\nhost: b\r\ncontent-type: "
    + STRUCTURED.encode()
    + b"\r\ntransfer-encoding: chunked, identity\r\n\r\n"
    + chunked(EVENT)
    + b"\r\n",
    "two-transfer-encodings": b"POST / HTTP/1.1\r\nhost: b\r\ncontent-type: "
    + STRUCTURED.encode()
    + b"\r\ntransfer-encoding: chunked\r\ntransfer-encoding: identity\r\n\r\n"
    + chunked(EVENT)
    + b"\r\n",
    "identity-alone": b"POST / HTTP/1.1\r\nhost: b\r\ncontent-type: "
    + STRUCTURED.encode()
    + b"\r\ntransfer-encoding: identity\r\n\r\n"
    + EVENT,
    "obs-fold": b"POST / HTTP/1.1\r\nhost: b\r\ncontent-type: "
    + STRUCTURED.encode()
    + b"\r\nx-folded: a\r\n b\r\ncontent-length: %d\r\n\r\n" % len(EVENT)
    + EVENT,
    "obs-fold-hiding-transfer-encoding": b"POST / HTTP/1.1\r\nhost: b\r\ncontent-type: "
    + STRUCTURED.encode()
    + b"\r\ncontent-length: %d\r\nx-a: y\r\n transfer-encoding: chunked\r\n\r\n" % len(EVENT)
    + EVENT,
    "bare-lf-everywhere": (
        b"POST / HTTP/1.1\nhost: b\ncontent-type: "
        + STRUCTURED.encode()
        + b"\ncontent-length: %d\n\n" % len(EVENT)
        + EVENT
    ),
    "bare-lf-in-one-header": b"POST / HTTP/1.1\r\nhost: b\nx-hidden: 1\r\ncontent-type: "
    + STRUCTURED.encode()
    + b"\r\ncontent-length: %d\r\n\r\n" % len(EVENT)
    + EVENT,
    "space-before-colon": b"POST / HTTP/1.1\r\nhost: b\r\ncontent-type: "
    + STRUCTURED.encode()
    + b"\r\ncontent-length: %d\r\ntransfer-encoding : chunked\r\n\r\n" % len(EVENT)
    + EVENT,
    "tab-before-colon": b"POST / HTTP/1.1\r\nhost: b\r\ncontent-type: "
    + STRUCTURED.encode()
    + b"\r\ncontent-length\t: %d\r\n\r\n" % len(EVENT)
    + EVENT,
    "vertical-tab-in-transfer-encoding": b"POST / HTTP/1.1\r\nhost: b\r\ncontent-type: "
    + STRUCTURED.encode()
    + b"\r\ncontent-length: %d\r\ntransfer-encoding: \x0bchunked\r\n\r\n" % len(EVENT)
    + EVENT,
    "chunk-size-not-hex": b"POST / HTTP/1.1\r\nhost: b\r\ntransfer-encoding: chunked\r\n\r\n"
    b"zz\r\n" + EVENT + b"\r\n0\r\n\r\n",
    "chunk-size-negative": b"POST / HTTP/1.1\r\nhost: b\r\ntransfer-encoding: chunked\r\n\r\n"
    b"-5\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
    "chunk-size-0x-prefix": b"POST / HTTP/1.1\r\nhost: b\r\ntransfer-encoding: chunked\r\n\r\n"
    b"0x5\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
    "chunk-size-space-after": b"POST / HTTP/1.1\r\nhost: b\r\ntransfer-encoding: chunked\r\n\r\n"
    b"5 \r\nhello\r\n0\r\n\r\n" + SMUGGLED,
    "chunk-size-overflow": b"POST / HTTP/1.1\r\nhost: b\r\ntransfer-encoding: chunked\r\n\r\n"
    b"1000000000000000005\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
    "chunk-data-longer-than-size": b"POST / HTTP/1.1\r\nhost: b\r\ntransfer-encoding: chunked"
    b"\r\n\r\n1\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
    "chunk-extension-malformed": b"POST / HTTP/1.1\r\nhost: b\r\ntransfer-encoding: chunked"
    b"\r\n\r\n5;a=b c\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
    "content-length-plus-sign": b"POST / HTTP/1.1\r\nhost: b\r\ncontent-length: +5\r\n\r\n"
    b"hello" + SMUGGLED,
    "content-length-negative": b"POST / HTTP/1.1\r\nhost: b\r\ncontent-length: -1\r\n\r\n"
    + SMUGGLED,
    "nul-in-header-value": b"POST / HTTP/1.1\r\nhost: b\r\nx-a: a\x00b\r\ncontent-length: 0"
    b"\r\n\r\n" + SMUGGLED,
    "header-without-colon": b"POST / HTTP/1.1\r\nhost: b\r\ntransfer-encoding chunked\r\n"
    b"content-length: 0\r\n\r\n" + SMUGGLED,
    "space-in-target": b"POST /a b HTTP/1.1\r\nhost: b\r\ncontent-length: 0\r\n\r\n" + SMUGGLED,
    "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SMUGGLED,
}


@pytest.mark.parametrize("raw", list(SMUGGLING.values()), ids=list(SMUGGLING))
async def test_smuggling_attempt_is_400_and_nothing_is_handled(bridge_factory, amqp, raw):
    running = await start(bridge_factory)
    # A valid event first: it proves the connection works and that the refusal comes after it.
    answers = parse_answers(await exchange(running.url, event_request("marker") + raw))
    assert [a.status for a in answers] == [202, 400], answers
    assert answers[1].headers["connection"] == "close"
    assert "valid HTTP/1.1" in error_of(answers[1].body)
    messages = await get_all(amqp, CATCH_ALL)
    assert [m.header.properties.message_id for m in messages] == ["marker"]
    assert await queue_depth(amqp, UNMATCHED) == 0


async def test_unsupported_transfer_coding_is_501_and_nothing_is_handled(bridge_factory, amqp):
    running = await start(bridge_factory)
    raw = request(
        chunked(EVENT) + b"\r\n", headers=[("transfer-encoding", "gzip, chunked")], length=False
    )
    answers = parse_answers(await exchange(running.url, raw + SMUGGLED))
    assert [a.status for a in answers] == [501]
    assert "gzip" in error_of(answers[0].body)
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == 0


async def test_data_after_a_connection_close_request_is_not_read(bridge_factory, amqp):
    running = await start(bridge_factory)
    answers = parse_answers(
        await exchange(running.url, event_request("last", close=True) + SMUGGLED + b"garbage")
    )
    assert [a.status for a in answers] == [202]
    assert answers[0].headers["connection"] == "close"
    [message] = await get_all(amqp, CATCH_ALL)
    assert message.header.properties.message_id == "last"


# --- 3: repeated headers -------------------------------------------------------------------------


async def test_repeated_ce_header_is_400_naming_it_and_nothing_stored(bridge_factory, amqp):
    running = await start(bridge_factory)
    headers = [*binary_headers("one"), ("ce-id", "two")]
    answers = parse_answers(await exchange(running.url, request(b"x", headers=headers, close=True)))
    assert [a.status for a in answers] == [400]
    assert "ce-id" in error_of(answers[0].body)
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == 0


# --- 4: huge and slow requests -------------------------------------------------------------------


async def test_huge_headers_are_431_and_the_connection_closes(bridge_factory, amqp):
    running = await start(bridge_factory)
    huge = b"POST / HTTP/1.1\r\nhost: bridge\r\nx-pad: " + b"a" * (http_server.MAX_HEAD_BYTES + 1)
    reader, writer = await asyncio.open_connection(*host_port(running.url))
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(huge)  # never finished
            await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10.0)
    finally:
        await close_writer(writer)
    [answer] = parse_answers(data)
    assert answer.status == 431
    assert answer.headers["connection"] == "close"
    error_of(answer.body)
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == 0


async def test_slow_headers_are_cut_after_request_timeout(bridge_factory, amqp):
    running = await start(bridge_factory, ingress={"request_timeout": 1})
    reader, writer = await asyncio.open_connection(*host_port(running.url))
    try:
        writer.write(b"POST / HTTP/1.1\r\nhost: bridge\r\ncontent-ty")  # half the headers
        await writer.drain()
        # With the 60 s default nothing would arrive within this bounded wait.
        data = await asyncio.wait_for(reader.read(), 10.0)
    finally:
        await close_writer(writer)
    [answer] = parse_answers(data)
    assert answer.status == 408
    assert answer.headers["connection"] == "close"
    assert "1 seconds" in error_of(answer.body)


async def test_body_slower_than_request_timeout_is_cut_and_not_stored(bridge_factory, amqp):
    running = await start(bridge_factory, ingress={"request_timeout": 1})
    body = orjson.dumps(valid_event(id="slow"))
    reader, writer = await asyncio.open_connection(*host_port(running.url))
    data = b""
    try:
        writer.write(request(body)[: -len(body)])
        for byte in body:  # one byte every 0.2 s: the whole body would take far longer than 1 s
            writer.write(bytes([byte]))
            with contextlib.suppress(TimeoutError):
                data += await asyncio.wait_for(reader.read(65536), 0.2)
            if reader.at_eof():
                break
        else:
            pytest.fail("the slow body was never cut")
    finally:
        await close_writer(writer)
    [answer] = parse_answers(data)
    assert answer.status == 408
    error_of(answer.body)
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == 0


async def test_many_idle_connections_do_not_block_a_new_client(bridge_factory, amqp):
    running = await start(bridge_factory)
    idle = [await asyncio.open_connection(*host_port(running.url)) for _ in range(200)]
    try:
        # Half of them sent half a request and stopped.
        for _, writer in idle[::2]:
            writer.write(b"POST / HTTP/1.1\r\nhost: x\r\n")
        answers = parse_answers(
            await exchange(running.url, event_request("newcomer", close=True), timeout=5.0)
        )
        assert [a.status for a in answers] == [202]
    finally:
        for _, writer in idle:
            await close_writer(writer)
    assert await queue_depth(amqp, CATCH_ALL) == 1


async def test_client_that_does_not_read_its_answers_is_disconnected(bridge_factory):
    running = await start(bridge_factory, ingress={"request_timeout": 1})
    server = running.app.ingress_server
    assert server is not None
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills up at once
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, host_port(running.url))
    reader, writer = await asyncio.open_connection(sock=sock)
    burst = b"OPTIONS / HTTP/1.1\r\nhost: x\r\n\r\n" * 20000

    async def flood() -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(20):  # 13 MB of answers asked for, none read
                writer.write(burst)
                await writer.drain()

    sender = asyncio.create_task(flood())
    try:
        await eventually(lambda: len(server.connections) == 1, what="the connection accepted")
        # The answers back up, reading stops, and after request_timeout the connection is cut.
        await eventually(lambda: not server.connections, timeout=30, what="the reader cut off")
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.transport.abort()  # its unsent megabytes are not waited for
    del reader


# --- 5: the connection cap -----------------------------------------------------------------------


async def test_connections_beyond_the_cap_get_503_and_are_closed(bridge_factory, amqp, caplog):
    """Finding 11: running out of descriptors dropped connections silently, readiness unchanged.
    Now the cap answers 503, logs once, and /readyz reports not ready until there is room."""
    running = await start(bridge_factory, ingress={"max_connections": 20})
    server = running.app.ingress_server
    assert server is not None
    assert server.max_connections == 20

    async def readyz() -> tuple[int, bytes]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(running.admin + "readyz") as answer,
        ):
            return answer.status, await answer.read()

    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(20):
            held.append(await asyncio.open_connection(*host_port(running.url)))
        await eventually(lambda: len(server.connections) == 20, what="20 connections accepted")
        assert server.saturated
        status, body = await readyz()
        assert status == 503
        assert b"maximum of 20 connections" in body
        with caplog.at_level(logging.WARNING, logger="bridge.http"):
            for i in range(2):  # the 21st and 22nd
                [answer] = parse_answers(
                    await exchange(running.url, event_request(f"refused-{i}"), timeout=5.0)
                )
                assert answer.status == 503
                assert answer.headers["connection"] == "close"
                assert int(answer.headers["retry-after"]) >= 1
                assert "20" in error_of(answer.body)
        warnings = [r.getMessage() for r in caplog.records if "connection limit" in r.getMessage()]
        assert len(warnings) == 1, warnings  # rate-limited: one line for both
        assert "20 connections open, limit 20" in warnings[0]
        assert server.saturated
        # The held connections still work.
        reader, writer = held[0]
        writer.write(event_request("held"))
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        assert head.startswith(b"HTTP/1.1 202 ")
        # Closing some makes room again.
        for _, writer in held[-3:]:
            await close_writer(writer)
        del held[-3:]
        await eventually(lambda: not server.saturated, what="no longer saturated")
        assert (await readyz())[0] == 200
        answers = parse_answers(await exchange(running.url, event_request("room", close=True)))
        assert [a.status for a in answers] == [202]
    finally:
        for _, writer in held:
            await close_writer(writer)
    ids = sorted(m.header.properties.message_id for m in await get_all(amqp, CATCH_ALL))
    assert ids == ["held", "room"]


def test_default_connection_cap_leaves_a_reserve_of_descriptors(monkeypatch):
    import resource

    for soft, expected in [(1024, 768), (20000, 15000), (300, 64), (100000, 75000)]:
        monkeypatch.setattr(resource, "getrlimit", lambda _which, s=soft: (s, s))
        assert http_server.default_max_connections() == expected
    monkeypatch.setattr(resource, "getrlimit", lambda _w: (resource.RLIM_INFINITY,) * 2)
    assert http_server.default_max_connections() == (1 << 20) - (1 << 18)
