"""Dependency direction, checked on the source: the core knows no framework, transport or
configuration model, and the adapters know no use case.

Core: the event model, the filters, the delivery policy and their small helpers; pure, testable
without a broker, a network or pydantic. Adapters: the AMQP and HTTP layers; the use cases
(dispatch, ingress, dead letters) and the composition root (app, cli) sit above them. Every
import statement counts, including ones inside functions and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BRIDGE = Path(__file__).resolve().parent.parent / "bridge"

CORE = (
    "events.py",
    "filters/*.py",
    "delivery.py",
    "status.py",
    "rawjson.py",
    "names.py",
    "errors.py",
)
CORE_FORBIDDEN = (
    "aiormq",
    "pamqp",
    "httptools",
    "pydantic",
    "pydantic_settings",
    "opentelemetry",
    "bridge.amqp",
    "bridge.http",
    "bridge.config",
    "bridge.app",
    "bridge.cli",
    "bridge.dispatch",
    "bridge.ingress",
)

ADAPTERS = ("amqp/*.py", "http/*.py")
ADAPTER_FORBIDDEN = (
    "bridge.dispatch",
    "bridge.ingress",
    "bridge.deadletters",
    "bridge.app",
    "bridge.cli",
)

# (file relative to bridge/, forbidden module): imports the rules tolerate for now, each with a
# comment giving the reason. Empty: the code follows the rules without exception.
EXCEPTIONS: frozenset[tuple[str, str]] = frozenset()


def module_name(path: Path, root: Path = BRIDGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, root: Path = BRIDGE) -> set[str]:
    """Every module `path` imports, absolute (relative imports resolved; `from a import b`
    counts as both `a` and `a.b`, since b may be a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package.pop()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            found.add(origin)
            found.update(f"{origin}.{alias.name}" for alias in node.names)
    return found


def violates(module: str, forbidden: str) -> bool:
    return module == forbidden or module.startswith(forbidden + ".")


def files(patterns: tuple[str, ...]) -> list[Path]:
    found = sorted({p for pattern in patterns for p in BRIDGE.glob(pattern)})
    assert found, patterns
    return found


def violations(patterns: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    problems = []
    for path in files(patterns):
        rel = path.relative_to(BRIDGE).as_posix()
        for module in sorted(imports(path)):
            for rule in forbidden:
                if violates(module, rule) and (rel, rule) not in EXCEPTIONS:
                    problems.append(f"bridge/{rel} imports {module} (forbidden: {rule})")
    return problems


def test_the_core_imports_no_framework_adapter_or_configuration() -> None:
    assert violations(CORE, CORE_FORBIDDEN) == []


def test_the_adapters_import_no_use_case() -> None:
    assert violations(ADAPTERS, ADAPTER_FORBIDDEN) == []


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("import aiormq.abc", "bridge/events.py", {"aiormq.abc"}),
        (
            "from pydantic import BaseModel",
            "bridge/delivery.py",
            {"pydantic", "pydantic.BaseModel"},
        ),
        ("from . import config", "bridge/delivery.py", {"bridge", "bridge.config"}),
        (
            "from ..http import client",
            "bridge/filters/base.py",
            {"bridge.http", "bridge.http.client"},
        ),
        (
            "from .base import x",
            "bridge/filters/__init__.py",
            {"bridge.filters.base", "bridge.filters.base.x"},
        ),
        (
            "def f():\n    from bridge.cli import main",
            "bridge/names.py",
            {"bridge.cli", "bridge.cli.main"},
        ),
    ],
)
def test_the_import_walk_sees_every_form(
    tmp_path: Path, source: str, module: str, expected: set[str]
) -> None:
    fake = tmp_path / module
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_text(source, encoding="utf-8")
    assert imports(fake, tmp_path / "bridge") == expected


def test_the_rules_catch_a_violation() -> None:
    assert violates("bridge.config", "bridge.config")
    assert violates("bridge.http.client", "bridge.http")
    assert violates("pydantic_settings.sources", "pydantic_settings")
    assert not violates("bridge.configs", "bridge.config")
    assert not violates("pydantic_settings", "pydantic")
