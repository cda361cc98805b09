"""Unit tests for bridge.config: TOML, BRIDGE_ environment overrides, durations, Trigger manifests.

No network and no RabbitMQ: every test works on files it writes into its own tmp_path.
"""

from __future__ import annotations

import shutil
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from bridge.config import (
    DEFAULT_CONFIG_FILE,
    Destination,
    Settings,
    TriggerSpec,
    load,
    load_settings,
    load_trigger_manifests,
    resolve_config_path,
)
from bridge.errors import ConfigError
from tests.conftest import write

DATA = Path(__file__).parent / "data"
REFERENCE = DATA / "trigger-reference.yaml"
EXAMPLE = Path(__file__).parent.parent / "config.example.toml"


pytestmark = pytest.mark.usefixtures("clean_env")


def config_error(cli_path: str | Path | None) -> str:
    with pytest.raises(ConfigError) as info:
        load(str(cli_path) if cli_path is not None else None)
    return str(info.value)


# --- config path resolution ------------------------------------------------------------------


def test_no_file_anywhere_gives_builtin_defaults() -> None:
    assert resolve_config_path(None) is None
    loaded = load(None)
    s = loaded.settings
    assert loaded.source == "built-in defaults"
    assert loaded.triggers == []
    assert (s.ingress.host, s.ingress.port) == ("127.0.0.1", 8080)
    assert (s.admin.host, s.admin.port) == ("127.0.0.1", 9090)
    assert s.rabbitmq.url.get_secret_value() == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert s.rabbitmq.queue_type == "quorum"
    assert s.rabbitmq.prefetch == 256
    assert s.ingress.max_event_bytes == 262144
    assert s.ingress.auth_token.get_secret_value() == ""
    assert s.ingress.default_broker == "default/eventbridge-default-broker"
    assert s.delivery.retry == 10
    assert s.delivery.backoffPolicy == "exponential"
    assert s.delivery.backoffDelay == timedelta(seconds=0.2)
    assert s.delivery.timeout == timedelta(seconds=30)
    assert s.delivery.retryAfterMax is None
    assert s.delivery.deadLetterSink is None
    assert s.tracing.enabled is False
    assert s.tracing.endpoint == "http://127.0.0.1:4317"
    assert s.tracing.sample_ratio == 1.0
    assert s.resolver.template == "http://{name}.{namespace}.svc.cluster.local"
    assert s.triggers_path == ""


def test_dot_config_toml_in_working_directory_is_used(tmp_path: Path) -> None:
    write(Path.cwd() / DEFAULT_CONFIG_FILE, "[ingress]\nport = 8181\n")
    assert resolve_config_path(None) == Path(DEFAULT_CONFIG_FILE)
    loaded = load(None)
    assert loaded.settings.ingress.port == 8181
    assert loaded.source == DEFAULT_CONFIG_FILE


def test_bridge_config_env_beats_dot_config_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(Path.cwd() / DEFAULT_CONFIG_FILE, "[ingress]\nport = 8181\n")
    env_file = write(tmp_path / "env.toml", "[ingress]\nport = 8282\n")
    monkeypatch.setenv("BRIDGE_CONFIG", str(env_file))
    assert resolve_config_path(None) == env_file
    assert load(None).settings.ingress.port == 8282


def test_cli_path_beats_bridge_config_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = write(tmp_path / "env.toml", "[ingress]\nport = 8282\n")
    cli_file = write(tmp_path / "cli.toml", "[ingress]\nport = 8383\n")
    monkeypatch.setenv("BRIDGE_CONFIG", str(env_file))
    assert resolve_config_path(str(cli_file)) == cli_file
    loaded = load(str(cli_file))
    assert loaded.settings.ingress.port == 8383
    assert loaded.source == str(cli_file)


def test_missing_cli_file_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    message = config_error(missing)
    assert str(missing) in message
    assert "does not exist" in message


def test_missing_bridge_config_file_is_an_error_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope.toml"
    monkeypatch.setenv("BRIDGE_CONFIG", str(missing))
    message = config_error(None)
    assert str(missing) in message
    assert "BRIDGE_CONFIG" in message


def test_a_folder_given_as_config_is_an_error(tmp_path: Path) -> None:
    assert "does not exist" in config_error(tmp_path)


