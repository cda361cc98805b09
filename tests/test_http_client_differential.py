"""Differential properties: bridge's HTTP client against h11, an independent HTTP/1.1 parser.

Requests: the real client writes generated requests (path and query, header names and values from
the allowed alphabets, percent-encoded CloudEvents values, obs-text, bodies from empty to 256 KiB)
to a loopback server that only records bytes; h11 must read from those bytes exactly the method,
target, headers and body that were asked for. A request with a header the client must refuse
(CR, LF, NUL, another control character, a name that is not a token) writes nothing at all.

Answers: generated valid HTTP/1.1 answers (content-length, chunked with extensions and trailers,
delimited by the close; informational answers first; keep-alive or close; one to three answers on
one connection) are cut at random points and fed to the client's connection protocol; its
status, headers, body and keep-alive decision must equal what h11 reads from the same bytes.
"""

from __future__ import annotations

import asyncio
import re
import string
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.events import percent_encode
from bridge.http.client import MAX_BODY, SubscriberClient, _Connection

TCHAR = "!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters
OWN = {"host", "content-length", "transfer-encoding", "connection"}
# A header value: visible ASCII, space, HTAB and obs-text (0x80-0xFF).
VALUE_CHARS = "\t" + "".join(map(chr, range(0x20, 0x7F))) + "".join(map(chr, range(0x80, 0x100)))
PCHAR = string.ascii_letters + string.digits + "-._~" + "!$&'()*+,;=" + ":@"
SETTINGS = settings(
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

# --- the recording server ------------------------------------------------------------------------


class Recorder(asyncio.Protocol):
    """Records every byte; answers 204 to each request once its content-length body is in."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.requests: list[bytes] = []
        self.connections = 0
        self._pending = bytearray()
        self._transport: asyncio.Transport | None = None

    def __repr__(self) -> str:
        return f"<Recorder: {len(self.requests)} requests, {len(self.received)} bytes>"

    def __call__(self) -> Recorder:
        self.connections += 1
        self._pending = bytearray()
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += data
        self._pending += data
        while (end := self._pending.find(b"\r\n\r\n")) >= 0:
            match = re.search(rb"\r\ncontent-length: *([0-9]+)", self._pending[:end], re.I)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(self._pending) < total:
                return
            self.requests.append(bytes(self._pending[:total]))
            del self._pending[:total]
            assert self._transport is not None
            self._transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    recorder = Recorder()
    server = await asyncio.get_running_loop().create_server(recorder, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield recorder, f"127.0.0.1:{port}"
    server.close()
    await server.wait_closed()


@pytest.fixture
async def client() -> AsyncIterator[SubscriberClient]:
    client = SubscriberClient()
    yield client
    await client.close()


# --- requests ------------------------------------------------------------------------------------

names = st.text(TCHAR, min_size=1, max_size=24).filter(lambda n: n.lower() not in OWN)
values = st.one_of(
    st.text(VALUE_CHARS, max_size=60),
    st.text(max_size=40).map(percent_encode),  # CloudEvents attributes as bridge sends them
    st.text("".join(map(chr, range(0x80, 0x100))), min_size=1, max_size=10),  # obs-text
    st.just(""),
)
header_dicts = st.dictionaries(names, values, max_size=14)
segments = st.lists(
    st.one_of(
        st.text(PCHAR, max_size=12),
        st.builds("%{:02X}".format, st.integers(0, 255)),  # already percent-encoded
    ),
    max_size=6,
).map("".join)
paths = st.lists(segments, max_size=4).map("/".join)
queries = st.none() | st.lists(st.text(PCHAR + "/?", max_size=12) | segments, max_size=3).map(
    "".join
)


class Filler(bytes):
    """A large body, shown short when hypothesis reports an example."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes of {bytes(self[:1])!r}>"


bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=512),
    st.builds(
        lambda n, b: Filler(bytes([b]) * n), st.integers(512, 256 * 1024), st.integers(0, 255)
    ),
)


