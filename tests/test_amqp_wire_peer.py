"""bridge's AMQP client against a hostile fake broker (an asyncio server speaking AMQP via pamqp).

Each test scripts the broker's side: garbage instead of frames, frames beyond frame_max or with
a bad end octet, frames on a channel never opened, heartbeats that stop, channel.close and
connection.close at awkward moments, a truncated body, confirms out of order and with
`multiple`, a basic.return before its ack. The client must fail with a clear `AMQPError`
(telling the broker why with connection.close when it can), never hang, and never deliver a
partial message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trustme
from pamqp import body as pamqp_body
from pamqp import commands
from pamqp import exceptions as pamqp_exceptions
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header
from pamqp import heartbeat as pamqp_heartbeat

from bridge.amqp import wire
from bridge.amqp.wire import frames

pytestmark = pytest.mark.timeout(30)


class Peer:
    """The broker's end of one client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = b""
        self.received: list[tuple[int, Any]] = []
        self.heartbeats = 0

    def send(self, method: Any, channel: int = 0) -> None:
        self.writer.write(pamqp_frame.marshal(method, channel))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send_content(
        self, channel: int, body: bytes, properties: Any = None, frame_max: int = 4096
    ) -> None:
        props = properties or commands.Basic.Properties()
        self.send(pamqp_header.ContentHeader(0, len(body), props), channel)
        chunk = frame_max - 8
        for i in range(0, len(body), chunk):
            self.send(pamqp_body.ContentBody(body[i : i + chunk]), channel)

    async def frame(self, timeout: float = 5.0) -> tuple[int, Any]:
        """The next frame from the client (heartbeats counted and skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    consumed, channel, value = pamqp_frame.unmarshal(self.buffer)
                except pamqp_exceptions.UnmarshalingException:
                    data = await self.reader.read(65536)
                    if not data:
                        raise EOFError("the client closed the connection") from None
                    self.buffer += data
                    continue
                self.buffer = self.buffer[consumed:]
                if isinstance(value, pamqp_heartbeat.Heartbeat):
                    self.heartbeats += 1
                    continue
                self.received.append((channel, value))
                return channel, value

    async def expect(self, kind: type, timeout: float = 5.0) -> Any:
        _, value = await self.frame(timeout)
        assert isinstance(value, kind), f"expected {kind.__name__}, got {value!r}"
        return value

    async def expect_on(self, kind: type, timeout: float = 5.0) -> tuple[int, Any]:
        channel, value = await self.frame(timeout)
        assert isinstance(value, kind), f"expected {kind.__name__}, got {value!r}"
        return channel, value

    async def handshake(self, frame_max: int = 4096, heartbeat: int = 0) -> None:
        header = await self.reader.readexactly(8)
        assert header == frames.PROTOCOL_HEADER
        self.send(
            commands.Connection.Start(
                server_properties={"product": "fake"}, mechanisms="PLAIN", locales="en_US"
            )
        )
        start_ok = await self.expect(commands.Connection.StartOk)
        assert start_ok.response == "\0guest\0guest"
        self.send(
            commands.Connection.Tune(channel_max=16, frame_max=frame_max, heartbeat=heartbeat)
        )
        await self.expect(commands.Connection.TuneOk)
        opened = await self.expect(commands.Connection.Open)
        self.vhost = opened.virtual_host
        self.send(commands.Connection.OpenOk())

    async def serve_channel(self, confirms: bool = False) -> int:
        channel, _ = await self.expect_on(commands.Channel.Open)
        self.send(commands.Channel.OpenOk(), channel)
        if confirms:
            await self.expect(commands.Confirm.Select)
            self.send(commands.Confirm.SelectOk(), channel)
        return channel

    async def open_consumer(self, frame_max: int = 4096) -> tuple[int, str]:
        """Handshake, a channel, and the client's basic.consume accepted: (channel, tag)."""
        await self.handshake(frame_max=frame_max)
        channel = await self.serve_channel()
        consume = await self.expect(commands.Basic.Consume)
        self.send(commands.Basic.ConsumeOk(consumer_tag=consume.consumer_tag), channel)
        return channel, consume.consumer_tag

    def deliver_head(self, channel: int, consumer_tag: str, body_size: int) -> None:
        """basic.deliver (tag 1) and a content header announcing `body_size` bytes."""
        self.send(
            commands.Basic.Deliver(
                consumer_tag=consumer_tag, delivery_tag=1, exchange="", routing_key=""
            ),
            channel,
        )
        self.send(pamqp_header.ContentHeader(0, body_size, commands.Basic.Properties()), channel)

    async def publishes(self, count: int) -> list[tuple[commands.Basic.Publish, bytes]]:
        """Read `count` publishes (method, header, body frames) from the client."""
        out = []
        for _ in range(count):
            method = await self.expect(commands.Basic.Publish)
            content = await self.expect(pamqp_header.ContentHeader)
            body = b""
            while len(body) < content.body_size:
                body += (await self.expect(pamqp_body.ContentBody)).value
            out.append((method, body))
        return out

    async def closed(self) -> None:
        """Wait until the client hangs up."""
        with contextlib.suppress(EOFError, ConnectionError):
            while True:
                await self.frame(10)


