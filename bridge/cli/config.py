"""`bridge check-config`: load the configuration and print the resolved triggers, the ingress
policies and the archives."""

from __future__ import annotations

import argparse
from typing import Any

from bridge.cli.common import EXIT_OK


def register(sub: Any) -> None:
    check = sub.add_parser("check-config", help="validate the configuration and show triggers")
    check.add_argument("--config")
    check.set_defaults(handler=cmd_check_config)


def cmd_check_config(args: argparse.Namespace) -> int:
    from bridge.archive import archive_streams, describe_configured
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
    for archive in archive_streams(loaded, routes):
        print(describe_configured(archive))
    return EXIT_OK
