"""The `exact`, `prefix` and `suffix` dialects: attribute values compared as strings.

`exact` is the only dialect RabbitMQ can evaluate (its values become binding headers); `prefix`
and `suffix` are bound on a superset and checked by the consumer.
"""

from __future__ import annotations

from typing import Any

from bridge.filters.base import Attributes, Expression, Predicate, describe_pairs, string_pairs


def compile_exact(arg: Any, where: str) -> Expression:
    """`exact: {attr: value}`: every attribute present and equal (an empty value included)."""
    pairs = string_pairs(arg, where, allow_empty=True)
    frozen = tuple(pairs)
    return Expression(
        lambda attrs: all(attrs.get(n) == v for n, v in frozen),
        dict(pairs),
        True,
        describe_pairs(pairs, "="),
        frozenset(key for key, _ in pairs),
    )


def compile_prefix(arg: Any, where: str) -> Expression:
    """`prefix: {attr: value}`: every attribute a string starting with its (non-empty) value."""
    pairs = string_pairs(arg, where, allow_empty=False)
    return Expression(
        _prefix(tuple(pairs)),
        {},
        False,
        describe_pairs(pairs, " starts with "),
        frozenset(key for key, _ in pairs),
    )


def compile_suffix(arg: Any, where: str) -> Expression:
    """`suffix: {attr: value}`: every attribute a string ending with its (non-empty) value."""
    pairs = string_pairs(arg, where, allow_empty=False)
    return Expression(
        _suffix(tuple(pairs)),
        {},
        False,
        describe_pairs(pairs, " ends with "),
        frozenset(key for key, _ in pairs),
    )


def _prefix(frozen: tuple[tuple[str, str], ...]) -> Predicate:
    def predicate(attrs: Attributes) -> bool:
        for name, value in frozen:
            got = attrs.get(name)
            if not isinstance(got, str) or not got.startswith(value):
                return False
        return True

    return predicate


def _suffix(frozen: tuple[tuple[str, str], ...]) -> Predicate:
    def predicate(attrs: Attributes) -> bool:
        for name, value in frozen:
            got = attrs.get(name)
            if not isinstance(got, str) or not got.endswith(value):
                return False
        return True

    return predicate
