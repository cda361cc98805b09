"""Composition: build the daemon for a role, run it, reload it, and drain it in order.

Roles: `ingress` (HTTP -> RabbitMQ), `dispatcher` (RabbitMQ -> subscribers) or `all` (both).
The shutdown order is written once, in `App.drain`:
not ready -> stop accepting -> finish in-flight publishes -> stop consumers and finish
deliveries -> close AMQP -> flush telemetry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

from opentelemetry.sdk.trace import SpanProcessor

from bridge import names
from bridge.admin import Admin
from bridge.amqp.browse import queue_stats
from bridge.amqp.connection import SETUP_ERRORS, AMQPLink
from bridge.amqp.consumer import QueueConsumer
from bridge.amqp.publisher import Publisher
from bridge.amqp.topology import Declarer, QueueKind
from bridge.amqp.wire import Connection
from bridge.archive import archive_streams
from bridge.config import LoadedConfig
from bridge.config import load as load_config
from bridge.descriptors import DescriptorWatch, raise_open_file_limit
from bridge.dispatch import REPEATED, Dispatcher, consumer_prefetch
from bridge.dispatch import Role as DispatchRole
from bridge.errors import BridgeError
from bridge.http.client import SubscriberClient
from bridge.http.server import HTTPServer
from bridge.ingress import UNAVAILABLE, Ingress
from bridge.systemd import Notifier
from bridge.telemetry.logging import register_secrets
from bridge.telemetry.metrics import Metrics
from bridge.telemetry.tracing import Tracing
from bridge.triggers import Routes, Trigger, build_routes

log = logging.getLogger("bridge")

Role = Literal["all", "ingress", "dispatcher"]
Consumer = QueueConsumer[Dispatcher]
QUEUE_DEPTH_INTERVAL = 15.0
DESCRIPTOR_INTERVAL = 1.0
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def proxy_variables(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The proxy variables set (upper or lower case): bridge's subscriber client ignores them."""
    return [name for name in PROXY_VARIABLES if environ.get(name) or environ.get(name.lower())]


