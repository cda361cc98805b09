"""Triggers resolved for running: subscriber URLs, effective delivery, compiled filters, routes.

`build_routes` turns the loaded configuration into `Routes`, an immutable snapshot the ingress
and the dispatchers share; a reload builds a new snapshot and swaps it whole.
"""

from __future__ import annotations

import functools
import hashlib
import ssl
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urljoin, urlsplit

from bridge import names
from bridge.config import (
    BrokerDelivery,
    DeliverySpec,
    Destination,
    LoadedConfig,
    ResolverSettings,
)
from bridge.delivery import EffectiveDelivery
from bridge.errors import ConfigError
from bridge.events import CONTENT_TYPE_ATTRIBUTE
from bridge.filters import Attributes, CompiledFilter, EventView, compile_trigger_filter
from bridge.filters.eventbridge import reachable_strings
from bridge.policy import BrokerPolicy, build_policy
from bridge.redact import redact_url
from bridge.signature import Keys, Verifier
from bridge.transform import Transformation, compile_transformation


@dataclass(frozen=True, slots=True)
class Trigger:
    key: str  # namespace/name
    broker_key: str  # namespace/broker
    subscriber: str
    delivery: EffectiveDelivery
    filter: CompiledFilter
    ordered: bool
    parallelism: int
    source: str
    # Knative `CACerts` (PEM) of the subscriber and of the dead-letter sink: trusted for https,
    # in addition to the system trust store.
    subscriber_ca_certs: str | None = None
    sink_ca_certs: str | None = None
    # What is delivered instead of the event (None: the event as it is).
    transformation: Transformation | None = None

    @property
    def namespace(self) -> str:
        return self.key.partition("/")[0]

    @property
    def name(self) -> str:
        return self.key.partition("/")[2]

    @property
    def queue(self) -> str:
        return names.trigger_queue(self.key)

    @property
    def dead_letter_queue(self) -> str:
        return names.dead_letter_queue(self.key)

    @property
    def sink_queue(self) -> str:
        return names.sink_queue(self.key)


@dataclass(frozen=True)
class DataIndex:
    """A broker's content-pattern triggers indexed by a value their pattern requires.

    Each trigger whose pattern has a leaf of strings only (`data.oss.bucket.name: ["a"]`) is
    indexed under one such leaf, the one whose path the most of the broker's triggers share: an
    event can only match it when one of those strings is at that path in its data. The routing
    step evaluates patterns as before until one of them has parsed the data (attributes still
    rule out first, without parsing), then asks the index which of the rest can match: twenty
    patterns told apart by the bucket name cost about two evaluations per event, not twenty."""

    # path -> value -> the triggers (keys) indexed under that path that require the value
    tables: tuple[tuple[tuple[str, ...], dict[str, frozenset[str]]], ...]
    indexed: frozenset[str]

    @classmethod
    def build(cls, triggers: tuple[Trigger, ...]) -> DataIndex | None:
        keyed = [t for t in triggers if t.filter.needs_data and t.filter.data_keys]
        if len(keyed) < 2:
            return None
        shared: dict[tuple[str, ...], int] = {}
        for trigger in keyed:
            for path in {path for path, _ in trigger.filter.data_keys}:
                shared[path] = shared.get(path, 0) + 1
        tables: dict[tuple[str, ...], dict[str, set[str]]] = {}
        for trigger in keyed:
            path, values = max(trigger.filter.data_keys, key=lambda k: shared[k[0]])
            table = tables.setdefault(path, {})
            for value in values:
                table.setdefault(value, set()).add(trigger.key)
        return cls(
            tuple(
                (path, {v: frozenset(keys) for v, keys in table.items()})
                for path, table in tables.items()
            ),
            frozenset(t.key for t in keyed),
        )

    def candidates(self, data: object) -> set[str]:
        """The indexed triggers that can match an event with this (parsed) data."""
        found: set[str] = set()
        for path, table in self.tables:
            for value in reachable_strings(data, path):
                keys = table.get(value)
                if keys is not None:
                    found.update(keys)
        return found


