"""The subscriber client: one HTTP/1.1 POST per delivery attempt, with a per-attempt timeout.

Measured on this hot path (benchmarks/choices.py), httpx's own transport managed a few hundred
POSTs/s and aiohttp about 10k/s, against 23-28k/s for this client: one `transport.write` of
pre-joined bytes per request, answered by httptools' response parser on an asyncio Protocol,
keep-alive connections pooled per origin. A request that finds its reused connection closed before
any answer byte arrived is sent once more on a fresh connection (the idle keep-alive race every
client handles). Redirects are not followed: a 3xx is final, as in Knative. Transport failures and
timeouts become an `Answer` with status -1; nothing else leaks to callers.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from bridge.delivery import NO_RESPONSE
from bridge.redact import redact_text

MAX_BODY = 4 * 1024 * 1024
IDLE_PER_ORIGIN = 256


class HTTPClientError(Exception):
    """The request got no (complete) answer."""


class _Closed(HTTPClientError):
    """The connection closed before any byte of the answer: safe to send again."""


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int
    tls: bool
    head: bytes  # "POST <path> HTTP/1.1\r\nhost: <host>\r\n"


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_body_size",
        "_header_name",
        "_headers",
        "_parser",
        "_too_big",
        "_waiter",
        "closed",
        "keep_alive",
        "started",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, dict[str, str], bytes]] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._too_big = False
        self.closed = False
        self.keep_alive = True
        self.started = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if not self.started:
                waiter.set_exception(_Closed("the connection closed before an answer"))
            elif (
                self._headers is not None
                and "content-length" not in self._headers
                and ("chunked" not in self._headers.get("transfer-encoding", ""))
            ):
                # An answer delimited by the end of the connection.
                self._complete()
            else:
                waiter.set_exception(HTTPClientError("the connection closed mid-answer"))

    def data_received(self, data: bytes) -> None:
        self.started = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(HTTPClientError(f"invalid HTTP answer ({exc})"))
            self.close()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_BODY:
            self._too_big = True
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = bool(self._parser.should_keep_alive())
        self._complete()

    def _complete(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        body = b"" if self._too_big else b"".join(self._body)
        waiter.set_result((self._parser.get_status_code(), self._headers, body))

    def send(
        self, data: bytes, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[tuple[int, dict[str, str], bytes]]:
        self._headers = {}
        self._body = []
        self._body_size = 0
        self._too_big = False
        self.started = False
        self._waiter = waiter = loop.create_future()
        assert self.transport is not None
        self.transport.write(data)
        return waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HTTPClient:
    """POST bytes to URLs; raises HTTPClientError (or TimeoutError) when there is no answer."""

    def __init__(self) -> None:
        self._targets: dict[str, _Target] = {}
        self._idle: dict[tuple[str, int, bool], deque[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._all: set[_Connection] = set()

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise HTTPClientError(f"{url!r} is not an http(s) URL")
            tls = parts.scheme == "https"
            port = parts.port or (443 if tls else 80)
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            default_port = port == (443 if tls else 80)
            host = parts.hostname if default_port else f"{parts.hostname}:{port}"
            if ":" in parts.hostname and not default_port:
                host = f"[{parts.hostname}]:{port}"
            head = f"POST {path} HTTP/1.1\r\nhost: {host}\r\n".encode("latin-1")
            target = self._targets[url] = _Target(parts.hostname, port, tls, head)
        return target

    async def _connect(self, target: _Target) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if target.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        _, conn = await loop.create_connection(_Connection, target.host, target.port, ssl=context)
        self._all.add(conn)
        return conn

    async def post(
        self, url: str, headers: dict[str, str], body: bytes, timeout: float
    ) -> tuple[int, dict[str, str], bytes]:
        target = self._target(url)
        lines = [target.head]
        for name, value in headers.items():
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        lines.append(b"content-length: %d\r\n\r\n" % len(body))
        lines.append(body)
        data = b"".join(lines)
        key = (target.host, target.port, target.tls)
        async with asyncio.timeout(timeout):
            for _ in range(2):
                idle = self._idle.get(key)
                conn = None
                while idle:
                    candidate = idle.pop()
                    if not candidate.closed:
                        conn = candidate
                        break
                reused = conn is not None
                if conn is None:
                    conn = await self._connect(target)
                try:
                    status, answer_headers, answer = await conn.send(
                        data, asyncio.get_running_loop()
                    )
                except _Closed:
                    self._forget(conn)
                    if reused:
                        continue  # the server closed an idle connection: send once more
                    raise
                except BaseException:
                    conn.close()
                    self._forget(conn)
                    raise
                if conn.keep_alive and not conn.closed:
                    pool = self._idle.setdefault(key, deque())
                    if len(pool) < IDLE_PER_ORIGIN:
                        pool.append(conn)
                    else:
                        conn.close()
                        self._forget(conn)
                else:
                    conn.close()
                    self._forget(conn)
                return status, answer_headers, answer
        raise HTTPClientError("the connection closed before an answer")

    def _forget(self, conn: _Connection) -> None:
        self._all.discard(conn)

    async def close(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
        await asyncio.sleep(0)


@dataclass(slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    error: str | None
    seconds: float


class SubscriberClient:
    """Delivery attempts as `Answer`s: a status, or -1 with the reason there was none."""

    def __init__(self) -> None:
        self._client = HTTPClient()

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: float) -> Answer:
        started = time.monotonic()
        try:
            status, answer_headers, answer = await self._client.post(url, headers, body, timeout)
        except TimeoutError:
            error = f"no answer within {timeout:g}s"
        except OSError as exc:
            error = f"cannot connect to {_origin(url)} ({(exc.strerror or str(exc)).lower()})"
        except (HTTPClientError, ssl.SSLError, ValueError) as exc:
            error = redact_text(str(exc) or exc.__class__.__name__)
        else:
            return Answer(status, answer_headers, answer, None, time.monotonic() - started)
        return Answer(NO_RESPONSE, {}, b"", error, time.monotonic() - started)

    async def close(self) -> None:
        await self._client.close()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
