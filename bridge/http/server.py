"""A small HTTP/1.1 server on asyncio and httptools, for the ingress, admin and event-display.

Why not a framework: the ingress must refuse an oversized body from its headers, before reading it,
answer every error as one JSON sentence, and cost little per request (uvicorn and granian cost
1.6-2.8x its CPU per request, see benchmarks/choices_server.py). This module owns the wire; the
parser is llhttp (httptools) in its strict mode. Handlers see a `Request` and return a `Response`;
`early` lets a handler answer from the headers alone (401, 404, 405, 413).

What the wire gets:

- Keep-alive and pipelining: answers go out in request order, always. A request refused at the wire
  level (400 not valid HTTP/1.1, 413 body over the handler's `max_body`, 431 headers over
  `MAX_HEAD_BYTES`, 501 a transfer coding other than chunked, 408 not received within
  `request_timeout`) is answered after the answers of the requests before it, then the connection
  closes; nothing after it is read or handled. An oversized body is refused from its headers: the
  transport stops reading, the body is never read.
- Refused (never handled, nothing stored), as llhttp's strict mode does: Content-Length together
  with Transfer-Encoding, two Content-Lengths (even equal ones), a Transfer-Encoding whose last
  coding is not chunked, obs-fold (a header line starting with whitespace), bare LF line endings,
  whitespace before a header's colon, control characters in header values, malformed chunk sizes
  and chunk extensions, unknown methods. Leading empty lines before a request line are skipped
  (RFC 9112 section 2.2).
- Headers: names lower-cased, values without the surrounding whitespace; a name that appears more
  than once is folded into one value joined by commas and listed in `Request.repeated` (so a
  handler can refuse what must not repeat). Trailer fields of a chunked body are read and dropped:
  they are never merged into the headers a handler already checked.
- Upgrade (`Connection: Upgrade` + `Upgrade: h2c`, what `curl --http2` sends): ignored, as RFC 9110
  section 7.8 allows. llhttp ends such a request right after its headers, without its body, and
  stops; the server then frames the body with a fresh parser (fed a synthetic head carrying only
  the request's Content-Length or Transfer-Encoding, then the bytes that followed), which also
  parses whatever is pipelined after it. The request is served as plain HTTP/1.1 with its real
  body. `CONNECT` is answered by the handler and the connection closes (what follows is a tunnel).
- Bytes after a request with `Connection: close` (or HTTP/1.0 without keep-alive) are not read.
  When the client half-closes (EOF), the requests already received are still answered.
- Timeouts: `idle_timeout` for a keep-alive connection with nothing in progress (closed silently);
  `request_timeout` from a request's first byte to its last (408, then close): slow headers and
  slow bodies alike.
- Connections: at most `max_connections` at once. One more is answered 503 with Retry-After and
  `connection: close` and closed, with a warning logged at most every `CAP_LOG_EVERY` seconds;
  `saturated` is true from the cap until the count falls `max_connections // 20` (at least 1)
  below it, for the application's readiness.
- A connection ends with a half-close (FIN after the last answer) and is closed once the client
  closes its side or after `LINGER` seconds, so the last answer is not lost to a reset.
- Back-pressure: reading pauses while more than `MAX_PENDING` requests wait for their answers or
  while the client does not read its answers (transport write buffer over its high-water mark);
  a client that reads none of its answers for `request_timeout` is disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections import deque
from http import HTTPStatus

import httptools
import orjson

from bridge.telemetry.logging import Throttle

log = logging.getLogger("bridge.http")

_REASONS = {s.value: s.phrase for s in HTTPStatus}
# The request line and headers together: beyond this the request is refused with 431 (httptools
# would otherwise buffer a header of any size). Counted per read, so it is a bound on memory, not
# an exact byte limit; keep it well above one read (256 KiB).
MAX_HEAD_BYTES = 1 << 20
# Requests waiting for their answers before the connection stops reading; reading resumes at
# RESUME_PENDING.
MAX_PENDING = 16
RESUME_PENDING = 4
# After the last answer of a connection (a half-close was sent), how long to wait for the client to
# close its side before closing the socket.
LINGER = 2.0
# At most one "connection limit reached" warning per this many seconds.
CAP_LOG_EVERY = 10.0
# Connections beyond the cap that may linger after their 503 at once; beyond that they are closed
# right after the 503 is written.
MAX_LINGERING_REFUSED = 64
_NO_REPEATS: frozenset[str] = frozenset()


def default_max_connections() -> int:
    """The connection cap derived from the process's open-file limit (RLIMIT_NOFILE, soft).

    max_connections = soft - max(256, soft // 4), and at least 64. The reserve (a quarter of the
    limit, at least 256 descriptors) is for everything else the process holds open: the RabbitMQ
    connection(s), subscriber and dead-letter-sink connections (each trigger has up to its
    `parallelism`, 64 by default, at once), the other listener and its connections, the OTLP
    exporter, log and configuration files and the event loop's own descriptors. With the common
    soft limit of 1024 that is 768 connections; an unlimited soft limit counts as 2**20.
    """
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or soft <= 0:
        soft = 1 << 20
    return max(64, soft - max(256, soft // 4))


class Request:
    __slots__ = ("body", "headers", "method", "path", "peer", "query", "repeated")

    def __init__(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        peer: str,
        repeated: frozenset[str] = _NO_REPEATS,
        query: str = "",
    ) -> None:
        self.method = method
        self.path = path
        self.query = query  # after the "?", undecoded (EventBridge signs the URL with it)
        self.headers = headers
        self.body = body
        self.peer = peer
        # Lower-case names of the headers that appeared more than once (folded in `headers`).
        self.repeated = repeated


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


class _Stop(Exception):
    """Raised from a parser callback to stop parsing: the connection refused a request."""


class _Resumed:
    """Parser callbacks after an upgrade request: the synthetic head is skipped, the rest forwarded.

    The fresh parser that frames an upgrade request's body is first fed a head made up here (only
    the request's framing headers); the request itself (method, path, headers, early answer) was
    taken from the real head already. Everything after that head goes to the connection.
    """

    __slots__ = ("_conn", "_skip", "on_body", "on_message_complete")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._skip = True
        self.on_body = conn.on_body
        self.on_message_complete = conn.on_message_complete

    def on_message_begin(self) -> None:
        if not self._skip:
            self._conn.on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self._skip:
            self._conn.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._skip:
            self._conn.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._skip:
            self._skip = False
        else:
            self._conn.on_headers_complete()


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_body_size",
        "_busy",
        "_eof",
        "_head_bytes",
        "_headers",
        "_in_head",
        "_linger",
        "_overflow",
        "_parser",
        "_paused",
        "_pending",
        "_refused",
        "_rejected",
        "_repeated",
        "_request",
        "_server",
        "_stalled_since",
        "_stopped",
        "_transport",
        "_upgrade",
        "_upgrade_keep_alive",
        "_url",
        "_write_paused",
        "last_active",
        "peer",
        "request_started",
    )

    def __init__(self, server: HTTPServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        # (request or answer, keep-alive, HEAD request)
        self._pending: deque[tuple[Request | Response, bool, bool]] = deque()
        self._busy = False
        self._headers: dict[str, str] = {}
        self._repeated: set[str] | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._body_size = 0
        self._request: Request | None = None
        self._rejected: Response | None = None
        self._in_head = False
        self._head_bytes = 0
        # The request in progress asks for an upgrade (llhttp ends it after its headers).
        self._upgrade = False
        self._upgrade_keep_alive = False
        # Nothing more is read from this connection: a refusal or a last request was received.
        self._stopped = False
        # A refusal is (to be) the last answer: the transport is not read again, even to drop.
        self._refused = False
        self._paused = False
        self._write_paused = False
        self._stalled_since = 0.0
        self._eof = False
        self._overflow = False
        self._linger: asyncio.TimerHandle | None = None
        self.last_active = time.monotonic()
        self.request_started: float | None = None
        self.peer = ""

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""
        server = self._server
        connections = server.connections
        if len(connections) >= server.max_connections:
            server._refuse_connection(self)
            return
        connections.add(self)
        if len(connections) >= server.max_connections:
            server.saturated = True

    def connection_lost(self, exc: Exception | None) -> None:
        server = self._server
        if self._overflow:
            server._turned_away.discard(self)
        else:
            server.connections.discard(self)
            if server.saturated and len(server.connections) <= server._relief:
                server.saturated = False
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._transport = None

    def pause_writing(self) -> None:
        # The client does not read its answers: stop reading its requests until it does.
        self._write_paused = True
        self._stalled_since = time.monotonic()
        self._pause()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._maybe_resume()

    def eof_received(self) -> bool:
        # A half-close: answer what was received, then close (a partial request is dropped).
        self._eof = True
        self._stopped = True
        return self._busy or bool(self._pending)

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(data, exc)
        except httptools.HttpParserError as exc:
            self._parse_error(exc)
            return
        if self._in_head and not self._stopped:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(
                    json_error(431, f"the request headers are larger than {MAX_HEAD_BYTES} bytes.")
                )

    # -- httptools callbacks --
    def on_message_begin(self) -> None:
        if self._headers:  # trailer fields of the request before
            self._headers = {}
            self._repeated = None
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
        # llhttp drops the whitespace before a value, not the whitespace after it.
        text = value.decode("latin-1").rstrip(" \t")
        headers = self._headers
        old = headers.get(key)
        if old is None:
            headers[key] = text
        else:
            # Repeated headers fold into one, as HTTP allows, and are recorded.
            headers[key] = f"{old},{text}"
            if self._repeated is None:
                self._repeated = {key}
            else:
                self._repeated.add(key)

    def on_headers_complete(self) -> None:
        self._in_head = False
        headers = self._headers
        # A new dict for what follows: trailer fields of a chunked body land there and are dropped.
        self._headers = {}
        repeated = self._repeated
        if repeated is not None:
            self._repeated = None
        parser = self._parser
        method = parser.get_method().decode("latin-1")
        url = self._url
        cut = url.find(b"?")
        request = Request(
            method,
            (url if cut < 0 else url[:cut]).decode("latin-1"),
            headers,
            b"",
            self.peer,
            _NO_REPEATS if repeated is None else frozenset(repeated),
            "" if cut < 0 else url[cut + 1 :].decode("latin-1"),
        )
        self._request = request
        if "upgrade" in headers or method == "CONNECT":
            self._upgrade = bool(parser.should_upgrade())
        server = self._server
        if server.draining:
            self._rejected = json_error(
                503, "bridge is shutting down; send again.", [("retry-after", "1")]
            )
            self._rejected.close = True
            return
        length_header = headers.get("content-length")
        if length_header is not None:
            length: int | None = int(length_header) if length_header.isdigit() else None
        else:
            length = None
            coding = headers.get("transfer-encoding")
            if (
                coding is not None
                and coding.lower() != "chunked"
                and coding.rpartition(",")[2].strip().lower() == "chunked"
            ):
                # Chunked, but after codings this server does not decode (RFC 9112 section 6.1:
                # 501). A last coding other than chunked is llhttp's to refuse (400: the body's
                # length cannot be known).
                self._refuse(
                    json_error(501, f"the transfer coding {coding[:100]!r} is not supported.")
                )
                raise _Stop
        answer = server.handler.early(request, length)
        if answer is not None:
            if answer.status == 413:
                # Refuse before reading the body: reading stops here.
                self._refuse(answer)
                raise _Stop
            self._rejected = answer

    def on_body(self, body: bytes) -> None:
        if self._rejected is not None:
            return
        self._body_size += len(body)
        limit = self._server.handler.max_body
        if limit is not None and self._body_size > limit:
            self._refuse(json_error(413, f"the body is larger than {limit} bytes."))
            raise _Stop
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._upgrade:
            # llhttp ends an upgrade request right after its headers, before its body: this is
            # not the end of the request (see `_upgraded`).
            self._upgrade_keep_alive = bool(self._parser.should_keep_alive())
            return
        request = self._request
        if request is None:
            return
        self._request = None
        keep_alive = bool(self._parser.should_keep_alive())
        self.request_started = None
        rejected = self._rejected
        if rejected is not None:
            item: Request | Response = rejected
        else:
            body = self._body
            request.body = body[0] if len(body) == 1 else b"".join(body)
            item = request
        pending = self._pending
        pending.append((item, keep_alive, request.method == "HEAD"))
        if not keep_alive:
            # The last request of this connection: what follows is not read.
            self._stopped = True
            self._pause()
        elif len(pending) > MAX_PENDING:
            self._pause()
        if not self._busy:
            self._busy = True
            self._server.loop.create_task(self._serve())

    # -- upgrade requests --
    def _upgraded(self, data: bytes, exc: httptools.HttpParserUpgrade) -> None:
        """llhttp stopped after the head of an upgrade request: serve it as plain HTTP/1.1."""
        while True:
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            rest = data[offset:]
            request = self._request
            self._upgrade = False
            if self._stopped or request is None:
                return
            if request.method == "CONNECT":
                # What follows a CONNECT head is a tunnel, not HTTP: answer it and close.
                self._upgrade_keep_alive = False
                self._synthetic_end(request)
                return
            head = ["POST / HTTP/1.1"]
            for name in ("content-length", "transfer-encoding"):
                value = request.headers.get(name)
                if value is not None:
                    head.append(f"{name}: {value}")
            if not self._upgrade_keep_alive:
                head.append("connection: close")
            data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + rest
            self._parser = httptools.HttpRequestParser(_Resumed(self))
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserUpgrade as again:
                exc = again  # another upgrade request pipelined after this one
                continue
            except httptools.HttpParserError as error:
                self._parse_error(error)
            return

    def _synthetic_end(self, request: Request) -> None:
        """Queue `request` (no body) as the last request of the connection."""
        self.request_started = None
        self._request = None
        item: Request | Response = self._rejected if self._rejected is not None else request
        self._pending.append((item, False, False))
        self._stopped = True
        self._pause()
        if not self._busy:
            self._busy = True
            self._server.loop.create_task(self._serve())

    # -- refusals --
    def _parse_error(self, exc: httptools.HttpParserError) -> None:
        if self._stopped:
            return  # a callback stopped the parser (_Stop), or bytes after the last request
        if isinstance(exc, httptools.HttpParserCallbackError):
            log.error("request parsing failed in a callback", exc_info=exc.__context__)
            self._refuse(json_error(500, "bridge failed to read the request."))
            return
        reason = str(exc).strip().rstrip(".")[:200]
        self._refuse(json_error(400, f"the request is not valid HTTP/1.1 ({reason})."))

    def _refuse(self, response: Response) -> None:
        """Refuse at the wire level: answered after the requests before it, then close."""
        if self._stopped:
            return
        self._stopped = True
        self._refused = True
        self._request = None
        self.request_started = None
        response.close = True
        self._pause()
        if self._busy or self._pending:
            self._pending.append((response, False, False))
        else:
            self._write(response, keep_alive=False)

    def timed_out(self) -> None:
        """The request in progress took longer than `request_timeout`."""
        timeout = self._server.request_timeout
        self._refuse(json_error(408, f"the request was not received within {timeout:g} seconds."))

    # -- reading --
    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            transport = self._transport
            if transport is not None:
                transport.pause_reading()

    def _maybe_resume(self) -> None:
        if (
            self._paused
            and not self._stopped
            and not self._write_paused
            and len(self._pending) <= RESUME_PENDING
        ):
            self._paused = False
            transport = self._transport
            if transport is not None:
                transport.resume_reading()

    # -- serving --
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
                if self._paused:
                    self._maybe_resume()
        finally:
            self._busy = False
            self.last_active = time.monotonic()
            server.in_flight -= 1
            if server.in_flight == 0:
                server.idle.set()
            if self._eof and not self._pending and self._transport is not None:
                self._transport.close()

    def _write(self, response: Response, keep_alive: bool, head: bool = False) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if keep_alive and not response.close and not self._server.draining:
            transport.write(response.encode(True, head))
        else:
            transport.write(response.encode(False, head))
            self._finish()

    def _finish(self) -> None:
        """The last answer was written: half-close, then close once the client has closed too."""
        self._stopped = True
        self._pending.clear()
        transport = self._transport
        if transport is None:
            return
        if self._eof or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        if self._paused and not self._refused:
            # Read (and drop) until the client closes its side, to close at once when it does.
            self._paused = False
            transport.resume_reading()
        self._linger = self._server.loop.call_later(LINGER, transport.close)

    def idle_since(self) -> float | None:
        return None if self._busy or self._pending else self.last_active

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class HTTPServer:
    """Listens on host:port, serves `handler`; `drain()` stops it without cutting requests."""

    def __init__(
        self,
        handler: Handler,
        host: str,
        port: int,
        idle_timeout: float = 75.0,
        request_timeout: float = 60.0,
        max_connections: int | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        # Several processes (`bridge run --workers N`) listen on the same port.
        self.reuse_port = reuse_port
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.max_connections = (
            default_max_connections() if max_connections is None else max(1, max_connections)
        )
        # Not saturated again until this many connections or fewer are open (hysteresis).
        self._relief = self.max_connections - max(1, self.max_connections // 20)
        # True from the moment the cap is reached until the count falls to `_relief`.
        self.saturated = False
        self.refused_connections = 0
        # Connections answered 503 (over the cap) that wait for the client to close.
        self._turned_away: set[_Connection] = set()
        self._cap_warn = Throttle(CAP_LOG_EVERY)
        self._busy_answer = json_error(
            503,
            f"bridge is serving its maximum of {self.max_connections} connections; "
            "try again shortly.",
            [("retry-after", "1")],
        ).encode(keep_alive=False)
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
            lambda: _Connection(self),
            self.host,
            self.port,
            reuse_address=True,
            reuse_port=self.reuse_port or None,
            backlog=1024,
        )
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        self._sweeper = self.loop.create_task(self._sweep())

    def _refuse_connection(self, conn: _Connection) -> None:
        """A connection beyond `max_connections`: 503, then closed."""
        transport = conn._transport
        assert transport is not None
        self.saturated = True
        self.refused_connections += 1
        if self._cap_warn.ready():
            log.warning(
                "HTTP server on %s:%d is at its connection limit: %d connections open, limit %d;"
                " answering 503 to new connections (%d so far)",
                self.host,
                self.port,
                len(self.connections),
                self.max_connections,
                self.refused_connections,
            )
        conn._overflow = True
        conn._stopped = True  # what it sends is read and dropped
        transport.write(self._busy_answer)
        if len(self._turned_away) >= MAX_LINGERING_REFUSED or not transport.can_write_eof():
            transport.close()
            return
        self._turned_away.add(conn)
        transport.write_eof()
        conn._linger = self.loop.call_later(LINGER, transport.close)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for conn in list(self.connections):
                if conn._write_paused:
                    # Its answers wait for it to read them: not read for request_timeout, it goes.
                    if now - conn._stalled_since > self.request_timeout:
                        conn.abort()
                    continue
                started = conn.request_started
                if started is not None:
                    # Not while reading is paused on this side (answers are pending).
                    if now - started > self.request_timeout and not conn._paused:
                        conn.timed_out()
                    continue
                since = conn.idle_since()
                if since is not None and now - since > self.idle_timeout:
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
            for conn in [*self.connections, *self._turned_away]:
                conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