@dataclass(frozen=True)
class Routes:
    """Brokers and their triggers; which HTTP path serves which broker."""

    default_broker: str
    triggers: tuple[Trigger, ...]
    by_broker: dict[str, tuple[Trigger, ...]] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    # Some filter looks at datacontenttype, which travels as the AMQP content type: the
    # ingress then copies it into a `ce-datacontenttype` header for RabbitMQ and the consumers.
    content_type_filtered: bool = False
    # Brokers with a trigger whose filter reads the event's data (an EventBridge pattern).
    data_filtered: frozenset[str] = frozenset()
    # Per broker with several content patterns: which of them an event's data can match.
    data_index: dict[str, DataIndex] = field(default_factory=dict)
    # Per-broker ingress policy ([[ingress.brokers]]); a broker without one: the defaults.
    policies: dict[str, BrokerPolicy] = field(default_factory=dict)

    @property
    def brokers(self) -> list[str]:
        return sorted(self.by_broker)

    def trigger(self, key: str) -> Trigger | None:
        for trigger in self.triggers:
            if trigger.key == key:
                return trigger
        return None

    def broker_for_path(self, path: str) -> str | None:
        return self.paths.get(path)

    def matches_any(
        self,
        broker_key: str,
        attrs: Attributes,
        data: bytes | None = None,
        content_type: str | None = None,
    ) -> bool:
        """Whether a trigger of the broker takes the event. Filters that read the data get one
        view of it, parsed at most once (and only if one of them gets that far)."""
        if broker_key in self.data_filtered:
            view = EventView(attrs, data or b"", content_type)
            for trigger in self.by_broker.get(broker_key, ()):
                if trigger.filter.predicate(view if trigger.filter.needs_data else attrs):
                    return True
            return False
        for trigger in self.by_broker.get(broker_key, ()):
            if trigger.filter.predicate(attrs):
                return True
        return False

    def exchange_for(
        self,
        broker_key: str,
        attrs: dict[str, Any],
        content_type: str | None,
        now: float,
        data: bytes | None = None,
    ) -> tuple[str, bool]:
        """Where an event entering `broker_key` is published, and whether a trigger matches it.

        The one routing step of the ingress, of replies and of anything republished through a
        broker: it stamps the receive time (end-to-end latency) and, when some filter looks at
        datacontenttype, copies the content type into the headers RabbitMQ and the consumers see.
        An event no trigger matches goes to the broker's unmatched exchange (kept, counted).
        """
        attrs[names.RECEIVED] = int(now * 1000)
        if self.content_type_filtered and content_type is not None:
            attrs[CONTENT_TYPE_ATTRIBUTE] = content_type
        if broker_key in self.data_filtered:
            matched = self._mark(broker_key, attrs, data, content_type)
        else:
            matched = self.matches_any(broker_key, attrs)
        if matched:
            return names.broker_exchange(broker_key), True
        return names.unmatched(broker_key), False

    def _mark(
        self, broker_key: str, attrs: dict[str, Any], data: bytes | None, content_type: str | None
    ) -> bool:
        """Evaluate every filter that reads the data, here, once: each one that matches marks
        the event with its trigger's header, which is what its queue is bound on (RabbitMQ cannot
        read the data, and binding on the attributes alone would copy every event into every such
        queue). The data is parsed at most once; the consumer checks again (a reload may have
        changed the filter meanwhile)."""
        view = EventView(attrs, data or b"", content_type)
        index = self.data_index.get(broker_key)
        candidates: set[str] | None = None
        matched = False
        for trigger in self.by_broker.get(broker_key, ()):
            compiled = trigger.filter
            if compiled.needs_data:
                mark = match_header(trigger.key)
                if index is not None and trigger.key in index.indexed:
                    # Once a filter has parsed the data (its attributes matched), the index
                    # says which of the others can match; before that, attributes rule first.
                    if candidates is None and view.parsed:
                        candidates = index.candidates(view.data)
                    if candidates is not None and trigger.key not in candidates:
                        attrs.pop(mark, None)  # the data lacks what its pattern requires
                        continue
                if compiled.predicate(view):
                    attrs[mark] = "1"
                    matched = True
                else:
                    attrs.pop(mark, None)  # a reply carries no mark of its original
            elif not matched and compiled.predicate(attrs):
                matched = True
        return matched


