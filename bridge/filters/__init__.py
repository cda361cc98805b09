"""Trigger filters, compiled once into predicates and into RabbitMQ headers-exchange bindings.

Two dialects, as in Knative:
- `filter.attributes` (`attributes.py`): every key present and equal; an empty value means
  present with any value; a value with commas lists alternatives (`type: 'a,b'` matches a or b).
- `filters`: a list (all must hold) of expressions, each a mapping with one dialect name. When
  present it overrides `filter`. Each dialect is a function registered by name in `registry.py`:
  `exact`, `prefix`, `suffix` (`matching.py`), `all`, `any`, `not` (`logical.py`), `cesql`
  (`cesql.py`: CloudEvents SQL v1.0.0, parsed and compiled once, at load time), `eventbridge`
  (`eventbridge.py`: Alibaba EventBridge event patterns, also a trigger's `pattern`). A new
  dialect is one function plus one `register(name, function)`.

A filter that reads the event's data (`needs_data`) is given an `EventView` (`view.py`): the
headers plus the data, parsed on first use, at most once per event.

Matching is case-sensitive and works on the attributes' canonical string form. RabbitMQ does the
filtering it can (exact values, alternatives as several bindings); a trigger whose filter it cannot
express fully is bound on a superset and the consumer applies the predicate as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.errors import ConfigError
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
from bridge.filters.eventbridge import compile_eventbridge
from bridge.filters.logical import compile_all, compile_any, compile_not
from bridge.filters.matching import compile_exact, compile_prefix, compile_suffix
from bridge.filters.registry import compile_filters, compiled, refuse, register, unregister
from bridge.filters.view import MISSING, EventView

__all__ = [
    "HEADER_PREFIX",
    "MAX_BINDINGS",
    "MISSING",
    "Attributes",
    "CompiledFilter",
    "EventView",
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
register("eventbridge", compile_eventbridge)


def compile_trigger_filter(
    attributes: Mapping[str, str] | None,
    filters: list[dict[str, Any]] | None,
    where: str,
    pattern: dict[str, Any] | str | None = None,
) -> CompiledFilter:
    """`filters` overrides `filter` when present (Knative's rule); an EventBridge `pattern`
    stands alone (with `filter` or `filters` as well it is an error: which one wins would be a
    guess)."""
    if pattern is not None:
        if filters or attributes:
            raise ConfigError(
                f"{where}: pattern: a trigger takes an EventBridge pattern or filter/filters, not "
                "both (write the pattern as filters = [{eventbridge = ...}, ...] to combine)."
            )
        return compiled(compile_eventbridge(pattern, f"{where}.pattern"))
    if filters:
        return compile_filters(filters, where)
    return compile_attributes(attributes or {}, where)
