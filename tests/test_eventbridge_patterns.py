"""EventBridge event patterns (`pattern`, `filters: [{eventbridge: ...}]`): the examples of
Alibaba's "Event patterns" page and AWS's pattern pages (our own events, written from them), the
reference scenario's OSS upload, load-time errors, RabbitMQ bindings, the lazy data view, the
consumer, and end to end through RabbitMQ.

Each example goes through `Routes.exchange_for`, the ingress's routing step, so the plumbing
(datacontenttype copied for filters, the data given only to filters that read it) is tested too.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bridge import names
from bridge.config import load_trigger_manifests
from bridge.errors import ConfigError
from bridge.events import event_from_json
from bridge.filters import EventView, compile_trigger_filter
from bridge.filters import view as view_module
from bridge.triggers import match_header
from tests.conftest import eventually, trigger
from tests.fakes import rig, routes_for, trigger_spec

DATA = Path(__file__).parent / "data"
OSS = json.loads((DATA / "eventbridge-oss-put-object.json").read_text())
BROKER = "default/eventbridge-default-broker"
BASE = {"specversion": "1.0", "id": "e-1", "source": "acs.oss", "type": "oss:Demo"}


def matches(pattern: dict[str, Any] | str, doc: dict[str, Any]) -> bool:
    """Whether a trigger with `pattern` takes the event `doc` (structured JSON), decided by the
    ingress's routing step."""
    routes = routes_for(trigger_spec(filter=None, pattern=pattern))
    event = event_from_json({**BASE, **doc}, "")
    _, matched = routes.exchange_for(BROKER, event.attrs, event.content_type, 0.0, event.data)
    return matched


def table(*rows: tuple[str, Any, dict[str, Any], bool]) -> Any:
    return pytest.mark.parametrize(
        ("pattern", "doc", "expected"), [r[1:] for r in rows], ids=[r[0] for r in rows]
    )


# --- Alibaba Cloud EventBridge, "Event patterns" ---------------------------------------------

SUBJECT = "acs:oss:cn-hangzhou:1234567:xls-papk/game_apk/123.jpg"


