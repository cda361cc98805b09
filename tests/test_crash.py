"""kill -9 at the two moments that matter for dead letters and retries: while an event waits for
its next attempt (RabbitMQ must hold it, not the daemon), and in the middle of a `bridge dlq
replay` of hundreds of dead letters (a dead letter may be duplicated, never lost)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Received, Reply, eventually, queue_depth
from tests.daemon import ROOT, Daemon
from tests.helpers import (
    batch,
    bridge_cli,
    cli_env,
    depth_is,
    event_ids,
    json_lines,
    post_batch,
    summary,
)

QUEUE = "bridge.trigger.default.t"
DLQ = "bridge.dlq.default.t"


@pytest.fixture
async def daemons(tmp_path: Path, amqp_url: str) -> AsyncIterator[Callable[..., Daemon]]:
    """Make `python -m bridge run` daemons on this test's vhost; all are killed at the end."""
    made: list[Daemon] = []

    def make(triggers: list[dict[str, Any]], name: str) -> Daemon:
        daemon = Daemon(
            tmp_path, amqp_url, triggers, extra='[logging]\nlevel = "warning"', name=name
        )
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.stop()


async def post_one(url: str, event_id: str) -> None:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "test",
        "ce-type": "crash.test",
        "content-type": "text/plain",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=b"x", headers=headers) as r,
    ):
        assert r.status == 202, await r.text()


async def test_a_waiting_retry_survives_kill_9_of_the_daemon(amqp, daemons, subscriber_factory):
    sub = await subscriber_factory(script=[(503, {}, b""), (200, {}, b"")])
    spec = {
        "name": "t",
        "broker": "eventbridge-default-broker",
        "subscriber": {"uri": sub.url},
        "delivery": {"retry": 3, "backoffPolicy": "linear", "backoffDelay": "PT2S"},
    }
    first = daemons([spec], "first")
    first.start()
    await first.wait_ready()
    await post_one(first.url, "survivor")
    await eventually(lambda: len(sub.received) == 1, what="the first attempt")
    # The retry waits in RabbitMQ, not in the daemon: the daemon holds nothing any more.
    await eventually(
        lambda: depth_is(amqp, "bridge.delay.2000", 1), what="the retry in its delay queue"
    )
    first.kill9()
    assert first.proc is not None
    assert first.proc.returncode == -signal.SIGKILL
    # With no daemon at all, the expired retry goes back to the trigger's queue by itself.
    await eventually(lambda: depth_is(amqp, QUEUE, 1), timeout=6, what="the retry back in line")
    assert len(sub.received) == 1

    second = daemons([spec], "second")
    second.start()
    await second.wait_ready()
    await eventually(lambda: len(sub.received) == 2, timeout=15, what="the retry after restart")
    assert sub.ids() == ["survivor", "survivor"]
    assert sub.received[1].at - sub.received[0].at >= 2.0 - 0.01
    await eventually(lambda: depth_is(amqp, QUEUE, 0), what="the event acknowledged")
    assert await queue_depth(amqp, DLQ) == 0
    await asyncio.sleep(0.3)
    assert len(sub.received) == 2


M = 1000


async def test_kill_9_in_the_middle_of_a_replay_loses_nothing(amqp, daemons, subscriber_factory):
    phase = {"replaying": False}

    def answer(request: Received) -> Reply:
        return (200, {}, b"") if phase["replaying"] else (400, {}, b"")

    sub = await subscriber_factory(responder=answer)
    spec = {
        "name": "t",
        "broker": "eventbridge-default-broker",
        "subscriber": {"uri": sub.url},
        "delivery": {"retry": 0},
    }
    daemon = daemons([spec], "bridge")
    daemon.start()
    await daemon.wait_ready()
    ids = event_ids(M, "crash")
    await post_batch(daemon.url, batch(ids))
    await eventually(lambda: depth_is(amqp, DLQ, M), timeout=30, what=f"{M} dead letters")
    assert len(sub.received) == M

    phase["replaying"] = True
    replay = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "dlq",
        "replay",
        "--config",
        str(daemon.config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=ROOT,
        env=cli_env(),
    )
    try:
        await eventually(
            lambda: len(sub.received) >= M + 50 or replay.returncode is not None,
            timeout=30,
            interval=0.002,
            what="the replay to get going",
        )
        assert replay.returncode is None, "the replay ended before it could be killed"
        replay.kill()
    finally:
        with contextlib.suppress(ProcessLookupError):
            replay.kill()
        await replay.wait()
    assert replay.returncode == -signal.SIGKILL

    # Let what was re-published reach the subscriber.
    await eventually(lambda: depth_is(amqp, QUEUE, 0), what="the trigger queue to drain")
    settled = -1
    while settled != len(sub.received):
        settled = len(sub.received)
        await asyncio.sleep(0.3)
    redelivered = {r.headers["ce-id"] for r in sub.received[M:]}
    code, out, err = await bridge_cli(
        daemon.config, "dlq", "list", "--json", "--limit", str(10 * M)
    )
    assert code == 0, err
    still_dead = {row["id"] for row in json_lines(out)}
    assert len(json_lines(out)) == await queue_depth(amqp, DLQ)
    assert redelivered, "nothing was replayed before the kill"
    assert still_dead, "the replay had finished before the kill"
    missing = set(ids) - redelivered - still_dead
    assert not missing, f"{len(missing)} dead letters lost, e.g. {sorted(missing)[:5]}"

    # Finishing the replay delivers every event at least once.
    code, out, err = await bridge_cli(daemon.config, "dlq", "replay")
    assert code == 0, err
    assert summary(out) == ("replayed", len(still_dead), 0, 0)
    await eventually(
        lambda: {r.headers["ce-id"] for r in sub.received[M:]} == set(ids),
        timeout=20,
        what="every event delivered",
    )
    assert await queue_depth(amqp, DLQ) == 0
