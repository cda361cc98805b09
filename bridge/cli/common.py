"""What every command module shares: exit codes, the argument parser, running a coroutine,
connecting to RabbitMQ, and printing an error as one sentence on stderr."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

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
