"""The subscriber client: one HTTP/1.1 POST per delivery attempt, with a per-attempt timeout.

Measured on this hot path (benchmarks/choices.py), httpx's own transport managed a few hundred
POSTs/s and aiohttp about 10k/s, against 23-28k/s for this client: one `transport.write` of
pre-joined bytes per request, answered by httptools' response parser on an asyncio Protocol,
keep-alive connections pooled per origin. What it does, and refuses to do:

Requests
- `POST <path>?<query> HTTP/1.1`, a `host` header, the caller's headers, `content-length`, the
  body. Characters a request target may not hold are percent-encoded (once per URL, cached).
- Header injection is impossible: a header name must be an RFC 9110 token, and a value may hold
  only visible ASCII, space, HTAB and obs-text (0x80-0xFF, written as ISO-8859-1). A CR, LF, NUL,
  DEL or other control character, a character beyond U+00FF, or a header the client writes itself
  (host, content-length, transfer-encoding, connection) makes the request unsendable: nothing is
  written, and the `Answer` is `permanent` (status -1, the reason in `error`) because sending it
  again can never succeed. The check is cheap: names are looked up in a cache of names already
  found to be tokens, and one `bytes.translate` over the encoded header block must leave exactly
  one CRLF per header; only a refused request pays for finding which header is wrong. A URL that
  cannot make a request line (bad scheme, host or port) is refused the same way.

Answers
- Informational answers (100 Continue, 102, 103 Early Hints, ...) are skipped; the final answer
  counts. A 101 Switching Protocols is an invalid answer: bridge never asks to upgrade.
- Header names are lower-cased, values lose surrounding whitespace, a repeated field is joined
  with ", " (RFC 9110 section 5.3); trailers of a chunked body are read and dropped.
- A body is read up to `MAX_BODY` bytes. A larger one (declared by its content-length, or
  streamed) is not read further: the connection is closed, the answer keeps its status and
  headers with an empty body and `oversized` set, so a 2xx is still a success but never a reply.
- Non-HTTP bytes, a malformed chunked body, conflicting lengths, a connection cut mid-answer, a
  timeout, a refused connection or a TLS failure: status -1 with a one-sentence reason, which the
  dispatcher retries. The connection is closed, never pooled.
- Redirects are not followed: a 3xx is final, as in Knative.

Connections
- Keep-alive connections are pooled per (host, port, TLS context), at most `IDLE_PER_ORIGIN` idle,
  most recently used first. `Connection: close` or an HTTP/1.0 answer closes the connection; so
  do bytes arriving on an idle connection (nobody asked for them).
- A server may close an idle connection at any moment, and the close can cross a new request on
  the wire. So a request that failed on a reused connection before any byte of its answer arrived
  is sent once more, on a new connection (never another pooled one, which may be just as stale).
  If the server did act on the first copy without answering, the subscriber sees it twice; the
  delivery guarantee is at least once.

TLS
- https subscribers are verified (certificate chain and host name, TLS 1.2 or later) against the
  system trust store plus the destination's Knative `CACerts`, which adds to the system store as
  Knative does (`eventingtls.certPool`); one context per distinct `CACerts`, cached.
- An optional client certificate (`[subscribers] client_cert`, `client_key`) is offered to every
  https subscriber and dead-letter sink that asks for one (mutual TLS).

Proxies
- `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` are not used: connections are direct.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import quote, urlsplit

import httptools

from bridge.errors import ConfigError
from bridge.ports import Answer
from bridge.redact import redact_text
from bridge.status import NO_RESPONSE

MAX_BODY = 4 * 1024 * 1024
IDLE_PER_ORIGIN = 256

_TCHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# Headers the client writes itself; a caller's copy would make the framing ambiguous.
_OWN_HEADERS = ("host", "content-length", "transfer-encoding", "connection")
_TOKEN_NAME = re.compile(_TCHARS)
# Header names already found to be tokens (names repeat: ce-id, ce-type, ...), bounded.
_GOOD_NAMES: set[str] = set()
_GOOD_NAMES_MAX = 4096
# What a header line may hold besides its CRLF: HTAB, visible ASCII, space, obs-text. Deleting
# these from the encoded block must leave exactly one CRLF per header.
_FIELD_BYTES = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
_BAD_VALUE_CHAR = re.compile(r"[^\t\x20-\x7e\x80-\xff]")
_CHAR_NAMES = {"\r": "a carriage return (CR)", "\n": "a line feed (LF)", "\0": "a NUL"}
# What a request target may hold besides letters, digits and "-._~" (RFC 3986 pchar, "/", "?").
_PATH_SAFE = "/:@!$&'()*+,;=%"
_QUERY_SAFE = _PATH_SAFE + "?"
_BARE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HOST = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=]+|[0-9A-Fa-f:.]+")


class HTTPClientError(Exception):
    """The request got no (complete, valid) answer."""


class _Closed(HTTPClientError):
    """The connection closed before any byte of the answer: safe to send again."""


class Unreachable(OSError):
    """No connection could be made: refused, no route to the host, or a name that does not
    resolve (not a timeout, not a TLS failure)."""


_UNREACHABLE_ERRNOS = frozenset(
    (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL)
)


def _unreachable(exc: OSError) -> bool:
    if isinstance(exc, ssl.SSLError):
        return False
    if isinstance(exc, socket.gaierror) or exc.errno in _UNREACHABLE_ERRNOS:
        return True
    # Every address of the host failed to connect (asyncio joins their errors, without errno).
    return exc.errno is None and str(exc).startswith("Multiple exceptions")


class Unsendable(HTTPClientError):
    """The request cannot be written as HTTP/1.1; sending it again can never succeed."""


class Response(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes
    oversized: bool  # the body exceeded MAX_BODY: not read, `body` is empty


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int
    tls: bool
    head: bytes  # "POST <target> HTTP/1.1\r\nhost: <host>\r\n"


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_headers",
        "_in_head",
        "_parser",
        "_size",
        "_status",
        "_stop",
        "_waiter",
        "closed",
        "keep_alive",
        "started",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._status = 0
        self._in_head = True  # reading a head (trailers come after it and are dropped)
        self._stop = False  # close once the bytes at hand are parsed
        self.closed = False
        self.keep_alive = True
        self.started = False  # a byte of the answer arrived

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def eof_received(self) -> None:
        self.closed = True  # not to be taken from the pool any more; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if not self.started:
            reason = f" ({exc})" if exc is not None else ""
            waiter.set_exception(_Closed(f"the connection closed before an answer{reason}"))
        elif self._in_head:
            waiter.set_exception(
                HTTPClientError("the connection closed in the middle of the answer's headers")
            )
        elif self._status < 200:
            waiter.set_exception(
                HTTPClientError(
                    f"the connection closed after an informational answer (HTTP {self._status})"
                    " and before the final one"
                )
            )
        elif self._until_close():
            self.keep_alive = False
            self._complete()  # an answer whose body ends with the connection
        else:
            waiter.set_exception(
                HTTPClientError(
                    f"the connection closed mid-answer (HTTP {self._status}, after "
                    f"{self._size} body bytes{self._expected()})"
                )
            )

    def _until_close(self) -> bool:
        headers = self._headers
        return "content-length" not in headers and "chunked" not in (
            headers.get("transfer-encoding", "").lower()
        )

    def _expected(self) -> str:
        length = self._headers.get("content-length")
        return f" of {length}" if length is not None else ""

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()  # bytes nobody asked for: the connection cannot be trusted again
            return
        self.started = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail("the subscriber switched protocols (HTTP 101), which bridge never asks for")
        except httptools.HttpParserError as exc:
            self._fail(f"invalid HTTP answer ({exc})")
        if self._stop:
            self.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self._stop = True  # a second answer to one request
        self._headers = {}  # an informational answer's headers are not the final answer's
        self._in_head = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer
        key = name.decode("latin-1").lower()
        text = value.rstrip(b" \t").decode("latin-1")  # llhttp strips the leading whitespace
        headers = self._headers
        if key in headers:
            headers[key] += ", " + text
        else:
            headers[key] = text

    def on_headers_complete(self) -> None:
        self._in_head = False
        status = self._status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                self._fail(
                    "the subscriber switched protocols (HTTP 101), which bridge never asks for"
                )
            return  # informational: the final answer follows
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            self._oversized()

    def on_body(self, body: bytes) -> None:
        if self._stop:
            return
        size = self._size + len(body)
        if size > MAX_BODY:
            self._oversized()
            return
        self._size = size
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._status < 200 or self._stop:
            return
        self.keep_alive = bool(self._parser.should_keep_alive())
        self._complete()

    # outcomes
    def _complete(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
            waiter.set_result(Response(self._status, self._headers, body, False))

    def _oversized(self) -> None:
        """The body is larger than MAX_BODY: answer with the status, read no more of it."""
        self._stop = True
        self.keep_alive = False
        self._body = []
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self._status, self._headers, b"", True))

    def _fail(self, message: str) -> None:
        self._stop = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(HTTPClientError(message))
        self.close()

    def send(self, data: bytes, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Response]:
        self._headers = {}
        self._body = []
        self._size = 0
        self._status = 0
        self._in_head = True
        self._stop = False
        self.started = False
        self._waiter = waiter = loop.create_future()
        assert self.transport is not None
        self.transport.write(data)
        return waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _names_are_tokens(headers: dict[str, str]) -> bool:
    for name in headers:
        if name not in _GOOD_NAMES:
            if not (
                isinstance(name, str)
                and _TOKEN_NAME.fullmatch(name)
                and name.lower() not in _OWN_HEADERS
            ):
                return False
            if len(_GOOD_NAMES) < _GOOD_NAMES_MAX:
                _GOOD_NAMES.add(name)
    return True


def header_refusal(headers: dict[str, str]) -> str | None:
    """Why these headers cannot be sent (None: they can). The slow path of the check in `post`."""
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN_NAME.fullmatch(name):
            return f"the header name {_show(name)} is not an RFC 9110 token"
        if name.lower() in _OWN_HEADERS:
            return f"the header {name!r} is written by the HTTP client itself"
        bad = _BAD_VALUE_CHAR.search(value) if isinstance(value, str) else None
        if bad is not None:
            char = bad.group()
            what = _CHAR_NAMES.get(char) or (
                f"the control character U+{ord(char):04X}"
                if ord(char) < 0x20 or ord(char) == 0x7F
                else f"the character U+{ord(char):04X}, which ISO-8859-1 cannot encode"
            )
            return (
                f"the value of header {name!r} contains {what}; a header value may not hold "
                "CR, LF, NUL or other control characters"
            )
        if not isinstance(value, str):
            return f"the value of header {name!r} is not text"
    return None


def _show(text: object) -> str:
    shown = ascii(text)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def tls_context(
    ca_certs: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
    client_key_password: str | None = None,
) -> ssl.SSLContext:
    """A client context: the system trust store plus `ca_certs` (PEM text), as Knative's
    CACerts; host names checked; TLS 1.2 or later; `client_cert`/`client_key` for mutual TLS."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_certs:
        context.load_verify_locations(cadata=ca_certs)
    if client_cert:
        # A password callback even without a password: never OpenSSL's terminal prompt.
        password = client_key_password or (lambda: b"")
        context.load_cert_chain(client_cert, client_key or None, password=password)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _target(url: str) -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Unsendable(f"{url!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Unsendable(f"{url!r} is not an http(s) URL")
    tls = parts.scheme == "https"
    port = port or (443 if tls else 80)
    hostname = parts.hostname
    if not hostname.isascii():
        try:
            hostname = hostname.encode("idna").decode("ascii")
        except UnicodeError:
            raise Unsendable(f"the host name of {url!r} cannot be encoded") from None
    if not _HOST.fullmatch(hostname):
        raise Unsendable(f"the host name of {url!r} is not valid")
    path = _BARE_PERCENT.sub("%25", quote(parts.path or "/", safe=_PATH_SAFE))
    if parts.query:
        path += "?" + _BARE_PERCENT.sub("%25", quote(parts.query, safe=_QUERY_SAFE))
    host = f"[{hostname}]" if ":" in hostname else hostname
    if port != (443 if tls else 80):
        host = f"{host}:{port}"
    head = f"POST {path} HTTP/1.1\r\nhost: {host}\r\n".encode("ascii")
    return _Target(hostname, port, tls, head)


class HTTPClient:
    """POST bytes to URLs; raises HTTPClientError (or TimeoutError, OSError, ssl.SSLError) when
    there is no answer, Unsendable when the request cannot be written."""

    def __init__(
        self,
        client_cert: str | None = None,
        client_key: str | None = None,
        client_key_password: str | None = None,
    ) -> None:
        self._targets: dict[str, _Target] = {}
        self._idle: dict[tuple[str, int, ssl.SSLContext | None], deque[_Connection]] = {}
        self._contexts: dict[str | None, ssl.SSLContext] = {}
        self._identity = (client_cert or None, client_key or None, client_key_password or None)
        self._all: set[_Connection] = set()

    def context(self, ca_certs: str | None) -> ssl.SSLContext:
        """The TLS context for https destinations trusting `ca_certs` (cached)."""
        context = self._contexts.get(ca_certs)
        if context is None:
            context = tls_context(ca_certs, *self._identity)
            self._contexts[ca_certs] = context
        return context

    async def _connect(self, target: _Target, context: ssl.SSLContext | None) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                _Connection, target.host, target.port, ssl=context
            )
        except OSError as exc:
            if _unreachable(exc):
                reason = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
                raise Unreachable(exc.errno, reason) from None
            raise
        self._all.add(conn)
        return conn

    async def _exchange(
        self, conn: _Connection, data: bytes, loop: asyncio.AbstractEventLoop
    ) -> Response:
        try:
            return await conn.send(data, loop)
        except BaseException:
            conn.close()
            self._all.discard(conn)
            raise

    async def post(
        self,
        url: str,
        headers: dict[str, str],
        body: bytes,
        timeout: float,
        ca_certs: str | None = None,
    ) -> Response:
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = _target(url)
        # The injection check: names from a cache of known tokens, then one pass of
        # bytes.translate over the encoded block (a value holding "\r\nx: y" leaves an extra CRLF).
        block = None
        if _GOOD_NAMES.issuperset(headers) or _names_are_tokens(headers):
            try:
                block = "".join([f"{n}: {v}\r\n" for n, v in headers.items()]).encode("latin-1")
            except UnicodeEncodeError:
                block = None  # a character beyond U+00FF
        if block is None or block.translate(None, _FIELD_BYTES) != b"\r\n" * len(headers):
            raise Unsendable(header_refusal(headers) or "the headers cannot be sent")
        data = b"".join((target.head, block, b"content-length: %d\r\n\r\n" % len(body), body))
        context = None
        if target.tls:
            try:
                context = self.context(ca_certs)
            except (OSError, ValueError) as exc:
                raise Unsendable(f"the TLS trust settings cannot be loaded ({exc})") from None
        key = (target.host, target.port, context)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            conn = None
            idle = self._idle.get(key)
            while idle:
                candidate = idle.pop()
                if not candidate.closed:
                    conn = candidate
                    break
                self._all.discard(candidate)
            if conn is None:
                conn = await self._connect(target, context)
                response = await self._exchange(conn, data, loop)
            else:
                try:
                    response = await self._exchange(conn, data, loop)
                except _Closed:
                    # The server closed this idle connection, maybe as the request went out:
                    # once more, on a connection of its own.
                    conn = await self._connect(target, context)
                    response = await self._exchange(conn, data, loop)
        if conn.keep_alive and not conn.closed:
            pool = self._idle.get(key)
            if pool is None:
                pool = self._idle[key] = deque()
            if len(pool) < IDLE_PER_ORIGIN:
                pool.append(conn)
                return response
        conn.close()
        self._all.discard(conn)
        return response

    async def close(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
        await asyncio.sleep(0)


class SubscriberClient:
    """Delivery attempts as `Answer`s: a status, or -1 with the reason there was none."""

    def __init__(
        self,
        client_cert: str | None = None,
        client_key: str | None = None,
        client_key_password: str | None = None,
    ) -> None:
        self._client = HTTPClient(client_cert, client_key, client_key_password)
        if client_cert:
            try:
                self._client.context(None)
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"subscribers.client_cert: the client certificate {client_cert} (key "
                    f"{client_key or 'in the same file'}) cannot be loaded: {exc}."
                ) from None

    async def post(
        self,
        url: str,
        headers: dict[str, str],
        body: bytes,
        timeout: float,
        ca_certs: str | None = None,
    ) -> Answer:
        started = time.monotonic()
        permanent = unreachable = False
        try:
            status, answer_headers, answer, oversized = await self._client.post(
                url, headers, body, timeout, ca_certs
            )
        except TimeoutError:
            error = f"no answer within {timeout:g}s"
        except Unsendable as exc:
            error = f"request not sent: {redact_text(str(exc))}"
            permanent = True
        except ssl.SSLCertVerificationError as exc:
            error = (
                f"TLS certificate verification failed for {_origin(url)} "
                f"({exc.verify_message or exc.reason or exc})"
            )
        except ssl.SSLError as exc:
            error = f"TLS with {_origin(url)} failed ({exc.reason or exc})"
        except OSError as exc:
            error = f"cannot connect to {_origin(url)} ({(exc.strerror or str(exc)).lower()})"
            unreachable = isinstance(exc, Unreachable)
        except (HTTPClientError, ValueError) as exc:
            error = redact_text(str(exc) or exc.__class__.__name__)
        else:
            return Answer(
                status, answer_headers, answer, None, time.monotonic() - started, False, oversized
            )
        return Answer(
            NO_RESPONSE, {}, b"", error, time.monotonic() - started, permanent, False, unreachable
        )

    async def close(self) -> None:
        await self._client.close()


def _origin(url: str) -> str:
    try:
        parts = urlsplit(url)
        return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    except ValueError:
        return redact_text(url)
