"""Unit tests for bridge.filters, table-driven: (filter, event attributes, expected match).

Events are matched on their header form: the attribute `type` is the key `ce-type`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.config import LoadedConfig, Settings
from bridge.errors import ConfigError
from bridge.filters import (
    MAX_BINDINGS,
    Attributes,
    Expression,
    compile_attributes,
    compile_filters,
    compile_trigger_filter,
    describe_pairs,
    register,
    string_pairs,
    unregister,
)
from bridge.triggers import build_routes

OSS_PUT = {
    "ce-specversion": "1.0",
    "ce-id": "7adc8c1a",
    "ce-source": "acs.oss",
    "ce-type": "oss:ObjectCreated:PutObject",
    "ce-subject": "acs:oss:cn-hangzhou:1581204543170042:knative/demo.data",
    "ce-aliyunregionid": "cn-hangzhou",
    "ce-knativebrokerttl": "255",
}
CONSOLE = {**OSS_PUT, "ce-type": "oss:ActionTrail:ConsoleOperation"}
ECS = {**OSS_PUT, "ce-source": "acs.ecs", "ce-type": "ecs:Instance:StatusChanged"}
NO_SUBJECT = {k: v for k, v in OSS_PUT.items() if k != "ce-subject"}
EMPTY_SUBJECT = {**OSS_PUT, "ce-subject": ""}


def ev(**attrs: str) -> dict[str, str]:
    return {f"ce-{k}": v for k, v in attrs.items()}


# (filter.attributes, event, expected)
ATTRIBUTE_CASES: list[tuple[dict[str, str], dict[str, Any], bool]] = [
    ({}, OSS_PUT, True),
    ({}, {}, True),
    ({"source": "acs.oss"}, OSS_PUT, True),
    ({"source": "acs.oss"}, ECS, False),
    ({"source": "acs.oss", "type": "oss:ObjectCreated:PutObject"}, OSS_PUT, True),
    ({"source": "acs.oss", "type": "oss:ObjectCreated:PutObject"}, CONSOLE, False),
    ({"source": "acs.ecs", "type": "oss:ObjectCreated:PutObject"}, OSS_PUT, False),
    # the reference scenario's Trigger
    ({"source": "acs.oss", "type": "oss:ActionTrail:ConsoleOperation"}, CONSOLE, True),
    ({"source": "acs.oss", "type": "oss:ActionTrail:ConsoleOperation"}, OSS_PUT, False),
    # commas list alternatives (EventBridge convention); spaces around them do not count
    ({"type": "oss:ObjectCreated:PutObject,oss:ActionTrail:ConsoleOperation"}, OSS_PUT, True),
    ({"type": "oss:ObjectCreated:PutObject,oss:ActionTrail:ConsoleOperation"}, CONSOLE, True),
    ({"type": "oss:ObjectCreated:PutObject,oss:ActionTrail:ConsoleOperation"}, ECS, False),
    ({"type": "oss:ObjectCreated:PutObject, oss:ActionTrail:ConsoleOperation"}, CONSOLE, True),
    ({"type": "a,,b,"}, ev(type="b"), True),
    ({"type": "a,b"}, ev(type="a,b"), False),
    (
        {"source": "acs.oss,acs.ecs", "type": "oss:ObjectCreated:PutObject,x"},
        OSS_PUT,
        True,
    ),
    ({"source": "acs.oss,acs.ecs", "type": "oss:ObjectCreated:PutObject,x"}, ECS, False),
    # empty value: present with any value
    ({"subject": ""}, OSS_PUT, True),
    ({"subject": ""}, EMPTY_SUBJECT, True),
    ({"subject": ""}, NO_SUBJECT, False),
    ({"subject": "", "source": "acs.oss"}, NO_SUBJECT, False),
    ({"subject": "", "source": "acs.oss"}, OSS_PUT, True),
    # extensions filter like any attribute
    ({"aliyunregionid": "cn-hangzhou"}, OSS_PUT, True),
    ({"aliyunregionid": "cn-beijing"}, OSS_PUT, False),
    ({"aliyunaccountid": ""}, OSS_PUT, False),
    # case-sensitive values
    ({"source": "ACS.OSS"}, OSS_PUT, False),
    ({"type": "oss:objectcreated:putobject"}, OSS_PUT, False),
    # no substring, prefix or whitespace leniency
    ({"source": "acs"}, OSS_PUT, False),
    ({"source": "acs.oss "}, OSS_PUT, True),  # alternatives are stripped
    ({"source": "acs.oss"}, ev(source="acs.oss "), False),
    # matching is on the header form only
    ({"source": "acs.oss"}, {"source": "acs.oss"}, False),
    # three exact values and more: the general path
    (
        {"source": "acs.oss", "type": "oss:ObjectCreated:PutObject", "specversion": "1.0"},
        OSS_PUT,
        True,
    ),
    (
        {"source": "acs.oss", "type": "oss:ObjectCreated:PutObject", "specversion": "0.3"},
        OSS_PUT,
        False,
    ),
    ({"source": "acs.oss", "id": "7adc8c1a,other"}, OSS_PUT, True),
]


@pytest.mark.parametrize(("attributes", "event", "expected"), ATTRIBUTE_CASES)
def test_filter_attributes(
    attributes: dict[str, str], event: dict[str, Any], expected: bool
) -> None:
    compiled = compile_attributes(attributes, "t")
    assert compiled.predicate(event) is expected
    assert compiled(event) is expected
    assert_bindings_agree(compiled, event, expected)


# (filters, event, expected)
FILTERS_CASES: list[tuple[list[dict[str, Any]], dict[str, Any], bool]] = [
    ([{"exact": {"type": "oss:ObjectCreated:PutObject"}}], OSS_PUT, True),
    ([{"exact": {"type": "oss:ObjectCreated:PutObject"}}], CONSOLE, False),
    ([{"exact": {"type": "oss:ObjectCreated"}}], OSS_PUT, False),
    ([{"exact": {"type": "OSS:ObjectCreated:PutObject"}}], OSS_PUT, False),
    ([{"exact": {"subject": ""}}], EMPTY_SUBJECT, True),
    ([{"exact": {"subject": ""}}], NO_SUBJECT, False),
    ([{"exact": {"source": "acs.oss", "type": "oss:ObjectCreated:PutObject"}}], OSS_PUT, True),
    ([{"exact": {"source": "acs.oss", "type": "oss:ObjectCreated:PutObject"}}], CONSOLE, False),
    # prefix
    ([{"prefix": {"type": "oss:ObjectCreated:"}}], OSS_PUT, True),
    ([{"prefix": {"type": "oss:ObjectCreated:"}}], CONSOLE, False),
    ([{"prefix": {"type": "oss:ObjectCreated:PutObject"}}], OSS_PUT, True),
    ([{"prefix": {"type": "OSS:"}}], OSS_PUT, False),
    ([{"prefix": {"type": "oss:ObjectCreated:PutObjectX"}}], OSS_PUT, False),
    ([{"prefix": {"dataschema": "http"}}], OSS_PUT, False),
    # suffix
    ([{"suffix": {"type": ":PutObject"}}], OSS_PUT, True),
    ([{"suffix": {"type": ":PutObject"}}], CONSOLE, False),
    ([{"suffix": {"subject": "/demo.data"}}], OSS_PUT, True),
    ([{"suffix": {"subject": "/DEMO.DATA"}}], OSS_PUT, False),
    ([{"suffix": {"subject": "x"}}], NO_SUBJECT, False),
    # the list is an implicit all
    ([{"prefix": {"type": "oss:"}}, {"exact": {"source": "acs.oss"}}], OSS_PUT, True),
    ([{"prefix": {"type": "oss:"}}, {"exact": {"source": "acs.ecs"}}], OSS_PUT, False),
    ([{"prefix": {"type": "oss:"}}, {"suffix": {"type": ":PutObject"}}], CONSOLE, False),
    # all
    ([{"all": [{"prefix": {"type": "oss:"}}, {"suffix": {"type": "Object"}}]}], OSS_PUT, True),
    ([{"all": [{"prefix": {"type": "oss:"}}, {"suffix": {"type": "Operation"}}]}], OSS_PUT, False),
    ([{"all": []}], OSS_PUT, True),
    # any
    (
        [{"any": [{"exact": {"source": "acs.ecs"}}, {"exact": {"source": "acs.oss"}}]}],
        OSS_PUT,
        True,
    ),
    ([{"any": [{"exact": {"source": "acs.ecs"}}, {"exact": {"source": "acs.oss"}}]}], ECS, True),
    (
        [{"any": [{"exact": {"source": "acs.ecs"}}, {"exact": {"source": "acs.rds"}}]}],
        OSS_PUT,
        False,
    ),
    ([{"any": [{"prefix": {"type": "ecs:"}}, {"suffix": {"type": ":PutObject"}}]}], OSS_PUT, True),
    # not
    ([{"not": {"exact": {"type": "oss:ObjectCreated:PutObject"}}}], OSS_PUT, False),
    ([{"not": {"exact": {"type": "oss:ObjectCreated:PutObject"}}}], CONSOLE, True),
    ([{"not": {"prefix": {"type": "ecs:"}}}], OSS_PUT, True),
    ([{"not": {"not": {"exact": {"source": "acs.oss"}}}}], OSS_PUT, True),
    ([{"not": {"exact": {"subject": "x"}}}], NO_SUBJECT, True),
    # nesting and mixing
    (
        [
            {"exact": {"source": "acs.oss"}},
            {
                "any": [
                    {"all": [{"prefix": {"type": "oss:Object"}}, {"suffix": {"type": "Put"}}]},
                    {"not": {"prefix": {"type": "oss:ObjectCreated:"}}},
                ]
            },
        ],
        OSS_PUT,
        False,
    ),
    (
        [
            {"exact": {"source": "acs.oss"}},
            {
                "any": [
                    {"all": [{"prefix": {"type": "oss:Object"}}, {"suffix": {"type": "Put"}}]},
                    {"not": {"prefix": {"type": "oss:ObjectCreated:"}}},
                ]
            },
        ],
        CONSOLE,
        True,
    ),
    # contradictory exact values: nothing matches
    ([{"exact": {"type": "a"}}, {"exact": {"type": "b"}}], ev(type="a"), False),
    ([{"exact": {"type": "a"}}, {"exact": {"type": "b"}}], ev(type="b"), False),
    # the same exact value twice is fine
    ([{"exact": {"type": "a"}}, {"all": [{"exact": {"type": "a"}}]}], ev(type="a"), True),
    # non-string values in the attributes never match prefix/suffix
    ([{"prefix": {"type": "1"}}], {"ce-type": 123}, False),
]


@pytest.mark.parametrize(("filters", "event", "expected"), FILTERS_CASES)
def test_filters_dialects(
    filters: list[dict[str, Any]], event: dict[str, Any], expected: bool
) -> None:
    compiled = compile_filters(filters, "t")
    assert compiled.predicate(event) is expected
    assert_bindings_agree(compiled, event, expected)


def assert_bindings_agree(compiled: Any, event: dict[str, Any], expected: bool) -> None:
    """RabbitMQ's bindings select a superset of the matches, and exactly them when `exact`."""
    bound = any(all(event.get(k) == v for k, v in b.items()) for b in compiled.bindings)
    if expected:
        assert bound, "a matching event must reach the trigger's queue"
    if compiled.exact:
        assert bound is expected


