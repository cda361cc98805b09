"""Where a member's value lies in the bytes of a JSON document, so it can be kept byte for byte.

An event's `data` must reach subscribers exactly as it was sent: re-serialising a parsed value
loses what a parser cannot hold (integers beyond 64 bits, decimals beyond a double's precision)
and fails on deep nesting. The ingress locates `data` with msgspec (`msgspec.Raw`, in C); this
scanner is the fallback for the rare documents msgspec refuses (nesting past its limit, escaped
lone surrogates). It only runs on documents a parser already accepted, so it skips values without
checking them: strings by one regular expression, arrays and objects by counting brackets outside
strings. Pure Python: about 100 us for a 1 KB event, hence only a fallback.
"""

from __future__ import annotations

import re

import orjson

Span = tuple[int, int]

# A JSON string, unrolled so that long strings cost one regex step per escape, not per character.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
# Inside an array or object: the next string (skipped whole) or bracket.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.S)
_SPACE = re.compile(rb"[ \t\n\r]*")
# A number, true, false or null ends before a space, a comma or a closing bracket.
_SCALAR_END = re.compile(rb"[ \t\n\r,\]}]")
_OPEN = frozenset(b"[{")
_QUOTE = ord('"')


def _skip_space(buf: bytes, i: int) -> int:
    match = _SPACE.match(buf, i)
    assert match is not None  # `*` always matches
    return match.end()


def value_end(buf: bytes, i: int) -> int:
    """The end of the JSON value that starts at `i` (no leading space)."""
    first = buf[i]
    if first == _QUOTE:
        match = _STRING.match(buf, i)
        assert match is not None, "rawjson runs on validated JSON only"
        return match.end()
    if first in _OPEN:
        depth = 0
        for match in _TOKEN.finditer(buf, i):
            token = match.group()
            if token[0] == _QUOTE:
                continue
            depth += 1 if token[0] in _OPEN else -1
            if depth == 0:
                return match.end()
        raise AssertionError("rawjson runs on validated JSON only")
    match = _SCALAR_END.search(buf, i)
    return match.start() if match else len(buf)


def member_spans(buf: bytes, i: int = 0) -> tuple[dict[str, Span], int]:
    """The members of the object at `i` (leading space allowed): name -> span of its value.

    A name that appears twice keeps its last value, as the parser does.
    """
    i = _skip_space(buf, i)
    assert buf[i] == ord("{"), "not an object"
    spans: dict[str, Span] = {}
    i = _skip_space(buf, i + 1)
    if buf[i] == ord("}"):
        return spans, i + 1
    while True:
        key_end = value_end(buf, i)
        raw_key = buf[i + 1 : key_end - 1]
        key = str(orjson.loads(buf[i:key_end])) if b"\\" in raw_key else raw_key.decode("utf-8")
        i = _skip_space(buf, key_end) + 1  # the colon
        i = _skip_space(buf, i)
        end = value_end(buf, i)
        spans[key] = (i, end)
        i = _skip_space(buf, end)
        if buf[i] == ord("}"):
            return spans, i + 1
        i = _skip_space(buf, i + 1)  # after the comma


def item_starts(buf: bytes, i: int = 0) -> list[int]:
    """Where each item of the array at `i` (leading space allowed) starts."""
    i = _skip_space(buf, i)
    assert buf[i] == ord("["), "not an array"
    starts: list[int] = []
    i = _skip_space(buf, i + 1)
    if buf[i] == ord("]"):
        return starts
    while True:
        starts.append(i)
        i = _skip_space(buf, value_end(buf, i))
        if buf[i] == ord("]"):
            return starts
        i = _skip_space(buf, i + 1)


def member_bytes(buf: bytes, name: str, i: int = 0) -> bytes | None:
    """The raw bytes of member `name` of the object at `i`, or None when it has none."""
    span = member_spans(buf, i)[0].get(name)
    return None if span is None else buf[span[0] : span[1]]
