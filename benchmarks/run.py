"""`make bench`: bridge against the floor-cost reference pipeline, in the same run, on this machine.

For each scenario it starts the system under test (bridge, or the floor pipeline in
benchmarks/floor/) delivering to a counting sink, then:
- throughput: wrk, 32 connections, the reference OSS event in EventBridge envelope mode with fresh
  ids: events accepted and delivered, ingress requests/s, end-to-end events/s (delivered / time
  from the first send to the last delivery), bridge CPU seconds per 1,000 events, peak RSS;
- latency: an open-loop load at a fixed rate below saturation (default 1,000 events/s): ingress
  p50/p99 (time to the HTTP answer) and end-to-end p50/p99 (send to delivery).
It prints a table with each figure and the ratio to the floor measured in the same run; medians
over --runs. `--quick` (CI) runs bridge alone for a few seconds and checks delivery counts only:
it never asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.load import run_load

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
VHOST = "bridge-bench"
TRACE_SINK_PORT_FALLBACK = 0


@dataclass
class Scenario:
    name: str
    system: str  # "bridge" or "floor"
    triggers: int = 1
    matching: int = 1  # how many of the triggers match each event (fan-out)
    pad: int = 0
    tracing: float | None = None
    archive: bool = False  # [[archives]] for the broker: every event also appended to a stream
    cesql: bool = False  # the triggers' filters written in CESQL instead of filter.attributes
    pattern: bool = False  # EventBridge patterns on the data (bucket name, size): content matching
    template: bool = False  # the matching trigger delivers a TEMPLATE transformation
    workers: int = 1  # bridge run --workers N
    backlog: int = 0  # messages waiting for a trigger whose subscriber is down (refuses)


SCENARIOS = [
    Scenario("floor 1KB", "floor"),
    Scenario("bridge 1 trigger 1KB", "bridge"),
    Scenario("bridge 1 trigger 1KB + archive", "bridge", archive=True),
    Scenario("bridge 20 disjoint triggers", "bridge", triggers=20, matching=1),
    Scenario("bridge 20 disjoint cesql triggers", "bridge", triggers=20, matching=1, cesql=True),
    Scenario("bridge 20 pattern triggers", "bridge", triggers=20, matching=1, pattern=True),
    Scenario(
        "bridge 20 pattern triggers + TEMPLATE",
        "bridge",
        triggers=20,
        matching=1,
        pattern=True,
        template=True,
    ),
    Scenario("bridge fan-out x5", "bridge", triggers=5, matching=5),
    Scenario("bridge backlog 100k down subscriber", "bridge", backlog=100_000),
    Scenario("bridge --workers 2", "bridge", workers=2),
    Scenario("bridge tracing 0.1", "bridge", tracing=0.1),
    Scenario("bridge tracing 1.0", "bridge", tracing=1.0),
    Scenario("floor 64KB", "floor", pad=64 * 1024),
    Scenario("bridge 1 trigger 64KB", "bridge", pad=64 * 1024),
]


@dataclass
class Result:
    scenario: str
    accepted: int = 0
    delivered: int = 0
    ingress_rps: float = 0.0
    e2e_eps: float = 0.0
    wrk_p99_ms: float | None = None
    ingress_p50_ms: float | None = None
    ingress_p99_ms: float | None = None
    e2e_p50_ms: float | None = None
    e2e_p99_ms: float | None = None
    cpu_ms_per_1k: float | None = None
    mq_ms_per_1k: float | None = None  # RabbitMQ's (beam.smp) CPU per 1,000 deliveries
    total_ms_per_1k: float | None = None  # system under test + RabbitMQ + sink
    peak_rss_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rabbitmqctl(*args: str) -> None:
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    subprocess.run([ctl, "-q", *args], check=False, capture_output=True, timeout=60)


def fresh_vhost() -> str:
    rabbitmqctl("delete_vhost", VHOST)
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    return f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"


def http_json(url: str, method: str = "GET") -> Any:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(OSError, ValueError):
            urllib.request.urlopen(url, timeout=1).read()
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and its live descendants (a supervisor and its workers)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    total = (int(fields[11]) + int(fields[12])) / ticks
    for child in children(pid):
        total += cpu_seconds(child)
    return total


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def rabbitmq_pid() -> int | None:
    """The local RabbitMQ node's Erlang VM (beam.smp), whose CPU counts too."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if (proc / "comm").read_text().strip() == "beam.smp":
                    cmdline = (proc / "cmdline").read_bytes()
                    if b"rabbit" in cmdline:
                        return int(proc.name)
    return None


