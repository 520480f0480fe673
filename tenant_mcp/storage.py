"""Tenant data: `ctx.db`, isolated below the query.

The embedded backend gives every tenant its own SQLite file. A statement issued through `ctx.db`
runs on a connection that can only see that file: there is no tenant filter to forget, and an
SQLite authorizer refuses `ATTACH`, `DETACH` and pragmas, so raw SQL cannot open another
tenant's file either. Connections are pooled with an upper bound (least recently used closed
first), opened lazily and migrated on first open, so an idle tenant costs nothing but its file.

Every tool call, resource read and prompt is one unit of work: the first use of `ctx.db` begins a
transaction, which commits when the handler returns and rolls back when it raises.
`ctx.db.transaction()` adds an inner all-or-nothing block (a savepoint).
"""

from __future__ import annotations

import itertools
import re
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from tenant_mcp.errors import TenantMCPError

Params = Sequence[Any] | Mapping[str, Any]
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# Read-only introspection is harmless; every other pragma could change durability or the
# migration version, so tool code may not run it.
_ALLOWED_PRAGMAS = frozenset({"table_info", "table_xinfo", "index_list", "index_info", "foreign_key_list"})
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


def _check_identifier(name: str) -> str:
    if not _IDENT.match(name):
        raise TenantMCPError(f"invalid SQL identifier {name!r}")
    return name


@dataclass(frozen=True, slots=True)
class Result:
    """What a write did: rows changed, and the rowid of the last inserted row."""

    rowcount: int
    lastrowid: int | None


class _Handle:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn
        self.lock = anyio.Lock()
        self.leases = 0
        self.trusted = False  # True while the framework itself runs pragmas/migrations


def _authorizer(handle: _Handle) -> Any:
    def authorize(
        action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None
    ) -> int:
        if handle.trusted:
            return sqlite3.SQLITE_OK
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() not in _ALLOWED_PRAGMAS:
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    return authorize


class DatabasePool:
    """Open connections to per-tenant databases, at most `max_open` idle ones at a time."""

    def __init__(self, data_dir: Path, migrations: Sequence[str] = (), *, max_open: int = 64) -> None:
        self.data_dir = data_dir
        self.migrations = tuple(migrations)
        self.max_open = max_open
        self._handles: OrderedDict[str, _Handle] = OrderedDict()
        self._open_lock = anyio.Lock()

    def path(self, tenant_id: str) -> Path:
        # Tenant ids are hex uuids we generated; checked anyway because this builds a path.
        if not re.fullmatch(r"[0-9a-f]{32}", tenant_id):
            raise TenantMCPError("invalid tenant id")
        return self.data_dir / f"{tenant_id}.sqlite3"

    @property
    def open_count(self) -> int:
        return len(self._handles)

    async def _handle(self, tenant_id: str) -> _Handle:
        handle = self._handles.get(tenant_id)
        if handle is not None:
            self._handles.move_to_end(tenant_id)
            return handle
        async with self._open_lock:
            handle = self._handles.get(tenant_id)
            if handle is None:
                await self._evict(self.max_open - 1)
                handle = await self._open(tenant_id)
                self._handles[tenant_id] = handle
            return handle

    async def _evict(self, keep: int) -> None:
        for tenant_id in list(self._handles):
            if len(self._handles) <= keep:
                return
            handle = self._handles[tenant_id]
            if handle.leases == 0 and not handle.lock.locked():
                del self._handles[tenant_id]
                await handle.conn.close()

    async def _open(self, tenant_id: str) -> _Handle:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(self.path(tenant_id), isolation_level=None)
        conn.row_factory = aiosqlite.Row
        handle = _Handle(conn)
        handle.trusted = True
        try:
            # One round trip to the connection's thread: opening is on the path of a cold tenant.
            await conn.executescript(
                "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL;"
                " PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;"
            )
            await conn.set_authorizer(_authorizer(handle))
            await self._migrate(conn)
        except BaseException:
            await conn.close()
            raise
        finally:
            handle.trusted = False
        return handle

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        async with conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = row[0] if row else 0
        if version >= len(self.migrations):
            return
        await conn.execute("BEGIN IMMEDIATE")
        try:
            async with conn.execute("PRAGMA user_version") as cur:  # another process may have won
                row = await cur.fetchone()
            version = row[0] if row else 0
            for number, script in enumerate(self.migrations[version:], start=version + 1):
                for statement in _split(script):
                    await conn.execute(statement)
                await conn.execute(f"PRAGMA user_version = {int(number)}")
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise

    @asynccontextmanager
    async def lease(self, tenant_id: str) -> AsyncIterator[_Handle]:
        """Hold a tenant's connection exclusively: one unit of work at a time per tenant."""
        handle = await self._handle(tenant_id)
        handle.leases += 1
        try:
            async with handle.lock:
                yield handle
        finally:
            handle.leases -= 1

    async def drop(self, tenant_id: str) -> None:
        """Close the tenant's connection and delete its files."""
        async with self._open_lock:
            handle = self._handles.pop(tenant_id, None)
            if handle is not None:
                await handle.conn.close()
        remove_files(self.path(tenant_id))

    async def aclose(self) -> None:
        async with self._open_lock:
            handles, self._handles = list(self._handles.values()), OrderedDict()
            for handle in handles:
                await handle.conn.close()


