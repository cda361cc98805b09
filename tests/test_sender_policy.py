"""Per-broker sender policy (`[[ingress.brokers]] allowed_sources`): an event whose `source` is
outside the broker's allow-list gets 403 and nothing of its request is stored; other brokers are
not affected; the policy shows in check-config and its mistakes are configuration errors."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bridge.cli import main
from bridge.errors import ConfigError
from bridge.policy import source_pattern
from tests.conftest import trigger, write
from tests.fakes import routes_for, trigger_spec
from tests.helpers import (
    CATCH_ALL,
    DEFAULT_PATH,
    NOWHERE,
    STRUCTURED,
    UNMATCHED,
    error_of,
    start,
    stored,
    valid_event,
)

OPEN_QUEUE = "bridge.trigger.default.open-catch-all"
BATCH = "application/cloudevents-batch+json"


@pytest.mark.parametrize(
    ("patterns", "source", "allowed"),
    [
        (("acs.oss",), "acs.oss", True),
        (("acs.oss",), "acs.oss2", False),
        (("acs.oss",), "ACS.OSS", False),
        (("acs.*",), "acs.ecs", True),
        (("acs.*",), "acs.", True),
        (("acs.*",), "xacs.ecs", False),
        (("*.oss",), "acs.oss", True),
        (("acs.?ss",), "acs.oss", False),  # only * is special
        (("acs.?ss",), "acs.?ss", True),
        (("a*c*e",), "abcde", True),
        (("acs.oss", "acs.ecs"), "acs.ecs", True),
        (("acs.oss",), "acs.oss\n", False),
    ],
)
def test_source_patterns(patterns: tuple[str, ...], source: str, allowed: bool) -> None:
    assert (source_pattern(patterns).match(source) is not None) is allowed


async def test_a_sender_outside_the_allow_list_gets_403_and_nothing_is_stored(bridge_factory, amqp):
    running = await start(
        bridge_factory,
        triggers=[trigger("catch-all", NOWHERE), trigger("open-catch-all", NOWHERE, broker="open")],
        ingress={
            "brokers": [
                {
                    "broker": "default/eventbridge-default-broker",
                    "allowed_sources": ["acs.oss", "acs.ecs.*"],
                }
            ]
        },
    )

    async def post(path: str, *sources: str, batch: bool = False) -> tuple[int, bytes]:
        events = [valid_event(id=f"e-{i}", source=s) for i, s in enumerate(sources)]
        body = orjson.dumps(events if batch else events[0])
        status, _, answer = await running.post(
            path, body=body, headers={"content-type": BATCH if batch else STRUCTURED}
        )
        return status, answer

    for source in ("acs.oss", "acs.ecs.instance"):
        status, answer = await post(DEFAULT_PATH, source)
        assert status == 202, answer
    status, answer = await post("/", "acs.ecs.disk")  # the default broker's other path
    assert status == 202, answer
    assert await stored(amqp, CATCH_ALL) == 3

    for sources in (("evil",), ("acs.ecs",), ("acs.oss.fake",)):
        status, answer = await post(DEFAULT_PATH, *sources)
        assert status == 403, sources
        assert error_of(answer) == (
            f"the broker default/eventbridge-default-broker does not take events from "
            f"{sources[0]!r}."
        )
    # a batch with one sender outside: all or nothing
    status, answer = await post(DEFAULT_PATH, "acs.oss", "evil", "acs.oss", batch=True)
    assert status == 403
    assert "'evil'" in error_of(answer)
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == 3  # nothing more

    # another broker has no policy: every source
    status, answer = await post("/default/open", "evil")
    assert status == 202, answer
    assert await stored(amqp, OPEN_QUEUE) == 1


def test_check_config_shows_each_broker_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_env: None
) -> None:
    key = tmp_path / "keys" / "cn-hangzhou.pem"
    key.parent.mkdir()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    key.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    path = write(
        tmp_path / "bridge.toml",
        """
        [ingress]
        auth_token = "s3cret"

        [ingress.signature]
        public_keys_dir = "keys"

        [[ingress.brokers]]
        broker = "default/eventbridge-default-broker"
        auth = "token+signature"
        allowed_sources = ["acs.oss", "acs.*"]

        [[ingress.brokers]]
        broker = "team/other"
        auth = "none"

        [[triggers]]
        name = "t"
        namespace = "team"
        broker = "other"
        subscriber.uri = "http://127.0.0.1:8081/"
        """,
    )
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == [
        "ingress policy default/eventbridge-default-broker: auth=token+signature "
        f"sources=acs.oss, acs.* keys={tmp_path / 'keys'} (cn-hangzhou)",
        "ingress policy team/other: auth=none sources=any",
    ]


@pytest.mark.parametrize(
    ("ingress", "message"),
    [
        (
            {"brokers": [{"broker": "default/nope", "allowed_sources": ["a"]}]},
            "brokers[0].broker: default/nope is not a broker bridge serves",
        ),
        (
            {"brokers": [{"broker": "default/eventbridge-default-broker", "allowed_sources": []}]},
            "brokers[0].allowed_sources: list at least one non-empty source",
        ),
        (
            {"brokers": [{"broker": "default/eventbridge-default-broker", "auth": "token"}]},
            "brokers[0].auth: token needs [ingress] auth_token to be set",
        ),
        (
            {
                "brokers": [
                    {"broker": "default/eventbridge-default-broker"},
                    {"broker": "default/eventbridge-default-broker"},
                ]
            },
            "brokers[1].broker: a second entry for default/eventbridge-default-broker",
        ),
    ],
)
def test_policy_mistakes_are_configuration_errors(ingress: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        routes_for(trigger_spec(), ingress=ingress)
    assert message in str(caught.value)


def test_the_policy_fields_are_validated_by_the_settings() -> None:
    from pydantic import ValidationError

    from bridge.config import Settings

    with pytest.raises(ValidationError, match="namespace/name"):
        Settings(ingress={"brokers": [{"broker": "nope"}]})
    with pytest.raises(ValidationError, match="auth"):
        Settings(ingress={"brokers": [{"broker": "a/b", "auth": "magic"}]})
    with pytest.raises(ValidationError, match="Extra inputs"):
        Settings(ingress={"brokers": [{"broker": "a/b", "allowed_source": ["x"]}]})