@table(
    ("value", {"source": ["acs.oss"]}, {"source": "acs.oss"}, True),
    ("value other", {"source": ["acs.oss"]}, {"source": "acs.ecs"}, False),
    ("value is case-sensitive", {"source": ["acs.oss"]}, {"source": "ACS.OSS"}, False),
    ("values are alternatives", {"source": ["acs.ecs", "acs.oss"]}, {"source": "acs.oss"}, True),
    ("prefix", {"source": [{"prefix": "acs."}]}, {"source": "acs.oss"}, True),
    ("prefix other", {"source": [{"prefix": "acs."}]}, {"source": "aliyun.oss"}, False),
    ("suffix", {"subject": [{"suffix": ".jpg"}]}, {"subject": SUBJECT}, True),
    ("suffix other", {"subject": [{"suffix": ".png"}]}, {"subject": SUBJECT}, False),
    ("suffix absent", {"subject": [{"suffix": ".jpg"}]}, {}, False),
    ("contains", {"type": [{"contains": "Normal"}]}, {"type": "ecs:Disk:NormalState"}, True),
    ("contains other", {"type": [{"contains": "Normal"}]}, {"type": "ecs:Disk:Failed"}, False),
    (
        "anything-but",
        {"data": {"state": [{"anything-but": "initializing"}]}},
        {"data": {"state": "running"}},
        True,
    ),
    (
        "anything-but the value",
        {"data": {"state": [{"anything-but": "initializing"}]}},
        {"data": {"state": "initializing"}},
        False,
    ),
    (
        "anything-but absent",
        {"data": {"state": [{"anything-but": "initializing"}]}},
        {"data": {}},
        False,
    ),
    (
        "anything-but number",
        {"data": {"x-limit": [{"anything-but": 123}]}},
        {"data": {"x-limit": 456}},
        True,
    ),
    (
        "anything-but number equal",
        {"data": {"x-limit": [{"anything-but": 123}]}},
        {"data": {"x-limit": 123}},
        False,
    ),
    (
        "anything-but list",
        {"data": {"state": [{"anything-but": ["stopped", "overloaded"]}]}},
        {"data": {"state": "running"}},
        True,
    ),
    (
        "anything-but list member",
        {"data": {"state": [{"anything-but": ["stopped", "overloaded"]}]}},
        {"data": {"state": "overloaded"}},
        False,
    ),
    (
        "anything-but prefix",
        {"data": {"state": [{"anything-but": {"prefix": "init"}}]}},
        {"data": {"state": "running"}},
        True,
    ),
    (
        "anything-but prefix starts",
        {"data": {"state": [{"anything-but": {"prefix": "init"}}]}},
        {"data": {"state": "initializing"}},
        False,
    ),
    (
        "numeric",
        {
            "data": {
                "c-count": [{"numeric": [">", 0, "<=", 5]}],
                "d-count": [{"numeric": ["<", 10]}],
                "x-limit": [{"numeric": ["=", 301.8]}],
            }
        },
        {"data": {"c-count": 5, "d-count": 7, "x-limit": 301.8}},
        True,
    ),
    (
        "numeric above the range",
        {"data": {"c-count": [{"numeric": [">", 0, "<=", 5]}]}},
        {"data": {"c-count": 6}},
        False,
    ),
    (
        "numeric lower bound excluded",
        {"data": {"c-count": [{"numeric": [">", 0, "<=", 5]}]}},
        {"data": {"c-count": 0}},
        False,
    ),
    (
        "numeric on a string",
        {"data": {"c-count": [{"numeric": [">", 0, "<=", 5]}]}},
        {"data": {"c-count": "5"}},
        False,
    ),
    (
        "cidr",
        {"data": {"source-ip": [{"cidr": "10.0.0.0/24"}]}},
        {"data": {"source-ip": "10.0.0.123"}},
        True,
    ),
    (
        "cidr outside",
        {"data": {"source-ip": [{"cidr": "10.0.0.0/24"}]}},
        {"data": {"source-ip": "10.0.1.1"}},
        False,
    ),
    (
        "cidr IPv6 address",
        {"data": {"source-ip": [{"cidr": "10.0.0.0/24"}]}},
        {"data": {"source-ip": "::ffff:10.0.0.1"}},
        False,
    ),
    (
        "exists false",
        {"data": {"state": [{"exists": False}]}},
        {"data": {"other": 1}},
        True,
    ),
    (
        "exists false present",
        {"data": {"state": [{"exists": False}]}},
        {"data": {"state": "x"}},
        False,
    ),
    ("exists true", {"data": {"state": [{"exists": True}]}}, {"data": {"state": "x"}}, True),
    ("exists true absent", {"data": {"state": [{"exists": True}]}}, {"data": {}}, False),
    ("empty string", {"data": {"eventVersion": [""]}}, {"data": {"eventVersion": ""}}, True),
    ("null", {"data": {"responseElements": [None]}}, {"data": {"responseElements": None}}, True),
    (
        "array: any element",
        {"data": {"resources": ["acs:oss:b1", "acs:oss:b2"]}},
        {"data": {"resources": ["acs:oss:b9", "acs:oss:b2"]}},
        True,
    ),
    (
        "array: no element",
        {"data": {"resources": ["acs:oss:b1", "acs:oss:b2"]}},
        {"data": {"resources": ["acs:oss:b9"]}},
        False,
    ),
    (
        "combined",
        {
            "source": ["acs.oss"],
            "type": [{"prefix": "oss:ObjectCreated:"}],
            "data": {"name": [{"anything-but": "test"}], "scope": [{"numeric": [">=", 100]}]},
        },
        {"type": "oss:ObjectCreated:PostObject", "data": {"name": "prod", "scope": 100}},
        True,
    ),
    (
        "combined, one condition fails",
        {
            "source": ["acs.oss"],
            "type": [{"prefix": "oss:ObjectCreated:"}],
            "data": {"name": [{"anything-but": "test"}], "scope": [{"numeric": [">=", 100]}]},
        },
        {"type": "oss:ObjectCreated:PostObject", "data": {"name": "test", "scope": 100}},
        False,
    ),
    (
        "the pattern as JSON text",
        '{"source": ["acs.oss"], "data": {"name": ["test"]}}',
        {"data": {"name": "test", "scope": 100}},
        True,
    ),
)
def test_alibaba_event_pattern_examples(pattern: Any, doc: dict[str, Any], expected: bool) -> None:
    assert matches(pattern, doc) is expected


