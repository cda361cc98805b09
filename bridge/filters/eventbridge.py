"""The `eventbridge` dialect: Alibaba Cloud EventBridge event patterns, compiled once.

`filters: [{eventbridge: {...}}]` in a Trigger, or `pattern = {...}` in a `[[triggers]]` table.
A pattern is a JSON object (a mapping, or a string holding its JSON) with the event's shape:
top-level keys are CloudEvents attributes (`source`, `type`, `subject`, `aliyunregionid`, ...)
and `data`, whose value is an object pattern matched inside the event's JSON data, at any depth.
Every leaf is an array of alternatives (one must hold); the keys of an object must all hold.

Alternatives (Alibaba's "Event patterns" page): an exact value (string, number, true, false,
null), `{"prefix": s}`, `{"suffix": s}`, `{"contains": s}`, `{"anything-but": v}` (a value, a
list of values, `{"prefix": s}` or `{"suffix": s}`), `{"numeric": [op, n (, op, n)]}` (ops `=`,
`<`, `<=`, `>`, `>=`: one bound each side, or `=` alone), `{"cidr": "a.b.c.d/n"}` (IPv4) and
`{"exists": true|false}`.

Where Alibaba's documentation is silent bridge does what AWS EventBridge documents (the README's
"EventBridge rules" lists each choice):
- a field whose value is an array matches when any element matches (AWS "Arrays in event
  patterns"); an array of objects matches an object pattern when one element matches all of it;
- `exists` looks at leaves: an object is not a leaf, so `exists: true` does not match it and
  `exists: false` does; an absent field, `[]` and a missing parent are "not existing";
- `anything-but`, `prefix`, `numeric`, ... need the field present: only `exists: false`
  matches an absent field; `null` and `""` are values, not absence, and differ from each other;
- exact numbers compare as numbers (`5` matches `5.0`); a number never equals a string;
- `numeric` and `cidr` only match numbers and strings holding IPv4 addresses respectively;
  an IPv6 address never matches, and an IPv6 block is refused at load (Alibaba: IPv4 only).

Attributes travel as strings (bridge matches events in their header form), so on an attribute a
number (exact or `numeric`) reads the string as a number and `true`/`false` compare with the
strings "true"/"false": a CloudEvents Integer or Boolean extension matches as it would in JSON.

RabbitMQ binds on the attributes given exactly one exact string (a necessary condition); the
consumer evaluates the whole pattern. A pattern with a `data` key sets `needs_data`: the callers
give it an `EventView`, whose data is parsed at most once and only after the attributes matched.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterator
from typing import Any, Final

from bridge.errors import ConfigError
from bridge.filters.base import HEADER_PREFIX, Attributes, DataKey, Expression
from bridge.filters.view import MISSING, EventView, event_data

Test = Callable[[Any], bool]

OPERATORS: Final = ("prefix", "suffix", "contains", "anything-but", "numeric", "cidr", "exists")
MAX_DEPTH: Final = 32
_LOWER: Final = (">", ">=")
_UPPER: Final = ("<", "<=")
_SCALARS: Final = frozenset((str, int, float, bool, type(None)))
_JSON_NUMBER: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")
_AWS_KEYS: Final = frozenset(("detail", "detail-type", "account", "region", "resources"))


def compile_eventbridge(arg: Any, where: str) -> Expression:
    """`{eventbridge: pattern}`: the pattern as a mapping or as a JSON string."""
    pattern = load_pattern(arg, where)
    attribute_tests: list[tuple[str, Test]] = []
    exacts: dict[str, str] = {}
    pure = True
    data_test: Test | None = None
    for key, sub in pattern.items():
        at = f"{where}.{key}"
        if key == "data":
            data_test = _node(sub, at, 1)
            pure = False
            continue
        if not isinstance(key, str) or not key.isalnum() or key.lower() != key:
            hint = (
                " (AWS's detail and detail-type are CloudEvents' data and type)"
                if key in _AWS_KEYS
                else ""
            )
            raise ConfigError(
                f"{where}: {key!r} is neither data nor a CloudEvents attribute name{hint}."
            )
        if not isinstance(sub, list):
            raise ConfigError(
                f"{at}: an attribute's pattern must be an array of values or conditions, "
                'such as ["acs.oss"] or [{"prefix": "acs."}].'
            )
        test, exact = _leaf(sub, at, attribute=True)
        attribute_tests.append((HEADER_PREFIX + key, test))
        if exact is not None:
            exacts[HEADER_PREFIX + key] = exact
        else:
            pure = False
    keys = frozenset(key for key, _ in attribute_tests)
    return Expression(
        _predicate(tuple(attribute_tests), data_test),
        exacts,
        pure,
        "eventbridge: " + json.dumps(pattern, separators=(",", ":"), ensure_ascii=False),
        keys,
        data_test is not None,
        tuple(data_keys(pattern["data"], ())) if "data" in pattern else (),
    )


def load_pattern(arg: Any, where: str) -> dict[str, Any]:
    """The pattern as a dict: given as a mapping, or as the JSON text EventBridge shows."""
    if isinstance(arg, str):
        try:
            arg = json.loads(arg)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{where}: the pattern is not valid JSON ({exc.msg} at line {exc.lineno}, "
                f"column {exc.colno})."
            ) from None
    if not isinstance(arg, dict):
        raise ConfigError(f"{where}: an event pattern must be a JSON object (a mapping).")
    if not arg:
        raise ConfigError(
            f"{where}: the pattern is empty; name at least one field (leave the filter out to "
            "take every event)."
        )
    return arg


def data_keys(sub: Any, path: tuple[str, ...]) -> Iterator[DataKey]:
    """The leaves of a (compiled, so valid) data pattern that list strings only: the data must
    hold one of those strings at that path for the pattern to match (a leaf with a condition, a
    number or `exists` gives none)."""
    if isinstance(sub, dict):
        for key, value in sub.items():
            yield from data_keys(value, (*path, key))
    elif isinstance(sub, list) and path and all(isinstance(v, str) for v in sub):
        yield path, frozenset(sub)


def reachable_strings(data: Any, path: tuple[str, ...]) -> set[str]:
    """The strings a pattern leaf at `path` would be tested against in `data`: objects are
    entered key by key, arrays (at any depth) element by element, as `_object` and `_leaf_test`
    do."""
    level = [data]
    for key in path:
        below = []
        for value in level:
            if value.__class__ is dict:
                if key in value:
                    below.append(value[key])
            elif isinstance(value, list):
                below.extend(
                    item[key] for item in _flat(value) if isinstance(item, dict) and key in item
                )
        if not below:
            return set()
        level = below
    found: set[str] = set()
    for value in level:
        if value.__class__ is str:
            found.add(value)
        elif isinstance(value, list):
            found.update(item for item in _flat(value) if item.__class__ is str)
    return found


def _predicate(attribute_tests: tuple[tuple[str, Test], ...], data_test: Test | None) -> Any:
    """Attributes first (cheap, from the headers), the data last (parsed only if needed)."""
    if data_test is None:
        if len(attribute_tests) == 1:
            ((key, test),) = attribute_tests
            return lambda attrs: test(attrs.get(key, MISSING))

        def on_attributes(attrs: Attributes) -> bool:
            for key, test in attribute_tests:  # noqa: SIM110 (a loop: faster than all())
                if not test(attrs.get(key, MISSING)):
                    return False
            return True

        return on_attributes

    def on_data(attrs: Attributes) -> bool:
        headers = attrs.headers if attrs.__class__ is EventView else attrs
        for key, test in attribute_tests:
            if not test(headers.get(key, MISSING)):
                return False
        return data_test(event_data(attrs))

    return on_data


# --- object patterns -------------------------------------------------------------------------


def _node(sub: Any, where: str, depth: int) -> Test:
    """A pattern value: an array (a leaf) or an object (fields below)."""
    if depth > MAX_DEPTH:
        raise ConfigError(f"{where}: the pattern nests deeper than {MAX_DEPTH} levels.")
    if isinstance(sub, list):
        return _leaf(sub, where, attribute=False)[0]
    if isinstance(sub, dict):
        return _object(sub, where, depth)
    hint = (
        f' (a condition goes in an array: [{{"{where.rpartition(".")[2]}": ...}}])'
        if where.rpartition(".")[2] in OPERATORS
        else ""
    )
    raise ConfigError(
        f"{where}: must be an array of values or conditions, or an object of fields{hint}."
    )


def _object(pattern: dict[str, Any], where: str, depth: int) -> Test:
    if not pattern:
        raise ConfigError(f"{where}: an empty object matches nothing in particular; remove it.")
    fields = tuple((key, _node(sub, f"{where}.{key}", depth + 1)) for key, sub in pattern.items())
    # A missing or scalar value has none of the fields: only `exists: false` leaves can hold.
    absent = all(test(MISSING) for _, test in fields)

    def match_object(value: dict[str, Any]) -> bool:
        for key, test in fields:  # noqa: SIM110 (a loop: faster than all())
            if not test(value.get(key, MISSING)):
                return False
        return True

    def in_array(value: Any) -> bool:
        if isinstance(value, list):
            objects = [item for item in _flat(value) if isinstance(item, dict)]
            if objects:
                return any(match_object(item) for item in objects)
        return absent

    if len(fields) == 1:  # the common case, a path: one call per level
        ((only_key, only_test),) = fields

        def match_one(value: Any) -> bool:
            if value.__class__ is dict:
                return only_test(value.get(only_key, MISSING))
            return in_array(value)

        return match_one

    def match(value: Any) -> bool:
        if value.__class__ is dict:
            return match_object(value)
        return in_array(value)

    return match


def _flat(values: list[Any]) -> Iterator[Any]:
    """The non-array items of an array and of the arrays inside it, in order, at any depth
    (without recursion: the data may nest arrays as deep as the JSON parser allows)."""
    stack = [iter(values)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            yield value
        else:
            stack.pop()


# --- leaves ----------------------------------------------------------------------------------


def _leaf(alternatives: list[Any], where: str, *, attribute: bool) -> tuple[Test, str | None]:
    """An array of alternatives -> a test of the field's value (or MISSING), and the exact
    string it requires when that is the whole leaf (for RabbitMQ's bindings)."""
    if not alternatives:
        raise ConfigError(f"{where}: an empty array matches nothing; list at least one value.")
    exists_true = exists_false = False
    strings: set[str] = set()
    tests: list[Test] = []
    for index, alternative in enumerate(alternatives):
        at = f"{where}[{index}]"
        if isinstance(alternative, dict):
            name, arg = _condition(alternative, at)
            if name == "exists":
                if not isinstance(arg, bool):
                    raise ConfigError(f"{at}.exists: must be true or false.")
                if arg:
                    exists_true = True
                else:
                    exists_false = True
                continue
            tests.append(_CONDITIONS[name](arg, f"{at}.{name}", attribute))
        elif isinstance(alternative, str):
            strings.add(alternative)
        elif isinstance(alternative, list):
            raise ConfigError(f"{at}: an alternative cannot be an array.")
        else:
            tests.append(_equals(alternative, at, attribute))
    if strings:
        # Tests only ever see scalars (hashable); a set of strings holds no number or bool.
        tests.insert(0, frozenset(strings).__contains__)
    exact = (
        next(iter(strings)) if attribute and len(alternatives) == 1 and len(strings) == 1 else None
    )
    return _leaf_test(tuple(tests), exists_true, exists_false), exact


def _leaf_test(tests: tuple[Test, ...], exists_true: bool, exists_false: bool) -> Test:
    if len(tests) == 1 and not exists_true:
        (single,) = tests

        def one(value: Any) -> bool:
            if value.__class__ in _SCALARS:
                return single(value)
            if value is MISSING or isinstance(value, dict):
                return exists_false
            if isinstance(value, list):
                leaves = [item for item in _flat(value) if not isinstance(item, dict)]
                if not leaves:
                    return exists_false
                return any(single(item) for item in leaves)
            return single(value)

        return one

    def any_of(value: Any) -> bool:
        if value is MISSING or isinstance(value, dict):
            return exists_false
        if isinstance(value, list):
            leaves = [item for item in _flat(value) if not isinstance(item, dict)]
            if not leaves:
                return exists_false
            return exists_true or any(test(item) for item in leaves for test in tests)
        return exists_true or any(test(value) for test in tests)

    return any_of


def _condition(alternative: dict[str, Any], where: str) -> tuple[str, Any]:
    if len(alternative) != 1:
        raise ConfigError(
            f"{where}: a condition is an object with exactly one of {', '.join(OPERATORS)} "
            '(list several conditions as several alternatives: [{"prefix": "a"}, {"suffix": "b"}]).'
        )
    ((name, arg),) = alternative.items()
    if name not in _CONDITIONS and name != "exists":
        raise ConfigError(
            f"{where}: unknown condition {name!r}; use one of {', '.join(OPERATORS)}."
        )
    return name, arg


def _number(value: Any, attribute: bool) -> float | int | None:
    """`value` as a number: JSON numbers; on an attribute (always a string), the string read as
    one. Booleans are not numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if attribute and isinstance(value, str) and _JSON_NUMBER.match(value):
        if value.lstrip("-").isdigit():
            return int(value)
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def _equals(expected: Any, where: str, attribute: bool) -> Test:
    """An exact alternative that is not a string: a number, true, false or null."""
    if isinstance(expected, bool):
        if attribute:
            text = "true" if expected else "false"
            return lambda value: value == text
        return lambda value: value is expected
    if expected is None:
        return lambda value: value is None
    if isinstance(expected, int | float):
        if not math.isfinite(expected):
            raise ConfigError(f"{where}: {expected!r} is not a JSON number.")

        def equal(value: Any) -> bool:
            number = _number(value, attribute)
            return number is not None and number == expected

        return equal
    raise ConfigError(f"{where}: {expected!r} is not a JSON value.")


def _string_arg(arg: Any, where: str) -> str:
    if not isinstance(arg, str):
        raise ConfigError(f"{where}: must be a string.")
    return arg


def _prefix(arg: Any, where: str, attribute: bool) -> Test:
    text = _string_arg(arg, where)
    return lambda value: isinstance(value, str) and value.startswith(text)


def _suffix(arg: Any, where: str, attribute: bool) -> Test:
    text = _string_arg(arg, where)
    return lambda value: isinstance(value, str) and value.endswith(text)


def _contains(arg: Any, where: str, attribute: bool) -> Test:
    text = _string_arg(arg, where)
    return lambda value: isinstance(value, str) and text in value


def _anything_but(arg: Any, where: str, attribute: bool) -> Test:
    """Present and none of the values (or not starting / ending with the string)."""
    if isinstance(arg, dict):
        if len(arg) != 1 or next(iter(arg)) not in ("prefix", "suffix"):
            raise ConfigError(
                f'{where}: must be a value, a list of values, {{"prefix": s}} or {{"suffix": s}}.'
            )
        ((name, text),) = arg.items()
        inner = (_prefix if name == "prefix" else _suffix)(text, f"{where}.{name}", attribute)
        return lambda value: not inner(value)
    values = arg if isinstance(arg, list) else [arg]
    if not values:
        raise ConfigError(f"{where}: the list is empty; name at least one value.")
    tests: list[Test] = []
    strings: set[str] = set()
    for index, value in enumerate(values):
        if isinstance(value, str):
            strings.add(value)
        elif isinstance(value, dict | list):
            raise ConfigError(f"{where}[{index}]: must be a string, a number, true, false or null.")
        else:
            tests.append(_equals(value, f"{where}[{index}]", attribute))
    frozen = frozenset(strings)
    if not tests:
        return lambda value: not (isinstance(value, str) and value in frozen)
    return lambda value: (
        not ((isinstance(value, str) and value in frozen) or any(test(value) for test in tests))
    )


def _numeric(arg: Any, where: str, attribute: bool) -> Test:
    """`[op, n]` or `[lower-op, n, upper-op, m]` (either order): a number within the range."""
    if not isinstance(arg, list) or len(arg) not in (2, 4):
        raise ConfigError(
            f'{where}: must be [operator, number] or two of them, such as [">", 0, "<=", 5].'
        )
    bounds: dict[str, tuple[str, float | int]] = {}
    for index in range(0, len(arg), 2):
        op, number = arg[index], arg[index + 1]
        if op not in ("=", *_LOWER, *_UPPER):
            raise ConfigError(f"{where}[{index}]: {op!r} is not one of =, <, <=, >, >=.")
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ConfigError(f"{where}[{index + 1}]: {number!r} is not a number.")
        if not math.isfinite(number):
            raise ConfigError(f"{where}[{index + 1}]: {number!r} is not a JSON number.")
        side = "=" if op == "=" else ("lower" if op in _LOWER else "upper")
        if side in bounds or ("=" in bounds) or (side == "=" and bounds):
            raise ConfigError(f"{where}: give at most one lower and one upper bound, or = alone.")
        bounds[side] = (op, number)
    if "=" in bounds:
        target = bounds["="][1]

        def equal(value: Any) -> bool:
            number = _number(value, attribute)
            return number is not None and number == target

        return equal
    low_op, low = bounds.get("lower", (">=", -math.inf))
    high_op, high = bounds.get("upper", ("<=", math.inf))
    if low > high or (low == high and (low_op == ">" or high_op == "<")):
        raise ConfigError(f"{where}: the range is empty; no number is inside it.")
    low_inclusive = low_op == ">="
    high_inclusive = high_op == "<="

    def within(value: Any) -> bool:
        number = _number(value, attribute)
        if number is None:
            return False
        if number < low or (number == low and not low_inclusive):
            return False
        return not (number > high or (number == high and not high_inclusive))

    return within


def _cidr(arg: Any, where: str, attribute: bool) -> Test:
    text = _string_arg(arg, where)
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a CIDR block such as 10.0.0.0/24.") from None
    if network.version != 4:
        raise ConfigError(
            f"{where}: {text!r} is an IPv6 block; event patterns match IPv4 blocks only "
            "(as Alibaba EventBridge)."
        )
    base = int(network.network_address)
    mask = int(network.netmask)

    def inside(value: Any) -> bool:
        if not isinstance(value, str):
            return False
        try:
            address = int(ipaddress.IPv4Address(value))
        except ValueError:
            return False  # not an IPv4 address (IPv6 included)
        return address & mask == base

    return inside


_CONDITIONS: Final[dict[str, Callable[[Any, str, bool], Test]]] = {
    "prefix": _prefix,
    "suffix": _suffix,
    "contains": _contains,
    "anything-but": _anything_but,
    "numeric": _numeric,
    "cidr": _cidr,
}
