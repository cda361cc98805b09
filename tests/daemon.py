"""Test helpers that run bridge as a real process: the daemon, a load sender, a TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now and this test process has not handed out before (two
    daemons built one after the other never get the same port)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def toml_triggers(triggers: list[dict[str, Any]]) -> str:
    out = []
    for t in triggers:
        lines = ["[[triggers]]"]
        for key, value in t.items():
            lines.append(
                f"{key} = {json.dumps(value) if not isinstance(value, dict) else _inline(value)}"
            )
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _inline(value: dict[str, Any]) -> str:
    parts = []
    for k, v in value.items():
        rendered = _inline(v) if isinstance(v, dict) else json.dumps(v)
        parts.append(f'"{k}" = {rendered}' if not k.isidentifier() else f"{k} = {rendered}")
    return "{ " + ", ".join(parts) + " }"


class Daemon:
    """`python -m bridge run` with a config written to `workdir`."""

    def __init__(
        self,
        workdir: Path,
        amqp_url: str,
        triggers: list[dict[str, Any]],
        extra: str = "",
        env: dict[str, str] | None = None,
        role: str = "all",
        name: str = "bridge",
        args: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.admin = free_port()
        self.config = workdir / f"{name}.toml"
        self.log = workdir / f"{name}.log"
        self.amqp_url = amqp_url
        self.triggers = triggers
        self.extra = extra
        self.env = env or {}
        self.role = role
        self.args = args  # more `bridge run` options, e.g. ("--workers", "2")
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config(triggers)

    def write_config(self, triggers: list[dict[str, Any]]) -> None:
        self.triggers = triggers
        self.config.write_text(
            f"[ingress]\nport = {self.port}\n[admin]\nport = {self.admin}\n"
            f'[rabbitmq]\nurl = "{self.amqp_url}"\npublish_timeout = 3\n'
            f"[lifecycle]\ndrain_timeout = 10\n{self.extra}\n" + toml_triggers(triggers) + "\n"
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> None:
        env = {**os.environ, **self.env}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bridge",
                    "run",
                    "--config",
                    str(self.config),
                    "--role",
                    self.role,
                    *self.args,
                ],
                cwd=ROOT,
                stdout=log,
                stderr=log,
                env=env,
            )

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"bridge exited with {self.proc.returncode}: {self.logs()}"
                    )
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(f"http://127.0.0.1:{self.admin}/readyz") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise AssertionError(f"bridge not ready after {timeout}s: {self.logs()}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)

    async def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError("bridge did not exit")
            await asyncio.sleep(0.05)
        return int(self.proc.returncode)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def oss_event(
    event_id: str | None = None, type_: str = "oss:ObjectCreated:PutObject"
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id or uuid.uuid4().hex,
        "source": "acs.oss",
        "type": type_,
        "datacontenttype": "application/json",
        "aliyunpublishtime": "2023-02-07T09:52:31.526PRC",
        "data": {"bucket": "knative", "key": "demo.data"},
    }


@dataclass
class Load:
    """Sends events in the EventBridge envelope mode and remembers what was accepted."""

    url: str
    accepted: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    sent: int = 0
    stop: bool = False

    async def run(
        self,
        total: int | None,
        concurrency: int = 8,
        pause: float = 0.0,
        type_: str = "oss:ObjectCreated:PutObject",
    ) -> None:
        counter = iter(range(10**9))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:

            async def worker() -> None:
                while not self.stop:
                    n = next(counter)
                    if total is not None and n >= total:
                        return
                    event = oss_event(f"load-{n}-{uuid.uuid4().hex[:8]}", type_)
                    self.sent += 1
                    try:
                        async with session.post(
                            self.url,
                            data=json.dumps(event),
                            headers={"content-type": "application/json"},
                        ) as r:
                            await r.read()
                            status = r.status
                    except (aiohttp.ClientError, OSError, TimeoutError):
                        status = -1
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                    if status == 202:
                        self.accepted.append(event["id"])
                    if pause:
                        await asyncio.sleep(pause)

            await asyncio.gather(*(worker() for _ in range(concurrency)))


class TCPProxy:
    """A TCP proxy on loopback that can cut every connection or stall them (stop forwarding)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.refuse = False
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    @stalled.setter
    def stalled(self, value: bool) -> None:
        if value:
            self._flowing.clear()
        else:
            self._flowing.set()

    def cut(self) -> None:
        """Drop every open connection (like a network cut with RST)."""
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