Script = Callable[[Peer], Awaitable[None]]


class FakeBroker:
    def __init__(self, script: Script, tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.peers: list[Peer] = []
        self.errors: list[BaseException] = []
        self.done = asyncio.Event()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer)
        self.peers.append(peer)
        try:
            await self.script(peer)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)
        finally:
            self.done.set()
            with contextlib.suppress(Exception):
                writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._session, "127.0.0.1", 0, ssl=self.tls)
        port = server.sockets[0].getsockname()[1]
        scheme = "amqps" if self.tls else "amqp"
        try:
            yield f"{scheme}://guest:guest@127.0.0.1:{port}/"
        finally:
            server.close()
            for peer in self.peers:
                peer.writer.close()
            await server.wait_closed()

    def check(self) -> None:
        for error in self.errors:
            raise error


async def run_against(script: Script, client: Callable[[str], Awaitable[None]]) -> FakeBroker:
    broker = FakeBroker(script)
    async with broker.running() as url:
        await client(url)
        async with asyncio.timeout(10):
            await broker.done.wait()
    broker.check()
    return broker


# -- the handshake --
async def test_garbage_after_the_protocol_header_is_a_clear_error():
    async def script(peer: Peer) -> None:
        await peer.reader.readexactly(8)
        peer.send_raw(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await peer.closed()

    async def client(url: str) -> None:
        with pytest.raises(wire.ProtocolError, match="does not speak AMQP 0-9-1"):
            await wire.connect(url)

    await run_against(script, client)


async def test_a_protocol_header_answer_names_the_version_mismatch():
    async def script(peer: Peer) -> None:
        await peer.reader.readexactly(8)
        peer.send_raw(b"AMQP\x01\x01\x00\x0a")  # what a 0-10 broker answers
        await peer.closed()

    async def client(url: str) -> None:
        with pytest.raises(wire.ProtocolError, match=r"answered with the header b'AMQP\\x01"):
            await wire.connect(url)

    await run_against(script, client)


async def test_refused_credentials_are_an_authentication_error():
    async def script(peer: Peer) -> None:
        await peer.reader.readexactly(8)
        peer.send(commands.Connection.Start(mechanisms="PLAIN"))
        await peer.expect(commands.Connection.StartOk)
        peer.send(
            commands.Connection.Close(
                reply_code=403,
                reply_text="ACCESS_REFUSED - Login was refused",
                class_id=0,
                method_id=0,
            )
        )
        await peer.expect(commands.Connection.CloseOk)
        await peer.closed()

    async def client(url: str) -> None:
        with pytest.raises(wire.AuthenticationError, match="ACCESS_REFUSED"):
            await wire.connect(url)

    await run_against(script, client)


async def test_a_broker_hanging_up_during_the_handshake_says_so():
    async def script(peer: Peer) -> None:
        await peer.reader.readexactly(8)
        peer.send(commands.Connection.Start(mechanisms="PLAIN"))
        await peer.expect(commands.Connection.StartOk)

    async def client(url: str) -> None:
        with pytest.raises(wire.ConnectionLost, match="during the handshake"):
            await wire.connect(url)

    await run_against(script, client)


async def test_a_silent_broker_times_the_connect_out():
    async def script(peer: Peer) -> None:
        await peer.closed()

    async def client(url: str) -> None:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await wire.connect(url, timeout=0.5)
        assert time.monotonic() - started < 2

    await run_against(script, client)


async def test_tune_and_vhost_are_negotiated():
    async def script(peer: Peer) -> None:
        await peer.reader.readexactly(8)
        peer.send(commands.Connection.Start(mechanisms="AMQPLAIN PLAIN"))
        start_ok = await peer.expect(commands.Connection.StartOk)
        assert start_ok.response == "\0us er\0p@ss:w/rd"
        assert start_ok.client_properties["connection_name"] == "peer-test"
        assert start_ok.client_properties["capabilities"]["connection.blocked"] is True
        peer.send(commands.Connection.Tune(channel_max=0, frame_max=65536, heartbeat=60))
        tune_ok = await peer.expect(commands.Connection.TuneOk)
        assert (tune_ok.channel_max, tune_ok.frame_max, tune_ok.heartbeat) == (2047, 8192, 5)
        opened = await peer.expect(commands.Connection.Open)
        assert opened.virtual_host == "my/vhost%"
        peer.send(commands.Connection.OpenOk())
        await peer.expect(commands.Connection.Close)
        peer.send(commands.Connection.CloseOk())

    async def client(url: str) -> None:
        url = url.replace("guest:guest", "us%20er:p%40ss%3Aw%2Frd") + (
            "my%2Fvhost%25?heartbeat=5&frame_max=8192"
        )
        connection = await wire.connect(url, name="peer-test")
        assert (connection.frame_max, connection.heartbeat) == (8192, 5)
        await connection.close()
        assert connection.closing.result() is None

    await run_against(script, client)


# -- framing --
async def test_a_frame_longer_than_frame_max_closes_the_connection_with_501():
    async def script(peer: Peer) -> None:
        await peer.handshake(frame_max=4096)
        channel = await peer.serve_channel()
        peer.send_raw(b"\x03" + channel.to_bytes(2, "big") + (5000).to_bytes(4, "big"))
        close = await peer.expect(commands.Connection.Close)
        assert close.reply_code == 501
        assert "frame_max" in close.reply_text

    async def client(url: str) -> None:
        connection = await wire.connect(url)
        await connection.channel()
        reason = await asyncio.wait_for(connection.closing, 5)
        assert isinstance(reason, wire.ProtocolError)
        assert "exceeds the negotiated frame_max (4096" in str(reason)

    await run_against(script, client)


async def test_a_bad_frame_end_octet_closes_the_connection_with_501():
    async def script(peer: Peer) -> None:
        await peer.handshake()
        channel = await peer.serve_channel()
        raw = pamqp_frame.marshal(commands.Basic.QosOk(), channel)
        await peer.expect(commands.Basic.Qos)
        peer.send_raw(raw[:-1] + b"\x00")
        close = await peer.expect(commands.Connection.Close)
        assert close.reply_code == 501

    async def client(url: str) -> None:
        connection = await wire.connect(url)
        channel = await connection.channel()
        with pytest.raises(wire.ProtocolError, match="ends with 0x00, not 0xce"):
            await channel.basic_qos(prefetch_count=1)
        assert channel.is_closed
        assert connection.is_closed

    await run_against(script, client)


async def test_a_frame_on_a_channel_never_opened_closes_the_connection_with_504():
    async def script(peer: Peer) -> None:
        await peer.handshake()
        peer.send(
            commands.Basic.Deliver(consumer_tag="x", delivery_tag=1, exchange="", routing_key=""), 7
        )
        close = await peer.expect(commands.Connection.Close)
        assert close.reply_code == 504

    async def client(url: str) -> None:
        connection = await wire.connect(url)
        reason = await asyncio.wait_for(connection.closing, 5)
        assert isinstance(reason, wire.ProtocolError)
        assert "channel 7, which is not open" in str(reason)

    await run_against(script, client)


async def test_an_unknown_method_closes_the_connection():
    async def script(peer: Peer) -> None:
        await peer.handshake()
        peer.send_raw(b"\x01\x00\x00\x00\x00\x00\x04\x00\x63\x00\x01\xce")  # class 99
        close = await peer.expect(commands.Connection.Close)
        assert close.reply_code == 503

    async def client(url: str) -> None:
        connection = await wire.connect(url)
        reason = await asyncio.wait_for(connection.closing, 5)
        assert "unknown method 99.1" in str(reason)

    await run_against(script, client)


# -- heartbeats --
async def test_missed_heartbeats_declare_the_connection_dead_in_about_two_intervals():
    async def script(peer: Peer) -> None:
        await peer.handshake(heartbeat=1)
        await peer.closed()  # reads (and counts the client's heartbeats), never writes
        assert peer.heartbeats >= 2  # the idle client sent its own

    async def client(url: str) -> None:
        connection = await wire.connect(url + "?heartbeat=1")
        channel_waiting = asyncio.ensure_future(connection.closing)
        started = time.monotonic()
        reason = await asyncio.wait_for(channel_waiting, 5)
        waited = time.monotonic() - started
        assert isinstance(reason, wire.ConnectionLost)
        assert "heartbeat 1 s" in str(reason)
        assert 1.5 <= waited <= 3.0, waited

    await run_against(script, client)


async def test_heartbeats_from_the_broker_keep_the_connection_alive():
    async def script(peer: Peer) -> None:
        await peer.handshake(heartbeat=1)
        for _ in range(8):
            peer.send_raw(frames.HEARTBEAT_FRAME)
            await asyncio.sleep(0.4)
        await peer.expect(commands.Connection.Close)
        peer.send(commands.Connection.CloseOk())

    async def client(url: str) -> None:
        connection = await wire.connect(url + "?heartbeat=1")
        await asyncio.sleep(3.0)
        assert not connection.is_closed
        await connection.close()

    await run_against(script, client)


# -- closes from the broker --
async def test_channel_close_mid_publish_fails_every_waiter():
    async def script(peer: Peer) -> None:
        await peer.handshake()
        channel = await peer.serve_channel(confirms=True)
        await peer.publishes(5)
        peer.send(commands.Basic.Ack(delivery_tag=1), channel)
        peer.send(
            commands.Channel.Close(
                reply_code=406,
                reply_text="PRECONDITION_FAILED - message size exceeded",
                class_id=60,
                method_id=40,
            ),
            channel,
        )
        assert (await peer.expect_on(commands.Channel.CloseOk))[0] == channel
        await peer.expect(commands.Connection.Close)
        peer.send(commands.Connection.CloseOk())

    async def client(url: str) -> None:
        connection = await wire.connect(url)
        channel = await connection.channel(publisher_confirms=True)
        waiters = [channel.publish_confirmed(b"m%d" % i, routing_key="q") for i in range(5)]
        outcomes = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 5)
        assert outcomes[0] is None
        for outcome in outcomes[1:]:
            assert isinstance(outcome, wire.PreconditionFailed)
            assert outcome.code == 406
            assert "message size exceeded" in outcome.text
        assert channel.is_closed
        assert isinstance(channel.closing.result(), wire.PreconditionFailed)
        with pytest.raises(wire.PreconditionFailed):
            channel.publish(b"late", routing_key="q")
        assert not connection.is_closed  # only the channel is gone
        await connection.close()

    await run_against(script, client)


