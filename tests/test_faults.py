"""Faults under load, against the real RabbitMQ: nothing accepted (202) is ever lost.

Each test prints its counts (sent, accepted, delivered) as a `FAULT-COUNTS` line.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import AMQP_BASE, eventually, queue_depth, trigger
from tests.daemon import Daemon, Load, TCPProxy

RABBITMQCTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
TYPE = "oss:ObjectCreated:PutObject"
FILTER = {"attributes": {"source": "acs.oss", "type": TYPE}}


def report(name: str, load: Load, received: list[str]) -> None:
    delivered = set(received)
    print(
        "FAULT-COUNTS",
        json.dumps(
            {
                "test": name,
                "sent": load.sent,
                "accepted": len(load.accepted),
                "delivered_unique": len(delivered & set(load.accepted)),
                "deliveries": len(received),
                "statuses": load.statuses,
            }
        ),
    )


async def all_delivered(load: Load, sub, timeout: float = 60.0) -> None:
    accepted = set(load.accepted)
    await eventually(
        lambda: accepted <= set(sub.ids()),
        timeout=timeout,
        what=f"all {len(accepted)} accepted events to be delivered "
        f"(missing {len(accepted - set(sub.ids()))})",
    )


async def test_kill9_under_load_loses_no_accepted_event(
    tmp_path: Path, amqp_url, subscriber_factory
):
    sub = await subscriber_factory()
    daemon = Daemon(tmp_path, amqp_url, [trigger("t", sub.url, filter=FILTER)])
    try:
        daemon.start()
        await daemon.wait_ready()
        load = Load(daemon.url)
        sender = asyncio.create_task(load.run(None, concurrency=8))
        await eventually(lambda: len(load.accepted) > 300, what="load to build up")
        daemon.kill9()  # mid-flight: requests, publishes and deliveries all interrupted
        await asyncio.sleep(0.5)
        load.stop = True
        await sender
        daemon.start()
        await daemon.wait_ready()
        await all_delivered(load, sub)
        report("kill -9 under load", load, sub.ids())
        assert load.statuses.get(-1, 0) >= 1  # the kill really happened under load
    finally:
        daemon.stop()


def _rabbitmqctl(*args: str) -> None:
    subprocess.run([RABBITMQCTL, "-q", *args], check=True, capture_output=True, timeout=120)


async def test_rabbitmq_stop_start_under_load(bridge_factory, subscriber_factory):
    sub = await subscriber_factory()
    running = await bridge_factory(
        triggers=[trigger("t", sub.url, filter=FILTER)], rabbitmq={"publish_timeout": 2}
    )
    app = running.app
    load = Load(running.url)
    slowest = 0.0

    async def timed_load() -> None:
        nonlocal slowest
        async with aiohttp.ClientSession() as session:
            while not load.stop:
                started = time.monotonic()
                event = {
                    "specversion": "1.0",
                    "id": f"probe-{time.monotonic_ns()}",
                    "source": "acs.oss",
                    "type": "probe",
                }
                async with session.post(running.url, json=event) as r:
                    await r.read()
                slowest = max(slowest, time.monotonic() - started)
                await asyncio.sleep(0.05)

    sender = asyncio.create_task(load.run(None, concurrency=4, pause=0.01))
    prober = asyncio.create_task(timed_load())
    try:
        await eventually(lambda: len(load.accepted) > 100, what="load to build up")
        await asyncio.to_thread(_rabbitmqctl, "stop_app")
        await asyncio.sleep(2)
        assert app.not_ready_reason() is not None
        async with aiohttp.ClientSession() as session, session.get(running.admin + "readyz") as r:
            assert r.status == 503
    finally:
        await asyncio.to_thread(_rabbitmqctl, "start_app")
        await asyncio.to_thread(_rabbitmqctl, "await_startup")
    await eventually(lambda: app.not_ready_reason() is None, timeout=60, what="recovery")
    accepted_at_recovery = len(load.accepted)
    await eventually(lambda: len(load.accepted) > accepted_at_recovery + 100, what="load to resume")
    load.stop = True
    await asyncio.gather(sender, prober)
    await all_delivered(load, sub)
    report("rabbitmqctl stop_app/start_app under load", load, sub.ids())
    assert load.statuses.get(503, 0) > 0  # answered 503 while RabbitMQ was down
    assert slowest < 10, f"a request hung for {slowest:.1f}s while RabbitMQ was down"
    assert app.link.fatal is None  # never gave up
    assert not app.stopped.is_set()


async def test_tcp_cut_and_stall_between_bridge_and_rabbitmq(
    vhost_pool, bridge_factory, subscriber_factory
):
    proxy = TCPProxy(5672)
    await proxy.start()
    vhost = vhost_pool.take()
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}?heartbeat=2"
    sub = await subscriber_factory()
    running = await bridge_factory(
        triggers=[trigger("t", sub.url, filter=FILTER)],
        url=url,
        rabbitmq={"publish_timeout": 1, "reconnect_max_delay": 1},
    )
    app = running.app
    load = Load(running.url)
    sender = asyncio.create_task(load.run(None, concurrency=4, pause=0.01))
    try:
        await eventually(lambda: len(load.accepted) > 100, what="load")
        connects = app.link.connects
        proxy.cut()
        await eventually(lambda: app.link.connects > connects, timeout=30, what="reconnect")
        before = len(load.accepted)
        await eventually(lambda: len(load.accepted) > before + 50, what="load after the cut")
        proxy.stalled = True  # the link goes silent: no RST, nothing arrives
        await asyncio.sleep(8)  # heartbeats (2 s) notice it
        proxy.stalled = False
        proxy.cut()
        await eventually(lambda: app.not_ready_reason() is None, timeout=30, what="recovery")
        before = len(load.accepted)
        await eventually(lambda: len(load.accepted) > before + 50, what="load after the stall")
    finally:
        load.stop = True
        await sender
    await all_delivered(load, sub)
    report("TCP cut and stall", load, sub.ids())
    assert load.statuses.get(503, 0) > 0
    await proxy.close()


async def test_sigterm_under_load_drains_and_exits_zero(
    tmp_path: Path, amqp_url, subscriber_factory
):
    async def slow(rec):
        await asyncio.sleep(0.05)
        return (200, {}, b"")

    sub = await subscriber_factory(responder=slow)
    daemon = Daemon(tmp_path, amqp_url, [trigger("t", sub.url, filter=FILTER)])
    try:
        daemon.start()
        await daemon.wait_ready()
        load = Load(daemon.url)
        sender = asyncio.create_task(load.run(None, concurrency=8))
        await eventually(lambda: len(load.accepted) > 300, what="load to build up")
        daemon.signal(signal.SIGTERM)
        code = await daemon.wait_exit(20)
        load.stop = True
        await sender
        assert code == 0, daemon.logs()
        assert "drained" in daemon.logs()
        daemon.start()  # what was accepted but not yet delivered is still in RabbitMQ
        await daemon.wait_ready()
        await all_delivered(load, sub)
        report("SIGTERM under load", load, sub.ids())
    finally:
        daemon.stop()


async def test_sighup_adds_and_removes_triggers_under_load(
    tmp_path: Path, amqp_url, amqp, subscriber_factory
):
    sub_a = await subscriber_factory()
    sub_b = await subscriber_factory()
    a = trigger("a", sub_a.url, filter=FILTER)
    b = trigger("b", sub_b.url, filter=FILTER)
    daemon = Daemon(tmp_path, amqp_url, [a])
    try:
        daemon.start()
        await daemon.wait_ready()
        load = Load(daemon.url)
        sender = asyncio.create_task(load.run(None, concurrency=4, pause=0.005))
        await eventually(lambda: len(load.accepted) > 100, what="load")
        daemon.write_config([a, b])
        daemon.signal(signal.SIGHUP)
        await eventually(lambda: len(sub_b.received) > 50, timeout=20, what="trigger b to receive")
        daemon.write_config([b])
        daemon.signal(signal.SIGHUP)
        await eventually(lambda: "reloaded: 1 trigger" in daemon.logs(), timeout=20, what="reload")
        removed_at = len(load.accepted)
        await eventually(lambda: len(load.accepted) > removed_at + 100, what="more load")
        load.stop = True
        await sender
        # Every accepted event reached b, or a while a was configured; none was lost in a reload.
        await eventually(
            lambda: set(load.accepted) <= set(sub_a.ids()) | set(sub_b.ids()),
            timeout=30,
            what="every accepted event delivered",
        )
        a_count = len(sub_a.received)
        await asyncio.sleep(1)
        assert len(sub_a.received) == a_count  # a's consumer stopped
        # a's queue is kept: the passive declare raises (failing the test) once it is gone.
        await queue_depth(amqp, "bridge.trigger.default.a")
        assert len(sub_a.ids()) == len(set(sub_a.ids()))  # no duplicates from the reloads
        assert daemon.proc is not None
        assert daemon.proc.poll() is None
        report("SIGHUP add/remove under load", load, sub_a.ids() + sub_b.ids())
    finally:
        daemon.stop()


async def test_two_daemons_share_the_work(tmp_path: Path, amqp_url, subscriber_factory):
    sub = await subscriber_factory()
    triggers = [trigger("t", sub.url, filter=FILTER)]
    one = Daemon(tmp_path, amqp_url, triggers, name="one")
    two = Daemon(tmp_path, amqp_url, triggers, name="two")
    try:
        one.start()
        two.start()
        await one.wait_ready()
        await two.wait_ready()
        loads = [Load(one.url), Load(two.url)]
        await asyncio.gather(*(load.run(400, concurrency=4) for load in loads))
        accepted = set(loads[0].accepted) | set(loads[1].accepted)
        await eventually(lambda: accepted <= set(sub.ids()), timeout=60, what="all delivered")
        assert len(sub.ids()) == len(set(sub.ids())), "no crash, so no duplicate"
        async with aiohttp.ClientSession() as session:
            for daemon in (one, two):
                async with session.get(f"http://127.0.0.1:{daemon.admin}/metrics") as r:
                    text = await r.text()
                delivered = sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("bridge_deliveries_total{")
                )
                assert delivered > 0, f"{daemon.config.name} delivered nothing"
        merged = Load("")
        merged.sent = loads[0].sent + loads[1].sent
        merged.accepted = loads[0].accepted + loads[1].accepted
        report("two daemons on one broker", merged, sub.ids())
    finally:
        one.stop()
        two.stop()


async def test_systemd_notify_protocol(tmp_path: Path, amqp_url, subscriber_factory):
    sub = await subscriber_factory()
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    daemon = Daemon(
        tmp_path,
        amqp_url,
        [trigger("t", sub.url, filter=FILTER)],
        env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"},
    )
    messages: list[str] = []

    def drain() -> None:
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except BlockingIOError:
                return

    try:
        daemon.start()
        await daemon.wait_ready()
        await eventually(
            lambda: (drain(), any("READY=1" in m for m in messages))[1], what="READY=1"
        )
        await eventually(
            lambda: (drain(), sum("WATCHDOG=1" in m for m in messages) >= 2)[1],
            what="watchdog pings",
        )
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit(20) == 0
        drain()
        assert any("STOPPING=1" in m for m in messages)
        ready_at = next(i for i, m in enumerate(messages) if "READY=1" in m)
        stopping_at = next(i for i, m in enumerate(messages) if "STOPPING=1" in m)
        assert ready_at < stopping_at
    finally:
        daemon.stop()
        sock.close()


@pytest.fixture(autouse=True)
def _rabbitmq_running():
    """A fault test that stopped RabbitMQ must not leave it stopped for the next test."""
    yield
    probe = socket.socket()
    try:
        probe.settimeout(1)
        probe.connect(("127.0.0.1", 5672))
    except OSError:
        subprocess.run([RABBITMQCTL, "-q", "start_app"], check=False, timeout=120)
    finally:
        probe.close()


__all__ = ["AMQP_BASE"]


def _restore(watermark: str) -> None:
    if watermark.startswith("{absolute,"):
        _rabbitmqctl("set_vm_memory_high_watermark", "absolute", watermark[10:-1])
    else:
        _rabbitmqctl("set_vm_memory_high_watermark", watermark)


def _rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        [RABBITMQCTL, *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


async def test_memory_alarm_answers_503_at_once_stores_nothing_and_reports_not_ready(
    bridge_factory, subscriber_factory
):
    """Finding 10: under a RabbitMQ resource alarm every request used to wait publish_timeout
    and get 503 although the event was stored (and delivered later), with /readyz still 200.
    Now: 503 + Retry-After without publishing, and not ready until the alarm clears."""
    sub = await subscriber_factory()
    running = await bridge_factory(
        triggers=[trigger("t", sub.url, filter=FILTER)],
        # A wait for the confirm would outlast the client's 10 s timeout below.
        rabbitmq={"publish_timeout": 60},
    )
    headers = {"ce-specversion": "1.0", "ce-source": "acs.oss", "ce-type": TYPE}
    timeout = aiohttp.ClientTimeout(total=10)

    async def send(session: aiohttp.ClientSession, event_id: str) -> tuple[int, dict, bytes]:
        async with session.post(
            running.url, data=b"{}", headers={**headers, "ce-id": event_id}
        ) as r:
            return r.status, dict(r.headers), await r.read()

    async def ready(session: aiohttp.ClientSession) -> tuple[int, bytes]:
        async with session.get(running.admin + "readyz") as r:
            return r.status, await r.read()

    watermark = _rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip()
    async with aiohttp.ClientSession(timeout=timeout) as session:
        assert (await send(session, "before"))[0] == 202
        refused: list[str] = []
        try:
            _rabbitmqctl("set_vm_memory_high_watermark", "0.0000001")
            # RabbitMQ tells a connection it is blocked when it first publishes during an
            # alarm; that first publish waits in RabbitMQ (stored once the alarm clears).
            async with aiohttp.ClientSession() as probe_session:
                probe = asyncio.ensure_future(send(probe_session, "first-during"))

                async def not_ready() -> bool:
                    status, body = await ready(session)
                    return status == 503 and b"blocks publishing" in body

                await eventually(not_ready, timeout=30, what="/readyz to report the alarm")
                for i in range(5):
                    status, answer_headers, body = await send(session, f"during-{i}")
                    assert status == 503, body
                    assert "retry-after" in {k.lower() for k in answer_headers}
                    assert b"resource alarm" in body
                    refused.append(f"during-{i}")
                assert not probe.done()
                _restore(watermark)
                # The first publish was waiting for its confirm, within publish_timeout: 202.
                assert (await probe)[0] == 202
        finally:
            _restore(watermark)

        async def is_ready() -> bool:
            return (await ready(session))[0] == 200

        await eventually(is_ready, timeout=30, what="/readyz once the alarm cleared")
        assert (await send(session, "after"))[0] == 202
    await eventually(lambda: "after" in sub.ids(), timeout=20, what="the event sent after")
    assert {"before", "first-during"} <= set(sub.ids())
    assert not set(refused) & set(sub.ids()), "an event answered 503 was stored and delivered"
