"""`bridge status`: per trigger ready, consumers, queue depth, waiting retries, dead letters,
delivery and error rates and the last error; per broker accepted rate, unmatched and archive;
exit 0 when every trigger is ready, 1 otherwise."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.cli import main
from bridge.cli.status import render
from bridge.delivery import EffectiveDelivery
from bridge.status_report import (
    BrokerStatus,
    ReplicaStatus,
    StatusReport,
    TriggerStatus,
    delay_candidates,
    delay_owners,
)
from tests.conftest import Running, eventually, trigger, write
from tests.daemon import ROOT, toml_triggers
from tests.fakes import routes_for, trigger_spec

# --- which delay queues a trigger can wait in ----------------------------------------------------


def delivery(**kw: Any) -> EffectiveDelivery:
    base: dict[str, Any] = {
        "retry": 10,
        "backoff_policy": "exponential",
        "backoff_delay": 0.2,
        "timeout": 30.0,
        "retry_after_max": None,
        "dead_letter_sink": None,
        "format": "binary",
    }
    return EffectiveDelivery(**{**base, **kw})


def test_delay_candidates_are_the_backoffs_and_the_capped_retry_after_levels() -> None:
    found = delay_candidates(delivery())
    backoffs = {400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 102400, 204800}
    assert backoffs <= found
    assert {1000, 2000, 5000, 60000, 3600000} <= found  # Retry-After levels up to 1 h
    assert 7000 not in found
    assert 3600001 not in found
    capped = delay_candidates(
        delivery(retry=2, backoff_policy="linear", backoff_delay=7.0, retry_after_max=30.0)
    )
    # max(backoff, min(level, cap)) for backoffs 7 s and 14 s, levels up to the 30 s cap
    assert capped == {7000, 10000, 14000, 15000, 20000, 30000}
    assert delay_candidates(delivery(retry=0)) == set()


def test_delay_queues_only_one_trigger_can_use_are_its_own() -> None:
    routes = routes_for(
        trigger_spec("a", delivery={"retry": 2, "backoffPolicy": "linear", "backoffDelay": "PT7S"}),
        trigger_spec("b"),
        trigger_spec("ordered", ordered=True),
    )
    owners = delay_owners(routes.triggers)
    assert owners["bridge.delay.7000"] == ["default/a"]
    assert owners["bridge.delay.400"] == ["default/b"]
    assert sorted(owners["bridge.delay.10000"]) == ["default/a", "default/b"]
    assert owners["bridge.delay.5000"] == ["default/b"]  # a never waits less than 7 s
    assert not any("default/ordered" in keys for keys in owners.values())  # waits in process


def test_render_is_a_kubectl_like_table() -> None:
    report = StatusReport(
        triggers=[
            TriggerStatus(
                "default/t",
                "default/b",
                "http://sub/",
                True,
                "",
                2,
                5,
                3,
                True,
                7,
                12.5,
                0.5,
                "HTTP 503 at 2026-01-01T00:00:00Z",
                1.0,
            ),
            TriggerStatus(
                "default/u",
                "default/b",
                "http://u/",
                False,
                "no replica consumes its queue",
                0,
                9,
                0,
                False,
                0,
            ),
        ],
        brokers=[BrokerStatus("default/b", 13.0, 4, 120, 250_000)],
        replicas=[ReplicaStatus("http://127.0.0.1:9090", True, True)],
        retrying_shared=6,
        shared_delay_queues=["bridge.delay.5000"],
        window=1.0,
    )
    lines = render(report)
    assert lines[0].split() == [
        "TRIGGER",
        "BROKER",
        "READY",
        "CONSUMERS",
        "QUEUED",
        "RETRYING",
        "DEAD-LETTERS",
        "DELIVERED/S",
        "ERRORS/S",
        "LAST",
        "ERROR",
        "SUBSCRIBER_URI",
    ]
    assert lines[1].split()[:9] == [
        "default/t",
        "default/b",
        "True",
        "2",
        "5",
        "3*",
        "7",
        "12.5",
        "0.5",
    ]
    assert lines[2].split()[:10] == [
        "default/u",
        "default/b",
        "False",
        "0",
        "9",
        "0",
        "0",
        "-",
        "-",
        "-",
    ]
    text = "\n".join(lines)
    assert "default/u is not ready: no replica consumes its queue." in text
    assert "default/b  13.0        4          120 events, ~250.0 kB" in text
    assert (
        "* 6 more event(s) wait in delay queues several triggers share (bridge.delay.5000)." in text
    )
    assert not report.ready


# --- against a running bridge --------------------------------------------------------------------


def status_config(path: Path, amqp_url: str, admin: str, triggers: list[dict[str, Any]]) -> Path:
    port = admin.rstrip("/").rsplit(":", 1)[1]
    return write(
        path,
        f'[rabbitmq]\nurl = "{amqp_url}"\n[admin]\nport = {port}\n'
        '[[archives]]\nbroker = "default/eventbridge-default-broker"\n\n'
        + toml_triggers(triggers)
        + "\n",
    )


async def run_status(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "status",
        *args,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode(), err.decode()


def watch(config: Path) -> subprocess.Popen[bytes]:
    command = ["status", "--config", str(config), "--watch", "--interval", "0.3", "--json"]
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", *command],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def post(running: Running, kind: str, n: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            event = {
                "specversion": "1.0",
                "id": uuid.uuid4().hex,
                "source": "acs.oss",
                "type": kind,
            }
            async with session.post(running.url, json=event) as r:
                assert r.status == 202


async def test_status_of_a_running_bridge(
    bridge_factory, subscriber_factory, amqp_url: str, tmp_path: Path
) -> None:
    ok = await subscriber_factory()
    flaky = await subscriber_factory(script=[(503, {}, b"")])
    bad = await subscriber_factory(script=[(400, {}, b"")])
    only_t = {"attributes": {"type": "t"}}
    triggers = [
        trigger("ok", ok.url, filter=only_t),
        trigger(
            "flaky",
            flaky.url,
            filter=only_t,
            delivery={"retry": 2, "backoffPolicy": "linear", "backoffDelay": "PT7S"},
        ),
        trigger("bad", bad.url, filter=only_t),
    ]
    running = await bridge_factory(
        triggers=triggers, archives=[{"broker": "default/eventbridge-default-broker"}]
    )
    await post(running, "t", 5)
    await eventually(
        lambda: len(ok.received) == 5 and len(bad.received) == 5 and len(flaky.received) == 5,
        what="first attempts",
    )
    config = status_config(tmp_path / "status.toml", amqp_url, running.admin, triggers)
    stop = asyncio.Event()

    async def unmatched() -> None:  # accepted (a rate to measure), matching no trigger
        while not stop.is_set():
            await post(running, "other", 1)
            await asyncio.sleep(0.02)

    sender = asyncio.create_task(unmatched())
    try:
        code, out, err = await run_status("--config", str(config), "--json")
    finally:
        stop.set()
        await sender
    assert code == 0, err
    report = json.loads(out)
    assert report["ready"] is True
    rows = {t["trigger"]: t for t in report["triggers"]}
    assert rows["default/ok"]["consumers"] == 1
    assert rows["default/ok"]["ready"] is True
    assert rows["default/ok"]["depth"] == 0
    assert rows["default/ok"]["last_error"] is None
    assert rows["default/flaky"]["retrying"] == 5  # in bridge.delay.7000, its own
    assert rows["default/flaky"]["last_error"].startswith("HTTP 503 at ")
    assert rows["default/bad"]["dead_letters"] == 5
    assert rows["default/bad"]["last_error"].startswith("HTTP 400 at ")
    assert isinstance(rows["default/ok"]["delivery_rate"], float)
    broker = report["brokers"][0]
    assert broker["broker"] == "default/eventbridge-default-broker"
    assert broker["unmatched"] >= 1
    assert broker["accepted_rate"] > 0
    assert broker["archive_events"] >= 5
    assert report["replicas"] == [
        {"url": running.admin.rstrip("/"), "reachable": True, "ready": True, "reason": ""}
    ]
    # The table, for people.
    code, out, _ = await run_status("--config", str(config))
    assert code == 0
    assert out.splitlines()[0].startswith("TRIGGER")
    assert "default/flaky" in out
    assert "HTTP 503 at" in out

    # Watch: a JSON line per refresh until interrupted; the exit code is the last one's.
    proc = watch(config)
    assert proc.stdout is not None
    lines = [await asyncio.to_thread(proc.stdout.readline) for _ in range(2)]
    proc.send_signal(signal.SIGINT)
    _, err_text = await asyncio.to_thread(proc.communicate, None, 20)  # closes the pipes
    assert proc.returncode == 0, err_text
    assert all(json.loads(line)["ready"] for line in lines)

    # No replica running: no consumer, not ready, exit 1; the rates are omitted with a note.
    await running.app.drain()
    code, out, err = await run_status("--config", str(config), "--json")
    assert code == 1, err
    report = json.loads(out)
    assert report["ready"] is False
    assert {t["reason"] for t in report["triggers"]} == {"no replica consumes its queue"}
    assert all(t["delivery_rate"] is None for t in report["triggers"])
    assert "rates are omitted" in " ".join(report["notes"])


def test_status_without_rabbitmq_is_one_sentence_and_exit_1(
    tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "c.toml", '[rabbitmq]\nurl = "amqp://guest:guest@127.0.0.1:9/"\n')
    assert main(["status", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bridge: RabbitMQ is unavailable")
    assert "Traceback" not in err
    assert os.linesep not in err.rstrip("\n")
