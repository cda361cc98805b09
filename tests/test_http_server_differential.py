"""bridge.http.server against h11 on the same bytes: what one accepts, the other reads the same way.

hypothesis builds request streams: pipelined requests with the methods llhttp knows, origin-form,
absolute-form and asterisk targets, header names (any token, any case) and values (visible ASCII,
obs-text bytes 0x80-0xff, inner spaces and tabs, optional whitespace around them), repeated
headers, Content-Length and chunked bodies (chunk sizes in either case with leading zeros, chunk
extensions, trailer fields), upgrade requests (`Connection: Upgrade` + `Upgrade: h2c`), HTTP/1.0
and `Connection: close` as the last request. The stream is written to the server (a recording
handler, on uvloop in a thread, no RabbitMQ) in pieces cut at random points, then half-closed;
h11 parses the same bytes as a server (answering 200 to each request, as the server does).

Asserted on every stream: the server answers every request it handled, in order, and after them
at most one wire-level refusal (then it closes); every request h11 accepted before the first
difference is handled by the server with the same method, path (the target before "?"), headers
(lower-case names, values without surrounding whitespace, repeated names folded with "," and
listed in `Request.repeated`) and body. A stream of valid requests is accepted whole by both.

Mutations turn one request of a stream malformed. Most are refused by both (`BOTH`): the server
answers 400 (501 for a transfer coding it does not decode) and handles nothing from that request
on, and h11 raises at the same request. The classes where llhttp and h11 legitimately differ are
listed, each with its reason, and asserted as such (never skipped):

- `SERVER_STRICTER`: h11 accepts and the server refuses. All are ambiguities that smuggling
  attacks use or bytes RFC 9110/9112 forbid; refusing them is the point of this server:
  Content-Length together with Transfer-Encoding (h11 takes chunked and ignores the length);
  repeated or list-valued equal Content-Lengths (h11 merges them); obs-fold (h11 unfolds it);
  bare LF line endings (h11 accepts them); control characters (0x01-0x08, 0x0e-0x1f, 0x7f) in a
  header value (h11's field-vchar is any byte but NUL and whitespace); chunk extensions that are
  not `;token[=token|quoted-string]` (h11 accepts anything after ";"); whitespace between a chunk
  size and CRLF; methods llhttp does not know (llhttp parses a fixed list; bridge serves POST and
  OPTIONS only); HTTP versions other than 0.9, 1.0, 1.1, 2.0 (h11 accepts any digit.digit).
- `H11_STRICTER`: the server accepts and h11 refuses, harmless for this server: no Host header,
  or two (bridge does not route on Host; two are folded and listed as repeated); empty lines
  before a request line (RFC 9112 section 2.2 lets a server ignore them); two spaces between the
  parts of the request line (read as one).
- `SERVER_CLOSES`: both accept the request, the server then closes where h11 keeps reading:
  `Proxy-Connection: close` (llhttp reads Proxy-Connection as Connection).
- Not generated: CONNECT (the server answers it and closes: what follows is a tunnel, where h11
  reads on after a refusal); request heads over 16 KiB (h11's default buffer limit); Expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import h11
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.http.server import Handler, HTTPServer, Request, Response

REFUSALS = {400, 408, 413, 431, 500, 501}
# Methods llhttp knows that h11 also accepts (any token). Not CONNECT (see the module docstring).
METHODS = [
    "GET",
    "POST",
    "PUT",
    "DELETE",
    "PATCH",
    "OPTIONS",
    "HEAD",
    "TRACE",
    "PROPFIND",
    "REPORT",
    "MKCOL",
    "PURGE",
    "SEARCH",
    "LINK",
]
TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Names the generator does not pick at random: they frame the message or the connection.
FRAMING = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "proxy-connection",
    "upgrade",
    "expect",
}
PATH_CHARS = "abcXYZ019-._~!$&'()*+,;=:@"
QUERY_CHARS = PATH_CHARS + "/?"
VCHAR = bytes(range(0x21, 0x7F))
OBS_TEXT = bytes(range(0x80, 0x100))


# --- the server under test -----------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    repeated: frozenset[str]
    body: bytes


class Recorder(Handler):
    """Accepts everything; answers 200 with the request's number on this connection."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.requests: list[Request] = []

    async def handle(self, request: Request) -> Response:
        self.requests.append(request)
        self.seen.append(
            Seen(request.method, request.path, request.headers, request.repeated, request.body)
        )
        return Response(200, headers=[("x-seq", str(len(self.seen) - 1))])