async def test_connection_close_from_the_broker_fails_waiters_and_is_answered():
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.serve_channel()
        await peer.expect(commands.Queue.Declare)
        peer.send(
            commands.Connection.Close(
                reply_code=320,
                reply_text="CONNECTION_FORCED - broker forced connection closure",
                class_id=0,
                method_id=0,
            )
        )
        await peer.expect(commands.Connection.CloseOk)

    async def client(url: str) -> None:
        connection = await wire.connect(url)
        channel = await connection.channel()
        with pytest.raises(wire.ConnectionClosed, match="CONNECTION_FORCED") as caught:
            await asyncio.wait_for(channel.queue_declare("q"), 5)
        assert caught.value.code == 320
        assert connection.is_closed
        assert channel.is_closed
        assert isinstance(connection.closing.result(), wire.ConnectionClosed)
        with pytest.raises(wire.ConnectionClosed):
            await connection.channel()

    await run_against(script, client)


async def test_a_lost_socket_fails_waiters_at_once():
    async def script(peer: Peer) -> None:
        await peer.handshake()
        channel = await peer.serve_channel(confirms=True)
        await peer.publishes(1)
        peer.writer.transport.abort()
        assert channel

    async def client(url: str) -> None:
        connection = await wire.connect(url)
        channel = await connection.channel(publisher_confirms=True)
        with pytest.raises(wire.ConnectionLost, match="was lost"):
            await asyncio.wait_for(channel.publish_confirmed(b"x", routing_key="q"), 5)

    await run_against(script, client)


