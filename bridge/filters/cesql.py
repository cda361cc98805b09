"""The `cesql` dialect: CloudEvents SQL Expression Language v1.0.0 (cloudevents/spec,
`cesql/spec.md`), as Knative's `filters: [{cesql: "..."}]` uses it.

Parsed once, when the configuration loads (lark, LALR, the grammar below), then compiled into
closures: no per-event parsing, every cast decided at load time from the static types.

Typing. bridge sees an event in its header form (`ce-<attribute>` -> canonical string), as
Knative sees an event received in binary mode, so every attribute and extension is a _String_
(CESQL section 3.2); Integer and Boolean comparisons go through the spec's implicit casts
(`sequence = 5` casts `sequence` to Integer, `flag = true` casts `flag` to Boolean). Attribute
names are case-insensitive (`TYPE` is `type`); `datacontenttype` is the event's content type.

Grammar and precedence, as the spec's ANTLR grammar (CESQLParser.g4) reads: function calls,
then the prefix `NOT` and `-` (they bind tightest: `NOT a = b` is `(NOT a) = b`), then `LIKE`,
`EXISTS`, `IN`, `* / %`, `+ -`, the comparisons (left-associative), and last `AND`, `OR`, `XOR`,
which share one level and associate to the right (`a AND b OR c` is `a AND (b OR c)`). An
integer literal may carry a sign (`-5`); `5-3` is a subtraction (the EBNF's reading).

Errors (section 3.3): MissingAttributeError, MathError, CastError, FunctionEvaluationError,
MissingFunctionError, ParseError. Evaluation is fail-fast (section 4.1, what the spec
recommends for filters): the first error stops it, and the result is the zero value of the
expression's type plus that error; a filter whose evaluation errs, or whose value is not
Boolean, does not match (section 1.2; Knative does the same).

Where the spec is silent, bridge chooses (the README lists these too):
- integer overflow in `+ - * /`, unary `-`: a MathError (like `ABS(-2147483648)`), never a
  wrap-around; an integer literal outside 32 bits is a ParseError;
- a string literal's backslash escapes only its own quote (`'it\\'s'`); any other backslash
  stays as written, so a LIKE pattern sees `\\%` and `\\_` (escaped wildcards); elsewhere in a
  pattern a backslash is an ordinary character;
- `IN` compares left to right and stops at the first equal element (as the Go SDK Knative uses);
- the casting functions `INT`, `BOOL`, `STRING`, `IS_INT`, `IS_BOOL` (the spec's examples and
  TCK use them) are built in;
- `TRIM` removes Unicode White_Space only; `LENGTH`, `LEFT`, `_` count characters (code points);
- at load time bridge refuses what could never evaluate without an error or never be Boolean:
  an unknown function or arity (MissingFunctionError at run time in the spec) and an expression
  whose type is not Boolean; also nesting deeper than MAX_DEPTH. As in Knative, `cesql: ""`
  is no filter (every event); blank but not empty is a syntax error.

RabbitMQ: the top-level `AND`-ed `attribute = 'literal'` equalities become exact bindings (a
necessary condition: such an equality compares strings, case-sensitively, without cast); the
consumer always evaluates the whole expression.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, Final

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from bridge.errors import ConfigError
from bridge.filters.base import HEADER_PREFIX, Attributes, Expression, Predicate, always

# --- types, values and errors ----------------------------------------------------------------

BOOLEAN: Final = "Boolean"
INTEGER: Final = "Integer"
STRING: Final = "String"
ZERO: Final[Mapping[str, bool | int | str]] = {BOOLEAN: False, INTEGER: 0, STRING: ""}
INT_MIN: Final = -(2**31)
INT_MAX: Final = 2**31 - 1
# Nesting deeper than this is refused at load time (evaluation recurses once per level).
MAX_DEPTH: Final = 100

Value = bool | int | str
Evaluator = Callable[[Attributes], Any]


class CesqlError(Exception):
    """An error of the CESQL error model; `kind` is the spec's name for it (GenericError)."""

    kind = "GenericError"


class ParseError(CesqlError):
    """The expression cannot be compiled: a syntax error or one found at load time."""

    kind = "ParseError"

    def __init__(self, reason: str, line: int, column: int) -> None:
        super().__init__(f"{reason} at line {line}, column {column}")
        self.reason = reason
        self.line = line
        self.column = column


class MissingAttributeError(CesqlError):
    kind = "MissingAttributeError"


class MathError(CesqlError):
    kind = "MathError"


class CastError(CesqlError):
    kind = "CastError"


class MissingFunctionError(CesqlError):
    kind = "MissingFunctionError"


class FunctionEvaluationError(CesqlError):
    kind = "FunctionEvaluationError"


# --- the grammar -----------------------------------------------------------------------------

