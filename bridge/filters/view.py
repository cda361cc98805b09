"""What a filter that looks into the event's data gets: the headers plus the data, parsed lazily.

Attribute-only filters see the bare headers (the hot path parses nothing). A dialect that reads
the data marks its `Expression` with `needs_data`; the callers (the ingress's routing step, the
consumer) then wrap the headers in an `EventView`, once per event, whose `data` is parsed on
first use and kept: however many filters ask, the body is parsed at most once, and never for an
event whose attributes already ruled it out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Final

import orjson

from bridge.events import is_json_media
from bridge.filters.base import Attributes


class _Missing:
    """A sentinel: no value."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


# What `EventView.data` is when the event has no JSON data (absent, not JSON, or not parsable).
MISSING: Final = _Missing()
_UNPARSED: Final = _Missing()


class EventView(Mapping[str, object]):
    """An event's attributes in header form, plus its data parsed from JSON on first use.

    Filters whose expression has `needs_data` get this instead of the bare headers; everything
    else reads it as the headers mapping it wraps. The body is parsed at most once per view, and
    only when a predicate asks for `data`, so events that fail on attributes are never parsed.
    """

    __slots__ = ("_attrs", "_body", "_content_type", "_data", "headers")

    def __init__(self, attrs: Mapping[str, object], body: bytes, content_type: str | None) -> None:
        self.headers = attrs  # the wrapped headers, for predicates that read many of them
        self._attrs = attrs
        self._body = body
        self._content_type = content_type
        self._data: object = _UNPARSED

    def __getitem__(self, key: str) -> object:
        return self._attrs[key]

    def get(self, key: str, default: object = None) -> object:
        return self._attrs.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._attrs

    def __iter__(self) -> Iterator[str]:
        return iter(self._attrs)

    def __len__(self) -> int:
        return len(self._attrs)

    @property
    def parsed(self) -> bool:
        """Whether the data has been parsed already (some filter read it)."""
        return self._data is not _UNPARSED

    @property
    def data(self) -> object:
        """The data as a JSON value, or MISSING (no data, a non-JSON content type, not JSON)."""
        data = self._data
        if data is _UNPARSED:
            data = self._data = parse_data(self._body, self._content_type)
        return data


def parse_data(body: bytes, content_type: str | None) -> object:
    """`body` as a JSON value when the content type is JSON (or absent), else MISSING."""
    if not body or not is_json_media(content_type):
        return MISSING
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return MISSING  # not JSON, or beyond what orjson reads (integers past 64 bits)


def event_data(attrs: Attributes) -> object:
    """The data a predicate may look at: `EventView.data`, or MISSING for bare headers."""
    return attrs.data if isinstance(attrs, EventView) else MISSING