# (attributes, filters, event, expected): `filters` overrides `filter` when present
OVERRIDE_CASES: list[
    tuple[dict[str, str] | None, list[dict[str, Any]] | None, dict[str, Any], bool]
] = [
    ({"source": "acs.ecs"}, [{"exact": {"source": "acs.oss"}}], OSS_PUT, True),
    ({"source": "acs.oss"}, [{"exact": {"source": "acs.ecs"}}], OSS_PUT, False),
    ({"source": "acs.oss"}, None, OSS_PUT, True),
    ({"source": "acs.oss"}, [], OSS_PUT, True),
    ({"source": "acs.ecs"}, [], OSS_PUT, False),
    (None, None, OSS_PUT, True),
    (None, [{"prefix": {"type": "ecs:"}}], OSS_PUT, False),
]


@pytest.mark.parametrize(("attributes", "filters", "event", "expected"), OVERRIDE_CASES)
def test_filters_override_filter(
    attributes: dict[str, str] | None,
    filters: list[dict[str, Any]] | None,
    event: dict[str, Any],
    expected: bool,
) -> None:
    assert compile_trigger_filter(attributes, filters, "t").predicate(event) is expected


# --- RabbitMQ bindings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "bindings", "exact"),
    [
        ({}, [{}], True),
        ({"source": "acs.oss"}, [{"ce-source": "acs.oss"}], True),
        (
            {"source": "acs.oss", "type": "a,b"},
            [
                {"ce-source": "acs.oss", "ce-type": "a"},
                {"ce-source": "acs.oss", "ce-type": "b"},
            ],
            True,
        ),
        (
            {"source": "s1,s2", "type": "a,b"},
            [
                {"ce-source": "s1", "ce-type": "a"},
                {"ce-source": "s1", "ce-type": "b"},
                {"ce-source": "s2", "ce-type": "a"},
                {"ce-source": "s2", "ce-type": "b"},
            ],
            True,
        ),
        # "present with any value" cannot be a headers binding: superset + consumer check
        ({"source": "acs.oss", "subject": ""}, [{"ce-source": "acs.oss"}], False),
        ({"subject": ""}, [{}], False),
    ],
)
def test_attribute_bindings(
    attributes: dict[str, str], bindings: list[dict[str, str]], exact: bool
) -> None:
    compiled = compile_attributes(attributes, "t")
    assert sorted(map(sorted_items, compiled.bindings)) == sorted(map(sorted_items, bindings))
    assert compiled.exact is exact