# --- AWS EventBridge, where Alibaba's page is silent -----------------------------------------

RESOURCES = [
    "arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f",
    "arn:aws:ec2:us-east-1:111122223333:instance/i-b188560f",
    "arn:aws:ec2:us-east-1:444455556666:instance/i-b188560f",
]


@table(
    (
        "arrays intersect (eb-event-patterns-arrays)",
        {"data": {"resources": RESOURCES}},
        {
            "data": {
                "resources": [
                    "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:x",
                    "arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f",
                ]
            }
        },
        True,
    ),
    (
        "arrays disjoint",
        {"data": {"resources": RESOURCES}},
        {"data": {"resources": ["arn:aws:ec2:us-east-1:999:instance/i-1"]}},
        False,
    ),
    (
        "prefix on time (content-filtering)",
        {"time": [{"prefix": "2017-10-02"}]},
        {"time": "2017-10-02T15:04:05Z"},
        True,
    ),
    (
        "anything-but suffix",
        {"data": {"FileName": [{"anything-but": {"suffix": ".png"}}]}},
        {"data": {"FileName": "photo.jpg"}},
        True,
    ),
    (
        "anything-but suffix, it ends so",
        {"data": {"FileName": [{"anything-but": {"suffix": ".png"}}]}},
        {"data": {"FileName": "photo.png"}},
        False,
    ),
    (
        "anything-but on an array: one other element",
        {"data": {"state": [{"anything-but": "stopped"}]}},
        {"data": {"state": ["stopped", "running"]}},
        True,
    ),
    (
        "numeric range",
        {"data": {"x-limit": [{"numeric": [">=", 0, "<", 8]}]}},
        {"data": {"x-limit": 7.9}},
        True,
    ),
    (
        "numeric upper bound excluded",
        {"data": {"x-limit": [{"numeric": [">=", 0, "<", 8]}]}},
        {"data": {"x-limit": 8}},
        False,
    ),
    (
        "numbers compare as numbers",
        {"data": {"size": [5]}},
        {"data": {"size": 5.0}},
        True,
    ),
    ("a number is not a string", {"data": {"size": [5]}}, {"data": {"size": "5"}}, False),
    ("a string is not a number", {"data": {"size": ["5"]}}, {"data": {"size": 5}}, False),
    ("true is not 1", {"data": {"flag": [True]}}, {"data": {"flag": 1}}, False),
    ("true", {"data": {"flag": [True]}}, {"data": {"flag": True}}, True),
    (
        "IP address (cidr)",
        {"data": {"sourceIPAddress": [{"cidr": "10.0.0.0/24"}]}},
        {"data": {"sourceIPAddress": "10.0.0.255"}},
        True,
    ),
    (
        "null is not the empty string",
        {"data": {"responseElements": [""]}},
        {"data": {"responseElements": None}},
        False,
    ),
    (
        "the empty string is not null",
        {"data": {"eventVersion": [None]}},
        {"data": {"eventVersion": ""}},
        False,
    ),
    (
        "exists on an object (not a leaf)",
        {"data": {"state": [{"exists": True}]}},
        {"data": {"state": {"name": "running"}}},
        False,
    ),
    (
        "exists false on an object",
        {"data": {"state": [{"exists": False}]}},
        {"data": {"state": {"name": "running"}}},
        True,
    ),
    (
        "exists false under a missing parent",
        {"data": {"detail": {"c-count": [{"exists": False}]}}},
        {"data": {}},
        True,
    ),
    (
        "exists true on an empty array",
        {"data": {"tags": [{"exists": True}]}},
        {"data": {"tags": []}},
        False,
    ),
    (
        "array of objects: one element matches all",
        {"data": {"items": {"a": ["1"], "b": ["2"]}}},
        {"data": {"items": [{"a": "0", "b": "0"}, {"a": "1", "b": "2"}]}},
        True,
    ),
    (
        "array of objects: the matches come from different elements",
        {"data": {"items": {"a": ["1"], "b": ["2"]}}},
        {"data": {"items": [{"a": "1", "b": "0"}, {"a": "0", "b": "2"}]}},
        False,
    ),
    (
        "nested object, deep",
        {"data": {"a": {"b": {"c": {"d": [{"prefix": "x"}]}}}}},
        {"data": {"a": {"b": {"c": {"d": "xyz"}}}}},
        True,
    ),
    (
        "a nested pattern on a scalar",
        {"data": {"a": {"b": ["x"]}}},
        {"data": {"a": "x"}},
        False,
    ),
)
def test_aws_event_pattern_behaviour(pattern: Any, doc: dict[str, Any], expected: bool) -> None:
    assert matches(pattern, doc) is expected


