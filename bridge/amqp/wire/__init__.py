"""bridge's own AMQP 0-9-1 client, built for its hot path (see README "Choices").

One asyncio Protocol per connection: frames parsed from one buffer, frames written once per
event-loop turn, publisher confirms as one counter and a dict of waiters, deliveries handed to
a plain callback. The hot frames (publish, content header, body, deliver, ack/nack/reject) are
written and read by hand; every other method goes through pamqp.
"""

from bridge.amqp.wire.channel import Channel, DeclareOk, Message
from bridge.amqp.wire.connection import Connection, Parameters, connect
from bridge.amqp.wire.errors import (
    AccessRefused,
    AMQPError,
    AuthenticationError,
    ChannelClosed,
    Closed,
    ConnectionClosed,
    ConnectionLost,
    DeliveryError,
    NotFound,
    PreconditionFailed,
    ProtocolError,
    PublishNacked,
    PublishReturned,
    ResourceLocked,
    Unreachable,
)
from bridge.amqp.wire.properties import Properties

__all__ = [
    "AMQPError",
    "AccessRefused",
    "AuthenticationError",
    "Channel",
    "ChannelClosed",
    "Closed",
    "Connection",
    "ConnectionClosed",
    "ConnectionLost",
    "DeclareOk",
    "DeliveryError",
    "Message",
    "NotFound",
    "Parameters",
    "PreconditionFailed",
    "Properties",
    "ProtocolError",
    "PublishNacked",
    "PublishReturned",
    "ResourceLocked",
    "Unreachable",
    "connect",
]