# -- content --
async def test_a_truncated_body_followed_by_a_method_is_a_protocol_error_not_a_message():
    delivered: list[Any] = []

    async def script(peer: Peer) -> None:
        channel, tag = await peer.open_consumer()
        peer.deliver_head(channel, tag, 1000)
        peer.send(pamqp_body.ContentBody(b"x" * 500), channel)
        peer.send(
            commands.Basic.Deliver(consumer_tag=tag, delivery_tag=2, exchange="", routing_key=""),
            channel,
        )
        close = await peer.expect(commands.Connection.Close)
        assert close.reply_code == 505

    async def client(url: str) -> None:
        connection = await wire.connect(url)
        channel = await connection.channel()
        await channel.basic_consume("q", delivered.append)
        reason = await asyncio.wait_for(connection.closing, 5)
        assert "while its content was incomplete" in str(reason)

    await run_against(script, client)
    assert delivered == []


async def test_a_body_cut_off_by_a_hang_up_is_never_delivered():
    delivered: list[Any] = []

    async def script(peer: Peer) -> None:
        channel, tag = await peer.open_consumer()
        peer.deliver_head(channel, tag, 1000)
        raw = pamqp_frame.marshal(pamqp_body.ContentBody(b"x" * 1000), channel)
        peer.send_raw(raw[:600])  # the frame itself is cut
        await peer.writer.drain()
        peer.writer.transport.abort()

    async def client(url: str) -> None:
        connection = await wire.connect(url)
        channel = await connection.channel()
        await channel.basic_consume("q", delivered.append)
        reason = await asyncio.wait_for(connection.closing, 5)
        assert isinstance(reason, wire.ConnectionLost)

    await run_against(script, client)
    assert delivered == []


