"""One RabbitMQ connection kept open for the life of the process, to one node of a cluster.

`AMQPLink` connects to one of its nodes (a cluster's, or the single one), then attaches its users
in order (topology, publisher, consumers). When the connection or any of their channels fails it
detaches everyone and starts over, from the next node: consumers resume by themselves on whichever
node answers, and nothing here ever ends the process.

Reconnecting: each round tries every node once (the first round starts at a random node, or the
first listed; a round after a lost connection starts at the node after the lost one). After a
round in which none answered, the link waits: an exponential backoff from 0.2 s, capped at
`max_delay`, with jitter (between half and all of it). While it waits, every node that refused
the TCP connection (nothing listened) is probed every `probe_interval` with a bare TCP connect;
the first that accepts ends the wait at once, so a broker that comes back is used within about
one probe interval, however long the backoff had grown. A node that failed otherwise (a stalled
node, refused credentials, TLS) is tried again only after the backoff: probing cannot tell more
than the full attempt would, and the backoff keeps a wrong password from hammering the broker.

The AMQP client is bridge's own (`bridge.amqp.wire`); its errors stop at this boundary and become
`BrokerUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from bridge.amqp import wire
from bridge.errors import BridgeError, BrokerUnavailable
from bridge.redact import redact_text, redact_url

log = logging.getLogger("bridge.amqp")

DEFAULT_HEARTBEAT = "10"
CONNECT_TIMEOUT = 10.0
BACKOFF_START = 0.2  # seconds after the first round in which no node answered; doubles
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 1.0
NodeOrder = Literal["random", "listed"]


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


def node_address(url: str) -> str:
    """`host:port` of an AMQP URL (what logs and `bridge status` show of a node)."""
    parts = urlsplit(url)
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    return f"{parts.hostname or 'localhost'}:{port}"


def backoff_delay(failed_rounds: int, cap: float, rng: random.Random | None = None) -> float:
    """The wait after `failed_rounds` (>= 1) rounds in a row in which no node answered:
    BACKOFF_START doubling, capped at `cap`, then jittered to between half and all of it."""
    base = min(cap, BACKOFF_START * 2.0 ** min(failed_rounds - 1, 30))
    jitter = rng.uniform(0.5, 1.0) if rng is not None else random.uniform(0.5, 1.0)
    return base * jitter


async def tcp_probe(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """True when something accepts a TCP connection at the URL's host and port (closed at once:
    no AMQP is spoken)."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


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


async def connect_any(
    urls: Sequence[str],
    *,
    name: str | None = None,
    timeout: float = CONNECT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
) -> wire.Connection:
    """One connection to the first node that answers, trying each once from a random one (an
    operator command's short-lived session); BrokerUnavailable naming every node's problem."""
    problems: list[tuple[str, BrokerUnavailable]] = []
    start = random.randrange(len(urls))
    for step in range(len(urls)):
        url = with_defaults(urls[(start + step) % len(urls)])
        try:
            return await wire.connect(url, name=name, timeout=timeout, ssl_context=ssl_context)
        except AMQP_ERRORS as exc:
            problems.append((redact_url(url), broker_error(exc)))
    if len(problems) == 1:
        raise problems[0][1]
    each = "; ".join(f"{url}: {error}" for url, error in problems)
    raise BrokerUnavailable(f"no RabbitMQ node answers ({each})")


class AMQPLink:
    def __init__(
        self,
        url: str | Sequence[str],
        name: str,
        max_delay: float = 30.0,
        on_state: Callable[[bool], None] | None = None,
        *,
        order: NodeOrder = "random",
        probe_interval: float = PROBE_INTERVAL,
        connect_timeout: float = CONNECT_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        rng: random.Random | None = None,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("AMQPLink needs at least one URL")
        self._urls = [with_defaults(u) for u in urls]
        self._name = name
        self._max_delay = max_delay
        self._probe_interval = probe_interval
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self._rng = rng or random.Random()
        # Index of the node the next round starts at.
        self._next = self._rng.randrange(len(self._urls)) if order == "random" else 0
        # Nodes whose last attempt found nothing listening: probed while waiting.
        self._refused: set[int] = set()
        self._on_state = on_state
        # The node connected to now (`host:port`), None while disconnected.
        self.node: str | None = None
        self._current = 0
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

    @property
    def urls(self) -> list[str]:
        return list(self._urls)

    async def _connect_once(self, index: int) -> wire.Connection:
        url = self._urls[index]
        try:
            conn = await wire.connect(
                url,
                name=self._name,
                on_blocked=self._set_blocked,
                timeout=self._connect_timeout,
                ssl_context=self._ssl_context,
            )
        except AMQP_ERRORS as exc:
            if isinstance(exc, wire.Unreachable):
                self._refused.add(index)
            else:
                self._refused.discard(index)
            raise broker_error(exc) from None
        self._refused.discard(index)
        self.blocked = None  # a new connection starts unblocked; RabbitMQ says so if not
        return conn

    async def _connect(self) -> wire.Connection:
        """Try the nodes in turn, round after round, until one answers (see the module doc)."""
        failed_rounds = 0
        count = len(self._urls)
        while True:
            start = self._next
            problems = []
            for step in range(count):
                index = (start + step) % count
                try:
                    conn = await self._connect_once(index)
                except BrokerUnavailable as exc:
                    problems.append(f"{redact_url(self._urls[index])}: {exc}")
                    continue
                self._next = (index + 1) % count  # after losing this node, start at the next
                self._current = index
                return conn
            failed_rounds += 1
            delay = backoff_delay(failed_rounds, self._max_delay, self._rng)
            log.warning(
                "cannot reach RabbitMQ (%s); retrying in %.1fs%s",
                "; ".join(problems),
                delay,
                f", sooner when a node's port answers (probed every {self._probe_interval:g}s)"
                if self._refused
                else "",
            )
            woken = await self._wait_or_probe(delay)
            self._next = woken if woken is not None else start

    async def _wait_or_probe(self, delay: float) -> int | None:
        """Sleep `delay`, probing the nodes that refused connections every probe interval; the
        index of the first that accepts one (the wait ends there), else None."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return None
            if not self._refused:
                await asyncio.sleep(left)
                return None
            await asyncio.sleep(min(self._probe_interval, left))
            for index in sorted(self._refused):
                if await tcp_probe(self._urls[index], min(PROBE_TIMEOUT, self._probe_interval)):
                    log.info(
                        "RabbitMQ at %s accepts connections again; reconnecting now",
                        redact_url(self._urls[index]),
                    )
                    return index

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
            url = self._urls[self._current]
            self.node = node_address(url)
            self.ready.set()
            if self._on_state:
                self._on_state(True)
            log.info("connected to RabbitMQ at %s", redact_url(url))
            lost = asyncio.ensure_future(self._lost.wait())
            ends: list[asyncio.Future[Any]] = [conn.closing, lost]
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            lost.cancel()
            self.ready.clear()
            self.node = None
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
