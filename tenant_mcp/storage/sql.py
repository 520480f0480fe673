"""SQL text handling shared by the backends: one statement written once, run on either engine.

Statements are written the SQLite way (``?``, ``?1``, ``:name`` placeholders). For PostgreSQL
they are rewritten to ``$1``-style placeholders by a small lexer that skips string literals,
quoted identifiers and comments, so a ``?`` inside ``'what?'`` stays text. What the lexer
produces is what the PostgreSQL gateway then parses and checks (`storage.gateway`), so a lexer
mistake can make a statement fail, never slip past the check.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from functools import lru_cache
from typing import Any, Protocol

from tenant_mcp.errors import TenantMCPError

Params = Sequence[Any] | Mapping[str, Any]

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_PARAM = re.compile(r"\?(\d*)")


def _placeholders(sql: str) -> Iterator[tuple[str, int, int]]:
    """Each ``?``, ``?N`` and ``:name`` of `sql` with where it stands; literals, quoted names,
    comments and words (which may contain ``$``) are stepped over, never searched."""
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c == "'" or (c in "eE" and sql.startswith("'", i + 1)):
            backslashes = c != "'"
            i += 1 if c == "'" else 2
            while i < n:
                if backslashes and sql[i] == "\\":
                    i += 2
                    continue
                if sql[i] == "'":
                    if sql.startswith("'", i + 1):
                        i += 2
                        continue
                    break
                i += 1
            if i >= n:
                raise TenantMCPError("unterminated string literal in SQL")
            i += 1
        elif c == '"':
            end = sql.find('"', i + 1)
            while end != -1 and sql.startswith('"', end + 1):
                end = sql.find('"', end + 2)
            if end == -1:
                raise TenantMCPError("unterminated quoted identifier in SQL")
            i = end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end == -1 else end + 1
        elif sql.startswith("/*", i):
            i = _comment_end(sql, i)
        elif c == "$" and (m := _DOLLAR_TAG.match(sql, i)):
            end = sql.find(m.group(0), m.end())
            if end == -1:
                raise TenantMCPError("unterminated dollar-quoted string in SQL")
            i = end + len(m.group(0))
        elif c == "?":
            m = _PARAM.match(sql, i)
            assert m is not None
            yield m.group(0), i, m.end()
            i = m.end()
        elif c == ":" and sql.startswith("::", i):
            i += 2  # a PostgreSQL cast, not a named parameter
        elif c == ":" and (m := _WORD.match(sql, i + 1)):
            yield sql[i : m.end()], i, m.end()
            i = m.end()
        elif (m := _WORD.match(sql, i)) and (i == 0 or not (sql[i - 1].isalnum() or sql[i - 1] in "_$")):
            i = m.end()
        else:
            i += 1


def _comment_end(sql: str, start: int) -> int:
    """Where a block comment opened at `start` ends, counting nested ones as PostgreSQL does."""
    depth, i = 0, start
    while i < len(sql):
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    raise TenantMCPError("unterminated comment in SQL")


@lru_cache(maxsize=1024)
def _numbered(sql: str) -> tuple[str, tuple[str | int, ...]]:
    """`sql` with ``$n`` placeholders, and for each ``$n`` the name or index it takes its value from."""
    out: list[str] = []
    order: list[str | int] = []
    last = 0
    following = 0  # the index a bare `?` takes: one past the largest so far, as in SQLite
    for text, start, end in _placeholders(sql):
        if text == "?":
            key: str | int = following
            following += 1
        elif text.startswith("?"):
            key = int(text[1:]) - 1
            if key < 0:
                raise TenantMCPError("SQL parameter numbers start at ?1")
            following = max(following, key + 1)
        else:
            key = text[1:]
        if key not in order:
            order.append(key)
        out.append(sql[last:start])
        out.append(f"${order.index(key) + 1}")
        last = end
    out.append(sql[last:])
    return "".join(out), tuple(order)


def to_postgres(sql: str, params: Params = ()) -> tuple[str, list[Any]]:
    """Rewrite SQLite-style placeholders to PostgreSQL's, and the values to match."""
    text, order = _numbered(sql)
    if isinstance(params, Mapping):
        try:
            return text, [params[k] if isinstance(k, str) else _positional(k) for k in order]
        except KeyError as exc:
            raise TenantMCPError(f"no value for SQL parameter :{exc.args[0]}") from None
    values = list(params)
    indices = [k for k in order if isinstance(k, int)]
    if len(indices) != len(order):
        raise TenantMCPError("named SQL parameters (:name) need a mapping of values")
    needed = max(indices) + 1 if indices else 0
    if needed != len(values):
        raise TenantMCPError(f"the SQL takes {needed} parameters, {len(values)} given")
    return text, [values[k] for k in indices]


def _positional(index: int) -> Any:
    raise TenantMCPError(f"positional SQL parameter ?{index + 1} needs a sequence of values")


class GatewayRefusal(TenantMCPError):
    """A `ctx.db` statement that could leave the caller's tenant, refused before the database."""


class ConstraintError(TenantMCPError):
    """A statement broke a UNIQUE, CHECK or FOREIGN KEY constraint (either backend)."""


@contextmanager
def constraint_errors(engine_error: type[Exception]) -> Iterator[None]:
    """The engine's exception for a broken constraint as `ConstraintError`, the same on both backends."""
    try:
        yield
    except engine_error as exc:
        raise ConstraintError(str(exc)) from None


class Connection(Protocol):
    """What the control plane needs from a database connection, on either backend.

    Statements use ``?`` placeholders; rows come back as dicts.
    """

    dialect: str

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement; returns the number of rows it changed."""

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> None: ...
    async def fetch_all(self, sql: str, params: Params = ()) -> list[dict[str, Any]]: ...
    async def fetch_one(self, sql: str, params: Params = ()) -> dict[str, Any] | None: ...


class Database(Connection, Protocol):
    def transaction(self) -> AbstractAsyncContextManager[Connection]: ...
    async def close(self) -> None: ...
