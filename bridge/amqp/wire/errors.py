"""What the wire client raises. Every error is an `AMQPError`; nothing else leaves the package
for a protocol or broker problem (OS errors from connecting are wrapped in `ConnectionLost`)."""

from __future__ import annotations

from typing import Any


class AMQPError(Exception):
    """Base of every error of the wire client."""


class ConnectionLost(AMQPError):
    """The connection is gone (socket closed, heartbeats missed, connect failed)."""


class Unreachable(ConnectionLost):
    """No TCP connection could be made (refused, no route): nothing listens there now."""


class ProtocolError(AMQPError):
    """The peer broke AMQP 0-9-1 framing or sequencing; the connection was closed."""

    def __init__(self, text: str, code: int = 501) -> None:
        super().__init__(text)
        self.code = code


class AuthenticationError(AMQPError):
    """The broker refused the credentials (or offered no mechanism we speak)."""


class Closed(AMQPError):
    """The broker closed the connection or a channel: `code` and `text` are its reply."""

    def __init__(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        self.code = code
        self.text = text
        self.class_id = class_id
        self.method_id = method_id
        super().__init__(f"{code} {text}")


class ConnectionClosed(Closed, ConnectionLost):
    """The broker closed the connection (connection.close)."""


class ChannelClosed(Closed):
    """The channel is closed (by the broker, the client, or with its connection)."""


class NotFound(ChannelClosed):
    """404 NOT_FOUND: the queue or exchange does not exist (the channel is closed)."""


class AccessRefused(ChannelClosed):
    """403 ACCESS_REFUSED (the channel is closed)."""


class ResourceLocked(ChannelClosed):
    """405 RESOURCE_LOCKED, e.g. an exclusive queue of another connection (channel closed)."""


class PreconditionFailed(ChannelClosed):
    """406 PRECONDITION_FAILED, e.g. a queue exists with other arguments (channel closed)."""


_BY_CODE: dict[int, type[ChannelClosed]] = {
    403: AccessRefused,
    404: NotFound,
    405: ResourceLocked,
    406: PreconditionFailed,
}


def channel_closed(code: int, text: str, class_id: int = 0, method_id: int = 0) -> ChannelClosed:
    """The `ChannelClosed` subclass for a broker's channel.close reply code."""
    return _BY_CODE.get(code, ChannelClosed)(code, text, class_id, method_id)


class DeliveryError(AMQPError):
    """A confirmed publish was not accepted: nacked, or returned (`returned` holds the message
    RabbitMQ gave back, with its reply code and text)."""

    def __init__(self, text: str, returned: Any = None) -> None:
        super().__init__(text)
        self.returned = returned


class PublishNacked(DeliveryError):
    """The broker nacked the publish (basic.nack)."""


class PublishReturned(DeliveryError):
    """A mandatory publish no queue took (basic.return before the confirm)."""
