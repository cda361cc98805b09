"""Archive and replay against the real RabbitMQ: the stream keeps every accepted event once
(unmatched ones and replies too; not retries, not replays), with the configured retention, across
restarts; `bridge archive replay` sends an exact time window to one trigger or to every matching
one, filtered, at a rate, dry or for real, and goes on after kill -9 with `--resume`.

Where timing matters the events are written straight into the stream with chosen
`bridge-received` values (the ingress time bridge stamps), so no test waits for the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiormq
import orjson
import pytest

from bridge import names
from bridge.amqp import wire
from bridge.amqp.topology import ArchiveStream, archive_arguments, stream_max_age
from bridge.archive import (
    BATCH,
    REPLAY_EXTENSION,
    Archives,
    StreamReader,
    parse_rate,
    parse_time,
)
from bridge.cli import main
from bridge.config import load
from bridge.errors import BridgeError, ConfigError
from tests.conftest import (
    RABBITMQCTL,
    Received,
    Subscriber,
    eventually,
    loaded_for,
    settings_for,
    trigger,
)
from tests.helpers import ROOT, bridge_cli, cli_env

BROKER = "default/eventbridge-default-broker"
STREAM = "bridge.archive.default.eventbridge-default-broker"
ARCHIVE = {"broker": BROKER}
HOUR_AGO_MS = int(time.time() * 1000) - 3_600_000


# --- helpers -------------------------------------------------------------------------------------


def vhost_of(amqp_url: str) -> str:
    return unquote(urlsplit(amqp_url).path.lstrip("/"))


def event_headers(event_id: str, received: int, **attrs: str) -> dict[str, Any]:
    headers: dict[str, Any] = {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": attrs.pop("source", "test"),
        "ce-type": attrs.pop("type", "t"),
        names.RECEIVED: received,
    }
    headers.update({f"ce-{k}": v for k, v in attrs.items()})
    return headers


async def archive_directly(amqp: Any, events: list[dict[str, Any]]) -> None:
    """Append events (AMQP headers as the ingress stores them) straight to the stream."""
    channel = await amqp.channel(publisher_confirms=True)
    try:
        confirms = await asyncio.gather(
            *(
                channel.basic_publish(
                    orjson.dumps({"id": h["ce-id"]}),
                    routing_key=STREAM,
                    properties=aiormq.spec.Basic.Properties(
                        delivery_mode=2, content_type="application/json", headers=h
                    ),
                )
                for h in events
            )
        )
        assert all(isinstance(c, aiormq.spec.Basic.Ack) for c in confirms)
    finally:
        await channel.close()


@pytest.fixture
async def conn(amqp_url: str) -> AsyncIterator[wire.Connection]:
    """A connection of bridge's own AMQP client, for the operations under test."""
    connection = await wire.connect(amqp_url)
    yield connection
    await connection.close()


async def archived(conn: wire.Connection) -> list[dict[str, Any]]:
    """The headers of every message in the stream, in order."""
    out = []
    async with StreamReader(conn, STREAM, "first") as reader:
        while (message := await reader.next(0.5)) is not None:
            out.append(dict(message.headers))
    return out


def ids_of(headers: list[dict[str, Any]]) -> list[str]:
    return [str(h["ce-id"]) for h in headers]


async def settled(sub: Subscriber, at_least: int = 0, quiet: float = 0.4) -> list[Received]:
    """The subscriber's requests once at least `at_least` came and no more arrive."""
    await eventually(lambda: len(sub.received) >= at_least, timeout=20, what=f"{at_least} POSTs")
    seen = -1
    while seen != len(sub.received):
        seen = len(sub.received)
        await asyncio.sleep(quiet)
    return sub.received


def ids(received: list[Received]) -> list[str]:
    """The event ids a subscriber got, sorted (deliveries run in parallel)."""
    return sorted(r.headers["ce-id"] for r in received)


def toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return orjson.dumps(value).decode()


def write_config(path: Path, amqp_url: str, triggers: list[dict[str, Any]], **archive: Any) -> Path:
    lines = [
        "[rabbitmq]",
        f"url = {toml_value(amqp_url)}",
        "[logging]",
        'level = "warning"',
        "[[archives]]",
        *(f"{k} = {toml_value(v)}" for k, v in {**ARCHIVE, **archive}.items()),
    ]
    for spec in triggers:
        lines.append("[[triggers]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in spec.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def archives_for(conn: wire.Connection, amqp_url: str, triggers: list[dict[str, Any]]) -> Archives:
    return Archives(conn, loaded_for(settings_for(amqp_url, triggers, archives=[ARCHIVE])))


def stream_arguments(amqp_url: str, stream: str) -> dict[str, Any]:
    """The queue arguments RabbitMQ holds for `stream` (as rabbitmqctl reports them)."""
    command = [RABBITMQCTL, "-q", "list_queues", "-p", vhost_of(amqp_url), "name", "arguments"]
    out = subprocess.run(
        [*command, "--formatter", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for queue in orjson.loads(out):
        if queue["name"] == stream:
            return {name: value for name, _, value in queue["arguments"]}
    raise AssertionError(f"{stream} not in {out}")


# --- what is archived ----------------------------------------------------------------------------


async def test_every_accepted_event_is_archived_once_replies_too_retries_not(
    conn, amqp, bridge_factory, subscriber_factory
):
    """The stream hangs off both exchanges an event can enter (broker, unmatched): a matched
    event, an unmatched one and a subscriber's reply are each archived once; the retry of the
    matched event (through a delay queue and bridge.retry) is not archived again."""
    reply = {"ce-specversion": "1.0", "ce-id": "reply-1", "ce-source": "sub", "ce-type": "r"}
    sub = await subscriber_factory(script=[(503, {}, b""), (200, reply, b"")])
    running = await bridge_factory(
        triggers=[
            trigger(
                "t",
                sub.url,
                filter={"attributes": {"type": "a"}},
                delivery={"retry": 2, "backoffDelay": "PT0.05S"},
            )
        ],
        archives=[ARCHIVE],
    )
    for event_id, event_type in (("matched-1", "a"), ("unmatched-1", "u")):
        status, _, body = await running.post(
            "/default/eventbridge-default-broker",
            body=b"{}",
            headers={
                "ce-specversion": "1.0",
                "ce-id": event_id,
                "ce-source": "test",
                "ce-type": event_type,
                "content-type": "application/json",
            },
        )
        assert status == 202, body
    await eventually(lambda: len(sub.received) == 2, what="the attempt and its retry")

    async def three_archived() -> bool:
        return len(await archived(conn)) >= 3

    await eventually(three_archived, what="the reply archived")
    await asyncio.sleep(0.3)
    stored = await archived(conn)
    assert sorted(ids_of(stored)) == ["matched-1", "reply-1", "unmatched-1"]
    assert all(isinstance(h[names.RECEIVED], int) for h in stored)


async def test_retention_arguments_are_those_configured_and_cannot_change_silently(
    amqp_url, bridge_factory
):
    archive = {**ARCHIVE, "max_age": "P1DT12H", "max_bytes": 2_000_000_000}
    running = await bridge_factory(archives=[{**archive, "segment_bytes": 5_000_000}])
    assert stream_arguments(amqp_url, STREAM) == {
        "x-queue-type": "stream",
        "x-max-age": "36h",
        "x-max-length-bytes": 2_000_000_000,
        "x-stream-max-segment-size-bytes": 5_000_000,
    }
    await running.app.drain()

    changed = await bridge_factory(archives=[{**archive, "max_age": "P2D"}], wait_ready=False)
    await eventually(lambda: changed.app.link.fatal is not None, what="the declaration refused")
    message = str(changed.app.link.fatal)
    assert f"archive stream {STREAM}" in message
    assert "retention cannot change" in message
    assert "36h" in message
    assert "2D" in message


def test_max_age_becomes_rabbitmqs_form() -> None:
    assert stream_max_age(7 * 86400) == "7D"
    assert stream_max_age(36 * 3600) == "36h"
    assert stream_max_age(90 * 60) == "90m"
    assert stream_max_age(86401) == "86401s"
    assert archive_arguments(ArchiveStream(BROKER)) == {"x-queue-type": "stream"}
    assert archive_arguments(ArchiveStream(BROKER, max_age_s=3600, max_bytes=10)) == {
        "x-queue-type": "stream",
        "x-max-age": "1h",
        "x-max-length-bytes": 10,
    }


async def test_the_archive_survives_a_restart_and_a_disabled_one_stops_growing(
    conn, amqp, bridge_factory, subscriber_factory, tmp_path, amqp_url
):
    sub = await subscriber_factory()
    triggers = [trigger("t", sub.url)]
    first = await bridge_factory(triggers=triggers, archives=[ARCHIVE])
    assert (await first.post("/", body=b"{}", headers=binary("before-restart")))[0] == 202
    await first.app.drain()

    second = await bridge_factory(triggers=triggers, archives=[ARCHIVE])
    assert (await second.post("/", body=b"{}", headers=binary("after-restart")))[0] == 202
    await eventually(lambda: len(sub.received) == 2, what="both delivered")
    assert ids_of(await archived(conn)) == ["before-restart", "after-restart"]

    config = write_config(tmp_path / "c.toml", amqp_url, triggers)
    code, out, err = await bridge_cli(config, "archive", "list", "--json")
    assert code == 0, err
    [row] = [orjson.loads(line) for line in out.splitlines()]
    assert row["broker"] == BROKER
    assert row["exists"]
    assert row["enabled"]
    assert row["messages"] == 2
    assert row["bytes"] > 0
    assert row["max_age"] == "7D"
    assert row["max_bytes"] is None
    assert row["first"] <= row["last"]
    await second.app.drain()

    third = await bridge_factory(triggers=triggers, archives=[{**ARCHIVE, "enabled": False}])
    assert (await third.post("/", body=b"{}", headers=binary("while-disabled")))[0] == 202
    await eventually(lambda: len(sub.received) == 3, what="delivered while disabled")
    assert ids_of(await archived(conn)) == ["before-restart", "after-restart"]
    config = write_config(tmp_path / "c.toml", amqp_url, triggers, enabled=False)
    code, out, err = await bridge_cli(config, "archive", "list")
    assert code == 0, err
    assert "disabled (kept)" in out, out
    assert "max_age=7D" in out, out


def binary(event_id: str, event_type: str = "t") -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "test",
        "ce-type": event_type,
        "content-type": "application/json",
    }


# --- replay --------------------------------------------------------------------------------------


async def test_replay_sends_exactly_the_window_to_every_matching_trigger(
    conn, amqp, amqp_url, bridge_factory, subscriber_factory
):
    """since <= bridge-received < until, to the millisecond; each matching trigger gets its
    copy, marked with the replay id; nothing replayed is archived again; resuming a finished
    replay sends nothing."""
    a = await subscriber_factory()
    b = await subscriber_factory()
    other = await subscriber_factory()
    triggers = [
        trigger("a", a.url),
        trigger("b", b.url, filter={"attributes": {"source": "test"}}),
        trigger("other", other.url, filter={"attributes": {"type": "never"}}),
    ]
    await bridge_factory(triggers=triggers, archives=[ARCHIVE])
    since, until = HOUR_AGO_MS, HOUR_AGO_MS + 1000
    stamps = {
        "before": since - 1,
        "at-since": since,
        "middle": since + 500,
        "last-ms": until - 1,
        "at-until": until,
        "after": until + 1,
    }
    await archive_directly(amqp, [event_headers(k, v) for k, v in stamps.items()])

    archives = archives_for(conn, amqp_url, triggers)
    result = await archives.replay(archives.request(since, until))
    assert (result.replayed, result.deliveries, result.skipped, result.failed) == (3, 6, 0, 0)
    assert result.state == "done"
    wanted = ["at-since", "last-ms", "middle"]
    for sub in (a, b):
        got = await settled(sub, 3)
        assert sorted(r.headers["ce-id"] for r in got) == wanted
        assert {r.headers[REPLAY_EXTENSION] for r in got} == {result.id}
    assert other.received == []
    assert len(await archived(conn)) == len(stamps)

    again = await archives.resume(result.id)
    assert again.state == "done"
    assert again.replayed == 3
    await asyncio.sleep(0.3)
    assert len(a.received) == 3


async def test_replay_to_one_trigger_and_filters(
    amqp, amqp_url, bridge_factory, subscriber_factory, tmp_path
):
    """--trigger: only that trigger's queue (the other subscriber sees nothing), and only what
    its filter takes; --type and --source narrow the selection; the CLI prints the summary."""
    a = await subscriber_factory()
    b = await subscriber_factory()
    triggers = [
        trigger("a", a.url, filter={"attributes": {"type": "x,y"}}),
        trigger("b", b.url),
    ]
    await bridge_factory(triggers=triggers, archives=[ARCHIVE])
    events = [
        event_headers("x-1", HOUR_AGO_MS + 1, type="x"),
        event_headers("y-1", HOUR_AGO_MS + 2, type="y", source="elsewhere"),
        event_headers("z-1", HOUR_AGO_MS + 3, type="z"),
        event_headers("x-2", HOUR_AGO_MS + 4, type="x", source="elsewhere"),
    ]
    await archive_directly(amqp, events)
    config = write_config(tmp_path / "c.toml", amqp_url, triggers)
    since = "2000-01-01T00:00:00Z"

    code, out, err = await bridge_cli(
        config, "archive", "replay", "--since", since, "--trigger", "a"
    )
    assert code == 0, err
    assert re.search(r"replayed 3 event\(s\) as 3 deliveries, skipped 1, failed 0", out), out
    assert "trigger default/a" in out
    assert ids(await settled(a, 3)) == ["x-1", "x-2", "y-1"]
    assert b.received == []

    code, out, err = await bridge_cli(
        config, "archive", "replay", "--since", since, "--type", "x", "--json"
    )
    assert code == 0, err
    summary = orjson.loads(out)
    assert (summary["replayed"], summary["deliveries"], summary["skipped"]) == (2, 4, 2)
    assert summary["type"] == "x"
    assert summary["state"] == "done"
    assert "replayed 2 event(s) as 4 deliveries" in err  # the summary line, on stderr
    assert ids(await settled(b, 2)) == ["x-1", "x-2"]
    assert ids((await settled(a, 5))[3:]) == ["x-1", "x-2"]

    code, out, err = await bridge_cli(
        config, "archive", "replay", "--since", since, "--source", "elsewhere", "--trigger", "b"
    )
    assert code == 0, err
    assert ids((await settled(b, 4))[2:]) == ["x-2", "y-1"]
    assert len(a.received) == 5


async def test_dry_run_counts_and_sends_nothing(
    amqp, amqp_url, bridge_factory, subscriber_factory, tmp_path
):
    a = await subscriber_factory()
    triggers = [trigger("a", a.url, filter={"attributes": {"type": "x"}})]
    await bridge_factory(triggers=triggers, archives=[ARCHIVE])
    await archive_directly(
        amqp,
        [event_headers(f"e-{i}", HOUR_AGO_MS + i, type="x" if i % 2 else "y") for i in range(10)],
    )
    config = write_config(tmp_path / "c.toml", amqp_url, triggers)
    code, out, err = await bridge_cli(
        config, "archive", "replay", "--since", "2000-01-01T00:00:00Z", "--dry-run"
    )
    assert code == 0, err
    assert out.startswith("dry run: would replay 5 event(s) as 5 deliveries, skip 5 ("), out
    assert "started" not in err  # no replay id, no progress record
    await asyncio.sleep(0.5)
    assert a.received == []


async def test_a_returned_publish_fails_the_replay_where_it_stopped_and_resume_finishes_it(
    conn, amqp, amqp_url, bridge_factory, subscriber_factory
):
    """A publish RabbitMQ returns (the trigger's queue is gone) counts as failed, and the
    progress does not pass it: resuming once the queue is back sends from that event on."""
    a = await subscriber_factory()
    triggers = [trigger("a", a.url)]
    running = await bridge_factory(triggers=triggers, archives=[ARCHIVE])
    await archive_directly(amqp, [event_headers(f"e-{i}", HOUR_AGO_MS + i) for i in range(5)])
    await running.app.drain()
    channel = await amqp.channel()
    await channel.queue_delete("bridge.trigger.default.a")
    await channel.close()

    archives = archives_for(conn, amqp_url, triggers)
    result = await archives.replay(archives.request(HOUR_AGO_MS, HOUR_AGO_MS + 10))
    assert result.state == "failed"
    assert result.failed >= 1
    assert result.replayed == 0
    record = await archives.read_record(result.id)
    assert record is not None
    assert record["state"] == "failed"
    assert record["next_offset"] == 0  # the first event, not past it

    await bridge_factory(triggers=triggers, archives=[ARCHIVE])  # declares the queue again
    resumed = await archives.resume(result.id)
    assert (resumed.state, resumed.replayed, resumed.failed) == ("done", 5, 0)
    assert ids(await settled(a, 5)) == [f"e-{i}" for i in range(5)]


async def test_one_replay_never_runs_twice_at_once(
    conn, amqp, amqp_url, bridge_factory, subscriber_factory
):
    a = await subscriber_factory()
    triggers = [trigger("a", a.url)]
    await bridge_factory(triggers=triggers, archives=[ARCHIVE])
    await archive_directly(amqp, [event_headers(f"e-{i}", HOUR_AGO_MS + i) for i in range(40)])
    archives = archives_for(conn, amqp_url, triggers)
    slow = asyncio.ensure_future(
        archives.replay(archives.request(HOUR_AGO_MS, HOUR_AGO_MS + 100), rate=40, replay_id="r1")
    )
    try:
        await eventually(lambda: len(a.received) >= 2, what="the replay under way")
        other = await wire.connect(amqp_url)
        try:
            with pytest.raises(BridgeError, match="replay r1 is running in another process"):
                await archives_for(other, amqp_url, triggers).resume("r1")
        finally:
            await other.close()
    finally:
        slow.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await slow


N = 600
RATE = 300


async def test_kill_9_in_the_middle_of_a_replay_then_resume(
    conn, amqp, amqp_url, bridge_factory, subscriber_factory, tmp_path
):
    """The progress record is what a resumed replay trusts: after kill -9 every event arrives,
    and none more than once beyond the one batch that was not recorded yet."""
    a = await subscriber_factory()
    triggers = [trigger("a", a.url)]
    await bridge_factory(triggers=triggers, archives=[ARCHIVE])
    ids = [f"k-{i:04d}" for i in range(N)]
    await archive_directly(amqp, [event_headers(e, HOUR_AGO_MS + i) for i, e in enumerate(ids)])
    config = write_config(tmp_path / "c.toml", amqp_url, triggers)
    archives = archives_for(conn, amqp_url, triggers)

    replay = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "archive",
        "replay",
        "--config",
        str(config),
        "--since",
        "2000-01-01T00:00:00Z",
        "--rate",
        f"{RATE}/s",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=cli_env(),
    )
    try:
        assert replay.stderr is not None
        line = (await asyncio.wait_for(replay.stderr.readline(), 20)).decode()
        match = re.search(r"replay (\S+) started", line)
        assert match, line
        replay_id = match.group(1)

        async def recorded_two_batches() -> bool:
            record = await archives.read_record(replay_id)
            return record is not None and (record["next_offset"] or 0) >= 2 * BATCH

        await eventually(recorded_two_batches, timeout=20, interval=0.01, what="2 batches")
        assert replay.returncode is None, "the replay ended before it could be killed"
        replay.kill()
    finally:
        with contextlib.suppress(ProcessLookupError):
            replay.kill()
        await replay.wait()
    assert replay.returncode == -signal.SIGKILL
    before = len(await settled(a))
    assert 2 * BATCH <= before < N

    code, out, err = await bridge_cli(config, "archive", "replay", "--resume", replay_id)
    assert code == 0, err
    assert f"replay {replay_id}: replayed {N} event(s) as {N} deliveries" in out, out
    got = [r.headers["ce-id"] for r in await settled(a, N)]
    assert set(got) == set(ids), f"lost: {sorted(set(ids) - set(got))[:5]}"
    duplicates = len(got) - N
    assert duplicates <= BATCH, f"{duplicates} events sent twice"
    assert {r.headers[REPLAY_EXTENSION] for r in a.received} == {replay_id}
    record = await archives.read_record(replay_id)
    assert record is not None
    assert record["state"] == "done"


# --- configuration and command-line errors -------------------------------------------------------


@pytest.mark.parametrize(
    ("archive", "expected"),
    [
        ({**ARCHIVE, "max_agee": "P1D"}, "archives[0].max_agee: unknown key (typo?)"),
        ({**ARCHIVE, "max_age": "PT1.5S"}, "archives[0].max_age: must be whole seconds"),
        ({**ARCHIVE, "max_age": "seven days"}, "archives[0].max_age: 'seven days' is not a dur"),
        ({**ARCHIVE, "max_bytes": -1}, "archives[0].max_bytes: Input should be greater than"),
        ({**ARCHIVE, "segment_bytes": 10}, "archives[0].segment_bytes: Input should be greater"),
        ({"broker": "nobroker"}, "archives[0].broker: broker 'nobroker' must be written namesp"),
        ({"max_age": "P1D"}, "archives[0].broker: Field required"),
    ],
)
def test_archive_config_errors_name_the_field(
    tmp_path: Path, archive: dict[str, Any], expected: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        "[[archives]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in archive.items())
    )
    with pytest.raises(ConfigError) as caught:
        load(str(config))
    assert f"{config} (or a BRIDGE_ environment variable): {expected}" in str(caught.value)


def test_two_archives_of_one_broker_and_an_unknown_broker_are_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    nowhere = "[rabbitmq]\nurl = 'amqp://guest:guest@127.0.0.1:9/x'\n"
    config.write_text(f"[[archives]]\nbroker = '{BROKER}'\n[[archives]]\nbroker = '{BROKER}'\n")
    with pytest.raises(ConfigError, match=r"archives: archives\[1\] is a second archive of the"):
        load(str(config))
    config.write_text(nowhere + "[[archives]]\nbroker = 'team/elsewhere'\n")
    assert main(["archive", "list", "--config", str(config)]) == 2
    assert capsys.readouterr().err == (
        f"bridge: {config}: archives[0].broker: no trigger names the broker team/elsewhere "
        "and it is not the default broker.\n"
    )
    config.write_text("[[archives]]\nbroker = 'team/elsewhere'\nenabled = false\n")
    load(str(config))  # a disabled archive may name a broker that is gone


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--until", "now"], "bridge: --since is required (or --resume REPLAY_ID).\n"),
        (["--since", "yesterday"], "bridge: --since: 'yesterday' is not a time; use RFC 3339"),
        (["--since", "PT1H", "--rate", "fast"], "bridge: --rate: 'fast' is not a rate; use eve"),
        (["--since", "PT1H", "--until", "PT2H"], "bridge: --since must be earlier than --until"),
        (["--resume", "r1", "--since", "PT1H"], "bridge: --since: a resumed replay keeps the s"),
        (["--resume", "r1", "--dry-run"], "bridge: --dry-run: a resumed replay cannot be a dry"),
        (["--resume", "../x"], "bridge: --resume: '../x' is not a replay id.\n"),
    ],
)
def test_replay_usage_errors(
    tmp_path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[rabbitmq]\nurl = 'amqp://guest:guest@127.0.0.1:9/x'\n")
    assert main(["archive", "replay", "--config", str(config), *args]) == 2
    assert capsys.readouterr().err.startswith(expected)


async def test_replay_errors_that_need_rabbitmq(amqp, amqp_url, tmp_path) -> None:
    triggers = [trigger("a", "http://127.0.0.1:9/")]
    config = write_config(tmp_path / "c.toml", amqp_url, triggers)
    since = "2000-01-01T00:00:00Z"
    code, _, err = await bridge_cli(config, "archive", "replay", "--since", since, "--trigger", "z")
    assert (code, err) == (2, "bridge: --trigger: default/z is not a configured trigger.\n")
    code, _, err = await bridge_cli(config, "archive", "replay", "--since", since)
    assert code == 1
    assert err == (
        f"bridge: the broker {BROKER} has no archive ({STREAM} does not exist in RabbitMQ).\n"
    )
    code, _, err = await bridge_cli(config, "archive", "replay", "--resume", "nope")
    assert code == 1
    assert "no replay has the id nope in RabbitMQ" in err


def test_times_and_rates() -> None:
    now = 1_764_000_000.0
    assert parse_time("2026-11-26T18:50:12.823Z", now, "--since") == 1_795_719_012_823
    assert parse_time("2026-11-26T18:50:12.8231Z", now, "--since") == 1_795_719_012_824
    assert parse_time("2026-11-26T19:50:12.823+01:00", now, "--since") == 1_795_719_012_823
    assert parse_time("2026-11-26T18:50:12.823", now, "--since") == 1_795_719_012_823
    assert parse_time("now", now, "--until") == 1_764_000_000_000
    assert parse_time("PT2H", now, "--since") == 1_764_000_000_000 - 7_200_000
    assert parse_time("P1D", now, "--since") == 1_764_000_000_000 - 86_400_000
    assert parse_rate("100/s") == 100.0
    assert parse_rate("2.5") == 2.5
    for bad in ("0", "-1/s", "inf", "x"):
        with pytest.raises(ConfigError):
            parse_rate(bad)


async def test_replay_evaluates_content_patterns_on_the_archived_data(
    conn, amqp, amqp_url, bridge_factory, subscriber_factory
):
    """A trigger whose EventBridge pattern looks into `data` gets exactly the archived events
    whose data match; an attribute-only trigger gets them all."""
    content = await subscriber_factory()
    plain = await subscriber_factory()
    triggers = [
        trigger("content", content.url, pattern={"data": {"id": [{"prefix": "keep-"}]}}),
        trigger("plain", plain.url),
    ]
    await bridge_factory(triggers=triggers, archives=[ARCHIVE])
    since = HOUR_AGO_MS
    stamps = {"keep-1": since + 1, "drop-1": since + 2, "keep-2": since + 3}
    await archive_directly(amqp, [event_headers(k, v) for k, v in stamps.items()])
    archives = archives_for(conn, amqp_url, triggers)
    result = await archives.replay(archives.request(since, since + 1000))
    assert (result.replayed, result.deliveries, result.failed) == (3, 5, 0)
    assert ids(await settled(content, 2)) == ["keep-1", "keep-2"]
    assert ids(await settled(plain, 3)) == ["drop-1", "keep-1", "keep-2"]
