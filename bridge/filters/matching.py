"""The `exact`, `prefix` and `suffix` dialects: attribute values compared as strings.

`exact` is the only dialect RabbitMQ can evaluate (its values become binding headers); `prefix`
and `suffix` are bound on a superset and checked by the consumer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridge.filters.base import Attributes, Expression, describe_pairs, string_pairs


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
    return _string_test(arg, where, str.startswith, " starts with ")


def compile_suffix(arg: Any, where: str) -> Expression:
    """`suffix: {attr: value}`: every attribute a string ending with its (non-empty) value."""
    return _string_test(arg, where, str.endswith, " ends with ")


def _string_test(
    arg: Any, where: str, test: Callable[[str, str], bool], described: str
) -> Expression:
    """Every attribute a string for which `test(value, expected)` holds; checked by consumers."""
    pairs = string_pairs(arg, where, allow_empty=False)
    frozen = tuple(pairs)

    def predicate(attrs: Attributes) -> bool:
        for name, value in frozen:
            got = attrs.get(name)
            if not isinstance(got, str) or not test(got, value):
                return False
        return True

    return Expression(
        predicate, {}, False, describe_pairs(pairs, described), frozenset(k for k, _ in pairs)
    )
