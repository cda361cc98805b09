"""The `all`, `any` and `not` dialects: expressions combined. Only `all` keeps the exact checks
of its parts (for RabbitMQ's bindings); `any` and `not` are checked by the consumer."""

from __future__ import annotations

from typing import Any

from bridge.errors import ConfigError
from bridge.filters.base import Expression
from bridge.filters.registry import compile_expr, compile_list


def compile_all(arg: Any, where: str) -> Expression:
    """`all: [expr, ...]`: every expression holds (an empty list: every event)."""
    node = compile_list(arg, where)
    return Expression(
        node.predicate,
        node.exacts,
        node.pure,
        "(" + node.description + ")",
        node.keys,
        node.needs_data,
        node.data_keys,
    )


def compile_any(arg: Any, where: str) -> Expression:
    """`any: [expr, ...]`: at least one expression holds."""
    if not isinstance(arg, list) or not arg:
        raise ConfigError(f"{where}: must be a non-empty list of filter expressions.")
    nodes = [compile_expr(e, f"{where}[{i}]") for i, e in enumerate(arg)]
    preds = tuple(node.predicate for node in nodes)
    return Expression(
        lambda attrs: any(p(attrs) for p in preds),
        {},
        False,
        "(" + " or ".join(node.description for node in nodes) + ")",
        frozenset().union(*(node.keys for node in nodes)),
        any(node.needs_data for node in nodes),
    )


def compile_not(arg: Any, where: str) -> Expression:
    """`not: expr`: the expression does not hold."""
    node = compile_expr(arg, where)
    inner = node.predicate
    return Expression(
        lambda attrs: not inner(attrs),
        {},
        False,
        "not " + node.description,
        node.keys,
        node.needs_data,
    )
