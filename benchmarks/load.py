"""Open-loop load generator: POST the reference OSS event at a fixed rate (or as fast as allowed).

Each event gets a fresh id and carries its send time as the `benchsent` extension (and the
`ce-benchsent` header, which pass-through pipelines forward), so the sink measures end-to-end
latency. Ingress latency is the time to the HTTP answer.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

SAMPLE = Path(__file__).resolve().parent.parent / "bridge" / "samples" / "oss-put-object.json"


def event_body(pad: int = 0) -> tuple[bytes, bytes]:
    """The envelope split around the id and send time, so each request is one join."""
    event = json.loads(SAMPLE.read_text())
    if pad:
        event["data"]["pad"] = "x" * pad
    event["id"] = "@@ID@@"
    event["benchsent"] = "@@SENT@@"
    text = json.dumps(event, separators=(",", ":"))
    head, rest = text.split("@@ID@@")
    middle, tail = rest.split("@@SENT@@")
    return (head.encode(), middle.encode() + b"\x00" + tail.encode())


@dataclass
class LoadResult:
    sent: int = 0
    accepted: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def pct(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_load(
    url: str,
    total: int,
    rate: float | None,
    connections: int = 32,
    pad: int = 0,
) -> LoadResult:
    """Send `total` events at `rate`/s (None: as fast as `connections` allow)."""
    head, rest = event_body(pad)
    middle, tail = rest.split(b"\x00")
    result = LoadResult()
    semaphore = asyncio.Semaphore(connections)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            sent = time.time()
            body = head + uuid.uuid4().hex.encode() + middle + repr(sent).encode() + tail
            started = time.perf_counter()
            try:
                async with session.post(
                    url,
                    data=body,
                    headers={"content-type": "application/json", "ce-benchsent": repr(sent)},
                ) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, OSError):
                status = -1
            finally:
                semaphore.release()
            result.latencies.append(time.perf_counter() - started)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if 200 <= status < 300:
                result.accepted += 1

        tasks = []
        t0 = time.perf_counter()
        for i in range(total):
            if rate is not None:
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await semaphore.acquire()
            tasks.append(asyncio.create_task(one()))
            result.sent += 1
        await asyncio.gather(*tasks)
        result.seconds = time.perf_counter() - t0
    return result
