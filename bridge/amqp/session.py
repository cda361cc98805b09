"""One short-lived RabbitMQ connection for an operator command (`dlq`, `topology prune`).

`open_session` loads the configuration, connects to its RabbitMQ and yields the connection with
the configured trigger keys. RabbitMQ errors inside the block become `BridgeError`s that say what
went wrong in one sentence; the connection is closed on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bridge.amqp import wire
from bridge.amqp.browse import QueueMissing
from bridge.amqp.connection import AMQP_ERRORS, SETUP_ERRORS, broker_error, connect_any
from bridge.config import LoadedConfig, load
from bridge.errors import BridgeError

CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Session:
    connection: wire.Connection
    trigger_keys: list[str]  # the configured triggers, `namespace/name`
    loaded: LoadedConfig


@contextlib.asynccontextmanager
async def open_session(config_path: str | None) -> AsyncIterator[Session]:
    """Connect to the RabbitMQ of the configuration at `config_path` (see `bridge.config.load`)."""
    loaded = load(config_path)
    rabbitmq = loaded.settings.rabbitmq
    try:
        connection = await connect_any(
            rabbitmq.nodes(),
            timeout=min(CONNECT_TIMEOUT, rabbitmq.connect_timeout.total_seconds()),
            ssl_context=rabbitmq.ssl_context(),
        )
    except BridgeError:
        raise
    except SETUP_ERRORS as exc:
        raise broker_error(exc) from None
    keys = [f"{t.namespace}/{t.name}" for t, _ in loaded.triggers]
    try:
        yield Session(connection, keys, loaded)
    except QueueMissing as exc:
        raise BridgeError(f"the queue {exc} does not exist in RabbitMQ.") from None
    except AMQP_ERRORS as exc:
        raise broker_error(exc) from None
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), CONNECT_TIMEOUT)