# A flat operator sequence: `_Builder` applies the precedences (as ANTLR's left-recursion
# rewrite of the spec grammar does), which keeps this LALR table free of conflicts. Keywords are
# case-insensitive and win over names; the contextual lexer reads `-5` as a literal where an
# operand starts and `-` as the operator after one.
_GRAMMAR: Final = r"""
start: expr
expr: operand tail*
tail: binop operand                             -> binary
    | NOT? LIKE STRING                          -> like
    | NOT? IN "(" expr ("," expr)* ")"          -> inset
binop: STAR | SLASH | PERCENT | PLUS | MINUS
     | EQ | NE | LTGT | LE | GE | LT | GT
     | AND | OR | XOR
operand: prefix* primary
prefix: NOT | MINUS
primary: INT                                    -> integer
       | SIGNED_INT                             -> integer
       | STRING                                 -> string
       | TRUE                                   -> boolean
       | FALSE                                  -> boolean
       | NAME                                   -> ident
       | NAME "(" [expr ("," expr)*] ")"        -> call
       | EXISTS NAME                            -> exists
       | "(" expr ")"                           -> group

NOT.2: /not(?![a-z0-9_])/i
AND.2: /and(?![a-z0-9_])/i
OR.2: /or(?![a-z0-9_])/i
XOR.2: /xor(?![a-z0-9_])/i
LIKE.2: /like(?![a-z0-9_])/i
IN.2: /in(?![a-z0-9_])/i
EXISTS.2: /exists(?![a-z0-9_])/i
TRUE.2: /true(?![a-z0-9_])/i
FALSE.2: /false(?![a-z0-9_])/i
NAME: /[a-z0-9_]*[a-z_][a-z0-9_]*/i
INT: /[0-9]+/
SIGNED_INT: /[+-][0-9]+/
STRING: /'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"/s
STAR: "*"
SLASH: "/"
PERCENT: "%"
PLUS: "+"
MINUS: "-"
EQ: "="
NE: "!="
LTGT: "<>"
LE: "<="
GE: ">="
LT: "<"
GT: ">"
%ignore /[ \t\r\n]+/
"""

KEYWORDS: Final = frozenset(("not", "and", "or", "xor", "like", "in", "exists", "true", "false"))
_IDENTIFIER = re.compile(r"[a-z0-9]+\Z")
_FUNCTION_NAME = re.compile(r"[A-Z][A-Z_]*\Z")
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_STRING_TOKEN = re.compile(r"""'(?:[^'\\]|\\.)*'\Z|"(?:[^"\\]|\\.)*"\Z""", re.DOTALL)
_DIGITS = re.compile(r"[+-]?[0-9]+\Z")
# Unicode's White_Space property: what TRIM removes (str.strip() would take more).
_WHITESPACE: Final = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

# Binary operators: precedence (higher binds tighter) as the spec grammar orders them.
_PRECEDENCE: Final[Mapping[str, int]] = {
    "*": 6,
    "/": 6,
    "%": 6,
    "+": 5,
    "-": 5,
    "=": 4,
    "!=": 4,
    "<>": 4,
    "<": 4,
    "<=": 4,
    ">": 4,
    ">=": 4,
    "AND": 3,
    "OR": 3,
    "XOR": 3,
}
_LIKE_PRECEDENCE: Final = 9
_IN_PRECEDENCE: Final = 7
_LOGIC_PRECEDENCE: Final = 3

_TERMINALS: Final[Mapping[str, str]] = {
    "STRING": "a string literal",
    "NAME": "a name",
    "INT": "a number",
    "SIGNED_INT": "a number",
    "LPAR": "'('",
    "RPAR": "')'",
    "COMMA": "','",
}
# Terminals only an operand starts with (NOT, MINUS and "(" also follow one).
_OPERAND_START: Final = frozenset(("INT", "SIGNED_INT", "STRING", "TRUE", "FALSE", "EXISTS"))
_SYMBOLS: Final = ("STAR", "SLASH", "PERCENT", "PLUS", "MINUS", "EQ", "NE", "LTGT", "LE", "GE")
_OPERATORS: Final = frozenset((*_SYMBOLS, "LT", "GT", "AND", "OR", "XOR", "LIKE", "IN"))


@cache
def _parser() -> Lark:
    return Lark(_GRAMMAR, parser="lalr", lexer="contextual", propagate_positions=True)


# --- casts and helpers (run per event) -------------------------------------------------------


