"""The CLI pieces that need no RabbitMQ: `bridge check-config` and `bridge dlq purge` without --yes.

Both in process (bridge.cli.main with capsys) and as `python -m bridge` subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.cli import main
from tests.conftest import write

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data"
REFERENCE = DATA / "trigger-reference.yaml"
EXAMPLE = ROOT / "config.example.toml"


pytestmark = pytest.mark.usefixtures("clean_env")


def run_bridge(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("BRIDGE_")}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def reference_config(tmp_path: Path) -> Path:
    return write(
        tmp_path / "bridge.toml",
        f"""
        triggers_path = "{REFERENCE}"

        [resolver]
        overrides = {{ "default/helloworld-go" = "http://127.0.0.1:8081/" }}

        [delivery]
        retry = 3
        backoffPolicy = "linear"
        backoffDelay = "PT0.5S"

        [[triggers]]
        name = "oss-uploads"
        namespace = "default"
        broker = "eventbridge-default-broker"
        filters = [ {{ prefix = {{ type = "oss:ObjectCreated:" }} }} ]
        subscriber.uri = "http://user:hunter2@127.0.0.1:8082/hook"
        delivery = {{ retry = 1, deadLetterSink = {{ uri = "http://127.0.0.1:8083/" }} }}
        ordered = true
        """,
    )


# --- check-config: success ------------------------------------------------------------------


def test_check_config_prints_resolved_triggers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = reference_config(tmp_path)
    assert main(["check-config", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"configuration: {path}"
    assert (
        "brokers: default/eventbridge-default-broker (default: default/eventbridge-default-broker)"
        in lines
    )
    # the reference manifest: name, broker, filter, subscriber URL, delivery
    i = lines.index("trigger default/my-service-trigger")
    assert lines[i + 1 : i + 7] == [
        "  broker:     default/eventbridge-default-broker",
        "  filter:     source=acs.oss, type=oss:ActionTrail:ConsoleOperation",
        "  subscriber: http://127.0.0.1:8081/",
        "  delivery:   retry=3 backoffPolicy=linear backoffDelay=PT0.5S timeout=PT30S format=binary",
        "  dispatch:   parallelism=64",
        f"  defined in: {REFERENCE}",
    ]
    j = lines.index("trigger default/oss-uploads")
    assert lines[j + 1 : j + 7] == [
        "  broker:     default/eventbridge-default-broker",
        "  filter:     type starts with oss:ObjectCreated:",
        "  subscriber: http://user:***@127.0.0.1:8082/hook",
        "  delivery:   retry=1 backoffPolicy=linear backoffDelay=PT0.5S timeout=PT30S "
        "format=binary deadLetterSink=http://127.0.0.1:8083/",
        "  dispatch:   ordered",
        f"  defined in: {path}: triggers[0]",
    ]
    assert "hunter2" not in out


def test_check_config_prints_each_archive_with_its_stream_and_retention(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = reference_config(tmp_path)
    with path.open("a") as f:
        f.write(
            '\n[[archives]]\nbroker = "default/eventbridge-default-broker"\n'
            'max_age = "P2D"\nmax_bytes = 20000000\nsegment_bytes = 5000000\n'
            '\n[[archives]]\nbroker = "default/other"\nenabled = false\n'
        )
    assert main(["check-config", "--config", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [
        "archive default/eventbridge-default-broker: stream "
        "bridge.archive.default.eventbridge-default-broker, max_age=2D max_bytes=20000000 "
        "segment_bytes=5000000",
        "archive default/other: disabled (an existing stream is kept, not written)",
    ]


def test_check_config_refuses_an_archive_of_a_broker_no_trigger_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = reference_config(tmp_path)
    with path.open("a") as f:
        f.write('\n[[archives]]\nbroker = "default/nowhere"\n')
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "archives[0].broker: no trigger names the broker default/nowhere" in err


def test_check_config_of_the_example_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "trigger default/event-display-trigger" in out
    assert (
        "  filter:     source=acs.oss, type=oss:ObjectCreated:PutObject|oss:ActionTrail:ConsoleOperation"
        in out
    )
    assert "  subscriber: http://127.0.0.1:8081/" in out


def test_check_config_with_no_file_uses_builtin_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "configuration: built-in defaults",
        "brokers: default/eventbridge-default-broker (default: default/eventbridge-default-broker)",
        "triggers: none",
    ]


def test_check_config_finds_dot_config_toml_and_bridge_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write(
        Path.cwd() / "config.toml",
        '[[triggers]]\nname = "local"\nsubscriber.uri = "http://127.0.0.1:1/"\n',
    )
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("configuration: config.toml\n")
    assert "trigger default/local" in out
    env_file = write(
        tmp_path / "env.toml", '[[triggers]]\nname = "from-env"\nsubscriber.uri = "http://h/"\n'
    )
    monkeypatch.setenv("BRIDGE_CONFIG", str(env_file))
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"configuration: {env_file}\n")
    assert "trigger default/from-env" in out
    assert "trigger default/local" not in out


def test_check_config_applies_environment_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BRIDGE_INGRESS__DEFAULT_BROKER", "ops/main")
    monkeypatch.setenv("BRIDGE_DELIVERY__RETRY", "1")
    path = write(tmp_path / "c.toml", '[[triggers]]\nname = "t"\nsubscriber.uri = "http://h/"\n')
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "brokers: default/default, ops/main (default: ops/main)" in out
    assert "retry=1 " in out


# --- check-config: errors -------------------------------------------------------------------

TRIGGER_YAML = """
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: {name}
spec:
  broker: default
  subscriber:
    uri: {uri}
