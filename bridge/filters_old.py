"""Trigger filters, compiled once into predicates and into RabbitMQ headers-exchange bindings.

Two dialects, as in Knative:
- `filter.attributes`: every key present and equal; an empty value means present with any value;
  a value with commas lists alternatives (`type: 'a,b'` matches a or b).
- `filters`: a list (all must hold) of `exact`, `prefix`, `suffix`, `all`, `any`, `not`.
  When present it overrides `filter`.

Matching is case-sensitive and works on the attributes' canonical string form. RabbitMQ does the
filtering it can (exact values, alternatives as several bindings); a trigger whose filter it cannot
express fully is bound on a superset and the consumer applies the predicate as well.
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

    def __call__(self, attrs: Attributes) -> bool:
        return self.predicate(attrs)


def _always(_: Attributes) -> bool:
    return True


def _attr_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name or not name.isalnum() or name.lower() != name:
        raise ConfigError(f"{where}: {name!r} is not a CloudEvents attribute name.")
    return name


def compile_attributes(attributes: Mapping[str, str], where: str) -> CompiledFilter:
    """Compile Knative's legacy `filter.attributes`."""
    checks: list[tuple[str, tuple[str, ...] | None]] = []
    for name, value in attributes.items():
        _attr_name(name, f"{where}.filter.attributes")
        key = HEADER_PREFIX + name
        if value == "":
            checks.append((key, None))
        else:
            alternatives = tuple(v for v in (part.strip() for part in value.split(",")) if v)
            if not alternatives:
                raise ConfigError(f"{where}.filter.attributes.{name}: {value!r} lists no value.")
            checks.append((key, alternatives))
    predicate = _attributes_predicate(checks)
    expressible = [(n, alts) for n, alts in checks if alts is not None]
    bindings, complete = _product_bindings(expressible)
    exact = complete and len(expressible) == len(checks)
    desc = ", ".join(
        f"{n[3:]}={'|'.join(a)}" if a is not None else f"{n[3:]} present" for n, a in checks
    )
    keys = frozenset(name for name, _ in checks)
    return CompiledFilter(predicate, bindings, exact, desc or "(all events)", keys)


def _attributes_predicate(checks: list[tuple[str, tuple[str, ...] | None]]) -> Predicate:
    if not checks:
        return _always
    # The common case: one or two exact values, checked with plain dict lookups.
    singles = [(n, a[0]) for n, a in checks if a is not None and len(a) == 1]
    if len(singles) == len(checks):
        if len(singles) == 1:
            (n1, v1) = singles[0]
            return lambda attrs: attrs.get(n1) == v1
        if len(singles) == 2:
            (n1, v1), (n2, v2) = singles
            return lambda attrs: attrs.get(n1) == v1 and attrs.get(n2) == v2
    frozen = tuple((n, frozenset(a) if a is not None else None) for n, a in checks)

    def predicate(attrs: Attributes) -> bool:
        for name, allowed in frozen:
            value = attrs.get(name)
            if value is None or (allowed is not None and value not in allowed):
                return False
        return True

    return predicate