def _split(script: str) -> Iterable[str]:
    """Split a migration into statements, using SQLite's own notion of a complete statement."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip().rstrip(";").strip():
                yield buffer
            buffer = ""
    if buffer.strip():
        yield buffer


def remove_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


class TenantDatabase:
    """`ctx.db`: the caller's tenant database. No method takes a tenant: it is already bound."""

    def __init__(self, pool: DatabasePool, tenant_id: str) -> None:
        self._pool = pool
        self._tenant_id = tenant_id
        self._stack = AsyncExitStack()
        self._handle: _Handle | None = None
        self._savepoints = itertools.count(1)
        self._finished = False

    async def _conn(self) -> aiosqlite.Connection:
        if self._finished:
            raise TenantMCPError("ctx.db was used after its call ended")
        if self._handle is None:
            handle = await self._stack.enter_async_context(self._pool.lease(self._tenant_id))
            try:
                await handle.conn.execute("BEGIN")
            except BaseException:
                await self._stack.aclose()
                raise
            self._handle = handle
        return self._handle.conn

    async def _finish(self, *, commit: bool) -> None:
        """End the call's unit of work. Called by the framework, never by tool code."""
        self._finished = True
        if self._handle is None:
            return
        conn, self._handle = self._handle.conn, None
        async with self._stack:
            try:
                await conn.execute("COMMIT" if commit else "ROLLBACK")
            except BaseException:
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                raise

    async def execute(self, sql: str, params: Params = ()) -> Result:
        """Run one statement with parameters (``?`` or ``:name``). Never format values into SQL."""
        conn = await self._conn()
        async with conn.execute(sql, params) as cur:
            return Result(rowcount=cur.rowcount, lastrowid=cur.lastrowid)

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> int:
        conn = await self._conn()
        async with conn.executemany(sql, rows) as cur:
            return cur.rowcount

    async def fetch_all(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        conn = await self._conn()
        async with conn.execute(sql, params) as cur:
            return [dict(row) for row in await cur.fetchall()]

    async def fetch_one(self, sql: str, params: Params = ()) -> dict[str, Any] | None:
        conn = await self._conn()
        async with conn.execute(sql, params) as cur:
            row = await cur.fetchone()
        return dict(row) if row is not None else None

    async def fetch_value(self, sql: str, params: Params = ()) -> Any:
        conn = await self._conn()
        async with conn.execute(sql, params) as cur:
            row = await cur.fetchone()
        return row[0] if row is not None else None

    async def insert(self, table: str, values: Mapping[str, Any]) -> int:
        """Insert one row; returns its rowid. Table and column names are checked identifiers."""
        columns = [_check_identifier(c) for c in values]
        placeholders = ", ".join("?" for _ in columns)
        sql = f"INSERT INTO {_check_identifier(table)} ({', '.join(columns)}) VALUES ({placeholders})"
        result = await self.execute(sql, list(values.values()))
        assert result.lastrowid is not None
        return result.lastrowid

    async def get(self, table: str, key: Any, *, column: str = "id") -> dict[str, Any] | None:
        sql = f"SELECT * FROM {_check_identifier(table)} WHERE {_check_identifier(column)} = ?"
        return await self.fetch_one(sql, (key,))

    async def delete(self, table: str, key: Any, *, column: str = "id") -> bool:
        sql = f"DELETE FROM {_check_identifier(table)} WHERE {_check_identifier(column)} = ?"
        return (await self.execute(sql, (key,))).rowcount > 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[TenantDatabase]:
        """All or nothing for the block, even when the surrounding call catches the error."""
        conn = await self._conn()
        name = f"tenant_mcp_sp{next(self._savepoints)}"
        await conn.execute(f"SAVEPOINT {name}")
        try:
            yield self
        except BaseException:
            await conn.execute(f"ROLLBACK TO {name}")
            await conn.execute(f"RELEASE {name}")
            raise
        await conn.execute(f"RELEASE {name}")