"""


@pytest.mark.parametrize(
    ("toml", "yaml_text", "field", "problem"),
    [
        ("[ingress]\nprot = 8080\n", None, "ingress.prot", "unknown key"),
        ("[ingress]\nport = 99999\n", None, "ingress.port", "less than or equal to 65535"),
        ("[delivery]\nbackoffDelay = 'soon'\n", None, "delivery.backoffDelay", "not a duration"),
        ("[rabbitmq]\nurl = 'redis://x'\n", None, "rabbitmq.url", "amqp://"),
        (
            "[[triggers]]\nname = 't'\nsubscriber.uri = '/relative'\n",
            None,
            "triggers[0]: subscriber.uri",
            "not an absolute http(s) URL",
        ),
        (
            "[[triggers]]\nname = 't'\nsubscriber.uri = 'http://h/'\nfilters = [{ cesql = \"type = \" }]\n",
            None,
            "triggers[0].filters[0].cesql",
            "unexpected end of the expression",
        ),
        (
            "triggers_path = 'triggers.yaml'\n",
            TRIGGER_YAML.format(name="Bad_Name", uri="http://h/"),
            "metadata.name",
            "DNS label",
        ),
        (
            "triggers_path = 'triggers.yaml'\n",
            TRIGGER_YAML.format(name="t", uri="http://h/").replace("uri:", "url:"),
            "spec.subscriber.url",
            "unknown key",
        ),
        (
            "triggers_path = 'triggers.yaml'\n[[triggers]]\nname = 't'\nsubscriber.uri = 'http://h/'\n",
            TRIGGER_YAML.format(name="t", uri="http://h/"),
            "trigger default/t",
            "already defined in",
        ),
        ("triggers_path = 'missing'\n", None, "triggers_path", "neither a file nor a folder"),
        ("[ingress\n", None, "invalid TOML", ""),
    ],
)
def test_check_config_errors_exit_2_with_one_sentence(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    toml: str,
    yaml_text: str | None,
    field: str,
    problem: str,
) -> None:
    path = write(tmp_path / "c.toml", toml)
    if yaml_text is not None:
        write(tmp_path / "triggers.yaml", yaml_text)
    assert main(["check-config", "--config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("bridge: ")
    assert err.endswith(".\n")
    assert err.count("\n") == 1, err
    assert str(tmp_path) in err  # the file: the config or the manifest
    assert field in err
    assert problem in err


def test_check_config_missing_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.toml"
    assert main(["check-config", "--config", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err == f"bridge: {missing}: the configuration file does not exist.\n"


def test_check_config_malformed_environment_json_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BRIDGE_TRIGGERS", "[{not json")
    assert main(["check-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bridge: BRIDGE_TRIGGERS")
    assert "not valid JSON" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["check-config", "--bogus"])
    assert info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


# --- dlq purge refuses without --yes --------------------------------------------------------


def test_dlq_purge_without_yes_refuses_before_connecting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import bridge.cli.dlq

    def no_connection(*args: object, **kwargs: object) -> None:
        raise AssertionError("dlq purge connected to RabbitMQ without --yes")

    monkeypatch.setattr(bridge.cli.dlq, "on_broker", no_connection)
    assert main(["dlq", "purge"]) == 2
    assert main(["dlq", "purge", "--trigger", "default/t", "--id", "a", "--id", "b"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == ["bridge: refusing to delete dead letters without --yes."] * 2


# --- as a subprocess: exit codes and no tracebacks ------------------------------------------


def test_subprocess_check_config_ok(tmp_path: Path) -> None:
    path = reference_config(tmp_path)
    result = run_bridge("check-config", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "trigger default/my-service-trigger" in result.stdout
    assert "  subscriber: http://127.0.0.1:8081/" in result.stdout
    assert "  filter:     source=acs.oss, type=oss:ActionTrail:ConsoleOperation" in result.stdout


def test_subprocess_check_config_reference_manifest_through_the_template(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", f'triggers_path = "{REFERENCE}"\n')
    result = run_bridge("check-config", cwd=tmp_path, env={"BRIDGE_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr
    assert "  subscriber: http://helloworld-go.default.svc.cluster.local" in result.stdout


def test_subprocess_check_config_error(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[delivery]\nbackoffPolicy = 'random'\n")
    result = run_bridge("check-config", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"bridge: {path}")
    assert "delivery.backoffPolicy" in result.stderr
    assert result.stderr.count("\n") == 1


def test_subprocess_environment_errors_have_no_traceback(tmp_path: Path) -> None:
    result = run_bridge("check-config", cwd=tmp_path, env={"BRIDGE_INGRESS": "{oops"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("bridge: BRIDGE_INGRESS")
    result = run_bridge("check-config", cwd=tmp_path, env={"BRIDGE_ADMIN__PORT": "-1"})
    assert result.returncode == 2
    assert "admin.port" in result.stderr
    assert "Traceback" not in result.stderr


def test_subprocess_dlq_purge_without_yes(tmp_path: Path) -> None:
    # an unroutable RabbitMQ address: refusing must not even try it
    result = run_bridge(
        "dlq", "purge", cwd=tmp_path, env={"BRIDGE_RABBITMQ__URL": "amqp://u:p@192.0.2.1:5672/"}
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "bridge: refusing to delete dead letters without --yes.\n"
