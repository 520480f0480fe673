"""`ctx.db`: the caller's tenant database, the same API on every backend.

Every tool call, resource read and prompt is one unit of work: the first use of `ctx.db` begins a
transaction, which commits when the handler returns and rolls back when it raises.
`ctx.db.transaction()` adds an inner all-or-nothing block (a savepoint). No method takes a
tenant: the backend bound it before tool code got the object.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from opentelemetry import trace

from tenant_mcp.errors import TenantMCPError
from tenant_mcp.storage.sql import GatewayRefusal, Params

T = TypeVar("T")

# How long one call may hold its database connection (a pooled PostgreSQL connection, or the
# tenant's SQLite file) before it is rolled back and released: a stuck or stray task of one tenant
# must not starve the others. `TenantMCP(db_hold_seconds=...)` changes it.
DEFAULT_HOLD_SECONDS = 30.0

Admit = Callable[[str], Awaitable[None]]
"""Raises unless the tenant (by id) may still use its data: checked when a call acquires it."""

_tracer = trace.get_tracer("tenant_mcp.db")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_EPOCH_MS = 1_704_067_200_000  # 2024-01-01
_id_lock = threading.Lock()
_last_id = 0


def new_id() -> int:
    """A positive integer id, unique across tenants and increasing in time.

    Per-tenant databases would each count from 1, so ids of different tenants would collide and
    "tenant B asks for tenant A's id 7" would hit B's own row 7. Ids from here are unique in the
    process (time in ms, 13 random bits, never repeating) and below 2**53, so JavaScript clients
    read them exactly.
    """
    global _last_id
    candidate = ((int(time.time() * 1000) - _EPOCH_MS) << 13) | secrets.randbits(13)
    with _id_lock:
        _last_id = max(candidate, _last_id + 1)
        return _last_id


def _verb(sql: str) -> str:
    """The statement's first word, upper case: a span name's detail that carries no data."""
    word = sql.lstrip().split(None, 1)[0] if sql.strip() else ""
    return word.upper()[:16] if word.isalpha() else "SQL"


def check_identifier(name: str) -> str:
    if not _IDENT.fullmatch(name):
        raise TenantMCPError(f"invalid SQL identifier {name!r}")
    return name


class OwnedUnit:
    """The lifetime both backends' units share: the call owns its connection.

    Once the call has ended, or has held the connection past `hold_seconds`, every use is an
    error (`_check_open`), and the work is rolled back (`_end`, the backend's part). A use that
    was still waiting for a connection when the call ended must release what it gets itself.
    """

    def __init__(self, tenant_id: str, hold_seconds: float, admit: Admit | None) -> None:
        self._tenant_id = tenant_id
        self._hold_seconds = hold_seconds
        self._admit_tenant = admit
        self._busy = 0  # statements of the call running now
        self._ended: str | None = None  # why ctx.db may no longer be used
        self._expired = False
        self._expiry: asyncio.TimerHandle | None = None
        self._reaper: asyncio.Task[None] | None = None

    def _check_open(self) -> None:
        if self._ended is not None:
            raise TenantMCPError(self._ended)

    async def _admit(self) -> None:
        if self._admit_tenant is not None:
            await self._admit_tenant(self._tenant_id)

    def _held(self) -> None:
        """The connection is now the call's: start the clock on how long it may keep it."""
        self._expiry = asyncio.get_running_loop().call_later(self._hold_seconds, self._expire)

    def _expire(self) -> None:
        self._expired = True
        self._ended = (
            f"ctx.db held its database connection longer than {self._hold_seconds:g} s;"
            " the call's work was rolled back"
        )
        self._reaper = asyncio.ensure_future(self._end(commit=False))

    async def finish(self, *, commit: bool) -> None:
        if self._ended is None:
            self._ended = "ctx.db was used after its call ended"
        if self._expiry is not None:
            self._expiry.cancel()
        if self._reaper is not None:
            await self._reaper
        await self._end(commit=commit)
        if commit and self._expired:
            raise TenantMCPError(self._ended)

    async def _end(self, *, commit: bool) -> None:
        """Commit or roll back and release the connection, if one is held (the backend's part)."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class PoolUsage:
    """A data store's connections right now, for the metrics: `open` (on SQLite, one per tenant
    file kept open) and `in_use` (held by a call), on `backend` (``sqlite`` or ``postgresql``)."""

    backend: str
    open: int
    in_use: int


@dataclass(frozen=True, slots=True)
class Result:
    """What a write did: rows changed, and (SQLite only) the rowid of the last inserted row."""

    rowcount: int
    lastrowid: int | None


class UnitOfWork(Protocol):
    """One call's transaction on one backend, begun lazily on first use."""

    async def execute(self, sql: str, params: Params) -> Result: ...
    async def execute_many(self, sql: str, rows: Iterable[Params]) -> int: ...
    async def fetch_all(self, sql: str, params: Params) -> list[dict[str, Any]]: ...
    async def fetch_one(self, sql: str, params: Params) -> dict[str, Any] | None: ...
    async def insert(self, table: str, values: Mapping[str, Any]) -> int: ...
    async def control(self, statement: str) -> None:
        """Run a framework statement (savepoints) that tool code may not issue itself."""

    async def finish(self, *, commit: bool) -> None: ...


