"""Target transformations: what a trigger delivers in place of the event's data, as EventBridge's
console offers them (a rule target's "event transformation").

`transformation = { form = ..., value = ..., template = ... }` on a trigger (`[[triggers]]`), or
the annotation `bridge.knative.dev/transformation` (JSON) on a Knative Trigger manifest:

- `ORIGINAL` (the default, "Complete Event"): the event as it is.
- `JSONPATH` ("Partial Event"): `value` is a JSONPath; the part of the event it selects.
- `CONSTANT`: `value` is delivered as written, whatever the event.
- `TEMPLATE`: `value` maps variable names to JSONPaths (a value not starting with `$` is a
  constant, as in EventBridge), and `template` is text or JSON where `${name}` is replaced by the
  variable's value. A template that is valid JSON (once its placeholders are filled) is a JSON
  template: a placeholder outside quotes becomes the value as JSON (`${size}` -> 225496, a
  string quoted), one inside a string becomes its text, escaped. Any other template is text:
  a string value goes in as is, any other value as its JSON.

JSONPath, a subset, the one EventBridge's examples use: `$` (the whole event), `.name`
(letters, digits, `_` and `-`), `['any name']` and `[index]` (from 0), chained:
`$.data.oss.bucket.name`, `$.data.items[0]['content-type']`. The event is read as in the
CloudEvents JSON format: its attributes by name (`$.source`, `$.datacontenttype`) and `$.data`,
the data parsed as JSON (text data as a string, other binary data as `$.data_base64`).

The delivered body changes; the CloudEvent attributes stay (binary mode: the `ce-*` headers;
`delivery.format = "json"`: the structured envelope around the new data), and the content type
becomes `application/json` for JSON results and `text/plain; charset=utf-8` for text, unless
`contentType` sets it. `keepAttributes = false` sends the body alone, as a plain HTTP POST.

A transformation that fails for an event (its path selects nothing, its data is not JSON) does not
deliver it: the event is dead-lettered at once with the reason, without retries (a retry would
fail the same way).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from bridge.errors import ConfigError
from bridge.events import CONTENT_TYPE_ATTRIBUTE, TTL_ATTRIBUTE, Event, media_type
from bridge.filters.view import MISSING, EventView, parse_data

FORMS: Final = ("ORIGINAL", "JSONPATH", "CONSTANT", "TEMPLATE")
JSON_CONTENT_TYPE: Final = "application/json"
TEXT_CONTENT_TYPE: Final = "text/plain; charset=utf-8"
_KEYS: Final = frozenset(("form", "value", "template", "contentType", "keepAttributes"))
_PLACEHOLDER: Final = re.compile(r"\$\{([^{}]*)\}")
_VARIABLE: Final = re.compile(r"[A-Za-z0-9_.\-]+\Z")
_STEP: Final = re.compile(r"\.([A-Za-z0-9_\-]+)|\['((?:[^'\\]|\\.)*)'\]|\[([0-9]+)\]")
_ESCAPE: Final = re.compile(r"\\(.)")

Format = Callable[[Event], tuple[dict[str, str], bytes]]
Path = tuple[str | int, ...]


class TransformError(Exception):
    """The transformation cannot produce a body for this event (dead-letter it, no retry)."""


@dataclass(frozen=True, slots=True)
class Transformation:
    """A compiled transformation: `apply` turns an event into the event delivered instead."""

    form: str
    description: str
    keep_attributes: bool
    produce: Callable[[Event, EventView | None], tuple[bytes, str]]
    content_type: str | None

    def apply(self, event: Event, view: EventView | None = None) -> Event:
        """The event to deliver: same attributes, the new data (TransformError when it cannot be
        made). `view` lends the data already parsed by a filter, if any."""
        body, content_type = self.produce(event, view)
        return Event(event.attrs, self.content_type or content_type, body)

    def encoder(self, fmt: Format) -> Format:
        """How a transformed event is sent: in the trigger's format, or bare."""
        return fmt if self.keep_attributes else _bare


def _bare(event: Event) -> tuple[dict[str, str], bytes]:
    headers = {"content-type": event.content_type} if event.content_type else {}
    return headers, event.data


