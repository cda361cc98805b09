"""`bridge run --workers N`: N processes share the ingress port and the consumers, under one
supervisor whose admin listener reports the group (merged metrics, readiness), passes SIGHUP and
SIGTERM on, and starts a worker again when it dies."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bridge.supervisor import merge_metrics, worker_count
from tests.conftest import Subscriber, eventually, trigger
from tests.daemon import Daemon, Load

QUEUE = "bridge.trigger.default.t"


# --- pure parts ---------------------------------------------------------------------------------


def test_worker_count() -> None:
    assert worker_count("1") == 1
    assert worker_count("4") == 4
    assert worker_count("auto") == (os.cpu_count() or 1)
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(ValueError, match="positive integer or auto"):
            worker_count(bad)


def test_merged_metrics_sum_counters_and_histograms_and_take_the_highest_gauge() -> None:
    one = (
        "# HELP bridge_deliveries_total Delivery attempts.\n"
        "# TYPE bridge_deliveries_total counter\n"
        'bridge_deliveries_total{trigger="a",code="200"} 3.0\n'
        'bridge_deliveries_created{trigger="a",code="200"} 1700000005.0\n'
        "# HELP bridge_latency_seconds Latency.\n"
        "# TYPE bridge_latency_seconds histogram\n"
        'bridge_latency_seconds_bucket{le="0.1"} 2.0\n'
        "bridge_latency_seconds_sum 0.25\n"
        "bridge_latency_seconds_count 3.0\n"
        "# HELP bridge_queue_depth Depth.\n"
        "# TYPE bridge_queue_depth gauge\n"
        'bridge_queue_depth{kind="trigger",owner="a"} 40.0\n'
    )
    two = (
        "# HELP bridge_deliveries_total Delivery attempts.\n"
        "# TYPE bridge_deliveries_total counter\n"
        'bridge_deliveries_total{trigger="a",code="200"} 4.0\n'
        'bridge_deliveries_total{trigger="a",code="503"} 1.0\n'
        'bridge_deliveries_created{trigger="a",code="200"} 1700000001.0\n'
        "# HELP bridge_latency_seconds Latency.\n"
        "# TYPE bridge_latency_seconds histogram\n"
        'bridge_latency_seconds_bucket{le="0.1"} 5.0\n'
        "bridge_latency_seconds_sum 0.5\n"
        "bridge_latency_seconds_count 6.0\n"
        "# HELP bridge_queue_depth Depth.\n"
        "# TYPE bridge_queue_depth gauge\n"
        'bridge_queue_depth{kind="trigger",owner="a"} 42.0\n'
    )
    merged = merge_metrics([one, two]).splitlines()
    assert merged.count("# TYPE bridge_deliveries_total counter") == 1
    assert 'bridge_deliveries_total{trigger="a",code="200"} 7.0' in merged
    assert 'bridge_deliveries_total{trigger="a",code="503"} 1.0' in merged
    assert 'bridge_deliveries_created{trigger="a",code="200"} 1700000001.0' in merged
    assert 'bridge_latency_seconds_bucket{le="0.1"} 7.0' in merged
    assert "bridge_latency_seconds_sum 0.75" in merged
    assert "bridge_latency_seconds_count 9.0" in merged
    assert 'bridge_queue_depth{kind="trigger",owner="a"} 42.0' in merged


# --- two real workers ---------------------------------------------------------------------------


@pytest.fixture
async def group(tmp_path: Path, amqp_url: str) -> AsyncIterator[Daemon]:
    daemon = Daemon(
        tmp_path,
        amqp_url,
        [],
        extra='[logging]\nlevel = "info"',
        args=("--workers", "2"),
    )
    yield daemon
    workers = children(daemon)
    daemon.stop()
    for pid in workers:  # they die with the supervisor (SIGTERM), given a moment to drain
        for _ in range(200):
            if not alive(pid):
                break
            await asyncio.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)


def children(daemon: Daemon) -> list[int]:
    assert daemon.proc is not None
    path = Path(f"/proc/{daemon.proc.pid}/task/{daemon.proc.pid}/children")
    text = path.read_text() if path.exists() else ""
    return [int(p) for p in text.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def consumers(amqp, queue: str) -> int:
    channel = await amqp.channel()
    try:
        ok = await channel.queue_declare(queue, passive=True)
        return int(ok.consumer_count)
    finally:
        await channel.close()


async def admin_get(daemon: Daemon, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{daemon.admin}{path}") as r,
    ):
        return r.status, await r.text()


async def test_two_workers_share_the_port_and_the_queue_and_report_as_one(
    group: Daemon, amqp, subscriber_factory
) -> None:
    sub: Subscriber = await subscriber_factory()
    group.write_config([trigger("t", sub.url)])
    group.start()
    await group.wait_ready()
    workers = children(group)
    assert len(workers) == 2
    assert await consumers(amqp, QUEUE) == 2  # every worker consumes the trigger's queue
    load = Load(group.url)
    await load.run(200, concurrency=16)
    assert len(load.accepted) == 200
    await eventually(lambda: len(set(sub.ids())) == 200, timeout=30, what="200 deliveries")
    status, text = await admin_get(group, "/metrics")
    assert status == 200
    accepted = [
        line
        for line in text.splitlines()
        if line.startswith("bridge_events_received_total{") and 'outcome="accepted"' in line
    ]
    assert [float(line.rsplit(" ", 1)[1]) for line in accepted] == [200.0]

    # SIGHUP reaches every worker: a new trigger gets a consumer in each
    group.write_config([trigger("t", sub.url), trigger("u", sub.url)])
    group.signal(signal.SIGHUP)

    async def both_consume_u() -> bool:
        try:
            return await consumers(amqp, "bridge.trigger.default.u") == 2
        except Exception:
            return False

    await eventually(both_consume_u, timeout=20, what="the new trigger consumed by both workers")

    # SIGTERM: every worker drains, the supervisor exits 0, nobody is left behind
    group.signal(signal.SIGTERM)
    assert await group.wait_exit(30) == 0
    assert [pid for pid in workers if alive(pid)] == []


async def test_a_worker_that_dies_is_started_again(group: Daemon, amqp, subscriber_factory):
    sub: Subscriber = await subscriber_factory()
    group.write_config([trigger("t", sub.url)])
    group.start()
    await group.wait_ready()
    first = children(group)
    os.kill(first[0], signal.SIGKILL)

    async def replaced() -> bool:
        now = children(group)
        return len(now) == 2 and first[0] not in now

    await eventually(replaced, timeout=20, what="a new worker")
    await group.wait_ready()
    assert await consumers(amqp, QUEUE) == 2
    status, _ = await admin_get(group, "/readyz")
    assert status == 200
