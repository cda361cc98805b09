"""Settings: the TOML file, `BRIDGE_` environment overrides and Knative Trigger manifests.

Everything here is validated once at start-up (or reload) and frozen; nothing in this module runs
per event. Names mirror Knative's (`retry`, `backoffPolicy`, `backoffDelay`, `deadLetterSink`) so a
Knative user recognises them. Unknown keys are errors, so a typo cannot pass silently.
"""

from __future__ import annotations

import os
import re
import ssl
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from bridge.encodings import formats
from bridge.errors import ConfigError

DEFAULT_CONFIG_FILE = "config.toml"
_NUMBER = re.compile(r"^\s*[0-9]+(\.[0-9]+)?\s*$")
# Kubernetes object names (DNS-1123 labels): bridge derives RabbitMQ names from them.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _duration(value: Any) -> Any:
    """Accept plain seconds (number or numeric string) besides ISO-8601 (`PT0.2S`)."""
    if isinstance(value, bool):
        raise ValueError("a duration must be seconds or ISO-8601 such as PT0.2S")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration must not be negative")
        return timedelta(seconds=value)
    if isinstance(value, str):
        if _NUMBER.match(value):
            return timedelta(seconds=float(value))
        if not value.strip().upper().startswith("P"):
            raise ValueError(f"{value!r} is not a duration: use seconds or ISO-8601 such as PT0.2S")
    return value


def _non_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError("a duration must not be negative")
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration), AfterValidator(_non_negative)]


def _dns_label(kind: str, value: str) -> str:
    if len(value) > 63 or not _DNS_LABEL.match(value):
        raise ValueError(
            f"{kind} {value!r} must be a DNS label (lower-case letters, digits and '-', "
            "at most 63 characters)"
        )
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SignatureSettings(_Strict):
    """EventBridge's signed pushes (bridge.signature): its public key, never fetched by bridge."""

    public_key: str = ""  # PEM file: RSA public key or X.509 certificate (relative: to the file)
    public_keys_dir: str = ""  # folder of <region>.pem files (e.g. cn-hangzhou.pem)
    public_url: str = ""  # the URL EventBridge calls, up to the path (empty: http(s)://Host)
    accept_v1: bool = True  # version 1 (HMAC-SHA1, RSA-encrypted secret) as well as version 2

    @field_validator("public_url")
    @classmethod
    def _absolute(cls, value: str) -> str:
        parts = urlsplit(value)
        if value and (parts.scheme not in ("http", "https") or not parts.netloc):
            raise ValueError(f"{value!r} is not an absolute http(s) URL")
        return value


def _broker_key(value: str, what: str = "broker") -> str:
    """A broker's `namespace/name`, each part a DNS label."""
    namespace, sep, name = value.partition("/")
    if not sep:
        raise ValueError(f"{what} {value!r} must be written namespace/name")
    _dns_label("namespace", namespace)
    _dns_label("broker name", name)
    return value


class BrokerPolicySpec(_Strict):
    """One broker's ingress policy (bridge.policy): how senders authenticate, which may send."""

    broker: Annotated[str, AfterValidator(_broker_key)]  # namespace/name
    auth: Literal["token", "signature", "token+signature", "none"] | None = None
    allowed_sources: list[str] | None = None  # exact, or with * wildcards; unset: any


class IngressSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_event_bytes: int = Field(262144, ge=64)
    auth_token: SecretStr = SecretStr("")
    default_broker: str = "default/eventbridge-default-broker"
    retry_after: int = Field(5, ge=1, description="seconds sent in Retry-After with a 503")
    idle_timeout: Duration = timedelta(seconds=75)
    # A request whose headers and body have not all arrived by then is cut (slow senders).
    request_timeout: Duration = timedelta(seconds=60)
    # Connections served at once; one more is answered 503. 0: derived from the open-file limit.
    max_connections: int = Field(0, ge=0)
    signature: SignatureSettings = SignatureSettings()
    brokers: list[BrokerPolicySpec] = []

    @field_validator("default_broker")
    @classmethod
    def _default_broker_key(cls, value: str) -> str:
        return _broker_key(value, "default_broker")


class AdminSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(9090, ge=0, le=65535)


class RabbitMQSettings(_Strict):
    url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/%2F")
    # A cluster's nodes, instead of `url`: bridge connects to one (`url_order`), and on failure
    # to the next.
    urls: list[SecretStr] = []
    url_order: Literal["random", "listed"] = "random"
    queue_type: Literal["quorum", "classic"] = "quorum"
    # Replicas of each new quorum queue (x-quorum-initial-group-size); 0: RabbitMQ's default.
    quorum_initial_group_size: int = Field(0, ge=0)
    prefetch: int = Field(256, ge=1, le=65535)
    publish_timeout: Duration = timedelta(seconds=5)
    unmatched_max_length: int = Field(10000, ge=1)
    connect_timeout: Duration = timedelta(seconds=10)
    reconnect_max_delay: Duration = timedelta(seconds=30)
    reconnect_probe_interval: Duration = timedelta(seconds=1)
    # amqps:// (relative paths: to the configuration file); empty: the URL's own or the system's.
    tls_ca: str = ""  # PEM file of the CA certificates that verify the brokers
    tls_cert: str = ""  # PEM file: client certificate (chain) for mutual TLS
    tls_key: str = ""  # PEM file of its private key; empty: the key is in tls_cert
    tls_key_password: SecretStr = SecretStr("")

    @field_validator("url")
    @classmethod
    def _amqp_url(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("amqp://", "amqps://")):
            raise ValueError("must be an amqp:// or amqps:// URL")
        return value

    @field_validator("urls")
    @classmethod
    def _amqp_urls(cls, value: list[SecretStr]) -> list[SecretStr]:
        for index, url in enumerate(value):
            if not url.get_secret_value().startswith(("amqp://", "amqps://")):
                raise ValueError(f"urls[{index}] must be an amqp:// or amqps:// URL")
        return value

    @model_validator(mode="after")
    def _one_address(self) -> RabbitMQSettings:
        if self.urls and "url" in self.model_fields_set:
            raise ValueError("set either url (one node) or urls (a cluster's nodes), not both")
        if (self.tls_key or self.tls_key_password.get_secret_value()) and not self.tls_cert:
            raise ValueError("tls_key and tls_key_password need tls_cert")
        return self

    def nodes(self) -> list[str]:
        """The AMQP URLs to connect to: `urls`, else `url`."""
        return [u.get_secret_value() for u in self.urls] or [self.url.get_secret_value()]

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for amqps:// from tls_ca / tls_cert / tls_key; None when unset."""
        if not (self.tls_ca or self.tls_cert):
            return None
        context = ssl.create_default_context(cafile=self.tls_ca or None)
        if self.tls_cert:
            password = self.tls_key_password.get_secret_value()
            context.load_cert_chain(
                self.tls_cert, self.tls_key or None, password=password if password else lambda: b""
            )
        return context


class KReference(_Strict):
    """A Knative `ref`: the addressable object a subscriber or sink names."""

    apiVersion: str = "serving.knative.dev/v1"
    kind: str = "Service"
    name: str
    namespace: str | None = None
    group: str | None = None


class Destination(_Strict):
    """A Knative Destination: `uri`, `ref`, or both (then `uri` is relative to the ref's URL)."""

    uri: str | None = None
    ref: KReference | None = None
    CACerts: str | None = None
    audience: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Destination:
        if not self.uri and self.ref is None:
            raise ValueError("needs a uri or a ref")
        if self.ref is not None and self.uri and urlsplit(self.uri).scheme:
            # Knative's rule: with a ref, the uri is resolved against the ref's URL.
            raise ValueError("with a ref, the uri must be relative (it extends the ref's URL)")
        return self


