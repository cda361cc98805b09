"""One AMQP channel: synchronous methods (pamqp), publishing with confirms, consuming.

Publisher confirms: each publish takes the next delivery tag (one counter); a publish that is
awaited has one future in a dict by tag, resolved by the broker's basic.ack / basic.nack
(`multiple` settles every waiting tag up to it). A returned mandatory publish is matched to its
delivery tag by sequence: RabbitMQ sends basic.return before the confirm of that message and in
publish order, so it belongs to the earliest mandatory publish after the last returned one that
is still unconfirmed and carries the same exchange, routing key and body (its encoded
properties break a tie); its confirm then fails with `PublishReturned`. Message ids play no part.

Consuming: basic.deliver, its content header and body frames are assembled here and the
consumer's callback is called with the `Message`, synchronously, in delivery order.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pamqp import commands
from pamqp.base import Frame as Method

from bridge.amqp.wire import frames
from bridge.amqp.wire.errors import (
    AMQPError,
    ChannelClosed,
    ProtocolError,
    PublishNacked,
    PublishReturned,
    channel_closed,
)
from bridge.amqp.wire.properties import Properties, encode_properties

if TYPE_CHECKING:
    from bridge.amqp.wire.connection import Connection

log = logging.getLogger("bridge.amqp.wire")

_DELIVER = 1
_GET = 2
_RETURN = 3
_EMPTY = Properties()
_TIMEOUT_TICK = 0.05


class Message:
    """A delivered (basic.deliver), fetched (basic.get) or returned (basic.return) message."""

    __slots__ = (
        "body",
        "channel",
        "consumer_tag",
        "delivery_tag",
        "exchange",
        "message_count",
        "properties",
        "redelivered",
        "reply_code",
        "reply_text",
        "routing_key",
    )

    def __init__(
        self,
        channel: Channel,
        delivery_tag: int,
        redelivered: bool,
        exchange: str,
        routing_key: str,
        consumer_tag: str = "",
    ) -> None:
        self.channel = channel
        self.delivery_tag = delivery_tag
        self.redelivered = redelivered
        self.exchange = exchange
        self.routing_key = routing_key
        self.consumer_tag = consumer_tag
        self.body = b""
        self.properties = _EMPTY
        self.message_count = 0
        self.reply_code = 0
        self.reply_text = ""

    @property
    def headers(self) -> dict[str, Any]:
        return self.properties.headers or {}

    def __repr__(self) -> str:
        return (
            f"Message(tag={self.delivery_tag}, exchange={self.exchange!r}, "
            f"routing_key={self.routing_key!r}, {len(self.body)} bytes)"
        )


class DeclareOk:
    """queue.declare-ok (also what a passive declare tells)."""

    __slots__ = ("consumer_count", "message_count", "queue")

    def __init__(self, queue: str, message_count: int, consumer_count: int) -> None:
        self.queue = queue
        self.message_count = message_count
        self.consumer_count = consumer_count


Consumer = Callable[[Message], None]
_Reply = tuple["asyncio.Future[Any]", tuple[type, ...], Callable[[Any], Any] | None]


class Channel:
    def __init__(self, connection: Connection, number: int) -> None:
        self.connection = connection
        self.number = number
        self._loop = connection.loop
        self._send = connection.send
        self._send_all = connection.send_all
        self.closing: asyncio.Future[BaseException | None] = self._loop.create_future()
        self._error: BaseException | None = None
        self._closing_by_us = False
        self._rpc: deque[_Reply] = deque()
        # content being assembled: kind, message, expected size, parts, size so far
        self._content_kind = 0
        self._message: Message | None = None
        self._body_size = -1
        self._parts: list[bytes] = []
        self._received = 0
        self._returned_raw = b""
        # consuming
        self._consumers: dict[str, Consumer] = {}
        self._on_cancel: dict[str, Callable[[str], None]] = {}
        self._tags = itertools.count(1)
        # publishing
        self.confirming = False
        self._next_tag = 1
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._mandatory: dict[int, tuple[str, str, bytes, bytes]] = {}
        self._returned: dict[int, Message] = {}
        self._last_returned = 0
        # per timeout value, (deadline, tag) in publish order: deadlines only grow
        self._deadlines: dict[float, deque[tuple[float, int]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._publish_frames: dict[tuple[str, str, bool], bytes] = {}

    # -- state --
    @property
    def is_closed(self) -> bool:
        return self._error is not None or self._closing_by_us

    def _check(self) -> None:
        if self._error is not None:
            raise (
                self._error
                if isinstance(self._error, AMQPError)
                else ChannelClosed(0, str(self._error))
            )
        if self._closing_by_us:
            raise ChannelClosed(200, "the channel is closing")

    # -- synchronous methods --
    def _call(
        self,
        method: Method,
        replies: tuple[type, ...],
        on_reply: Callable[[Any], Any] | None = None,
    ) -> asyncio.Future[Any]:
        self._check()
        future: asyncio.Future[Any] = self._loop.create_future()
        self._rpc.append((future, replies, on_reply))
        self._send(frames.method_frame(self.number, method))
        return future

    async def open(self) -> None:
        await self._call(commands.Channel.Open(), (commands.Channel.OpenOk,))

    async def close(self, timeout: float = 5.0) -> None:
        """Close the channel (its unacknowledged messages go back to their queues)."""
        if self.is_closed:
            return
        self._closing_by_us = True
        future: asyncio.Future[Any] = self._loop.create_future()
        self._rpc.append((future, (commands.Channel.CloseOk,), None))
        self._send(
            frames.method_frame(self.number, commands.Channel.Close(200, "Normal shutdown", 0, 0))
        )
        try:
            async with asyncio.timeout(timeout):
                await future
        except (AMQPError, TimeoutError):
            pass
        finally:
            self._closed(None)

    async def basic_qos(self, prefetch_count: int = 0, prefetch_size: int = 0) -> None:
        await self._call(
            commands.Basic.Qos(prefetch_size=prefetch_size, prefetch_count=prefetch_count),
            (commands.Basic.QosOk,),
        )

    async def confirm_select(self) -> None:
        await self._call(commands.Confirm.Select(), (commands.Confirm.SelectOk,))
        self.confirming = True

    async def queue_declare(
        self,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> DeclareOk:
        ok = await self._call(
            commands.Queue.Declare(
                queue=queue,
                passive=passive,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=arguments,
            ),
            (commands.Queue.DeclareOk,),
        )
        return DeclareOk(ok.queue, ok.message_count, ok.consumer_count)

    async def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        await self._binding(True, queue, exchange, routing_key, arguments)

    async def queue_unbind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        await self._binding(False, queue, exchange, routing_key, arguments)

    async def _binding(
        self,
        bind: bool,
        queue: str,
        exchange: str,
        routing_key: str,
        arguments: dict[str, Any] | None,
    ) -> None:
        method = commands.Queue.Bind if bind else commands.Queue.Unbind
        ok = commands.Queue.BindOk if bind else commands.Queue.UnbindOk
        await self._call(
            method(queue=queue, exchange=exchange, routing_key=routing_key, arguments=arguments),
            (ok,),
        )

    async def queue_delete(
        self, queue: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        ok = await self._call(
            commands.Queue.Delete(queue=queue, if_unused=if_unused, if_empty=if_empty),
            (commands.Queue.DeleteOk,),
        )
        return int(ok.message_count)

    async def queue_purge(self, queue: str) -> int:
        ok = await self._call(commands.Queue.Purge(queue=queue), (commands.Queue.PurgeOk,))
        return int(ok.message_count)

    async def exchange_declare(
        self,
        exchange: str,
        exchange_type: str = "direct",
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        await self._call(
            commands.Exchange.Declare(
                exchange=exchange,
                exchange_type=exchange_type,
                passive=passive,
                durable=durable,
                auto_delete=auto_delete,
                internal=internal,
                arguments=arguments,
            ),
            (commands.Exchange.DeclareOk,),
        )

    async def exchange_delete(self, exchange: str, *, if_unused: bool = False) -> None:
        await self._call(
            commands.Exchange.Delete(exchange=exchange, if_unused=if_unused),
            (commands.Exchange.DeleteOk,),
        )

    # -- consuming --
    async def basic_consume(
        self,
        queue: str,
        callback: Consumer,
        *,
        no_ack: bool = False,
        exclusive: bool = False,
        arguments: dict[str, Any] | None = None,
        consumer_tag: str | None = None,
        on_cancel: Callable[[str], None] | None = None,
    ) -> str:
        """Consume `queue`: `callback(message)` is called for each delivery, in order, from the
        connection's reader (it must not block; start a task for slow work). `on_cancel(tag)`
        is called when the broker cancels the consumer (the queue was deleted)."""
        tag = consumer_tag or f"ctag{self.number}.{next(self._tags)}"
        self._check()
        self._consumers[tag] = callback
        if on_cancel is not None:
            self._on_cancel[tag] = on_cancel
        try:
            await self._call(
                commands.Basic.Consume(
                    queue=queue,
                    consumer_tag=tag,
                    no_ack=no_ack,
                    exclusive=exclusive,
                    arguments=arguments,
                ),
                (commands.Basic.ConsumeOk,),
            )
        except BaseException:
            self._consumers.pop(tag, None)
            self._on_cancel.pop(tag, None)
            raise
        return tag

    async def basic_cancel(self, consumer_tag: str) -> None:
        def done(_: Any) -> None:
            self._consumers.pop(consumer_tag, None)
            self._on_cancel.pop(consumer_tag, None)

        await self._call(
            commands.Basic.Cancel(consumer_tag=consumer_tag), (commands.Basic.CancelOk,), done
        )

    async def basic_get(self, queue: str, no_ack: bool = False) -> Message | None:
        """One message of `queue`, or None when it is empty."""
        result = await self._call(
            commands.Basic.Get(queue=queue, no_ack=no_ack),
            (commands.Basic.GetOk, commands.Basic.GetEmpty),
        )
        return result if isinstance(result, Message) else None

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        if self._error is None:
            self._send(frames.ack_frame(self.number, delivery_tag, multiple))

    def basic_nack(self, delivery_tag: int, multiple: bool = False, requeue: bool = True) -> None:
        if self._error is None:
            self._send(frames.nack_frame(self.number, delivery_tag, multiple, requeue))

    def basic_reject(self, delivery_tag: int, requeue: bool = True) -> None:
        if self._error is None:
            self._send(frames.reject_frame(self.number, delivery_tag, requeue))

    # -- publishing --
    def publish(
        self,
        body: bytes,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: Properties | None = None,
        mandatory: bool = False,
    ) -> int:
        """Write a publish (no waiting); returns its delivery tag in confirm mode, else 0."""
        self._check()
        key = (exchange, routing_key, mandatory)
        method = self._publish_frames.get(key)
        if method is None:
            if len(self._publish_frames) > 512:
                self._publish_frames.clear()
            method = self._publish_frames[key] = frames.publish_frame(
                self.number, exchange, routing_key, mandatory
            )
        props = encode_properties(properties) if properties is not None else b"\x00\x00"
        parts = frames.content_frames(self.number, body, props, self.connection.frame_max)
        parts.insert(0, method)
        self._send_all(parts)
        if not self.confirming:
            return 0
        tag = self._next_tag
        self._next_tag = tag + 1
        if mandatory:
            self._mandatory[tag] = (exchange, routing_key, body, props)
        return tag

    def publish_confirmed(
        self,
        body: bytes,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: Properties | None = None,
        mandatory: bool = False,
        timeout: float | None = None,
    ) -> asyncio.Future[None]:
        """Publish and return a future resolved by the broker's confirm: `PublishNacked` on a
        nack, `PublishReturned` when a mandatory message was returned, `TimeoutError` when no
        confirm came within `timeout`, the channel's error when it closes first."""
        if not self.confirming:
            raise AMQPError("publish_confirmed needs confirm_select() first")
        tag = self.publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            mandatory=mandatory,
        )
        future: asyncio.Future[None] = self._loop.create_future()
        self._waiters[tag] = future
        if timeout is not None:
            queue = self._deadlines.get(timeout)
            if queue is None:
                queue = self._deadlines[timeout] = deque()
            queue.append((self._loop.time() + timeout, tag))
            if self._timer is None:
                self._timer = self._loop.call_later(_TIMEOUT_TICK, self._expire)
        return future

    @property
    def unconfirmed(self) -> int:
        """Awaited publishes not confirmed yet."""
        return len(self._waiters)

    def _expire(self) -> None:
        self._timer = None
        waiters = self._waiters
        now = self._loop.time()
        pending = False
        for queue in self._deadlines.values():
            while queue:
                deadline, tag = queue[0]
                if tag in waiters:
                    if deadline > now:
                        pending = True
                        break
                    future = waiters.pop(tag)
                    if not future.done():
                        future.set_exception(
                            TimeoutError("RabbitMQ did not confirm the publish in time")
                        )
                queue.popleft()
        if pending and self._error is None:
            self._timer = self._loop.call_later(_TIMEOUT_TICK, self._expire)

    def _settle(self, tag: int, multiple: bool, nacked: bool) -> None:
        waiters = self._waiters
        if multiple:
            tags = []
            for waiting in waiters:
                if waiting > tag:
                    break
                tags.append(waiting)
            if self._mandatory:
                for stale in [t for t in self._mandatory if t <= tag]:
                    del self._mandatory[stale]
        else:
            tags = [tag]
            if self._mandatory:
                self._mandatory.pop(tag, None)
        for settled in tags:
            future = waiters.pop(settled, None)
            returned = self._returned.pop(settled, None) if self._returned else None
            if future is None or future.done():
                continue
            if returned is not None:
                future.set_exception(
                    PublishReturned(
                        f"RabbitMQ returned the message: {returned.reply_code} "
                        f"{returned.reply_text}",
                        returned,
                    )
                )
            elif nacked:
                future.set_exception(PublishNacked("RabbitMQ refused the message (basic.nack)"))
            else:
                future.set_result(None)
        if not waiters and self._returned and not self._mandatory:
            self._returned.clear()

    def _match_return(self, message: Message) -> None:
        candidates = [
            tag
            for tag, (exchange, routing_key, body, _) in self._mandatory.items()
            if tag > self._last_returned
            and exchange == message.exchange
            and routing_key == message.routing_key
            and body == message.body
        ]
        if not candidates:
            log.warning(
                "RabbitMQ returned a message no waiting publish matches (%s %s)",
                message.reply_code,
                message.reply_text,
            )
            return
        tag = next(
            (t for t in candidates if self._mandatory[t][3] == self._returned_raw), candidates[0]
        )
        self._last_returned = tag
        self._returned[tag] = message

    # -- frames from the connection --
    def on_method(self, data: bytes | bytearray, start: int, end: int) -> None:
        if self._message is not None:
            raise ProtocolError(
                f"a method frame on channel {self.number} while its content was incomplete", 505
            )
        index = frames.method_index(data, start)
        if index == frames.BASIC_DELIVER:
            consumer_tag, tag, redelivered, exchange, routing_key = frames.decode_deliver(
                data, start, end
            )
            self._message = Message(self, tag, redelivered, exchange, routing_key, consumer_tag)
            self._content_kind = _DELIVER
        elif index == frames.BASIC_ACK:
            tag, bits = frames.decode_tag(data, start, end)
            self._settle(tag, bool(bits & 1), False)
        elif index == frames.BASIC_NACK:
            tag, bits = frames.decode_tag(data, start, end)
            self._settle(tag, bool(bits & 1), True)
        elif index == frames.BASIC_GET_OK:
            tag, redelivered, exchange, routing_key, count = frames.decode_get_ok(data, start, end)
            message = Message(self, tag, redelivered, exchange, routing_key)
            message.message_count = count
            self._message = message
            self._content_kind = _GET
        elif index == frames.BASIC_RETURN:
            code, text, exchange, routing_key = frames.decode_return(data, start, end)
            message = Message(self, 0, False, exchange, routing_key)
            message.reply_code = code
            message.reply_text = text
            self._message = message
            self._content_kind = _RETURN
        else:
            self._on_other(frames.decode_method(data, start, end))

    def on_header(self, data: bytes | bytearray, start: int, end: int) -> None:
        message = self._message
        if message is None or self._body_size >= 0:
            raise ProtocolError(f"an unexpected content header on channel {self.number}", 505)
        size, message.properties = frames.decode_content_header(data, start, end)
        if self._content_kind == _RETURN:
            self._returned_raw = bytes(data[start + 12 : end])
        if size == 0:
            self._complete(message)
        else:
            self._body_size = size

    def on_body(self, data: bytes | bytearray, start: int, end: int) -> None:
        message = self._message
        expected = self._body_size
        if message is None or expected < 0:
            raise ProtocolError(f"an unexpected body frame on channel {self.number}", 505)
        size = end - start
        received = self._received + size
        if received > expected:
            raise ProtocolError(
                f"a body of {received} bytes or more on channel {self.number}, announced as "
                f"{expected}",
                505,
            )
        if received == expected and not self._parts:
            message.body = bytes(data[start:end])
        else:
            self._parts.append(bytes(data[start:end]))
            if received < expected:
                self._received = received
                return
            message.body = b"".join(self._parts)
            self._parts = []
        self._complete(message)

    def _complete(self, message: Message) -> None:
        kind = self._content_kind
        self._message = None
        self._body_size = -1
        self._received = 0
        if kind == _DELIVER:
            if self._closing_by_us:
                return  # it goes back to its queue with the channel
            callback = self._consumers.get(message.consumer_tag)
            if callback is None:
                log.debug("a delivery for consumer %s, which is gone", message.consumer_tag)
                return
            try:
                callback(message)
            except Exception:
                log.exception("a consumer callback failed")
        elif kind == _GET:
            self._reply(commands.Basic.GetOk(), message)
        else:
            self._match_return(message)

    def _reply(self, method: Method, value: Any) -> None:
        if not self._rpc or not isinstance(method, self._rpc[0][1]):
            raise ProtocolError(f"an unexpected {method.name} on channel {self.number}", 505)
        future, _, on_reply = self._rpc.popleft()
        if on_reply is not None:
            on_reply(method)
        if not future.done():
            future.set_result(value)

    def _on_other(self, method: Method) -> None:
        if isinstance(method, commands.Channel.Close):
            self.connection.send(frames.method_frame(self.number, commands.Channel.CloseOk()))
            self._closed(
                channel_closed(
                    method.reply_code or 0,
                    method.reply_text or "",
                    method.class_id or 0,
                    method.method_id or 0,
                )
            )
        elif self._closing_by_us:
            # Our channel.close is on its way: its close-ok ends the channel; anything else
            # crossing it is dropped (AMQP 0-9-1, 2.3.5.2).
            if isinstance(method, commands.Channel.CloseOk):
                self._closed(None)
        elif isinstance(method, commands.Basic.Cancel):
            tag = method.consumer_tag or ""
            self._consumers.pop(tag, None)
            on_cancel = self._on_cancel.pop(tag, None)
            if not method.nowait:
                self._send(
                    frames.method_frame(self.number, commands.Basic.CancelOk(consumer_tag=tag))
                )
            if on_cancel is not None:
                try:
                    on_cancel(tag)
                except Exception:
                    log.exception("a consumer's cancel callback failed")
        elif isinstance(method, commands.Channel.Flow):
            self._send(
                frames.method_frame(self.number, commands.Channel.FlowOk(active=method.active))
            )
        else:
            self._reply(method, method)

    # -- closing --
    def _closed(self, error: BaseException | None) -> None:
        """The channel is over: by the broker (`error`), the client (None) or the connection."""
        if self._error is not None:
            return
        self._error = error if error is not None else ChannelClosed(200, "closed by the client")
        failure = self._error
        self.connection.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._message = None
        self._parts = []
        waiters = list(self._waiters.values())
        self._waiters.clear()
        self._mandatory.clear()
        self._returned.clear()
        self._deadlines.clear()
        calls = [future for future, _, _ in self._rpc]
        self._rpc.clear()
        self._consumers.clear()
        self._on_cancel.clear()
        for future in itertools.chain(calls, waiters):
            if not future.done():
                future.set_exception(failure)
        if not self.closing.done():
            self.closing.set_result(error)
