"""aiormq against bridge's own AMQP client (`bridge.amqp.wire`), CPU per 10,000 messages.

`python -m benchmarks.choices_amqp [--n 10000] [--runs 3]`

Each measurement runs in a fresh Python process (uvloop, bridge's table/properties codecs
installed, as in bridge) against the same local RabbitMQ, on a quorum queue of its own:

(a) publish: N confirmed persistent publishes of the 1 KB reference event with 12 `ce-*`
    headers, 256 in flight (256 tasks, each awaiting its publish's confirm, as ingress
    requests do);
(b) consume: the same N messages consumed with prefetch 256, each handed to an async handler
    (a task per message, as the dispatcher gets) that acknowledges it singly.

The process's CPU time (user + system, `resource.getrusage`) is taken around each phase, after
a warm-up of 1,000 messages. Runs alternate clients (aiormq, wire, aiormq, ...); the table shows
the medians and the ratio aiormq / wire. "wire, inline ack" is the wire client with the ack
written from the delivery callback itself (no task), for reference only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = (ROOT / "bridge" / "samples" / "oss-put-object.json").read_bytes()[:1024]
AMQP = "amqp://guest:guest@127.0.0.1:5672/"
INFLIGHT = 256
PREFETCH = 256
WARMUP = 1000
CLIENTS = ("aiormq", "wire", "wire-inline")


def headers(i: int) -> dict[str, Any]:
    return {
        "ce-specversion": "1.0",
        "ce-id": f"0c7a3c2e-5d3f-4c6e-9a51-{i:012d}",
        "ce-source": "acs.oss",
        "ce-type": "oss:ObjectCreated:PutObject",
        "ce-subject": "acs:oss:cn-hangzhou:1581204543170042:knative/demo.data",
        "ce-time": "2023-02-07T09:52:31.000Z",
        "ce-aliyunaccountid": "1581204543170042",
        "ce-aliyuneventbusname": "default",
        "ce-aliyunpublishaddr": "10.10.XX.XX",
        "ce-aliyunpublishtime": "2023-02-07T09:52:31.526PRC",
        "ce-aliyunregionid": "cn-hangzhou",
        "ce-traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    }


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _pipelined(n: int, publish_one: Any) -> None:
    per_worker, extra = divmod(n, INFLIGHT)

    async def worker(count: int, base: int) -> None:
        for i in range(count):
            await publish_one(base + i)

    tasks = []
    base = 0
    for w in range(INFLIGHT):
        count = per_worker + (1 if w < extra else 0)
        tasks.append(asyncio.ensure_future(worker(count, base)))
        base += count
    await asyncio.gather(*tasks)


async def run_aiormq(queue: str, n: int) -> dict[str, float]:
    import aiormq

    conn = await aiormq.connect(AMQP)
    ch = await conn.channel(publisher_confirms=True)
    await ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    properties = aiormq.spec.Basic.Properties

    async def publish_one(i: int) -> None:
        await ch.basic_publish(
            SAMPLE,
            routing_key=queue,
            properties=properties(
                delivery_mode=2,
                headers=headers(i),
                content_type="application/json",
                message_id=f"m{i}",
            ),
            timeout=30,
            wait=False,  # as bridge's publisher: the confirm is what counts
        )

    async def consume(count: int) -> None:
        consumer = await conn.channel()
        await consumer.basic_qos(prefetch_count=PREFETCH)
        done = asyncio.Event()
        seen = 0

        async def on_message(message: Any) -> None:
            nonlocal seen
            await consumer.basic_ack(message.delivery.delivery_tag, wait=False)
            seen += 1
            if seen == count:
                done.set()

        ok = await consumer.basic_consume(queue, on_message)
        await done.wait()
        await consumer.basic_cancel(ok.consumer_tag)
        await consumer.close()

    out = await _measure(n, publish_one, consume)
    await ch.queue_delete(queue)
    await conn.close()
    return out


async def run_wire(queue: str, n: int, inline: bool) -> dict[str, float]:
    from bridge.amqp import wire

    loop = asyncio.get_running_loop()
    conn = await wire.connect(AMQP)
    ch = await conn.channel(publisher_confirms=True)
    await ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})

    async def publish_one(i: int) -> None:
        await ch.publish_confirmed(
            SAMPLE,
            routing_key=queue,
            properties=wire.Properties(
                delivery_mode=2,
                headers=headers(i),
                content_type="application/json",
                message_id=f"m{i}",
            ),
            timeout=30,
        )

    async def consume(count: int) -> None:
        consumer = await conn.channel()
        await consumer.basic_qos(prefetch_count=PREFETCH)
        done = asyncio.Event()
        seen = 0

        async def handle(message: wire.Message) -> None:
            nonlocal seen
            consumer.basic_ack(message.delivery_tag)
            seen += 1
            if seen == count:
                done.set()

        tasks: set[asyncio.Task[None]] = set()

        def on_message(message: wire.Message) -> None:
            nonlocal seen
            if inline:
                consumer.basic_ack(message.delivery_tag)
                seen += 1
                if seen == count:
                    done.set()
            else:  # as bridge's consumer does
                task = loop.create_task(handle(message))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        tag = await consumer.basic_consume(queue, on_message)
        await done.wait()
        await consumer.basic_cancel(tag)
        await consumer.close()

    out = await _measure(n, publish_one, consume)
    await ch.queue_delete(queue)
    await conn.close()
    return out


async def _measure(n: int, publish_one: Any, consume: Any) -> dict[str, float]:
    await _pipelined(WARMUP, publish_one)
    await consume(WARMUP)
    c0, t0 = cpu(), time.perf_counter()
    await _pipelined(n, publish_one)
    c1, t1 = cpu(), time.perf_counter()
    await consume(n)
    c2, t2 = cpu(), time.perf_counter()
    return {
        "publish_cpu": c1 - c0,
        "publish_wall": t1 - t0,
        "consume_cpu": c2 - c1,
        "consume_wall": t2 - t1,
    }


def child(client: str, n: int) -> None:
    import uvloop

    import bridge.amqp  # noqa: F401 - installs bridge's codecs into pamqp, as bridge runs

    queue = f"bridge-choices-amqp-{uuid.uuid4().hex[:8]}"
    if client == "aiormq":
        result = uvloop.run(run_aiormq(queue, n))
    else:
        result = uvloop.run(run_wire(queue, n, inline=client == "wire-inline"))
    print(json.dumps(result))


def measure(client: str, n: int) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, "-m", "benchmarks.choices_amqp", "--child", client, "--n", str(n)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", choices=CLIENTS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n)
        return 0
    results: dict[str, list[dict[str, float]]] = {c: [] for c in CLIENTS}
    for run in range(args.runs):
        for client in CLIENTS:
            result = measure(client, args.n)
            results[client].append(result)
            print(
                f"run {run + 1} {client:12} publish {result['publish_cpu']:.3f} s CPU "
                f"({args.n / result['publish_wall']:,.0f}/s)  consume+ack "
                f"{result['consume_cpu']:.3f} s CPU ({args.n / result['consume_wall']:,.0f}/s)",
                flush=True,
            )
    scale = 10_000 / args.n

    def med(client: str, key: str) -> float:
        return statistics.median(r[key] for r in results[client])

    def total(r: dict[str, float]) -> float:
        return r["publish_cpu"] + r["consume_cpu"]

    print()
    print(
        f"CPU seconds per 10,000 messages, medians of {args.runs} alternating runs "
        f"(1 KB body, 12 ce-* headers, {INFLIGHT} publishes in flight, prefetch {PREFETCH})"
    )
    print()
    print(
        "| client | (a) confirmed publish | (b) consume + ack | (a)+(b) | publish/s | consume/s |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for client in CLIENTS:
        print(
            f"| {client} | {med(client, 'publish_cpu') * scale:.3f} | "
            f"{med(client, 'consume_cpu') * scale:.3f} | "
            f"{statistics.median(total(r) for r in results[client]) * scale:.3f} | "
            f"{args.n / med(client, 'publish_wall'):,.0f} | "
            f"{args.n / med(client, 'consume_wall'):,.0f} |"
        )
    print()
    for what, key in (("(a)", "publish_cpu"), ("(b)", "consume_cpu")):
        print(f"aiormq / wire {what}: {med('aiormq', key) / med('wire', key):.2f}x")
    combined = statistics.median(total(r) for r in results["aiormq"]) / statistics.median(
        total(r) for r in results["wire"]
    )
    print(f"aiormq / wire (a)+(b): {combined:.2f}x (the bar: 1.5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
