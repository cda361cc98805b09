"""The deployment artifacts agree with bridge itself: systemd unit, Kubernetes manifests,
Containerfile, Grafana stack.

Everything is parsed here with the standard library and PyYAML; kubectl/kustomize are used only
as an extra check when installed, never required. No RabbitMQ needed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import bridge.config
from bridge.config import AdminSettings, IngressSettings, LifecycleSettings
from bridge.telemetry.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "bridge.service"
K8S_BASE = DEPLOY / "kubernetes" / "base"
K8S_OVERLAY = DEPLOY / "kubernetes" / "overlays" / "rabbitmq-cluster"
GRAFANA = DEPLOY / "grafana"
REFERENCE_TRIGGER = ROOT / "tests" / "data" / "trigger-reference.yaml"

DRAIN_SECONDS = LifecycleSettings().drain_timeout.total_seconds()
ADMIN_PORT = AdminSettings().port
INGRESS_PORT = IngressSettings().port


# -- systemd ------------------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file: section -> key -> every value in order (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{line!r} comes before any [Section]"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    """A systemd time span: a plain number of seconds or e.g. '1min 30s'."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", value):
        total += float(number) * units[unit]
    return total


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def last(unit: dict[str, dict[str, list[str]]], key: str) -> str:
    values = unit["Service"].get(key)
    assert values, f"bridge.service: [Service] {key}= is missing"
    return values[-1]


