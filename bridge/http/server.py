"""A small HTTP/1.1 server on asyncio and httptools, for the ingress, admin and event-display.

Why not a framework: the ingress must refuse an oversized body from its headers, before reading it,
answer every error as one JSON sentence, and cost little per request. This module owns the wire:
keep-alive, pipelining in order, idle and slow-request timeouts, and a drain that lets requests in
flight finish. Handlers see a `Request` (lower-case header names, the whole body as bytes) and
return a `Response`; `early` lets a handler answer from the headers alone (401, 404, 405, 413).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from http import HTTPStatus

import httptools
import orjson

log = logging.getLogger("bridge.http")

_REASONS = {s.value: s.phrase for s in HTTPStatus}
# The request line and headers together: beyond this the request is refused with 431 (httptools
# would otherwise buffer a header of any size). Counted per read, so it is a bound on memory, not
# an exact byte limit; keep it well above one read (256 KiB).
MAX_HEAD_BYTES = 1 << 20


class Request:
    __slots__ = ("body", "headers", "method", "path", "peer")

    def __init__(
        self, method: str, path: str, headers: dict[str, str], body: bytes, peer: str
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.peer = peer


class Response:
    __slots__ = ("body", "close", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        close: bool = False,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers or []
        self.close = close

    def encode(self, keep_alive: bool, head: bool = False) -> bytes:
        """The response bytes; for a HEAD request the headers only (RFC 9110: no body)."""
        lines = [f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}"]
        for name, value in self.headers:
            lines.append(f"{name}: {value}")
        lines.append(f"content-length: {len(self.body)}")
        if not keep_alive or self.close:
            lines.append("connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else self.body)


def json_error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """Every 4xx/5xx answer: `{"error": "<one sentence>"}`."""
    hdrs = [("content-type", "application/json")]
    if headers:
        hdrs.extend(headers)
    return Response(status, orjson.dumps({"error": message}), hdrs)


class Handler:
    """What a server serves. `early` answers from the headers alone; `handle` gets the body."""

    max_body: int | None = None

    def early(self, request: Request, content_length: int | None) -> Response | None:
        return None

    async def handle(self, request: Request) -> Response:  # pragma: no cover - interface
        raise NotImplementedError


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_body_size",
        "_busy",
        "_head_bytes",
        "_header_name",
        "_headers",
        "_in_head",
        "_parser",
        "_pending",
        "_rejected",
        "_server",
        "_transport",
        "_url",
        "last_active",
        "peer",
        "request_started",
    )

    def __init__(self, server: HTTPServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        # (request or early answer, keep-alive, HEAD request)
        self._pending: deque[tuple[Request | Response, bool, bool]] = deque()
        self._busy = False
        self._headers: dict[str, str] = {}
        self._url = b""
        self._body: list[bytes] = []
        self._body_size = 0
        self._rejected: Response | None = None
        self._in_head = False
        self._head_bytes = 0
        self.last_active = time.monotonic()
        self.request_started: float | None = None
        self.peer = ""

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported.")
        except httptools.HttpParserError:
            self._fail(400, "the request is not valid HTTP/1.1.")
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._fail(431, f"the request headers are larger than {MAX_HEAD_BYTES} bytes.")

    # -- httptools callbacks --
    def on_message_begin(self) -> None:
        self._headers = {}
        self._url = b""
        self._body = []
        self._body_size = 0
        self._rejected = None
        self._in_head = True
        self._head_bytes = 0
        self.request_started = time.monotonic()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self._headers.get(key)
        # Repeated headers fold into one, as HTTP allows; CloudEvents attributes never repeat.
        self._headers[key] = text if old is None else f"{old},{text}"

    def on_headers_complete(self) -> None:
        self._in_head = False
        server = self._server
        if server.draining:
            self._rejected = json_error(
                503, "bridge is shutting down; send again.", [("retry-after", "1")]
            )
            self._rejected.close = True
            return
        method = self._parser.get_method().decode("latin-1")
        length_header = self._headers.get("content-length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        request = Request(method, self._path(), self._headers, b"", self.peer)
        answer = server.handler.early(request, length)
        if answer is not None:
            if answer.status == 413:
                # Refuse before reading the body: answer now and drop the connection.
                answer.close = True
                self._write(answer, keep_alive=False)
                return
            self._rejected = answer

    def on_body(self, body: bytes) -> None:
        if self._rejected is not None:
            return
        self._body_size += len(body)
        limit = self._server.handler.max_body
        if limit is not None and self._body_size > limit:
            answer = json_error(413, f"the body is larger than {limit} bytes.")
            self._write(answer, keep_alive=False)
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        keep_alive = bool(self._parser.should_keep_alive())
        self.request_started = None
        method = self._parser.get_method().decode("latin-1")
        head = method == "HEAD"
        if self._rejected is not None:
            self._pending.append((self._rejected, keep_alive, head))
        else:
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            request = Request(method, self._path(), self._headers, body, self.peer)
            self._pending.append((request, keep_alive, head))
        if len(self._pending) > 16:
            transport.pause_reading()
        if not self._busy:
            self._busy = True
            self._server.loop.create_task(self._serve())

    # -- serving --
    def _path(self) -> str:
        url = self._url
        cut = url.find(b"?")
        return (url if cut < 0 else url[:cut]).decode("latin-1")

    async def _serve(self) -> None:
        server = self._server
        server.in_flight += 1
        try:
            while self._pending:
                item, keep_alive, head = self._pending.popleft()
                if isinstance(item, Response):
                    response = item
                else:
                    try:
                        response = await server.handler.handle(item)
                    except Exception:
                        log.exception("request handler failed")
                        response = json_error(500, "bridge failed to handle the request.")
                if self._transport is None:
                    return
                self._write(response, keep_alive, head)
                if not keep_alive or response.close:
                    return
                if len(self._pending) <= 4 and self._transport is not None:
                    self._transport.resume_reading()
        finally:
            self._busy = False
            self.last_active = time.monotonic()
            server.in_flight -= 1
            if server.in_flight == 0:
                server.idle.set()

    def _write(self, response: Response, keep_alive: bool, head: bool = False) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if keep_alive and not response.close and not self._server.draining:
            transport.write(response.encode(True, head))
        else:
            transport.write(response.encode(False, head))
            transport.close()

    def _fail(self, status: int, message: str) -> None:
        self._write(json_error(status, message), keep_alive=False)

    def idle_since(self) -> float | None:
        return None if self._busy or self._pending else self.last_active

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class HTTPServer:
    """Listens on host:port, serves `handler`; `drain()` stops it without cutting requests."""

    def __init__(
        self,
        handler: Handler,
        host: str,
        port: int,
        idle_timeout: float = 75.0,
        request_timeout: float = 60.0,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.connections: set[_Connection] = set()
        self.draining = False
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.loop = asyncio.get_running_loop()

    async def start(self) -> None:
        self._server = await self.loop.create_server(
            lambda: _Connection(self), self.host, self.port, reuse_address=True, backlog=1024
        )
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        self._sweeper = self.loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for conn in list(self.connections):
                since = conn.idle_since()
                started = conn.request_started
                if (since is not None and now - since > self.idle_timeout and started is None) or (
                    started is not None and now - started > self.request_timeout
                ):
                    conn.close()

    def stop_accepting(self) -> None:
        """Close the listener and idle keep-alive connections; requests in flight go on."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.idle_since() is not None:
                conn.close()

    async def drain(self, timeout: float) -> None:
        """Stop accepting, wait (at most `timeout`) for requests in flight, then close."""
        self.stop_accepting()
        if self.in_flight:
            self.idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), timeout)
        await self.close()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._server is not None:
            self._server.close()
            for conn in list(self.connections):
                conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
