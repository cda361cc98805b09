"""Only the command line imports the command line: no module under bridge/ outside bridge/cli/
imports `bridge.cli` (which would also make an import circle through `bridge.cli`)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bridge"


def non_cli_modules() -> list[Path]:
    """Every module under bridge/ but bridge/cli/ and __main__ (the entry point runs the CLI)."""
    return sorted(
        p
        for p in PACKAGE.rglob("*.py")
        if p.relative_to(PACKAGE).parts[0] != "cli" and p.name != "__main__.py"
    )


def imported_modules(tree: ast.AST, package: str) -> set[str]:
    """Every module an import statement in `tree` names, wherever it stands (in a function,
    under TYPE_CHECKING); relative imports resolved against `package`."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = parts[: len(parts) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("path", non_cli_modules(), ids=lambda p: module_name(p))
def test_no_module_outside_the_cli_imports_the_cli(path: Path) -> None:
    name = module_name(path)
    importlib.import_module(name)  # it imports at all
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    imports = imported_modules(ast.parse(path.read_text(encoding="utf-8"), str(path)), package)
    cli = sorted(m for m in imports if m == "bridge.cli" or m.startswith("bridge.cli."))
    assert not cli, f"{name} imports {', '.join(cli)}"


def test_the_walk_sees_relative_and_nested_imports() -> None:
    source = "def f():\n    from . import cli\n    from .cli.dlq import x\nimport bridge.cli\n"
    found = imported_modules(ast.parse(source), "bridge")
    assert {"bridge.cli", "bridge.cli.dlq"} <= found
