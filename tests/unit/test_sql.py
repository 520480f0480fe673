"""The placeholder lexer (`tenant_mcp.storage.sql`): statements written the SQLite way, rewritten
for PostgreSQL. A `?` or `:name` inside a literal, a quoted name or a comment is text; every other
one becomes a `$n`, and the values bind as SQLite binds them to the same statement."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import pytest

from tenant_mcp.errors import TenantMCPError
from tenant_mcp.storage.sql import Params, to_postgres

ONE, TWO = (1,), (1, 2)
NAMED = {"a": "A", "b": "B"}


@pytest.mark.parametrize(
    ("sql", "params", "expected"),
    [
        ("SELECT ?, ?", TWO, "SELECT $1, $2"),
        ("SELECT 'what?' , ?", ONE, "SELECT 'what?' , $1"),
        ("SELECT 'it''s ?', ?", ONE, "SELECT 'it''s ?', $1"),
        ("SELECT '\\', ?", ONE, "SELECT '\\', $1"),  # a standard string: the backslash is a character
        ("SELECT E'\\' ?', ?", ONE, "SELECT E'\\' ?', $1"),  # an E string: \' does not end it
        ("SELECT e'a\\\\', ?", ONE, "SELECT e'a\\\\', $1"),
        ("SELECT note, ?", ONE, "SELECT note, $1"),  # a word ending in e opens no E string
        ('SELECT "col?" , ?', ONE, 'SELECT "col?" , $1'),
        ('SELECT "a""?b", ?', ONE, 'SELECT "a""?b", $1'),
        ("SELECT ? -- what?\n, ?", TWO, "SELECT $1 -- what?\n, $2"),
        ("SELECT ? -- trailing ?", ONE, "SELECT $1 -- trailing ?"),
        ("SELECT /* ? /* nested ? */ still ? */ ?", ONE, "SELECT /* ? /* nested ? */ still ? */ $1"),
        ("SELECT $$ ? $$, ?", ONE, "SELECT $$ ? $$, $1"),
        ("SELECT $tag$ ? $other$ ? $tag$, ?", ONE, "SELECT $tag$ ? $other$ ? $tag$, $1"),
        ("SELECT a$b, ?", ONE, "SELECT a$b, $1"),  # `$` inside a word opens no dollar quote
        ("SELECT U&'d\\0061t?', ?", ONE, "SELECT U&'d\\0061t?', $1"),
        ("SELECT ?1, ?1, ?2", TWO, "SELECT $1, $1, $2"),
        ("SELECT ?2, ?1", TWO, "SELECT $1, $2"),
        ("SELECT x::text, :a", NAMED, "SELECT x::text, $1"),  # `::` is a cast, not a parameter
        ("SELECT 'a:b', :b", NAMED, "SELECT 'a:b', $1"),
        ("SELECT :b, :a, :b", NAMED, "SELECT $1, $2, $1"),
    ],
)
def test_placeholders_outside_literals_comments_and_quotes_become_dollar_numbers(
    sql: str, params: Params, expected: str
) -> None:
    assert to_postgres(sql, params)[0] == expected


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("SELECT ?, ?, ?", ("a", "b", "c")),
        ("SELECT ?3, ?1, ?2", ("a", "b", "c")),
        ("SELECT ?, ?1, ?", ("a", "b")),
        ("SELECT ?2, ?", ("a", "b", "c")),  # a bare ? after ?N is ?N+1 in SQLite
        ("SELECT ?1, ?3, ?", ("a", "b", "c", "d")),
        ("SELECT :b, :a, :b", {"a": "A", "b": "B"}),
        ("SELECT ? /* ? */, '?', ? -- ?", ("a", "b")),
    ],
)
def test_values_bind_as_sqlite_binds_them(sql: str, params: Params) -> None:
    """One statement, two engines: each `$n` gets the value SQLite gives the same placeholder."""
    expected = sqlite3.connect(":memory:").execute(sql, params).fetchone()
    text, values = to_postgres(sql, params)
    got = tuple(values[int(n) - 1] for n in re.findall(r"\$(\d+)", text))
    assert got == tuple(v for v in expected if v != "?")


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("SELECT ?2, ?", ("a", "b")),  # SQLite wants three values here
        ("SELECT ?, ?", ("a",)),
        ("SELECT ?", ("a", "b")),
        ("SELECT ?2", ("a",)),
    ],
)
def test_a_wrong_number_of_values_is_refused_like_sqlite_refuses_it(sql: str, params: Params) -> None:
    with pytest.raises(sqlite3.ProgrammingError):
        sqlite3.connect(":memory:").execute(sql, params)
    with pytest.raises(TenantMCPError, match="parameters"):
        to_postgres(sql, params)


@pytest.mark.parametrize(
    ("sql", "params", "message"),
    [
        ("SELECT 'open", (), "unterminated string literal"),
        ("SELECT E'open\\'", (), "unterminated string literal"),
        ('SELECT "open', (), "unterminated quoted identifier"),
        ("SELECT /* open /* nested */", (), "unterminated comment"),
        ("SELECT $x$ open $y$", (), "unterminated dollar-quoted string"),
        ("SELECT ?0", ("a",), "start at ?1"),
        ("SELECT :a", ("a",), "need a mapping"),
        ("SELECT ?", {"a": 1}, "needs a sequence"),
        ("SELECT :missing", {"a": 1}, "no value for SQL parameter :missing"),
    ],
)
def test_malformed_statements_and_mismatched_values_are_refused(
    sql: str, params: Params, message: str
) -> None:
    with pytest.raises(TenantMCPError, match=re.escape(message)):
        to_postgres(sql, params)


def test_the_values_are_reordered_not_the_callers_list() -> None:
    params: list[Any] = ["a", "b"]
    assert to_postgres("SELECT ?2, ?1, ?2", params) == ("SELECT $1, $2, $1", ["b", "a"])
    assert params == ["a", "b"]
