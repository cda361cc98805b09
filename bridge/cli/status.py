"""`bridge status [--watch] [--json]`: triggers and brokers at a glance, like
`kubectl get triggers` with the numbers an operator looks at next. Exit code 0 when every
trigger is ready, 1 otherwise (for scripts and probes).

The operation itself is `bridge.status_report.StatusReader`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from bridge.cli.common import EXIT_FAILURE, EXIT_OK, on_broker
from bridge.status_report import StatusReader, StatusReport

if TYPE_CHECKING:
    from bridge.amqp.session import Session

CLEAR = "\x1b[H\x1b[2J"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="triggers and brokers at a glance; exit 0 when every trigger is ready",
    )
    p.add_argument("--config")
    p.add_argument("--watch", action="store_true", help="refresh every --interval seconds")
    p.add_argument(
        "--interval",
        type=float,
        default=2.0,
        help="seconds between refreshes, and over which rates are measured (default 2)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object (a line per refresh)")
    p.add_argument(
        "--metrics",
        action="append",
        metavar="URL",
        help="a replica's admin listener, e.g. http://10.0.0.5:9090 (repeat for each replica; "
        "default: [admin] of the configuration)",
    )
    p.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    interval = max(0.2, float(args.interval))
    last: list[StatusReport] = []

    async def work(session: Session) -> StatusReport:
        reader = StatusReader(session.connection, session.loaded, args.metrics)
        stop = asyncio.Event()
        if args.watch:
            # Ctrl-C or SIGTERM ends the watch after the refresh in progress, cleanly.
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        while True:
            report = await reader.report(window=min(interval, 1.0))
            last[:] = [report]
            emit(report, as_json=args.json, clear=args.watch and sys.stdout.isatty())
            if not args.watch or stop.is_set():
                return report
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if stop.is_set():
                return report

    try:
        report = on_broker(args.config, work)
    except KeyboardInterrupt:
        if not last:
            raise
        report = last[0]
    return EXIT_OK if report.ready else EXIT_FAILURE


def emit(report: StatusReport, as_json: bool, clear: bool = False) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(report.as_dict()).decode("utf-8") + "\n")
    else:
        sys.stdout.write((CLEAR if clear else "") + "\n".join(render(report)) + "\n")
    sys.stdout.flush()


def _n(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _size(count: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        for row in [head, *rows]
    ]


def render(report: StatusReport) -> list[str]:
    lines: list[str] = []
    rows = []
    for t in report.triggers:
        rows.append(
            (
                t.trigger,
                t.broker,
                "True" if t.ready else "False",
                _n(t.consumers),
                _n(t.depth),
                f"{t.retrying}{'*' if t.retrying_shared else ''}",
                _n(t.dead_letters),
                _n(t.delivery_rate),
                _n(t.error_rate),
                t.last_error or "-",
                t.subscriber,
            )
        )
    lines += table(
        (
            "TRIGGER",
            "BROKER",
            "READY",
            "CONSUMERS",
            "QUEUED",
            "RETRYING",
            "DEAD-LETTERS",
            "DELIVERED/S",
            "ERRORS/S",
            "LAST ERROR",
            "SUBSCRIBER_URI",
        ),
        rows,
    )
    if not report.triggers:
        lines.append("(no trigger is configured)")
    for t in report.triggers:
        if not t.ready:
            lines.append(f"{t.trigger} is not ready: {t.reason}.")
    lines.append("")
    broker_rows = []
    for b in report.brokers:
        archive = "-"
        if b.archive_events is not None:
            archive = f"{b.archive_events} events, ~{_size(b.archive_bytes or 0)}"
        broker_rows.append((b.broker, _n(b.accepted_rate), _n(b.unmatched), archive))
    lines += table(("BROKER", "ACCEPTED/S", "UNMATCHED", "ARCHIVE"), broker_rows)
    lines.append("")
    if report.retrying_shared:
        lines.append(
            f"* {report.retrying_shared} more event(s) wait in delay queues several triggers "
            f"share ({', '.join(report.shared_delay_queues)})."
        )
    for r in report.replicas:
        state = "ready" if r.ready else ("not ready" if r.reachable else "unreachable")
        lines.append(f"replica {r.url}: {state}{': ' + r.reason if r.reason else ''}")
    if report.window is not None:
        lines.append(f"rates over the last {report.window:.1f} s, summed over the replicas.")
    lines += report.notes
    return lines
