"""`bridge dlq list|show|replay|purge`, run as real subprocesses against hundreds of dead letters
that bridge itself produced (a batch POST to the ingress, a subscriber that fails every event)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Received, Reply, Running, eventually, get_all, queue_depth, trigger
from tests.helpers import batch, bridge_cli, depth_is, event_ids, json_lines, post_batch, summary

N = 300


# --- helpers ---------------------------------------------------------------------------------


def toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(
    path: Path,
    amqp_url: str,
    triggers: dict[str, str],
    *,
    ingress_port: int = 0,
    admin_port: int = 0,
    delivery: str = "",
) -> Path:
    """A bridge config file: the test's vhost and `triggers` (name -> subscriber URL)."""
    lines = [
        "[rabbitmq]",
        f"url = {toml_string(amqp_url)}",
        "[ingress]",
        f"port = {ingress_port}",
        "[admin]",
        f"port = {admin_port}",
        "[lifecycle]",
        "drain_timeout = 3",
        "[logging]",
        'level = "warning"',
    ]
    if delivery:
        lines += ["[delivery]", delivery]
    for name, url in triggers.items():
        lines += [
            "[[triggers]]",
            f"name = {toml_string(name)}",
            'broker = "eventbridge-default-broker"',
            f"subscriber.uri = {toml_string(url)}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def header_text(message: Any, name: str) -> str | None:
    value = (message.header.properties.headers or {}).get(name)
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


# --- set-up ----------------------------------------------------------------------------------


async def dead_lettered(
    amqp: Any,
    running: Running,
    ids: list[str],
    queues: list[str],
    type_of: Callable[[int], str] = lambda i: "dl.a",
) -> None:
    await post_batch(running.url, batch(ids, type_of))
    for queue in queues:
        await eventually(
            lambda q=queue: depth_is(amqp, q, len(ids)),
            timeout=20,
            what=f"{len(ids)} dead letters in {queue}",
        )


FAILS_DLQ = "bridge.dlq.default.fails"
FAILS_QUEUE = "bridge.trigger.default.fails"


# --- list ------------------------------------------------------------------------------------


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_list_neither_consumes_nor_reorders(
    tmp_path, amqp, amqp_url, bridge_factory, subscriber_factory, queue_type
):
    """A quorum queue gives returned messages back behind the others: a browse that returned
    only the first N (`--limit`, `show`) would rotate the queue. Listed twice, with and without
    --limit, the order must not move."""
    failing = await subscriber_factory(script=[(400, {}, b"")])
    fine = await subscriber_factory()
    running = await bridge_factory(
        triggers=[
            trigger("fails", failing.url, delivery={"retry": 0}),
            trigger("fine", fine.url),
        ],
        rabbitmq={"queue_type": queue_type},
    )
    config = write_config(
        tmp_path / "config.toml", amqp_url, {"fails": failing.url, "fine": fine.url}
    )
    ids = event_ids(N)
    await dead_lettered(amqp, running, ids, [FAILS_DLQ])

    code, first, err = await bridge_cli(config, "dlq", "list", "--json", "--limit", "1000")
    assert code == 0, err
    code, second, err = await bridge_cli(config, "dlq", "list", "--json", "--limit", "1000")
    assert code == 0, err
    rows = json_lines(first)
    assert first == second  # same letters, same order
    assert len(rows) == N
    assert sorted(r["id"] for r in rows) == ids
    for row in rows:
        assert row["trigger"] == "default/fails"
        assert row["type"] == "dl.a"
        assert row["source"] == "test"
        assert row["error_code"] == "400"
        assert row["attempts"] == 1
        assert row["time"].startswith("20")
    assert await queue_depth(amqp, FAILS_DLQ) == N

    assert "showing" not in err  # all of them were listed: no note

    code, out, err = await bridge_cli(config, "dlq", "list", "--json", "--limit", "7")
    assert code == 0
    assert [r["id"] for r in json_lines(out)] == [r["id"] for r in rows[:7]]
    # Finding 11: a cut list used to stop silently; it says so, on stderr.
    assert f"showing 7 of {N} dead letters; use --limit {N} to list them all." in err

    code, out, err = await bridge_cli(config, "dlq", "list")
    assert code == 0
    assert f"showing 100 of {N} dead letters" in err
    assert len(out.strip().splitlines()) == 101  # the header and 100 rows

    code, out, _ = await bridge_cli(config, "dlq", "list")  # the table, default --limit 100
    assert code == 0
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("dl-")]
    assert listed == [r["id"] for r in rows[:100]]
    assert "default/fails" in out
    assert "ATTEMPTS" in out

    code, out, _ = await bridge_cli(config, "dlq", "list", "--json", "--trigger", "fine")
    assert (code, out) == (0, "")
    code, out, _ = await bridge_cli(
        config, "dlq", "list", "--json", "--trigger", "default/fails", "--limit", "1000"
    )
    assert out == first

    # What list showed is exactly the queue, in the queue's order, and all of it is still there.
    assert await queue_depth(amqp, FAILS_DLQ) == N
    stored = await get_all(amqp, FAILS_DLQ)
    assert [header_text(m, "ce-id") for m in stored] == [r["id"] for r in rows]