async def test_a_body_longer_than_announced_is_a_protocol_error():
    delivered: list[Any] = []

    async def script(peer: Peer) -> None:
        channel, tag = await peer.open_consumer()
        peer.deliver_head(channel, tag, 10)
        peer.send(pamqp_body.ContentBody(b"x" * 11), channel)
        close = await peer.expect(commands.Connection.Close)
        assert close.reply_code == 505

    async def client(url: str) -> None:
        connection = await wire.connect(url)
        channel = await connection.channel()
        await channel.basic_consume("q", delivered.append)
        reason = await asyncio.wait_for(connection.closing, 5)
        assert "announced as 10" in str(reason)

    await run_against(script, client)
    assert delivered == []


async def test_deliveries_split_over_frames_and_reads_arrive_whole_and_in_order():
    bodies = [b"a" * 9000, b"", b"b" * 4088, b"c" * 4089]

    async def script(peer: Peer) -> None:
        channel, tag = await peer.open_consumer(frame_max=4096)
        for number, body in enumerate(bodies, 1):
            peer.send(
                commands.Basic.Deliver(
                    consumer_tag=tag,
                    delivery_tag=number,
                    redelivered=number == 2,
                    exchange="ex",
                    routing_key=f"rk{number}",
                ),
                channel,
            )
            peer.send_content(
                channel,
                body,
                commands.Basic.Properties(headers={"n": number}, content_type="text/plain"),
            )
            await peer.writer.drain()
        acks = [await peer.expect(commands.Basic.Ack) for _ in bodies]
        assert [(a.delivery_tag, a.multiple) for a in acks] == [
            (1, False),
            (2, False),
            (3, False),
            (4, True),
        ]
        await peer.expect(commands.Connection.Close)
        peer.send(commands.Connection.CloseOk())

    async def client(url: str) -> None:
        connection = await wire.connect(url)
        channel = await connection.channel()
        got: list[wire.Message] = []
        done = asyncio.Event()

        def on_message(message: wire.Message) -> None:
            got.append(message)
            if message.delivery_tag == 4:
                channel.basic_ack(4, multiple=True)
            else:
                channel.basic_ack(message.delivery_tag)
            if len(got) == len(bodies):
                done.set()

        await channel.basic_consume("q", on_message)
        await asyncio.wait_for(done.wait(), 5)
        assert [m.body for m in got] == bodies
        assert [m.properties.headers for m in got] == [{"n": n} for n in range(1, 5)]
        assert [m.redelivered for m in got] == [False, True, False, False]
        assert {(m.exchange, m.consumer_tag) for m in got} == {("ex", got[0].consumer_tag)}
        await connection.close()

    await run_against(script, client)


