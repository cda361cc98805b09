"""`bridge run --workers N`: N worker processes sharing the ingress port, one admin listener.

The supervisor is the process systemd or Kubernetes starts; it opens no RabbitMQ connection. It
starts N copies of `bridge run` in the same role, each a whole daemon, with:
- the ingress port bound with SO_REUSEPORT, so the kernel spreads connections over the workers
  (a configured port 0 is resolved to one free port first, shared by all);
- its admin listener on an ephemeral loopback port, reported to the supervisor through a file;
- every trigger's consumer, so RabbitMQ spreads each queue's messages over the workers (an
  ordered trigger's queue has a single active consumer: still one at a time, in order);
- no NOTIFY_SOCKET: only the supervisor talks to systemd.

The supervisor serves the configured admin port itself: `/healthz` 200 while it runs; `/readyz`
200 when every worker answers ready, else 503 naming the first that does not; `/metrics` the
workers' metrics merged (counters and histograms summed, gauges the highest value, so a queue
depth every worker polls is not counted N times). SIGTERM or SIGINT is passed to every worker,
which drains as a single process does; the supervisor exits 0 when all of them exited 0. SIGHUP
is passed on (every worker reloads). A worker that exits on its own is started again after a
pause (1 s, doubling to 30 s) and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bridge.admin import Admin
from bridge.config import Settings
from bridge.http.server import HTTPServer
from bridge.systemd import Notifier

log = logging.getLogger("bridge")

RESTART_FIRST = 1.0
RESTART_MAX = 30.0
PROBE_TIMEOUT = 2.0
PR_SET_PDEATHSIG = 1
# Environment variables a worker must not inherit: systemd talks to the supervisor only.
_NOT_INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")


def worker_count(value: str) -> int:
    """`--workers`: a positive integer, or `auto` for the number of CPU cores."""
    if value == "auto":
        return max(1, os.cpu_count() or 1)
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise ValueError(f"--workers must be a positive integer or auto, not {value!r}")


def _die_with_parent() -> None:
    """In a worker, before it runs: SIGTERM it (a drain) if the supervisor dies, even by
    SIGKILL, so no worker outlives its supervisor (Linux's PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Worker:
    index: int
    admin_file: Path
    process: asyncio.subprocess.Process | None = None
    admin_port: int | None = None
    restarts: int = 0

    def read_admin_port(self) -> int | None:
        if self.admin_port is None:
            with contextlib.suppress(OSError, ValueError):
                self.admin_port = int(self.admin_file.read_text().strip())
        return self.admin_port


class Supervisor:
    def __init__(
        self, settings: Settings, config_path: str | None, role: str, workers: int
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.role = role
        self.count = workers
        self.workers: list[Worker] = []
        self.stopping = asyncio.Event()
        self.notifier = Notifier()
        self._dir = Path(tempfile.mkdtemp(prefix="bridge-workers-"))
        self._admin: HTTPServer | None = None
        ingress = settings.ingress
        self.ingress_port = ingress.port
        if role in ("all", "ingress") and ingress.port == 0:
            self.ingress_port = free_port(ingress.host)

    # -- workers --
    def _command(self, worker: Worker) -> list[str]:
        command = [sys.executable, "-m", "bridge", "run", "--role", self.role]
        if self.config_path is not None:
            command += ["--config", self.config_path]
        return [*command, "--worker-admin-file", str(worker.admin_file)]

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
        env["BRIDGE_INGRESS__PORT"] = str(self.ingress_port)
        env["BRIDGE_ADMIN__HOST"] = "127.0.0.1"
        env["BRIDGE_ADMIN__PORT"] = "0"
        return env

    async def _start(self, worker: Worker) -> None:
        worker.admin_port = None
        with contextlib.suppress(FileNotFoundError):
            worker.admin_file.unlink()
        worker.process = await asyncio.create_subprocess_exec(
            *self._command(worker), env=self._environment(), preexec_fn=_die_with_parent
        )
        log.info("worker %d started (pid %d)", worker.index, worker.process.pid)

    async def _keep(self, worker: Worker) -> int:
        """Run one worker; start it again when it exits on its own. Its last exit code."""
        pause = RESTART_FIRST
        while True:
            await self._start(worker)
            assert worker.process is not None
            code = await worker.process.wait()
            if self.stopping.is_set():
                return code
            log.warning(
                "worker %d (pid %d) exited with code %d; starting it again in %.0fs",
                worker.index,
                worker.process.pid,
                code,
                pause,
            )
            worker.restarts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), pause)
            if self.stopping.is_set():
                return code
            pause = min(RESTART_MAX, pause * 2)

    def signal_workers(self, signum: int) -> None:
        for worker in self.workers:
            process = worker.process
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    # -- admin --
    async def _get(self, port: int, path: str) -> tuple[int, bytes]:
        """GET http://127.0.0.1:port/path from a worker's admin listener."""
        async with asyncio.timeout(PROBE_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                request = f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
                writer.write(request.encode("ascii"))
                raw = await reader.read()
            finally:
                writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return status, body

    async def not_ready_reason(self) -> str | None:
        if self.stopping.is_set():
            return "bridge is draining."
        for worker in self.workers:
            port = worker.read_admin_port()
            if port is None or worker.process is None or worker.process.returncode is not None:
                return f"worker {worker.index} is starting."
            try:
                status, body = await self._get(port, "/readyz")
            except (OSError, TimeoutError, ValueError, IndexError):
                return f"worker {worker.index} does not answer."
            if status != 200:
                reason = body.decode("utf-8", "replace")
                return f"worker {worker.index} is not ready: {reason}"
        return None

    async def exposition(self, openmetrics: bool) -> tuple[bytes, str]:
        """The workers' metrics merged, in the Prometheus text format (the merge does not keep
        OpenMetrics exemplars, so that format is not offered)."""
        return await self.metrics(), "text/plain; version=0.0.4; charset=utf-8"

    async def metrics(self) -> bytes:
        texts = []
        for worker in self.workers:
            port = worker.read_admin_port()
            if port is None:
                continue
            with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
                status, body = await self._get(port, "/metrics")
                if status == 200:
                    texts.append(body.decode("utf-8"))
        return merge_metrics(texts).encode("utf-8")

    async def _report_ready(self) -> None:
        while not self.stopping.is_set():
            if await self.not_ready_reason() is None:
                self.notifier.ready()
            self.notifier.watchdog()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.stopping.wait(), self.notifier.watchdog_interval() or 1.0
                )

    # -- running --
    async def run(self) -> int:
        admin = self.settings.admin
        self._admin = HTTPServer(
            Admin(self.not_ready_reason, self.exposition), admin.host, admin.port
        )
        await self._admin.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.signal_workers(signal.SIGHUP))
        self.workers = [
            Worker(i, self._dir / f"worker-{i}.admin") for i in range(1, self.count + 1)
        ]
        kept = [loop.create_task(self._keep(w)) for w in self.workers]
        reporter = loop.create_task(self._report_ready())
        log.info(
            "bridge started %d workers (role %s): ingress port %d shared, admin %s:%d",
            self.count,
            self.role,
            self.ingress_port,
            admin.host,
            self._admin.port,
        )
        try:
            await self.stopping.wait()
            self.notifier.stopping()
            self.signal_workers(signal.SIGTERM)
            budget = self.settings.lifecycle.drain_timeout.total_seconds() + 10
            _, pending = await asyncio.wait(kept, timeout=budget)
            if pending:
                log.error("workers still running after %.0fs: killing them", budget)
                self.signal_workers(signal.SIGKILL)
                await asyncio.wait(kept)
            codes = [task.result() for task in kept]
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            await self._admin.close()
            shutil.rmtree(self._dir, ignore_errors=True)
        failed = [c for c in codes if c != 0]
        log.info("workers stopped (exit codes %s)", ", ".join(str(c) for c in codes))
        return 1 if failed else 0