def test_example_config_loads_and_documents_every_section() -> None:
    loaded = load(str(EXAMPLE))
    s = loaded.settings
    assert s == load_settings(None).model_copy(update={"triggers": s.triggers})
    assert [(t.namespace, t.name) for t, _ in loaded.triggers] == [
        ("default", "event-display-trigger")
    ]
    spec, where = loaded.triggers[0]
    assert where == f"{EXAMPLE}: triggers[0]"
    assert spec.broker == "eventbridge-default-broker"
    assert spec.subscriber.uri == "http://127.0.0.1:8081/"
    assert spec.filter is not None
    assert spec.filter.attributes["source"] == "acs.oss"
    text = EXAMPLE.read_text()
    for section in Settings.model_fields:
        if section not in ("triggers", "triggers_path"):
            assert f"[{section}]" in text, section


# --- TOML content, validation and messages --------------------------------------------------


def test_full_toml_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        """
        [ingress]
        host = "0.0.0.0"
        port = 8088
        max_event_bytes = 1024
        auth_token = "s3cret"
        default_broker = "team/main"

        [admin]
        port = 9191

        [rabbitmq]
        url = "amqps://u:p@mq.example:5671/vh"
        queue_type = "classic"
        prefetch = 10

        [delivery]
        retry = 3
        backoffPolicy = "linear"
        backoffDelay = "PT1S"
        timeout = 5
        retryAfterMax = "PT60S"
        deadLetterSink = { uri = "http://dls.example/" }

        [tracing]
        enabled = true
        sample_ratio = 0.5

        [resolver]
        template = "http://{name}.{namespace}.example"
        overrides = { "default/event-display" = "http://127.0.0.1:8081/" }

        [[triggers]]
        name = "t1"
        namespace = "team"
        broker = "main"
        filter.attributes = { source = "acs.oss" }
        subscriber.uri = "http://127.0.0.1:8081/"
        delivery = { retry = 1 }
        ordered = true
        parallelism = 7
        """,
    )
    s = load(str(path)).settings
    assert s.ingress.host == "0.0.0.0"
    assert s.ingress.port == 8088
    assert s.ingress.max_event_bytes == 1024
    assert s.ingress.auth_token.get_secret_value() == "s3cret"
    assert s.ingress.default_broker == "team/main"
    assert s.admin.port == 9191
    assert s.rabbitmq.url.get_secret_value() == "amqps://u:p@mq.example:5671/vh"
    assert s.rabbitmq.queue_type == "classic"
    assert s.rabbitmq.prefetch == 10
    assert s.delivery.retry == 3
    assert s.delivery.backoffPolicy == "linear"
    assert s.delivery.backoffDelay == timedelta(seconds=1)
    assert s.delivery.timeout == timedelta(seconds=5)
    assert s.delivery.retryAfterMax == timedelta(seconds=60)
    assert s.delivery.deadLetterSink == Destination(uri="http://dls.example/")
    assert s.tracing.enabled is True
    assert s.tracing.sample_ratio == 0.5
    assert s.resolver.overrides == {"default/event-display": "http://127.0.0.1:8081/"}
    (t,) = s.triggers
    assert (t.name, t.namespace, t.broker, t.ordered, t.parallelism) == (
        "t1",
        "team",
        "main",
        True,
        7,
    )
    assert t.delivery is not None
    assert t.delivery.retry == 1
    assert t.delivery.backoffPolicy is None  # falls back to [delivery] later, not here


def test_secrets_do_not_show_in_repr(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        '[ingress]\nauth_token = "tok-123"\n[rabbitmq]\nurl = "amqp://u:pw-456@h/"\n',
    )
    text = repr(load(str(path)).settings)
    assert "tok-123" not in text
    assert "pw-456" not in text


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ('"PT0.2S"', 0.2),
        ('"PT30S"', 30.0),
        ('"PT1M30S"', 90.0),
        ('"PT1H"', 3600.0),
        ("0.5", 0.5),
        ("7", 7.0),
        ("0", 0.0),
        ('"1.5"', 1.5),
        ('" 3 "', 3.0),
    ],
)
def test_durations_accept_iso8601_and_seconds(tmp_path: Path, value: str, seconds: float) -> None:
    path = write(tmp_path / "c.toml", f"[delivery]\nbackoffDelay = {value}\n")
    assert load(str(path)).settings.delivery.backoffDelay == timedelta(seconds=seconds)