async def test_a_cancel_from_the_broker_reaches_the_consumer():
    cancelled: list[str] = []
    cancel_seen = asyncio.Event()

    async def script(peer: Peer) -> None:
        channel, tag = await peer.open_consumer()
        peer.send(commands.Basic.Cancel(consumer_tag=tag, nowait=True), channel)
        peer.send(commands.Basic.Cancel(consumer_tag=tag, nowait=False), channel)
        ok = await peer.expect(commands.Basic.CancelOk)
        assert ok.consumer_tag == tag
        await peer.expect(commands.Connection.Close)
        peer.send(commands.Connection.CloseOk())

    async def client(url: str) -> None:
        connection = await wire.connect(url)
        channel = await connection.channel()

        def on_cancel(tag: str) -> None:
            cancelled.append(tag)
            cancel_seen.set()

        await channel.basic_consume("q", lambda m: None, on_cancel=on_cancel)
        await asyncio.wait_for(cancel_seen.wait(), 5)
        await asyncio.sleep(0.1)
        await connection.close()

    await run_against(script, client)
    assert len(cancelled) == 1


# -- publisher confirms --
async def test_confirms_out_of_order_and_with_multiple_settle_exactly_their_publishes():
    order: list[int] = []

    async def script(peer: Peer) -> None:
        await peer.handshake()
        channel = await peer.serve_channel(confirms=True)
        await peer.publishes(7)
        peer.send(commands.Basic.Ack(delivery_tag=3), channel)
        peer.send(commands.Basic.Nack(delivery_tag=1, requeue=False), channel)
        await asyncio.sleep(0.05)
        peer.send(commands.Basic.Ack(delivery_tag=5, multiple=True), channel)  # 2, 4, 5
        await asyncio.sleep(0.05)
        peer.send(commands.Basic.Nack(delivery_tag=7, multiple=True), channel)  # 6, 7
        peer.send(commands.Basic.Ack(delivery_tag=7, multiple=True), channel)  # nothing left
        await peer.expect(commands.Connection.Close)
        peer.send(commands.Connection.CloseOk())

    async def client(url: str) -> None:
        connection = await wire.connect(url)
        channel = await connection.channel(publisher_confirms=True)

        async def publish(i: int) -> str:
            try:
                await channel.publish_confirmed(b"%d" % i, routing_key="q")
            except wire.PublishNacked:
                return "nack"
            finally:
                order.append(i)
            return "ack"

        outcomes = await asyncio.wait_for(asyncio.gather(*(publish(i) for i in range(1, 8))), 5)
        assert outcomes == ["nack", "ack", "ack", "ack", "ack", "nack", "nack"]
        assert order[:2] == [3, 1]
        assert channel.unconfirmed == 0
        await asyncio.sleep(0.05)
        assert not connection.is_closed
        await connection.close()

    await run_against(script, client)