@pytest.mark.parametrize(
    ("filters", "bindings", "exact"),
    [
        ([{"exact": {"type": "a"}}], [{"ce-type": "a"}], True),
        (
            [{"exact": {"type": "a"}}, {"all": [{"exact": {"source": "s"}}]}],
            [{"ce-type": "a", "ce-source": "s"}],
            True,
        ),
        ([{"prefix": {"type": "oss:"}}], [{}], False),
        ([{"exact": {"source": "s"}}, {"prefix": {"type": "oss:"}}], [{"ce-source": "s"}], False),
        ([{"any": [{"exact": {"type": "a"}}, {"exact": {"type": "b"}}]}], [{}], False),
        ([{"not": {"exact": {"type": "a"}}}], [{}], False),
        ([{"exact": {"type": "a"}}, {"exact": {"type": "b"}}], None, False),
    ],
)
def test_filters_bindings(
    filters: list[dict[str, Any]], bindings: list[dict[str, str]] | None, exact: bool
) -> None:
    compiled = compile_filters(filters, "t")
    if bindings is not None:
        assert [sorted_items(b) for b in compiled.bindings] == [sorted_items(b) for b in bindings]
    assert compiled.exact is exact


def sorted_items(binding: dict[str, str]) -> list[tuple[str, str]]:
    return sorted(binding.items())


