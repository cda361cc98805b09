"""What every filter dialect builds on: the compiled types and the shared compile-time helpers.

A dialect compiles its argument into an `Expression` (predicate, implied exact checks, what it
looks at, how it reads); `compile_filters` turns the whole list into a `CompiledFilter`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import ConfigError

# Events are matched on their AMQP/HTTP header form: attribute `type` is the key `ce-type`.
Attributes = Mapping[str, object]
Predicate = Callable[[Attributes], bool]

MAX_BINDINGS = 64
HEADER_PREFIX = "ce-"


@dataclass(frozen=True, slots=True)
class CompiledFilter:
    """What a trigger's filter turned into: a predicate and the bindings that approximate it."""

    predicate: Predicate = field(compare=False)
    # Each binding is the header arguments of one x-match=all binding (without x-match).
    bindings: tuple[dict[str, str], ...]
    # True when the bindings select exactly the matching events, so consumers need not re-check.
    exact: bool
    description: str
    # Header-form keys of the attributes the filter looks at.
    keys: frozenset[str] = frozenset()
    # The predicate looks into the event's data: give it an `EventView`, not the bare headers.
    needs_data: bool = False
    # Necessary conditions on the data (see `DataKey`): the routing step's index.
    data_keys: tuple[DataKey, ...] = ()

    def __call__(self, attrs: Attributes) -> bool:
        return self.predicate(attrs)


# A necessary condition on the event's data: the strings reachable at a path of object keys
# (through arrays, as patterns match) include one of these values. An EventBridge pattern leaf of
# strings only is one; the routing step indexes triggers by them (bridge.triggers.DataIndex).
DataKey = tuple[tuple[str, ...], frozenset[str]]


@dataclass(frozen=True, slots=True)
class Expression:
    """One compiled `filters` expression, as a dialect returns it."""

    predicate: Predicate
    # Exact header values the expression implies (all must hold for it to match): RabbitMQ binds
    # on them. Empty when the dialect implies none; the consumer re-checks the predicate then.
    exacts: Mapping[str, str]
    # True when `exacts` are the whole expression (the bindings then select exactly its matches).
    pure: bool
    description: str
    # Header-form keys of the attributes the expression looks at.
    keys: frozenset[str]
    # The predicate reads the event's data (`EventView.data`), not only its attributes.
    needs_data: bool = False
    # Necessary conditions on the data (each must hold for the expression to match).
    data_keys: tuple[DataKey, ...] = ()


def always(_: Attributes) -> bool:
    return True


def attr_name(name: Any, where: str) -> str:
    """`name` if it is a CloudEvents attribute name (lower-case alphanumerics), else ConfigError."""
    if not isinstance(name, str) or not name or not name.isalnum() or name.lower() != name:
        raise ConfigError(f"{where}: {name!r} is not a CloudEvents attribute name.")
    return name


def string_pairs(arg: Any, where: str, *, allow_empty: bool) -> list[tuple[str, str]]:
    """A dialect's `{attribute: string}` argument as (header key, value) pairs, validated."""
    if not isinstance(arg, dict) or not arg:
        raise ConfigError(f"{where}: must map attribute names to values.")
    pairs: list[tuple[str, str]] = []
    for name, value in arg.items():
        attr_name(name, where)
        if not isinstance(value, str):
            raise ConfigError(f"{where}.{name}: the value must be a string.")
        if not allow_empty and value == "":
            raise ConfigError(f"{where}.{name}: the value must not be empty.")
        pairs.append((HEADER_PREFIX + name, value))
    return pairs


def describe_pairs(pairs: list[tuple[str, str]], op: str) -> str:
    """`type starts with oss: and subject ends with .jpg` (attribute names without `ce-`)."""
    return " and ".join(f"{key[len(HEADER_PREFIX) :]}{op}{value}" for key, value in pairs)


def conjunction(nodes: list[Expression], description: str) -> Expression:
    """All of `nodes`: one predicate, their exact checks merged (a contradiction makes it impure:
    nothing matches, and the predicate says so)."""
    exacts: dict[str, str] = {}
    pure = True
    needs_data = any(node.needs_data for node in nodes)
    for node in nodes:
        for name, value in node.exacts.items():
            if exacts.get(name, value) != value:
                pure = False
            exacts[name] = value
        pure = pure and node.pure
    keys = frozenset().union(*(node.keys for node in nodes))
    data_keys = tuple(key for node in nodes for key in node.data_keys)  # all must hold
    if not nodes:
        return Expression(always, exacts, pure, description, keys)
    if len(nodes) == 1:
        return Expression(
            nodes[0].predicate, exacts, pure, description, keys, needs_data, data_keys
        )
    frozen = tuple(node.predicate for node in nodes)
    return Expression(
        lambda attrs: all(p(attrs) for p in frozen),
        exacts,
        pure,
        description,
        keys,
        needs_data,
        data_keys,
    )


def product_bindings(
    checks: list[tuple[str, tuple[str, ...]]],
) -> tuple[tuple[dict[str, str], ...], bool]:
    """Bindings for a conjunction of alternatives; drop the widest lists past MAX_BINDINGS."""
    kept = sorted(checks, key=lambda c: len(c[1]))
    complete = True
    while kept:
        count = 1
        for _, alts in kept:
            count *= len(alts)
        if count <= MAX_BINDINGS:
            break
        kept.pop()  # the widest list is checked by the consumer instead
        complete = False
    names = [n for n, _ in kept]
    combos = itertools.product(*(alts for _, alts in kept))
    return tuple(dict(zip(names, combo, strict=True)) for combo in combos), complete
