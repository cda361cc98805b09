"""bridge.rawjson against a parser: every member's span holds exactly that member's value."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import rawjson

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
spaces = st.sampled_from(["", " ", "\n", "\t", " \r\n "])


@st.composite
def documents(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    """An object written with random spacing and escaping, and the members it holds."""
    members = draw(st.dictionaries(st.text(max_size=8), values, max_size=6))
    ascii_only = draw(st.booleans())
    parts = []
    for key, value in members.items():
        pad = [draw(spaces) for _ in range(4)]
        text_key = json.dumps(key, ensure_ascii=ascii_only)
        text_value = json.dumps(value, ensure_ascii=ascii_only)
        parts.append(f"{pad[0]}{text_key}{pad[1]}:{pad[2]}{text_value}{pad[3]}")
    body = draw(spaces) + "{" + ",".join(parts) + draw(spaces) + "}" + draw(spaces)
    return body.encode("utf-8"), members


@settings(max_examples=150, deadline=None)
@given(documents())
def test_member_spans_hold_each_members_value(doc: tuple[bytes, dict[str, Any]]) -> None:
    body, members = doc
    assert json.loads(body) == members
    spans, end = rawjson.member_spans(body)
    assert set(spans) == set(members)
    assert body[end:].strip() == b""
    for key, (start, stop) in spans.items():
        assert json.loads(body[start:stop]) == members[key]


@settings(max_examples=40, deadline=None)
@given(st.lists(documents(), max_size=5), spaces)
def test_item_starts_find_every_item_of_an_array(docs: list[tuple[bytes, Any]], pad: str) -> None:
    body = b"[" + pad.encode() + (b"," + pad.encode()).join(d for d, _ in docs) + b"]"
    starts = rawjson.item_starts(body)
    assert len(starts) == len(docs)
    for start, (_, members) in zip(starts, docs, strict=True):
        assert json.loads(body[start : rawjson.value_end(body, start)]) == members


def test_strings_with_brackets_and_escaped_quotes_do_not_confuse_the_scanner() -> None:
    body = b'{"a":"}]\\"[{","data":{"x":"\\\\","y":["]","}"]},"z":1}'
    assert rawjson.member_bytes(body, "data") == b'{"x":"\\\\","y":["]","}"]}'
    assert rawjson.member_bytes(body, "missing") is None
