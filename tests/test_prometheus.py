"""The alert rules (deploy/prometheus/alerts.yaml) pass `promtool check rules` and their unit
tests (`promtool test rules`), and a real Prometheus scraping a running bridge returns data for
every Prometheus query of the Grafana dashboard (deploy/grafana/dashboards/bridge.json) and
loads the rules. promtool and prometheus come from Debian's `prometheus` package, installed by
`make prometheus` (part of `make test`); without them these tests fail, they never skip."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import bridge.app
from tests.conftest import trigger
from tests.daemon import ROOT, free_port

pytestmark = pytest.mark.prometheus

RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "bridge.json"
RATE_INTERVAL = "20s"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: run `make prometheus` (deploy/local/ensure-prometheus.sh; "
            "Debian's prometheus package), which make test does first"
        )
    return path


def test_the_alert_rules_are_valid() -> None:
    result = subprocess.run(
        [tool("promtool"), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout + result.stderr


def test_the_alert_rules_pass_their_unit_tests() -> None:
    result = subprocess.run(
        [tool("promtool"), "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=RULE_TESTS.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_has_a_unit_test_and_a_runbook() -> None:
    import yaml

    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    tested = {
        check["alertname"]
        for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for check in case["alert_rule_test"]
        if check.get("exp_alerts")
    }
    assert {r["alert"] for r in rules} == tested
    for rule in rules:
        assert len(rule["annotations"]["runbook"]) > 150, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info")


def test_a_broken_rule_file_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        RULES.read_text().replace("bridge_rabbitmq_connected == 0", "bridge_rabbitmq_connected ==")
    )
    result = subprocess.run(
        [tool("promtool"), "check", "rules", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every Prometheus target, the variables filled in as Grafana
    would with everything selected."""
    board = json.loads(DASHBOARD.read_text())
    found = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            source = target.get("datasource") or panel.get("datasource") or {}
            if isinstance(source, dict) and source.get("type") != "prometheus":
                continue  # Tempo's TraceQL panels
            expr = target.get("expr")
            if expr:
                found.append((panel["title"], expr))
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict) and query.get("query", "").startswith("label_values("):
            inner = query["query"][len("label_values(") : -1].rsplit(",", 1)[0]
            found.append((f"variable {variable['name']}", inner))
    return [
        (title, expr.replace("$__rate_interval", RATE_INTERVAL).replace('"$trigger"', '".*"'))
        for title, expr in found
    ]


def test_the_dashboard_queries_are_found() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 13
    assert all("$" not in expr for _, expr in queries), queries


def launch(config: Path, folder: Path, port: int) -> subprocess.Popen[bytes]:
    with (folder / "prometheus.log").open("wb") as log:
        return subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=log,
        )


@pytest.fixture
async def prometheus(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[subprocess.Popen[bytes]] = []

    async def start(target: str) -> str:
        port = free_port()
        (tmp_path / "alerts.yaml").write_text(RULES.read_text())
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "rule_files: [alerts.yaml]\n"
            "scrape_configs:\n  - job_name: bridge\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        made.append(launch(config, tmp_path, port))
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in made:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def query(session: aiohttp.ClientSession, base: str, expr: str) -> list[Any]:
    async with session.get(f"{base}/api/v1/query", params={"query": expr}) as r:
        body = await r.json()
    assert body.get("status") == "success", (expr, body)
    return list(body["data"]["result"])


@pytest.mark.rabbit
async def test_a_real_prometheus_gets_data_for_every_dashboard_query(
    bridge_factory, subscriber_factory, prometheus, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(bridge.app, "QUEUE_DEPTH_INTERVAL", 1.0)
    ok = await subscriber_factory()
    failing = await subscriber_factory(script=[(503, {}, b"")])
    running = await bridge_factory(
        triggers=[
            trigger("ok", ok.url, filter={"attributes": {"type": "t.ok"}}),
            trigger(
                "failing",
                failing.url,
                filter={"attributes": {"type": "t.fail"}},
                delivery={"retry": 1, "backoffDelay": "PT0.05S", "backoffPolicy": "linear"},
            ),
        ]
    )
    base = await prometheus(running.admin.removeprefix("http://").rstrip("/"))
    stop = asyncio.Event()

    async def traffic() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                for kind in ("t.ok", "t.fail", "t.nobody"):
                    event = {
                        "specversion": "1.0",
                        "id": uuid.uuid4().hex,
                        "source": "s",
                        "type": kind,
                    }
                    async with session.post(running.url, json=event) as r:
                        assert r.status == 202
                await asyncio.sleep(0.05)

    sender = asyncio.create_task(traffic())
    missing: list[tuple[str, str]] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            deadline = time.monotonic() + 60
            while True:
                try:
                    up = await query(session, base, 'up{job="bridge"} == 1')
                except (aiohttp.ClientError, OSError):
                    up = []
                if up:
                    break
                assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[
                    -3000:
                ]
                await asyncio.sleep(0.5)
            pending = dashboard_queries()
            while pending and time.monotonic() < deadline:
                pending = [(t, e) for t, e in pending if not await query(session, base, e)]
                if pending:
                    await asyncio.sleep(1)
            missing = pending
            async with session.get(f"{base}/api/v1/rules") as r:
                groups = (await r.json())["data"]["groups"]
    finally:
        stop.set()
        await sender
    assert not missing, f"dashboard queries without data: {missing}"
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == 9
    assert all(rule["health"] == "ok" for rule in rules), rules