class DeliverySpec(_Strict):
    """Knative's delivery spec; on a trigger each field is optional and falls back to [delivery]."""

    retry: int | None = Field(None, ge=0)
    backoffPolicy: Literal["exponential", "linear"] | None = None
    backoffDelay: Duration | None = None
    timeout: Duration | None = None
    retryAfterMax: Duration | None = None
    deadLetterSink: Destination | None = None
    format: str | None = None  # a registered delivery format (bridge.encodings)

    @field_validator("format")
    @classmethod
    def _registered_format(cls, value: str | None) -> str | None:
        if value is not None and value not in formats():
            raise ValueError(
                f"{value!r} is not a delivery format; use one of {', '.join(formats())}"
            )
        return value


class BrokerDelivery(DeliverySpec):
    """The broker-wide default delivery spec: every field has a value."""

    retry: int | None = Field(10, ge=0)
    backoffPolicy: Literal["exponential", "linear"] | None = "exponential"
    backoffDelay: Duration | None = timedelta(seconds=0.2)
    timeout: Duration | None = timedelta(seconds=30)
    format: str | None = "binary"


class SubscriberSettings(_Strict):
    """How bridge connects to subscribers and dead-letter sinks: its own TLS identity, one for
    the whole process (trust, Knative's `CACerts`, is per destination)."""

    client_cert: str = ""  # PEM file: the certificate (chain) offered for mutual TLS
    client_key: str = ""  # PEM file of its private key; empty: the key is in client_cert
    client_key_password: SecretStr = SecretStr("")  # when the key is encrypted

    @model_validator(mode="after")
    def _pair(self) -> SubscriberSettings:
        if (self.client_key or self.client_key_password.get_secret_value()) and (
            not self.client_cert
        ):
            raise ValueError("client_key and client_key_password need client_cert")
        return self


class TracingSettings(_Strict):
    enabled: bool = False
    endpoint: str = "http://127.0.0.1:4317"
    protocol: Literal["grpc", "http/protobuf"] = "grpc"
    headers: dict[str, SecretStr] = {}
    service_name: str = "bridge"
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)


class ResolverSettings(_Strict):
    template: str = "http://{name}.{namespace}.svc.cluster.local"
    overrides: dict[str, str] = {}

    @field_validator("template")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        try:
            value.format(name="n", namespace="ns")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"template {value!r} may only use the placeholders {{name}} and {{namespace}}"
            ) from exc
        return value