@functools.cache
def match_header(trigger_key: str) -> str:
    """The header that marks an event for a trigger whose filter reads the data (short: AMQP
    header names end at 128 bytes, trigger keys may take 127)."""
    return "bridge-match-" + hashlib.sha256(trigger_key.encode()).hexdigest()[:20]


def _check_url(url: str, where: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: {url!r} is not an absolute http(s) URL.")
    return url


def ca_certs(dest: Destination, where: str) -> str | None:
    """A Destination's `CACerts`, checked to be PEM certificates (None when unset or blank)."""
    pem = dest.CACerts
    if pem is None or not pem.strip():
        return None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        raise ConfigError(f"{where}: CACerts: not PEM certificates ({reason}).") from None
    return pem


def resolve_destination(
    dest: Destination, namespace: str, resolver: ResolverSettings, where: str
) -> str:
    """A Knative Destination as a URL: `uri`, or `ref` via overrides/template (+ relative `uri`)."""
    if dest.ref is None:
        assert dest.uri is not None
        return _check_url(dest.uri, f"{where}.uri")
    ref_ns = dest.ref.namespace or namespace
    key = f"{ref_ns}/{dest.ref.name}"
    if key in resolver.overrides:
        base = resolver.overrides[key]
    else:
        base = resolver.template.format(name=dest.ref.name, namespace=ref_ns)
    base = _check_url(base, f"{where}.ref ({key})")
    if dest.uri:
        return _check_url(urljoin(base.rstrip("/") + "/", dest.uri), f"{where}.uri")
    return base


def effective_delivery(
    spec: DeliverySpec | None, default: BrokerDelivery, sink_url: str | None
) -> EffectiveDelivery:
    """A trigger's delivery spec resolved field by field: the trigger's, else `[delivery]`'s."""

    def pick(name: str) -> object:
        value = getattr(spec, name, None) if spec is not None else None
        return value if value is not None else getattr(default, name)

    retry_after_max = pick("retryAfterMax")
    return EffectiveDelivery(
        retry=int(pick("retry")),  # type: ignore[call-overload]
        backoff_policy=pick("backoffPolicy"),  # type: ignore[arg-type]
        backoff_delay=pick("backoffDelay").total_seconds(),  # type: ignore[attr-defined]
        timeout=pick("timeout").total_seconds(),  # type: ignore[attr-defined]
        retry_after_max=(
            retry_after_max.total_seconds() if retry_after_max is not None else None  # type: ignore[attr-defined]
        ),
        dead_letter_sink=sink_url,
        format=pick("format"),  # type: ignore[arg-type]
    )


def build_routes(loaded: LoadedConfig) -> Routes:
    settings = loaded.settings
    default_broker = settings.ingress.default_broker
    triggers: list[Trigger] = []
    for spec, where in loaded.triggers:
        subscriber = resolve_destination(
            spec.subscriber, spec.namespace, settings.resolver, f"{where}: subscriber"
        )
        sink_dest = (spec.delivery.deadLetterSink if spec.delivery else None) or (
            settings.delivery.deadLetterSink
        )
        sink = (
            resolve_destination(
                sink_dest, spec.namespace, settings.resolver, f"{where}: delivery.deadLetterSink"
            )
            if sink_dest is not None
            else None
        )
        delivery = effective_delivery(spec.delivery, settings.delivery, sink)
        sink_ca_certs = (
            ca_certs(sink_dest, f"{where}: delivery.deadLetterSink") if sink_dest else None
        )
        compiled = compile_trigger_filter(
            spec.filter.attributes if spec.filter else None, spec.filters, where, spec.pattern
        )
        if compiled.needs_data:  # bound on the mark the routing step gives matching events
            key = f"{spec.namespace}/{spec.name}"
            compiled = replace(compiled, bindings=({match_header(key): "1"},), exact=False)
        triggers.append(
            Trigger(
                key=f"{spec.namespace}/{spec.name}",
                broker_key=f"{spec.namespace}/{spec.broker}",
                subscriber=subscriber,
                delivery=delivery,
                filter=compiled,
                ordered=spec.ordered,
                parallelism=1 if spec.ordered else spec.parallelism,
                source=where,
                subscriber_ca_certs=ca_certs(spec.subscriber, f"{where}: subscriber"),
                sink_ca_certs=sink_ca_certs,
                transformation=compile_transformation(
                    spec.transformation, f"{where}: transformation"
                ),
            )
        )
    by_broker: dict[str, list[Trigger]] = {default_broker: []}
    for trigger in triggers:
        by_broker.setdefault(trigger.broker_key, []).append(trigger)
    paths = {"/": default_broker}
    for broker in by_broker:
        paths[f"/{broker}"] = broker
        paths[f"/{broker}/"] = broker
    return Routes(
        default_broker=default_broker,
        triggers=tuple(triggers),
        by_broker={k: tuple(v) for k, v in by_broker.items()},
        paths=paths,
        content_type_filtered=any("ce-datacontenttype" in t.filter.keys for t in triggers),
        data_filtered=frozenset(t.broker_key for t in triggers if t.filter.needs_data),
        data_index={
            broker: index
            for broker, members in by_broker.items()
            if (index := DataIndex.build(tuple(members))) is not None
        },
        policies=build_policies(loaded, set(by_broker)),
    )


def build_policies(loaded: LoadedConfig, brokers: set[str]) -> dict[str, BrokerPolicy]:
    """`[[ingress.brokers]]`: each broker's auth and allowed senders (public keys loaded)."""
    ingress = loaded.settings.ingress
    where = f"{loaded.source} (or a BRIDGE_ environment variable): ingress"
    signature = ingress.signature
    verifier = None
    if signature.public_key or signature.public_keys_dir:
        keys = Keys.load(signature.public_key, signature.public_keys_dir, f"{where}.signature")
        verifier = Verifier(keys, signature.public_url, signature.accept_v1)
    policies: dict[str, BrokerPolicy] = {}
    for index, spec in enumerate(ingress.brokers):
        at = f"{where}.brokers[{index}]"
        if spec.broker in policies:
            raise ConfigError(f"{at}.broker: a second entry for {spec.broker}.")
        if spec.broker not in brokers:
            raise ConfigError(
                f"{at}.broker: {spec.broker} is not a broker bridge serves (no trigger names "
                "it and it is not the default broker)."
            )
        policies[spec.broker] = build_policy(
            spec.broker,
            spec.auth,
            spec.allowed_sources,
            token_set=bool(ingress.auth_token.get_secret_value()),
            verifier=verifier,
            where=at,
        )
    return policies


def _duration(seconds: float) -> str:
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"PT{text}S"


def _trust(pem: str | None) -> str:
    if pem is None:
        return ""
    count = pem.count("-----BEGIN CERTIFICATE-----")
    return f" (CACerts: {count} certificate{'s' if count != 1 else ''} + system trust store)"


def describe(routes: Routes) -> str:
    """The resolved triggers, as `bridge check-config` prints them."""
    lines = [f"brokers: {', '.join(routes.brokers)} (default: {routes.default_broker})"]
    if not routes.triggers:
        lines.append("triggers: none")
    for t in routes.triggers:
        d = t.delivery
        parts = [
            f"retry={d.retry}",
            f"backoffPolicy={d.backoff_policy}",
            f"backoffDelay={_duration(d.backoff_delay)}",
            f"timeout={_duration(d.timeout)}",
            f"format={d.format}",
        ]
        if d.retry_after_max is not None:
            parts.append(f"retryAfterMax={_duration(d.retry_after_max)}")
        if d.dead_letter_sink:
            parts.append(
                f"deadLetterSink={redact_url(d.dead_letter_sink)}{_trust(t.sink_ca_certs)}"
            )
        mode = "ordered" if t.ordered else f"parallelism={t.parallelism}"
        lines += [
            f"trigger {t.key}",
            f"  broker:     {t.broker_key}",
            f"  filter:     {t.filter.description}",
        ]
        if t.transformation is not None:
            lines.append(f"  transform:  {t.transformation.description}")
        lines += [
            f"  subscriber: {redact_url(t.subscriber)}{_trust(t.subscriber_ca_certs)}",
            f"  delivery:   {' '.join(parts)}",
            f"  dispatch:   {mode}",
            f"  defined in: {t.source}",
        ]
    return "\n".join(lines)
