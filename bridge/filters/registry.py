"""The `filters` dialect registry: dialect name -> compiler, and the dispatch through it.

A dialect is one function `(argument, where) -> Expression` plus one `register(name, function)`.
`where` is the expression's path ending in the dialect name (`trigger.filters[0].prefix`), the
prefix of every ConfigError the function raises. A refused dialect (`refuse(name, reason)`) is
named with its reason so that it fails at load time with that reason rather than as an unknown
dialect.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridge.errors import ConfigError
from bridge.filters.base import CompiledFilter, Expression, conjunction, product_bindings

Dialect = Callable[[Any, str], Expression]

# Registration order is the order error messages list the dialects in.
_DIALECTS: dict[str, Dialect] = {}
_REFUSED: dict[str, str] = {}


def register(name: str, dialect: Dialect, *, replace: bool = False) -> None:
    """Make `{name: argument}` a `filters` expression compiled by `dialect`."""
    if name in _DIALECTS and not replace:
        raise ValueError(f"filter dialect {name!r} is already registered")
    _DIALECTS[name] = dialect
    _REFUSED.pop(name, None)


def unregister(name: str) -> None:
    _DIALECTS.pop(name, None)


def refuse(name: str, reason: str) -> None:
    """Make `{name: ...}` a configuration error saying `reason` (until someone registers it)."""
    _REFUSED[name] = reason


def dialects() -> tuple[str, ...]:
    return tuple(_DIALECTS)


def compile_expr(expr: Any, where: str) -> Expression:
    """One expression: a mapping with exactly one dialect name, compiled by that dialect."""
    if not isinstance(expr, dict) or len(expr) != 1:
        raise ConfigError(
            f"{where}: a filter expression is a mapping with exactly one of {', '.join(_DIALECTS)}."
        )
    ((name, arg),) = expr.items()
    dialect = _DIALECTS.get(name)
    if dialect is None:
        if name in _REFUSED:
            raise ConfigError(f"{where}.{name}: {_REFUSED[name]}")
        raise ConfigError(
            f"{where}: unknown filter dialect {name!r}; use one of {', '.join(_DIALECTS)}."
        )
    return dialect(arg, f"{where}.{name}")


def compile_list(items: Any, where: str) -> Expression:
    """A list of expressions, all of which must hold (described without parentheses)."""
    if not isinstance(items, list):
        raise ConfigError(f"{where}: must be a list of filter expressions.")
    nodes = [compile_expr(item, f"{where}[{i}]") for i, item in enumerate(items)]
    return conjunction(nodes, " and ".join(node.description for node in nodes))


def compile_filters(filters: list[dict[str, Any]], where: str) -> CompiledFilter:
    """Compile Knative's `filters` (an implicit `all` of dialect expressions)."""
    return compiled(compile_list(filters, f"{where}.filters"))


def compiled(node: Expression) -> CompiledFilter:
    """A trigger's whole filter from its expression: the predicate and RabbitMQ's bindings."""
    bindings, complete = product_bindings([(n, (v,)) for n, v in node.exacts.items()])
    return CompiledFilter(
        node.predicate,
        bindings,
        node.pure and complete,
        node.description or "(all events)",
        node.keys,
        node.needs_data,
        node.data_keys,
    )
