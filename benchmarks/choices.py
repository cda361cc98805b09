"""Measure the library choices on the hot path, on this machine: `python -m benchmarks.choices`.

1. subscriber client: N POSTs of the 1 KB reference event, 32 in flight, to a local sink:
   aiohttp, httpx (its own transport), and bridge's own client (bridge.http.client);
2. AMQP: N confirmed persistent publishes (32 in flight) to a quorum queue, then consume + ack:
   aiormq (bridge's choice) and aio-pika (its object layer over aiormq);
3. JSON: parse + re-serialise the reference event: orjson and the standard library.
Prints operations per second; the README quotes them.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.run import free_port, wait_http

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = (ROOT / "bridge" / "samples" / "oss-put-object.json").read_bytes()
AMQP = "amqp://guest:guest@127.0.0.1:5672/"


async def _concurrently(n: int, inflight: int, op: Any) -> float:
    semaphore = asyncio.Semaphore(inflight)

    async def one() -> None:
        async with semaphore:
            await op()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - t0)


async def http_clients(url: str, n: int) -> dict[str, float]:
    import aiohttp
    import httpx

    from bridge.http.client import SubscriberClient

    out: dict[str, float] = {}
    headers = {"content-type": "application/json", "ce-id": "1", "ce-type": "t"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

        async def aio() -> None:
            async with session.post(url, data=SAMPLE, headers=headers) as r:
                await r.read()

        await _concurrently(500, 32, aio)
        out["aiohttp"] = await _concurrently(n, 32, aio)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits) as client:

        async def hx() -> None:
            r = await client.post(url, content=SAMPLE, headers=headers)
            await r.aread()

        await _concurrently(200, 32, hx)
        out["httpx"] = await _concurrently(max(n // 4, 500), 32, hx)
    own = SubscriberClient()

    async def ours() -> None:
        await own.post(url, dict(headers), SAMPLE, 30.0)

    await _concurrently(500, 32, ours)
    out["bridge.http.client"] = await _concurrently(n, 32, ours)
    await own.close()
    return out


async def amqp_libraries(n: int) -> dict[str, float]:
    import aio_pika
    import aiormq

    out: dict[str, float] = {}
    queue = "bridge-choices-bench"
    conn = await aiormq.connect(AMQP)
    ch = await conn.channel(publisher_confirms=True)
    await ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    await ch.queue_purge(queue)
    props = aiormq.spec.Basic.Properties(delivery_mode=2, headers={"ce-type": "t", "ce-id": "1"})

    async def pub() -> None:
        await ch.basic_publish(SAMPLE, routing_key=queue, properties=props)

    out["aiormq publish"] = await _concurrently(n, 32, pub)
    consumer = await conn.channel()
    await consumer.basic_qos(prefetch_count=256)
    done = asyncio.Event()
    count = 0

    async def on_message(message: Any) -> None:
        nonlocal count
        await consumer.basic_ack(message.delivery.delivery_tag)
        count += 1
        if count == n:
            done.set()

    t0 = time.perf_counter()
    await consumer.basic_consume(queue, on_message)
    await done.wait()
    out["aiormq consume+ack"] = n / (time.perf_counter() - t0)
    await consumer.close()
    await ch.queue_purge(queue)
    await conn.close()

    pconn = await aio_pika.connect(AMQP)
    pch = await pconn.channel(publisher_confirms=True)
    pqueue = await pch.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
    exchange = pch.default_exchange

    async def ppub() -> None:
        await exchange.publish(
            aio_pika.Message(SAMPLE, delivery_mode=2, headers={"ce-type": "t", "ce-id": "1"}),
            routing_key=queue,
        )

    out["aio-pika publish"] = await _concurrently(n, 32, ppub)
    await pch.set_qos(prefetch_count=256)
    pdone = asyncio.Event()
    pcount = 0

    async def pon(message: Any) -> None:
        nonlocal pcount
        await message.ack()
        pcount += 1
        if pcount == n:
            pdone.set()

    t0 = time.perf_counter()
    await pqueue.consume(pon)
    await pdone.wait()
    out["aio-pika consume+ack"] = n / (time.perf_counter() - t0)
    await pqueue.delete(if_unused=False, if_empty=False)
    await pconn.close()
    return out


def json_libraries(n: int) -> dict[str, float]:
    out = {}
    t0 = time.perf_counter()
    for _ in range(n):
        doc = orjson.loads(SAMPLE)
        orjson.dumps(doc["data"])
    out["orjson parse+dump"] = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(n):
        doc = json.loads(SAMPLE)
        json.dumps(doc["data"]).encode()
    out["json parse+dump"] = n / (time.perf_counter() - t0)
    return out


def main() -> int:
    port = free_port()
    sink = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
            "benchmarks.sink:app",
        ],
        cwd=ROOT,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_http(url)
        import uvloop

        results = uvloop.run(http_clients(url, 10000))
        results.update(uvloop.run(amqp_libraries(10000)))
    finally:
        sink.terminate()
        sink.wait()
    results.update(json_libraries(20000))
    for name, rate in results.items():
        print(f"{name:28} {rate:>10,.0f} /s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