@pytest.mark.parametrize("value", ['"soon"', '"5s"', "-1", '"-1"', "true", '"PT-1S"', '""'])
def test_bad_durations_are_errors_naming_the_field(tmp_path: Path, value: str) -> None:
    path = write(tmp_path / "c.toml", f"[delivery]\ntimeout = {value}\n")
    message = config_error(path)
    assert str(path) in message
    assert "delivery.timeout" in message


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ("prot = 1\n", "prot"),
        ("[ingress]\nprot = 1\n", "ingress.prot"),
        ("[ingres]\nport = 1\n", "ingres"),
        ("[delivery]\nretries = 1\n", "delivery.retries"),
        ("[delivery]\nbackoff_delay = 1\n", "delivery.backoff_delay"),
        ("[resolver]\ntemplates = 'x'\n", "resolver.templates"),
        (
            "[[triggers]]\nname = 'a'\nsubscriber.uri = 'http://x/'\nfilter.attribute = {}\n",
            "triggers[0].filter.attribute",
        ),
        (
            "[[triggers]]\nname = 'a'\nsubscriber.uri = 'http://x/'\nsubscriber.url = 'http://x/'\n",
            "triggers[0].subscriber.url",
        ),
        (
            "[[triggers]]\nname = 'a'\nsubscriber.uri = 'http://x/'\ndelivery = { retyr = 1 }\n",
            "triggers[0].delivery.retyr",
        ),
    ],
)
def test_unknown_keys_are_errors(tmp_path: Path, toml: str, field: str) -> None:
    path = write(tmp_path / "c.toml", toml)
    message = config_error(path)
    assert f"{path}" in message
    assert f": {field}: unknown key" in message


@pytest.mark.parametrize(
    ("toml", "field", "problem"),
    [
        ("[ingress]\nport = 70000\n", "ingress.port", "less than or equal to 65535"),
        ("[ingress]\nport = 'http'\n", "ingress.port", "integer"),
        ("[ingress]\ndefault_broker = 'nobroker'\n", "ingress.default_broker", "namespace/name"),
        ("[ingress]\ndefault_broker = 'ns/Bad_Name'\n", "ingress.default_broker", "DNS label"),
        ("[rabbitmq]\nurl = 'http://127.0.0.1/'\n", "rabbitmq.url", "amqp://"),
        ("[rabbitmq]\nqueue_type = 'stream'\n", "rabbitmq.queue_type", "quorum"),
        ("[rabbitmq]\nprefetch = 0\n", "rabbitmq.prefetch", "greater than or equal to 1"),
        ("[delivery]\nretry = -1\n", "delivery.retry", "greater than or equal to 0"),
        ("[delivery]\nbackoffPolicy = 'fibonacci'\n", "delivery.backoffPolicy", "exponential"),
        ("[delivery]\nformat = 'xml'\n", "delivery.format", "binary"),
        ("[tracing]\nsample_ratio = 2\n", "tracing.sample_ratio", "less than or equal to 1"),
        ("[resolver]\ntemplate = 'http://{svc}'\n", "resolver.template", "{name}"),
        ("[resolver]\ntemplate = 'http://{'\n", "resolver.template", "placeholders"),
        ("[[triggers]]\nname = 'a'\n", "triggers[0].subscriber", "Field required"),
        (
            "[[triggers]]\nname = 'a'\nsubscriber = {}\n",
            "triggers[0].subscriber",
            "needs a uri or a ref",
        ),
        (
            "[[triggers]]\nname = 'My_Trigger'\nsubscriber.uri = 'http://x/'\n",
            "triggers[0].name",
            "DNS label",
        ),
        (
            "[[triggers]]\nname = 'a'\nsubscriber.uri = 'http://x/'\nparallelism = 0\n",
            "triggers[0].parallelism",
            "greater than or equal to 1",
        ),
    ],
)
def test_invalid_values_name_file_field_and_problem(
    tmp_path: Path, toml: str, field: str, problem: str
) -> None:
    path = write(tmp_path / "c.toml", toml)
    message = config_error(path)
    assert message.startswith(f"{path}")
    assert f": {field}: " in message
    assert problem in message
    assert message.endswith(".")
    assert "\n" not in message


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[ingress\nport = 1\n")
    message = config_error(path)
    assert message.startswith(f"{path}: invalid TOML")


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[ingress]\nport = -1\nhots = 'x'\n")
    message = config_error(path)
    assert "ingress.port" in message
    assert "ingress.hots: unknown key" in message


# --- environment overrides -------------------------------------------------------------------


def test_env_overrides_file_and_keeps_the_other_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path / "c.toml",
        """
        [rabbitmq]
        url = "amqp://file:file@127.0.0.1:5672/%2F"
        queue_type = "classic"
        [ingress]
        port = 8088
        """,
    )
    monkeypatch.setenv("BRIDGE_RABBITMQ__URL", "amqp://env:env@mq:5672/%2F")
    monkeypatch.setenv("BRIDGE_INGRESS__AUTH_TOKEN", "from-env")
    s = load(str(path)).settings
    assert s.rabbitmq.url.get_secret_value() == "amqp://env:env@mq:5672/%2F"
    assert s.rabbitmq.queue_type == "classic"  # not lost by the nested override
    assert s.ingress.auth_token.get_secret_value() == "from-env"
    assert s.ingress.port == 8088