# --- attributes (strings in bridge) and data that is not JSON --------------------------------


@table(
    ("an Integer extension, numeric", {"sequence": [{"numeric": [">", 2]}]}, {"sequence": 3}, True),
    (
        "an Integer extension, too low",
        {"sequence": [{"numeric": [">", 2]}]},
        {"sequence": 1},
        False,
    ),
    ("an Integer extension, exact", {"sequence": [3]}, {"sequence": 3}, True),
    ("a numeric on text", {"subject": [{"numeric": [">", 2]}]}, {"subject": "3 apples"}, False),
    ("a Boolean extension", {"flag": [True]}, {"flag": True}, True),
    ("a Boolean extension, false", {"flag": [True]}, {"flag": False}, False),
    ("an absent attribute", {"subject": [{"exists": False}]}, {}, True),
    ("an attribute present", {"subject": [{"exists": True}]}, {"subject": "s"}, True),
    (
        "datacontenttype",
        {"datacontenttype": [{"prefix": "application/json"}]},
        {"datacontenttype": "application/json;charset=utf-8", "data": {}},
        True,
    ),
    (
        "text data is not JSON",
        {"data": [{"exists": True}]},
        {"datacontenttype": "text/plain", "data": "hello"},
        False,
    ),
    (
        "no JSON data: exists false",
        {"data": [{"exists": False}]},
        {"datacontenttype": "text/plain", "data": "hello"},
        True,
    ),
    ("no data at all", {"data": {"a": [{"exists": False}]}}, {}, True),
    ("a leaf on the whole data", {"data": ["hello"]}, {"data": "hello"}, True),
)
def test_attributes_and_data_edges(pattern: Any, doc: dict[str, Any], expected: bool) -> None:
    assert matches(pattern, doc) is expected


# --- the reference scenario's OSS upload -----------------------------------------------------


def oss(**data_changes: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(OSS))
    for dotted, value in data_changes.items():
        node = doc["data"]
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    return doc


UPLOADS_OF_KNATIVE = {
    "source": ["acs.oss"],
    "type": [{"prefix": "oss:ObjectCreated:"}],
    "data": {
        "oss": {
            "object": {"size": [{"numeric": [">", 100000]}]},
            "bucket": {"name": ["knative"]},
        }
    },
}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (oss(), True),  # 225,496 bytes into the bucket knative
        (oss(oss__object__size=100000), False),  # not above 100,000
        (oss(oss__bucket__name="other"), False),
        ({**oss(), "type": "oss:ObjectRemoved:DeleteObject"}, False),
        ({**oss(), "source": "acs.ecs"}, False),
    ],
    ids=["the sample", "small", "other bucket", "other type", "other source"],
)
def test_the_reference_oss_upload(doc: dict[str, Any], expected: bool) -> None:
    assert matches(UPLOADS_OF_KNATIVE, doc) is expected