def peak_rss_mb(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


PATTERN = (
    'pattern = \'{"source": ["acs.oss"], "type": [{"prefix": "oss:ObjectCreated:"}], "data": '
    '{"oss": {"bucket": {"name": ["BUCKET"]}, "object": {"size": [{"numeric": [">", 1024]}]}}}}\''
)
TEMPLATE = (
    'transformation = { form = "TEMPLATE", value = { bucket = "$.data.oss.bucket.name", '
    'key = "$.data.oss.object.key", size = "$.data.oss.object.size" }, template = '
    '\'{"bucket": "${bucket}", "key": "${key}", "size": ${size}}\' }'
)


def bridge_config(
    scenario: Scenario, amqp: str, port: int, admin: int, sink: str, otlp: int
) -> str:
    lines = [
        f"[ingress]\nport = {port}\nmax_event_bytes = {256 * 1024 + scenario.pad}",
        f"[admin]\nport = {admin}",
        f'[rabbitmq]\nurl = "{amqp}"',
        '[logging]\nlevel = "warning"',
    ]
    if scenario.tracing is not None:
        lines.append(
            '[tracing]\nenabled = true\nprotocol = "http/protobuf"\n'
            f'endpoint = "http://127.0.0.1:{otlp}"\nsample_ratio = {scenario.tracing}'
        )
    if scenario.backlog:
        lines.append(
            '[[triggers]]\nname = "down"\nbroker = "eventbridge-default-broker"\n'
            'filter.attributes = { source = "acs.oss", type = "bench:down" }\n'
            f'subscriber.uri = "http://127.0.0.1:{free_port()}/"'
        )
    if scenario.archive:
        lines.append('[[archives]]\nbroker = "default/eventbridge-default-broker"')
    for i in range(scenario.triggers):
        event_type = "oss:ObjectCreated:PutObject" if i < scenario.matching else f"bench:other:{i}"
        if scenario.pattern:  # the same source and type: the bucket in the data tells them apart
            bucket = "knative" if i < scenario.matching else f"bench-bucket-{i}"
            match = PATTERN.replace("BUCKET", bucket)
            if scenario.template and i < scenario.matching:
                match += "\n" + TEMPLATE
        elif scenario.cesql:
            match = f"filters = [{{ cesql = \"source = 'acs.oss' AND type = '{event_type}'\" }}]"
        else:
            match = f'filter.attributes = {{ source = "acs.oss", type = "{event_type}" }}'
        lines.append(
            f'[[triggers]]\nname = "bench-{i}"\nbroker = "eventbridge-default-broker"\n'
            f'{match}\nsubscriber.uri = "{sink}"'
        )
    return "\n\n".join(lines) + "\n"


class Stack:
    """The processes of one measurement: sink, system under test, optional OTLP receiver."""

    def __init__(self, scenario: Scenario, workdir: Path) -> None:
        self.scenario = scenario
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sink_port = free_port()
        self.port = free_port()
        self.admin = free_port()
        self.otlp = free_port()
        self.system_pid = 0
        self.amqp = ""

    def _spawn(self, args: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        # Logs go to a file: an unread pipe would fill up and block the process under test.
        with (self.workdir / f"process-{len(self.procs)}.log").open("ab") as log:
            proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, **kw)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        uvicorn = [PY, "-m", "uvicorn", "--host", "127.0.0.1", "--loop", "uvloop"]
        uvicorn += ["--http", "httptools", "--no-access-log", "--log-level", "warning"]
        self._spawn([*uvicorn, "--port", str(self.sink_port), "benchmarks.sink:app"])
        sink = f"http://127.0.0.1:{self.sink_port}/"
        if self.scenario.tracing is not None:
            self._spawn([*uvicorn, "--port", str(self.otlp), "benchmarks.otlp_sink:app"])
        if self.scenario.system == "floor":
            script = HERE / "floor" / "raw_pipeline.py"
            proc = self._spawn([PY, str(script), str(self.port), sink])
        else:
            config = self.workdir / "bench.toml"
            self.amqp = fresh_vhost()
            config.write_text(
                bridge_config(self.scenario, self.amqp, self.port, self.admin, sink, self.otlp)
            )
            command = [PY, "-m", "bridge", "run", "--config", str(config)]
            if self.scenario.workers > 1:
                command += ["--workers", str(self.scenario.workers)]
            proc = self._spawn(command)
        self.system_pid = proc.pid
        wait_http(sink)
        if self.scenario.system == "bridge":
            deadline = time.time() + 30
            while True:
                try:
                    http_json(f"http://127.0.0.1:{self.admin}/readyz")
                    break
                except Exception:
                    if time.time() > deadline:
                        raise RuntimeError("bridge did not become ready") from None
                    time.sleep(0.2)
        else:
            self._wait_port(self.port)
            time.sleep(2)  # the floor declares and purges its queue at start-up

    def _wait_port(self, port: int) -> None:
        deadline = time.time() + 30
        while time.time() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return
            time.sleep(0.1)
        raise RuntimeError(f"port {port} did not open")

    @property
    def ingress(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def sink(self) -> str:
        return f"http://127.0.0.1:{self.sink_port}/"

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_delivered(sink: str, expected: int | None, settle: float = 2.0) -> dict[str, Any]:
    """Poll the sink until it has `expected` deliveries, or its count stops growing."""
    prev, stable_since = -1, time.time()
    deadline = time.time() + 180
    state: dict[str, Any] = http_json(sink)
    while time.time() < deadline:
        state = http_json(sink)
        if expected is not None and state["count"] >= expected:
            break
        if state["count"] != prev:
            prev, stable_since = state["count"], time.time()
        elif time.time() - stable_since > settle:
            break
        time.sleep(0.25)
    return state


def parse_ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def fill_backlog(amqp: str, count: int) -> None:
    """`count` OSS events straight into the down trigger's queue, confirmed."""

    async def fill() -> None:
        import aiormq

        connection = await aiormq.connect(amqp)
        channel = await connection.channel(publisher_confirms=True)
        body = b'{"bucket":"knative","key":"demo.data","pad":"' + b"x" * 900 + b'"}'
        headers: dict[str, Any] = {
            "ce-specversion": "1.0",
            "ce-source": "acs.oss",
            "ce-type": "bench:down",
            "bridge-received": int(time.time() * 1000),
        }
        properties = aiormq.spec.Basic.Properties
        for start in range(0, count, 1000):
            await asyncio.gather(
                *(
                    channel.basic_publish(
                        body,
                        routing_key="bridge.trigger.default.down",
                        properties=properties(
                            delivery_mode=2,
                            content_type="application/json",
                            headers={**headers, "ce-id": f"backlog-{i}"},
                        ),
                    )
                    for i in range(start, min(count, start + 1000))
                )
            )
        await connection.close()

    asyncio.run(fill())


def futile_attempts(stack: Stack, seconds: float, result: Result) -> None:
    """With no load, what the down trigger's backlog costs: attempts/s and CPU per attempt."""

    def attempts() -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.admin}/metrics", timeout=10) as r:
            text = r.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("bridge_deliveries_total{") and 'trigger="default/down"' in line
        )

    time.sleep(2.0)  # the first attempts find the subscriber down and the throttle engages
    n0, cpu0, t0 = attempts(), cpu_seconds(stack.system_pid), time.time()
    time.sleep(seconds)
    n1, cpu1, t1 = attempts(), cpu_seconds(stack.system_pid), time.time()
    made = n1 - n0
    result.extra["futile_attempts_per_s"] = made / (t1 - t0)
    result.extra["idle_cpu_percent"] = (cpu1 - cpu0) / (t1 - t0) * 100
    if made:
        result.extra["cpu_ms_per_futile_attempt"] = (cpu1 - cpu0) * 1000 / made