def test_bindings_are_capped_and_the_widest_list_left_to_the_consumer() -> None:
    # 4 x 4 x 5 = 80 combinations > MAX_BINDINGS: the widest list (5) is dropped -> 16 bindings
    attributes = {
        "source": ",".join(f"s{i}" for i in range(4)),
        "subject": ",".join(f"x{i}" for i in range(4)),
        "type": ",".join(f"t{i}" for i in range(5)),
    }
    compiled = compile_attributes(attributes, "t")
    assert len(compiled.bindings) == 16 <= MAX_BINDINGS
    assert all(set(b) == {"ce-source", "ce-subject"} for b in compiled.bindings)
    assert compiled.exact is False
    # every combination still matches, through the predicate, and has a binding
    for s, x, ty in itertools.product(range(4), range(4), range(5)):
        event = ev(source=f"s{s}", subject=f"x{x}", type=f"t{ty}")
        assert compiled(event)
        assert_bindings_agree(compiled, event, True)
    assert not compiled(ev(source="s0", subject="x0", type="t9"))


def test_exactly_max_bindings_stays_exact() -> None:
    attributes = {
        "source": ",".join(f"s{i}" for i in range(8)),
        "type": ",".join(f"t{i}" for i in range(8)),
    }
    compiled = compile_attributes(attributes, "t")
    assert len(compiled.bindings) == MAX_BINDINGS == 64
    assert compiled.exact is True