class TenantDatabase:
    """`ctx.db`: the caller's tenant database. No method takes a tenant: it is already bound."""

    def __init__(self, unit: UnitOfWork) -> None:
        self._unit = unit
        self._savepoints = itertools.count(1)
        self._finished = False
        self.refusal: str | None = None  # why the gateway refused a statement, for the audit trail

    def _live(self) -> UnitOfWork:
        if self._finished:
            raise TenantMCPError("ctx.db was used after its call ended")
        return self._unit

    async def _run(self, sql: str, operation: Awaitable[T]) -> T:
        # A child span of the request's (it carries the tenant); a no-op without a tracing SDK.
        with _tracer.start_as_current_span("ctx.db", attributes={"db.operation.name": _verb(sql)}):
            try:
                return await operation
            except GatewayRefusal as exc:
                self.refusal = str(exc)
                raise

    async def _finish(self, *, commit: bool) -> None:
        """End the call's unit of work. Called by the framework, never by tool code."""
        if not self._finished:
            self._finished = True
            await self._unit.finish(commit=commit)

    async def execute(self, sql: str, params: Params = ()) -> Result:
        """Run one statement with parameters (``?``, ``?1`` or ``:name``). Never format values into SQL."""
        return await self._run(sql, self._live().execute(sql, params))

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> int:
        return await self._run(sql, self._live().execute_many(sql, rows))

    async def fetch_all(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        return await self._run(sql, self._live().fetch_all(sql, params))

    async def fetch_one(self, sql: str, params: Params = ()) -> dict[str, Any] | None:
        return await self._run(sql, self._live().fetch_one(sql, params))

    async def fetch_value(self, sql: str, params: Params = ()) -> Any:
        row = await self.fetch_one(sql, params)
        return next(iter(row.values()), None) if row else None

    async def insert(self, table: str, values: Mapping[str, Any]) -> int:
        """Insert one row and return its id: the rowid on SQLite, the ``id`` column on PostgreSQL.

        Table and column names are checked identifiers; values are always parameters.
        """
        for column in values:
            check_identifier(column)
        return await self._run("INSERT", self._live().insert(check_identifier(table), values))

    async def get(self, table: str, key: Any, *, column: str = "id") -> dict[str, Any] | None:
        sql = f"SELECT * FROM {check_identifier(table)} WHERE {check_identifier(column)} = ?"
        return await self.fetch_one(sql, (key,))

    async def delete(self, table: str, key: Any, *, column: str = "id") -> bool:
        sql = f"DELETE FROM {check_identifier(table)} WHERE {check_identifier(column)} = ?"
        return (await self.execute(sql, (key,))).rowcount > 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[TenantDatabase]:
        """All or nothing for the block, even when the surrounding call catches the error."""
        unit = self._live()
        name = f"tenant_mcp_sp{next(self._savepoints)}"
        await unit.control(f"SAVEPOINT {name}")
        try:
            yield self
        except BaseException:
            await unit.control(f"ROLLBACK TO SAVEPOINT {name}")
            await unit.control(f"RELEASE SAVEPOINT {name}")
            raise
        await unit.control(f"RELEASE SAVEPOINT {name}")
