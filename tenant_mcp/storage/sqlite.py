"""The embedded backend: SQLite, one file per tenant, and the control plane's connection.

Every tenant gets its own SQLite file. A statement issued through `ctx.db`
runs on a connection that can only see that file: there is no tenant filter to forget, and an
SQLite authorizer refuses `ATTACH`, `DETACH` and pragmas, so raw SQL cannot open another
tenant's file either. Connections are pooled with an upper bound (least recently used closed
first), opened lazily and migrated on first open, so an idle tenant costs nothing but its file.
"""

from __future__ import annotations

import base64
import re
import secrets
import sqlite3
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from tenant_mcp.errors import TenantMCPError
from tenant_mcp.storage.database import (
    DEFAULT_HOLD_SECONDS,
    Admit,
    OwnedUnit,
    PoolUsage,
    Result,
    TenantDatabase,
)
from tenant_mcp.storage.sql import GatewayRefusal, Params, constraint_errors

# Read-only introspection is harmless; every other pragma could change durability or the
# migration version, so tool code may not run it.
_ALLOWED_PRAGMAS = frozenset({"table_info", "table_xinfo", "index_list", "index_info", "foreign_key_list"})


# Python's sqlite3 reuses a prepared statement of the same text without asking the authorizer
# again, so the framework's own transaction statements carry a text tool code cannot guess:
# otherwise a tool's "COMMIT" would reuse the framework's authorized one.
_NONCE = secrets.token_hex(8)


def _own(statement: str) -> str:
    return f"{statement} /* tenant_mcp {_NONCE} */"


class _Handle:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn
        # Not a Lock: a call's connection can be released by another task (the hold-time reaper).
        self.lock = anyio.Semaphore(1)
        self.leases = 0
        self.trusted = False  # True while the framework itself runs pragmas/migrations/transactions
        self.refused: str | None = None  # why the authorizer refused the last statement


def _authorizer(handle: _Handle) -> Any:
    def authorize(
        action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None
    ) -> int:
        if handle.trusted:
            return sqlite3.SQLITE_OK
        if action in (sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT):
            # BEGIN/COMMIT/ROLLBACK/SAVEPOINT/RELEASE from tool SQL would end the call's unit of
            # work early or split it; ctx.db.transaction() issues the framework's own savepoints.
            handle.refused = (
                f"transaction control ({(arg1 or '').upper()}) is not allowed in ctx.db: each call is one"
                " unit of work; use `async with ctx.db.transaction():` for an all-or-nothing block"
            )
            return sqlite3.SQLITE_DENY
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() not in _ALLOWED_PRAGMAS:
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    return authorize


