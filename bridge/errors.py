"""bridge's own exceptions; library errors are translated into these at the adapter boundary.

BridgeError
├── ConfigError          configuration or trigger manifest is invalid (exit code 2)
├── EventError           a request does not carry a valid CloudEvent (HTTP 4xx)
└── BrokerUnavailable    RabbitMQ cannot take or confirm a message right now (HTTP 503)
    └── PublishRejected  RabbitMQ answered a publish with a nack or a return
"""

from __future__ import annotations


class BridgeError(Exception):
    """Root of every error bridge raises on purpose."""


class ConfigError(BridgeError):
    """The configuration, an environment override or a trigger manifest is invalid."""


class EventError(BridgeError):
    """An incoming request is not an acceptable CloudEvent; `status` is the HTTP answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class BrokerUnavailable(BridgeError):
    """RabbitMQ is unreachable or did not confirm a publish in time."""


class PublishRejected(BrokerUnavailable):
    """RabbitMQ refused a publish (nack, or returned as unroutable)."""