def compile_transformation(spec: Mapping[str, Any] | None, where: str) -> Transformation | None:
    """A trigger's `transformation` (None for none or ORIGINAL); ConfigError when invalid."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: must be a mapping with form, value and template.")
    unknown = sorted(set(spec) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (typo?).")
    form = spec.get("form", "ORIGINAL")
    if not isinstance(form, str) or form.upper() not in FORMS:
        raise ConfigError(f"{where}.form: {form!r} is not one of {', '.join(FORMS)}.")
    form = form.upper()
    content_type = spec.get("contentType")
    if content_type is not None and (
        not isinstance(content_type, str) or "/" not in media_type(content_type)
    ):
        raise ConfigError(f"{where}.contentType: {content_type!r} is not a media type.")
    keep = spec.get("keepAttributes", True)
    if not isinstance(keep, bool):
        raise ConfigError(f"{where}.keepAttributes: must be true or false.")
    compiled = _compile(form, spec.get("value"), spec.get("template"), where, keep, content_type)
    if compiled is None:
        return None
    notes = ([f"contentType={content_type}"] if content_type else []) + (
        [] if keep else ["keepAttributes=false"]
    )
    if not notes:
        return compiled
    description = f"{compiled.description} ({', '.join(notes)})"
    return Transformation(form, description, keep, compiled.produce, content_type)


def _compile(
    form: str, value: Any, template: Any, where: str, keep: bool, content_type: str | None
) -> Transformation | None:
    if form != "TEMPLATE" and template is not None:
        raise ConfigError(f"{where}.template: only a TEMPLATE transformation takes a template.")
    if form == "ORIGINAL":
        if value is not None:
            raise ConfigError(f"{where}.value: an ORIGINAL transformation takes no value.")
        if content_type is None and keep:
            return None  # the event as it is: nothing to do
        return Transformation(form, "ORIGINAL", keep, _original, content_type)
    if form == "JSONPATH":
        if not isinstance(value, str):
            raise ConfigError(f"{where}.value: a JSONPATH transformation needs a JSONPath string.")
        path = parse_path(value, f"{where}.value")
        return Transformation(form, f"JSONPATH {value}", keep, _select(path, value), content_type)
    if form == "CONSTANT":
        if not isinstance(value, str):
            raise ConfigError(f"{where}.value: a CONSTANT transformation needs a string value.")
        body = value.encode("utf-8")
        constant = (body, JSON_CONTENT_TYPE if _is_json(value) else TEXT_CONTENT_TYPE)
        return Transformation(
            form,
            f"CONSTANT {_quote(value)}",
            keep,
            lambda event, view: constant,
            content_type,
        )
    return _compile_template(value, template, where, keep, content_type)


# --- JSONPath --------------------------------------------------------------------------------


def parse_path(text: str, where: str) -> Path:
    """`$.a.b[0]['c d']` -> ("a", "b", 0, "c d"); ConfigError for anything else."""
    if not text.startswith("$"):
        raise ConfigError(f"{where}: {text!r} is not a JSONPath (it starts with $).")
    steps: list[str | int] = []
    position = 1
    while position < len(text):
        match = _STEP.match(text, position)
        if match is None:
            raise ConfigError(
                f"{where}: {text!r}: cannot read the JSONPath at character {position + 1} "
                "(bridge reads $, .name, ['name'] and [index])."
            )
        name, quoted, index = match.groups()
        if name is not None:
            steps.append(name)
        elif quoted is not None:
            steps.append(_ESCAPE.sub(r"\1", quoted))
        else:
            steps.append(int(index))
        position = match.end()
    return tuple(steps)


def _root(event: Event, first: str | int, view: EventView | None) -> Any:
    """The top-level member `first` of the event read as CloudEvents JSON."""
    if first == "data":
        data = _data(event, view)
        if data is MISSING:
            raise TransformError(
                "the event's data is not JSON"
                + (f" ({event.content_type})" if event.content_type else "")
            )
        return data
    if first == "data_base64":
        if event.data and _data(event, view) is MISSING:
            return base64.b64encode(event.data).decode("ascii")
        return MISSING
    if not isinstance(first, str):
        return MISSING
    return event.attributes((TTL_ATTRIBUTE, CONTENT_TYPE_ATTRIBUTE)).get(first, MISSING)


def _data(event: Event, view: EventView | None) -> Any:
    """The data as JSON (parsed once: borrowed from the filter's view when there is one); text
    data as a string; MISSING for other binary data."""
    data = view.data if view is not None else parse_data(event.data, event.content_type)
    if data is MISSING and event.data and media_type(event.content_type).startswith("text/"):
        try:
            return event.data.decode("utf-8")
        except UnicodeError:
            return MISSING
    return data


def whole_event(event: Event, view: EventView | None) -> dict[str, Any]:
    """`$`: the event in the CloudEvents JSON format, its data as a JSON value."""
    doc: dict[str, Any] = dict(event.attributes((TTL_ATTRIBUTE, CONTENT_TYPE_ATTRIBUTE)))
    if event.data:
        data = _data(event, view)
        if data is MISSING:
            doc["data_base64"] = base64.b64encode(event.data).decode("ascii")
        else:
            doc["data"] = data
    return doc


def evaluate(path: Path, event: Event, view: EventView | None = None) -> Any:
    """What `path` selects in `event`, or MISSING."""
    if not path:
        return whole_event(event, view)
    value = _root(event, path[0], view)
    for step in path[1:]:
        if value is MISSING:
            return MISSING
        if isinstance(step, int):
            value = value[step] if isinstance(value, list) and step < len(value) else MISSING
        elif isinstance(value, dict):
            value = value.get(step, MISSING)
        else:
            return MISSING
    return value


def _lookup(path: Path, text: str, event: Event, view: EventView | None) -> Any:
    value = evaluate(path, event, view)
    if value is MISSING:
        raise TransformError(f"the JSONPath {text} selects nothing in event {event.id}")
    return value


# --- the forms -------------------------------------------------------------------------------


def _original(event: Event, view: EventView | None) -> tuple[bytes, str]:
    return event.data, event.content_type or JSON_CONTENT_TYPE


def _select(path: Path, text: str) -> Callable[[Event, EventView | None], tuple[bytes, str]]:
    def produce(event: Event, view: EventView | None) -> tuple[bytes, str]:
        value = _lookup(path, text, event, view)
        if isinstance(value, str):
            return value.encode("utf-8"), TEXT_CONTENT_TYPE
        return orjson.dumps(value), JSON_CONTENT_TYPE

    return produce


@dataclass(frozen=True, slots=True)
class _Variable:
    name: str
    path: Path | None  # None: a constant
    text: str
    constant: Any = None


def _compile_template(
    value: Any, template: Any, where: str, keep: bool, content_type: str | None
) -> Transformation:
    if isinstance(value, str):  # the console's form: the variables as a JSON object
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise ConfigError(
                f"{where}.value: a TEMPLATE's value maps variable names to JSONPaths (a mapping, "
                "or its JSON)."
            ) from None
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}.value: a TEMPLATE's value maps variable names to JSONPaths.")
    if not isinstance(template, str) or not template:
        raise ConfigError(f"{where}.template: a TEMPLATE transformation needs a template string.")
    variables: dict[str, _Variable] = {}
    for name, source in value.items():
        if not isinstance(name, str) or not _VARIABLE.match(name):
            raise ConfigError(
                f"{where}.value: {name!r} is not a variable name (letters, digits, _ . -)."
            )
        if isinstance(source, str) and source.startswith("$"):
            path = parse_path(source, f"{where}.value.{name}")
            variables[name] = _Variable(name, path, source)
        else:
            try:
                text = orjson.dumps(source).decode()
            except TypeError:
                raise ConfigError(f"{where}.value.{name}: not a JSON value.") from None
            variables[name] = _Variable(name, None, text, source)
    pieces: list[str] = []
    slots: list[str] = []
    position = 0
    for match in _PLACEHOLDER.finditer(template):
        name = match.group(1)
        if name not in variables:
            raise ConfigError(
                f"{where}.template: ${{{name}}} names no variable of value "
                f"({', '.join(variables) or 'none defined'})."
            )
        pieces.append(template[position : match.start()])
        slots.append(name)
        position = match.end()
    pieces.append(template[position:])
    quoted = _json_template(pieces)
    kind = "JSON" if quoted is not None else "text"
    render = _renderer(pieces, slots, quoted, variables)
    result_type = JSON_CONTENT_TYPE if quoted is not None else TEXT_CONTENT_TYPE
    used = ", ".join(f"{v.name}={v.text}" for v in variables.values())
    description = f"TEMPLATE ({kind}) {_shown(template)}" + (f" with {used}" if used else "")

    def produce(event: Event, view: EventView | None) -> tuple[bytes, str]:
        return render(event, view).encode("utf-8"), result_type

    return Transformation("TEMPLATE", description, keep, produce, content_type)


def _json_template(pieces: list[str]) -> list[bool] | None:
    """For a JSON template: whether each placeholder sits inside a JSON string. None when the
    template (its placeholders filled with JSON values) is not JSON: a text template."""
    inside: list[bool] = []
    in_string = False
    filled: list[str] = []
    for index, piece in enumerate(pieces):
        escaped = False
        for char in piece:
            if escaped:
                escaped = False
            elif char == "\\" and in_string:
                escaped = True
            elif char == '"':
                in_string = not in_string
        filled.append(piece)
        if index < len(pieces) - 1:
            inside.append(in_string)
            filled.append("x" if in_string else "0")
    if not "".join(pieces).strip().startswith(("{", "[")) or not _is_json("".join(filled)):
        return None
    return inside


def _renderer(
    pieces: list[str],
    slots: list[str],
    quoted: list[bool] | None,
    variables: Mapping[str, _Variable],
) -> Callable[[Event, EventView | None], str]:
    def render(event: Event, view: EventView | None) -> str:
        out = [pieces[0]]
        for index, name in enumerate(slots):
            variable = variables[name]
            if variable.path is None:
                value = variable.constant
            else:
                value = _lookup(variable.path, variable.text, event, view)
            if quoted is None:  # text
                out.append(value if isinstance(value, str) else orjson.dumps(value).decode())
            elif quoted[index]:  # inside a JSON string: the text, escaped
                text = value if isinstance(value, str) else orjson.dumps(value).decode()
                out.append(orjson.dumps(text).decode()[1:-1])
            else:  # a JSON value
                out.append(orjson.dumps(value).decode())
            out.append(pieces[index + 1])
        return "".join(out)

    return render


def _is_json(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def _quote(text: str, limit: int = 120) -> str:
    """A string as JSON, shortened: how check-config shows a constant."""
    shown = text if len(text) <= limit else text[: limit - 3] + "..."
    return orjson.dumps(shown).decode()


def _shown(template: str, limit: int = 160) -> str:
    """A template on one line (line breaks as spaces), shortened: as check-config shows it."""
    text = template.replace("\r", "").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
