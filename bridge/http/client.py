"""The subscriber client: one HTTP POST per delivery attempt, with a per-attempt timeout.

aiohttp is the client because it is measured to be the fastest here (see the README's "Choices"
section): httpx's own transport was several times slower on this hot path. Transport failures and
timeouts become an `Answer` with status -1; nothing from aiohttp leaks to callers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy

from bridge.delivery import NO_RESPONSE
from bridge.redact import redact_text

# A reply bigger than this is not read (and so not taken as a reply event).
MAX_REPLY_BYTES = 4 * 1024 * 1024


@dataclass(slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    error: str | None
    seconds: float


class SubscriberClient:
    def __init__(self, max_connections: int = 1024) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._max_connections = max_connections
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                headers={"User-Agent": "bridge"},
                raise_for_status=False,
            )
        return self._session

    def _timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            timeout = self._timeouts[seconds] = aiohttp.ClientTimeout(total=seconds)
        return timeout

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: float) -> Answer:
        session = self._get_session()
        started = time.monotonic()
        try:
            async with session.post(
                url, data=body, headers=headers, timeout=self._timeout(timeout)
            ) as response:
                reply = await _read_capped(response)
                return Answer(
                    response.status,
                    _headers(response.headers),
                    reply,
                    None,
                    time.monotonic() - started,
                )
        except TimeoutError:
            return Answer(
                NO_RESPONSE, {}, b"", f"no answer within {timeout:g}s", time.monotonic() - started
            )
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or exc.os_error.__class__.__name__
            text = f"cannot connect to {exc.host}:{exc.port} ({reason.lower()})"
            return Answer(NO_RESPONSE, {}, b"", text, time.monotonic() - started)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            text = redact_text(str(exc) or exc.__class__.__name__)
            return Answer(NO_RESPONSE, {}, b"", text, time.monotonic() - started)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            await asyncio.sleep(0)


def _headers(raw: CIMultiDictProxy[str]) -> dict[str, str]:
    return {k.lower(): v for k, v in raw.items()}


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    length = response.content_length
    if length is not None and length > MAX_REPLY_BYTES:
        return b""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > MAX_REPLY_BYTES:
            return b""
        chunks.append(chunk)
    return b"".join(chunks)
