"""The subscriber client's requests: header injection refused before anything is written, what
is allowed goes out byte for byte, request targets; and the start-up warning about proxies."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from bridge.http.client import SubscriberClient
from tests.conftest import Running, eventually, trigger
from tests.daemon import free_port
from tests.raw_http import RawConnection, RawServer, answer

BASE = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "test", "ce-type": "t"}


async def echo(conn: RawConnection) -> None:
    while await conn.request() is not None:
        await conn.send(answer(200))


@pytest.fixture
async def server() -> AsyncIterator[RawServer]:
    server = await RawServer(echo).start()
    yield server
    await server.close()


@pytest.fixture
async def client() -> AsyncIterator[SubscriberClient]:
    client = SubscriberClient()
    yield client
    await client.close()


REFUSED: dict[str, tuple[dict[str, str], str]] = {
    "crlf-in-value": (
        {"ce-subject": "a\r\nx-injected: yes"},
        "the value of header 'ce-subject' contains a carriage return (CR)",
    ),
    "lf-in-value": ({"content-type": "text/plain\nx: y"}, "contains a line feed (LF)"),
    "cr-in-value": ({"traceparent": "00-abc\r"}, "contains a carriage return (CR)"),
    "nul-in-value": ({"ce-subject": "a\x00b"}, "contains a NUL"),
    "bell-in-value": ({"ce-subject": "a\x07"}, "contains the control character U+0007"),
    "escape-in-value": ({"ce-subject": "\x1b[31m"}, "contains the control character U+001B"),
    "del-in-value": ({"ce-subject": "a\x7fb"}, "contains the control character U+007F"),
    "beyond-latin-1": ({"ce-subject": "snow \u2603"}, "U+2603, which ISO-8859-1 cannot encode"),
    "space-in-name": ({"ce-bad name": "x"}, "the header name 'ce-bad name' is not an RFC 9110"),
    "colon-in-name": ({"ce-a:b": "x"}, "the header name 'ce-a:b' is not an RFC 9110 token"),
    "crlf-in-name": ({"x\r\ny": "1"}, "the header name 'x\\r\\ny' is not an RFC 9110 token"),
    "empty-name": ({"": "x"}, "the header name '' is not an RFC 9110 token"),
    "non-ascii-name": ({"ce-\u00e9": "x"}, "is not an RFC 9110 token"),
    "content-length": ({"Content-Length": "0"}, "'Content-Length' is written by the HTTP client"),
    "transfer-encoding": ({"transfer-encoding": "chunked"}, "is written by the HTTP client"),
    "host": ({"HOST": "evil.example"}, "'HOST' is written by the HTTP client itself"),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_an_unsendable_header_is_refused_and_nothing_is_written(
    server: RawServer, case: str
) -> None:
    extra, reason = REFUSED[case]
    client = SubscriberClient()
    try:
        got = await client.post(server.url, {**BASE, **extra}, b"body", 5.0)
        assert got.status == -1
        assert got.permanent
        assert got.error is not None
        assert got.error.startswith("request not sent: ")
        assert reason in got.error, got.error
        assert "\r" not in got.error
        assert "\n" not in got.error
        assert server.connections == 0  # not even a connection
        # A pooled connection is not disturbed by a refused request either.
        assert (await client.post(server.url, BASE, b"", 5.0)).status == 200
        refused_again = await client.post(server.url, {**BASE, **extra}, b"body", 5.0)
        assert refused_again.permanent
        assert (await client.post(server.url, BASE, b"", 5.0)).status == 200
    finally:
        await client.close()
    assert server.connections == 1
    assert len(server.requests) == 2


async def test_allowed_header_bytes_go_out_unchanged(
    server: RawServer, client: SubscriberClient
) -> None:
    headers = {
        **BASE,
        "ce-subject": "tab\there, spaces, %20 and obs-text \u00e9\u00ff\u0080",
        "ce-empty": "",
        "x-" + "!#$%&'*+-.^_`|~09azAZ": "every tchar in the name",
        "Mixed-Case": "kept as given",
    }
    got = await client.post(server.url + "a%20b/c?x=1&y=%2F", headers, b"payload", 5.0)
    assert (got.status, got.error) == (200, None)
    [request] = server.requests
    lines = request.head.split(b"\r\n")
    assert lines[0] == b"POST /a%20b/c?x=1&y=%2F HTTP/1.1"
    assert lines[1] == f"host: 127.0.0.1:{server.port}".encode()
    expected = [f"{name}: {value}".encode("latin-1") for name, value in headers.items()]
    assert lines[2 : 2 + len(headers)] == expected
    assert lines[2 + len(headers)] == b"content-length: 7"
    assert request.body == b"payload"


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("", "/"),
        ("hook", "/hook"),
        ("a b/\u00e9?q=a b&r=\u00e9", "/a%20b/%C3%A9?q=a%20b&r=%C3%A9"),
        ("100%/x?p=50%", "/100%25/x?p=50%25"),
        ("x?a=1#fragment", "/x?a=1"),
        ("p;params/@:!$&'()*+,=~?k=/?:@", "/p;params/@:!$&'()*+,=~?k=/?:@"),
    ],
)
async def test_request_targets_are_valid_http(
    server: RawServer, client: SubscriberClient, path: str, target: str
) -> None:
    got = await client.post(server.url + path, BASE, b"", 5.0)
    assert (got.status, got.error) == (200, None)
    assert server.requests[-1].target == target


async def test_a_url_that_cannot_be_sent_is_permanent(client: SubscriberClient) -> None:
    for url in ("ftp://127.0.0.1/", "http://exa mple.com/", "http://127.0.0.1:99999/"):
        got = await client.post(url, BASE, b"", 5.0)
        assert got.status == -1
        assert got.permanent, url
        assert got.error is not None
        assert got.error.startswith("request not sent: "), got.error


# --- proxies -------------------------------------------------------------------------------------


async def test_proxy_variables_log_one_warning_and_deliveries_go_direct(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    bridge_factory: Callable[..., Awaitable[Running]],
    subscriber_factory: Callable[..., Awaitable[Any]],
) -> None:
    dead_proxy = "http://127.0.0.1:9/"  # the discard port: nothing listens
    monkeypatch.setenv("HTTPS_PROXY", dead_proxy)
    monkeypatch.setenv("http_proxy", dead_proxy)
    monkeypatch.setenv("NO_PROXY", "example.com")
    sub = await subscriber_factory()
    caplog.set_level(logging.WARNING, logger="bridge")
    running = await bridge_factory(triggers=[trigger("t", sub.url)])
    warnings = [r.getMessage() for r in caplog.records if "PROXY" in r.getMessage()]
    assert warnings == [
        "HTTP_PROXY and HTTPS_PROXY and NO_PROXY are set, but bridge delivers to subscribers "
        "and dead-letter sinks directly: HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY are "
        "not supported"
    ]
    status, _, _ = await running.post(
        "/", body=b"x", headers={**BASE, "ce-id": "direct", "content-type": "text/plain"}
    )
    assert status == 202
    await eventually(lambda: sub.ids() == ["direct"], what="the direct delivery")


async def test_no_proxy_warning_without_proxy_variables(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    bridge_factory: Callable[..., Awaitable[Running]],
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    caplog.set_level(logging.WARNING, logger="bridge")
    await bridge_factory(triggers=[trigger("t", "http://127.0.0.1:9/")])
    assert not [r for r in caplog.records if "PROXY" in r.getMessage()]


async def test_a_refused_connection_marks_the_subscriber_unreachable(
    client: SubscriberClient,
) -> None:
    got = await client.post(f"http://127.0.0.1:{free_port()}/", dict(BASE), b"", 5.0)
    assert got.status == -1
    assert got.unreachable
    assert not got.permanent
    assert "connection refused" in (got.error or "")


async def test_an_unknown_host_is_unreachable(client: SubscriberClient) -> None:
    got = await client.post("http://no-such-host.invalid/", dict(BASE), b"", 5.0)
    assert (got.status, got.unreachable) == (-1, True)


async def test_a_timeout_or_an_answer_is_not_unreachable(
    client: SubscriberClient, server: RawServer
) -> None:
    async def silent(conn: RawConnection) -> None:
        await conn.request()
        await asyncio.sleep(5)

    answered = await client.post(server.url, dict(BASE), b"", 5.0)
    assert (answered.status, answered.unreachable) == (200, False)
    quiet = await RawServer(silent).start()
    try:
        timed_out = await client.post(quiet.url, dict(BASE), b"", 0.2)
    finally:
        await quiet.close()
    assert (timed_out.status, timed_out.unreachable) == (-1, False)