def _text(value: object) -> str:
    """An attribute value that is not a str (an AMQP header decoded otherwise) as its string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _string_to_int(value: str) -> int:
    if len(value) < 10 and value.isascii() and value.isdigit():
        return int(value)  # the common case: a few plain digits
    if _DIGITS.match(value) is None:
        raise CastError(f"cannot cast {value[:40]!r} to Integer")
    digits = value.lstrip("+-").lstrip("0")
    number = int(value) if len(digits) <= 10 else INT_MAX + 1
    if not INT_MIN <= number <= INT_MAX:
        raise CastError(f"cannot cast {value[:40]!r} to Integer: out of the 32-bit range")
    return number


def _string_to_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise CastError(f"cannot cast {value[:40]!r} to Boolean")


def _int_to_string(value: int) -> str:
    return str(value)


def _bool_to_string(value: bool) -> str:
    return "true" if value else "false"


def _int_to_bool(value: int) -> bool:
    return value != 0


def _bool_to_int(value: bool) -> int:
    return 1 if value else 0


_CASTS: Final[Mapping[tuple[str, str], Callable[[Any], Any]]] = {
    (STRING, INTEGER): _string_to_int,
    (STRING, BOOLEAN): _string_to_bool,
    (INTEGER, STRING): _int_to_string,
    (INTEGER, BOOLEAN): _int_to_bool,
    (BOOLEAN, STRING): _bool_to_string,
    (BOOLEAN, INTEGER): _bool_to_int,
}


def _checked(value: int) -> int:
    if not INT_MIN <= value <= INT_MAX:
        raise MathError(f"integer overflow: {value} is outside the 32-bit range")
    return value


def _add(x: int, y: int) -> int:
    return _checked(x + y)


def _sub(x: int, y: int) -> int:
    return _checked(x - y)


def _mul(x: int, y: int) -> int:
    return _checked(x * y)


def _div(x: int, y: int) -> int:
    if y == 0:
        raise MathError("division by zero")
    quotient = abs(x) // abs(y)
    return _checked(quotient if (x < 0) == (y < 0) else -quotient)


def _mod(x: int, y: int) -> int:
    if y == 0:
        raise MathError("division by zero")
    remainder = abs(x) % abs(y)
    return -remainder if x < 0 else remainder


_ARITHMETIC: Final[Mapping[str, Callable[[int, int], int]]] = {
    "+": _add,
    "-": _sub,
    "*": _mul,
    "/": _div,
    "%": _mod,
}
_ORDERING: Final[Mapping[str, Callable[[int, int], bool]]] = {
    "<": lambda x, y: x < y,
    "<=": lambda x, y: x <= y,
    ">": lambda x, y: x > y,
    ">=": lambda x, y: x >= y,
}


# --- LIKE ------------------------------------------------------------------------------------


def _like_segments(pattern: str) -> list[list[str | None]]:
    """The pattern split at its `%` wildcards; in a segment, None stands for `_` (any one
    character). `\\%` and `\\_` are the literal characters; any other backslash is itself."""
    segments: list[list[str | None]] = [[]]
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern) and pattern[i + 1] in "%_":
            segments[-1].append(pattern[i + 1])
            i += 2
            continue
        if char == "%":
            segments.append([])
        else:
            segments[-1].append(None if char == "_" else char)
        i += 1
    return segments


def _segment_regex(segment: list[str | None]) -> re.Pattern[str]:
    return re.compile("".join("." if c is None else re.escape(c) for c in segment), re.DOTALL)


def like_matcher(pattern: str) -> Callable[[str], bool]:
    """A matcher for a LIKE pattern: `%` any run of characters, `_` exactly one, else itself
    (case-sensitive). Linear in the value: the first and last segments are anchored, each
    middle one is taken at its leftmost place (wildcard segments have fixed lengths)."""
    segments = _like_segments(pattern)
    plain = ["".join(c for c in s if c is not None) if None not in s else None for s in segments]
    if len(segments) == 1:
        only = plain[0]
        if only is not None:
            return only.__eq__
        fullmatch = _segment_regex(segments[0]).fullmatch
        return lambda value: fullmatch(value) is not None
    first, last = plain[0], plain[-1]
    if len(segments) == 2 and first is not None and last is not None:
        if not last:
            return lambda value: value.startswith(first)
        if not first:
            return lambda value: value.endswith(last)
        size = len(first) + len(last)
        return lambda v: len(v) >= size and v.startswith(first) and v.endswith(last)
    if len(segments) == 3 and plain == ["", plain[1], ""] and plain[1] is not None:
        inner = plain[1]
        return lambda value: inner in value
    head = _segment_regex(segments[0])
    tail = _segment_regex(segments[-1])
    head_len, tail_len = len(segments[0]), len(segments[-1])
    middles = tuple(_segment_regex(s) for s in segments[1:-1] if s)

    def match(value: str) -> bool:
        end = len(value) - tail_len
        if end < head_len or head.match(value) is None or tail.match(value, end) is None:
            return False
        position = head_len
        for middle in middles:
            found = middle.search(value, position, end)
            if found is None:
                return False
            position = found.end()
        return True

    return match


# --- compiled nodes --------------------------------------------------------------------------

_NO_VALUE: Final = object()


@dataclass(frozen=True, slots=True)
class _Node:
    """A compiled (sub)expression: its static type, its normalised text and its evaluator."""

    type: str
    text: str
    eval: Evaluator
    keys: frozenset[str] = frozenset()
    depth: int = 1
    # The folded value when the node reads no attribute and evaluates without error.
    value: Any = _NO_VALUE
    # The header key when the node is an attribute reference.
    attr: str | None = None
    # "AND"/"OR" with their flattened operands, "=" for an equality; None otherwise.
    op: str | None = None
    operands: tuple[_Node, ...] = ()
    # A predicate equal to "evaluates to true without error", cheaper than eval in a try.
    test: Predicate | None = None

    @property
    def const(self) -> bool:
        return self.value is not _NO_VALUE


def _constant(value: Any) -> Evaluator:
    return lambda _attrs: value


_EMPTY: Final[Attributes] = {}


def _make(
    type_: str,
    text: str,
    evaluator: Evaluator,
    children: Iterable[_Node] = (),
    *,
    foldable: bool = True,
    keys: frozenset[str] = frozenset(),
    **extra: Any,
) -> _Node:
    kids = tuple(children)
    keys = keys.union(*(c.keys for c in kids))
    depth = 1 + max((c.depth for c in kids), default=0)
    node = _Node(type_, text, evaluator, keys, depth, **extra)
    if foldable and all(c.const for c in kids):
        try:
            value = evaluator(_EMPTY)
        except CesqlError:
            return node  # an error at run time, if evaluation gets there
        return replace(node, eval=_constant(value), value=value)
    return node


def _cast(node: _Node, target: str) -> Evaluator:
    """The node's evaluator, its value cast to `target` (the spec's implicit cast)."""
    if node.type == target:
        return node.eval
    convert = _CASTS[(node.type, target)]
    if node.const:
        try:
            return _constant(convert(node.value))
        except CesqlError:
            pass
    inner = node.eval
    return lambda attrs: convert(inner(attrs))


def _converter(source: str, target: str) -> Callable[[Any], Any] | None:
    return None if source == target else _CASTS[(source, target)]


def _binary_eval(
    left: _Node, right: _Node, left_type: str, right_type: str, op: Callable[[Any, Any], Any]
) -> Evaluator:
    """Both operands evaluated (left, then right), then cast, then `op`."""
    lf, rf = left.eval, right.eval
    lc, rc = _converter(left.type, left_type), _converter(right.type, right_type)
    if right.const and rc is None:
        constant = right.value
        if lc is None:
            return lambda attrs: op(lf(attrs), constant)
        return lambda attrs: op(lc(lf(attrs)), constant)
    if lc is None and rc is None:
        return lambda attrs: op(lf(attrs), rf(attrs))

    def evaluate(attrs: Attributes) -> Any:
        x = lf(attrs)
        y = rf(attrs)
        return op(x if lc is None else lc(x), y if rc is None else rc(y))

    return evaluate


def _guarded(evaluator: Evaluator) -> Predicate:
    def test(attrs: Attributes) -> bool:
        try:
            return evaluator(attrs) is True
        except Exception:  # every error, even an unforeseen one, means no match
            return False

    return test


def _test_of(node: _Node) -> Predicate:
    """True exactly when `node`, cast to Boolean, evaluates to true without error."""
    if node.test is not None and node.type == BOOLEAN:
        return node.test
    return _guarded(_cast(node, BOOLEAN))


def _attribute_test(key: str, check: Callable[[str], bool]) -> Predicate:
    """`check(value)` for an attribute reference; a missing attribute fails the test."""

    def test(attrs: Attributes) -> bool:
        value = attrs.get(key)
        if value.__class__ is not str:
            if value is None:
                return False
            try:
                value = _text(value)
            except Exception:  # no string form: an error, so no match
                return False
        return check(value)

    return test


def _all(tests: tuple[Predicate, ...]) -> Predicate:
    return tests[0] if len(tests) == 1 else _and(tests)


# --- the compiler: lark tree -> nodes ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Function:
    params: tuple[str, ...]
    variadic: str | None
    returns: str
    impl: Callable[..., Any]


def _length(x: str) -> int:
    return len(x)


def _concat(*xs: str) -> str:
    return "".join(xs)


def _concat_ws(delimiter: str, *xs: str) -> str:
    return delimiter.join(xs)


def _lower(x: str) -> str:
    return x.lower()


def _upper(x: str) -> str:
    return x.upper()


def _trim(x: str) -> str:
    return x.strip(_WHITESPACE)


def _left(x: str, y: int) -> str:
    if y < 0:
        raise FunctionEvaluationError(f"LEFT: the length {y} is negative")
    return x[:y]


def _right(x: str, y: int) -> str:
    if y < 0:
        raise FunctionEvaluationError(f"RIGHT: the length {y} is negative")
    return x[len(x) - y :] if y < len(x) else x


def _substring_start(x: str, pos: int) -> int | None:
    """The 0-based start of SUBSTRING(x, pos, ...); None for pos 0 (the empty string)."""
    if pos > len(x) or pos < -len(x):
        raise FunctionEvaluationError(
            f"SUBSTRING: position {pos} is outside a string of length {len(x)}"
        )
    if pos == 0:
        return None
    return pos - 1 if pos > 0 else len(x) + pos


def _substring(x: str, pos: int) -> str:
    start = _substring_start(x, pos)
    return "" if start is None else x[start:]


def _substring_len(x: str, pos: int, length: int) -> str:
    if length < 0:
        raise FunctionEvaluationError(f"SUBSTRING: the length {length} is negative")
    start = _substring_start(x, pos)
    return "" if start is None else x[start : start + length]


def _abs(x: int) -> int:
    if x == INT_MIN:
        raise MathError("ABS(-2147483648) overflows the 32-bit range")
    return abs(x)


# (name, arity) for fixed arities; (name, None) for a variadic overload.
_FUNCTIONS: Final[Mapping[tuple[str, int | None], _Function]] = {
    ("LENGTH", 1): _Function((STRING,), None, INTEGER, _length),
    ("CONCAT", None): _Function((), STRING, STRING, _concat),
    ("CONCAT_WS", None): _Function((STRING,), STRING, STRING, _concat_ws),
    ("LOWER", 1): _Function((STRING,), None, STRING, _lower),
    ("UPPER", 1): _Function((STRING,), None, STRING, _upper),
    ("TRIM", 1): _Function((STRING,), None, STRING, _trim),
    ("LEFT", 2): _Function((STRING, INTEGER), None, STRING, _left),
    ("RIGHT", 2): _Function((STRING, INTEGER), None, STRING, _right),
    ("SUBSTRING", 2): _Function((STRING, INTEGER), None, STRING, _substring),
    ("SUBSTRING", 3): _Function((STRING, INTEGER, INTEGER), None, STRING, _substring_len),
    ("ABS", 1): _Function((INTEGER,), None, INTEGER, _abs),
}
# The casting functions: one argument of any type.
_CAST_FUNCTIONS: Final[Mapping[str, str]] = {"INT": INTEGER, "BOOL": BOOLEAN, "STRING": STRING}
_CHECK_FUNCTIONS: Final[Mapping[str, str]] = {"IS_INT": INTEGER, "IS_BOOL": BOOLEAN}


def _resolve(name: str, arity: int) -> _Function | None:
    fixed = _FUNCTIONS.get((name, arity))
    if fixed is not None:
        return fixed
    variadic = _FUNCTIONS.get((name, None))
    if variadic is not None and arity >= len(variadic.params):
        return variadic
    return None


def _quote(value: str, written: str) -> str:
    """`value` as a single-quoted literal that reads back as itself; else as it was written."""
    quoted = "'" + value.replace("'", "\\'") + "'"
    if "\\" not in value or (_STRING_TOKEN.match(quoted) and _unquote(quoted) == value):
        return quoted
    return written


def _unquote(token: str) -> str:
    quote, body = token[0], token[1:-1]
    return _ESCAPE.sub(lambda m: quote if m.group(1) == quote else m.group(0), body)


def _where(item: Tree[Token] | Token) -> tuple[int, int]:
    if isinstance(item, Token):
        return item.line or 1, item.column or 1
    meta = item.meta
    return getattr(meta, "line", 1), getattr(meta, "column", 1)


class _Builder:
    """Turns the parse tree into compiled nodes, applying precedence and static types."""

    def __init__(self, check_functions: bool) -> None:
        self.check_functions = check_functions
        self.nesting = 0

    def fail(self, reason: str, at: Tree[Token] | Token) -> ParseError:
        line, column = _where(at)
        return ParseError(reason, line, column)

    def limit(self, node: _Node, at: Tree[Token] | Token) -> _Node:
        if node.depth > MAX_DEPTH:
            raise self.fail(f"the expression nests more than {MAX_DEPTH} levels deep", at)
        return node

    # expr: operand tail*
    def expr(self, tree: Tree[Token]) -> _Node:
        self.nesting += 1
        if self.nesting > MAX_DEPTH:
            raise self.fail(f"the expression nests more than {MAX_DEPTH} levels deep", tree)
        items = tree.children
        tails = [t for t in items[1:] if isinstance(t, Tree)]
        head = items[0]
        assert isinstance(head, Tree)
        first, pos = self.climb(self.operand(head), tails, 0, _LOGIC_PRECEDENCE + 1)
        # The lowest level, AND OR XOR, associates to the right: a op (b op (c ...)).
        chain: list[tuple[Token, _Node]] = []
        while pos < len(tails):
            tail = tails[pos]
            op = self.binop(tail)
            assert _PRECEDENCE[op.value.upper()] == _LOGIC_PRECEDENCE
            right, pos = self.climb(
                self.operand(self.child_tree(tail, 1)), tails, pos + 1, _LOGIC_PRECEDENCE + 1
            )
            chain.append((op, right))
        node = first
        if chain:
            operands = [first] + [right for _, right in chain]
            node = operands[-1]
            for index in range(len(chain) - 1, -1, -1):
                op, _ = chain[index]
                node = self.logic(op, operands[index], node)
        self.nesting -= 1
        return node

    @staticmethod
    def child_tree(tree: Tree[Token], index: int) -> Tree[Token]:
        child = tree.children[index]
        assert isinstance(child, Tree)
        return child

    @staticmethod
    def binop(tail: Tree[Token]) -> Token:
        op_tree = tail.children[0]
        assert isinstance(op_tree, Tree)
        token = op_tree.children[0]
        assert isinstance(token, Token)
        return token

    def climb(
        self, left: _Node, tails: list[Tree[Token]], pos: int, min_precedence: int
    ) -> tuple[_Node, int]:
        """Precedence climbing over `tails` from `pos`: operators binding at least as tight as
        `min_precedence` (ANTLR's `expression[p]`); left-associative."""
        while pos < len(tails):
            tail = tails[pos]
            if tail.data == "like":
                if min_precedence > _LIKE_PRECEDENCE:
                    break
                left = self.like(left, tail)
                pos += 1
            elif tail.data == "inset":
                if min_precedence > _IN_PRECEDENCE:
                    break
                left = self.inset(left, tail)
                pos += 1
            else:
                token = self.binop(tail)
                op = token.value.upper()
                precedence = _PRECEDENCE[op]
                if precedence < min_precedence:
                    break
                right, pos = self.climb(
                    self.operand(self.child_tree(tail, 1)), tails, pos + 1, precedence + 1
                )
                left = self.binary(token, left, right)
        return left, pos

    # operand: prefix* primary
    def operand(self, tree: Tree[Token]) -> _Node:
        *prefixes, primary = tree.children
        assert isinstance(primary, Tree)
        node = self.primary(primary)
        for prefix in reversed(prefixes):
            assert isinstance(prefix, Tree)
            token = prefix.children[0]
            assert isinstance(token, Token)
            node = self.limit(self.not_(node) if token.type == "NOT" else self.negate(node), token)
        return node

    def primary(self, tree: Tree[Token]) -> _Node:
        kind = tree.data
        children = tree.children
        if kind == "group":
            return self.expr(self.child_tree(tree, 0))
        token = children[0]
        assert isinstance(token, Token)
        if kind == "integer":
            number = int(token.value)
            if not INT_MIN <= number <= INT_MAX:
                raise self.fail(f"the integer {token.value} is outside the 32-bit range", token)
            return _make(INTEGER, str(number), _constant(number))
        if kind == "string":
            value = _unquote(token.value)
            return _make(STRING, _quote(value, token.value), _constant(value))
        if kind == "boolean":
            truth = token.type == "TRUE"
            return _make(BOOLEAN, "TRUE" if truth else "FALSE", _constant(truth))
        if kind == "ident":
            return self.ident(token)
        if kind == "exists":
            name = children[1]
            assert isinstance(name, Token)
            key = HEADER_PREFIX + self.name(name)
            return _make(
                BOOLEAN,
                f"(EXISTS {key[len(HEADER_PREFIX) :]})",
                lambda attrs: key in attrs,
                foldable=False,
                keys=frozenset((key,)),
                test=lambda attrs: key in attrs,
            )
        assert kind == "call"
        args = [c for c in children[1:] if isinstance(c, Tree)]
        return self.call(token, [self.expr(a) for a in args])

    def name(self, token: Token) -> str:
        name: str = token.value.lower()
        if name in KEYWORDS:
            raise self.fail(f"{token.value!r} is a keyword, not an attribute name", token)
        if _IDENTIFIER.match(name) is None:
            raise self.fail(f"{token.value!r} is not a CloudEvents attribute name", token)
        return name

    def ident(self, token: Token) -> _Node:
        name = self.name(token)
        key = HEADER_PREFIX + name

        def read(attrs: Attributes) -> str:
            value = attrs.get(key)
            if isinstance(value, str):
                return value
            if value is None:
                raise MissingAttributeError(f"the event has no attribute {name}")
            return _text(value)

        return _make(STRING, name, read, foldable=False, keys=frozenset((key,)), attr=key)

    # --- operators ---

    def not_(self, node: _Node) -> _Node:
        inner = _cast(node, BOOLEAN)
        return _make(BOOLEAN, f"(NOT {node.text})", lambda attrs: not inner(attrs), (node,))

    def negate(self, node: _Node) -> _Node:
        inner = _cast(node, INTEGER)
        # `(- 2)`, not `(-2)`, which would read back as the literal -2.
        text = f"(- {node.text})" if node.text[:1].isdigit() else f"(-{node.text})"
        return _make(INTEGER, text, lambda attrs: _checked(-inner(attrs)), (node,))

    def binary(self, token: Token, left: _Node, right: _Node) -> _Node:
        op = token.value.upper()
        text = f"({left.text} {op} {right.text})"
        if op in _ARITHMETIC:
            evaluator = _binary_eval(left, right, INTEGER, INTEGER, _ARITHMETIC[op])
            return self.limit(_make(INTEGER, text, evaluator, (left, right)), token)
        if op in _ORDERING:
            evaluator = _binary_eval(left, right, INTEGER, INTEGER, _ORDERING[op])
            return self.limit(_make(BOOLEAN, text, evaluator, (left, right)), token)
        # = != <>: defined for each type; the right operand's type decides (section 3.7).
        target = right.type
        equal = op == "="
        compare: Callable[[Any, Any], bool] = (
            (lambda x, y: x == y) if equal else (lambda x, y: x != y)
        )
        evaluator = _binary_eval(left, right, target, target, compare)
        test: Predicate | None = None
        if target == STRING and left.type == STRING:
            if left.attr is not None and right.const:
                constant = right.value
                test = _attribute_test(left.attr, constant.__eq__ if equal else constant.__ne__)
            elif right.attr is not None and left.const:
                constant = left.value
                test = _attribute_test(right.attr, constant.__eq__ if equal else constant.__ne__)
        node = _make(
            BOOLEAN,
            text,
            evaluator,
            (left, right),
            op="=" if equal else None,
            operands=(left, right),
        )
        if test is not None and not node.const:
            node = replace(node, test=test)
        return self.limit(node, token)

    def logic(self, token: Token, left: _Node, right: _Node) -> _Node:
        op = token.value.upper()
        text = f"({left.text} {op} {right.text})"
        if op == "XOR":
            lf, rf = _cast(left, BOOLEAN), _cast(right, BOOLEAN)
            return self.limit(_make(BOOLEAN, text, lambda a: lf(a) != rf(a), (left, right)), token)
        # AND, OR: short-circuit, left to right; a chain of one operator is one n-ary node.
        operands = tuple(
            part for side in (left, right) for part in (side.operands if side.op == op else (side,))
        )
        evaluators = tuple(_cast(part, BOOLEAN) for part in operands)
        evaluator = _and(evaluators) if op == "AND" else _or(evaluators)
        node = _make(BOOLEAN, text, evaluator, operands, op=op, operands=operands)
        if op == "AND" and not node.const:
            node = replace(node, test=_all(tuple(_test_of(part) for part in operands)))
        return self.limit(node, token)

    def like(self, left: _Node, tail: Tree[Token]) -> _Node:
        tokens = [t for t in tail.children if isinstance(t, Token)]
        negated = tokens[0].type == "NOT"
        pattern_token = tokens[-1]
        pattern = _unquote(pattern_token.value)
        matcher = like_matcher(pattern)
        inner = _cast(left, STRING)
        keyword = "NOT LIKE" if negated else "LIKE"
        text = f"({left.text} {keyword} {_quote(pattern, pattern_token.value)})"
        if negated:
            node = _make(BOOLEAN, text, lambda a: not matcher(inner(a)), (left,))
        else:
            node = _make(BOOLEAN, text, lambda a: matcher(inner(a)), (left,))
        if left.attr is not None and not node.const:
            check = matcher if not negated else (lambda value: not matcher(value))
            node = replace(node, test=_attribute_test(left.attr, check))
        return self.limit(node, tokens[0])

    def inset(self, left: _Node, tail: Tree[Token]) -> _Node:
        tokens = [t for t in tail.children if isinstance(t, Token)]
        negated = tokens[0].type == "NOT"
        elements = [self.expr(t) for t in tail.children if isinstance(t, Tree)]
        keyword = "NOT IN" if negated else "IN"
        text = f"({left.text} {keyword} ({', '.join(e.text for e in elements)}))"
        target = left.type
        evaluator = _in(left.eval, [(e, _cast(e, target)) for e in elements], negated)
        node = _make(BOOLEAN, text, evaluator, (left, *elements))
        if left.attr is not None and not node.const and all(e.const for e in elements):
            try:
                members = frozenset(_cast(e, target)(_EMPTY) for e in elements)
            except CesqlError:
                pass  # an element that cannot be cast: evaluated (and failing) per event
            else:
                check = members.__contains__
                if negated:
                    node = replace(
                        node, test=_attribute_test(left.attr, lambda v: v not in members)
                    )
                else:
                    node = replace(node, test=_attribute_test(left.attr, check))
        return self.limit(node, tokens[0])

    def call(self, token: Token, args: list[_Node]) -> _Node:
        name = token.value.upper()
        text = f"{name}({', '.join(a.text for a in args)})"
        if name in _CAST_FUNCTIONS and len(args) == 1:
            target = _CAST_FUNCTIONS[name]
            return self.limit(_make(target, text, _cast(args[0], target), args), token)
        if name in _CHECK_FUNCTIONS and len(args) == 1:
            convert = _converter(args[0].type, _CHECK_FUNCTIONS[name])
            inner = args[0].eval
            evaluator = _can_cast(inner, convert)
            return self.limit(_make(BOOLEAN, text, evaluator, args), token)
        function = _resolve(name, len(args)) if _FUNCTION_NAME.match(name) else None
        if function is None:
            if self.check_functions:
                raise self.fail(
                    f"there is no function {name} taking {_arguments(len(args))}", token
                )
            evaluator = _missing_function(name, len(args))
            return _make(BOOLEAN, text, evaluator, args, foldable=False)
        types = [
            function.params[i] if i < len(function.params) else function.variadic
            for i in range(len(args))
        ]
        casts = tuple(_cast(a, t) for a, t in zip(args, types, strict=True))  # type: ignore[arg-type]
        return self.limit(_make(function.returns, text, _apply(function.impl, casts), args), token)


def _and(evaluators: tuple[Evaluator, ...]) -> Evaluator:
    if len(evaluators) == 2:
        first, second = evaluators
        return lambda attrs: first(attrs) and second(attrs)

    def evaluate(attrs: Attributes) -> bool:
        for one in evaluators:  # noqa: SIM110 - a loop is faster than all() and a generator
            if not one(attrs):
                return False
        return True

    return evaluate


def _or(evaluators: tuple[Evaluator, ...]) -> Evaluator:
    if len(evaluators) == 2:
        first, second = evaluators
        return lambda attrs: first(attrs) or second(attrs)

    def evaluate(attrs: Attributes) -> bool:
        for one in evaluators:  # noqa: SIM110 - a loop is faster than any() and a generator
            if one(attrs):
                return True
        return False

    return evaluate


def _in(left: Evaluator, elements: list[tuple[_Node, Evaluator]], negated: bool) -> Evaluator:
    """`x [NOT] IN (y1, ...)`: x, then each element in turn (cast to x's type) until equal."""
    evaluators = tuple(evaluator for _, evaluator in elements)

    def evaluate(attrs: Attributes) -> bool:
        x = left(attrs)
        for one in evaluators:
            if one(attrs) == x:
                return not negated
        return negated

    return evaluate


def _can_cast(inner: Evaluator, convert: Callable[[Any], Any] | None) -> Evaluator:
    """IS_INT, IS_BOOL: whether the argument's value can be cast (its own errors propagate)."""

    def evaluate(attrs: Attributes) -> bool:
        value = inner(attrs)
        if convert is None:
            return True
        try:
            convert(value)
        except CastError:
            return False
        return True

    return evaluate


def _arguments(count: int) -> str:
    return f"{count} argument" + ("" if count == 1 else "s")


def _missing_function(name: str, arity: int) -> Evaluator:
    def evaluate(_attrs: Attributes) -> bool:
        raise MissingFunctionError(f"there is no function {name} taking {_arguments(arity)}")

    return evaluate


def _apply(impl: Callable[..., Any], args: tuple[Evaluator, ...]) -> Evaluator:
    if len(args) == 1:
        (only,) = args
        return lambda attrs: impl(only(attrs))
    if len(args) == 2:
        first, second = args
        return lambda attrs: impl(first(attrs), second(attrs))
    return lambda attrs: impl(*(arg(attrs) for arg in args))


# --- the public side -------------------------------------------------------------------------


@dataclass(frozen=True)
class CesqlExpression:
    """A compiled CESQL expression."""

    source: str
    # The expression as bridge reads it: keywords upper-case, every operation parenthesised.
    text: str
    type: str
    # Header-form keys (`ce-<name>`) of the attributes the expression looks at.
    keys: frozenset[str]
    # Exact header values every match has (top-level AND-ed `attribute = 'literal'`).
    exacts: Mapping[str, str]
    evaluator: Evaluator = field(repr=False)
    # True exactly when the expression evaluates to true without error.
    predicate: Predicate = field(repr=False)

    def evaluate(self, attrs: Attributes) -> tuple[Value, CesqlError | None]:
        """Fail-fast evaluation: (value, None), or (the type's zero value, the first error)."""
        try:
            return self.evaluator(attrs), None
        except CesqlError as error:
            return ZERO[self.type], error
        except Exception as exc:  # a GenericError: an attribute value that is no string, ...
            return ZERO[self.type], CesqlError(f"cannot evaluate: {exc!r}")


def _syntax_error(exc: UnexpectedInput, text: str) -> ParseError:
    if isinstance(exc, UnexpectedCharacters):
        return ParseError(f"unexpected character {exc.char!r}", exc.line, exc.column)
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        token = exc.token
        expected = _describe_expected(exc.expected)
        return ParseError(
            f"unexpected {token.value!r}{expected}", token.line or 1, token.column or 1
        )
    lines = text.split("\n")
    expected = _describe_expected(getattr(exc, "expected", None) or ())
    return ParseError(f"unexpected end of the expression{expected}", len(lines), len(lines[-1]) + 1)


def _describe_expected(expected: Iterable[str]) -> str:
    names = set(expected)
    if not names:
        return ""
    if names <= {"$END"}:
        return " (expected the end)"
    if names <= {"STRING"}:
        return " (expected a string literal)"
    if names <= {"NAME"}:
        return " (expected an attribute name)"
    if names & _OPERAND_START:
        return " (expected a value)"
    if names & _OPERATORS:
        return " (expected an operator)"
    if names <= {"RPAR", "COMMA"}:
        return " (expected " + " or ".join(_TERMINALS[n] for n in sorted(names, reverse=True)) + ")"
    return ""


def compile_expression(text: str, *, check_functions: bool = True) -> CesqlExpression:
    """Parse and compile `text`; ParseError on a syntax error or an unknown function (with
    `check_functions=False` an unknown function is a MissingFunctionError when evaluated)."""
    if not text.strip():
        raise ParseError("the expression is empty", 1, 1)
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text) from None
    expr = tree.children[0]
    assert isinstance(expr, Tree)
    try:
        node = _Builder(check_functions).expr(expr)
    except RecursionError:
        raise ParseError(f"the expression nests more than {MAX_DEPTH} levels deep", 1, 1) from None
    return CesqlExpression(
        source=text,
        text=node.text,
        type=node.type,
        keys=node.keys,
        exacts=_exacts(node),
        evaluator=node.eval,
        predicate=_predicate(node),
    )