def test_one_list_wider_than_the_cap_binds_everything() -> None:
    compiled = compile_attributes({"type": ",".join(f"t{i}" for i in range(100))}, "t")
    assert compiled.bindings == ({},)
    assert compiled.exact is False
    assert compiled(ev(type="t99"))
    assert not compiled(ev(type="t100"))


# --- descriptions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "filters", "description"),
    [
        ({}, None, "(all events)"),
        ({"source": "acs.oss", "type": "a, b"}, None, "source=acs.oss, type=a|b"),
        ({"subject": ""}, None, "subject present"),
        (None, [{"exact": {"type": "a"}}], "type=a"),
        (
            None,
            [{"prefix": {"type": "oss:"}}, {"suffix": {"subject": ".jpg"}}],
            "type starts with oss: and subject ends with .jpg",
        ),
        (
            None,
            [{"any": [{"exact": {"type": "a"}}, {"not": {"exact": {"type": "b"}}}]}],
            "(type=a or not type=b)",
        ),
        (None, [{"all": [{"exact": {"type": "a"}}, {"exact": {"id": "1"}}]}], "(type=a and id=1)"),
    ],
)
def test_description(
    attributes: dict[str, str] | None, filters: list[dict[str, Any]] | None, description: str
) -> None:
    assert compile_trigger_filter(attributes, filters, "t").description == description