class DatabasePool:
    """Open connections to per-tenant databases, at most `max_open` idle ones at a time."""

    def __init__(
        self,
        data_dir: Path,
        migrations: Sequence[str] = (),
        *,
        max_open: int = 64,
        hold_seconds: float = DEFAULT_HOLD_SECONDS,
        admit: Admit | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.migrations = tuple(migrations)
        self.max_open = max_open
        self.hold_seconds = hold_seconds
        self.admit = admit
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

    def usage(self) -> PoolUsage:
        """Open tenant files, and how many a call holds (read from the metrics thread: one
        atomic copy of the table, no awaits)."""
        handles = list(self._handles.values())
        return PoolUsage("sqlite", len(handles), sum(1 for h in handles if h.lock.value == 0))

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
            if handle.leases == 0 and handle.lock.value:
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
        await conn.execute(_own("BEGIN IMMEDIATE"))
        try:
            async with conn.execute("PRAGMA user_version") as cur:  # another process may have won
                row = await cur.fetchone()
            version = row[0] if row else 0
            for number, script in enumerate(self.migrations[version:], start=version + 1):
                for statement in _split(script):
                    await conn.execute(statement)
                await conn.execute(_own(f"PRAGMA user_version = {int(number)}"))
            await conn.execute(_own("COMMIT"))
        except BaseException:
            await conn.execute(_own("ROLLBACK"))
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


_BUSY_AT_END = (
    "ctx.db was still in use by a task of the call when the call ended; the call's work was rolled back"
)


class _Unit(OwnedUnit):
    """One call's transaction on the tenant's file, holding the tenant's connection while it lasts.

    The call owns it: statements run one at a time; once the call has ended (or the connection was
    held past `hold_seconds`), every use is an error, also one that was waiting for the connection
    when the call ended; a statement still running then is interrupted and the work rolled back.
    """

    def __init__(self, pool: DatabasePool, tenant_id: str) -> None:
        super().__init__(tenant_id, pool.hold_seconds, pool.admit)
        self._pool = pool
        self._stack = AsyncExitStack()
        self._handle: _Handle | None = None
        self._lock = anyio.Lock()

    @asynccontextmanager
    async def _use(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            self._check_open()
            if self._handle is None:
                await self._admit()  # before the lease, so a deleted tenant's file is not re-created
                handle = await self._stack.enter_async_context(self._pool.lease(self._tenant_id))
                try:
                    await self._admit()
                    await _trusted(handle, _own("BEGIN"))
                    # The call may have ended while this waited: `finish` found no connection to
                    # release then, so this one must not be kept (no await between check and store).
                    self._check_open()
                except BaseException:
                    if handle.conn.in_transaction:
                        await _trusted(handle, _own("ROLLBACK"))
                    await self._stack.aclose()
                    raise
                self._handle = handle
                self._held()
            handle = self._handle
            handle.refused = None
            self._busy += 1
            try:
                with constraint_errors(sqlite3.IntegrityError):
                    yield handle.conn
            except sqlite3.DatabaseError as exc:
                if handle.refused is not None:
                    raise GatewayRefusal(handle.refused) from None
                if str(exc).startswith("no such table"):
                    raise TenantMCPError(
                        f"{exc} in the tenant's database: declare a migration that creates it "
                        "(app.migrations([...]); each tenant's file runs the new steps when next opened)"
                    ) from None
                raise
            finally:
                self._busy -= 1

    async def _end(self, *, commit: bool) -> None:
        if self._handle is None:
            return  # nothing held; a use still waiting for the lease releases it itself
        interrupted = self._busy > 0
        if interrupted:
            await self._handle.conn.interrupt()  # a task of the call is still running a statement
        async with self._lock:
            handle, self._handle = self._handle, None
            if handle is None:
                return
            async with self._stack:
                statement = "COMMIT" if commit and not interrupted else "ROLLBACK"
                try:
                    if statement == "COMMIT" or handle.conn.in_transaction:
                        await _trusted(handle, _own(statement))
                except BaseException:
                    if handle.conn.in_transaction:
                        await _trusted(handle, _own("ROLLBACK"))
                    raise
        if interrupted and commit:
            raise TenantMCPError(_BUSY_AT_END)

    async def execute(self, sql: str, params: Params) -> Result:
        async with self._use() as conn, conn.execute(sql, params) as cur:
            return Result(rowcount=cur.rowcount, lastrowid=cur.lastrowid)

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> int:
        async with self._use() as conn, conn.executemany(sql, rows) as cur:
            return cur.rowcount

    async def fetch_all(self, sql: str, params: Params) -> list[dict[str, Any]]:
        async with self._use() as conn, conn.execute(sql, params) as cur:
            return [dict(row) for row in await cur.fetchall()]

    async def fetch_one(self, sql: str, params: Params) -> dict[str, Any] | None:
        async with self._use() as conn, conn.execute(sql, params) as cur:
            row = await cur.fetchone()
        return dict(row) if row is not None else None

    async def insert(self, table: str, values: Mapping[str, Any]) -> int:
        placeholders = ", ".join("?" for _ in values)
        sql = f"INSERT INTO {table} ({', '.join(values)}) VALUES ({placeholders})"
        result = await self.execute(sql, list(values.values()))
        assert result.lastrowid is not None
        return result.lastrowid

    async def control(self, statement: str) -> None:
        async with self._use():
            assert self._handle is not None
            await _trusted(self._handle, _own(statement))


async def _trusted(handle: _Handle, statement: str) -> None:
    """Run one of the framework's own statements, which the authorizer refuses from tool code."""
    handle.trusted = True
    try:
        await handle.conn.execute(statement)
    finally:
        handle.trusted = False


class SQLiteStore(DatabasePool):
    """Tenant data in SQLite files: what `ctx.db`, the CLI and the test kit use on one machine."""

    def database(self, tenant_id: str) -> TenantDatabase:
        return TenantDatabase(_Unit(self, tenant_id))

    async def export(self, tenant_id: str) -> dict[str, list[dict[str, Any]]]:
        """Every table of the tenant's file, rows as dicts (BLOBs as base64)."""
        path = self.path(tenant_id)
        return await anyio.to_thread.run_sync(_dump, path) if path.exists() else {}

    async def plant_canary(self, tenant_id: str, value: str) -> None:
        async with self.lease(tenant_id) as handle:
            await handle.conn.execute("CREATE TABLE IF NOT EXISTS tenant_mcp_canaries (value TEXT NOT NULL)")
            await handle.conn.execute("INSERT INTO tenant_mcp_canaries (value) VALUES (?)", (value,))


def _dump(path: Path) -> dict[str, list[dict[str, Any]]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        return {
            table: [
                {k: (base64.b64encode(v).decode() if isinstance(v, bytes) else v) for k, v in dict(r).items()}
                for r in conn.execute(f'SELECT * FROM "{table}"')
            ]
            for table in tables
        }
    finally:
        conn.close()


class _Statements:
    """Control-plane statements on one aiosqlite connection, rows as dicts."""

    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        with constraint_errors(sqlite3.IntegrityError):
            async with self._conn.execute(sql, params) as cur:
                return cur.rowcount

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> None:
        await self._conn.executemany(sql, rows)

    async def fetch_all(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        async with self._conn.execute(sql, params) as cur:
            return [dict(row) for row in await cur.fetchall()]

    async def fetch_one(self, sql: str, params: Params = ()) -> dict[str, Any] | None:
        async with self._conn.execute(sql, params) as cur:
            row = await cur.fetchone()
        return dict(row) if row is not None else None


class SQLiteDatabase(_Statements):
    """The control plane's connection. One connection serves the process, so every statement
    waits for a transaction in progress (which would otherwise swallow it) to end."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        super().__init__(conn)
        self._lock = anyio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SQLiteDatabase:
        conn = await aiosqlite.connect(path, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        for pragma in (
            "busy_timeout = 10000",
            "journal_mode = WAL",
            "synchronous = NORMAL",
            "foreign_keys = ON",
        ):
            await conn.execute(f"PRAGMA {pragma}")
        return cls(conn)

    async def close(self) -> None:
        await self._conn.close()

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self._lock:
            return await super().execute(sql, params)

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> None:
        async with self._lock:
            await super().execute_many(sql, rows)

    async def fetch_all(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        async with self._lock:
            return await super().fetch_all(sql, params)

    async def fetch_one(self, sql: str, params: Params = ()) -> dict[str, Any] | None:
        async with self._lock:
            return await super().fetch_one(sql, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Statements]:
        """A write transaction holding the connection until it ends."""
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield _Statements(self._conn)
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            await self._conn.execute("COMMIT")
