"""The routing step's index of content patterns (`DataIndex` in bridge/triggers.py).

The index may only skip evaluations, never change an outcome: a property test routes generated
events through the same triggers with and without it and compares every mark. The other tests
show it does skip (twenty patterns told apart by a bucket name: about two evaluations per event)
and how values are reached through arrays, as patterns match them.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.events import event_from_json
from bridge.filters.eventbridge import data_keys, reachable_strings
from bridge.triggers import DataIndex, Routes, match_header
from tests.fakes import routes_for, trigger_spec

BROKER = "default/eventbridge-default-broker"
WORDS = ["a", "b", "c"]

words = st.sampled_from(WORDS)
leaf = st.one_of(
    st.lists(words, min_size=1, max_size=2, unique=True),  # strings only: indexed
    st.just([{"prefix": "a"}]),
    st.just([{"exists": False}]),
    st.just([{"anything-but": "a"}]),
    st.just([{"numeric": [">", 1]}]),
)
patterns = st.fixed_dictionaries(
    {
        "data": st.fixed_dictionaries(
            {"k": leaf}, optional={"n": st.fixed_dictionaries({"m": leaf})}
        )
    },
    optional={"source": st.just(["acs.oss"])},
)
json_value = st.recursive(
    st.one_of(words, st.integers(0, 3), st.none(), st.booleans()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["k", "m", "n"]), inner, max_size=3),
    ),
    max_leaves=8,
)
data_docs = st.one_of(
    st.dictionaries(st.sampled_from(["k", "n", "x"]), json_value, max_size=3),
    st.lists(st.dictionaries(st.sampled_from(["k", "n"]), json_value, max_size=2), max_size=2),
    json_value,
)


def marks(routes: Routes, doc: dict[str, Any]) -> tuple[bool, frozenset[str]]:
    event = event_from_json(doc, "")
    _, matched = routes.exchange_for(BROKER, event.attrs, event.content_type, 0.0, event.data)
    return matched, frozenset(k for k in event.attrs if k.startswith("bridge-match-"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(patterns, min_size=2, max_size=5),
    st.lists(st.tuples(data_docs, st.sampled_from(["acs.oss", "acs.ecs"])), max_size=4),
)
def test_the_index_never_changes_what_matches(
    pattern_list: list[dict[str, Any]], events: list[tuple[Any, str]]
) -> None:
    indexed = routes_for(
        *(trigger_spec(f"t{i}", filter=None, pattern=p) for i, p in enumerate(pattern_list))
    )
    plain = dataclasses.replace(indexed, data_index={})
    for data, source in events:
        doc = {"specversion": "1.0", "id": "e", "source": source, "type": "t", "data": data}
        assert marks(indexed, doc) == marks(plain, doc), (json.dumps(pattern_list), doc)


def bucket_pattern(bucket: str) -> dict[str, Any]:
    return {
        "source": ["acs.oss"],
        "data": {
            "oss": {"bucket": {"name": [bucket]}, "object": {"size": [{"numeric": [">", 1]}]}}
        },
    }


def test_twenty_patterns_told_apart_by_a_bucket_cost_about_two_evaluations() -> None:
    routes = routes_for(
        *(trigger_spec(f"t{i}", filter=None, pattern=bucket_pattern(f"b{i}")) for i in range(20))
    )
    index = routes.data_index[BROKER]
    assert len(index.indexed) == 20
    assert [path for path, _ in index.tables] == [("oss", "bucket", "name")]
    calls: list[str] = []
    counted = []
    for trigger in routes.triggers:
        real = trigger.filter.predicate

        def predicate(attrs: Any, real: Any = real, key: str = trigger.key) -> bool:
            calls.append(key)
            return bool(real(attrs))

        counted.append(
            dataclasses.replace(
                trigger, filter=dataclasses.replace(trigger.filter, predicate=predicate)
            )
        )
    routes = dataclasses.replace(
        routes, triggers=tuple(counted), by_broker={BROKER: tuple(counted)}
    )
    doc = {
        "specversion": "1.0",
        "id": "e",
        "source": "acs.oss",
        "type": "oss:ObjectCreated:PutObject",
        "data": {"oss": {"bucket": {"name": "b7"}, "object": {"size": 10}}},
    }
    matched, found = marks(routes, doc)
    assert matched
    assert found == {match_header("default/t7")}
    assert calls == [
        "default/t0",
        "default/t7",
    ]  # the first parses the data; the index does the rest
    calls.clear()
    other = {**doc, "source": "acs.ecs"}
    assert marks(routes, other) == (False, frozenset())
    assert len(calls) == 20  # attributes rule every one out, and the data is never parsed


def test_no_index_for_patterns_without_a_leaf_of_strings() -> None:
    numeric = {"data": {"size": [{"numeric": [">", 1]}]}}
    routes = routes_for(
        trigger_spec("t1", filter=None, pattern=numeric),
        trigger_spec("t2", filter=None, pattern=numeric),
    )
    assert routes.data_index == {}
    assert DataIndex.build(routes.triggers) is None


def test_data_keys_are_the_leaves_of_strings_only() -> None:
    pattern = {
        "oss": {"bucket": {"name": ["a", "b"]}, "size": [1], "k": [{"prefix": "x"}]},
        "region": ["cn-hangzhou"],
        "mixed": ["a", 1],
    }
    assert list(data_keys(pattern, ())) == [
        (("oss", "bucket", "name"), frozenset({"a", "b"})),
        (("region",), frozenset({"cn-hangzhou"})),
    ]


def test_strings_are_reached_through_arrays_at_any_level() -> None:
    data = {
        "oss": [
            {"bucket": {"name": "a"}},
            [{"bucket": [{"name": ["b", 3, ["c"]]}, {"name": {"deep": "x"}}]}],
            "scalar",
        ]
    }
    assert reachable_strings(data, ("oss", "bucket", "name")) == {"a", "b", "c"}
    assert reachable_strings(data, ("oss", "missing")) == set()
    assert reachable_strings("text", ("oss",)) == set()
    assert reachable_strings({"k": 5}, ("k",)) == set()


def test_arrays_nested_as_deep_as_json_allows_route_the_same_with_and_without_the_index() -> None:
    routes = routes_for(
        trigger_spec("near", filter=None, pattern={"data": {"k": ["a"]}}),
        trigger_spec("deep", filter=None, pattern={"data": {"deep": ["q"]}}),
    )
    plain = dataclasses.replace(routes, data_index={})
    body = b'{"k": "a", "deep": ' + b"[" * 1000 + b'"q"' + b"]" * 1000 + b"}"
    for each in (routes, plain):
        attrs = {"ce-specversion": "1.0", "ce-id": "e", "ce-source": "acs.oss", "ce-type": "t"}
        _, matched = each.exchange_for(BROKER, attrs, "application/json", 0.0, body)
        assert matched
        assert match_header("default/near") in attrs
        assert match_header("default/deep") in attrs
    assert reachable_strings(orjson.loads(body), ("deep",)) == {"q"}