def _predicate(node: _Node) -> Predicate:
    if node.type != BOOLEAN:
        return lambda _attrs: False
    if node.const:
        result = node.value is True
        return lambda _attrs: result
    return _test_of(node)


def _exacts(node: _Node) -> dict[str, str]:
    """Header values that every match has: the top-level conjuncts `attribute = 'literal'`
    (String = String: equal strings, no cast). A contradiction keeps the first value: still a
    superset of the (empty) set of matches."""
    conjuncts = node.operands if node.op == "AND" else (node,)
    exacts: dict[str, str] = {}
    for part in conjuncts:
        if part.op != "=":
            continue
        left, right = part.operands
        if left.type != STRING or right.type != STRING:
            continue
        for attribute, constant in ((left, right), (right, left)):
            if attribute.attr is not None and constant.const:
                exacts.setdefault(attribute.attr, constant.value)
    return exacts


_ARTICLE: Final[Mapping[str, str]] = {INTEGER: "an Integer", STRING: "a String"}


def compile_cesql(arg: Any, where: str) -> Expression:
    """The `cesql` dialect: `{cesql: "<expression>"}`, compiled once (see the module doc)."""
    if not isinstance(arg, str):
        raise ConfigError(f"{where}: must be a string holding a CESQL expression.")
    if arg == "":  # Knative: an empty expression is no filter (its webhook accepts it)
        return Expression(always, {}, True, "cesql: (empty: every event)", frozenset())
    try:
        compiled = compile_expression(arg)
    except ParseError as exc:
        raise ConfigError(
            f"{where}: cannot use the CESQL expression {arg!r}: {exc.reason} at line "
            f"{exc.line}, column {exc.column}."
        ) from None
    if compiled.type != BOOLEAN:
        raise ConfigError(
            f"{where}: the CESQL expression {arg!r} is {_ARTICLE[compiled.type]}, not a Boolean, "
            "from "
            "line 1, column 1: a filter must be a condition (compare the value, e.g. with = or "
            "LIKE)."
        )
    return Expression(
        compiled.predicate,
        compiled.exacts,
        False,
        f"cesql: {compiled.text}",
        compiled.keys,
    )
