"""The `cesql` filter dialect: CloudEvents SQL Expression Language v1.0.0, table-driven.

Each table follows one section of the specification (cesql/spec.md): literals (2.2), attribute
access (3.2), operators (3.4), functions (3.5), precedence (3.6), casts (3.7), the error model
(3.3, fail-fast as 4.1 recommends for filters), then what bridge adds: load-time errors with
their position, the normalised description `check-config` prints, the attributes a filter looks
at, and the exact RabbitMQ bindings it implies. Events are in header form (`ce-type`, ...), every
value a string, as bridge hands them to the filters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.amqp.topology import trigger_bindings
from bridge.cli import main
from bridge.config import LoadedConfig, Settings
from bridge.errors import ConfigError
from bridge.filters import cesql, compile_filters, compile_trigger_filter
from bridge.filters.cesql import (
    BOOLEAN,
    INTEGER,
    MAX_DEPTH,
    STRING,
    CesqlError,
    ParseError,
    compile_cesql,
    compile_expression,
    like_matcher,
)
from bridge.triggers import build_routes
from tests.conftest import write

BASE: dict[str, Any] = {
    "ce-specversion": "1.0",
    "ce-id": "evt-1",
    "ce-source": "acs.oss",
    "ce-type": "oss:ObjectCreated:PutObject",
    "ce-knativebrokerttl": "255",
}

MISSING = "MissingAttributeError"
MATH = "MathError"
CAST = "CastError"
FUNC = "FunctionEvaluationError"
NOFUNC = "MissingFunctionError"


def ev(**extra: Any) -> dict[str, Any]:
    """BASE plus attributes by name (header form)."""
    return {**BASE, **{f"ce-{name}": value for name, value in extra.items()}}


def run(expression: str, event: dict[str, Any] | None = None) -> tuple[Any, str | None]:
    compiled = compile_expression(expression, check_functions=False)
    value, error = compiled.evaluate(BASE if event is None else event)
    return value, None if error is None else error.kind


Row = tuple[str, dict[str, Any] | None, Any, str | None]


def check(rows: list[Row]) -> None:
    """Each row: value and error kind as the spec says; and for a Boolean expression, the
    compiled filter predicate matches exactly when the value is true without error."""
    failures = []
    for expression, event, expected, kind in rows:
        got, got_kind = run(expression, event)
        if (type(got), got, got_kind) != (type(expected), expected, kind):
            failures.append(f"{expression!r}: got {got!r} {got_kind}, want {expected!r} {kind}")
            continue
        compiled = compile_expression(expression, check_functions=False)
        if compiled.type == BOOLEAN:
            matched = compiled.predicate(BASE if event is None else event)
            if matched != (expected is True and kind is None):
                failures.append(f"{expression!r}: predicate said {matched}")
    assert not failures, "\n".join(failures)


# --- 2.2 literals ----------------------------------------------------------------------------

LITERALS: list[Row] = [
    ("42", None, 42, None),
    ("+42", None, 42, None),
    ("-42", None, -42, None),
    ("0", None, 0, None),
    ("0042", None, 42, None),
    ("2147483647", None, 2147483647, None),
    ("-2147483648", None, -2147483648, None),
    ("true", None, True, None),
    ("TRUE", None, True, None),
    ("FaLsE", None, False, None),
    ("'hello'", None, "hello", None),
    ('"hello"', None, "hello", None),
    ("'Mixed Case'", None, "Mixed Case", None),
    ("''", None, "", None),
    ('""', None, "", None),
    # a backslash escapes the literal's own quote; the other quote needs none
    ("'don\\'t'", None, "don't", None),
    ('"say \\"hi\\""', None, 'say "hi"', None),
    ("'a\"b'", None, 'a"b', None),
    ('"a\'b"', None, "a'b", None),
    # any other backslash stays as written
    ("'c:\\dir'", None, "c:\\dir", None),
    ("'two\\\\'", None, "two\\\\", None),
    ("'q\\\"'", None, 'q\\"', None),
    ("'line1\nline2'", None, "line1\nline2", None),
    ("'日本語'", None, "日本語", None),
]


def test_literals() -> None:
    check(LITERALS)


# --- 3.2 attributes ----------------------------------------------------------------------------

ATTRIBUTES: list[Row] = [
    ("id", None, "evt-1", None),
    ("specversion", None, "1.0", None),
    ("source", None, "acs.oss", None),
    # names are case-insensitive
    ("ID", None, "evt-1", None),
    ("Source", None, "acs.oss", None),
    ("subject", ev(subject="s/1"), "s/1", None),
    ("myext", ev(myext="v"), "v", None),
    ("a1b2", ev(a1b2="digits"), "digits", None),
    ("datacontenttype", ev(datacontenttype="application/json"), "application/json", None),
    # every attribute is a String, even one that looks like a number or a boolean
    ("knativebrokerttl", None, "255", None),
    ("sequence", ev(sequence="10"), "10", None),
    ("flag", ev(flag="true"), "true", None),
    ("myext", ev(myext=""), "", None),
    # absent: the zero value of the subexpression's type, and the error
    ("subject", None, "", MISSING),
    ("missing", None, "", MISSING),
    # header values that an AMQP client decoded as something else than str
    ("count", ev(count=7), "7", None),
    ("flag", ev(flag=True), "true", None),
    ("blob", ev(blob=b"bytes"), "bytes", None),
]


def test_attributes() -> None:
    check(ATTRIBUTES)
    assert run("123abc", {**BASE, "ce-123abc": "x"}) == ("x", None)


# --- 3.4.1 unary operators --------------------------------------------------------------------

UNARY: list[Row] = [
    ("NOT TRUE", None, False, None),
    ("NOT FALSE", None, True, None),
    ("NOT NOT TRUE", None, True, None),
    ("NOT 'false'", None, True, None),
    ("NOT 'False'", None, True, None),
    ("NOT 'TRUE'", None, False, None),
    ("NOT 0", None, True, None),
    ("NOT 7", None, False, None),
    ("NOT 'yes'", None, False, CAST),
    ("NOT missing", None, False, MISSING),
    ("NOT flag", ev(flag="FALSE"), True, None),
    ("-7", None, -7, None),
    ("- 7", None, -7, None),
    ("-(3)", None, -3, None),
    ("- -7", None, 7, None),
    ("--7", None, 7, None),
    ("-'12'", None, -12, None),
    ("-FALSE", None, 0, None),
    ("-TRUE", None, -1, None),
    ("-'x'", None, 0, CAST),
    ("-(-2147483648)", None, 0, MATH),
    ("-(-2147483647)", None, 2147483647, None),
    ("-missing", None, 0, MISSING),
    ("-sequence", ev(sequence="12"), -12, None),
]


def test_unary_operators() -> None:
    check(UNARY)


# --- 3.4.2 logical operators ------------------------------------------------------------------

LOGICAL: list[Row] = [
    ("FALSE AND FALSE", None, False, None),
    ("FALSE AND TRUE", None, False, None),
    ("TRUE AND FALSE", None, False, None),
    ("TRUE AND TRUE", None, True, None),
    ("FALSE OR FALSE", None, False, None),
    ("FALSE OR TRUE", None, True, None),
    ("TRUE OR FALSE", None, True, None),
    ("TRUE OR TRUE", None, True, None),
    ("FALSE XOR FALSE", None, False, None),
    ("FALSE XOR TRUE", None, True, None),
    ("TRUE XOR FALSE", None, True, None),
    ("TRUE XOR TRUE", None, False, None),
    # operands cast to Boolean
    ("'TRUE' AND 'true'", None, True, None),
    ("1 AND 0", None, False, None),
    ("3 OR 0", None, True, None),
    ("'x' AND TRUE", None, False, CAST),
    ("flag AND TRUE", ev(flag="true"), True, None),
    # short circuit: AND stops at false, OR at true; XOR needs both
    ("FALSE AND missing", None, False, None),
    ("FALSE AND 1 / 0 = 1", None, False, None),
    ("TRUE OR missing", None, True, None),
    ("TRUE OR 'x'", None, True, None),
    ("TRUE AND missing", None, False, MISSING),
    ("FALSE OR 7 / 0 = 1", None, False, MATH),
    ("FALSE XOR missing", None, False, MISSING),
    ("TRUE XOR missing", None, False, MISSING),
    # fail fast: an error on the left of OR is the result, even when the right is true
    ("missing = 'x' OR TRUE", None, False, MISSING),
    ("TRUE AND TRUE AND FALSE", None, False, None),
    ("FALSE OR FALSE OR TRUE", None, True, None),
    ("TRUE AND TRUE AND TRUE AND TRUE", None, True, None),
    ("FALSE OR FALSE OR FALSE OR missing", None, False, MISSING),
    ("TRUE XOR TRUE XOR TRUE", None, True, None),
]


def test_logical_operators() -> None:
    check(LOGICAL)


# --- 3.4.2 comparisons ------------------------------------------------------------------------

COMPARISONS: list[Row] = [
    ("3 = 3", None, True, None),
    ("3 = 4", None, False, None),
    ("3 != 4", None, True, None),
    ("3 != 3", None, False, None),
    ("3 <> 3", None, False, None),
    ("3 <> 4", None, True, None),
    ("'a' = 'a'", None, True, None),
    ("'a' = 'A'", None, False, None),  # case-sensitive
    ("'a' != 'A'", None, True, None),
    ("'a' <> 'a'", None, False, None),
    ("TRUE = TRUE", None, True, None),
    ("TRUE <> FALSE", None, True, None),
    ("2 < 3", None, True, None),
    ("3 < 3", None, False, None),
    ("3 <= 3", None, True, None),
    ("4 <= 3", None, False, None),
    ("4 > 3", None, True, None),
    ("3 > 3", None, False, None),
    ("3 >= 3", None, True, None),
    ("2 >= 3", None, False, None),
    ("-5 < 2", None, True, None),
    # < <= > >= exist for Integers only: both operands are cast
    ("'10' > '9'", None, True, None),
    ("'abc' < 'abd'", None, False, CAST),
    ("TRUE > FALSE", None, True, None),
    # = != <> take the right operand's type (3.7): the left one is cast to it
    ("'007' = 7", None, True, None),
    ("7 = '007'", None, False, None),
    ("'true' = TRUE", None, True, None),
    ("'TRUE' = TRUE", None, True, None),
    ("TRUE = 'true'", None, True, None),
    ("TRUE = 'True'", None, False, None),
    ("'Yes' = TRUE", None, False, CAST),
    ("1 = TRUE", None, True, None),
    ("2 = TRUE", None, True, None),
    ("TRUE = 1", None, True, None),
    ("TRUE = 2", None, False, None),
    ("'x' != 5", None, False, CAST),
    # attributes are Strings: the literal's type decides
    ("sequence = 5", ev(sequence="5"), True, None),
    ("sequence = 5", ev(sequence="05"), True, None),
    ("sequence = '05'", ev(sequence="5"), False, None),
    ("sequence = 5", ev(sequence="five"), False, CAST),
    ("sequence > 4", ev(sequence="5"), True, None),
    ("sequence < 10", ev(sequence="9"), True, None),
    ("hop < ttl", ev(hop="9", ttl="10"), True, None),
    ("flag = TRUE", ev(flag="TRUE"), True, None),
    ("flag = FALSE", ev(flag="yes"), False, CAST),
    ("type = 'oss:ObjectCreated:PutObject'", None, True, None),
    ("'oss:ObjectCreated:PutObject' = type", None, True, None),
    ("type != 'oss:ObjectCreated:PutObject'", None, False, None),
    ("type <> 'x'", None, True, None),
    ("type = source", None, False, None),
    ("missing = 'x'", None, False, MISSING),
    ("missing != 'x'", None, False, MISSING),
    ("missing <> 2", None, False, MISSING),
    ("missing < 3", None, False, MISSING),
    ("'x' = missing", None, False, MISSING),
]


def test_comparisons() -> None:
    check(COMPARISONS)


# --- 3.4.2 arithmetic -------------------------------------------------------------------------

ARITHMETIC: list[Row] = [
    ("7 + 5", None, 12, None),
    ("7 - 5", None, 2, None),
    ("5 - 7", None, -2, None),
    ("7 * -5", None, -35, None),
    ("0 * 9", None, 0, None),
    # truncated division: the quotient rounds toward zero, the remainder has the dividend's sign
    ("7 / 2", None, 3, None),
    ("-7 / 2", None, -3, None),
    ("7 / -2", None, -3, None),
    ("-7 / -2", None, 3, None),
    ("0 / 5", None, 0, None),
    ("7 % 3", None, 1, None),
    ("-7 % 3", None, -1, None),
    ("7 % -3", None, 1, None),
    ("-7 % -3", None, -1, None),
    ("6 % 3", None, 0, None),
    # a sign after an operand is the operator
    ("5-3", None, 2, None),
    ("5 -3", None, 2, None),
    ("5--3", None, 8, None),
    ("5 - -3", None, 8, None),
    ("5 + +3", None, 8, None),
    ("7 / 0", None, 0, MATH),
    ("7 % 0", None, 0, MATH),
    ("missing / 0", None, 0, MISSING),
    ("1 / missing", None, 0, MISSING),
    # 32-bit integers: leaving the range is a MathError, never a wrap-around
    ("2147483647 + 1", None, 0, MATH),
    ("-2147483648 - 1", None, 0, MATH),
    ("65536 * 65536", None, 0, MATH),
    ("-2147483648 / -1", None, 0, MATH),
    ("-2147483648 % -1", None, 0, None),
    ("2147483646 + 1", None, 2147483647, None),
    ("-2147483647 - 1", None, -2147483648, None),
    # implicit casts to Integer
    ("'20' + 22", None, 42, None),
    ("20 + '22'", None, 42, None),
    ("'20' + '22'", None, 42, None),
    ("TRUE + TRUE", None, 2, None),
    ("'+1' + 1", None, 2, None),
    ("'x' + 1", None, 0, CAST),
    ("' 1' + 1", None, 0, CAST),
    ("sequence * 2", ev(sequence="21"), 42, None),
    ("sequence + 1", ev(sequence="2147483647"), 0, MATH),
]


def test_arithmetic() -> None:
    check(ARITHMETIC)


# --- 3.4.3 LIKE ---------------------------------------------------------------------------------

LIKE: list[Row] = [
    ("'abc' LIKE 'abc'", None, True, None),
    ("'abc' LIKE 'ab'", None, False, None),
    ("'abc' LIKE 'ABC'", None, False, None),  # case-sensitive
    ("'abc' LIKE 'a%'", None, True, None),
    ("'abc' LIKE '%c'", None, True, None),
    ("'abc' LIKE '%b%'", None, True, None),
    ("'abc' LIKE '%'", None, True, None),
    ("'' LIKE '%'", None, True, None),
    ("'' LIKE '_'", None, False, None),
    ("'' LIKE ''", None, True, None),
    ("'abc' LIKE 'a%c'", None, True, None),
    ("'ac' LIKE 'a%c'", None, True, None),
    ("'ab' LIKE 'a%c'", None, False, None),
    ("'a' LIKE 'a%a'", None, False, None),
    ("'aa' LIKE 'a%a'", None, True, None),
    ("'a.b.c' LIKE '%.%.%'", None, True, None),
    ("'a.b' LIKE '%.%.%'", None, False, None),
    ("'abcabc' LIKE '%b%b%'", None, True, None),
    ("'abc' LIKE '%b%b%'", None, False, None),
    ("'xaybzc' LIKE '%a%b%c'", None, True, None),
    ("'xaybzcq' LIKE '%a%b%c'", None, False, None),
    ("'abc' LIKE 'a_c'", None, True, None),
    ("'ac' LIKE 'a_c'", None, False, None),
    ("'abbc' LIKE 'a_c'", None, False, None),
    ("'abc' LIKE '___'", None, True, None),
    ("'abc' LIKE '____'", None, False, None),
    ("'日本' LIKE '__'", None, True, None),  # one character, not one byte
    ("'a\nb' LIKE 'a_b'", None, True, None),
    ("'a\nb' LIKE 'a%'", None, True, None),
    ("'abXcd' LIKE 'ab_%d'", None, True, None),
    ("'abd' LIKE 'ab_%d'", None, False, None),
    ("'ab' LIKE '%_b'", None, True, None),
    ("'b' LIKE '%_b'", None, False, None),
    # \% and \_ are the characters themselves
    ("'50%' LIKE '50\\%'", None, True, None),
    ("'500' LIKE '50\\%'", None, False, None),
    ("'a_b' LIKE 'a\\_b'", None, True, None),
    ("'axb' LIKE 'a\\_b'", None, False, None),
    ("'x%_y' LIKE '%\\%\\_%'", None, True, None),
    ("'x_%y' LIKE '%\\%\\_%'", None, False, None),
    # another backslash is itself
    ("'a\\b' LIKE 'a\\b'", None, True, None),
    ("'ab' LIKE 'a\\b'", None, False, None),
    ("'a\\%' LIKE 'a\\\\%'", None, True, None),
    ("'a\\x' LIKE 'a\\%'", None, False, None),
    # regular-expression characters are plain characters
    ("'a.c' LIKE 'a.c'", None, True, None),
    ("'abc' LIKE 'a.c'", None, False, None),
    ("'a+c' LIKE 'a+c'", None, True, None),
    ("'(x)' LIKE '(%)'", None, True, None),
    ("'a*' LIKE 'a*'", None, True, None),
    ("'ab' LIKE 'a*'", None, False, None),
    ("'[a]' LIKE '[_]'", None, True, None),
    ("'abc' NOT LIKE 'a%'", None, False, None),
    ("'abc' NOT LIKE 'b%'", None, True, None),
    # the left operand is cast to String; the pattern is a literal
    ("1234 LIKE '12%'", None, True, None),
    ("-5 LIKE '-_'", None, True, None),
    ("FALSE LIKE 'f%'", None, True, None),
    ("TRUE LIKE 'T%'", None, False, None),
    ('type LIKE "oss:%"', None, True, None),
    ("type LIKE 'oss:ObjectCreated:%'", None, True, None),
    ("type LIKE '%:PutObject'", None, True, None),
    ("type LIKE '%Created%'", None, True, None),
    ("type NOT LIKE '%Created%'", None, False, None),
    ("subject LIKE '%.jpg'", ev(subject="photos/cat.jpg"), True, None),
    ("subject LIKE '%.jpg'", ev(subject="photos/cat.png"), False, None),
    ("missing LIKE '%'", None, False, MISSING),
    ("missing NOT LIKE 'x'", None, False, MISSING),
]


def test_like() -> None:
    check(LIKE)


def test_like_is_linear_on_many_wildcards() -> None:
    # A backtracking matcher takes ages here (as a regular expression would); this one does not.
    match = like_matcher("%a%a%a%a%a%a%b")
    assert match("a" * 20000) is False
    assert match("a" * 20000 + "b") is True
    assert like_matcher("%a_a%")("b" * 5000 + "axa") is True


# --- 3.4.4 EXISTS -------------------------------------------------------------------------------

EXISTS: list[Row] = [
    ("EXISTS id", None, True, None),
    ("EXISTS specversion", None, True, None),
    ("EXISTS source", None, True, None),
    ("EXISTS type", None, True, None),
    ("EXISTS subject", None, False, None),
    ("EXISTS subject", ev(subject="s"), True, None),
    ("EXISTS SUBJECT", ev(subject="s"), True, None),
    ("exists myext", ev(myext=""), True, None),  # present, even empty
    ("EXISTS myext", None, False, None),
    ("NOT EXISTS subject", None, True, None),
    ("EXISTS datacontenttype", ev(datacontenttype="text/plain"), True, None),
]


def test_exists() -> None:
    check(EXISTS)


# --- 3.4.5 IN -----------------------------------------------------------------------------------

IN: list[Row] = [
    ("type IN ('a', 'oss:ObjectCreated:PutObject')", None, True, None),
    ("type IN ('a', 'b')", None, False, None),
    ("type NOT IN ('a', 'b')", None, True, None),
    ("type NOT IN ('oss:ObjectCreated:PutObject')", None, False, None),
    ("type in ('OSS:OBJECTCREATED:PUTOBJECT')", None, False, None),
    # the elements are cast to the left operand's type
    ("5 IN ('5', '6')", None, True, None),
    ("5 IN ('05')", None, True, None),
    ("'05' IN (5)", None, False, None),
    ("TRUE IN ('TRUE')", None, True, None),
    ("'true' IN (TRUE)", None, True, None),
    ("'TRUE' IN (TRUE)", None, False, None),
    ("sequence IN (6, 7)", ev(sequence="7"), True, None),
    ("sequence IN (7)", ev(sequence="07"), False, None),
    ("INT(sequence) IN (7)", ev(sequence="07"), True, None),
    ("3 IN (1 + 1, 1 + 2)", None, True, None),
    ("source IN (CONCAT('acs', '.oss'))", None, True, None),
    ("type IN (source, type)", None, True, None),
    # left to right, stopping at the first equal element
    ("missing IN ('a')", None, False, MISSING),
    ("5 IN ('x')", None, False, CAST),
    ("5 IN (5, 'x')", None, True, None),
    ("5 IN ('x', 5)", None, False, CAST),
    ("type IN ('a', missing)", None, False, MISSING),
    ("type IN ('oss:ObjectCreated:PutObject', missing)", None, True, None),
    ("5 NOT IN ('x')", None, False, CAST),
]


def test_in() -> None:
    check(IN)


# --- 3.5 functions ------------------------------------------------------------------------------

FUNCTIONS: list[Row] = [
    ("LENGTH('hello')", None, 5, None),
    ("LENGTH('')", None, 0, None),
    ("LENGTH('日本語')", None, 3, None),
    ("LENGTH(12345)", None, 5, None),
    ("LENGTH(-1)", None, 2, None),
    ("LENGTH(FALSE)", None, 5, None),
    ("LENGTH(type)", None, 27, None),
    ("length('x')", None, 1, None),  # names are case-insensitive
    ("LENGTH(missing)", None, 0, MISSING),
    ("CONCAT()", None, "", None),
    ("CONCAT('x')", None, "x", None),
    ("CONCAT('a', 'b', 'c', 'd')", None, "abcd", None),
    ("CONCAT('n', 1, TRUE)", None, "n1true", None),
    ("CONCAT(source, '/', type)", None, "acs.oss/oss:ObjectCreated:PutObject", None),
    ("CONCAT('a', missing)", None, "", MISSING),
    ("CONCAT_WS('-')", None, "", None),
    ("CONCAT_WS('-', 'a')", None, "a", None),
    ("CONCAT_WS('-', 'a', 'b', 'c')", None, "a-b-c", None),
    ("CONCAT_WS(', ', 1, 2)", None, "1, 2", None),
    ("CONCAT_WS('', 'a', 'b')", None, "ab", None),
    ("CONCAT_WS(0, 'a', 'b')", None, "a0b", None),
    ("LOWER('MiXeD')", None, "mixed", None),
    ("UPPER('MiXeD')", None, "MIXED", None),
    ("LOWER('ÀÉÎ')", None, "àéî", None),
    ("UPPER(TRUE)", None, "TRUE", None),
    ("LOWER(42)", None, "42", None),
    ("UPPER(type)", None, "OSS:OBJECTCREATED:PUTOBJECT", None),
    ("TRIM('  x  ')", None, "x", None),
    ("TRIM('\t x \n')", None, "x", None),
    ("TRIM('x')", None, "x", None),
    ("TRIM('   ')", None, "", None),
    ("TRIM(' a  b ')", None, "a  b", None),
    ("TRIM('\u3000x\u00a0\u2003')", None, "x", None),  # Unicode whitespace
    ("TRIM('\x1fx\x1c')", None, "\x1fx\x1c", None),  # control characters are not whitespace
    ("LEFT('abcdef', 3)", None, "abc", None),
    ("LEFT('abc', 3)", None, "abc", None),
    ("LEFT('abc', 5)", None, "abc", None),
    ("LEFT('abc', 0)", None, "", None),
    ("LEFT('', 2)", None, "", None),
    ("LEFT('日本語', 2)", None, "日本", None),
    ("LEFT('abc', '2')", None, "ab", None),
    ("LEFT('abc', -1)", None, "", FUNC),
    ("LEFT('abc', 'x')", None, "", CAST),
    ("RIGHT('abcdef', 3)", None, "def", None),
    ("RIGHT('abc', 3)", None, "abc", None),
    ("RIGHT('abc', 5)", None, "abc", None),
    ("RIGHT('abc', 0)", None, "", None),
    ("RIGHT('abc', -1)", None, "", FUNC),
    ("SUBSTRING('abcdef', 1)", None, "abcdef", None),
    ("SUBSTRING('abcdef', 3)", None, "cdef", None),
    ("SUBSTRING('abcdef', 6)", None, "f", None),
    ("SUBSTRING('abcdef', 7)", None, "", FUNC),
    ("SUBSTRING('abcdef', -2)", None, "ef", None),
    ("SUBSTRING('abcdef', -6)", None, "abcdef", None),
    ("SUBSTRING('abcdef', -7)", None, "", FUNC),
    ("SUBSTRING('abcdef', 0)", None, "", None),
    ("SUBSTRING('', 0)", None, "", None),
    ("SUBSTRING('', 1)", None, "", FUNC),
    ("SUBSTRING('abcdef', 2, 3)", None, "bcd", None),
    ("SUBSTRING('abcdef', 2, 0)", None, "", None),
    ("SUBSTRING('abcdef', 5, 10)", None, "ef", None),
    ("SUBSTRING('abcdef', -3, 2)", None, "de", None),
    ("SUBSTRING('abcdef', 0, 3)", None, "", None),
    ("SUBSTRING('abcdef', 2, -1)", None, "", FUNC),
    ("SUBSTRING('abcdef', 0, -1)", None, "", FUNC),
    ("SUBSTRING('abcdef', 9, 1)", None, "", FUNC),
    ("SUBSTRING('abcdef', -9, 1)", None, "", FUNC),
    ("SUBSTRING(type, 5, 6)", None, "Object", None),
    ("ABS(-9)", None, 9, None),
    ("ABS(9)", None, 9, None),
    ("ABS(0)", None, 0, None),
    ("ABS('-4')", None, 4, None),
    ("ABS(-2147483647)", None, 2147483647, None),
    ("ABS(-2147483648)", None, 0, MATH),
    ("ABS('x')", None, 0, CAST),
    ("UPPER(1 / 0)", None, "", MATH),
    # a call that cannot be dispatched: false and a MissingFunctionError (bridge's filters
    # refuse these when the configuration loads, see test_load_time_errors)
    ("NOPE(1)", None, False, NOFUNC),
    ("LENGTH('a', 'b')", None, False, NOFUNC),
    ("CONCAT_WS()", None, False, NOFUNC),
    ("SUBSTRING('a')", None, False, NOFUNC),
    ("SUBSTRING('a', 1, 1, 1)", None, False, NOFUNC),
    ("INT()", None, False, NOFUNC),
    ("TRUE OR NOPE()", None, True, None),
]


def test_functions() -> None:
    check(FUNCTIONS)


# --- 3.7 casts ----------------------------------------------------------------------------------

CASTS: list[Row] = [
    ("INT('42')", None, 42, None),
    ("INT('+42')", None, 42, None),
    ("INT('-42')", None, -42, None),
    ("INT('0042')", None, 42, None),
    ("INT('000000000000042')", None, 42, None),
    ("INT('2147483647')", None, 2147483647, None),
    ("INT('-2147483648')", None, -2147483648, None),
    ("INT('2147483648')", None, 0, CAST),
    ("INT('-2147483649')", None, 0, CAST),
    ("INT('99999999999999999999999')", None, 0, CAST),
    ("INT('')", None, 0, CAST),
    ("INT('-')", None, 0, CAST),
    ("INT(' 42')", None, 0, CAST),
    ("INT('42 ')", None, 0, CAST),
    ("INT('4_2')", None, 0, CAST),
    ("INT('٤٢')", None, 0, CAST),  # only ASCII digits
    ("INT('4.2')", None, 0, CAST),
    ("INT('0x1A')", None, 0, CAST),
    ("INT('+-4')", None, 0, CAST),
    ("INT(TRUE)", None, 1, None),
    ("INT(FALSE)", None, 0, None),
    ("INT(17)", None, 17, None),
    ("BOOL('true')", None, True, None),
    ("BOOL('TRUE')", None, True, None),
    ("BOOL('tRuE')", None, True, None),
    ("BOOL('false')", None, False, None),
    ("BOOL('yes')", None, False, CAST),
    ("BOOL('1')", None, False, CAST),
    ("BOOL(' true')", None, False, CAST),
    ("BOOL(0)", None, False, None),
    ("BOOL(-1)", None, True, None),
    ("BOOL(TRUE)", None, True, None),
    ("STRING(0)", None, "0", None),
    ("STRING(-17)", None, "-17", None),
    ("STRING(007)", None, "7", None),
    ("STRING(TRUE)", None, "true", None),
    ("STRING(FALSE)", None, "false", None),
    ("STRING('Ab')", None, "Ab", None),
    ("IS_INT('12')", None, True, None),
    ("IS_INT('-12')", None, True, None),
    ("IS_INT('1.5')", None, False, None),
    ("IS_INT('99999999999')", None, False, None),
    ("IS_INT(TRUE)", None, True, None),
    ("IS_INT(3)", None, True, None),
    ("IS_BOOL('False')", None, True, None),
    ("IS_BOOL('no')", None, False, None),
    ("IS_BOOL(5)", None, True, None),
    ("IS_BOOL(FALSE)", None, True, None),
    ("IS_INT(missing)", None, False, MISSING),
    ("IS_INT(sequence) AND INT(sequence) > 3", ev(sequence="4"), True, None),
    ("IS_INT(sequence) AND INT(sequence) > 3", ev(sequence="four"), False, None),
    # the spec's examples (3.7, 2)
    ("TRUE = 'true' AND FALSE = 'false'", None, True, None),
    ("TRUE = 'TRUE' OR FALSE = 'FALSE'", None, False, None),
    ("int(hop) < int(ttl) and int(hop) < 1000", ev(hop="5", ttl="10"), True, None),
    ("INT(hop) < INT(ttl) AND INT(hop) < 1000", ev(hop="5", ttl="10"), True, None),
]


def test_casts() -> None:
    check(CASTS)


# --- 3.3 error model: every kind, the zero value of the expression's type ---------------------


@pytest.mark.parametrize(
    ("expression", "kind", "type_", "zero"),
    [
        ("missing", MISSING, STRING, ""),
        ("missing = 'a'", MISSING, BOOLEAN, False),
        ("missing * 5", MISSING, INTEGER, 0),
        ("10 / 0", MATH, INTEGER, 0),
        ("ABS(-2147483648) > 0", MATH, BOOLEAN, False),
        ("INT('ten')", CAST, INTEGER, 0),
        ("UPPER(BOOL('maybe'))", CAST, STRING, ""),
        ("SUBSTRING('abc', 4)", FUNC, STRING, ""),
        ("LEFT('abc', -1) = ''", FUNC, BOOLEAN, False),
        ("NOPE()", NOFUNC, BOOLEAN, False),
    ],
)
def test_every_error_kind_yields_the_zero_value(
    expression: str, kind: str, type_: str, zero: Any
) -> None:
    compiled = compile_expression(expression, check_functions=False)
    assert compiled.type == type_
    value, error = compiled.evaluate(BASE)
    assert isinstance(error, CesqlError)
    assert error.kind == kind
    assert (type(value), value) == (type(zero), zero)
    if type_ == BOOLEAN:
        assert compiled.predicate(BASE) is False


def test_a_parse_error_is_of_kind_parse_error() -> None:
    with pytest.raises(ParseError) as info:
        compile_expression("type = ")
    assert info.value.kind == "ParseError"
    assert (info.value.line, info.value.column) == (1, 8)


# --- 3.6 precedence and associativity (the spec grammar) ---------------------------------------

# (expression, how bridge reads it, value)
PRECEDENCE: list[tuple[str, str, Any]] = [
    ("1 + 2 * 3", "(1 + (2 * 3))", 7),
    ("(1 + 2) * 3", "((1 + 2) * 3)", 9),
    ("10 - 4 - 3", "((10 - 4) - 3)", 3),
    ("64 / 8 / 2", "((64 / 8) / 2)", 4),
    ("7 % 4 * 3", "((7 % 4) * 3)", 9),
    ("2 * 3 = 6", "((2 * 3) = 6)", True),
    ("1 + 1 = 2 AND 2 * 2 = 4", "(((1 + 1) = 2) AND ((2 * 2) = 4))", True),
    ("1 = 1 = TRUE", "((1 = 1) = TRUE)", True),
    ("1 < 2 = TRUE", "((1 < 2) = TRUE)", True),
    # AND, OR and XOR share one level and associate to the right
    ("TRUE OR FALSE AND FALSE", "(TRUE OR (FALSE AND FALSE))", True),
    ("FALSE AND FALSE OR TRUE", "(FALSE AND (FALSE OR TRUE))", False),
    ("TRUE XOR TRUE AND FALSE", "(TRUE XOR (TRUE AND FALSE))", True),
    ("TRUE AND TRUE AND TRUE", "(TRUE AND (TRUE AND TRUE))", True),
    # NOT and unary minus bind tighter than any binary operator, LIKE and IN
    ("NOT FALSE AND FALSE", "((NOT FALSE) AND FALSE)", False),
    ("NOT 'a' = 'a'", "((NOT 'a') = 'a')", False),  # and a CastError (below)
    ("-'1' LIKE '-%'", "((-'1') LIKE '-%')", True),
    ("- 2 * 3", "((- 2) * 3)", -6),
    ("-2 * 3", "(-2 * 3)", -6),
    ("NOT - 0", "(NOT (- 0))", True),
    ("-(2 + 3)", "(-(2 + 3))", -5),
    ("NOT EXISTS subject AND TRUE", "((NOT (EXISTS subject)) AND TRUE)", True),
    ("EXISTS id = TRUE", "((EXISTS id) = TRUE)", True),
    # LIKE and IN bind tighter than arithmetic and comparisons; LIKE tighter than IN
    ("1 + 1 LIKE '2'", "(1 + (1 LIKE '2'))", 1),
    ("3 * 1 IN (1)", "(3 * (1 IN (1)))", 3),
    ("1 + 2 IN (3)", "(1 + (2 IN (3)))", 1),
    ("2 IN (2) = TRUE", "((2 IN (2)) = TRUE)", True),
    ("'a' LIKE 'a' IN (TRUE)", "(('a' LIKE 'a') IN (TRUE))", True),
    ("2 IN (2) LIKE 'true'", "((2 IN (2)) LIKE 'true')", True),
    ("type LIKE 'oss%' = TRUE", "((type LIKE 'oss%') = TRUE)", True),
    ("LENGTH('ab') * 2", "(LENGTH('ab') * 2)", 4),
    ("2 * 3 LIKE '3'", "(2 * (3 LIKE '3'))", 2),
    ("1 - -1", "(1 - -1)", 2),
    (
        "type = 'x' AND source = 'y' OR id = 'evt-1'",
        "((type = 'x') AND ((source = 'y') OR (id = 'evt-1')))",
        False,
    ),
    ("true and not false", "(TRUE AND (NOT FALSE))", True),
    ("type\n=\n'oss:ObjectCreated:PutObject'", "(type = 'oss:ObjectCreated:PutObject')", True),
    ("x NOT LIKE 'a' OR TRUE", "((x NOT LIKE 'a') OR TRUE)", False),  # x is missing
    ("source NOT IN ('a') XOR FALSE", "((source NOT IN ('a')) XOR FALSE)", True),
    ("upper(type) like '%PUT%'", "(UPPER(type) LIKE '%PUT%')", True),
]


def kinds(result: tuple[Any, CesqlError | None]) -> tuple[Any, str | None]:
    value, error = result
    return value, None if error is None else error.kind


@pytest.mark.parametrize(("expression", "text", "value"), PRECEDENCE)
def test_precedence(expression: str, text: str, value: Any) -> None:
    compiled = compile_expression(expression)
    assert compiled.text == text
    got, _ = compiled.evaluate(BASE)
    assert (type(got), got) == (type(value), value)
    # the normalised text reads back as itself, with the same value
    again = compile_expression(text)
    assert again.text == text
    assert kinds(again.evaluate(BASE)) == kinds(compiled.evaluate(BASE))


def test_not_binds_tighter_than_equality_so_it_casts_first() -> None:
    assert run("NOT 'a' = 'a'") == (False, CAST)
    assert run("NOT ('a' = 'a')") == (False, None)


# --- load-time errors: syntax and semantics, with the position ---------------------------------


@pytest.mark.parametrize(
    ("expression", "reason", "line", "column"),
    [
        ("", "the expression is empty", 1, 1),
        ("  \n ", "the expression is empty", 1, 1),
        ("type =", "unexpected end of the expression (expected a value)", 1, 7),
        ("type = 'a' AND", "unexpected end of the expression (expected a value)", 1, 15),
        ("= 'a'", "unexpected '=' (expected a value)", 1, 1),
        ("type == 'a'", "unexpected '=' (expected a value)", 1, 7),
        ("type = 'a", 'unexpected character "\'"', 1, 8),
        ("type = 'a' )", "unexpected ')' (expected the end)", 1, 12),
        ("(type = 'a'", "unexpected end of the expression", 1, 12),
        ("type LIKE source", "unexpected 'source' (expected a string literal)", 1, 11),
        ("type LIKE 5", "unexpected '5' (expected a string literal)", 1, 11),
        ("type IN ()", "unexpected ')' (expected a value)", 1, 10),
        ("type IN 'a'", "unexpected \"'a'\"", 1, 9),
        ("EXISTS 'a'", "unexpected \"'a'\" (expected an attribute name)", 1, 8),
        ("EXISTS", "unexpected end of the expression (expected an attribute name)", 1, 7),
        ("type = 'a' #", "unexpected character '#'", 1, 12),
        ("'it''s' = type", "unexpected \"'s'\" (expected an operator)", 1, 5),
        ("type = 'a'\nAND source = 'b' AND", "unexpected end of the expression", 2, 21),
        ("type = 'a'\n  AND (source = ) ", "unexpected ')' (expected a value)", 2, 17),
        ("2147483648", "the integer 2147483648 is outside the 32-bit range", 1, 1),
        ("x = -2147483649", "the integer -2147483649 is outside the 32-bit range", 1, 5),
        ("my_ext = 'a'", "'my_ext' is not a CloudEvents attribute name", 1, 1),
        ("and = 'a'", "'and' is a keyword, not an attribute name", 1, 1),
        ("EXISTS In", "'In' is a keyword, not an attribute name", 1, 8),
        ("NOPE(type)", "there is no function NOPE taking 1 argument", 1, 1),
        ("LENGTH() = 0", "there is no function LENGTH taking 0 arguments", 1, 1),
        ("type = UPPER('a', 'b')", "there is no function UPPER taking 2 arguments", 1, 8),
        ("F1(type)", "there is no function F1 taking 1 argument", 1, 1),
        ("CONCAT_WS() = ''", "there is no function CONCAT_WS taking 0 arguments", 1, 1),
        (
            "(" * (MAX_DEPTH + 1) + "TRUE" + ")" * (MAX_DEPTH + 1),
            f"the expression nests more than {MAX_DEPTH} levels deep",
            1,
            MAX_DEPTH + 1,
        ),
        (
            "NOT " * (MAX_DEPTH + 1) + "TRUE",
            f"the expression nests more than {MAX_DEPTH} levels deep",
            1,
            5,
        ),
    ],
)
def test_load_time_errors(expression: str, reason: str, line: int, column: int) -> None:
    with pytest.raises(ParseError) as info:
        compile_expression(expression)
    assert info.value.reason.startswith(reason), info.value.reason
    assert (info.value.line, info.value.column) == (line, column)


def test_deep_arithmetic_is_refused_but_long_and_or_chains_are_not() -> None:
    with pytest.raises(ParseError, match="nests more than"):
        compile_expression(" + ".join(["1"] * (MAX_DEPTH + 2)) + " = 1")
    # a long OR of equalities (as generated filters write) is one flat operation
    chain = " OR ".join(f"type = 't{i}'" for i in range(500))
    compiled = compile_expression(chain)
    assert compiled.predicate(ev(type="t499")) is True
    assert compiled.predicate(ev(type="t500")) is False


# --- the dialect: compile_cesql ------------------------------------------------------------------

WHERE = "trigger default/x.filters[0].cesql"


@pytest.mark.parametrize(
    ("arg", "fragments"),
    [
        (
            "type = = 'a'",
            ["cannot use the CESQL expression \"type = = 'a'\"", "at line 1, column 8"],
        ),
        (
            "type = 'a' AND\nsource LIKE 7",
            ["unexpected '7' (expected a string literal)", "at line 2, column 13", "\\n"],
        ),
        ("NOPE(type)", ["there is no function NOPE taking 1 argument", "line 1, column 1"]),
        ("type", ["'type' is a String, not a Boolean", "line 1, column 1"]),
        ("1 + 1", ["'1 + 1' is an Integer, not a Boolean"]),
        ("  ", ["the expression is empty", "line 1, column 1"]),
        (5, ["must be a string holding a CESQL expression"]),
        (None, ["must be a string holding a CESQL expression"]),
        (["type = 'a'"], ["must be a string holding a CESQL expression"]),
    ],
)
def test_dialect_errors_are_one_sentence_naming_where_what_and_the_position(
    arg: Any, fragments: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        compile_cesql(arg, WHERE)
    message = str(info.value)
    assert message.startswith(f"{WHERE}: "), message
    assert message.endswith("."), message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_an_empty_expression_is_no_filter_as_in_knative() -> None:
    compiled = compile_filters([{"cesql": ""}], "t")
    assert compiled(BASE) is True
    assert compiled({}) is True
    assert compiled.bindings == ({},)
    assert compiled.description == "cesql: (empty: every event)"


def test_description_is_the_normalised_expression() -> None:
    compiled = compile_trigger_filter(None, [{"cesql": "type = 'a' and source like 'acs.%'"}], "t")
    assert compiled.description == "cesql: ((type = 'a') AND (source LIKE 'acs.%'))"
    # several expressions: all must hold
    compiled = compile_trigger_filter(
        None, [{"prefix": {"type": "oss:"}}, {"cesql": "NOT EXISTS subject"}], "t"
    )
    assert compiled.description == "type starts with oss: and cesql: (NOT (EXISTS subject))"
    assert compiled(BASE) is True
    assert compiled(ev(subject="x")) is False


def test_keys_name_every_attribute_looked_at() -> None:
    expression = compile_cesql(
        "datacontenttype LIKE 'application/json%' AND (EXISTS Subject OR LENGTH(myext) > 1)",
        WHERE,
    )
    assert expression.keys == {"ce-datacontenttype", "ce-subject", "ce-myext"}


def loaded(filters: list[dict[str, Any]]) -> LoadedConfig:
    settings = Settings(
        triggers=[{"name": "t", "subscriber": {"uri": "http://127.0.0.1:9/"}, "filters": filters}]
    )
    return LoadedConfig(
        settings=settings, source="test", triggers=[(settings.triggers[0], "test: triggers[0]")]
    )


def test_a_cesql_filter_on_datacontenttype_makes_the_ingress_copy_it() -> None:
    assert build_routes(loaded([{"cesql": "type = 'a'"}])).content_type_filtered is False
    routes = build_routes(loaded([{"cesql": "datacontenttype = 'application/json'"}]))
    assert routes.content_type_filtered is True


def test_a_bad_expression_names_the_trigger() -> None:
    with pytest.raises(ConfigError) as info:
        build_routes(loaded([{"cesql": "type = 'a' AND AND"}]))
    assert str(info.value).startswith("test: triggers[0].filters[0].cesql: ")
    assert "line 1, column 16" in str(info.value)


# --- RabbitMQ bindings: exact values every match has ---------------------------------------------


@pytest.mark.parametrize(
    ("expression", "exacts"),
    [
        ("type = 'a'", {"ce-type": "a"}),
        ("'a' = type", {"ce-type": "a"}),
        ("TYPE = 'a'", {"ce-type": "a"}),
        ("type = 'Oss:Put' AND source = 'ACS'", {"ce-type": "Oss:Put", "ce-source": "ACS"}),
        ("type = 'a' AND source = 'b'", {"ce-type": "a", "ce-source": "b"}),
        (
            "type = 'a' AND (source = 'b' AND subject = 'c')",
            {"ce-type": "a", "ce-source": "b", "ce-subject": "c"},
        ),
        ("type = 'a' AND source LIKE 'b%'", {"ce-type": "a"}),
        ("(type = 'a' OR FALSE) AND source = 'b'", {"ce-source": "b"}),
        ("type = CONCAT('a', 'b')", {"ce-type": "ab"}),
        ("sequence = '5'", {"ce-sequence": "5"}),
        ("type = 'a' AND type = 'b'", {"ce-type": "a"}),
        ("type = ''", {"ce-type": ""}),
        # nothing exact: alternatives, negations, casts, comparisons of two attributes
        ("type = 'a' OR source = 'b'", {}),
        ("type = 'a' XOR TRUE", {}),
        ("NOT (type = 'a')", {}),
        ("type != 'a'", {}),
        ("sequence = 5", {}),
        ("flag = TRUE", {}),
        ("type = source", {}),
        ("type IN ('a')", {}),
        ("LOWER(type) = 'a'", {}),
        ("type = 'a' OR type = 'a'", {}),
    ],
)
def test_exact_bindings(expression: str, exacts: dict[str, str]) -> None:
    compiled = compile_cesql(expression, WHERE)
    assert dict(compiled.exacts) == exacts
    assert compiled.pure is False  # the consumer always evaluates the expression


def test_bindings_of_a_trigger() -> None:
    compiled = compile_filters([{"cesql": "source = 'acs.oss' AND type LIKE 'oss:%'"}], "t")
    assert compiled.bindings == ({"ce-source": "acs.oss"},)
    assert compiled.exact is False
    routes = build_routes(loaded([{"cesql": "source = 'acs.oss' AND type LIKE 'oss:%'"}]))
    assert trigger_bindings(routes.triggers[0]) == [{"x-match": "all", "ce-source": "acs.oss"}]
    nothing = compile_filters([{"cesql": "source = 'a' OR type = 'b'"}], "t")
    assert nothing.bindings == ({},)


SUPERSET_EXPRESSIONS = [
    "type = 'a'",
    "type = 'a' AND source = 'b'",
    "'b' = source AND (type LIKE 'a%' OR subject = 'c')",
    "type = 'a' AND (source = 'b' AND NOT (subject = 'c'))",
    "type = 'a' AND type = 'b'",
    "type = 'A' AND source = 'a%'",
    "type = '' AND EXISTS subject",
    "TYPE = 'a' AND INT(seq) > 1",
]
VALUES = st.sampled_from(["a", "b", "c", "", "A", "a%", "1", "2", "b "])
EVENTS = st.dictionaries(
    st.sampled_from(["ce-type", "ce-source", "ce-subject", "ce-seq"]), VALUES
).map(lambda attrs: {**BASE, **attrs})


@settings(max_examples=300, deadline=None)
@given(event=EVENTS)
def test_exact_bindings_are_a_superset_of_the_matches(event: dict[str, Any]) -> None:
    for expression in SUPERSET_EXPRESSIONS:
        compiled = compile_cesql(expression, WHERE)
        if compiled.predicate(event):
            for key, value in compiled.exacts.items():
                assert event.get(key) == value, (expression, event)


AGREEMENT_EXPRESSIONS = [
    "type = 'a'",
    "subject != 'a'",
    "subject NOT LIKE 'a%'",
    "subject NOT IN ('a', 'b')",
    "seq LIKE '%'",
    "type != 'a'",
    "'a' = type",
    "type LIKE 'a%'",
    "type LIKE '%a'",
    "type LIKE '%a%'",
    "type LIKE 'a_'",
    "type NOT LIKE 'a%'",
    "type IN ('a', 'b')",
    "type NOT IN ('a', 'b')",
    "EXISTS subject",
    "type = 'a' AND source = 'b'",
    "type = 'a' AND subject LIKE 'b%' AND seq IN ('1', '2')",
    "type = 'a' OR subject = 'b'",
    "NOT (subject = 'a')",
    "seq = 1",
    "seq > 1 AND type = 'a'",
    "subject = 'a' XOR type = 'b'",
    "type IN (subject, 'x')",
]


@settings(max_examples=300, deadline=None)
@given(event=EVENTS.map(lambda e: {k: (v.encode() if k == "ce-seq" else v) for k, v in e.items()}))
def test_the_filter_predicate_agrees_with_evaluation(event: dict[str, Any]) -> None:
    """The predicate's shortcuts (a missing attribute fails a top-level test at once) say
    exactly what full evaluation says: true, without error."""
    for expression in AGREEMENT_EXPRESSIONS:
        compiled = compile_expression(expression)
        assert compiled.predicate(event) == (compiled.evaluate(event) == (True, None)), (
            expression,
            event,
        )


def test_no_parsing_per_event(monkeypatch: pytest.MonkeyPatch) -> None:
    expression = compile_cesql("type LIKE 'oss:%' AND INT(knativebrokerttl) > 0", WHERE)

    def no_parser() -> None:
        raise AssertionError("parsed while filtering")

    monkeypatch.setattr(cesql, "_parser", no_parser)
    assert expression.predicate(BASE) is True
    assert expression.predicate(ev(type="x")) is False


def test_a_predicate_never_raises() -> None:
    class Weird:
        def __str__(self) -> str:
            raise RuntimeError("cannot be a string")

    for text in ("LENGTH(odd) > 1 OR odd = 'x'", "odd = 'x'", "odd LIKE 'x%'", "odd IN ('x')"):
        assert compile_cesql(text, WHERE).predicate(ev(odd=Weird())) is False
    value, error = compile_expression("odd").evaluate(ev(odd=Weird()))
    assert value == ""
    assert error is not None
    assert error.kind == "GenericError"


# --- check-config ------------------------------------------------------------------------------

MANIFEST = """
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: uploads
spec:
  broker: eventbridge-default-broker
  filters:
    - cesql: "type = 'oss:ObjectCreated:PutObject' and source like 'acs.%'"
  subscriber:
    uri: http://127.0.0.1:8081/
"""


@pytest.mark.usefixtures("clean_env")
def test_check_config_prints_the_normalised_expression(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "triggers.yaml", MANIFEST)
    config = write(tmp_path / "config.toml", "triggers_path = 'triggers.yaml'\n")
    assert main(["check-config", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    i = lines.index("trigger default/uploads")
    assert lines[i + 2] == (
        "  filter:     cesql: ((type = 'oss:ObjectCreated:PutObject') AND (source LIKE 'acs.%'))"
    )


@pytest.mark.usefixtures("clean_env")
def test_check_config_refuses_a_bad_expression_with_its_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "triggers.yaml", MANIFEST.replace("source like", "source lik"))
    config = write(tmp_path / "config.toml", "triggers_path = 'triggers.yaml'\n")
    assert main(["check-config", "--config", str(config)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err
    assert str(tmp_path / "triggers.yaml") in err
    assert "filters[0].cesql" in err
    assert "unexpected 'lik' (expected an operator) at line 1, column 49" in err