async def test_a_return_before_the_ack_fails_exactly_the_returned_publish():
    async def script(peer: Peer) -> None:
        await peer.handshake()
        channel = await peer.serve_channel(confirms=True)
        published = await peer.publishes(5)
        assert [p.mandatory for p, _ in published] == [True, True, False, True, True]
        # 2 and 5 are returned (same exchange and routing key as 4: the body tells them apart)
        for tag in (2, 5):
            method, body = published[tag - 1]
            peer.send(
                commands.Basic.Return(
                    reply_code=312,
                    reply_text="NO_ROUTE",
                    exchange=method.exchange,
                    routing_key=method.routing_key,
                ),
                channel,
            )
            peer.send_content(channel, body, commands.Basic.Properties(message_id="same"))
        peer.send(commands.Basic.Ack(delivery_tag=5, multiple=True), channel)
        await peer.expect(commands.Connection.Close)
        peer.send(commands.Connection.CloseOk())

    async def client(url: str) -> None:
        connection = await wire.connect(url)
        channel = await connection.channel(publisher_confirms=True)
        same_id = wire.Properties(message_id="same")  # message ids play no part
        plan = [("a", b"1", True), ("b", b"2", True), ("b", b"3", False)]
        plan += [("b", b"4", True), ("b", b"5", True)]
        waiters = [
            channel.publish_confirmed(
                body, exchange="x", routing_key=rk, properties=same_id, mandatory=mandatory
            )
            for rk, body, mandatory in plan
        ]
        outcomes = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 5)
        assert [type(o).__name__ for o in outcomes] == [
            "NoneType",
            "PublishReturned",
            "NoneType",
            "NoneType",
            "PublishReturned",
        ]
        returned = outcomes[1]
        assert isinstance(returned, wire.PublishReturned)
        assert returned.returned.body == b"2"
        assert returned.returned.reply_code == 312
        await connection.close()

    await run_against(script, client)


async def test_identical_mandatory_publishes_are_matched_in_order():
    async def script(peer: Peer) -> None:
        await peer.handshake()
        channel = await peer.serve_channel(confirms=True)
        await peer.publishes(3)
        peer.send(commands.Basic.Ack(delivery_tag=1), channel)
        peer.send(
            commands.Basic.Return(reply_code=312, reply_text="NO_ROUTE", routing_key="q"),
            channel,
        )
        peer.send_content(channel, b"same")
        peer.send(commands.Basic.Ack(delivery_tag=3, multiple=True), channel)
        await peer.expect(commands.Connection.Close)
        peer.send(commands.Connection.CloseOk())

    async def client(url: str) -> None:
        connection = await wire.connect(url)
        channel = await connection.channel(publisher_confirms=True)
        waiters = [
            channel.publish_confirmed(b"same", routing_key="q", mandatory=True) for _ in range(3)
        ]
        outcomes = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 5)
        assert outcomes[0] is None
        assert outcomes[2] is None
        assert isinstance(outcomes[1], wire.PublishReturned)
        await connection.close()

    await run_against(script, client)


async def test_a_confirm_that_never_comes_times_out():
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.serve_channel(confirms=True)
        await peer.publishes(2)
        await peer.expect(commands.Connection.Close)
        peer.send(commands.Connection.CloseOk())

    async def client(url: str) -> None:
        connection = await wire.connect(url)
        channel = await connection.channel(publisher_confirms=True)
        started = time.monotonic()
        first = channel.publish_confirmed(b"1", routing_key="q", timeout=0.2)
        second = channel.publish_confirmed(b"2", routing_key="q", timeout=0.4)
        with pytest.raises(TimeoutError):
            await first
        assert 0.15 < time.monotonic() - started < 0.5
        with pytest.raises(TimeoutError):
            await second
        assert 0.35 < time.monotonic() - started < 0.7
        assert channel.unconfirmed == 0
        await connection.close()

    await run_against(script, client)


