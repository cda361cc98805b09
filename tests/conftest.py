"""Shared fixtures: a fresh RabbitMQ vhost per test, bridge run in process, scriptable subscribers.

Tests talk to the real local RabbitMQ. When it cannot be reached they fail (never skip): a test
that did not run must not count as passed. Every test that reaches RabbitMQ carries the marker
`rabbit`: given here to each test using one of RABBIT_FIXTURES (directly or through another
fixture), and by `pytestmark = pytest.mark.rabbit` in modules that reach it another way.
`make test-fast` (`pytest -m "not rabbit"`) runs the rest in seconds, without RabbitMQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiormq
import pytest
from aiohttp import web

from bridge.app import App
from bridge.config import LoadedConfig, Settings, TriggerSpec

AMQP_BASE = os.environ.get("BRIDGE_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")
RABBITMQCTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
ACTOR = '<<"bridge-tests">>'

# The fixtures that reach RabbitMQ: a test that uses one of them, even through another fixture,
# gets the marker `rabbit`.
RABBIT_FIXTURES = frozenset({"vhost_pool", "amqp_url", "amqp", "bridge_factory"})


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if RABBIT_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.rabbit)


def _erl_list(names: list[str]) -> str:
    return "[" + ", ".join(f'<<"{n}">>' for n in names) + "]"


def _rabbitmqctl_eval(expr: str) -> None:
    result = subprocess.run(
        [RABBITMQCTL, "eval", expr], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0 or "ok" not in result.stdout:
        raise RuntimeError(f"rabbitmqctl eval failed: {result.stdout} {result.stderr}")


class VhostPool:
    """Creates test vhosts in batches (one rabbitmqctl call per batch) and deletes them at exit."""

    BATCH = 24

    def __init__(self) -> None:
        self.free: list[str] = []
        self.created: list[str] = []
        self.done: list[str] = []
        # The name carries the creation time so a later run can delete what a killed run left.
        self.run_id = f"{int(time.time())}-{uuid.uuid4().hex[:6]}"
        self.counter = 0
        self._delete_stale()

    @staticmethod
    def _delete_stale(max_age: int = 3600) -> None:
        """Delete test vhosts older than `max_age` seconds (left by runs that were killed)."""
        cutoff = int(time.time()) - max_age
        _rabbitmqctl_eval(
            "[rabbit_vhost:delete(V, " + ACTOR + ") || V <- rabbit_vhost:list_names(), "
            'case re:run(V, <<"^bridge-test-([0-9]+)-">>, [{capture, all_but_first, list}]) of '
            "{match, [T]} -> list_to_integer(T) < " + str(cutoff) + "; _ -> false end], ok."
        )

    def take(self) -> str:
        if not self.free:
            batch = []
            for _ in range(self.BATCH):
                self.counter += 1
                batch.append(f"bridge-test-{self.run_id}-{self.counter}")
            _rabbitmqctl_eval(
                "lists:foreach(fun(V) -> ok = rabbit_vhost:add(V, "
                + ACTOR
                + '), ok = rabbit_auth_backend_internal:set_permissions(<<"guest">>, V, '
                '<<".*">>, <<".*">>, <<".*">>, ' + ACTOR + ") end, " + _erl_list(batch) + "), ok."
            )
            self.created += batch
            self.free += batch
        return self.free.pop(0)

    def release(self, vhost: str) -> None:
        """A test is done with `vhost`: delete it (in batches, one rabbitmqctl call each)."""
        self.done.append(vhost)
        if len(self.done) >= self.BATCH:
            self._delete(self.done)
            self.done = []

    def _delete(self, vhosts: list[str]) -> None:
        _rabbitmqctl_eval(
            "lists:foreach(fun(V) -> rabbit_vhost:delete(V, "
            + ACTOR
            + ") end, "
            + _erl_list(vhosts)
            + "), ok."
        )
        self.created = [v for v in self.created if v not in vhosts]

    def delete_all(self) -> None:
        if self.created:
            _rabbitmqctl_eval(
                "lists:foreach(fun(V) -> rabbit_vhost:delete(V, "
                + ACTOR
                + ") end, "
                + _erl_list(self.created)
                + "), ok."
            )
            self.created = []


@pytest.fixture(scope="session")
def vhost_pool() -> Iterator[VhostPool]:
    pool = VhostPool()
    try:
        yield pool
    finally:
        pool.delete_all()


@pytest.fixture
def amqp_url(vhost_pool: VhostPool) -> Iterator[str]:
    """An AMQP URL to a vhost of this test's own (deleted after the test)."""
    vhost = vhost_pool.take()
    yield f"{AMQP_BASE}/{vhost}"
    vhost_pool.release(vhost)


@pytest.fixture
async def amqp(amqp_url: str) -> AsyncIterator[Any]:
    """A plain aiormq connection to the test's vhost, to look at what bridge stored."""
    try:
        connection = await aiormq.connect(amqp_url)
    except Exception as exc:  # pragma: no cover - the environment is broken
        pytest.fail(f"RabbitMQ is not reachable at {AMQP_BASE}: {exc}")
    yield connection
    await connection.close()


async def queue_depth(connection: Any, queue: str) -> int:
    channel = await connection.channel()
    try:
        ok = await channel.queue_declare(queue, passive=True)
        return int(ok.message_count)
    finally:
        if not channel.is_closed:
            await channel.close()


