"""Ports: the few things the delivery core asks of the outside world, each a small Protocol.

The real adapters live in `bridge/amqp/` (a consumed message, the confirmed publisher, the queue
consumer) and `bridge/http/` (the subscriber client); `tests/fakes.py` implements every port in
memory, so the dispatcher's decisions and their execution are tested without a broker or a
network. A new backend (a RabbitMQ stream, another protocol) is a new adapter of these ports, not
an edit of the core.

- `Answer`: what one delivery attempt got back (the subscriber port's result).
- `Subscribers`: `post(url, headers, body, timeout, ca_certs) -> Answer`, never raising for what
  the subscriber or the network did.
- `Producer`: publish confirmed (returns only once the broker confirmed; raises
  `BrokerUnavailable` otherwise; with `mandatory`, also when no queue took the message) and the
  name of the delay queue for a wait.
- `Inbound`: one consumed message: its headers, content type and body, `ack()`, `requeue()`, and
  whether its channel is still open (`alive`).
- `Handler`: what a queue consumer feeds its messages to (the dispatcher).
- `Clock`: wall time and sleeping, so waits are instant in tests.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(slots=True)
class Answer:
    """One delivery attempt. `status` -1: no answer, `error` says why; with `permanent` the
    request could not even be written and never will be (dead-letter it, do not retry).
    `oversized`: the body exceeded the client's limit and was not read (`body` is empty)."""

    status: int
    headers: dict[str, str]
    body: bytes
    error: str | None
    seconds: float
    permanent: bool = False
    oversized: bool = False
    # No connection could be made (refused, no route, unknown host): the subscriber is down.
    unreachable: bool = False


class Subscribers(Protocol):
    async def post(
        self,
        url: str,
        headers: dict[str, str],
        body: bytes,
        timeout: float,
        ca_certs: str | None = None,
    ) -> Answer: ...


class Producer(Protocol):
    async def publish(
        self,
        body: bytes,
        headers: dict[str, Any],
        content_type: str | None,
        *,
        exchange: str = "",
        routing_key: str = "",
        message_id: str | None = None,
        mandatory: bool = False,
    ) -> None: ...

    async def delay_queue(self, milliseconds: int) -> str: ...


class Inbound(Protocol):
    @property
    def headers(self) -> dict[str, Any]: ...

    @property
    def content_type(self) -> str | None: ...

    @property
    def body(self) -> bytes: ...

    @property
    def alive(self) -> bool:
        """False once the message's channel closed (the broker took it back)."""
        ...

    def ack(self) -> None: ...

    def requeue(self) -> None: ...


class Handler(Protocol):
    async def offer(self, message: Inbound) -> None:
        """Handle `message` (or queue it locally while all delivery slots are busy)."""
        ...

    def stop_taking(self) -> None:
        """Take no more messages; forget the ones not started (the broker takes them back)."""
        ...

    def forget_waiting(self) -> None:
        """The channel is gone: forget the messages not started."""
        ...

    async def drain(self, timeout: float) -> None:
        """Wait, at most `timeout` seconds, for the deliveries in flight."""
        ...


class Clock(Protocol):
    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
