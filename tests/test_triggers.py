"""Unit tests for bridge.triggers: the subscriber resolver, build_routes and describe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.config import Destination, LoadedConfig, ResolverSettings, Settings, TriggerSpec
from bridge.errors import ConfigError
from bridge.triggers import build_routes, describe, resolve_destination

REFERENCE = Path(__file__).parent / "data" / "trigger-reference.yaml"
WHERE = "test.toml: triggers[0]: subscriber"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings() reads BRIDGE_ variables: none of the caller's may leak in."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("BRIDGE_"):
            monkeypatch.delenv(name)


def resolve(dest: dict[str, Any], namespace: str = "default", **resolver: Any) -> str:
    return resolve_destination(
        Destination.model_validate(dest), namespace, ResolverSettings(**resolver), WHERE
    )


def loaded(triggers: list[dict[str, Any]], **sections: Any) -> LoadedConfig:
    settings = Settings(triggers=triggers, **sections)
    return LoadedConfig(
        settings=settings,
        source="test.toml",
        triggers=[(t, f"test.toml: triggers[{i}]") for i, t in enumerate(settings.triggers)],
    )


def spec(name: str, uri: str = "http://127.0.0.1:8081/", **extra: Any) -> dict[str, Any]:
    return {"name": name, "subscriber": {"uri": uri}, **extra}


# --- resolver -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dest", "namespace", "resolver", "url"),
    [
        ({"uri": "http://127.0.0.1:8081/"}, "default", {}, "http://127.0.0.1:8081/"),
        ({"uri": "https://hook.example/path?q=1"}, "default", {}, "https://hook.example/path?q=1"),
        # ref: the template, with the ref's namespace or else the trigger's
        (
            {"ref": {"name": "event-display"}},
            "default",
            {},
            "http://event-display.default.svc.cluster.local",
        ),
        (
            {"ref": {"name": "event-display"}},
            "team",
            {},
            "http://event-display.team.svc.cluster.local",
        ),
        (
            {"ref": {"name": "event-display", "namespace": "other"}},
            "team",
            {},
            "http://event-display.other.svc.cluster.local",
        ),
        # a Kubernetes Service ref resolves the same way
        (
            {"ref": {"apiVersion": "v1", "kind": "Service", "name": "svc"}},
            "default",
            {},
            "http://svc.default.svc.cluster.local",
        ),
        (
            {"ref": {"name": "svc"}},
            "ns",
            {"template": "http://{namespace}-{name}.internal:8080/"},
            "http://ns-svc.internal:8080/",
        ),
        # overrides win over the template; the key is the ref's namespace/name
        (
            {"ref": {"name": "event-display"}},
            "default",
            {"overrides": {"default/event-display": "http://127.0.0.1:8081/"}},
            "http://127.0.0.1:8081/",
        ),
        (
            {"ref": {"name": "event-display"}},
            "team",
            {"overrides": {"default/event-display": "http://127.0.0.1:8081/"}},
            "http://event-display.team.svc.cluster.local",
        ),
        (
            {"ref": {"name": "event-display", "namespace": "default"}},
            "team",
            {"overrides": {"default/event-display": "http://127.0.0.1:8081/"}},
            "http://127.0.0.1:8081/",
        ),
        # ref + relative uri: the uri extends the ref's URL
        (
            {"ref": {"name": "svc"}, "uri": "/hook"},
            "default",
            {},
            "http://svc.default.svc.cluster.local/hook",
        ),
        (
            {"ref": {"name": "svc"}, "uri": "hook?x=1"},
            "default",
            {},
            "http://svc.default.svc.cluster.local/hook?x=1",
        ),
        (
            {"ref": {"name": "svc"}, "uri": "/hook"},
            "default",
            {"overrides": {"default/svc": "http://127.0.0.1:9000"}},
            "http://127.0.0.1:9000/hook",
        ),
    ],
)
def test_resolve_destination(
    dest: dict[str, Any], namespace: str, resolver: dict[str, Any], url: str
) -> None:
    assert resolve(dest, namespace, **resolver) == url


@pytest.mark.parametrize(
    ("dest", "resolver", "field"),
    [
        ({"uri": "/relative"}, {}, f"{WHERE}.uri"),
        ({"uri": "127.0.0.1:8081"}, {}, f"{WHERE}.uri"),
        ({"uri": "ftp://host/"}, {}, f"{WHERE}.uri"),
        ({"uri": "http:///nohost"}, {}, f"{WHERE}.uri"),
        (
            {"ref": {"name": "svc"}},
            {"overrides": {"default/svc": "not-a-url"}},
            f"{WHERE}.ref (default/svc)",
        ),
        (
            {"ref": {"name": "svc"}},
            {"template": "{name}.{namespace}"},
            f"{WHERE}.ref (default/svc)",
        ),
    ],
)
def test_unresolvable_destinations_name_the_field(
    dest: dict[str, Any], resolver: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(dest, **resolver)
    message = str(info.value)
    assert message.startswith(f"{field}: ")
    assert "not an absolute http(s) URL" in message


# --- routes ---------------------------------------------------------------------------------


def test_routes_of_no_trigger_serve_the_default_broker() -> None:
    routes = build_routes(loaded([]))
    assert routes.triggers == ()
    assert routes.default_broker == "default/eventbridge-default-broker"
    assert routes.brokers == ["default/eventbridge-default-broker"]
    assert routes.broker_for_path("/") == "default/eventbridge-default-broker"
    assert routes.broker_for_path("/default/eventbridge-default-broker") == (
        "default/eventbridge-default-broker"
    )
    assert routes.broker_for_path("/default/other") is None
    assert routes.broker_for_path("/default") is None


def test_routes_brokers_paths_and_triggers() -> None:
    routes = build_routes(
        loaded(
            [
                spec("a", broker="eventbridge-default-broker"),
                spec("b", broker="eventbridge-default-broker"),
                spec("c", namespace="team", broker="orders"),
            ]
        )
    )
    assert routes.brokers == ["default/eventbridge-default-broker", "team/orders"]
    assert [t.key for t in routes.by_broker["default/eventbridge-default-broker"]] == [
        "default/a",
        "default/b",
    ]
    assert [t.key for t in routes.by_broker["team/orders"]] == ["team/c"]
    for path in ("/team/orders", "/team/orders/"):
        assert routes.broker_for_path(path) == "team/orders"
    assert routes.broker_for_path("/") == "default/eventbridge-default-broker"
    assert routes.broker_for_path("/default/orders") is None
    c = routes.trigger("team/c")
    assert c is not None
    assert (c.namespace, c.name, c.broker_key) == ("team", "c", "team/orders")
    assert c.queue == "bridge.trigger.team.c"
    assert c.dead_letter_queue == "bridge.dlq.team.c"
    assert c.sink_queue == "bridge.dls.team.c"
    assert c.source == "test.toml: triggers[2]"
    assert routes.trigger("team/none") is None


def test_a_custom_default_broker_is_served_at_root() -> None:
    routes = build_routes(loaded([], ingress={"default_broker": "ops/main"}))
    assert routes.default_broker == "ops/main"
    assert routes.broker_for_path("/") == "ops/main"
    assert routes.broker_for_path("/ops/main") == "ops/main"
    assert routes.broker_for_path("/default/eventbridge-default-broker") is None


def test_matches_any_uses_each_broker_own_triggers() -> None:
    routes = build_routes(
        loaded(
            [
                spec("oss", broker="b1", filter={"attributes": {"source": "acs.oss"}}),
                spec("ecs", broker="b2", filter={"attributes": {"source": "acs.ecs"}}),
            ]
        )
    )
    oss = {"ce-source": "acs.oss", "ce-type": "t"}
    ecs = {"ce-source": "acs.ecs", "ce-type": "t"}
    assert routes.matches_any("default/b1", oss)
    assert not routes.matches_any("default/b1", ecs)
    assert routes.matches_any("default/b2", ecs)
    assert not routes.matches_any("default/eventbridge-default-broker", oss)
    assert not routes.matches_any("default/unknown", oss)


def test_ordered_triggers_dispatch_one_at_a_time() -> None:
    routes = build_routes(
        loaded([spec("o", ordered=True, parallelism=50), spec("p", parallelism=50)])
    )
    o, p = routes.triggers
    assert (o.ordered, o.parallelism) == (True, 1)
    assert (p.ordered, p.parallelism) == (False, 50)


def test_delivery_falls_back_to_broker_default_field_by_field() -> None:
    routes = build_routes(
        loaded(
            [spec("own", delivery={"retry": 0, "backoffDelay": "PT2S"}), spec("plain")],
            delivery={"retry": 4, "backoffPolicy": "linear", "timeout": "PT3S"},
        )
    )
    own, plain = routes.triggers
    assert own.delivery.retry == 0  # falsy, yet the trigger's own value
    assert own.delivery.backoff_delay == 2.0
    assert own.delivery.backoff_policy == "linear"
    assert own.delivery.timeout == 3.0
    assert plain.delivery.retry == 4
    assert plain.delivery.backoff_delay == 0.2


def test_dead_letter_sink_trigger_first_then_broker_default() -> None:
    routes = build_routes(
        loaded(
            [
                spec("own", delivery={"deadLetterSink": {"ref": {"name": "dls"}}}),
                spec("inherits"),
            ],
            delivery={"deadLetterSink": {"uri": "http://127.0.0.1:9999/"}},
        )
    )
    own, inherits = routes.triggers
    assert own.delivery.dead_letter_sink == "http://dls.default.svc.cluster.local"
    assert inherits.delivery.dead_letter_sink == "http://127.0.0.1:9999/"
    assert build_routes(loaded([spec("none")])).triggers[0].delivery.dead_letter_sink is None


def test_a_broker_default_sink_ref_resolves_in_each_trigger_namespace() -> None:
    routes = build_routes(
        loaded(
            [spec("a", namespace="one"), spec("b", namespace="two")],
            delivery={"deadLetterSink": {"ref": {"name": "dls"}}},
        )
    )
    assert [t.delivery.dead_letter_sink for t in routes.triggers] == [
        "http://dls.one.svc.cluster.local",
        "http://dls.two.svc.cluster.local",
    ]


def test_filters_override_filter_in_routes() -> None:
    routes = build_routes(
        loaded(
            [
                spec(
                    "both",
                    filter={"attributes": {"source": "acs.oss"}},
                    filters=[{"exact": {"source": "acs.ecs"}}],
                )
            ]
        )
    )
    (t,) = routes.triggers
    assert t.filter({"ce-source": "acs.ecs"})
    assert not t.filter({"ce-source": "acs.oss"})


def test_bad_subscriber_and_sink_name_the_trigger_and_field() -> None:
    with pytest.raises(ConfigError) as info:
        build_routes(loaded([spec("a", uri="/relative")]))
    assert str(info.value).startswith("test.toml: triggers[0]: subscriber.uri: ")
    with pytest.raises(ConfigError) as info:
        build_routes(loaded([spec("a", delivery={"deadLetterSink": {"uri": "nope"}})]))
    assert str(info.value).startswith("test.toml: triggers[0]: delivery.deadLetterSink.uri: ")


def test_bad_filter_names_the_trigger() -> None:
    with pytest.raises(ConfigError) as info:
        build_routes(loaded([spec("a", filters=[{"cesql": "type = "}])]))
    assert str(info.value).startswith("test.toml: triggers[0].filters[0].cesql: ")


def test_reference_manifest_resolves_through_an_override() -> None:
    from bridge.config import load_trigger_manifests

    settings = Settings(resolver={"overrides": {"default/helloworld-go": "http://127.0.0.1:8081/"}})
    triggers = load_trigger_manifests(REFERENCE)
    routes = build_routes(LoadedConfig(settings=settings, source="test", triggers=triggers))
    (t,) = routes.triggers
    assert t.key == "default/my-service-trigger"
    assert t.broker_key == "default/eventbridge-default-broker"
    assert t.subscriber == "http://127.0.0.1:8081/"
    assert t.filter.exact
    assert t.filter({"ce-source": "acs.oss", "ce-type": "oss:ActionTrail:ConsoleOperation"})
    assert not t.filter({"ce-source": "acs.oss", "ce-type": "oss:ObjectCreated:PutObject"})
    # the reference broker is also the default one: no extra broker appears
    assert routes.brokers == ["default/eventbridge-default-broker"]


# --- describe -------------------------------------------------------------------------------


def test_describe_without_triggers() -> None:
    text = describe(build_routes(loaded([])))
    assert text.splitlines() == [
        "brokers: default/eventbridge-default-broker (default: default/eventbridge-default-broker)",
        "triggers: none",
    ]


def test_describe_shows_every_resolved_field() -> None:
    routes = build_routes(
        loaded(
            [
                spec(
                    "oss",
                    uri="http://user:hunter2@127.0.0.1:8081/",
                    broker="eventbridge-default-broker",
                    filter={"attributes": {"source": "acs.oss", "type": "a,b", "subject": ""}},
                    delivery={
                        "retry": 3,
                        "backoffPolicy": "linear",
                        "backoffDelay": "PT1.5S",
                        "retryAfterMax": 60,
                        "deadLetterSink": {"uri": "http://u:sinkpw@127.0.0.1:9/"},
                        "format": "json",
                    },
                ),
                spec("ordered", ordered=True, filters=[{"prefix": {"type": "oss:"}}]),
            ]
        )
    )
    text = describe(routes)
    lines = text.splitlines()
    assert lines[1] == "trigger default/oss"
    assert "  broker:     default/eventbridge-default-broker" in lines
    assert "  filter:     source=acs.oss, type=a|b, subject present" in lines
    assert "  subscriber: http://user:***@127.0.0.1:8081/" in lines
    assert (
        "  delivery:   retry=3 backoffPolicy=linear backoffDelay=PT1.5S timeout=PT30S "
        "format=json retryAfterMax=PT60S deadLetterSink=http://u:***@127.0.0.1:9/"
    ) in lines
    assert "  dispatch:   parallelism=64" in lines
    assert "  defined in: test.toml: triggers[0]" in lines
    assert "trigger default/ordered" in lines
    assert "  filter:     type starts with oss:" in lines
    assert "  dispatch:   ordered" in lines
    assert (
        "  delivery:   retry=10 backoffPolicy=exponential backoffDelay=PT0.2S timeout=PT30S "
        "format=binary"
    ) in lines
    assert "hunter2" not in text
    assert "sinkpw" not in text


def test_describe_unfiltered_trigger() -> None:
    text = describe(build_routes(loaded([spec("all")])))
    assert "  filter:     (all events)" in text.splitlines()


def test_routes_type_check_spec_is_trigger_spec() -> None:
    # build_routes takes TriggerSpec objects exactly as config.load makes them
    t = TriggerSpec.model_validate(spec("x"))
    routes = build_routes(LoadedConfig(settings=Settings(), source="s", triggers=[(t, "s")]))
    assert routes.triggers[0].subscriber == "http://127.0.0.1:8081/"