def test_the_oss_upload_by_key_suffix_and_region_and_not_an_ip() -> None:
    assert matches({"data": {"oss": {"object": {"key": [{"suffix": ".data"}]}}}}, OSS)
    assert matches({"aliyunregionid": ["cn-hangzhou"], "data": {"region": ["cn-hangzhou"]}}, OSS)
    # the sample's masked address is not an IP address
    masked = {"data": {"requestParameters": {"sourceIPAddress": [{"cidr": "0.0.0.0/0"}]}}}
    assert not matches(masked, OSS)
    assert matches(masked, oss(requestParameters__sourceIPAddress="47.96.1.2"))


# --- what RabbitMQ evaluates, what the consumer does ------------------------------------------


def test_single_exact_attributes_become_bindings_and_the_rest_is_checked_by_consumers() -> None:
    both = compile_trigger_filter(None, None, "t", {"source": ["acs.oss"], "type": ["a"]})
    assert both.bindings == ({"ce-source": "acs.oss", "ce-type": "a"},)
    assert both.exact
    assert not both.needs_data
    partial = compile_trigger_filter(None, None, "t", UPLOADS_OF_KNATIVE)
    assert partial.bindings == ({"ce-source": "acs.oss"},)  # a necessary condition
    assert not partial.exact
    assert partial.needs_data
    alternatives = compile_trigger_filter(None, None, "t", {"source": ["acs.oss", "acs.ecs"]})
    assert alternatives.bindings == ({},)  # bound on every event, checked by the consumer
    assert not alternatives.exact


def test_content_triggers_are_bound_on_a_mark_given_by_the_routing_step() -> None:
    routes = routes_for(
        trigger_spec("big", filter=None, pattern=UPLOADS_OF_KNATIVE),
        trigger_spec("tiny", filter=None, pattern={"data": {"oss": {"object": {"size": [0]}}}}),
        trigger_spec("plain"),  # source = acs.oss, bound on the attribute as before
    )
    big, tiny, plain = routes.triggers
    assert big.filter.bindings == ({match_header("default/big"): "1"},)
    assert tiny.filter.bindings == ({match_header("default/tiny"): "1"},)
    assert plain.filter.bindings == ({"ce-source": "acs.oss"},)
    assert match_header("default/big") != match_header("default/tiny")
    assert len(match_header("n" * 63 + "/" + "t" * 63)) < 128

    upload = event_from_json(OSS, "")
    assert routes.exchange_for(BROKER, upload.attrs, upload.content_type, 0.0, upload.data)[1]
    assert upload.attrs[match_header("default/big")] == "1"
    assert match_header("default/tiny") not in upload.attrs

    small = event_from_json(oss(oss__object__size=5), "")
    small.attrs[match_header("default/big")] = "1"  # a stale mark (a reply of a marked event)
    assert routes.exchange_for(BROKER, small.attrs, small.content_type, 0.0, small.data)[1]
    assert match_header("default/big") not in small.attrs  # matched by plain only

    other = event_from_json({**oss(oss__object__size=5), "source": "acs.ecs"}, "")
    assert not routes.exchange_for(BROKER, other.attrs, other.content_type, 0.0, other.data)[1]


def test_check_config_shows_the_pattern_as_json() -> None:
    routes = routes_for(trigger_spec(filter=None, pattern=UPLOADS_OF_KNATIVE))
    assert routes.triggers[0].filter.description == (
        'eventbridge: {"source":["acs.oss"],"type":[{"prefix":"oss:ObjectCreated:"}],'
        '"data":{"oss":{"object":{"size":[{"numeric":[">",100000]}]},'
        '"bucket":{"name":["knative"]}}}}'
    )


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every parse of an event's data, counted."""
    seen: list[bytes] = []
    real = view_module.parse_data

    def counted(body: bytes, content_type: str | None) -> object:
        seen.append(body)
        return real(body, content_type)

    monkeypatch.setattr(view_module, "parse_data", counted)
    return seen


