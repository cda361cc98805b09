"""Helpers shared by several test modules (a test module never imports another test module).

Fixtures live in conftest.py; what is here is plain functions and constants: the ingress set-up
of test_ingress, test_ingress_property and test_hostile_clients, and the `bridge dlq` command-line
helpers of test_dlq and test_crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.conftest import queue_depth, trigger

ROOT = Path(__file__).resolve().parent.parent


async def depth_is(amqp: Any, queue: str, depth: int) -> bool:
    return await queue_depth(amqp, queue) == depth


# --- the ingress ---------------------------------------------------------------------------------

DEFAULT_PATH = "/default/eventbridge-default-broker"
CATCH_ALL = "bridge.trigger.default.catch-all"
UNMATCHED = "bridge.unmatched.default.eventbridge-default-broker"
NOWHERE = "http://127.0.0.1:9/"  # never called: role "ingress" does not deliver
STRUCTURED = "application/cloudevents+json"


def valid_event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"specversion": "1.0", "id": "e-1", "source": "test", "type": "t"}
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not ...}


async def start(bridge_factory: Any, **kwargs: Any) -> Any:
    """bridge (role ingress) with one catch-all trigger on the default broker."""
    triggers = kwargs.pop("triggers", [trigger("catch-all", NOWHERE)])
    return await bridge_factory(triggers=triggers, role="ingress", **kwargs)


def error_of(body: bytes) -> str:
    """A 4xx/5xx body: exactly `{"error": "<sentence>"}`."""
    doc = json.loads(body)
    assert isinstance(doc, dict), body
    assert list(doc) == ["error"], body
    assert isinstance(doc["error"], str), body
    assert doc["error"].strip(), body
    return doc["error"]


async def stored(amqp: Any, *queues: str) -> int:
    return sum([await queue_depth(amqp, q) for q in queues])


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def host_port(url: str) -> tuple[str, int]:
    host, _, port = url.split("//", 1)[1].rstrip("/").partition(":")
    return host, int(port)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


# --- `bridge dlq` as a subprocess ----------------------------------------------------------------

SUMMARY = re.compile(r"^summary: (replayed|would replay) (\d+), skipped (\d+), failed (\d+)$", re.M)


def cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}


async def bridge_cli(config: Path, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run `python -m bridge <args> --config <config>`; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        *args,
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=cli_env(),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def batch(ids: list[str], type_of: Callable[[int], str] = lambda i: "dl.a") -> bytes:
    return orjson.dumps(
        [
            {
                "specversion": "1.0",
                "id": event_id,
                "source": "test",
                "type": type_of(i),
                "datacontenttype": "application/json",
                "data": {"i": i},
            }
            for i, event_id in enumerate(ids)
        ]
    )


async def post_batch(url: str, body: bytes) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url, data=body, headers={"content-type": "application/cloudevents-batch+json"}
        ) as r,
    ):
        assert r.status == 202, await r.text()


def event_ids(n: int, prefix: str = "dl") -> list[str]:
    return [f"{prefix}-{i:04d}" for i in range(n)]


def summary(out: str) -> tuple[str, int, int, int]:
    match = SUMMARY.search(out)
    assert match is not None, out
    return match.group(1), int(match.group(2)), int(match.group(3)), int(match.group(4))


def json_lines(out: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.splitlines()]
