"""bridge against a real 3-node RabbitMQ cluster (deploy/local/cluster.sh), faults under load.

Two replicas (`python -m bridge run` processes) start on different nodes and share the work; a
sender posts events with unique ids to both ingresses while one node is killed (-9), stopped
(the quorum queues' leader), or stalled (SIGSTOP, then SIGCONT). For each fault: every accepted
(202) event is delivered (lost = 0), duplicates are counted, and the time until the ingress
accepts everything again and until both replicas are ready is measured. The module prints the
table at its end. The cluster is started for this module and stopped after it; when it cannot
start the tests fail (they never skip).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.app import App
from bridge.config import load
from tests.conftest import eventually, trigger
from tests.daemon import ROOT, Daemon

pytestmark = pytest.mark.rabbit

SCRIPT = ROOT / "deploy" / "local" / "cluster.sh"
NODES = ("c1", "c2", "c3")
TYPE = "oss:ObjectCreated:PutObject"
FILTER = {"attributes": {"source": "acs.oss", "type": TYPE}}
FAULT_SECONDS = 6.0
HEARTBEAT = 2  # seconds: a stalled node is noticed in about two
ROWS: list[dict[str, Any]] = []


class Cluster:
    """deploy/local/cluster.sh, driven from the tests."""

    def __init__(self) -> None:
        self.ports = {node: 5681 + i for i, node in enumerate(NODES)}

    def run(self, *args: str, timeout: float = 240) -> str:
        result = subprocess.run(
            ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise AssertionError(
                f"cluster.sh {' '.join(args)} failed ({result.returncode}): "
                f"{result.stdout[-3000:]} {result.stderr[-3000:]}"
            )
        return result.stdout

    async def arun(self, *args: str) -> str:
        return await asyncio.to_thread(self.run, *args)

    def ctl(self, node: str, *args: str) -> str:
        return self.run("ctl", node, "-q", *args, timeout=60)

    def url(self, node: str, vhost: str) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.ports[node]}/{vhost}?heartbeat={HEARTBEAT}"

    def add_vhost(self, vhost: str) -> None:
        self.ctl("c1", "add_vhost", vhost)
        self.ctl("c1", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    def queues(self, vhost: str, node: str = "c1") -> dict[str, tuple[str, str]]:
        """Queue -> (leader node, members) as RabbitMQ reports them."""
        out = self.ctl(node, "list_queues", "-p", vhost, "name", "leader", "members")
        found = {}
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[0].startswith("bridge."):
                found[parts[0]] = (parts[1], parts[2])
        return found

    def heal(self) -> None:
        """Every node running again (after a test that failed half-way)."""
        status = subprocess.run(
            ["bash", str(SCRIPT), "status"], capture_output=True, text=True, timeout=60
        ).stdout
        for line in status.splitlines():
            name, state = line.split()[:2]
            node = name.split("@")[0].removeprefix("bridge-")
            if state == "paused":
                self.run("resume", node)
            elif state == "stopped":
                self.run("start", node)


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    made = Cluster()
    try:
        made.run("up")
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        with contextlib.suppress(Exception):
            made.run("down")
        pytest.fail(f"the local RabbitMQ cluster could not start: {exc}")
    try:
        yield made
    finally:
        made.run("down")
        if ROWS:  # printed even when output is captured: it goes into the closing note
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            capture = request.config.pluginmanager.get_plugin("capturemanager")
            if reporter is not None:
                hold = (
                    capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
                )
                with hold:
                    reporter.write_line("")
                    for line in fault_table(ROWS):
                        reporter.write_line(line)


def fault_table(rows: list[dict[str, Any]]) -> list[str]:
    head = (
        "fault",
        "sent",
        "accepted",
        "delivered unique",
        "duplicates",
        "lost",
        "503s",
        "other errors",
        "503s until (s)",
        "replica reconnected (s)",
    )
    keys = (
        "fault",
        "sent",
        "accepted",
        "delivered_unique",
        "duplicates",
        "lost",
        "503",
        "errors",
        "ingress_back_s",
        "reconnected_s",
    )
    table = [head, *[tuple(str(r[k]) for k in keys) for r in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["CLUSTER FAULTS (3 RabbitMQ nodes, 2 bridge replicas, quorum queues)"]
    for row in table:
        lines.append(" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))
    return lines


class Replica(Daemon):
    """A `bridge run` process given a cluster's nodes (`[rabbitmq] urls`) in a fixed order."""

    def __init__(self, workdir: Path, urls: list[str], triggers: list[dict[str, Any]], name: str):
        self.urls = urls
        super().__init__(workdir, urls[0], triggers, name=name)

    def write_config(self, triggers: list[dict[str, Any]]) -> None:
        from tests.daemon import toml_triggers

        self.triggers = triggers
        self.config.write_text(
            f"[ingress]\nport = {self.port}\n[admin]\nport = {self.admin}\n"
            f'[rabbitmq]\nurls = {json.dumps(self.urls)}\nurl_order = "listed"\n'
            "publish_timeout = 3\nconnect_timeout = 3\nreconnect_max_delay = 5\n"
            "quorum_initial_group_size = 3\n"
            "[lifecycle]\ndrain_timeout = 10\n" + toml_triggers(triggers) + "\n"
        )

    def log_lines(self) -> Iterator[tuple[float, str]]:
        """(Unix time, message) of each JSON log line."""
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                doc = json.loads(line)
                stamp = datetime.strptime(doc["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
            except (ValueError, KeyError, TypeError):
                continue
            yield stamp.replace(tzinfo=UTC).timestamp(), str(doc.get("message", ""))

    def connected_to(self) -> str | None:
        """The node of the last `connected to RabbitMQ at` log line."""
        node = None
        for _, message in self.log_lines():
            if message.startswith("connected to RabbitMQ at"):
                port = message.rsplit(":", 1)[1].split("/")[0]
                node = {str(5681 + i): n for i, n in enumerate(NODES)}.get(port)
        return node

    def reconnected_after(self, wall: float) -> float | None:
        """Seconds from `wall` (Unix time) until this replica was connected again, when it lost
        its connection after `wall`; None when it did not lose it."""
        lost = False
        for at, message in self.log_lines():
            if at < wall:
                continue
            if message.startswith(("lost the connection", "RabbitMQ link failed")):
                lost = True
            elif lost and message.startswith("connected to RabbitMQ at"):
                return at - wall
        return None

    def stop_gracefully(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@dataclass
class Traffic:
    """Posts events with unique ids to every replica's ingress, and records each answer."""

    urls: list[str]
    answers: list[tuple[float, float, int, str]] = field(default_factory=list)
    stop: bool = False

    async def run(self, per_url: int = 2, pause: float = 0.01) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def worker(url: str) -> None:
                while not self.stop:
                    event_id = f"cluster-{uuid.uuid4().hex}"
                    body = {
                        "specversion": "1.0",
                        "id": event_id,
                        "source": "acs.oss",
                        "type": TYPE,
                        "datacontenttype": "application/json",
                        "data": {"bucket": "knative", "key": "demo.data"},
                    }
                    started = time.monotonic()
                    try:
                        async with session.post(url, json=body) as r:
                            await r.read()
                            status = r.status
                    except (aiohttp.ClientError, OSError, TimeoutError):
                        status = -1
                    self.answers.append((started, time.monotonic(), status, event_id))
                    await asyncio.sleep(pause)

            await asyncio.gather(*(worker(u) for u in self.urls for _ in range(per_url)))

    @property
    def accepted(self) -> list[str]:
        return [a[3] for a in self.answers if a[2] == 202]

    def accepted_since(self, moment: float) -> int:
        return sum(1 for a in self.answers if a[2] == 202 and a[0] >= moment)

    def failures_after(self, moment: float) -> list[tuple[float, float, int, str]]:
        return [a for a in self.answers if a[2] != 202 and a[1] >= moment]


async def delivered_by(replica: Daemon) -> int:
    """Successful deliveries the replica made (its bridge_deliveries_total, 2xx)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{replica.admin}/metrics") as r,
    ):
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("bridge_deliveries_total{") and 'class="2xx"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


async def ready(replica: Daemon, session: aiohttp.ClientSession) -> bool:
    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
        async with session.get(f"http://127.0.0.1:{replica.admin}/readyz") as r:
            return r.status == 200
    return False


Fault = Callable[[Cluster, list[Replica], str], Awaitable[tuple[str, str]]]


async def _under_fault(
    cluster: Cluster,
    replicas: list[Replica],
    traffic: Traffic,
    sub: Any,
    name: str,
    orders: tuple[tuple[str, ...], tuple[str, ...]],
    inject: Fault,
    vhost: str,
) -> tuple[float, float, str, list[int]]:
    """The replicas started and loaded, the fault injected and undone, every accepted event
    delivered: (monotonic and wall time of the fault, the node hit, deliveries per replica)."""
    sender: asyncio.Task[None] | None = None
    try:
        for replica, order in zip(replicas, orders, strict=True):
            replica.start()
            await replica.wait_ready(30)
            # Ready means connected; the log line saying where follows in the same step.
            for _ in range(200):  # up to 10 s
                if replica.connected_to() is not None:
                    break
                await asyncio.sleep(0.05)
            assert replica.connected_to() == order[0], replica.logs()[-1500:]
        sender = asyncio.create_task(traffic.run())
        await eventually(lambda: len(traffic.accepted) > 200, timeout=20, what="load")
        fault_at = time.monotonic()
        fault_wall = time.time()
        hit, undo = await inject(cluster, replicas, vhost)
        await asyncio.sleep(FAULT_SECONDS)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            undoing = asyncio.create_task(cluster.arun(undo, hit))
            # Recovered: both replicas ready and the ingress accepting without failures.
            deadline = time.monotonic() + 45
            while True:
                states = [await ready(r, session) for r in replicas]
                now = time.monotonic()
                recent = [a for a in traffic.answers if a[0] >= now - 2.0]
                if all(states) and recent and all(a[2] == 202 for a in recent):
                    break
                if now > deadline:
                    raise AssertionError(
                        f"{name}: no recovery within 45 s (ready {states}); logs: "
                        + " ".join(r.logs()[-1500:] for r in replicas)
                    )
                await asyncio.sleep(0.1)
            await undoing
        back_at = time.monotonic()
        await eventually(
            lambda: traffic.accepted_since(back_at) > 100, timeout=20, what="load after the fault"
        )
    finally:
        traffic.stop = True
        if sender is not None:
            await sender
    accepted = traffic.accepted
    await eventually(
        lambda: set(accepted) <= set(sub.ids()),
        timeout=60,
        what=f"every accepted event delivered after {name} "
        f"(missing {len(set(accepted) - set(sub.ids()))})",
    )
    return fault_at, fault_wall, hit, [await delivered_by(r) for r in replicas]


async def run_fault(
    cluster: Cluster,
    tmp_path: Path,
    subscriber_factory: Callable[..., Awaitable[Any]],
    name: str,
    orders: tuple[tuple[str, ...], tuple[str, ...]],
    inject: Fault,
    before: Callable[[Cluster, str, Replica], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Start two replicas (the first on `orders[0][0]`, the second on `orders[1][0]`), put
    them under load, `inject` the fault (it returns the node it hit and how to undo it), undo
    it after FAULT_SECONDS, then check that every accepted event was delivered."""
    vhost = f"cluster-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(cluster.add_vhost, vhost)
    sub = await subscriber_factory()
    triggers = [trigger("t", sub.url, filter=FILTER)]
    replicas = [
        Replica(tmp_path, [cluster.url(n, vhost) for n in order], triggers, f"replica-{i}")
        for i, order in enumerate(orders)
    ]
    if before is not None:
        await before(cluster, vhost, replicas[0])
    traffic = Traffic([r.url for r in replicas])
    try:
        fault_at, fault_wall, hit, shares = await _under_fault(
            cluster, replicas, traffic, sub, name, orders, inject, vhost
        )
    finally:
        for replica in replicas:
            replica.stop_gracefully()
        await asyncio.to_thread(cluster.heal)
    accepted = traffic.accepted
    received = sub.ids()
    failures = traffic.failures_after(fault_at)
    statuses: dict[int, int] = {}
    for answer in traffic.answers:
        statuses[answer[2]] = statuses.get(answer[2], 0) + 1
    delivered = set(received) & set(accepted)
    times = [r.reconnected_after(fault_wall) for r in replicas]
    reconnected = round(max(t for t in times if t is not None), 1) if any(times) else "-"
    row = {
        "fault": name,
        "hit": hit,
        "sent": len(traffic.answers),
        "accepted": len(accepted),
        "delivered_unique": len(delivered),
        "duplicates": len(received) - len(set(received)),
        "lost": len(set(accepted) - set(received)),
        "503": statuses.get(503, 0),
        "errors": sum(n for s, n in statuses.items() if s not in (202, 503)),
        "ingress_back_s": round(max((a[1] for a in failures), default=fault_at) - fault_at, 1),
        "reconnected_s": reconnected,
        "statuses": statuses,
        "replicas_now_on": [r.connected_to() for r in replicas],
        "delivered_by_replica": shares,
    }
    ROWS.append(row)
    print("CLUSTER-FAULT", json.dumps(row))
    assert row["lost"] == 0
    assert all(share > 0 for share in shares), shares  # both replicas shared the work
    return row


async def test_kill9_of_the_node_a_replica_is_connected_to(
    cluster: Cluster, tmp_path: Path, subscriber_factory: Callable[..., Awaitable[Any]]
) -> None:
    async def kill(cluster: Cluster, replicas: list[Replica], vhost: str) -> tuple[str, str]:
        node = replicas[0].connected_to()
        assert node is not None
        await cluster.arun("kill", node)
        return node, "start"

    row = await run_fault(
        cluster,
        tmp_path,
        subscriber_factory,
        "kill -9 the node replica 1 is on",
        (("c1", "c2", "c3"), ("c2", "c3", "c1")),
        kill,
    )
    assert row["hit"] == "c1"
    # It moved on: to c2, the next of its list, or to c3 when c2 could not take it at once
    # (the quorum queues were electing their new leaders).
    assert row["replicas_now_on"][0] in ("c2", "c3")
    assert row["replicas_now_on"][1] == "c2"  # the other one never moved
    assert isinstance(row["reconnected_s"], float)


async def test_stop_the_quorum_queues_leader_node(
    cluster: Cluster, tmp_path: Path, subscriber_factory: Callable[..., Awaitable[Any]]
) -> None:
    async def declare_on_c3(cluster: Cluster, vhost: str, first: Replica) -> None:
        # The queues' leaders go where they are declared: declare them through c3, which no
        # replica uses, so stopping the leader is not the same fault as losing one's node.
        loaded = load(str(first.config))
        rabbitmq = loaded.settings.rabbitmq.model_copy(
            update={"urls": [loaded.settings.rabbitmq.urls[2]]}
        )
        settings = loaded.settings.model_copy(
            update={
                "rabbitmq": rabbitmq,
                "ingress": loaded.settings.ingress.model_copy(update={"port": 0}),
                "admin": loaded.settings.admin.model_copy(update={"port": 0}),
            }
        )
        app = App(loaded.model_copy(update={"settings": settings}), "ingress")
        await app.start()
        try:
            await eventually(lambda: app.not_ready_reason() is None, timeout=20, what="declared")
        finally:
            await app.drain()
        leaders = {q: leader for q, (leader, _) in cluster.queues(vhost).items()}
        assert leaders["bridge.trigger.default.t"] == "bridge-c3@localhost", leaders

    async def stop_leader(cluster: Cluster, replicas: list[Replica], vhost: str) -> tuple[str, str]:
        leader, members = cluster.queues(vhost)["bridge.trigger.default.t"]
        assert members.count("@localhost") == 3, members  # quorum_initial_group_size = 3
        node = leader.split("@")[0].removeprefix("bridge-")
        await cluster.arun("stop", node)
        return node, "start"

    row = await run_fault(
        cluster,
        tmp_path,
        subscriber_factory,
        "stop the quorum queues' leader node",
        (("c1", "c2", "c3"), ("c2", "c1", "c3")),
        stop_leader,
        before=declare_on_c3,
    )
    assert row["hit"] == "c3"
    assert row["replicas_now_on"] == ["c1", "c2"]  # nobody had to move


async def test_sigstop_stall_of_a_node(
    cluster: Cluster, tmp_path: Path, subscriber_factory: Callable[..., Awaitable[Any]]
) -> None:
    async def pause(cluster: Cluster, replicas: list[Replica], vhost: str) -> tuple[str, str]:
        node = replicas[0].connected_to()
        assert node is not None
        await cluster.arun("pause", node)
        return node, "resume"

    row = await run_fault(
        cluster,
        tmp_path,
        subscriber_factory,
        "SIGSTOP the node replica 1 is on (6 s)",
        (("c1", "c2", "c3"), ("c2", "c3", "c1")),
        pause,
    )
    assert row["hit"] == "c1"
    assert row["replicas_now_on"][0] in ("c2", "c3")  # heartbeats noticed the stall; it moved on
    assert isinstance(row["reconnected_s"], float)