def test_env_overrides_apply_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_INGRESS__PORT", "8099")
    monkeypatch.setenv("BRIDGE_DELIVERY__BACKOFFDELAY", "PT0.5S")
    monkeypatch.setenv("BRIDGE_DELIVERY__BACKOFFPOLICY", "linear")
    monkeypatch.setenv("BRIDGE_DELIVERY__RETRY", "2")
    monkeypatch.setenv("BRIDGE_TRIGGERS_PATH", "")
    s = load(None).settings
    assert s.ingress.port == 8099
    assert s.delivery.backoffDelay == timedelta(seconds=0.5)
    assert s.delivery.backoffPolicy == "linear"
    assert s.delivery.retry == 2


def test_env_section_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_ADMIN", '{"host": "0.0.0.0", "port": 9999}')
    s = load(None).settings
    assert (s.admin.host, s.admin.port) == ("0.0.0.0", 9999)


def test_env_triggers_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "BRIDGE_TRIGGERS", '[{"name": "from-env", "subscriber": {"uri": "http://127.0.0.1:1/"}}]'
    )
    loaded = load(None)
    assert [t.name for t, _ in loaded.triggers] == ["from-env"]


def test_env_typo_in_a_nested_key_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_INGRESS__PROT", "1")
    message = config_error(None)
    assert "BRIDGE_ environment variable" in message
    assert "ingress.prot: unknown key" in message


def test_env_invalid_value_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "c.toml", "[ingress]\nport = 8088\n")
    monkeypatch.setenv("BRIDGE_INGRESS__PORT", "eighty")
    message = config_error(path)
    assert str(path) in message
    assert "BRIDGE_ environment variable" in message
    assert "ingress.port" in message