def test_unit_runs_bridge_with_the_notify_protocol(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    assert last(unit, "Type") == "notify"
    assert last(unit, "NotifyAccess") == "main"
    assert last(unit, "ExecStart") == (
        "/opt/bridge/venv/bin/bridge run --config /etc/bridge/config.toml"
    )
    assert last(unit, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert last(unit, "EnvironmentFile") == "-/etc/bridge/bridge.env"
    assert last(unit, "Restart") == "on-failure"
    assert seconds(last(unit, "RestartSec")) > 0
    assert last(unit, "KillSignal") == "SIGTERM"
    watchdog = seconds(last(unit, "WatchdogSec"))
    assert 0 < watchdog <= 60
    assert "multi-user.target" in unit["Install"]["WantedBy"]


def test_unit_stop_timeout_covers_the_drain(unit: dict[str, dict[str, list[str]]]) -> None:
    assert seconds(last(unit, "TimeoutStopSec")) > DRAIN_SECONDS
    # the default drain budget really is what the unit's comments say
    assert DRAIN_SECONDS == 25


HARDENING = {
    "DynamicUser": "yes",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "UMask": "0077",
}


def test_unit_is_hardened(unit: dict[str, dict[str, list[str]]]) -> None:
    for key, expected in HARDENING.items():
        assert last(unit, key) == expected, key
    families = set(last(unit, "RestrictAddressFamilies").split())
    # AF_UNIX is needed for NOTIFY_SOCKET; nothing else besides IP.
    assert families == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert unit["Service"]["SystemCallFilter"][0] == "@system-service"
    # An empty assignment empties the set: no capabilities at all.
    assert last(unit, "CapabilityBoundingSet") == ""
    assert last(unit, "AmbientCapabilities") == ""
    assert int(last(unit, "LimitNOFILE")) >= 4096


def test_env_example_names_the_secrets() -> None:
    text = (DEPLOY / "systemd" / "bridge.env.example").read_text(encoding="utf-8")
    names = {
        line.partition("=")[0]
        for line in text.splitlines()
        if line and not line.startswith("#") and "=" in line
    }
    assert names == {"BRIDGE_RABBITMQ__URL", "BRIDGE_INGRESS__AUTH_TOKEN"}


def test_env_example_values_are_accepted_by_bridge(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (DEPLOY / "systemd" / "bridge.env.example").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            monkeypatch.setenv(key, value)
    settings = bridge.config.load_settings(None)
    assert settings.rabbitmq.url.get_secret_value().startswith("amqp://")
    assert settings.ingress.auth_token.get_secret_value() == "REPLACE_ME"


# -- Kubernetes ---------------------------------------------------------------------------------


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def objects(folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(folder.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_docs(path):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


@pytest.fixture(scope="module")
def base() -> dict[tuple[str, str], dict[str, Any]]:
    return objects(K8S_BASE)


@pytest.fixture(scope="module")
def pod(base: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = base[("Deployment", "bridge")]["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["containers"]
    c: dict[str, Any] = only
    return c


def container_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    for entry in container["ports"]:
        if entry["name"] == port:
            number: int = entry["containerPort"]
            return number
    raise AssertionError(f"no container port named {port!r}")


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_every_kubernetes_file_parses_and_is_listed_in_its_kustomization() -> None:
    for folder in (K8S_BASE, K8S_OVERLAY):
        kustomization = load_docs(folder / "kustomization.yaml")[0]
        assert kustomization["kind"] == "Kustomization"
        listed = set(kustomization.get("resources", []))
        listed |= {p["path"] for p in kustomization.get("patches", [])}
        files = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
        assert files <= listed, f"{folder}: not in kustomization.yaml: {files - listed}"
        for name in listed:
            target = folder / name
            assert target.exists(), f"{folder}/kustomization.yaml lists missing {name}"
            if target.is_file():
                for doc in load_docs(target):
                    assert doc["apiVersion"]
                    assert doc["kind"]
                    assert doc["metadata"]["name"]


def test_deployment_runs_bridge_with_both_listeners_on_the_default_ports(
    base: dict[tuple[str, str], dict[str, Any]], container: dict[str, Any]
) -> None:
    deployment = base[("Deployment", "bridge")]
    assert deployment["spec"]["replicas"] == 2
    assert container["command"] == ["bridge", "run", "--config", "/etc/bridge/config.toml"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": INGRESS_PORT, "admin": ADMIN_PORT}
    env = env_of(container)
    assert env["BRIDGE_INGRESS__HOST"] == "0.0.0.0"
    assert env["BRIDGE_ADMIN__HOST"] == "0.0.0.0"
    assert env["BRIDGE_RABBITMQ__URL"]["secretKeyRef"]["name"] == "bridge-secrets"
    assert env["BRIDGE_INGRESS__AUTH_TOKEN"]["secretKeyRef"]["name"] == "bridge-secrets"
    # Every key the Deployment takes from the Secret exists there.
    secret = base[("Secret", "bridge-secrets")]
    for value in env.values():
        if isinstance(value, dict) and "secretKeyRef" in value:
            assert value["secretKeyRef"]["key"] in secret["stringData"]
    # Every value is a placeholder, clearly marked.
    assert all("REPLACE_ME" in v for v in secret["stringData"].values())


def test_probes_hit_the_admin_listener(container: dict[str, Any]) -> None:
    expected = {
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
        "startupProbe": "/healthz",
    }
    for probe, path in expected.items():
        http = container[probe]["httpGet"]
        assert http["path"] == path, probe
        assert container_port(container, http["port"]) == ADMIN_PORT, probe


def prestop_seconds(container: dict[str, Any]) -> float:
    pre = container["lifecycle"]["preStop"]
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    command = pre["exec"]["command"]
    assert command[0] in ("sleep", "/bin/sleep")
    return float(command[1])


def test_grace_period_covers_prestop_and_drain(
    pod: dict[str, Any], container: dict[str, Any]
) -> None:
    pre = prestop_seconds(container)
    assert 0 < pre <= 15
    assert pod["terminationGracePeriodSeconds"] > pre + DRAIN_SECONDS


def test_pod_is_locked_down(
    base: dict[tuple[str, str], dict[str, Any]], pod: dict[str, Any], container: dict[str, Any]
) -> None:
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False  # no BRIDGE_* variables from the Service
    account = base[("ServiceAccount", pod["serviceAccountName"])]
    assert account["automountServiceAccountToken"] is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    labels = base[("Deployment", "bridge")]["spec"]["template"]["metadata"]["labels"]
    assert spread["labelSelector"]["matchLabels"].items() <= labels.items()


def test_service_and_pdb_select_the_pods(base: dict[tuple[str, str], dict[str, Any]]) -> None:
    labels = base[("Deployment", "bridge")]["spec"]["template"]["metadata"]["labels"]
    service = base[("Service", "bridge")]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["http"]["port"] == 80
    assert ports["http"]["targetPort"] in ("http", INGRESS_PORT)
    assert ports["admin"]["targetPort"] in ("admin", ADMIN_PORT)
    pdb = base[("PodDisruptionBudget", "bridge")]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def mount_config(
    base: dict[tuple[str, str], dict[str, Any]],
    pod: dict[str, Any],
    container: dict[str, Any],
    into: Path,
) -> Path:
    """Lay out the ConfigMap as the kubelet mounts it; the path of config.toml inside."""
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/bridge"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    data = base[("ConfigMap", volume["configMap"]["name"])]["data"]
    items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in data]
    assert {i["key"] for i in items} == set(data), "every ConfigMap key is mounted"
    for item in items:
        target = into / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(data[item["key"]], encoding="utf-8")
    return into / "config.toml"


def test_configmap_config_loads_with_bridge_and_finds_the_triggers(
    base: dict[tuple[str, str], dict[str, Any]],
    pod: dict[str, Any],
    container: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = mount_config(base, pod, container, tmp_path)
    monkeypatch.delenv("BRIDGE_CONFIG", raising=False)
    for name, value in env_of(container).items():
        if isinstance(value, str) and name != "BRIDGE_CONFIG":
            monkeypatch.setenv(name, value)
    loaded = bridge.config.load(str(config))
    settings = loaded.settings
    assert settings.ingress.host == "0.0.0.0"
    assert settings.admin.host == "0.0.0.0"
    assert settings.ingress.port == INGRESS_PORT
    assert settings.admin.port == ADMIN_PORT
    assert settings.rabbitmq.queue_type == "quorum"
    assert settings.lifecycle.drain_timeout.total_seconds() == DRAIN_SECONDS
    assert (config.parent / settings.triggers_path).is_dir()
    names = {f"{t.namespace}/{t.name}" for t, _ in loaded.triggers}
    assert names == {"default/my-service-trigger"}
    (trigger, where) = loaded.triggers[0]
    assert "triggers" in where
    assert trigger.subscriber.ref is not None
    assert trigger.subscriber.ref.name == "helloworld-go"


def test_configmap_carries_the_reference_trigger_unchanged(
    base: dict[tuple[str, str], dict[str, Any]],
) -> None:
    data = base[("ConfigMap", "bridge-config")]["data"]
    assert data["trigger-reference.yaml"] == REFERENCE_TRIGGER.read_text(encoding="utf-8")


def test_overlay_targets_a_rabbitmq_cluster_with_quorum_queues() -> None:
    overlay = objects(K8S_OVERLAY)
    kustomization = load_docs(K8S_OVERLAY / "kustomization.yaml")[0]
    assert "../../base" in kustomization["resources"]
    deployment = overlay[("Deployment", "bridge")]
    assert deployment["spec"]["replicas"] == 3
    (patched,) = deployment["spec"]["template"]["spec"]["containers"]
    assert env_of(patched)["BRIDGE_RABBITMQ__QUEUE_TYPE"] == "quorum"
    assert env_of(patched)["BRIDGE_RABBITMQ__QUORUM_INITIAL_GROUP_SIZE"] == "3"
    url = overlay[("Secret", "bridge-secrets")]["stringData"]["rabbitmq-url"]
    assert "@rabbitmq.rabbitmq-system.svc:5672/" in url
    cluster = overlay[("RabbitmqCluster", "rabbitmq")]
    assert cluster["apiVersion"] == "rabbitmq.com/v1beta1"
    assert cluster["metadata"]["namespace"] == "rabbitmq-system"
    assert cluster["spec"]["replicas"] == 3


def test_kustomize_renders_when_kubectl_is_installed() -> None:
    """An extra check where kubectl exists; the checks above do not need it."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the manifests are checked by parsing above")
    for folder, replicas in ((K8S_BASE, 2), (K8S_OVERLAY, 3)):
        out = subprocess.run(
            [kubectl, "kustomize", str(folder)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout)}
        assert docs[("Deployment", "bridge")]["spec"]["replicas"] == replicas
        (c,) = docs[("Deployment", "bridge")]["spec"]["template"]["spec"]["containers"]
        assert env_of(c)["BRIDGE_ADMIN__HOST"] == "0.0.0.0"
        assert set(docs[("Secret", "bridge-secrets")]["stringData"]) == {
            "rabbitmq-url",
            "auth-token",
        }


# -- Containerfile --------------------------------------------------------------------------------


def test_containerfile_is_multi_stage_and_not_root() -> None:
    text = (ROOT / "Containerfile").read_text(encoding="utf-8")
    stages = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert stages == ["python:3.11-slim", "python:3.11-slim"]
    assert "COPY --from=builder /opt/bridge/venv /opt/bridge/venv" in text
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users
    assert users[-1].split(":")[0] == "10001"
    assert re.search(rf"^EXPOSE\s+{INGRESS_PORT}\s+{ADMIN_PORT}\s*$", text, flags=re.MULTILINE)
    assert 'ENTRYPOINT ["bridge"]' in text
    assert 'CMD ["run", "--config", "/etc/bridge/config.toml"]' in text
    # The builder copies what the package build needs, no more.
    for needed in ("pyproject.toml", "README.md", "bridge"):
        assert (ROOT / needed).exists()


# -- Grafana stack --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((GRAFANA / "docker-compose.yml").read_text("utf-8"))
    return doc


def test_compose_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"rabbitmq", "tempo", "prometheus", "grafana", "bridge", "event-display"} <= set(
        services
    )
    image = services["rabbitmq"]["image"]
    assert image.startswith("rabbitmq:3")
    assert image.endswith("management")
    built = services["bridge"]["build"]
    assert (GRAFANA / built["context"] / built["dockerfile"]).resolve() == ROOT / "Containerfile"
    env = services["bridge"]["environment"]
    assert env["BRIDGE_RABBITMQ__URL"] == "amqp://guest:guest@rabbitmq:5672/%2F"
    assert env["BRIDGE_TRACING__ENABLED"] == "true"
    assert env["BRIDGE_TRACING__ENDPOINT"] == "http://tempo:4317"
    assert env["BRIDGE_INGRESS__HOST"] == env["BRIDGE_ADMIN__HOST"] == "0.0.0.0"
    display = services["event-display"]["command"]
    assert display == ["event-display", "--host", "0.0.0.0", "--port", "8081"]
    # Every file the stack mounts exists.
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (GRAFANA / source).exists(), source


def test_compose_bridge_config_loads_and_reaches_event_display(
    compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BRIDGE_CONFIG", raising=False)
    for key, value in compose["services"]["bridge"]["environment"].items():
        monkeypatch.setenv(key, str(value))
    loaded = bridge.config.load(str(GRAFANA / "bridge" / "config.toml"))
    assert loaded.settings.tracing.enabled is True
    assert loaded.settings.tracing.endpoint == "http://tempo:4317"
    urls = {t.subscriber.uri for t, _ in loaded.triggers}
    assert "http://event-display:8081/" in urls


def test_tempo_and_prometheus_configs(compose: dict[str, Any]) -> None:
    tempo = yaml.safe_load((GRAFANA / "tempo.yaml").read_text("utf-8"))
    protocols = tempo["distributor"]["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    assert tempo["storage"]["trace"]["backend"] == "local"
    prometheus = yaml.safe_load((GRAFANA / "prometheus.yml").read_text("utf-8"))
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "bridge"]
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == [f"bridge:{ADMIN_PORT}"]
    assert "bridge" in compose["services"]


def test_grafana_provisioning() -> None:
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "datasources.yaml").read_text("utf-8")
    )
    by_uid = {d["uid"]: d for d in datasources["datasources"]}
    assert by_uid["prometheus"]["type"] == "prometheus"
    assert by_uid["tempo"]["type"] == "tempo"
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "dashboards.yaml").read_text("utf-8")
    )
    (provider,) = providers["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((GRAFANA / "dashboards" / "bridge.json").read_text("utf-8"))
    return doc


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def promql(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in all_panels(dashboard) for t in p.get("targets", []) if "expr" in t]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def test_dashboard_shape(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"] == "bridge"
    assert dashboard["uid"] == "bridge"
    assert "trigger" in {v["name"] for v in dashboard["templating"]["list"]}
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids))
    text = json.dumps(dashboard)
    for needed in (
        "bridge_events_received_total",
        "bridge_deliveries_total",
        "bridge_dispatch_latency_seconds_bucket",
        "bridge_end_to_end_latency_seconds_bucket",
        "bridge_retries_total",
        "bridge_dead_letters_total",
        "bridge_unmatched_events_total",
        "bridge_queue_depth",
        "bridge_rabbitmq_connected",
    ):
        assert needed in text, needed
    traces = [
        t
        for p in all_panels(dashboard)
        if p.get("datasource", {}).get("uid") == "tempo"
        for t in p["targets"]
    ]
    assert traces
    assert all(t["queryType"] == "traceql" for t in traces)
    assert any('resource.service.name="bridge"' in t["query"] for t in traces)
    uids = {p["datasource"]["uid"] for p in all_panels(dashboard) if p.get("type") != "row"}
    assert uids <= {"prometheus", "tempo"}


def exported_series() -> set[str]:
    """Every sample name bridge's registry renders, each labelled metric touched once."""
    metrics = Metrics()
    metrics.received("default/b", "accepted").inc()
    metrics.delivered("default/t", 200).inc()
    metrics.child(metrics.dispatch_latency, "default/t").observe(0.01)
    metrics.child(metrics.end_to_end_latency, "default/t").observe(0.02)
    metrics.child(metrics.retries, "default/t").inc()
    metrics.child(metrics.dead_letters, "default/t", "queue").inc()
    metrics.child(metrics.unmatched, "default/b").inc()
    metrics.child(metrics.replies, "default/t", "published").inc()
    metrics.child(metrics.filtered, "default/t").inc()
    metrics.child(metrics.queue_depth, "trigger", "default/t").set(3)
    metrics.child(metrics.replays, "default/t").inc()
    metrics.rabbitmq_connected.set(1)
    text = generate_latest(metrics.registry).decode("utf-8")
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def test_every_metric_the_dashboard_queries_is_exported(dashboard: dict[str, Any]) -> None:
    exported = exported_series()
    queried = {name for expr in promql(dashboard) for name in re.findall(r"bridge_[a-z_]+", expr)}
    assert queried, "the dashboard queries no bridge metric"
    missing = sorted(queried - exported)
    assert not missing, f"queried but not exported by bridge: {missing}"