def parse_request(raw: bytes) -> tuple[bytes, bytes, list[tuple[str, str]], bytes]:
    """What h11, as a server, reads from these bytes: method, target, headers, body."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    request = conn.next_event()
    assert isinstance(request, h11.Request), request
    body = b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Data):
            body += event.data
            continue
        assert isinstance(event, h11.EndOfMessage), event
        break
    assert conn.next_event() is h11.NEED_DATA  # nothing left over
    headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers]
    return request.method, request.target, headers, body


@settings(SETTINGS, max_examples=120)
@given(path=paths, query=queries, headers=header_dicts, body=bodies)
async def test_requests_read_by_h11_are_what_was_asked(
    recorder: tuple[Recorder, str],
    client: SubscriberClient,
    path: str,
    query: str | None,
    headers: dict[str, str],
    body: bytes,
) -> None:
    server, host = recorder
    target = "/" + path + (f"?{query}" if query is not None else "")
    before = len(server.requests)
    answer = await client.post(f"http://{host}{target}", headers, body, 5.0)
    assert (answer.status, answer.error) == (204, None)
    assert len(server.requests) == before + 1
    method, sent_target, sent_headers, sent_body = parse_request(server.requests[-1])
    assert method == b"POST"
    # An empty query ("?" alone) is dropped: the same resource.
    assert sent_target.decode("ascii") == (target if query else "/" + path)
    # RFC 9110 section 5.5: whitespace around a field value is not part of it.
    expected = [(n.lower(), v.strip(" \t")) for n, v in headers.items()]
    assert sent_headers == [("host", host), *expected, ("content-length", str(len(body)))]
    assert sent_body == body


@settings(SETTINGS, max_examples=40)
@given(path=st.text(min_size=1, max_size=30).filter(lambda p: not set(p) & set("?#%\t\r\n")))
async def test_any_path_is_sent_as_a_valid_target(
    recorder: tuple[Recorder, str], client: SubscriberClient, path: str
) -> None:
    server, host = recorder
    answer = await client.post(f"http://{host}/{path}", {}, b"", 5.0)
    assert (answer.status, answer.error) == (204, None)
    _, target, _, _ = parse_request(server.requests[-1])  # h11 accepts it
    assert unquote(target.decode("ascii")) == "/" + path


FORBIDDEN_IN_VALUE = ["\r", "\n", "\r\n", "\0", "\x01", "\x0b", "\x0c", "\x1b", "\x1f", "\x7f"]


@st.composite
def refused_headers(draw: st.DrawFn) -> dict[str, str]:
    headers = dict(draw(header_dicts))
    if draw(st.booleans()) or not headers:
        name = draw(names)
        bad = draw(st.sampled_from([*FORBIDDEN_IN_VALUE, " ", ":", "(", "\u00e9", "\u2603", ""]))
        at = draw(st.integers(0, len(name)))
        bad_name = name[:at] + bad + name[at:]
        if bad == "" or bad_name.lower() in OWN:
            bad_name = ""  # the empty name
        headers[bad_name] = draw(values)
    else:
        name = draw(st.sampled_from(list(headers)))
        value = headers[name]
        bad = draw(st.sampled_from([*FORBIDDEN_IN_VALUE, "\r\nx-injected: 1", "\u0100"]))
        at = draw(st.integers(0, len(value)))
        headers[name] = value[:at] + bad + value[at:]
    return headers


@settings(SETTINGS, max_examples=120)
@given(headers=refused_headers(), body=bodies)
async def test_refused_headers_write_nothing(
    recorder: tuple[Recorder, str], client: SubscriberClient, headers: dict[str, str], body: bytes
) -> None:
    server, host = recorder
    await client.post(f"http://{host}/", {}, b"", 5.0)  # a pooled connection stands ready
    received = len(server.received)
    answer = await client.post(f"http://{host}/", headers, body, 5.0)
    assert answer.status == -1
    assert answer.permanent
    assert answer.error is not None
    assert answer.error.startswith("request not sent: ")
    await asyncio.sleep(0)
    assert len(server.received) == received


# --- answers -------------------------------------------------------------------------------------

REASON_CHARS = " \t" + "".join(map(chr, range(0x21, 0x7F))) + "".join(map(chr, range(0x80, 0x100)))
VISIBLE = "".join(map(chr, range(0x21, 0x7F))) + "".join(map(chr, range(0x80, 0x100)))
answer_names = st.text(TCHAR, min_size=1, max_size=16).filter(
    lambda n: n.lower() not in OWN | {"content-length", "upgrade", "trailer"}
)
# A field value: visible characters, inner spaces and tabs; optional whitespace around it.
answer_values = st.builds(
    lambda pad1, text, pad2: pad1 + text.strip(" \t") + pad2,
    st.sampled_from(["", " ", "  ", "\t"]),
    st.text(VISIBLE + " \t", max_size=24),
    st.sampled_from(["", " ", "\t "]),
)
header_lists = st.lists(st.tuples(answer_names, answer_values), max_size=6)
statuses = st.sampled_from([200, 201, 202, 204, 301, 304, 400, 404, 409, 429, 500, 503]) | (
    st.integers(200, 599)
)
token = st.text(TCHAR, min_size=1, max_size=8)
quoted = st.text(" \t!#$%&'()*+,-./:;<=>?@[]^_`{|}~" + string.ascii_letters, max_size=8).map(
    lambda s: f'"{s}"'
)
extensions = st.lists(
    st.tuples(token, st.none() | token | quoted).map(
        lambda kv: f";{kv[0]}" + (f"={kv[1]}" if kv[1] is not None else "")
    ),
    max_size=2,
).map("".join)


def pieces(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """`data` cut at up to 8 random points (empty pieces included)."""
    return st.lists(st.integers(0, len(data)), max_size=8).map(
        lambda points: [
            data[a:b]
            for a, b in zip([0, *sorted(points)], [*sorted(points), len(data)], strict=True)
        ]
    )


@dataclass
class Exchange:
    """One generated answer (after any informational ones) and its bytes."""

    data: bytes
    closes: bool  # the server closes the connection after this answer


@st.composite
def exchanges(draw: st.DrawFn, last: bool) -> Exchange:
    out = b""
    for _ in range(draw(st.integers(0, 2))):
        code = draw(st.sampled_from([100, 102, 103]))
        out += f"HTTP/1.1 {code} {draw(st.text(REASON_CHARS, max_size=12))}\r\n".encode("latin-1")
        out += b"".join(f"{n}:{v}\r\n".encode("latin-1") for n, v in draw(header_lists))
        out += b"\r\n"
    status = draw(statuses)
    version = draw(st.sampled_from(["1.1", "1.1", "1.1", "1.0"]))
    body = draw(st.one_of(st.binary(max_size=300), st.integers(0, 100_000).map(bytes)))
    framing = draw(
        st.sampled_from(["length", "chunked", "close"] if last else ["length", "chunked"])
    )
    close = draw(st.booleans())
    if version == "1.0" and framing == "chunked":
        framing = "length"  # chunked is HTTP/1.1 only
    headers = draw(header_lists)
    if status in (204, 304):
        body, framing = b"", "none"
    if version == "1.0":
        close = True  # h11 keeps no HTTP/1.0 connection alive
    elif close:
        headers.append(
            ("connection", draw(st.sampled_from(["close", "Close", "keep-alive, close"])))
        )
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))
        payload = body
    elif framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        payload = b""
        for chunk in draw(pieces(body)):
            if chunk:
                hexa = f"{len(chunk):x}" if draw(st.booleans()) else f"{len(chunk):X}"
                payload += f"{hexa}{draw(extensions)}\r\n".encode() + chunk + b"\r\n"
        payload += f"0{draw(extensions)}\r\n".encode()
        payload += b"".join(f"{n}: {v}\r\n".encode("latin-1") for n, v in draw(header_lists))
        payload += b"\r\n"
    else:
        payload = body
    order = draw(st.permutations(headers))
    reason = draw(st.text(REASON_CHARS, max_size=20))
    out += f"HTTP/{version} {status} {reason}\r\n".encode("latin-1")
    out += b"".join(f"{n}:{v}\r\n".encode("latin-1") for n, v in order)
    out += b"\r\n" + payload
    return Exchange(out, close or framing == "close")


@st.composite
def conversations(draw: st.DrawFn) -> list[Exchange]:
    """One to three answers on one connection: every answer but the last keeps it alive."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        exchange = draw(exchanges(last=True))
        out.append(exchange)
        if exchange.closes:
            break
    return out


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def h11_reads(data: bytes, closes: bool, conn: h11.Connection) -> tuple[Any, ...]:
    """Status, headers (joined as the client joins them), body, keep-alive as h11 reads them."""
    conn.send(
        h11.Request(method="POST", target="/", headers=[("host", "x"), ("content-length", "0")])
    )
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    if closes:
        conn.receive_data(b"")
    response = None
    body = b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.InformationalResponse):
            continue
        if isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
        else:
            raise AssertionError(f"h11 did not read a whole answer: {event}")
    assert response is not None
    headers: dict[str, str] = {}
    for name, value in response.headers.raw_items():
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    # Reusable: h11 is done with this answer and did not read the end of the connection.
    keep_alive = conn.their_state is h11.DONE and conn.next_event() is h11.NEED_DATA
    return response.status_code, headers, body, keep_alive


@settings(SETTINGS, max_examples=150)
@given(data=st.data(), conversation=conversations())
def test_answers_read_by_the_client_are_what_h11_reads(
    data: st.DataObject, conversation: list[Exchange]
) -> None:
    loop = asyncio.new_event_loop()
    try:
        protocol = _Connection()
        transport = FakeTransport()
        protocol.connection_made(transport)
        reference = h11.Connection(h11.CLIENT)
        for exchange in conversation:
            expected = h11_reads(exchange.data, exchange.closes, reference)
            waiter = protocol.send(b"request", loop)
            for piece in data.draw(pieces(exchange.data)):
                if piece:  # asyncio never delivers empty data
                    protocol.data_received(piece)
            if exchange.closes and not waiter.done():
                protocol.connection_lost(None)  # the answer's body ends with the connection
            assert waiter.done()
            status, headers, body, oversized = waiter.result()
            assert not oversized
            assert (status, headers, body, protocol.keep_alive) == expected
            if not expected[3]:
                break
            assert not transport.closed
            reference.start_next_cycle()
    finally:
        loop.close()


def test_the_generated_bodies_stay_below_the_client_limit() -> None:
    assert MAX_BODY > 256 * 1024