async def get_all(connection: Any, queue: str) -> list[Any]:
    """Take every message of a queue (acknowledged: they are gone afterwards)."""
    channel = await connection.channel()
    out = []
    try:
        while True:
            message = await channel.basic_get(queue, no_ack=True)
            if not message.body and message.delivery.__class__.__name__ == "GetEmpty":
                break
            out.append(message)
    finally:
        await channel.close()
    return out


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> None:
    """Poll until `check` holds; fail the test with `what` when it does not within `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No BRIDGE_ variable of the caller leaks in, and ./config.toml is never the repository's."""
    for name in list(os.environ):
        if name.upper().startswith("BRIDGE_"):
            monkeypatch.delenv(name)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)


def write(path: Path, text: str) -> Path:
    """Write a (dedented) configuration or manifest file, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# --- subscribers ---------------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


Reply = tuple[int, dict[str, str], bytes]


@dataclass
class Subscriber:
    """A real HTTP server on loopback that records requests and answers as scripted.

    `script` answers in order (the last entry repeats); `responder` overrides it when set.
    """

    url: str = ""
    received: list[Received] = field(default_factory=list)
    script: list[Reply] = field(default_factory=lambda: [(200, {}, b"")])
    responder: Callable[[Received], Awaitable[Reply] | Reply] | None = None
    runner: web.AppRunner | None = None

    def ids(self) -> list[str]:
        return [r.headers.get("ce-id", "") for r in self.received]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        loop = asyncio.get_running_loop()
        rec = Received(
            request.method,
            request.path,
            {k.lower(): v for k, v in request.headers.items()},
            body,
            loop.time(),
        )
        self.received.append(rec)
        if self.responder is not None:
            answer = self.responder(rec)
            if asyncio.iscoroutine(answer):
                answer = await answer
            status, headers, payload = answer  # type: ignore[misc]
        else:
            index = min(len(self.received) - 1, len(self.script) - 1)
            status, headers, payload = self.script[index]
        return web.Response(status=status, headers=headers, body=payload)


@pytest.fixture
async def subscriber_factory() -> AsyncIterator[Callable[..., Awaitable[Subscriber]]]:
    made: list[Subscriber] = []

    async def make(**kwargs: Any) -> Subscriber:
        sub = Subscriber(**kwargs)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", sub._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        sub.url = f"http://127.0.0.1:{port}/"
        sub.runner = runner
        made.append(sub)
        return sub

    yield make
    for sub in made:
        if sub.runner is not None:
            await sub.runner.cleanup()


# --- bridge in process ---------------------------------------------------------------------------


def settings_for(
    amqp_url: str, triggers: list[dict[str, Any]] | None = None, **sections: Any
) -> Settings:
    data: dict[str, Any] = {
        "rabbitmq": {"url": amqp_url, "publish_timeout": 5},
        "ingress": {"port": 0},
        "admin": {"port": 0},
        "lifecycle": {"drain_timeout": 5},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    data["triggers"] = triggers or []
    return Settings(**data)


def loaded_for(settings: Settings) -> LoadedConfig:
    triggers: list[tuple[TriggerSpec, str]] = [
        (t, f"test: triggers[{i}]") for i, t in enumerate(settings.triggers)
    ]
    return LoadedConfig(settings=settings, source="test", triggers=triggers)


@dataclass
class Running:
    app: App
    url: str  # ingress base URL, ending in "/"
    admin: str

    async def post(
        self,
        path: str = "",
        *,
        body: bytes | str = b"",
        headers: dict[str, str] | None = None,
        method: str = "POST",
    ) -> tuple[int, dict[str, str], bytes]:
        data = body.encode() if isinstance(body, str) else body
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.url + path.lstrip("/"), data=data, headers=headers) as r,
        ):
            return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()


@pytest.fixture
async def bridge_factory(amqp_url: str) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """Start bridge in this test's event loop: `await make(triggers=[...], role="all", ...)`."""
    apps: list[App] = []

    async def make(
        triggers: list[dict[str, Any]] | None = None,
        role: str = "all",
        url: str | None = None,
        wait_ready: bool = True,
        span_processor: Any = None,
        **sections: Any,
    ) -> Running:
        settings = settings_for(url or amqp_url, triggers, **sections)
        app = App(loaded_for(settings), role, span_processor=span_processor)  # type: ignore[arg-type]
        apps.append(app)
        await app.start()
        if wait_ready:
            deadline = asyncio.get_running_loop().time() + 15
            while app.not_ready_reason() is not None:
                if asyncio.get_running_loop().time() > deadline:
                    pytest.fail(f"bridge did not become ready: {app.not_ready_reason()}")
                await asyncio.sleep(0.02)
        assert app.admin_server is not None
        ingress = app.ingress_server
        base = f"http://127.0.0.1:{ingress.port}/" if ingress is not None else ""
        return Running(app, base, f"http://127.0.0.1:{app.admin_server.port}/")

    yield make
    for app in apps:
        if not app.draining:
            with contextlib.suppress(Exception):
                await app.drain()


def trigger(
    name: str,
    subscriber: str,
    broker: str = "eventbridge-default-broker",
    **spec: Any,
) -> dict[str, Any]:
    return {"name": name, "broker": broker, "subscriber": {"uri": subscriber}, **spec}