def merge_metrics(texts: list[str]) -> str:
    """Prometheus text expositions of several workers as one: samples of counters, histograms
    and summaries summed (`_created` timestamps: the earliest), gauges the highest value."""
    kinds: dict[str, str] = {}
    meta: dict[str, list[str]] = {}
    order: list[str] = []  # families, in order of first appearance
    samples: dict[str, dict[str, float]] = {}
    for text in texts:
        family = ""
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    if family not in meta:
                        meta[family] = []
                        order.append(family)
                        samples[family] = {}
                    if line not in meta[family]:
                        meta[family].append(line)
                    if parts[1] == "TYPE" and len(parts) == 4:
                        kinds[family] = parts[3]
                continue
            series, _, value = line.rpartition(" ")
            try:
                number = float(value)
            except ValueError:
                continue
            bucket = samples.setdefault(family, {})
            if family not in meta:
                meta[family] = []
                order.append(family)
            name = series.split("{", 1)[0]
            if series not in bucket:
                bucket[series] = number
            elif name.endswith("_created"):
                bucket[series] = min(bucket[series], number)
            elif kinds.get(family) == "gauge":
                bucket[series] = max(bucket[series], number)
            else:
                bucket[series] += number
    out: list[str] = []
    for family in order:
        out.extend(meta[family])
        out.extend(f"{series} {_number(v)}" for series, v in samples.get(family, {}).items())
    return "\n".join(out) + "\n"


def _number(value: float) -> str:
    return repr(value) if not value.is_integer() or abs(value) >= 1e16 else f"{value:.1f}"