def test_env_malformed_json_section_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_INGRESS", "{not json")
    message = config_error(None)
    assert "BRIDGE_INGRESS" in message
    assert "not valid JSON" in message


# --- Knative Trigger manifests ---------------------------------------------------------------


def assert_reference_trigger(spec: TriggerSpec) -> None:
    assert spec.name == "my-service-trigger"
    assert spec.namespace == "default"
    assert spec.broker == "eventbridge-default-broker"
    assert spec.filter is not None
    assert spec.filter.attributes == {
        "source": "acs.oss",
        "type": "oss:ActionTrail:ConsoleOperation",
    }
    assert spec.filters is None
    assert spec.subscriber.uri is None
    ref = spec.subscriber.ref
    assert ref is not None
    assert (ref.apiVersion, ref.kind, ref.name, ref.namespace) == (
        "serving.knative.dev/v1",
        "Service",
        "helloworld-go",
        "default",
    )
    assert spec.delivery is None
    assert spec.ordered is False
    assert spec.parallelism == 64


def test_reference_manifest_loads_unchanged_from_an_absolute_triggers_path(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "c.toml", f'triggers_path = "{REFERENCE}"\n')
    loaded = load(str(path))
    ((spec, where),) = loaded.triggers
    assert_reference_trigger(spec)
    assert where == str(REFERENCE)


def test_relative_triggers_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc"
    (conf_dir / "triggers").mkdir(parents=True)
    shutil.copy(REFERENCE, conf_dir / "triggers")
    path = write(conf_dir / "c.toml", 'triggers_path = "triggers/trigger-reference.yaml"\n')
    ((spec, _),) = load(str(path)).triggers
    assert_reference_trigger(spec)


def test_triggers_path_folder_skips_other_kinds_and_files(tmp_path: Path) -> None:
    # tests/data holds a Trigger, a Knative Service and JSON events: only the Trigger counts.
    path = write(tmp_path / "c.toml", f'triggers_path = "{DATA}"\n')
    loaded = load(str(path))
    assert [t.name for t, _ in loaded.triggers] == ["my-service-trigger"]


def test_toml_and_yaml_triggers_are_merged(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        f"""
        triggers_path = "{REFERENCE}"
        [[triggers]]
        name = "from-toml"
        subscriber.uri = "http://127.0.0.1:8081/"
        """,
    )
    loaded = load(str(path))
    assert [(t.namespace, t.name) for t, _ in loaded.triggers] == [
        ("default", "from-toml"),
        ("default", "my-service-trigger"),
    ]


def test_multi_document_yaml_with_other_kinds_and_empty_documents(tmp_path: Path) -> None:
    manifests = write(
        tmp_path / "all.yaml",
        """
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata:
          name: first
          namespace: team
          labels: {app: x}
        spec:
          broker: b1
          filters:
            - prefix: {type: "oss:ObjectCreated:"}
          subscriber:
            uri: http://127.0.0.1:9001/
          delivery:
            retry: 2
            backoffPolicy: linear
            backoffDelay: PT0.5S
            deadLetterSink:
              uri: http://127.0.0.1:9002/
        ---
        ---
        apiVersion: serving.knative.dev/v1
        kind: Service
        metadata: {name: event-display}
        spec: {template: {}}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata:
          name: second
        spec:
          broker: b2
          subscriber:
            ref: {apiVersion: v1, kind: Service, name: svc}
            uri: /hook
        status:
          ready: true
        """,
    )
    found = load_trigger_manifests(manifests)
    assert [(t.namespace, t.name, t.broker) for t, _ in found] == [
        ("team", "first", "b1"),
        ("default", "second", "b2"),
    ]
    first, where_first = found[0]
    assert where_first == f"{manifests} (document 1)"
    assert first.filters == [{"prefix": {"type": "oss:ObjectCreated:"}}]
    assert first.delivery is not None
    assert first.delivery.retry == 2
    assert first.delivery.backoffDelay == timedelta(seconds=0.5)
    assert first.delivery.deadLetterSink == Destination(uri="http://127.0.0.1:9002/")
    second, where_second = found[1]
    assert where_second == f"{manifests} (document 4)"
    assert second.subscriber.uri == "/hook"
    assert second.subscriber.ref is not None
    assert second.subscriber.ref.kind == "Service"
    assert second.filter is None


def trigger_yaml(annotations: str = "", name: str = "t", extra_spec: str = "") -> str:
    return textwrap.dedent(
        """
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata:
          name: {name}
        {annotations}
        spec:
          broker: default
          subscriber:
            uri: http://127.0.0.1:9001/
        {extra_spec}
        """
    ).format(name=name, annotations=annotations, extra_spec=extra_spec)


@pytest.mark.parametrize(
    ("annotations", "ordered", "parallelism"),
    [
        ("", False, 64),
        ("  annotations:\n    bridge.knative.dev/ordered: 'true'", True, 64),
        ("  annotations:\n    bridge.knative.dev/ordered: 'True'", True, 64),
        ("  annotations:\n    bridge.knative.dev/ordered: 'false'", False, 64),
        ("  annotations:\n    bridge.knative.dev/parallelism: '8'", False, 8),
        ("  annotations:\n    rabbitmq.eventing.knative.dev/parallelism: '12'", False, 12),
        ("  annotations:\n    other.example/x: 'y'", False, 64),
    ],
)
def test_manifest_annotations(
    tmp_path: Path, annotations: str, ordered: bool, parallelism: int
) -> None:
    path = write(tmp_path / "t.yaml", trigger_yaml(annotations))
    ((spec, _),) = load_trigger_manifests(path)
    assert spec.ordered is ordered
    assert spec.parallelism == parallelism


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        (
            trigger_yaml().replace("eventing.knative.dev/v1", "eventing.knative.dev/v1beta1"),
            "apiVersion",
            "not eventing.knative.dev/v1",
        ),
        (
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {}\nspec: {}\n",
            "metadata.name",
            "needs a name",
        ),
        (
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\n",
            "spec",
            "spec mapping",
        ),
        (trigger_yaml(extra_spec="  filtr: {}"), "spec.filtr", "unknown key"),
        (trigger_yaml(name="Bad_Name"), "metadata.name", "DNS label"),
        (
            trigger_yaml("  annotations:\n    bridge.knative.dev/ordered: 'maybe'"),
            "metadata.annotations.bridge.knative.dev/ordered",
            "true or false",
        ),
        (
            trigger_yaml("  annotations:\n    bridge.knative.dev/parallelism: 'many'"),
            "metadata.annotations.bridge.knative.dev/parallelism",
            "integer",
        ),
        (
            trigger_yaml("  annotations: [a, b]"),
            "metadata.annotations",
            "mapping",
        ),
        (
            trigger_yaml().replace("uri: http://127.0.0.1:9001/", "url: http://127.0.0.1:9001/"),
            "spec.subscriber.url",
            "unknown key",
        ),
        (
            trigger_yaml(extra_spec="  delivery: {retry: -2}"),
            "spec.delivery.retry",
            "greater than or equal to 0",
        ),
        (
            trigger_yaml(extra_spec="  delivery: {backoffDelay: later}"),
            "spec.delivery.backoffDelay",
            "not a duration",
        ),
        (
            trigger_yaml().replace(
                "uri: http://127.0.0.1:9001/",
                "ref: {name: svc}\n    uri: http://elsewhere/",
            ),
            "spec.subscriber",
            "must be relative",
        ),
    ],
)
def test_manifest_errors_name_file_field_and_problem(
    tmp_path: Path, text: str, field: str, problem: str
) -> None:
    path = write(tmp_path / "t.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_trigger_manifests(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {field}: "), message
    assert problem in message


