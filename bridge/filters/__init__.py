"""Trigger filters, compiled once into predicates and into RabbitMQ headers-exchange bindings.

Two dialects, as in Knative:
- `filter.attributes` (`attributes.py`): every key present and equal; an empty value means
  present with any value; a value with commas lists alternatives (`type: 'a,b'` matches a or b).
- `filters`: a list (all must hold) of expressions, each a mapping with one dialect name. When
  present it overrides `filter`. Each dialect is a function registered by name in `registry.py`:
  `exact`, `prefix`, `suffix` (`matching.py`), `all`, `any`, `not` (`logical.py`), `cesql`
  (`cesql.py`: CloudEvents SQL v1.0.0, parsed and compiled once, at load time). A new dialect is
  one function plus one `register(name, function)`.

Matching is case-sensitive and works on the attributes' canonical string form. RabbitMQ does the
filtering it can (exact values, alternatives as several bindings); a trigger whose filter it cannot
express fully is bound on a superset and the consumer applies the predicate as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.filters.attributes import compile_attributes
from bridge.filters.base import (
    HEADER_PREFIX,
    MAX_BINDINGS,
    Attributes,
    CompiledFilter,
    Expression,
    Predicate,
    describe_pairs,
    string_pairs,
)
from bridge.filters.cesql import compile_cesql
from bridge.filters.logical import compile_all, compile_any, compile_not
from bridge.filters.matching import compile_exact, compile_prefix, compile_suffix
from bridge.filters.registry import compile_filters, refuse, register, unregister

__all__ = [
    "HEADER_PREFIX",
    "MAX_BINDINGS",
    "Attributes",
    "CompiledFilter",
    "Expression",
    "Predicate",
    "compile_attributes",
    "compile_filters",
    "compile_trigger_filter",
    "describe_pairs",
    "refuse",
    "register",
    "string_pairs",
    "unregister",
]

register("exact", compile_exact)
register("prefix", compile_prefix)
register("suffix", compile_suffix)
register("all", compile_all)
register("any", compile_any)
register("not", compile_not)
register("cesql", compile_cesql)


def compile_trigger_filter(
    attributes: Mapping[str, str] | None, filters: list[dict[str, Any]] | None, where: str
) -> CompiledFilter:
    """`filters` overrides `filter` when present (Knative's rule)."""
    if filters:
        return compile_filters(filters, where)
    return compile_attributes(attributes or {}, where)
