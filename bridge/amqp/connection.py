"""One RabbitMQ connection kept open for the life of the process.

`AMQPLink` connects with exponential backoff (tenacity), forever, then attaches its users in order
(topology, publisher, consumers). When the connection or any of their channels fails it detaches
everyone and starts over: consumers resume by themselves after RabbitMQ comes back, and nothing
here ever ends the process. The AMQP client is bridge's own (`bridge.amqp.wire`); its errors stop
at this boundary and become `BrokerUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from bridge.amqp import wire
from bridge.errors import BridgeError, BrokerUnavailable
from bridge.redact import redact_text, redact_url

log = logging.getLogger("bridge.amqp")

DEFAULT_HEARTBEAT = "10"
CONNECT_TIMEOUT = 10.0


class TopologyError(BridgeError):
    """RabbitMQ refused a declaration for good (e.g. a queue exists with other arguments)."""


class LinkUser(Protocol):
    async def attach(self, connection: wire.Connection) -> None: ...

    async def detach(self) -> None: ...


def with_defaults(url: str) -> str:
    """Add a short heartbeat so a dead link is noticed in seconds, unless the URL sets one."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("heartbeat", DEFAULT_HEARTBEAT)
    return urlunsplit(parts._replace(query=urlencode(query)))


def delivery_tag(message: wire.Message) -> int:
    """The delivery tag of a consumed message."""
    return message.delivery_tag


def broker_error(exc: BaseException) -> BrokerUnavailable:
    """AMQP client / OS errors as bridge's own, with no credentials in the text."""
    text = redact_text(str(exc) or exc.__class__.__name__)
    return BrokerUnavailable(f"RabbitMQ is unavailable ({exc.__class__.__name__}: {text})")


AMQP_ERRORS: tuple[type[Exception], ...] = (
    wire.AMQPError,
    ConnectionError,
    OSError,
    TimeoutError,
)
# What setting up on a connection may raise: the library's errors or bridge's own.
SETUP_ERRORS: tuple[type[Exception], ...] = (*AMQP_ERRORS, BridgeError)


class AMQPLink:
    def __init__(
        self,
        url: str,
        name: str,
        max_delay: float = 30.0,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        self._url = with_defaults(url)
        self._name = name
        self._max_delay = max_delay
        self._on_state = on_state
        self._users: list[LinkUser] = []
        self._connection: wire.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._lost = asyncio.Event()
        self.ready = asyncio.Event()
        self.fatal: BaseException | None = None
        self.connects = 0
        # Why RabbitMQ blocks publishers (a memory or disk alarm), None when it does not.
        self.blocked: str | None = None

    @property
    def connection(self) -> wire.Connection | None:
        return self._connection

    def add(self, user: LinkUser) -> None:
        self._users.append(user)

    def remove(self, user: LinkUser) -> None:
        if user in self._users:
            self._users.remove(user)

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="amqp-link")
        self._task.add_done_callback(self._ended)
        return self._task

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.fatal = task.exception()
            log.error("the RabbitMQ link stopped: %r", self.fatal, exc_info=self.fatal)

    def fail(self, reason: str) -> None:
        """A user saw its channel die: start over with a fresh connection."""
        if self._stopping or not self.ready.is_set():
            return
        log.warning("RabbitMQ link failed, reconnecting: %s", redact_text(reason))
        self._lost.set()

    def watch_channel(
        self, channel: wire.Channel, what: str, expected: Callable[[], bool] | None = None
    ) -> None:
        """Escalate the unexpected close of `channel` to a reconnect (`expected()`: it is not)."""

        def closed(fut: asyncio.Future[BaseException | None]) -> None:
            if expected is not None and expected():
                return
            reason = "cancelled" if fut.cancelled() else str(fut.result() or "closed")
            self.fail(f"{what} channel closed: {reason}")

        channel.closing.add_done_callback(closed)

    def _set_blocked(self, reason: str | None) -> None:
        if reason is not None:
            log.warning("RabbitMQ blocks publishing (%s): answering 503 until it lifts", reason)
        elif self.blocked is not None:
            log.warning("RabbitMQ accepts publishing again")
        self.blocked = reason

    async def _connect_once(self) -> wire.Connection:
        try:
            conn = await wire.connect(
                self._url, name=self._name, on_blocked=self._set_blocked, timeout=CONNECT_TIMEOUT
            )
        except AMQP_ERRORS as exc:
            raise broker_error(exc) from None
        self.blocked = None  # a new connection starts unblocked; RabbitMQ says so if not
        return conn

    async def _connect(self) -> wire.Connection:
        def before_sleep(state: Any) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "cannot reach RabbitMQ at %s (%s); retrying in %.1fs",
                redact_url(self._url),
                exc,
                state.next_action.sleep if state.next_action else 0.0,
            )

        async for attempt in AsyncRetrying(
            wait=wait_exponential_jitter(multiplier=0.2, max=self._max_delay, jitter=0.5),
            retry=retry_if_exception_type(BrokerUnavailable),
            before_sleep=before_sleep,
            reraise=True,
        ):
            with attempt:
                return await self._connect_once()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attach_all(self, conn: wire.Connection) -> None:
        for user in list(self._users):
            await user.attach(conn)

    async def _detach_all(self) -> None:
        for user in reversed(list(self._users)):
            try:
                await user.detach()
            except Exception:
                log.exception("detaching from RabbitMQ failed")

    async def _run(self) -> None:
        while not self._stopping:
            conn = await self._connect()
            self._lost.clear()
            try:
                await self._attach_all(conn)
            except TopologyError as exc:
                self.fatal = exc
                log.error("%s", exc)
                await self._close(conn)
                await self._detach_all()
                return
            except Exception as exc:
                log.warning("setting up on RabbitMQ failed, retrying: %s", redact_text(repr(exc)))
                await self._close(conn)
                await self._detach_all()
                await asyncio.sleep(0.5)
                continue
            self._connection = conn
            self.connects += 1
            self.ready.set()
            if self._on_state:
                self._on_state(True)
            log.info("connected to RabbitMQ at %s", redact_url(self._url))
            lost = asyncio.ensure_future(self._lost.wait())
            ends: list[asyncio.Future[Any]] = [conn.closing, lost]
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            lost.cancel()
            self.ready.clear()
            if self._on_state:
                self._on_state(False)
            self._connection = None
            await self._detach_all()
            await self._close(conn)
            if not self._stopping:
                log.warning("lost the connection to RabbitMQ; reconnecting")

    async def _close(self, conn: wire.Connection) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 5.0)

    async def stop(self) -> None:
        """Close the connection for good (users are detached first, in reverse order)."""
        self._stopping = True
        self.ready.clear()
        conn = self._connection
        self._connection = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self._detach_all()
        if conn is not None:
            await self._close(conn)