def test_invalid_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "t.yaml", "apiVersion: x\nmetadata: [unclosed\nspec: {}\n")
    with pytest.raises(ConfigError) as info:
        load_trigger_manifests(path)
    assert str(info.value).startswith(f"{path}: invalid YAML at line ")


def test_a_yaml_document_that_is_not_a_mapping_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "t.yaml", trigger_yaml() + "---\n- just\n- a list\n")
    with pytest.raises(ConfigError) as info:
        load_trigger_manifests(path)
    assert str(info.value) == f"{path} (document 2): a manifest must be a mapping."


def test_missing_triggers_path_names_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", 'triggers_path = "nowhere"\n')
    message = config_error(path)
    assert message.startswith(f"{path}: triggers_path: ")
    assert "neither a file nor a folder" in message


# --- duplicates -----------------------------------------------------------------------------


def test_duplicate_between_toml_and_yaml_is_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        f"""
        triggers_path = "{REFERENCE}"
        [[triggers]]
        name = "my-service-trigger"
        subscriber.uri = "http://127.0.0.1:8081/"
        """,
    )
    message = config_error(path)
    assert "default/my-service-trigger" in message
    assert "already defined" in message
    assert str(REFERENCE) in message
    assert f"{path}: triggers[0]" in message


def test_duplicate_within_toml_is_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        """
        [[triggers]]
        name = "a"
        subscriber.uri = "http://127.0.0.1:8081/"
        [[triggers]]
        name = "a"
        subscriber.uri = "http://127.0.0.1:8082/"
        """,
    )
    message = config_error(path)
    assert message.startswith(f"{path}: triggers[1]: trigger default/a is already defined in")
    assert f"{path}: triggers[0]" in message


def test_duplicate_across_yaml_files_of_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "triggers"
    write(folder / "a.yaml", trigger_yaml(name="same"))
    write(folder / "b.yml", trigger_yaml(name="same"))
    path = write(tmp_path / "c.toml", 'triggers_path = "triggers"\n')
    message = config_error(path)
    assert message.startswith(f"{folder / 'b.yml'}: trigger default/same is already defined in")


def test_same_name_in_different_namespaces_is_fine(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        """
        [[triggers]]
        name = "a"
        namespace = "one"
        subscriber.uri = "http://127.0.0.1:8081/"
        [[triggers]]
        name = "a"
        namespace = "two"
        subscriber.uri = "http://127.0.0.1:8082/"
        """,
    )
    assert [f"{t.namespace}/{t.name}" for t, _ in load(str(path)).triggers] == ["one/a", "two/a"]


# --- models directly ------------------------------------------------------------------------


def test_destination_rules() -> None:
    assert Destination(uri="http://x/").uri == "http://x/"
    assert Destination(ref={"name": "svc"}).ref is not None
    assert Destination(ref={"name": "svc"}, uri="/path").uri == "/path"
    with pytest.raises(ValueError, match="needs a uri or a ref"):
        Destination()
    with pytest.raises(ValueError, match="must be relative"):
        Destination(ref={"name": "svc"}, uri="http://elsewhere/")


def test_settings_are_frozen() -> None:
    s = load_settings(None)
    with pytest.raises(ValueError, match="frozen"):
        s.ingress.port = 1  # type: ignore[misc]
