"""What every command module shares: exit codes, the argument parser, running a coroutine,
connecting to RabbitMQ, and printing an error as one sentence on stderr."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import orjson

if TYPE_CHECKING:
    from bridge.amqp.session import Session

T = TypeVar("T")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class Parser(argparse.ArgumentParser):
    """Usage errors: the usage line, then `bridge: <message>.`, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"bridge: {message}.\n")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on a new event loop (uvloop when there is one)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)


def on_broker(config_path: str | None, work: Callable[[Session], Awaitable[T]]) -> T:
    """Run `work(session)` with a connection to the configured RabbitMQ (`open_session`)."""
    from bridge.amqp.session import open_session

    async def session_work() -> T:
        async with open_session(config_path) as session:
            return await work(session)

    return run_async(session_work())


def fail(message: str, code: int) -> int:
    """Print `bridge: <message>` on stderr; returns `code` (the exit code)."""
    print(f"bridge: {message}", file=sys.stderr)
    return code


def print_rows(
    dicts: list[dict[str, Any]],
    columns: tuple[str, ...],
    cells: list[tuple[str, ...]],
    as_json: bool,
    empty: str,
) -> int:
    """A listing: one JSON object a line with `as_json` (nothing when empty), else a table of
    `columns` and `cells`, or the sentence `empty` when there is nothing. Exit code 0."""
    if as_json:
        for row in dicts:
            sys.stdout.write(orjson.dumps(row).decode("utf-8") + "\n")
        return EXIT_OK
    if not cells:
        print(empty)
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row_cells in cells:
        table.add_row(*row_cells)
    Console(width=200).print(table)
    return EXIT_OK