# --- show ------------------------------------------------------------------------------------


async def test_show_prints_the_event_and_its_failure_record(
    tmp_path, amqp, amqp_url, bridge_factory, subscriber_factory
):
    failing = await subscriber_factory(script=[(500, {}, b'{"error":"bad"}')])
    running = await bridge_factory(
        triggers=[trigger("fails", failing.url, delivery={"retry": 1, "backoffDelay": "PT0.05S"})]
    )
    config = write_config(tmp_path / "config.toml", amqp_url, {"fails": failing.url})
    ids = event_ids(N)
    await dead_lettered(amqp, running, ids, [FAILS_DLQ])
    _, before, _ = await bridge_cli(config, "dlq", "list", "--json", "--limit", "1000")

    wanted = json_lines(before)[123]["id"]
    code, out, err = await bridge_cli(config, "dlq", "show", wanted)
    assert code == 0, err
    record = orjson.loads(out)
    event, failure = record["event"], record["failure"]
    assert event["id"] == wanted
    assert event["specversion"] == "1.0"
    assert event["source"] == "test"
    assert event["type"] == "dl.a"
    assert event["datacontenttype"] == "application/json"
    assert event["data"] == {"i": ids.index(wanted)}
    assert failure["trigger"] == "default/fails"
    assert failure["subscriber"] == failing.url
    assert failure["error_code"] == "500"
    assert failure["attempts"] == 2
    assert failure["response_body"] == '{"error":"bad"}'
    assert "500" in failure["last_error"]
    for stamp in ("first_failure", "last_failure", "dead_lettered"):
        assert failure[stamp].startswith("20"), stamp
    assert failure["first_failure"] <= failure["last_failure"] <= failure["dead_lettered"]

    code, out, err = await bridge_cli(config, "dlq", "show", wanted, "--trigger", "fails")
    assert code == 0, err
    assert orjson.loads(out) == record

    code, out, err = await bridge_cli(config, "dlq", "show", "no-such-id")
    assert code == 1
    assert "no-such-id" in err
    assert "Traceback" not in err
    # show stops at the letter it found; the queue is still whole and in the same order.
    _, after, _ = await bridge_cli(config, "dlq", "list", "--json", "--limit", "1000")
    assert after == before
    assert await queue_depth(amqp, FAILS_DLQ) == N


# --- replay ----------------------------------------------------------------------------------


async def test_replay_goes_to_the_failing_trigger_only_and_resets_attempts(
    tmp_path, amqp, amqp_url, bridge_factory, subscriber_factory
):
    phase = {"replaying": False}
    tries_since_replay: dict[str, int] = {}

    def flaky(request: Received) -> Reply:
        if not phase["replaying"]:
            return 500, {}, b""
        event_id = request.headers["ce-id"]
        tries_since_replay[event_id] = tries_since_replay.get(event_id, 0) + 1
        # First attempt after the replay fails; with attempts reset, the retry succeeds.
        return (500, {}, b"") if tries_since_replay[event_id] == 1 else (200, {}, b"")

    failing = await subscriber_factory(responder=flaky)
    other = await subscriber_factory()
    running = await bridge_factory(
        triggers=[
            trigger("fails", failing.url, delivery={"retry": 1, "backoffDelay": "PT0.05S"}),
            trigger("other", other.url),
        ]
    )
    config = write_config(
        tmp_path / "config.toml", amqp_url, {"fails": failing.url, "other": other.url}
    )
    ids = event_ids(N)
    await dead_lettered(amqp, running, ids, [FAILS_DLQ])
    assert sorted(other.ids()) == ids
    code, out, _ = await bridge_cli(config, "dlq", "list", "--json", "--limit", "1")
    assert json_lines(out)[0]["attempts"] == 2

    phase["replaying"] = True
    code, out, err = await bridge_cli(config, "dlq", "replay")
    assert code == 0, err
    assert summary(out) == ("replayed", N, 0, 0)
    replayed = re.findall(r"^replayed (\S+) \(dl\.a\) -> default/fails$", out, re.M)
    assert sorted(replayed) == ids

    await eventually(
        lambda: sum(tries_since_replay.values()) == 2 * N, timeout=20, what="replayed deliveries"
    )
    await asyncio.sleep(0.3)
    assert tries_since_replay == dict.fromkeys(ids, 2)
    assert await queue_depth(amqp, FAILS_DLQ) == 0
    # The other trigger matched the same events but got nothing more.
    assert sorted(other.ids()) == ids


