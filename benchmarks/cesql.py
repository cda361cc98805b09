"""CESQL filters against exact filters, through the filter predicates: `python -m benchmarks.cesql`.

Twenty triggers on one broker, each for one event type of the same source, written three ways:
- exact: `filters: [{exact: {source: acs.oss, type: oss:Bench:T<i>}}]`;
- cesql: `filters: [{cesql: "source = 'acs.oss' AND type = 'oss:Bench:T<i>'"}]` (same meaning);
- cesql-rich: `source LIKE 'acs.%' AND type IN ('oss:Bench:T<i>', 'oss:Bench:U<i>') AND
  INT(knativebrokerttl) > 0` (a LIKE, an IN and a cast to Integer per event).
Events: the reference OSS event in header form, its type cycling through the twenty (and one type
no trigger takes). Two figures per variant, in events per second, best of --runs:
- all 20: every trigger's predicate on every event (the consumers' work if RabbitMQ bound each
  queue to everything; with the exact bindings both dialects get, each consumer sees only its own);
- ingress: `Routes.matches_any`, the ingress's routing step (stops at the first match).
Prints figures; asserts nothing. Compiling happens once, before timing.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.config import LoadedConfig, Settings
from bridge.triggers import Routes, build_routes

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = json.loads((ROOT / "bridge" / "samples" / "oss-put-object.json").read_text())
TRIGGERS = 20
BROKER = "default/eventbridge-default-broker"


def filters_for(variant: str, i: int) -> list[dict[str, Any]]:
    if variant == "exact":
        return [{"exact": {"source": "acs.oss", "type": f"oss:Bench:T{i}"}}]
    if variant == "cesql":
        return [{"cesql": f"source = 'acs.oss' AND type = 'oss:Bench:T{i}'"}]
    return [
        {
            "cesql": f"source LIKE 'acs.%' AND type IN ('oss:Bench:T{i}', 'oss:Bench:U{i}') "
            "AND INT(knativebrokerttl) > 0"
        }
    ]


def routes_for(variant: str) -> Routes:
    triggers = [
        {
            "name": f"bench-{i}",
            "broker": "eventbridge-default-broker",
            "subscriber": {"uri": "http://127.0.0.1:9/"},
            "filters": filters_for(variant, i),
        }
        for i in range(TRIGGERS)
    ]
    settings = Settings(triggers=triggers)
    return build_routes(
        LoadedConfig(
            settings=settings,
            source="bench",
            triggers=[(t, f"bench: triggers[{i}]") for i, t in enumerate(settings.triggers)],
        )
    )


def events() -> list[dict[str, Any]]:
    """Header-form attributes, as the ingress and the consumers hand them to the filters."""
    base = {
        f"ce-{k}": v
        for k, v in SAMPLE.items()
        if k not in ("data", "datacontenttype") and isinstance(v, str)
    }
    base["ce-knativebrokerttl"] = "255"
    types = [f"oss:Bench:T{i}" for i in range(TRIGGERS)] + ["oss:Bench:Nobody"]
    return [{**base, "ce-type": t, "ce-id": f"e{i}"} for i, t in enumerate(types)]


def best_rate(run: Callable[[], int], n_events: int, runs: int) -> tuple[float, int]:
    best = 0.0
    matched = 0
    for _ in range(runs):
        t0 = time.perf_counter()
        matched = run()
        elapsed = time.perf_counter() - t0
        best = max(best, n_events / elapsed)
    return best, matched


def measure(variant: str, rounds: int, runs: int) -> dict[str, Any]:
    routes = routes_for(variant)
    predicates = tuple(t.filter.predicate for t in routes.triggers)
    batch = events()
    stream = batch * rounds

    def all_predicates() -> int:
        matched = 0
        for attrs in stream:
            for predicate in predicates:
                if predicate(attrs):
                    matched += 1
        return matched

    def ingress() -> int:
        matches_any = routes.matches_any
        return sum(1 for attrs in stream if matches_any(BROKER, attrs))

    every, matched = best_rate(all_predicates, len(stream), runs)
    routed, _ = best_rate(ingress, len(stream), runs)
    return {
        "variant": variant,
        "all": every,
        "ingress": routed,
        "matched": matched,
        "events": len(stream),
        "bound": sum(len(b) for t in routes.triggers for b in t.filter.bindings),
        "example": routes.triggers[0].filter.description,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5000, help="passes over the 21 events")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per figure (best kept)")
    args = parser.parse_args(argv)
    results = [measure(v, args.rounds, args.runs) for v in ("exact", "cesql", "cesql-rich")]
    base = results[0]
    print(f"{TRIGGERS} triggers, {base['events']:,} events per run, best of {args.runs} runs")
    print(f"{'variant':12} {'all 20/s':>12} {'vs exact':>9} {'ingress/s':>12} {'vs exact':>9}")
    for r in results:
        print(
            f"{r['variant']:12} {r['all']:>12,.0f} {r['all'] / base['all']:>8.2f}x "
            f"{r['ingress']:>12,.0f} {r['ingress'] / base['ingress']:>8.2f}x"
        )
    for r in results:
        print(
            f"{r['variant']}: {r['matched']:,} matches, {r['bound']} exact binding headers; "
            f"trigger 0 filter: {r['example']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