# --- invalid filters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "where", "problem"),
    [
        ([{"cesql": "type = = 'a'"}], "t.filters[0].cesql", "at line 1, column 8"),
        ([{"any": [{"cesql": "x"}]}], "t.filters[0].any[0].cesql", "not a Boolean"),
        ([{"regex": {"type": "a.*"}}], "t.filters[0]", "unknown filter dialect 'regex'"),
        ([{"exact": {"type": "a"}, "prefix": {"type": "b"}}], "t.filters[0]", "exactly one"),
        ([{}], "t.filters[0]", "exactly one"),
        (["exact"], "t.filters[0]", "exactly one"),
        ([{"exact": {}}], "t.filters[0].exact", "must map attribute names"),
        ([{"exact": "type=a"}], "t.filters[0].exact", "must map attribute names"),
        ([{"exact": {"type": 1}}], "t.filters[0].exact.type", "must be a string"),
        ([{"prefix": {"type": ""}}], "t.filters[0].prefix.type", "must not be empty"),
        ([{"suffix": {"type": ""}}], "t.filters[0].suffix.type", "must not be empty"),
        ([{"exact": {"Type": "a"}}], "t.filters[0].exact", "not a CloudEvents attribute name"),
        ([{"exact": {"ce-type": "a"}}], "t.filters[0].exact", "not a CloudEvents attribute name"),
        ([{"any": []}], "t.filters[0].any", "non-empty list"),
        ([{"any": {"exact": {"type": "a"}}}], "t.filters[0].any", "non-empty list"),
        ([{"all": {"exact": {"type": "a"}}}], "t.filters[0].all", "must be a list"),
        ([{"not": [{"exact": {"type": "a"}}]}], "t.filters[0].not", "exactly one"),
    ],
)
def test_invalid_filters_are_config_errors(
    filters: list[dict[str, Any]], where: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        compile_trigger_filter(None, filters, "t")
    message = str(info.value)
    assert message.startswith(f"{where}: "), message
    assert problem in message


@pytest.mark.parametrize(
    ("attributes", "where", "problem"),
    [
        ({"Source": "acs.oss"}, "t.filter.attributes", "not a CloudEvents attribute name"),
        ({"ce-source": "acs.oss"}, "t.filter.attributes", "not a CloudEvents attribute name"),
        ({"": "x"}, "t.filter.attributes", "not a CloudEvents attribute name"),
        ({"type": ","}, "t.filter.attributes.type", "lists no value"),
        ({"type": " , "}, "t.filter.attributes.type", "lists no value"),
    ],
)
def test_invalid_attribute_filters_are_config_errors(
    attributes: dict[str, str], where: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        compile_attributes(attributes, "t")
    assert str(info.value).startswith(f"{where}: ")
    assert problem in str(info.value)


# --- a new dialect is one function plus one registration ------------------------------------


def compile_contains(arg: Any, where: str) -> Expression:
    """`contains: {attr: text}`: every attribute a string containing its text."""
    pairs = string_pairs(arg, where, allow_empty=False)
    frozen = tuple(pairs)

    def predicate(attrs: Attributes) -> bool:
        for key, text in frozen:
            got = attrs.get(key)
            if not isinstance(got, str) or text not in got:
                return False
        return True

    # No exact values implied ({}), so not pure: bound on a superset, re-checked by the consumer.
    return Expression(
        predicate, {}, False, describe_pairs(pairs, " contains "), frozenset(k for k, _ in pairs)
    )


@pytest.fixture
def contains_dialect() -> Iterator[None]:
    register("contains", compile_contains)
    yield
    unregister("contains")


@pytest.mark.usefixtures("contains_dialect")
def test_a_registered_dialect_compiles_matches_and_binds_a_superset() -> None:
    filters = [{"exact": {"source": "acs.oss"}}, {"contains": {"subject": "knative/"}}]
    compiled = compile_trigger_filter({"source": "acs.ecs"}, filters, "t")
    assert compiled(OSS_PUT)
    assert not compiled(ECS)
    assert not compiled(NO_SUBJECT)
    assert not compiled({**OSS_PUT, "ce-subject": "acs:oss:cn-hangzhou:other/demo.data"})
    # RabbitMQ binds on the exact part only; the consumer re-checks the rest
    assert compiled.bindings == ({"ce-source": "acs.oss"},)
    assert compiled.exact is False
    assert compiled.keys == {"ce-source", "ce-subject"}
    assert compiled.description == "source=acs.oss and subject contains knative/"
    # it nests like any other dialect, and its errors carry the expression's path
    nested = compile_filters([{"not": {"any": [{"contains": {"type": "Console"}}]}}], "t")
    assert nested(OSS_PUT)
    assert not nested(CONSOLE)
    with pytest.raises(ConfigError, match=r"^t\.filters\[0\]\.contains\.type: .*must not be empty"):
        compile_filters([{"contains": {"type": ""}}], "t")


@pytest.mark.usefixtures("contains_dialect")
def test_a_registered_dialect_reaches_the_triggers(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("BRIDGE_"):
            monkeypatch.delenv(name)  # Settings() reads BRIDGE_ variables
    settings = Settings(
        triggers=[
            {
                "name": "t",
                "subscriber": {"uri": "http://127.0.0.1:8081/"},
                "filters": [{"contains": {"type": "ObjectCreated"}}],
            }
        ]
    )
    routes = build_routes(
        LoadedConfig(settings=settings, source="x.toml", triggers=[(settings.triggers[0], "x")])
    )
    (trigger,) = routes.triggers
    assert routes.matches_any(trigger.broker_key, OSS_PUT)
    assert not routes.matches_any(trigger.broker_key, CONSOLE)
    assert trigger.filter.bindings == ({},)
    assert trigger.filter.exact is False


def test_an_unregistered_dialect_is_unknown_again() -> None:
    register("contains", compile_contains)
    unregister("contains")
    with pytest.raises(ConfigError, match="unknown filter dialect 'contains'"):
        compile_filters([{"contains": {"type": "a"}}], "t")


def test_a_dialect_is_registered_once() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register("exact", compile_contains)