async def test_replay_filters_and_dry_run(
    tmp_path, amqp, amqp_url, bridge_factory, subscriber_factory
):
    failing = await subscriber_factory(script=[(400, {}, b"nope")])
    running = await bridge_factory(
        triggers=[
            trigger("fails", failing.url, delivery={"retry": 0}),
            trigger("also", failing.url, delivery={"retry": 0}),
        ]
    )
    config = write_config(
        tmp_path / "config.toml", amqp_url, {"fails": failing.url, "also": failing.url}
    )
    ids = event_ids(N)

    def type_of(i: int) -> str:
        return "dl.b" if i % 3 == 0 else "dl.a"

    types = {event_id: type_of(i) for i, event_id in enumerate(ids)}
    also_dlq = "bridge.dlq.default.also"
    await dead_lettered(amqp, running, ids, [FAILS_DLQ, also_dlq], type_of)
    await running.app.drain()  # replayed events now stay in the trigger queues to be looked at

    code, out, err = await bridge_cli(config, "dlq", "replay", "--dry-run")
    assert code == 0, err
    assert summary(out) == ("would replay", 2 * N, 0, 0)
    assert len(re.findall(r"^would replay ", out, re.M)) == 2 * N
    for queue, depth in ((FAILS_DLQ, N), (also_dlq, N), (FAILS_QUEUE, 0)):
        assert await queue_depth(amqp, queue) == depth, queue

    code, out, err = await bridge_cli(
        config, "dlq", "replay", "--trigger", "fails", "--type", "dl.b", "--limit", "10"
    )
    assert code == 0, err
    assert summary(out) == ("replayed", 10, N - 10, 0)
    by_type = re.findall(r"^replayed (\S+) \((\S+)\) -> (\S+)$", out, re.M)
    assert {(t, trig) for _, t, trig in by_type} == {("dl.b", "default/fails")}
    first = [event_id for event_id, _, _ in by_type]

    chosen = [i for i in ids if types[i] == "dl.a"][-3:]
    code, out, err = await bridge_cli(
        config, "dlq", "replay", "--trigger", "default/fails", "--id", *chosen
    )
    assert code == 0, err
    assert summary(out) == ("replayed", 3, N - 13, 0)

    code, out, err = await bridge_cli(
        config, "dlq", "replay", "--trigger", "also", "--limit", "5", "--dry-run"
    )
    assert code == 0, err
    assert summary(out) == ("would replay", 5, N - 5, 0)

    code, out, err = await bridge_cli(config, "dlq", "replay", "--type", "no.such.type")
    assert code == 0, err
    assert summary(out) == ("replayed", 0, 2 * N - 13, 0)

    assert await queue_depth(amqp, also_dlq) == N
    assert await queue_depth(amqp, "bridge.trigger.default.also") == 0
    requeued = await get_all(amqp, FAILS_QUEUE)
    assert sorted(header_text(m, "ce-id") or "" for m in requeued) == sorted(first + chosen)
    for message in requeued:
        headers = message.header.properties.headers or {}
        assert not any(h.startswith("ce-knativeerror") for h in headers), headers
        for record in ("bridge-attempts", "bridge-trigger", "bridge-last-error"):
            assert record not in headers
        event_id = header_text(message, "ce-id")
        assert header_text(message, "ce-type") == types[str(event_id)]
        assert header_text(message, "ce-source") == "test"
        assert message.header.properties.content_type == "application/json"
        assert orjson.loads(message.body) == {"i": ids.index(str(event_id))}
    left = await get_all(amqp, FAILS_DLQ)
    assert sorted(header_text(m, "ce-id") or "" for m in left) == sorted(
        set(ids) - set(first) - set(chosen)
    )


# --- purge -----------------------------------------------------------------------------------


async def test_purge_refuses_without_yes_then_deletes_by_id_and_all(
    tmp_path, amqp, amqp_url, bridge_factory, subscriber_factory
):
    failing = await subscriber_factory(script=[(410, {}, b"")])
    running = await bridge_factory(triggers=[trigger("fails", failing.url)])
    config = write_config(tmp_path / "config.toml", amqp_url, {"fails": failing.url})
    ids = event_ids(N)
    await dead_lettered(amqp, running, ids, [FAILS_DLQ])

    code, out, err = await bridge_cli(config, "dlq", "purge")
    assert code == 2
    assert "--yes" in err
    assert "Traceback" not in err
    assert await queue_depth(amqp, FAILS_DLQ) == N

    code, before, _ = await bridge_cli(config, "dlq", "list", "--json", "--limit", "1000")
    order = [r["id"] for r in json_lines(before)]
    doomed = [order[5], order[150], order[-1]]
    code, out, err = await bridge_cli(config, "dlq", "purge", "--id", *doomed, "--yes")
    assert code == 0, err
    assert "purged 3 " in out
    code, after, _ = await bridge_cli(config, "dlq", "list", "--json", "--limit", "1000")
    assert [r["id"] for r in json_lines(after)] == [i for i in order if i not in doomed]

    code, out, err = await bridge_cli(config, "dlq", "purge", "--yes")
    assert code == 0, err
    assert f"purged {N - 3} " in out
    assert await queue_depth(amqp, FAILS_DLQ) == 0
    code, out, _ = await bridge_cli(config, "dlq", "list", "--json")
    assert (code, out) == (0, "")
    code, out, _ = await bridge_cli(config, "dlq", "list")
    assert code == 0
    assert "no dead letters" in out