def test_the_data_is_parsed_once_for_all_filters_and_only_when_needed(parses: list[bytes]) -> None:
    def pattern(size: int) -> dict[str, Any]:
        return {
            "source": ["acs.oss"],
            "data": {"oss": {"object": {"size": [{"numeric": [">", size]}]}}},
        }

    routes = routes_for(
        trigger_spec("t1", filter=None, pattern=pattern(10**9)),
        trigger_spec("t2", filter=None, pattern=pattern(10**8)),
        trigger_spec("t3", filter=None, pattern=pattern(1000)),
    )
    event = event_from_json(OSS, "")
    assert routes.exchange_for(BROKER, event.attrs, event.content_type, 0.0, event.data)[1]
    assert len(parses) == 1  # three filters read the data, one parse

    other = event_from_json({**OSS, "source": "acs.ecs"}, "")
    assert not routes.exchange_for(BROKER, other.attrs, other.content_type, 0.0, other.data)[1]
    assert len(parses) == 1  # the attributes ruled it out: never parsed

    plain = routes_for(trigger_spec())  # attribute filters only: the data is never looked at
    assert plain.exchange_for(BROKER, event.attrs, event.content_type, 0.0, event.data)[1]
    assert len(parses) == 1
    assert BROKER not in plain.data_filtered
    assert BROKER in routes.data_filtered


def test_a_view_parses_its_data_once(parses: list[bytes]) -> None:
    view = EventView({"ce-id": "1"}, b'{"a": 1}', "application/json")
    assert view.data == {"a": 1}
    assert view.data == {"a": 1}
    assert len(parses) == 1
    assert view.get("ce-id") == "1"
    assert dict(view) == {"ce-id": "1"}


async def test_the_consumer_evaluates_the_pattern_on_the_data() -> None:
    spec = trigger_spec(filter=None, pattern=UPLOADS_OF_KNATIVE)
    r = rig(triggers=(spec,))
    big = r.message("big")
    big.body = json.dumps(OSS["data"]).encode()
    small = r.message("small")
    small.body = json.dumps(oss(oss__object__size=10)["data"]).encode()
    await r.dispatcher.offer(big)
    await r.dispatcher.offer(small)
    assert [request.headers["ce-id"] for request in r.subscribers.requests] == ["big"]
    assert big.acks == small.acks == 1
    value = r.metrics.registry.get_sample_value(
        "bridge_filtered_events_total", {"trigger": "default/display"}
    )
    assert value == 1


