"""Knative's legacy `filter.attributes`: every key present and equal, compiled with fast paths.

An empty value means present with any value; a value with commas lists alternatives
(`type: 'a,b'` matches a or b), which RabbitMQ evaluates as several bindings.
"""

from __future__ import annotations

from collections.abc import Mapping

from bridge.errors import ConfigError
from bridge.filters.base import (
    HEADER_PREFIX,
    Attributes,
    CompiledFilter,
    Predicate,
    always,
    attr_name,
    product_bindings,
)


def compile_attributes(attributes: Mapping[str, str], where: str) -> CompiledFilter:
    """Compile Knative's legacy `filter.attributes`."""
    checks: list[tuple[str, tuple[str, ...] | None]] = []
    for name, value in attributes.items():
        attr_name(name, f"{where}.filter.attributes")
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
    bindings, complete = product_bindings(expressible)
    exact = complete and len(expressible) == len(checks)
    desc = ", ".join(
        f"{n[3:]}={'|'.join(a)}" if a is not None else f"{n[3:]} present" for n, a in checks
    )
    keys = frozenset(name for name, _ in checks)
    return CompiledFilter(predicate, bindings, exact, desc or "(all events)", keys)


def _attributes_predicate(checks: list[tuple[str, tuple[str, ...] | None]]) -> Predicate:
    if not checks:
        return always
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