# -- flow --
async def test_blocked_and_unblocked_reach_the_callback():
    seen: list[str | None] = []
    changed = asyncio.Event()

    def on_blocked(reason: str | None) -> None:
        seen.append(reason)
        changed.set()

    async def script(peer: Peer) -> None:
        await peer.handshake()
        peer.send(commands.Connection.Blocked(reason="low on memory"))
        await asyncio.sleep(0.1)
        peer.send(commands.Connection.Unblocked())
        await peer.expect(commands.Connection.Close)
        peer.send(commands.Connection.CloseOk())

    async def client(url: str) -> None:
        connection = await wire.connect(url, on_blocked=on_blocked)
        await asyncio.wait_for(changed.wait(), 5)
        assert connection.blocked == "low on memory"
        changed.clear()
        await asyncio.wait_for(changed.wait(), 5)
        assert connection.blocked is None
        await connection.close()

    await run_against(script, client)
    assert seen == ["low on memory", None]


async def test_writes_are_batched_per_loop_turn():
    async def script(peer: Peer) -> None:
        await peer.handshake()
        channel = await peer.serve_channel(confirms=True)
        await peer.publishes(100)
        peer.send(commands.Basic.Ack(delivery_tag=100, multiple=True), channel)
        await peer.expect(commands.Connection.Close)
        peer.send(commands.Connection.CloseOk())

    async def client(url: str) -> None:
        connection = await wire.connect(url)
        channel = await connection.channel(publisher_confirms=True)
        transport = connection._transport
        assert transport is not None
        writes: list[int] = []
        original = transport.write

        def counting(data: Any) -> None:
            writes.append(len(data))
            original(data)

        connection._transport = type(
            "T", (), {"write": staticmethod(counting), "is_closing": transport.is_closing}
        )()  # type: ignore[assignment]
        waiters = [channel.publish_confirmed(b"x" * 100, routing_key="q") for _ in range(100)]
        await asyncio.wait_for(asyncio.gather(*waiters), 5)
        assert len(writes) == 1  # 300 frames, one write
        connection._transport = transport
        await connection.close()

    await run_against(script, client)


# -- TLS --
async def test_amqps_with_the_brokers_ca():
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)

    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.expect(commands.Connection.Close)
        peer.send(commands.Connection.CloseOk())

    broker = FakeBroker(script, tls=server_context)
    with ca.cert_pem.tempfile() as cafile:
        async with broker.running() as url:
            connection = await wire.connect(f"{url}?cafile={cafile}")
            assert connection.is_open
            await connection.close()
            async with asyncio.timeout(10):
                await broker.done.wait()
        broker.check()


async def test_frames_crossing_the_clients_channel_close_are_dropped():
    delivered: list[Any] = []

    async def script(peer: Peer) -> None:
        channel, tag = await peer.open_consumer()
        await peer.expect(commands.Channel.Close)
        # sent before the broker read the close: a delivery and a cancel asking for an answer
        peer.send(
            commands.Basic.Deliver(consumer_tag=tag, delivery_tag=1, exchange="", routing_key="q"),
            channel,
        )
        peer.send_content(channel, b"late")
        peer.send(commands.Basic.Cancel(consumer_tag=tag, nowait=False), channel)
        peer.send(commands.Channel.CloseOk(), channel)
        # the next frame is the connection's close: no cancel-ok went out on a closing channel
        await peer.expect(commands.Connection.Close)
        peer.send(commands.Connection.CloseOk())

    async def client(url: str) -> None:
        connection = await wire.connect(url)
        channel = await connection.channel()
        await channel.basic_consume("q", delivered.append)
        await asyncio.wait_for(channel.close(), 5)
        assert channel.is_closed
        assert channel.closing.result() is None
        await connection.close()

    await run_against(script, client)
    assert delivered == []