def throughput(stack: Stack, seconds: int, conns: int, result: Result) -> None:
    http_json(stack.sink, "DELETE")
    mq = rabbitmq_pid()
    sink_pid = stack.procs[0].pid
    cpu0 = cpu_seconds(stack.system_pid)
    mq0 = cpu_seconds(mq) if mq else 0.0
    sink0 = cpu_seconds(sink_pid)
    t0 = time.time()
    env = {**os.environ, "PAD": str(stack.scenario.pad)}
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(HERE / "bench.lua"),
            stack.ingress,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    sent = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result.accepted = sent - (int(non2xx.group(1)) if non2xx else 0)
    result.ingress_rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    result.wrk_p99_ms = parse_ms(re.search(r"99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    expected = result.accepted * stack.scenario.matching
    state = wait_delivered(stack.sink, expected)
    cpu1 = cpu_seconds(stack.system_pid)
    mq1 = cpu_seconds(mq) if mq else 0.0
    sink1 = cpu_seconds(sink_pid)
    result.delivered = state["count"]
    if result.delivered:
        per_1k = 1000 / (result.delivered / 1000)
        result.e2e_eps = result.delivered / max(1e-6, state["last"] - t0)
        result.cpu_ms_per_1k = (cpu1 - cpu0) * per_1k
        if mq:
            result.mq_ms_per_1k = (mq1 - mq0) * per_1k
        result.total_ms_per_1k = (cpu1 - cpu0 + mq1 - mq0 + sink1 - sink0) * per_1k
    # The largest process: bridge itself, or its biggest worker under --workers.
    rss = [peak_rss_mb(p) for p in [stack.system_pid, *children(stack.system_pid)]]
    result.peak_rss_mb = max((r for r in rss if r is not None), default=None)


def latency(stack: Stack, rate: int, seconds: int, result: Result) -> None:
    http_json(stack.sink, "DELETE")
    load = asyncio.run(run_load(stack.ingress, rate * seconds, rate, 32, stack.scenario.pad))
    state = wait_delivered(stack.sink, load.accepted * stack.scenario.matching)
    p50, p99 = load.pct(0.5), load.pct(0.99)
    result.ingress_p50_ms = p50 * 1000 if p50 is not None else None
    result.ingress_p99_ms = p99 * 1000 if p99 is not None else None
    lat = state["latency"]
    result.e2e_p50_ms = lat["p50"] * 1000 if lat["p50"] is not None else None
    result.e2e_p99_ms = lat["p99"] * 1000 if lat["p99"] is not None else None
    result.extra["latency_accepted"] = load.accepted
    result.extra["latency_delivered"] = state["count"]


def measure(scenario: Scenario, args: argparse.Namespace) -> Result:
    result = Result(scenario.name)
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(scenario, Path(tmp))
        try:
            stack.start()
            if scenario.backlog:
                fill_backlog(stack.amqp, scenario.backlog)
                futile_attempts(stack, 5.0, result)
            throughput(stack, args.seconds, args.conns, result)
            latency(stack, args.rate, args.latency_seconds, result)
        finally:
            stack.stop()
    return result


def median_result(results: list[Result]) -> Result:
    out = Result(results[0].scenario)
    for name in (
        "accepted",
        "delivered",
        "ingress_rps",
        "e2e_eps",
        "wrk_p99_ms",
        "ingress_p50_ms",
        "ingress_p99_ms",
        "e2e_p50_ms",
        "e2e_p99_ms",
        "cpu_ms_per_1k",
        "mq_ms_per_1k",
        "total_ms_per_1k",
        "peak_rss_mb",
    ):
        values = [getattr(r, name) for r in results if getattr(r, name) is not None]
        if values:
            setattr(out, name, statistics.median(values))
    for key in ("futile_attempts_per_s", "idle_cpu_percent", "cpu_ms_per_futile_attempt"):
        extras = [r.extra[key] for r in results if key in r.extra]
        if extras:
            out.extra[key] = statistics.median(extras)
    return out


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(results: dict[str, Result]) -> str:
    floor = results.get("floor 1KB")
    floor64 = results.get("floor 64KB")
    head = (
        f"{'scenario':30} {'accepted':>9} {'delivered':>9} {'ingress/s':>9} {'e2e/s':>8} "
        f"{'x floor':>7} {'wrk p99':>8} {'in p50':>7} {'in p99':>7} {'e2e p50':>8} "
        f"{'e2e p99':>8} {'cpu/1k':>7} {'mq/1k':>6} {'total/1k':>8} {'rss MB':>7}"
    )
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        base = floor64 if "64KB" in name else floor
        ratio = r.e2e_eps / base.e2e_eps if base and base.e2e_eps else None
        lines.append(
            f"{name:30} {r.accepted:>9,} {r.delivered:>9,} {fmt(r.ingress_rps):>9} "
            f"{fmt(r.e2e_eps):>8} {fmt(ratio, 2):>7} {fmt(r.wrk_p99_ms, 1):>8} "
            f"{fmt(r.ingress_p50_ms, 1):>7} {fmt(r.ingress_p99_ms, 1):>7} "
            f"{fmt(r.e2e_p50_ms, 1):>8} {fmt(r.e2e_p99_ms, 1):>8} {fmt(r.cpu_ms_per_1k):>7} "
            f"{fmt(r.mq_ms_per_1k):>6} {fmt(r.total_ms_per_1k):>8} {fmt(r.peak_rss_mb):>7}"
        )
    lines.append(
        "latencies in ms; in = ingress (HTTP answer), e2e = send to delivery, at the fixed rate; "
        "wrk p99 under saturation; cpu/1k = CPU ms of the bridge (or floor) processes per 1,000 "
        "deliveries; mq/1k = RabbitMQ's (beam.smp); total/1k = bridge (or floor) + RabbitMQ + "
        "sink; x floor = e2e/s over the floor's e2e/s (same event size) in this run"
    )
    return "\n".join(lines)


def quick(args: argparse.Namespace) -> int:
    """CI: bridge alone, a few seconds, delivery counts checked (no timings asserted)."""
    failures = 0
    for scenario in (
        Scenario("bridge 1 trigger", "bridge"),
        Scenario("bridge fan-out x5", "bridge", triggers=5, matching=5),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            stack = Stack(scenario, Path(tmp))
            try:
                stack.start()
                load = asyncio.run(run_load(stack.ingress, args.events, None, 32))
                expected = load.accepted * scenario.matching
                state = wait_delivered(stack.sink, expected, settle=5.0)
            finally:
                stack.stop()
        ok = load.accepted == args.events and state["count"] == expected
        failures += not ok
        print(
            f"{scenario.name}: sent {load.sent}, accepted {load.accepted}, "
            f"delivered {state['count']} of {expected} expected "
            f"({load.sent / load.seconds:,.0f} req/s) {'ok' if ok else 'FAILED'}"
        )
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI mode: counts only, a few seconds")
    parser.add_argument("--events", type=int, default=2000, help="events per --quick scenario")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--conns", type=int, default=32)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--latency-seconds", type=int, default=5)
    parser.add_argument("--only", help="comma-separated scenario names (substring match)")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args(argv)
    if args.quick:
        return quick(args)
    if shutil.which("wrk") is None:
        print("make bench needs wrk: sudo apt-get install wrk", file=sys.stderr)
        return 2
    scenarios = SCENARIOS
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        scenarios = [s for s in SCENARIOS if any(w in s.name for w in wanted)]
    runs: dict[str, list[Result]] = {s.name: [] for s in scenarios}
    for run in range(args.runs):
        for scenario in scenarios:
            result = measure(scenario, args)
            runs[scenario.name].append(result)
            print(
                f"run {run + 1}/{args.runs} {scenario.name}: {json.dumps(result.__dict__)}",
                file=sys.stderr,
                flush=True,
            )
    medians = {name: median_result(rs) for name, rs in runs.items()}
    print(f"bridge benchmark, medians of {args.runs} run(s), {time.strftime('%Y-%m-%d %H:%M')}")
    print(table(medians))
    for name, r in medians.items():
        if "futile_attempts_per_s" in r.extra:
            print(
                f"{name}, no load: {r.extra['futile_attempts_per_s']:.1f} futile attempts/s, "
                f"{r.extra.get('cpu_ms_per_futile_attempt', 0):.2f} ms CPU each, bridge at "
                f"{r.extra['idle_cpu_percent']:.1f}% of a core"
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps({k: [r.__dict__ for r in v] for k, v in runs.items()}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