class App:
    def __init__(
        self,
        loaded: LoadedConfig,
        role: Role,
        config_path: str | None = None,
        span_processor: SpanProcessor | None = None,
        worker_admin_file: str | None = None,
    ) -> None:
        self.loaded = loaded
        # A worker of `bridge run --workers N`: the ingress port is shared (SO_REUSEPORT) and
        # the admin port, an ephemeral one, is written to this file for the supervisor.
        self.worker_admin_file = worker_admin_file
        self.settings = loaded.settings
        self.role = role
        self.config_path = config_path
        self.routes: Routes = build_routes(loaded)
        self.metrics = Metrics()
        self.tracing = Tracing(self.settings.tracing, span_processor)
        self.draining = False
        self.stopped = asyncio.Event()
        rabbit = self.settings.rabbitmq
        subscribers = self.settings.subscribers
        register_secrets(
            self.settings.ingress.auth_token.get_secret_value(),
            *(v.get_secret_value() for v in self.settings.tracing.headers.values()),
            subscribers.client_key_password.get_secret_value(),
        )
        self.link = AMQPLink(
            rabbit.nodes(),
            name=f"bridge ({role})",
            max_delay=rabbit.reconnect_max_delay.total_seconds(),
            on_state=lambda up: self.metrics.rabbitmq_connected.set(1 if up else 0),
            order=rabbit.url_order,
            probe_interval=rabbit.reconnect_probe_interval.total_seconds(),
            connect_timeout=rabbit.connect_timeout.total_seconds(),
            ssl_context=rabbit.ssl_context(),
        )
        queue_kind = QueueKind(rabbit.queue_type, rabbit.quorum_initial_group_size)
        self.declarer = Declarer(
            self.routes,
            queue_kind,
            rabbit.unmatched_max_length,
            archive_streams(loaded, self.routes),
        )
        self.publisher = Publisher(self.link, rabbit.publish_timeout.total_seconds(), queue_kind)
        self.link.add(self.declarer)
        self.link.add(self.publisher)
        self.client = SubscriberClient(
            subscribers.client_cert,
            subscribers.client_key,
            subscribers.client_key_password.get_secret_value(),
        )
        self.consumers: dict[tuple[str, str], Consumer] = {}
        self.ingress: Ingress | None = None
        self.ingress_server: HTTPServer | None = None
        self.admin_server: HTTPServer | None = None
        self.notifier = Notifier()
        self.descriptors = DescriptorWatch()
        self._background: list[asyncio.Task[None]] = []
        self._reload_lock = asyncio.Lock()
        if role in ("all", "dispatcher"):
            for trigger in self.routes.triggers:
                self._add_consumers(trigger)

    # -- consumers --
    def _new_consumers(self, trigger: Trigger) -> list[Consumer]:
        """A dispatcher for the trigger's subscriber (and one for its dead-letter sink), each
        fed by a consumer of its queue."""
        roles: list[DispatchRole] = ["subscriber"]
        if trigger.delivery.dead_letter_sink:
            roles.append("sink")
        prefetch = consumer_prefetch(trigger, self.settings.rabbitmq.prefetch)
        made = []
        for role in roles:
            dispatcher = Dispatcher(
                trigger,
                producer=self.publisher,
                client=self.client,
                metrics=self.metrics,
                routes=self.routes,
                tracing=self.tracing,
                role=role,
            )
            made.append(QueueConsumer(dispatcher.queue, prefetch, self.link, dispatcher))
        return made

    def _add_consumers(self, trigger: Trigger) -> list[Consumer]:
        made = self._new_consumers(trigger)
        for consumer in made:
            self.consumers[(trigger.key, consumer.handler.role)] = consumer
            self.link.add(consumer)
        return made

    # -- readiness --
    async def _readiness(self) -> str | None:
        return self.not_ready_reason()

    async def _exposition(self, openmetrics: bool) -> tuple[bytes, str]:
        return self.metrics.render(openmetrics)

    def not_ready_reason(self) -> str | None:
        if self.draining:
            return "bridge is draining."
        if not self.link.ready.is_set():
            return "bridge is not connected to RabbitMQ."
        if not self.publisher.connected:
            return "the RabbitMQ publisher channel is not open."
        if self.link.blocked is not None:
            return f"RabbitMQ blocks publishing ({self.link.blocked})."
        if self.descriptors.problem is not None:
            return self.descriptors.problem
        server = self.ingress_server
        if server is not None and server.saturated:
            return f"the ingress serves its maximum of {server.max_connections} connections."
        for consumer in self.consumers.values():
            if not consumer.attached:
                return f"the consumer of {consumer.queue} is not attached."
        return None

    # -- running --
    async def start(self) -> None:
        settings = self.settings
        self.tracing.start()
        admin = Admin(self._readiness, self._exposition)
        self.admin_server = HTTPServer(admin, settings.admin.host, settings.admin.port)
        await self.admin_server.start()
        if self.worker_admin_file is not None:
            self._report_admin_port(self.worker_admin_file, self.admin_server.port)
        self.link.start()
        if self.role in ("all", "ingress"):
            ingress = settings.ingress
            self.ingress = Ingress(
                self.routes,
                self.publisher,
                self.metrics,
                max_event_bytes=ingress.max_event_bytes,
                auth_token=ingress.auth_token.get_secret_value(),
                retry_after=ingress.retry_after,
                tracing=self.tracing,
            )
            self.ingress_server = HTTPServer(
                self.ingress,
                ingress.host,
                ingress.port,
                idle_timeout=ingress.idle_timeout.total_seconds(),
                request_timeout=ingress.request_timeout.total_seconds(),
                max_connections=ingress.max_connections or None,
                reuse_port=self.worker_admin_file is not None,
            )
            await self.ingress_server.start()
        proxies = proxy_variables() if self.role in ("all", "dispatcher") else []
        if proxies:
            log.warning(
                "%s set, but bridge delivers to subscribers and dead-letter sinks directly: "
                "HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY are not supported",
                " and ".join(proxies) + (" is" if len(proxies) == 1 else " are"),
            )
        loop = asyncio.get_running_loop()
        self._background.append(loop.create_task(self._report_ready()))
        self._background.append(loop.create_task(self._poll_queue_depths()))
        self._background.append(loop.create_task(self._watch_descriptors()))
        log.info(
            "bridge started (role %s): ingress %s, admin %s:%d, %d trigger(s)",
            self.role,
            f"{self.ingress_server.host}:{self.ingress_server.port}"
            if self.ingress_server
            else "off",
            settings.admin.host,
            self.admin_server.port,
            len(self.routes.triggers),
        )

    @staticmethod
    def _report_admin_port(path: str, port: int) -> None:
        """Tell the supervisor where this worker's admin listener is (written whole, then
        renamed, so the supervisor never reads half a number)."""
        partial = Path(path + ".partial")
        partial.write_text(str(port))
        partial.replace(path)

    async def _report_ready(self) -> None:
        """Tell systemd (READY=1, WATCHDOG=1) once ready, and keep the watchdog fed."""
        while not self.draining:
            if self.link.fatal is not None:
                self.stopped.set()
                return
            if self.not_ready_reason() is None:
                self.notifier.ready()
            self.notifier.watchdog()
            await asyncio.sleep(self.notifier.watchdog_interval() or 1.0)

    async def _watch_descriptors(self) -> None:
        while True:
            self.descriptors.check()
            await asyncio.sleep(DESCRIPTOR_INTERVAL)

    async def _poll_queue_depths(self) -> None:
        while True:
            await asyncio.sleep(QUEUE_DEPTH_INTERVAL if self.link.ready.is_set() else 1.0)
            conn = self.link.connection
            if conn is None:
                continue
            try:
                await self._queue_depths(conn)
            except SETUP_ERRORS as exc:
                log.debug("polling queue depths failed: %s", exc)

    async def _queue_depths(self, conn: Connection) -> None:
        queues: dict[str, tuple[str, str]] = {}
        for trigger in self.routes.triggers:
            queues[trigger.queue] = ("trigger", trigger.key)
            queues[trigger.dead_letter_queue] = ("dead_letter", trigger.key)
        for broker in self.routes.brokers:
            queues[names.unmatched(broker)] = ("unmatched", broker)
        for queue, stats in (await queue_stats(conn, queues)).items():
            if stats is not None:
                kind, owner = queues[queue]
                self.metrics.child(self.metrics.queue_depth, kind, owner).set(stats[0])
                if kind == "trigger":
                    self.metrics.child(self.metrics.queue_consumers, kind, owner).set(stats[1])

    async def run(self, install_signals: bool = True) -> int:
        """Start, serve until SIGTERM/SIGINT (SIGHUP reloads), drain; the exit code."""
        await self.start()
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stopped.set)
            loop.add_signal_handler(signal.SIGHUP, self._reload_soon)
        await self.stopped.wait()
        fatal = self.link.fatal
        await self.drain()
        return 1 if fatal is not None else 0

    async def drain(self) -> None:
        budget = self.settings.lifecycle.drain_timeout.total_seconds()
        deadline = time.monotonic() + budget

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        log.info("draining (budget %.0fs)", budget)
        self.draining = True  # 1. not ready
        self.notifier.stopping()
        if self.ingress_server is not None:
            self.ingress_server.stop_accepting()  # 2. stop accepting
            await self.ingress_server.drain(left())  # 3. requests in flight finish publishing
        await self.publisher.wait_idle(left())
        await asyncio.gather(*(c.stop(left()) for c in self.consumers.values()))  # 4.
        REPEATED.flush_all()  # the counts of repeated warnings not logged yet
        UNAVAILABLE.flush_all()
        await self.link.stop()  # 5. close AMQP
        await self.client.close()
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tracing.shutdown(left())  # 6. flush telemetry
        if self.admin_server is not None:
            await self.admin_server.close()
        log.info("drained; exiting")

    # -- reload --
    def _reload_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self._reload_logged())
        self._background.append(task)

    async def _reload_logged(self) -> None:
        async with self._reload_lock:
            try:
                await self.reload()
            except Exception:
                log.exception("reload failed; keeping what runs now (send SIGHUP to retry)")

    async def reload(self) -> bool:
        """Re-read config and triggers; apply trigger and delivery changes without a restart."""
        try:
            loaded = load_config(self.config_path)
            routes = build_routes(loaded)
            archives = archive_streams(loaded, routes)
        except BridgeError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return False
        old = {t.key: t for t in self.routes.triggers}
        new = {t.key: t for t in routes.triggers}
        conn = self.link.connection
        if conn is None:
            log.error("reload refused: not connected to RabbitMQ; send SIGHUP again later")
            return False
        try:
            # Removed or changed triggers lose their old bindings; removed triggers' queues are
            # kept until `bridge topology prune --yes`.
            await self.declarer.apply(conn, routes, archives)
        except SETUP_ERRORS as exc:
            log.error("reload failed while declaring topology: %s", exc)
            return False
        self.routes = routes
        if self.ingress is not None:
            self.ingress.routes = routes
        if self.role in ("all", "dispatcher"):
            await self._apply_consumers(old, new, routes, conn)
        log.info("reloaded: %d trigger(s)", len(routes.triggers))
        return True

    async def _apply_consumers(
        self,
        old: dict[str, Trigger],
        new: dict[str, Trigger],
        routes: Routes,
        conn: Connection,
    ) -> None:
        budget = self.settings.lifecycle.drain_timeout.total_seconds()
        for key in old.keys() - new.keys():
            for role in ("subscriber", "sink"):
                consumer = self.consumers.pop((key, role), None)
                if consumer is not None:
                    self.link.remove(consumer)
                    await consumer.stop(budget)
        for key, trigger in new.items():
            existing = [self.consumers.get((key, r)) for r in ("subscriber", "sink")]
            if old.get(key) == trigger and existing[0] is not None:
                for consumer in existing:
                    if consumer is not None:
                        consumer.handler.routes = routes
                continue
            # New or changed: start the new consumer before stopping the old one.
            for consumer in self._new_consumers(trigger):
                await consumer.attach(conn)
                role = consumer.handler.role
                previous = self.consumers.get((key, role))
                self.consumers[(key, role)] = consumer
                self.link.add(consumer)
                if previous is not None:
                    self.link.remove(previous)
                    await previous.stop(budget)
            if not trigger.delivery.dead_letter_sink:
                stale = self.consumers.pop((key, "sink"), None)
                if stale is not None:
                    self.link.remove(stale)
                    await stale.stop(budget)


async def run_daemon(
    config_path: str | None,
    role: Role,
    on_started: Callable[[App], None] | None = None,
    worker_admin_file: str | None = None,
) -> int:
    loaded = load_config(config_path)
    raise_open_file_limit()
    app = App(loaded, role, config_path, worker_admin_file=worker_admin_file)
    if on_started is not None:
        on_started(app)
    return await app.run()
