"""The AMQP connection: an asyncio Protocol over one socket, with its channels.

Reading: every read goes into one `FrameReader` buffer and each complete frame is dispatched
at once (no stream reader, no task per frame). Writing: frames sent during one event-loop turn
are joined and written with one `transport.write` at the end of the turn. Heartbeats: a timer
every half interval sends one when nothing else was written, and declares the connection dead
when nothing was read for about two intervals. The broker's connection.close, a protocol error
or a lost socket fail every waiter of every channel with the reason (an `AMQPError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from pamqp import commands
from pamqp.base import Frame as Method

from bridge.amqp.wire import frames
from bridge.amqp.wire.channel import Channel
from bridge.amqp.wire.errors import (
    AMQPError,
    AuthenticationError,
    ConnectionClosed,
    ConnectionLost,
    ProtocolError,
    Unreachable,
)

log = logging.getLogger("bridge.amqp.wire")

PRODUCT = "bridge"
DEFAULT_FRAME_MAX = 131072
DEFAULT_CHANNEL_MAX = 2047
CONNECT_TIMEOUT = 10.0
CLIENT_CAPABILITIES = {
    "authentication_failure_close": True,
    "basic.nack": True,
    "connection.blocked": True,
    "consumer_cancel_notify": True,
    "publisher_confirms": True,
    "per_consumer_qos": True,
    "exchange_exchange_bindings": True,
}


@dataclass(frozen=True)
class Parameters:
    """What an `amqp://` or `amqps://` URL says (user, password and vhost percent-decoded)."""

    host: str = "localhost"
    port: int = 5672
    username: str = "guest"
    password: str = "guest"  # noqa: S105 - RabbitMQ's default account
    vhost: str = "/"
    heartbeat: int | None = None  # None: the broker's proposal
    frame_max: int = DEFAULT_FRAME_MAX
    channel_max: int = DEFAULT_CHANNEL_MAX
    connect_timeout: float = CONNECT_TIMEOUT
    secure: bool = False
    ssl_options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_url(cls, url: str) -> Parameters:
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            raise ValueError(f"not an AMQP URL (scheme {parts.scheme!r})")
        secure = parts.scheme == "amqps"
        query = dict(parse_qsl(parts.query))
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        heartbeat = query.get("heartbeat")
        timeout = query.get("connection_timeout")
        return cls(
            host=parts.hostname or "localhost",
            port=parts.port or (5671 if secure else 5672),
            username=unquote(parts.username) if parts.username is not None else "guest",
            password=unquote(parts.password) if parts.password is not None else "guest",
            vhost=unquote(path) or "/",
            heartbeat=int(heartbeat) if heartbeat is not None else None,
            frame_max=int(query.get("frame_max", DEFAULT_FRAME_MAX)),
            channel_max=int(query.get("channel_max", DEFAULT_CHANNEL_MAX)),
            # aiormq's convention: connection_timeout in milliseconds
            connect_timeout=float(timeout) / 1000 if timeout else CONNECT_TIMEOUT,
            secure=secure,
            ssl_options={k: v for k, v in query.items() if k in ("cafile", "certfile", "keyfile")},
        )

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ssl_options.get("cafile"))
        if "certfile" in self.ssl_options:
            context.load_cert_chain(self.ssl_options["certfile"], self.ssl_options.get("keyfile"))
        return context


def _negotiate(client: int | None, server: int) -> int:
    """tune: 0 means no limit on one side; the smaller limit wins."""
    if client is None:
        return server
    if client == 0 or server == 0:
        return max(client, server)
    return min(client, server)


class Connection(asyncio.Protocol):
    def __init__(
        self,
        parameters: Parameters,
        *,
        name: str | None = None,
        on_blocked: Callable[[str | None], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.parameters = parameters
        self.name = name
        self.on_blocked = on_blocked
        self.loop = loop or asyncio.get_running_loop()
        self.closing: asyncio.Future[BaseException | None] = self.loop.create_future()
        self.blocked: str | None = None
        self.server_properties: dict[str, Any] = {}
        self.frame_max = frames.MIN_FRAME_MAX
        self.channel_max = DEFAULT_CHANNEL_MAX
        self.heartbeat = 0
        self._transport: asyncio.Transport | None = None
        self._reader = frames.FrameReader(self._on_frame)
        self._out: list[bytes] = []
        self._flush_pending = False
        self._channels: dict[int, Channel] = {}
        self._next_channel = 1
        self._error: BaseException | None = None
        self._open = False
        self._waiter: tuple[asyncio.Future[Any], tuple[type, ...]] | None = None
        self._received = False
        self._written = False
        self._missed = 0
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._drained: list[asyncio.Future[None]] = []

    # -- state --
    @property
    def is_closed(self) -> bool:
        return self._error is not None

    @property
    def is_open(self) -> bool:
        return self._open and self._error is None

    @property
    def channels(self) -> dict[int, Channel]:
        return self._channels

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self._received = True
        try:
            self._reader.feed(data)
        except ProtocolError as exc:
            self._abort(exc)
        except Exception as exc:
            log.exception("unexpected error reading from RabbitMQ")
            self._abort(ProtocolError(f"unexpected error reading a frame: {exc!r}", 541))

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else ""
        self._fail(ConnectionLost(f"the connection to RabbitMQ was lost{reason}"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        drained, self._drained = self._drained, []
        for future in drained:
            if not future.done():
                future.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        if self._paused and self._error is None:
            future: asyncio.Future[None] = self.loop.create_future()
            self._drained.append(future)
            await future

    # -- writing --
    def send(self, frame: bytes) -> None:
        self._out.append(frame)
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush)

    def send_all(self, parts: list[bytes]) -> None:
        self._out += parts
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        out = self._out
        if not out:
            return
        self._out = []
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._written = True
        transport.write(out[0] if len(out) == 1 else b"".join(out))

    # -- frames --
    def _on_frame(
        self, kind: int, number: int, data: bytes | bytearray, start: int, end: int
    ) -> None:
        if number:
            channel = self._channels.get(number)
            if channel is None:
                raise ProtocolError(f"a frame on channel {number}, which is not open", 504)
            if kind == frames.METHOD:
                channel.on_method(data, start, end)
            elif kind == frames.BODY:
                channel.on_body(data, start, end)
            elif kind == frames.HEADER:
                channel.on_header(data, start, end)
            else:
                raise ProtocolError(f"a heartbeat frame on channel {number}", 501)
        elif kind == frames.METHOD:
            self._on_connection_method(frames.decode_method(data, start, end))
        elif kind == frames.HEARTBEAT:
            return
        else:
            raise ProtocolError("a content frame on channel 0", 504)

    def _on_connection_method(self, method: Method) -> None:
        if isinstance(method, commands.Connection.Close):
            self.send(frames.method_frame(0, commands.Connection.CloseOk()))
            self._flush()
            if method.reply_code == 403 and not self._open:
                error: AMQPError = AuthenticationError(
                    f"RabbitMQ refused the login: {method.reply_text}"
                )
            else:
                error = ConnectionClosed(
                    method.reply_code or 0,
                    method.reply_text or "",
                    method.class_id or 0,
                    method.method_id or 0,
                )
            self._fail(error)
            return
        if isinstance(method, commands.Connection.Blocked):
            self.blocked = method.reason or "a resource alarm"
            self._notify_blocked(self.blocked)
            return
        if isinstance(method, commands.Connection.Unblocked):
            self.blocked = None
            self._notify_blocked(None)
            return
        waiter = self._waiter
        if waiter is None or not isinstance(method, waiter[1]):
            raise ProtocolError(f"an unexpected {method.name} on channel 0", 505)
        self._waiter = None
        if not waiter[0].done():
            waiter[0].set_result(method)

    def _notify_blocked(self, reason: str | None) -> None:
        if self.on_blocked is not None:
            try:
                self.on_blocked(reason)
            except Exception:
                log.exception("the blocked callback failed")

    def _expect(self, *kinds: type) -> asyncio.Future[Any]:
        if self._error is not None:
            raise self._error
        future: asyncio.Future[Any] = self.loop.create_future()
        self._waiter = (future, kinds)
        return future

    # -- opening --
    async def _handshake(self) -> None:
        p = self.parameters
        assert self._transport is not None
        started = self._expect(commands.Connection.Start)
        self._transport.write(frames.PROTOCOL_HEADER)
        start = await started
        self.server_properties = dict(start.server_properties or {})
        mechanisms = str(start.mechanisms or "").split()
        if "PLAIN" not in mechanisms:
            raise AuthenticationError(f"RabbitMQ offers no PLAIN login (only {mechanisms})")
        properties: dict[str, Any] = {
            "product": PRODUCT,
            "platform": f"Python {platform.python_version()}",
            "capabilities": dict(CLIENT_CAPABILITIES),
        }
        if self.name:
            properties["connection_name"] = self.name
        tuned = self._expect(commands.Connection.Tune)
        self.send(
            frames.method_frame(
                0,
                commands.Connection.StartOk(
                    client_properties=properties,
                    mechanism="PLAIN",
                    response=f"\0{p.username}\0{p.password}",
                    locale="en_US",
                ),
            )
        )
        tune = await tuned
        self.channel_max = _negotiate(p.channel_max, tune.channel_max) or 65535
        frame_max = _negotiate(p.frame_max, tune.frame_max)
        self.frame_max = max(frame_max, frames.MIN_FRAME_MAX) if frame_max else 0xFFFFFFFF
        self.heartbeat = _negotiate(p.heartbeat, tune.heartbeat)
        self._reader.set_frame_max(self.frame_max if frame_max else 0)
        opened = self._expect(commands.Connection.OpenOk)
        self.send(
            frames.method_frame(
                0,
                commands.Connection.TuneOk(
                    channel_max=self.channel_max,
                    frame_max=frame_max,
                    heartbeat=self.heartbeat,
                ),
            )
        )
        self.send(frames.method_frame(0, commands.Connection.Open(virtual_host=p.vhost)))
        await opened
        self._open = True
        if self.heartbeat:
            self._heartbeat_timer = self.loop.call_later(self.heartbeat / 2, self._tick)

    # -- heartbeats --
    def _tick(self) -> None:
        self._heartbeat_timer = None
        if self._error is not None:
            return
        if self._received:
            self._received = False
            self._missed = 0
        else:
            self._missed += 1
            if self._missed >= 4:  # about two heartbeat intervals without a frame
                self._abort(
                    ConnectionLost(
                        f"RabbitMQ sent nothing for {self._missed * self.heartbeat / 2:.0f} s "
                        f"(heartbeat {self.heartbeat} s): the connection is dead"
                    ),
                    say_goodbye=False,
                )
                return
        if not self._written and not self._out:
            self.send(frames.HEARTBEAT_FRAME)
        self._written = False
        self._heartbeat_timer = self.loop.call_later(self.heartbeat / 2, self._tick)

    # -- channels --
    async def channel(self, publisher_confirms: bool = False) -> Channel:
        """A new open channel (in confirm mode with `publisher_confirms`)."""
        if self._error is not None:
            raise self._error
        number = self._allocate()
        channel = Channel(self, number)
        self._channels[number] = channel
        try:
            await channel.open()
            if publisher_confirms:
                await channel.confirm_select()
        except BaseException:
            if not channel.is_closed:
                channel._closed(None)
            raise
        return channel

    def _allocate(self) -> int:
        limit = self.channel_max
        for _ in range(limit):
            number = self._next_channel
            self._next_channel = number + 1 if number < limit else 1
            if number not in self._channels:
                return number
        raise AMQPError(f"all {limit} channels are in use")

    def forget(self, channel: Channel) -> None:
        if self._channels.get(channel.number) is channel:
            del self._channels[channel.number]

    # -- closing --
    async def close(self, timeout: float = 5.0) -> None:
        """Close the connection (connection.close, then the socket)."""
        if self._error is not None:
            return
        if self._open and self._transport is not None and not self._transport.is_closing():
            with contextlib.suppress(AMQPError):
                closed = self._expect(commands.Connection.CloseOk)
                self.send(
                    frames.method_frame(0, commands.Connection.Close(200, "Normal shutdown", 0, 0))
                )
                with contextlib.suppress(AMQPError, TimeoutError):
                    async with asyncio.timeout(timeout):
                        await closed
        self._fail(None)

    def _abort(self, error: AMQPError, say_goodbye: bool = True) -> None:
        """A protocol error (or a dead peer): tell the broker when possible, then hang up."""
        if self._error is not None:
            return
        if say_goodbye and self._transport is not None and not self._transport.is_closing():
            code = getattr(error, "code", 541)
            self._out.clear()
            self.send(
                frames.method_frame(0, commands.Connection.Close(code, str(error)[:255], 0, 0))
            )
            self._flush()
        self._fail(error)

    def _fail(self, error: BaseException | None) -> None:
        """The connection is over: `error` is why (None: closed by us)."""
        if self._error is not None:
            return
        self._error = error or ConnectionClosed(200, "closed by the client")
        self._open = False
        if self._heartbeat_timer is not None:
            self._heartbeat_timer.cancel()
            self._heartbeat_timer = None
        for channel in list(self._channels.values()):
            channel._closed(self._error)
        self._channels.clear()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter[0].done():
            waiter[0].set_exception(self._error)
        for future in self._drained:
            if not future.done():
                future.set_exception(self._error)
        self._drained = []
        if self._transport is not None:
            if isinstance(error, ConnectionLost) and not isinstance(error, ConnectionClosed):
                self._transport.abort()  # a dead peer: nothing left to flush
            else:
                self._transport.close()  # after what is buffered (a close or close-ok)
        if not self.closing.done():
            self.closing.set_result(error)


async def connect(
    url: str,
    *,
    name: str | None = None,
    on_blocked: Callable[[str | None], None] | None = None,
    timeout: float | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Connection:
    """Open a connection to the broker at `url` (`amqp://user:pass@host:port/vhost?heartbeat=N`).

    `ssl_context`: for an `amqps://` URL, the TLS context to use (default: one made from the
    URL's `cafile`, `certfile` and `keyfile` query parameters, else the system trust store).

    Raises `Unreachable` (a `ConnectionLost`) when no TCP connection can be made,
    `ConnectionLost` when the broker cannot be reached, `AuthenticationError` for refused
    credentials, `ConnectionClosed` when the broker refuses the vhost, `ProtocolError` when the
    peer does not speak AMQP 0-9-1, TimeoutError after `timeout` (default: the URL's
    connection_timeout, else 10 s)."""
    parameters = Parameters.from_url(url)
    loop = asyncio.get_running_loop()
    connection = Connection(parameters, name=name, on_blocked=on_blocked, loop=loop)
    try:
        async with asyncio.timeout(timeout if timeout is not None else parameters.connect_timeout):
            try:
                await loop.create_connection(
                    lambda: connection,
                    parameters.host,
                    parameters.port,
                    ssl=(ssl_context or parameters.ssl_context()) if parameters.secure else None,
                    server_hostname=parameters.host if parameters.secure else None,
                )
            except ssl.SSLError as exc:
                raise ConnectionLost(
                    f"TLS with {parameters.host}:{parameters.port} failed: {exc}"
                ) from None
            except OSError as exc:
                raise Unreachable(
                    f"cannot connect to {parameters.host}:{parameters.port}: {exc}"
                ) from None
            try:
                await connection._handshake()
            except ConnectionLost as exc:
                if isinstance(exc, ConnectionClosed):
                    raise
                raise ConnectionLost(
                    f"RabbitMQ closed the connection during the handshake ({exc}); "
                    "wrong credentials or vhost?"
                ) from None
    except BaseException:
        connection._fail(ConnectionLost("the connection attempt failed"))
        raise
    return connection