@dataclass
class Served:
    port: int
    recorder: Recorder


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """HTTPServer with a Recorder on uvloop (as bridge runs) in a thread of its own."""
    recorder = Recorder()
    loop = uvloop.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        server = HTTPServer(recorder, "127.0.0.1", 0, request_timeout=10)
        await server.start()
        holder["server"] = server
        holder["stop"] = asyncio.Event()
        started.set()
        await holder["stop"].wait()
        await server.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10), "the server did not start"
    try:
        yield Served(holder["server"].port, recorder)
    finally:
        loop.call_soon_threadsafe(holder["stop"].set)
        thread.join(10)
        loop.close()


def converse(port: int, pieces: list[bytes]) -> bytes:
    """Write the pieces (a pause between them, so they arrive as separate reads), half-close,
    and read everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):  # the server may have refused and stopped reading
            for i, piece in enumerate(pieces):
                if i:
                    time.sleep(0.001)
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
        received = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
        else:
            pytest.fail(f"the server did not close the connection; got {received[:300]!r}")
        return received


@dataclass
class Answer:
    status: int
    headers: dict[str, str]


def answers_of(data: bytes) -> list[Answer]:
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"an incomplete response: {data[:300]!r}"
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
        out.append(Answer(int(lines[0].split(" ")[1]), headers))
        data = rest[int(headers["content-length"]) :]
    return out


# --- h11, the reference --------------------------------------------------------------------------


@dataclass
class H11Result:
    accepted: list[Seen]
    outcome: str  # "end": all read; "incomplete": EOF mid-request; "closed"; "error"


def h11_read(data: bytes) -> H11Result:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    accepted: list[Seen] = []
    current: Seen | None = None
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return H11Result(accepted, "error")
        if isinstance(event, h11.Request):
            current = Seen(
                event.method.decode("latin-1"),
                event.target.decode("latin-1").partition("?")[0],
                {},
                frozenset(),
                b"",
            )
            counts: dict[str, int] = {}
            for name, value in event.headers:
                key = name.decode("latin-1")
                text = value.decode("latin-1")
                counts[key] = counts.get(key, 0) + 1
                old = current.headers.get(key)
                current.headers[key] = text if old is None else f"{old},{text}"
            current.repeated = frozenset(k for k, n in counts.items() if n > 1)
        elif isinstance(event, h11.Data):
            assert current is not None
            current.body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            assert current is not None
            accepted.append(current)
            current = None
            conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
            conn.send(h11.EndOfMessage())
            if conn.our_state is h11.MUST_CLOSE:
                return H11Result(accepted, "closed")
            conn.start_next_cycle()
        elif event is h11.NEED_DATA:
            pending = current is not None or bool(conn.trailing_data[0].strip(b"\r\n"))
            return H11Result(accepted, "incomplete" if pending else "end")
        else:  # pragma: no cover - PAUSED would mean a protocol switch, never answered here
            pytest.fail(f"unexpected h11 event {event!r}")


# --- generated requests --------------------------------------------------------------------------


@dataclass
class Spec:
    method: str
    target: str
    version: str
    headers: list[tuple[bytes, bytes]]  # as written, names in any case, values with their OWS
    framing: str  # "none", "length", "chunked"
    body: bytes
    chunks: list[int] = field(default_factory=list)
    size_format: str = "%x"
    zeros: int = 0
    extension: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    upgrade: bool = False
    close: bool = False


def render(
    spec: Spec,
    *,
    eol: bytes = b"\r\n",
    extra: list[bytes] | None = None,
    request_line: bytes | None = None,
    host: bool = True,
    size_suffix: bytes = b"",
    chunk_end: bytes = b"\r\n",
) -> bytes:
    line = request_line or f"{spec.method} {spec.target} HTTP/{spec.version}".encode("latin-1")
    lines = [line]
    if host:
        lines.append(b"Host: example.test")
    lines += [name + b":" + value for name, value in spec.headers]
    if spec.upgrade:
        lines += [
            b"Connection: Upgrade, HTTP2-Settings",
            b"Upgrade: h2c",
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ]
    if spec.close:
        lines.append(b"Connection: close")
    if spec.framing == "length":
        lines.append(b"Content-Length: %d" % len(spec.body))
    elif spec.framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
    lines += extra or []
    out = eol.join(lines) + eol + eol
    if spec.framing == "length":
        out += spec.body
    elif spec.framing == "chunked":
        at = 0
        for size in [*spec.chunks, 0]:
            digits = (spec.size_format % size).encode()
            out += b"0" * spec.zeros + digits + size_suffix + spec.extension + b"\r\n"
            if size:
                out += spec.body[at : at + size] + chunk_end
                at += size
        out += b"".join(name + b": " + value + b"\r\n" for name, value in spec.trailers) + b"\r\n"
    return out


def words(alphabet: bytes) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=1, max_size=12).map(
        lambda raw: bytes(alphabet[b % len(alphabet)] for b in raw)
    )


field_value = st.builds(
    lambda parts, seps, lead, trail: (
        lead + b"".join(p + s for p, s in zip(parts, seps, strict=False)).rstrip(b" \t") + trail
    ),
    st.lists(st.one_of(words(VCHAR), words(OBS_TEXT)), max_size=4),
    st.lists(st.sampled_from([b" ", b"\t", b"  "]), min_size=4, max_size=4),
    st.sampled_from([b"", b" ", b"\t", b"  "]),
    st.sampled_from([b"", b" ", b"\t "]),
)
field_name = st.text(TOKEN, min_size=1, max_size=16).filter(lambda n: n.lower() not in FRAMING)
target = st.one_of(
    st.builds(
        lambda segments, query: (
            "/" + "/".join(segments) + ("?" + query if query is not None else "")
        ),
        st.lists(st.text(PATH_CHARS, max_size=8), max_size=3),
        st.none() | st.text(QUERY_CHARS, max_size=10),
    ),
    st.just("*"),
    st.just("http://example.test:8080/a/b?c=d"),
    st.just("/caf%C3%A9%20au%20lait"),
)


@st.composite
def specs(draw: st.DrawFn, last: bool = False) -> Spec:
    names = draw(st.lists(field_name, max_size=5))
    headers = [(n.encode(), draw(field_value)) for n in names]
    if headers and draw(st.booleans()):  # a repeated name, maybe in another case
        name, _ = headers[draw(st.integers(0, len(headers) - 1))]
        cased = name.swapcase() if draw(st.booleans()) else name
        headers.insert(draw(st.integers(0, len(headers))), (cased, draw(field_value)))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    body = b"" if framing == "none" else draw(st.binary(max_size=200))
    spec = Spec(
        method=draw(st.sampled_from(METHODS)),
        target=draw(target),
        version="1.1",
        headers=headers,
        framing=framing,
        body=body,
    )
    if framing == "chunked":
        cuts = sorted(draw(st.lists(st.integers(1, len(body)), max_size=4))) if body else []
        sizes, at = [], 0
        for cut in [*cuts, len(body)]:
            if cut > at:
                sizes.append(cut - at)
                at = cut
        spec.chunks = sizes
        spec.size_format = draw(st.sampled_from(["%x", "%X"]))
        spec.zeros = draw(st.integers(0, 3))
        spec.extension = draw(st.sampled_from([b"", b";a", b";a=b", b';name="quoted value"']))
        spec.trailers = [
            (n.encode(), draw(words(VCHAR))) for n in draw(st.lists(field_name, max_size=2))
        ]
    spec.upgrade = draw(st.booleans()) and draw(st.booleans())
    if last and not spec.upgrade:
        choice = draw(st.sampled_from(["keep-alive", "close", "1.0"]))
        spec.close = choice == "close"
        if choice == "1.0":
            spec.version = "1.0"
    return spec


@st.composite
def streams(draw: st.DrawFn) -> list[Spec]:
    count = draw(st.integers(1, 4))
    return [draw(specs(last=i == count - 1)) for i in range(count)]


def cut(draw: st.DrawFn, data: bytes) -> list[bytes]:
    points = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=4))))
    pieces, at = [], 0
    for point in [*points, len(data)]:
        if point > at:
            pieces.append(data[at:point])
            at = point
    return pieces


# --- mutations -----------------------------------------------------------------------------------

BOTH = "both"
SERVER_STRICTER = "server-stricter"
H11_STRICTER = "h11-stricter"
SERVER_CLOSES = "server-closes"


def _with(**changes: Any) -> Callable[[Spec], Spec]:
    return lambda spec: replace(spec, **changes)


def _inject(value: bytes) -> Callable[[Spec], bytes]:
    return lambda spec: render(spec, extra=[b"X-Injected: a" + value + b"b"])


# name -> (kind, render the mutated request)
MUTATIONS: dict[str, tuple[str, Callable[[Spec], bytes]]] = {
    "length-and-chunked": (
        SERVER_STRICTER,
        lambda s: render(
            replace(s, framing="chunked", chunks=[len(s.body)] if s.body else []),
            extra=[b"Content-Length: %d" % len(s.body)],
        ),
    ),
    "two-different-lengths": (
        BOTH,
        lambda s: render(
            replace(s, framing="length"), extra=[b"Content-Length: %d" % (len(s.body) + 1)]
        ),
    ),
    "two-equal-lengths": (
        SERVER_STRICTER,
        lambda s: render(replace(s, framing="length"), extra=[b"Content-Length: %d" % len(s.body)]),
    ),
    "length-list": (
        SERVER_STRICTER,
        lambda s: render(replace(s, framing="none"), extra=[b"Content-Length: 0, 0"]),
    ),
    "length-not-a-number": (
        BOTH,
        lambda s: render(replace(s, framing="none"), extra=[b"Content-Length: 1a"]),
    ),
    "length-plus-sign": (
        BOTH,
        lambda s: render(replace(s, framing="none"), extra=[b"Content-Length: +0"]),
    ),
    "chunked-then-identity": (
        BOTH,
        lambda s: render(
            replace(s, framing="none"), extra=[b"Transfer-Encoding: chunked, identity"]
        ),
    ),
    "identity": (
        BOTH,
        lambda s: render(replace(s, framing="none"), extra=[b"Transfer-Encoding: identity"]),
    ),
    "gzip-then-chunked": (
        BOTH,
        lambda s: render(replace(s, framing="none"), extra=[b"Transfer-Encoding: gzip, chunked"]),
    ),
    "two-transfer-encodings": (
        BOTH,
        lambda s: render(
            replace(s, framing="chunked", chunks=[]), extra=[b"Transfer-Encoding: chunked"]
        ),
    ),
    "obs-fold": (SERVER_STRICTER, lambda s: render(s, extra=[b"X-Folded: a", b" b"])),
    "bare-lf": (SERVER_STRICTER, lambda s: render(s, eol=b"\n")),
    "bare-lf-one-line": (SERVER_STRICTER, lambda s: render(s, extra=[b"X-A: 1\nX-B: 2"])),
    "space-before-colon": (BOTH, lambda s: render(s, extra=[b"X-Spaced : 1"])),
    "no-colon": (BOTH, lambda s: render(s, extra=[b"X-No-Colon 1"])),
    "bad-name-char": (BOTH, lambda s: render(s, extra=[b"X(A): 1"])),
    "nul-in-value": (BOTH, _inject(b"\x00")),
    "control-in-value": (SERVER_STRICTER, _inject(b"\x01")),
    "del-in-value": (SERVER_STRICTER, _inject(b"\x7f")),
    "unknown-method": (SERVER_STRICTER, lambda s: render(replace(s, method="FROB"))),
    "lower-case-method": (SERVER_STRICTER, lambda s: render(replace(s, method=s.method.lower()))),
    "version-1.2": (SERVER_STRICTER, lambda s: render(replace(s, version="1.2"))),
    "space-in-target": (BOTH, lambda s: render(replace(s, target="/a b"))),
    "obs-text-in-target": (BOTH, lambda s: render(replace(s, target="/caf\xe9"))),
    "chunk-size-not-hex": (
        BOTH,
        lambda s: render(replace(s, framing="chunked", chunks=[1], body=b"x", size_format="g%d")),
    ),
    "chunk-size-whitespace": (
        SERVER_STRICTER,
        # (h11 allows whitespace before CRLF, not before a chunk extension)
        lambda s: render(
            replace(s, framing="chunked", chunks=[1], body=b"x", extension=b""), size_suffix=b" "
        ),
    ),
    "chunk-extension-malformed": (
        SERVER_STRICTER,
        lambda s: render(replace(s, framing="chunked", chunks=[1], body=b"x", extension=b";a=b c")),
    ),
    "chunk-data-overrun": (
        BOTH,
        lambda s: render(replace(s, framing="chunked", chunks=[1], body=b"x"), chunk_end=b"yz\r\n"),
    ),
    "no-host": (H11_STRICTER, lambda s: render(s, host=False)),
    "two-hosts": (H11_STRICTER, lambda s: render(s, extra=[b"Host: other.test"])),
    "empty-line-before": (H11_STRICTER, lambda s: b"\r\n" + render(s)),
    "double-space-request-line": (
        H11_STRICTER,
        lambda s: render(s, request_line=f"{s.method}  {s.target} HTTP/1.1".encode()),
    ),
    "proxy-connection-close": (
        SERVER_CLOSES,
        lambda s: render(s, extra=[b"Proxy-Connection: close"]),
    ),
    "truncated": ("truncated", lambda s: render(s)[: max(1, len(render(s)) - 3)]),
}


@st.composite
def mutated_streams(draw: st.DrawFn, name: str) -> tuple[int, Spec, bytes]:
    mutate = MUTATIONS[name][1]
    before = draw(st.lists(specs(), max_size=2))
    target_spec = draw(specs())
    after = draw(st.lists(specs(), max_size=2))
    data = b"".join(render(s) for s in before) + mutate(target_spec)
    if name != "truncated":
        data += b"".join(render(s) for s in after)
    return len(before), target_spec, data


# --- the comparison ------------------------------------------------------------------------------


def normalised(seen: Seen) -> Seen:
    """h11 lower-cases the Transfer-Encoding value; compare that header case-insensitively."""
    headers = dict(seen.headers)
    if "transfer-encoding" in headers:
        headers["transfer-encoding"] = headers["transfer-encoding"].lower()
    return replace(seen, headers=headers)


def run_both(served: Served, pieces: list[bytes]) -> tuple[list[Seen], list[Answer], H11Result]:
    served.recorder.seen.clear()
    served.recorder.requests.clear()
    answers = answers_of(converse(served.port, pieces))
    seen = list(served.recorder.seen)
    # The server answers each request it handled, in order; then at most one refusal.
    handled = answers[: len(seen)]
    assert [(a.status, a.headers.get("x-seq")) for a in handled] == [
        (200, str(i)) for i in range(len(seen))
    ], answers
    rest = answers[len(seen) :]
    assert len(rest) <= 1, answers
    if rest:
        assert rest[0].status in REFUSALS, rest
        assert rest[0].headers["connection"] == "close"
    return seen, rest, h11_read(b"".join(pieces))


def assert_same(seen: list[Seen], reference: list[Seen]) -> None:
    for ours, theirs in zip(seen, reference, strict=False):
        assert normalised(ours) == normalised(theirs)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(stream=streams(), data=st.data())
def test_valid_streams_are_read_exactly_as_h11_reads_them(
    served: Served, stream: list[Spec], data: st.DataObject
) -> None:
    raw = b"".join(render(s) for s in stream)
    seen, refusal, h11_result = run_both(served, cut(data.draw, raw))
    assert h11_result.outcome in ("end", "closed"), h11_result
    assert len(h11_result.accepted) == len(stream)
    assert not refusal, refusal
    assert len(seen) == len(stream)
    assert_same(seen, h11_result.accepted)


@pytest.mark.parametrize("name", sorted(MUTATIONS))
@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_malformed_streams_are_refused_where_h11_refuses(
    served: Served, name: str, data: st.DataObject
) -> None:
    index, mutated, raw = data.draw(mutated_streams(name))
    kind = MUTATIONS[name][0]
    seen, refusal, h11_result = run_both(served, cut(data.draw, raw))
    accepted = h11_result.accepted
    # The valid requests before the mutated one: both read them, the same way.
    assert len(seen) >= index
    assert len(accepted) >= index
    assert_same(seen[:index], accepted[:index])
    if kind == BOTH:
        assert refusal, f"{name}: the server did not refuse"
        assert refusal[0].status in (400, 501)
        assert len(seen) == index, f"{name}: the server handled the refused request"
        assert h11_result.outcome == "error", f"{name}: h11 accepted it"
        assert len(accepted) == index
    elif kind == SERVER_STRICTER:
        # h11 accepts it; the server refuses it and handles nothing from it on.
        assert refusal, f"{name}: the server did not refuse"
        assert refusal[0].status == 400
        assert len(seen) == index
        assert len(accepted) > index, f"{name}: h11 refuses it too"
    elif kind == H11_STRICTER:
        # The server reads the request (harmless, see the module docstring); h11 refuses it.
        assert h11_result.outcome == "error"
        assert len(accepted) == index
        assert len(seen) > index, f"{name}: the server did not handle it"
        assert seen[index].method == mutated.method
    elif kind == SERVER_CLOSES:
        assert not refusal
        assert len(seen) == index + 1
        assert_same(seen, accepted)
        assert len(accepted) > index
    else:  # truncated: neither reads the incomplete request, nobody is refused
        assert not refusal
        assert len(seen) == index
        assert h11_result.outcome == "incomplete"
        assert len(accepted) == index


# --- Request.repeated and trailers, directly -----------------------------------------------------


def test_repeated_headers_are_folded_and_listed_and_trailers_dropped(served: Served) -> None:
    raw = (
        b"POST /a?q=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nce-id: only\r\nx-a: 2 \r\nX-A:3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nce-type: smuggled\r\nx-a: 4\r\n\r\n"
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    seen, refusal, _ = run_both(served, [raw])
    assert not refusal
    first, second = served.recorder.requests
    assert first.path == "/a"
    assert first.body == b"abc"
    assert first.headers["x-a"] == "1,2,3"
    assert first.headers["ce-id"] == "only"
    assert first.repeated == frozenset({"x-a"})
    assert "ce-type" not in first.headers  # a trailer never becomes a header
    assert second.repeated == frozenset()
    assert second.headers == {"host": "x", "content-length": "0"}
    assert len(seen) == 2


@pytest.mark.parametrize("split", [False, True])
def test_upgrade_request_body_and_the_next_request_are_read(served: Served, split: bool) -> None:
    body = b"GET /inner HTTP/1.1\r\n\r\n"
    head = (
        b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    tail = b"PUT /next HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok"
    pieces = [head, body + tail] if split else [head + body + tail]
    seen, refusal, h11_result = run_both(served, pieces)
    assert not refusal
    assert [(s.method, s.path, s.body) for s in seen] == [
        ("POST", "/up", body),
        ("PUT", "/next", b"ok"),
    ]
    assert_same(seen, h11_result.accepted)