class LoggingSettings(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"


class LifecycleSettings(_Strict):
    drain_timeout: Duration = timedelta(seconds=25)
    watchdog: bool = True


class FilterSpec(_Strict):
    attributes: dict[str, str] = {}


class TriggerSpec(_Strict):
    """A trigger as written in TOML: a Knative Trigger's metadata.name + spec, flattened."""

    name: str
    namespace: str = "default"
    broker: str = "default"
    filter: FilterSpec | None = None
    filters: list[dict[str, Any]] | None = None
    pattern: dict[str, Any] | str | None = None  # an EventBridge event pattern (bridge.filters)
    transformation: dict[str, Any] | None = None  # a target transformation (bridge.transform)
    subscriber: Destination
    delivery: DeliverySpec | None = None
    ordered: bool = False
    parallelism: int = Field(64, ge=1, le=10000)

    @field_validator("name", "namespace", "broker")
    @classmethod
    def _label(cls, value: str) -> str:
        return _dns_label("name", value)


def _whole_seconds(value: timedelta) -> timedelta:
    if value.total_seconds() != int(value.total_seconds()):
        raise ValueError("must be whole seconds (RabbitMQ keeps a stream's age to the second)")
    return value


class ArchiveSpec(_Strict):
    """The archive of one broker: a RabbitMQ stream that keeps every event the broker accepted.

    `max_age` is ISO-8601 (or seconds; a year counts 365 days, a month 30) and becomes the
    stream's `x-max-age`; `PT0S` means no age limit. `max_bytes` (0: no size limit) becomes
    `x-max-length-bytes`, `segment_bytes` `x-stream-max-segment-size-bytes`: RabbitMQ applies
    both limits by deleting whole segments, so a smaller segment makes retention more exact.
    """

    broker: str  # namespace/name
    enabled: bool = True
    max_age: Annotated[Duration, AfterValidator(_whole_seconds)] = timedelta(days=7)
    max_bytes: int = Field(0, ge=0)
    segment_bytes: int = Field(50_000_000, ge=1_000_000)

    @field_validator("broker")
    @classmethod
    def _archive_broker_key(cls, value: str) -> str:
        return _broker_key(value)


def _one_archive_per_broker(archives: list[ArchiveSpec]) -> list[ArchiveSpec]:
    seen: set[str] = set()
    for index, archive in enumerate(archives):
        if archive.broker in seen:
            raise ValueError(
                f"archives[{index}] is a second archive of the broker {archive.broker} "
                "(a broker has at most one)"
            )
        seen.add(archive.broker)
    return archives


Archives = Annotated[list[ArchiveSpec], AfterValidator(_one_archive_per_broker)]


class Settings(BaseSettings):
    """The whole configuration. Precedence: environment (`BRIDGE_...`) > file > defaults."""

    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    ingress: IngressSettings = IngressSettings()
    admin: AdminSettings = AdminSettings()
    rabbitmq: RabbitMQSettings = RabbitMQSettings()
    delivery: BrokerDelivery = BrokerDelivery()
    subscribers: SubscriberSettings = SubscriberSettings()
    tracing: TracingSettings = TracingSettings()
    resolver: ResolverSettings = ResolverSettings()
    logging: LoggingSettings = LoggingSettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
    triggers_path: str = ""
    triggers: list[TriggerSpec] = []
    archives: Archives = []

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's content arrives as init arguments; the environment overrides it.
        return (env_settings, init_settings)


class LoadedConfig(BaseModel):
    """Settings plus every trigger with the place it was written (for error messages)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    settings: Settings
    source: str
    triggers: list[tuple[TriggerSpec, str]]


def resolve_config_path(cli_path: str | None) -> Path | None:
    """`--config`, else `$BRIDGE_CONFIG`, else `./config.toml`; None means built-in defaults."""
    if cli_path:
        path = Path(cli_path)
        if not path.is_file():
            raise ConfigError(f"{cli_path}: the configuration file does not exist.")
        return path
    env = os.environ.get("BRIDGE_CONFIG")
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConfigError(f"{env} (from BRIDGE_CONFIG): the configuration file does not exist.")
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def describe_validation_error(
    source: str, exc: ValidationError, prefix: str = "", rename: Mapping[str, str] | None = None
) -> str:
    """One readable sentence per problem: the file, the field and what is wrong.

    `rename` maps a top-level field to where it was written (a manifest's `metadata.name`).
    """
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = tuple(p for p in err["loc"] if p not in ("function-after", "function-before"))
        field = _where(loc)
        head = loc[0] if loc else None
        if rename and isinstance(head, str) and head in rename:
            field = rename[head] + field[len(head) :]
        elif prefix:
            field = f"{prefix}.{field}" if field != "(top level)" else prefix
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key (typo?)"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        problems.append(f"{source}: {field}: {message}")
    return "; ".join(problems) + "."


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}.") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}.") from exc


def load_settings(path: Path | None) -> Settings:
    data = _read_toml(path) if path is not None else {}
    source = str(path) if path is not None else "built-in defaults"
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(
            describe_validation_error(f"{source} (or a BRIDGE_ environment variable)", exc)
        ) from exc
    except SettingsError as exc:
        # A BRIDGE_<SECTION> variable holding a whole section or list must be JSON.
        match = re.search(r'field "([^"]+)"', str(exc))
        field = match.group(1) if match else "(unknown)"
        raise ConfigError(
            f"BRIDGE_{field.upper()} (environment): {field}: the value is not valid JSON; "
            f"set one key with BRIDGE_{field.upper()}__<KEY> instead."
        ) from exc


_ANNOTATION_ORDERED = ("bridge.knative.dev/ordered",)
_ANNOTATION_PARALLELISM = (
    "bridge.knative.dev/parallelism",
    "rabbitmq.eventing.knative.dev/parallelism",
)
_ANNOTATION_TRANSFORMATION = "bridge.knative.dev/transformation"
_SPEC_KEYS = {"broker", "filter", "filters", "subscriber", "delivery"}


def _trigger_from_manifest(doc: dict[str, Any], where: str) -> TriggerSpec:
    api = doc.get("apiVersion")
    if api != "eventing.knative.dev/v1":
        raise ConfigError(f"{where}: apiVersion: {api!r} is not eventing.knative.dev/v1.")
    meta = doc.get("metadata")
    spec = doc.get("spec")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise ConfigError(f"{where}: metadata.name: a Trigger needs a name.")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: spec: a Trigger needs a spec mapping.")
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{where}: spec.{unknown[0]}: unknown key (typo?).")
    fields: dict[str, Any] = {k: v for k, v in spec.items() if v is not None}
    fields["name"] = meta["name"]
    fields["namespace"] = meta.get("namespace") or "default"
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise ConfigError(f"{where}: metadata.annotations: must be a mapping.")
    for key in _ANNOTATION_ORDERED:
        if key in annotations:
            value = str(annotations[key]).lower()
            if value not in ("true", "false"):
                raise ConfigError(f"{where}: metadata.annotations.{key}: must be true or false.")
            fields["ordered"] = value == "true"
    rename = {"name": "metadata.name", "namespace": "metadata.namespace"}
    if _ANNOTATION_TRANSFORMATION in annotations:
        text = annotations[_ANNOTATION_TRANSFORMATION]
        try:
            fields["transformation"] = yaml.safe_load(str(text))
        except yaml.YAMLError:
            raise ConfigError(
                f"{where}: metadata.annotations.{_ANNOTATION_TRANSFORMATION}: not JSON or YAML."
            ) from None
        rename["transformation"] = f"metadata.annotations.{_ANNOTATION_TRANSFORMATION}"
    for key in _ANNOTATION_PARALLELISM:
        if key in annotations:
            fields["parallelism"] = annotations[key]
            rename["parallelism"] = f"metadata.annotations.{key}"
    try:
        return TriggerSpec(**fields)
    except ValidationError as exc:
        raise ConfigError(
            describe_validation_error(where, exc, prefix="spec", rename=rename)
        ) from exc


def load_trigger_manifests(path: Path, source: str = "") -> list[tuple[TriggerSpec, str]]:
    """Knative Trigger manifests from a YAML file or every *.yaml/*.yml file of a folder.

    `source` names where `triggers_path` was set, for the error message when it is wrong.
    """
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    elif path.is_file():
        files = [path]
    else:
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}triggers_path: {path} is neither a file nor a folder.")
    found: list[tuple[TriggerSpec, str]] = []
    for file in files:
        try:
            docs = list(yaml.safe_load_all(file.read_text(encoding="utf-8")))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{file}: invalid YAML{at}.") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: cannot be read ({exc}).") from exc
        for index, doc in enumerate(docs, start=1):
            if doc is None:
                continue
            where = f"{file} (document {index})" if len(docs) > 1 else str(file)
            if not isinstance(doc, dict):
                raise ConfigError(f"{where}: a manifest must be a mapping.")
            if doc.get("kind") != "Trigger":
                continue  # Services and other manifests may share the folder
            found.append((_trigger_from_manifest(doc, where), where))
    return found


def check_client_certificate(subscribers: SubscriberSettings, source: str) -> None:
    """ConfigError unless the client certificate and key files load (a wrong path, a key that
    does not match, an encrypted key without its password)."""
    if not subscribers.client_cert:
        return
    for key in ("client_cert", "client_key"):
        file = getattr(subscribers, key)
        if file and not Path(file).is_file():
            raise ConfigError(f"{source}: subscribers.{key}: {file} is not a file.")
    password = subscribers.client_key_password.get_secret_value()
    try:
        ssl.create_default_context().load_cert_chain(
            subscribers.client_cert,
            subscribers.client_key or None,
            # Never OpenSSL's terminal prompt: a daemon has nobody to answer it.
            password=password if password else lambda: b"",
        )
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        raise ConfigError(
            f"{source}: subscribers.client_cert: the certificate and key cannot be loaded "
            f"({reason}; an encrypted key needs client_key_password)."
        ) from None


def check_rabbitmq_tls(rabbitmq: RabbitMQSettings, source: str) -> None:
    """ConfigError unless the RabbitMQ TLS files load."""
    for key in ("tls_ca", "tls_cert", "tls_key"):
        file = getattr(rabbitmq, key)
        if file and not Path(file).is_file():
            raise ConfigError(f"{source}: rabbitmq.{key}: {file} is not a file.")
    try:
        rabbitmq.ssl_context()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        raise ConfigError(
            f"{source}: rabbitmq.tls_cert: the TLS files cannot be loaded ({reason}; an "
            "encrypted key needs tls_key_password)."
        ) from None


def _relative_to(settings: Settings, folder: Path) -> Settings:
    """Relative certificate paths are relative to the configuration file, as triggers_path."""
    rabbitmq = settings.rabbitmq
    tls = {
        key: str(folder / getattr(rabbitmq, key))
        for key in ("tls_ca", "tls_cert", "tls_key")
        if getattr(rabbitmq, key) and not Path(getattr(rabbitmq, key)).is_absolute()
    }
    if tls:
        settings = settings.model_copy(update={"rabbitmq": rabbitmq.model_copy(update=tls)})
    subscribers = settings.subscribers
    update = {}
    for key in ("client_cert", "client_key"):
        file = getattr(subscribers, key)
        if file and not Path(file).is_absolute():
            update[key] = str(folder / file)
    signature = settings.ingress.signature
    keys = {
        key: str(folder / getattr(signature, key))
        for key in ("public_key", "public_keys_dir")
        if getattr(signature, key) and not Path(getattr(signature, key)).is_absolute()
    }
    if keys:
        ingress = settings.ingress.model_copy(
            update={"signature": signature.model_copy(update=keys)}
        )
        settings = settings.model_copy(update={"ingress": ingress})
    if not update:
        return settings
    return settings.model_copy(update={"subscribers": subscribers.model_copy(update=update)})


def load(cli_path: str | None = None) -> LoadedConfig:
    """Load the file, environment overrides and trigger manifests (ConfigError when invalid)."""
    path = resolve_config_path(cli_path)
    settings = load_settings(path)
    source = str(path) if path is not None else "built-in defaults"
    if path is not None:
        settings = _relative_to(settings, path.parent)
    check_client_certificate(settings.subscribers, f"{source} (or a BRIDGE_ environment variable)")
    check_rabbitmq_tls(settings.rabbitmq, f"{source} (or a BRIDGE_ environment variable)")
    triggers: list[tuple[TriggerSpec, str]] = [
        (t, f"{source}: triggers[{i}]") for i, t in enumerate(settings.triggers)
    ]
    if settings.triggers_path:
        manifests = Path(settings.triggers_path)
        if not manifests.is_absolute() and path is not None:
            manifests = path.parent / manifests
        triggers.extend(load_trigger_manifests(manifests, source))
    seen: dict[str, str] = {}
    for spec, where in triggers:
        key = f"{spec.namespace}/{spec.name}"
        if key in seen:
            raise ConfigError(f"{where}: trigger {key} is already defined in {seen[key]}.")
        seen[key] = where
    return LoadedConfig(settings=settings, source=source, triggers=triggers)