# --- load-time errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("[1]", "must be a JSON object"),
        ("{nope", "not valid JSON (Expecting property name"),
        ({}, "the pattern is empty"),
        ({"source": "acs.oss"}, "must be an array of values or conditions"),
        ({"source": []}, "an empty array matches nothing"),
        ({"detail-type": ["x"]}, "AWS's detail and detail-type are CloudEvents' data and type"),
        ({"Source": ["x"]}, "'Source' is neither data nor a CloudEvents attribute name"),
        ({"source": [{"wildcard": "a*"}]}, "unknown condition 'wildcard'"),
        ({"source": [{"prefix": "a", "suffix": "b"}]}, "exactly one of prefix"),
        ({"source": [{"prefix": 1}]}, "pattern.source[0].prefix: must be a string"),
        ({"source": [["a"]]}, "an alternative cannot be an array"),
        ({"data": {"a": [{"exists": "yes"}]}}, "exists: must be true or false"),
        ({"data": {"n": [{"numeric": [">", "1"]}]}}, "'1' is not a number"),
        ({"data": {"n": [{"numeric": ["~", 1]}]}}, "'~' is not one of"),
        ({"data": {"n": [{"numeric": [">", 1, ">", 2]}]}}, "at most one lower and one upper"),
        ({"data": {"n": [{"numeric": [">", 5, "<", 1]}]}}, "the range is empty"),
        ({"data": {"n": [{"numeric": [">"]}]}}, "must be [operator, number]"),
        ({"data": {"ip": [{"cidr": "2001:db8::/32"}]}}, "IPv4 blocks only"),
        ({"data": {"ip": [{"cidr": "10.0.0.0/33"}]}}, "not a CIDR block"),
        ({"data": {"s": [{"anything-but": []}]}}, "the list is empty"),
        ({"data": {"s": [{"anything-but": {"wildcard": "x"}}]}}, '{"prefix": s}'),
        ({"data": {"prefix": "x"}}, 'a condition goes in an array: [{"prefix": ...}]'),
        ({"data": {"a": {}}}, "an empty object"),
        ({"data": json.loads("{" + '"a":{' * 40 + '"b":["x"]' + "}" * 41)}, "deeper than 32"),
    ],
)
def test_a_wrong_pattern_is_refused_at_load_naming_where(pattern: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        routes_for(trigger_spec(filter=None, pattern=pattern))
    assert message in str(caught.value)
    assert str(caught.value).startswith("test: triggers[0].pattern")


def test_pattern_with_filters_is_refused() -> None:
    with pytest.raises(ConfigError, match="takes an EventBridge pattern or filter/filters"):
        routes_for(trigger_spec(pattern={"source": ["acs.oss"]}))


def test_the_dialect_in_a_manifest_combines_with_others(tmp_path: Path) -> None:
    manifest = tmp_path / "t.yaml"
    manifest.write_text(
        """
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: big-uploads
spec:
  broker: eventbridge-default-broker
  filters:
    - eventbridge:
        source: [acs.oss]
        data:
          oss:
            object:
              size: [{numeric: [">", 100000]}]
    - prefix:
        type: "oss:ObjectCreated:"
  subscriber:
    uri: http://127.0.0.1:8081/
"""
    )
    ((spec, _),) = load_trigger_manifests(manifest)
    routes = routes_for(spec.model_dump(exclude_none=True))
    compiled = routes.triggers[0].filter
    assert compiled.needs_data
    assert compiled.description.endswith("and type starts with oss:ObjectCreated:")
    event = event_from_json(OSS, "")
    assert routes.exchange_for(BROKER, event.attrs, event.content_type, 0.0, event.data)[1]
    small = event_from_json(oss(oss__object__size=5), "")
    assert not routes.exchange_for(BROKER, small.attrs, small.content_type, 0.0, small.data)[1]


# --- end to end through RabbitMQ -------------------------------------------------------------


async def test_content_patterns_route_through_rabbitmq(bridge_factory, subscriber_factory, amqp):
    big, small = await subscriber_factory(), await subscriber_factory()
    running = await bridge_factory(
        triggers=[
            trigger("big", big.url, pattern=UPLOADS_OF_KNATIVE),
            trigger(
                "small",
                small.url,
                pattern={"data": {"oss": {"object": {"size": [{"numeric": ["<", 1000]}]}}}},
            ),
        ]
    )
    headers = {"content-type": "application/json;charset=utf-8"}
    sent = {
        "upload": oss(),
        "tiny": {**oss(oss__object__size=10), "id": "tiny"},
        "middle": {**oss(oss__object__size=5000), "id": "middle"},  # nobody: unmatched
    }
    for doc in sent.values():
        status, _, body = await running.post("/", body=json.dumps(doc), headers=headers)
        assert status == 202, body
    await eventually(lambda: big.ids() == [OSS["id"]] and small.ids() == ["tiny"])
    await asyncio.sleep(0.2)
    assert big.ids() == [OSS["id"]]
    assert small.ids() == ["tiny"]
    # the data is delivered unchanged
    assert json.loads(big.received[0].body) == OSS["data"]
    channel = await amqp.channel()
    unmatched = await channel.queue_declare(names.unmatched(BROKER), passive=True)
    assert unmatched.message_count == 1
    # RabbitMQ gave each queue only its matches (bound on the routing step's marks): the
    # consumers had nothing to filter out.
    for name in ("big", "small"):
        value = running.app.metrics.registry.get_sample_value(
            "bridge_filtered_events_total", {"trigger": f"default/{name}"}
        )
        assert not value, name
