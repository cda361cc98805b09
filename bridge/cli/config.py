"""`bridge check-config`: load the configuration and print the resolved triggers, the ingress
policies and the archives."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from bridge.cli.common import EXIT_OK

if TYPE_CHECKING:
    from bridge.config import ArchiveSpec


def register(sub: Any) -> None:
    check = sub.add_parser("check-config", help="validate the configuration and show triggers")
    check.add_argument("--config")
    check.set_defaults(handler=cmd_check_config)


def cmd_check_config(args: argparse.Namespace) -> int:
    from bridge.config import load
    from bridge.triggers import build_routes, describe

    loaded = load(args.config)
    routes = build_routes(loaded)
    print(f"configuration: {loaded.source}")
    subscribers = loaded.settings.subscribers
    if subscribers.client_cert:
        key = subscribers.client_key or "in the same file"
        print(f"client certificate (mutual TLS): {subscribers.client_cert}, key {key}")
    print(describe(routes))
    for broker, policy in sorted(routes.policies.items()):
        print(f"ingress policy {broker}: {policy.describe()}")
    for spec in loaded.settings.archives:
        print(describe_archive(spec))
    return EXIT_OK


def describe_archive(spec: ArchiveSpec) -> str:
    """One line per `[[archives]]` entry: its stream and retention as RabbitMQ will get them."""
    from bridge.amqp.topology import stream_max_age
    from bridge.names import archive_stream

    if not spec.enabled:
        return f"archive {spec.broker}: disabled (an existing stream is kept, not written)"
    seconds = int(spec.max_age.total_seconds())
    age = stream_max_age(seconds) if seconds else "none"
    size = spec.max_bytes or "none"
    return (
        f"archive {spec.broker}: stream {archive_stream(spec.broker)}, "
        f"max_age={age} max_bytes={size} segment_bytes={spec.segment_bytes}"
    )
