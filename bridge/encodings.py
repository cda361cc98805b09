"""Delivery formats: how an event becomes an HTTP request body and headers, a registry by name.

A format is one function `(event) -> (headers, body)` plus one `register_format(name, function)`;
a trigger chooses it with `delivery.format` (the configuration accepts any registered name).
Built in, as the CloudEvents HTTP binding defines them:
- `binary` (default): attributes as percent-encoded `ce-*` headers, the data as the body,
  `content-type` = datacontenttype;
- `json`: structured mode, the whole event as `application/cloudevents+json`.
The broker's own `knativebrokerttl` is never sent (as Knative does).
"""

from __future__ import annotations

from collections.abc import Callable

from bridge.events import Event, binary_headers, structured_json

Format = Callable[[Event], tuple[dict[str, str], bytes]]

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"

_FORMATS: dict[str, Format] = {}


def register_format(name: str, function: Format, *, replace: bool = False) -> None:
    """Make `delivery.format = name` deliver with `function`."""
    if name in _FORMATS and not replace:
        raise ValueError(f"delivery format {name!r} is already registered")
    _FORMATS[name] = function


def unregister_format(name: str) -> None:
    _FORMATS.pop(name, None)


def formats() -> tuple[str, ...]:
    return tuple(_FORMATS)


def encoder(name: str) -> Format:
    """The format registered as `name` (KeyError for an unknown one: configuration checks first)."""
    return _FORMATS[name]


def binary(event: Event) -> tuple[dict[str, str], bytes]:
    return binary_headers(event), event.data


def structured(event: Event) -> tuple[dict[str, str], bytes]:
    return {"content-type": STRUCTURED_CONTENT_TYPE}, structured_json(event)


register_format("binary", binary)
register_format("json", structured)