def _product_bindings(
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


# --- the `filters` dialect -------------------------------------------------------------------

_DIALECTS = ("exact", "prefix", "suffix", "all", "any", "not")


def compile_filters(filters: list[dict[str, Any]], where: str) -> CompiledFilter:
    """Compile Knative's `filters` (an implicit `all` of dialect expressions)."""
    predicate, exacts, pure = _compile_all(filters, f"{where}.filters")
    bindings, complete = _product_bindings([(n, (v,)) for n, v in exacts.items()])
    return CompiledFilter(
        predicate,
        bindings,
        pure and complete,
        _describe_list(filters) or "(all events)",
        frozenset(_referenced(filters)),
    )


def _compile_all(items: Any, where: str) -> tuple[Predicate, dict[str, str], bool]:
    """Predicate of a conjunction, the exact checks it implies, and whether those are all of it."""
    if not isinstance(items, list):
        raise ConfigError(f"{where}: must be a list of filter expressions.")
    preds: list[Predicate] = []
    exacts: dict[str, str] = {}
    pure = True
    for i, item in enumerate(items):
        pred, item_exacts, item_pure = _compile_expr(item, f"{where}[{i}]")
        preds.append(pred)
        for name, value in item_exacts.items():
            if exacts.get(name, value) != value:
                pure = (
                    False  # contradictory exact values: nothing matches; let the predicate say so
                )
            exacts[name] = value
        pure = pure and item_pure
    if not preds:
        return _always, exacts, pure
    if len(preds) == 1:
        return preds[0], exacts, pure
    frozen = tuple(preds)
    return (lambda attrs: all(p(attrs) for p in frozen)), exacts, pure


def _compile_expr(expr: Any, where: str) -> tuple[Predicate, dict[str, str], bool]:
    if not isinstance(expr, dict) or len(expr) != 1:
        raise ConfigError(
            f"{where}: a filter expression is a mapping with exactly one of {', '.join(_DIALECTS)}."
        )
    ((dialect, arg),) = expr.items()
    if dialect == "cesql":
        raise ConfigError(f"{where}.cesql: CESQL filters are not supported by bridge.")
    if dialect in ("exact", "prefix", "suffix"):
        if not isinstance(arg, dict) or not arg:
            raise ConfigError(f"{where}.{dialect}: must map attribute names to values.")
        pairs: list[tuple[str, str]] = []
        for name, value in arg.items():
            _attr_name(name, f"{where}.{dialect}")
            if not isinstance(value, str):
                raise ConfigError(f"{where}.{dialect}.{name}: the value must be a string.")
            if dialect != "exact" and value == "":
                raise ConfigError(f"{where}.{dialect}.{name}: the value must not be empty.")
            pairs.append((HEADER_PREFIX + name, value))
        if dialect == "exact":
            return _exact(pairs), dict(pairs), True
        return (_prefix(pairs) if dialect == "prefix" else _suffix(pairs)), {}, False
    if dialect == "all":
        return _compile_all(arg, f"{where}.all")
    if dialect == "any":
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"{where}.any: must be a non-empty list of filter expressions.")
        preds = tuple(_compile_expr(e, f"{where}.any[{i}]")[0] for i, e in enumerate(arg))
        return (lambda attrs: any(p(attrs) for p in preds)), {}, False
    if dialect == "not":
        inner = _compile_expr(arg, f"{where}.not")[0]
        return (lambda attrs: not inner(attrs)), {}, False
    raise ConfigError(
        f"{where}: unknown filter dialect {dialect!r}; use one of {', '.join(_DIALECTS)}."
    )


def _exact(pairs: list[tuple[str, str]]) -> Predicate:
    frozen = tuple(pairs)
    return lambda attrs: all(attrs.get(n) == v for n, v in frozen)


def _prefix(pairs: list[tuple[str, str]]) -> Predicate:
    frozen = tuple(pairs)

    def predicate(attrs: Attributes) -> bool:
        for name, value in frozen:
            got = attrs.get(name)
            if not isinstance(got, str) or not got.startswith(value):
                return False
        return True

    return predicate


def _suffix(pairs: list[tuple[str, str]]) -> Predicate:
    frozen = tuple(pairs)

    def predicate(attrs: Attributes) -> bool:
        for name, value in frozen:
            got = attrs.get(name)
            if not isinstance(got, str) or not got.endswith(value):
                return False
        return True

    return predicate


def _referenced(expr: Any) -> set[str]:
    """Header-form keys named anywhere in a (validated) `filters` expression."""
    found: set[str] = set()
    if isinstance(expr, list):
        for item in expr:
            found |= _referenced(item)
    elif isinstance(expr, dict):
        for dialect, arg in expr.items():
            if dialect in ("exact", "prefix", "suffix"):
                found |= {HEADER_PREFIX + name for name in arg}
            else:
                found |= _referenced(arg)
    return found


def _describe_list(items: list[Any]) -> str:
    return " and ".join(_describe(e) for e in items)


def _describe(expr: Any) -> str:
    ((dialect, arg),) = expr.items()
    if dialect in ("exact", "prefix", "suffix"):
        op = {"exact": "=", "prefix": " starts with ", "suffix": " ends with "}[dialect]
        return " and ".join(f"{n}{op}{v}" for n, v in arg.items())
    if dialect == "all":
        return "(" + _describe_list(arg) + ")"
    if dialect == "any":
        return "(" + " or ".join(_describe(e) for e in arg) + ")"
    return "not " + _describe(arg)


def compile_trigger_filter(
    attributes: Mapping[str, str] | None, filters: list[dict[str, Any]] | None, where: str
) -> CompiledFilter:
    """`filters` overrides `filter` when present (Knative's rule)."""
    if filters:
        return compile_filters(filters, where)
    return compile_attributes(attributes or {}, where)
