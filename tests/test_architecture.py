"""Dependency direction, checked on the source: the core knows no framework, transport or
configuration model, and the adapters know no use case.

Core: the event model, the filters, the delivery policy and their small helpers; pure, testable
without a broker, a network or pydantic. Adapters: the AMQP and HTTP layers; the use cases
(dispatch, ingress, dead letters) and the composition root (app, cli) sit above them. Only the
command line imports the command line: no module outside bridge/cli/ (but the entry point
__main__) imports `bridge.cli`, which would also make an import circle through it. Every import
statement counts, including ones inside functions and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
import importlib
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
    "ports.py",
    "records.py",
    "encodings.py",
)
CORE_FORBIDDEN = (
    "aiormq",
    "pamqp",
    "httptools",
    "aiohttp",
    "httpx",
    "pydantic",
    "pydantic_settings",
    "opentelemetry",
    "bridge.amqp",
    "bridge.http",
    "bridge.telemetry",
    "bridge.config",
    "bridge.triggers",
    "bridge.app",
    "bridge.cli",
    "bridge.dispatch",
    "bridge.ingress",
    "bridge.deadletters",
    "bridge.archive",
)

# The dispatcher works on the ports (bridge/ports.py) only: no AMQP or HTTP library or adapter.
PORT_USERS = ("dispatch.py",)
PORT_USERS_FORBIDDEN = ("aiormq", "pamqp", "httptools", "aiohttp", "bridge.amqp", "bridge.http")

ADAPTERS = ("amqp/*.py", "http/*.py")
ADAPTER_FORBIDDEN = (
    "bridge.dispatch",
    "bridge.ingress",
    "bridge.deadletters",
    "bridge.archive",
    "bridge.app",
    "bridge.supervisor",
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


def test_the_dispatcher_talks_to_ports_not_adapters() -> None:
    assert violations(PORT_USERS, PORT_USERS_FORBIDDEN) == []


def non_cli_modules() -> list[Path]:
    """Every module under bridge/ but bridge/cli/ and __main__ (the entry point runs the CLI)."""
    return sorted(
        p
        for p in BRIDGE.rglob("*.py")
        if p.relative_to(BRIDGE).parts[0] != "cli" and p.name != "__main__.py"
    )


@pytest.mark.parametrize("path", non_cli_modules(), ids=module_name)
def test_no_module_outside_the_cli_imports_the_cli(path: Path) -> None:
    name = module_name(path)
    importlib.import_module(name)  # it imports at all
    cli = sorted(m for m in imports(path) if violates(m, "bridge.cli"))
    assert not cli, f"{name} imports {', '.join(cli)}"


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
        (
            "def f():\n    from . import cli\n    from .cli.dlq import x\nimport bridge.cli\n",
            "bridge/app.py",
            {"bridge", "bridge.cli", "bridge.cli.dlq", "bridge.cli.dlq.x"},
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
