"""A raw TCP (or TLS) server on loopback for client tests: the test writes the answer bytes itself.

`RawServer(handler)` calls `handler(conn)` for every accepted connection; `conn` reads requests
(`await conn.request()`, parsed just enough: head, lower-cased headers, content-length body) and
writes whatever bytes the test wants, valid HTTP or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class RawRequest:
    head: bytes
    headers: dict[str, str]
    body: bytes

    @property
    def target(self) -> str:
        return self.head.split(b" ", 2)[1].decode("latin-1")


class RawConnection:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log: list[RawRequest]
    ) -> None:
        self.reader = reader
        self.writer = writer
        self._log = log

    async def request(self) -> RawRequest | None:
        """The next request, or None when the client closed the connection first."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            return None
        headers: dict[str, str] = {}
        for line in head.split(b"\r\n")[1:]:
            if line:
                name, _, value = line.partition(b":")
                headers[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        request = RawRequest(head, headers, body)
        self._log.append(request)
        return request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()

    async def closed(self) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


Handler = Callable[[RawConnection], Awaitable[None]]


@dataclass
class RawServer:
    handler: Handler
    ssl_context: ssl.SSLContext | None = None
    host: str = "127.0.0.1"
    connections: int = 0
    requests: list[RawRequest] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.ssl_context)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def busy(self) -> int:
        """Connections whose handler still runs."""
        return len(self._tasks)

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}/"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = RawConnection(reader, writer, self.requests)
        # A handler cancelled by `close` ends normally: asyncio logs an error for a cancelled
        # connection task.
        try:
            await self.handler(conn)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.CancelledError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._server.wait_closed()


def answer(status: int = 200, body: bytes = b"", headers: str = "") -> bytes:
    """A complete HTTP/1.1 answer with a content-length."""
    return (
        f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\n{headers}\r\n".encode("latin-1")
        + body
    )
