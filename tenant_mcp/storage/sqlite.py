"""The embedded backend: SQLite, one file per tenant, and the control plane's connection.

Every tenant gets its own SQLite file. A statement issued through `ctx.db`
runs on a connection that can only see that file: there is no tenant filter to forget, and an
SQLite authorizer refuses `ATTACH`, `DETACH` and pragmas, so raw SQL cannot open another
tenant's file either. Connections are pooled with an upper bound (least recently used closed
first), opened lazily and migrated on first open, so an idle tenant costs nothing but its file.
Statements run on a few worker threads shared by every tenant's connection
(`tenant_mcp.storage.threads`; the control plane's connection has its own): an open tenant holds a
connection, not a thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import re
import secrets
import sqlite3
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

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
from tenant_mcp.storage.threads import Serial, Workers

R = TypeVar("R")
logger = logging.getLogger(__name__)

# Read-only introspection is harmless; every other pragma could change durability or the
# migration version, so tool code may not run it.
_ALLOWED_PRAGMAS = frozenset({"table_info", "table_xinfo", "index_list", "index_info", "foreign_key_list"})


# Python's sqlite3 reuses a prepared statement of the same text without asking the authorizer
# again, so the framework's own transaction statements carry a text tool code cannot guess:
# otherwise a tool's "COMMIT" would reuse the framework's authorized one.
_NONCE = secrets.token_hex(8)


def _own(statement: str) -> str:
    return f"{statement} /* tenant_mcp {_NONCE} */"


# Every tenant's SQLite connection runs its statements on these few threads; an open connection
# holds no thread of its own. The control plane has its own, so that authentication never queues
# behind tenants' slow statements.
WORKERS = Workers()
_CONTROL_WORKERS = Workers(core=1, limit=2)
# Prepared statements kept per open tenant: a tool issues a handful of distinct texts; the cache
# is memory held by every pooled connection.
_STATEMENTS = 32


class _Handle:
    """A tenant's connection: opened lazily by its first job, in a worker thread."""

    def __init__(self, pool: DatabasePool, tenant_id: str) -> None:
        self._pool = pool
        self._tenant_id = tenant_id
        self._serial = Serial(WORKERS)
        self.sqlite: sqlite3.Connection | None = None
        self.closed = False
        # Not a Lock: a call's connection can be released by another task (the hold-time reaper).
        self.lock = anyio.Semaphore(1)
        self.leases = 0
        self.trusted = False  # True while the framework itself runs pragmas/migrations/transactions
        self.refused: str | None = None  # why the authorizer refused the last statement

    def run(self, job: Callable[[sqlite3.Connection], R]) -> asyncio.Future[R]:
        """Run `job` on the connection in a worker thread, after the jobs queued before it."""
        return self._serial.run(lambda: job(self.connection()))

    def connection(self) -> sqlite3.Connection:
        """The open connection (in a worker thread: opens it on first use)."""
        if self.closed:
            raise TenantMCPError("the tenant's database connection was closed")
        if self.sqlite is None:
            self.sqlite = self._pool._connect(self._tenant_id, self)
        return self.sqlite

    def trusted_statement(self, statement: str) -> None:
        """One of the framework's own statements, which the authorizer refuses from tool code."""
        conn = self.connection()
        self.trusted = True
        try:
            conn.execute(statement).close()
        finally:
            self.trusted = False

    def interrupt(self) -> None:
        if self.sqlite is not None:
            self.sqlite.interrupt()  # thread-safe: stops the statement running in a worker

    def close(self) -> asyncio.Future[None]:
        def close() -> None:
            self.closed = True
            if self.sqlite is not None:
                self.sqlite.close()
                self.sqlite = None

        return self._serial.run(close)


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
        self._closing: dict[str, asyncio.Future[None]] = {}
        # tenant id -> (device, inode) of a file this process found migrated: the next open of the
        # same file skips the schema check. A file swapped for another is usually a new inode; one
        # restored in place under a running server is checked again at the next start.
        self._migrated: dict[str, tuple[int, int]] = {}

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

    def _handle(self, tenant_id: str) -> _Handle:
        # No await: a handle is created and registered at once; its connection opens in its first job.
        handle = self._handles.get(tenant_id)
        if handle is not None:
            self._handles.move_to_end(tenant_id)
            return handle
        self.path(tenant_id)
        self._evict(self.max_open - 1)
        handle = self._handles[tenant_id] = _Handle(self, tenant_id)
        return handle

    def _evict(self, keep: int) -> None:
        for tenant_id in list(self._handles):
            if len(self._handles) <= keep:
                return
            handle = self._handles[tenant_id]
            if handle.leases == 0 and handle.lock.value:
                del self._handles[tenant_id]
                # Closing (a WAL checkpoint) is not the next tenant's wait; `drop` and `aclose` await it.
                closing = self._closing[tenant_id] = handle.close()
                closing.add_done_callback(functools.partial(self._closed, tenant_id))

    def _closed(self, tenant_id: str, closing: asyncio.Future[None]) -> None:
        if self._closing.get(tenant_id) is closing:
            del self._closing[tenant_id]
        if not closing.cancelled() and closing.exception() is not None:
            logger.warning("closing a tenant database failed: %s", closing.exception())

    def _connect(self, tenant_id: str, handle: _Handle) -> sqlite3.Connection:
        """Open and prepare a tenant's connection (in a worker thread)."""
        path = self.path(tenant_id)
        try:
            stat = path.stat()
            identity: tuple[int, int] | None = (stat.st_dev, stat.st_ino)
        except FileNotFoundError:
            identity = None
            self.data_dir.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=10, cached_statements=_STATEMENTS
        )
        handle.trusted = True
        try:
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            if identity is None or self._migrated.get(tenant_id) != identity:
                conn.execute("PRAGMA journal_mode = WAL")
                self._migrate(conn)
                stat = path.stat()
                self._migrated[tenant_id] = (stat.st_dev, stat.st_ino)
            conn.set_authorizer(_authorizer(handle))
        except BaseException:
            conn.close()
            raise
        finally:
            handle.trusted = False
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        if _user_version(conn) >= len(self.migrations):
            return
        conn.execute(_own("BEGIN IMMEDIATE"))
        try:
            version = _user_version(conn)  # another process may have won
            for number, script in enumerate(self.migrations[version:], start=version + 1):
                for statement in _split(script):
                    conn.execute(statement)
                conn.execute(_own(f"PRAGMA user_version = {int(number)}"))
            conn.execute(_own("COMMIT"))
        except BaseException:
            conn.execute(_own("ROLLBACK"))
            raise

    @asynccontextmanager
    async def lease(self, tenant_id: str) -> AsyncIterator[_Handle]:
        """Hold a tenant's connection exclusively: one unit of work at a time per tenant."""
        handle = self._handle(tenant_id)
        handle.leases += 1
        try:
            async with handle.lock:
                yield handle
        finally:
            handle.leases -= 1

    async def drop(self, tenant_id: str) -> None:
        """Close the tenant's connection and delete its files."""
        handle = self._handles.pop(tenant_id, None)
        self._migrated.pop(tenant_id, None)
        if handle is not None:
            await handle.close()
        closing = self._closing.get(tenant_id)
        if closing is not None:
            await asyncio.shield(closing)
        remove_files(self.path(tenant_id))

    async def aclose(self) -> None:
        handles, self._handles = list(self._handles.values()), OrderedDict()
        for closing in [handle.close() for handle in handles] + list(self._closing.values()):
            with contextlib.suppress(Exception):
                await closing


def _user_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0]) if row else 0


def _split(script: str) -> Iterable[str]:
    """Split a migration into statements, using SQLite's own notion of a complete statement (a
    semicolon inside a literal or a trigger body does not end one; two on one line are two)."""
    start = 0
    for end, char in enumerate(script):
        if char == ";" and sqlite3.complete_statement(script[start : end + 1]):
            if script[start:end].strip():
                yield script[start : end + 1]
            start = end + 1
    if script[start:].strip():
        yield script[start:]


def remove_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _missing_table(error: str, migrations: Sequence[str]) -> str:
    """What a tool author needs to know when a statement names a table no migration made."""
    table = error.removeprefix("no such table:").strip()
    creates = re.compile(rf"CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?[\"`]?{re.escape(table)}\b", re.I)
    steps = [n for n, script in enumerate(migrations, 1) if creates.search(script)]
    if steps:
        return f"{error} in the tenant's database, though migration {steps[0]} creates it: was it dropped?"
    return (
        f"{error} in the tenant's database: none of the app's {len(migrations)} migration(s) creates it; "
        "add one (app.migrations([...]); each tenant's file runs the new steps when next opened)"
    )


_BUSY_AT_END = (
    "ctx.db was still in use by a task of the call when the call ended; the call's work was rolled back"
)


class _Unit(OwnedUnit):
    """One call's transaction on the tenant's file, holding the tenant's connection while it lasts.

    The call owns it: statements run one at a time; once the call has ended (or the connection was
    held past `hold_seconds`), every use is an error, also one that was waiting for the connection
    when the call ended; a statement still running then is interrupted and the work rolled back.
    The first statement's job begins the transaction (and opens a cold tenant's file), so a call
    costs two hand-offs to a worker thread: its first statement and its end.
    """

    def __init__(self, pool: DatabasePool, tenant_id: str) -> None:
        super().__init__(tenant_id, pool.hold_seconds, pool.admit)
        self._pool = pool
        self._stack = AsyncExitStack()
        self._handle: _Handle | None = None
        self._lock = anyio.Lock()

    async def _call(self, job: Callable[[sqlite3.Connection], R], *, trusted: bool = False) -> R:
        async with self._lock:
            self._check_open()
            begin = self._handle is None
            if begin:
                await self._admit()  # before the lease, so a deleted tenant's file is not re-created
                leased = await self._stack.enter_async_context(self._pool.lease(self._tenant_id))
                try:
                    await self._admit()
                    # The call may have ended while this waited: `finish` found no connection to
                    # release then, so this one must not be kept (no await between check and store).
                    self._check_open()
                except BaseException:
                    await self._stack.aclose()
                    raise
                self._handle = leased
                self._held()
            handle = self._handle
            assert handle is not None

            def statement(conn: sqlite3.Connection) -> R:
                if begin:
                    handle.trusted_statement(_own("BEGIN"))
                handle.refused = None
                handle.trusted = trusted
                try:
                    return job(conn)
                finally:
                    handle.trusted = False

            self._busy += 1
            try:
                with constraint_errors(sqlite3.IntegrityError):
                    return await handle.run(statement)
            except sqlite3.DatabaseError as exc:
                if handle.refused is not None:
                    raise GatewayRefusal(handle.refused) from None
                if str(exc).startswith("no such table"):
                    raise TenantMCPError(_missing_table(str(exc), self._pool.migrations)) from None
                raise
            finally:
                self._busy -= 1

    async def _end(self, *, commit: bool) -> None:
        if self._handle is None:
            return  # nothing held; a use still waiting for the lease releases it itself
        interrupted = self._busy > 0
        if interrupted:
            self._handle.interrupt()  # a task of the call is still running a statement
        async with self._lock:
            handle, self._handle = self._handle, None
            if handle is None:
                return
            async with self._stack:
                await handle.run(
                    lambda conn: _close_transaction(handle, conn, commit=commit and not interrupted)
                )
        if interrupted and commit:
            raise TenantMCPError(_BUSY_AT_END)

    async def execute(self, sql: str, params: Params) -> Result:
        return await self._call(lambda conn: _result(conn.execute(sql, params)))

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> int:
        batch = list(rows)  # tool code's iterable is read here, not in a worker thread
        return await self._call(lambda conn: _rowcount(conn.executemany(sql, batch)))

    async def fetch_all(self, sql: str, params: Params) -> list[dict[str, Any]]:
        return await self._call(lambda conn: _fetch_all(conn, sql, params))

    async def fetch_one(self, sql: str, params: Params) -> dict[str, Any] | None:
        return await self._call(lambda conn: _fetch_one(conn, sql, params))

    async def insert(self, table: str, values: Mapping[str, Any]) -> int:
        placeholders = ", ".join("?" for _ in values)
        sql = f"INSERT INTO {table} ({', '.join(values)}) VALUES ({placeholders})"
        result = await self.execute(sql, list(values.values()))
        assert result.lastrowid is not None
        return result.lastrowid

    async def control(self, statement: str) -> None:
        await self._call(lambda conn: conn.execute(_own(statement)).close(), trusted=True)


def _close_transaction(handle: _Handle, conn: sqlite3.Connection, *, commit: bool) -> None:
    """Commit or roll back the call's transaction (in a worker thread)."""
    if commit:
        try:
            handle.trusted_statement(_own("COMMIT"))
        except BaseException:
            if conn.in_transaction:
                handle.trusted_statement(_own("ROLLBACK"))
            raise
    elif conn.in_transaction:
        handle.trusted_statement(_own("ROLLBACK"))


def _result(cur: sqlite3.Cursor) -> Result:
    result = Result(rowcount=cur.rowcount, lastrowid=cur.lastrowid)
    cur.close()
    return result


def _rowcount(cur: sqlite3.Cursor) -> int:
    count = cur.rowcount
    cur.close()
    return count


def _dicts(cur: sqlite3.Cursor, rows: list[Any]) -> list[dict[str, Any]]:
    names = [column[0] for column in cur.description or ()]
    if len(set(names)) == len(names):
        return [dict(zip(names, row, strict=True)) for row in rows]
    # Repeated column names (SELECT a.id, b.id): the first one wins, as with sqlite3.Row.
    return [{name: row[names.index(name)] for name in names} for row in rows]


def _fetch_all(conn: sqlite3.Connection, sql: str, params: Params) -> list[dict[str, Any]]:
    cur = conn.execute(sql, params)
    try:
        return _dicts(cur, cur.fetchall())
    finally:
        cur.close()


def _fetch_one(conn: sqlite3.Connection, sql: str, params: Params) -> dict[str, Any] | None:
    cur = conn.execute(sql, params)
    try:
        row = cur.fetchone()
        return _dicts(cur, [row])[0] if row is not None else None
    finally:
        cur.close()


class SQLiteStore(DatabasePool):
    """Tenant data in SQLite files: what `ctx.db`, the CLI and the test kit use on one machine."""

    def database(self, tenant_id: str) -> TenantDatabase:
        return TenantDatabase(_Unit(self, tenant_id))

    async def export(self, tenant_id: str) -> dict[str, list[dict[str, Any]]]:
        """Every table of the tenant's file, rows as dicts (BLOBs as base64)."""
        path = self.path(tenant_id)
        return await anyio.to_thread.run_sync(_dump, path) if path.exists() else {}

    async def plant_canary(self, tenant_id: str, value: str) -> None:
        def plant(conn: sqlite3.Connection) -> None:
            conn.execute("CREATE TABLE IF NOT EXISTS tenant_mcp_canaries (value TEXT NOT NULL)")
            conn.execute("INSERT INTO tenant_mcp_canaries (value) VALUES (?)", (value,))

        async with self.lease(tenant_id) as handle:
            await handle.run(plant)


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
    """Control-plane statements on one connection, run by the workers, rows as dicts."""

    dialect = "sqlite"

    def __init__(self, serial: Serial, conn: sqlite3.Connection) -> None:
        self._serial = serial
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        with constraint_errors(sqlite3.IntegrityError):
            return await self._serial.run(lambda: _rowcount(self._conn.execute(sql, params)))

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> None:
        batch = list(rows)
        with constraint_errors(sqlite3.IntegrityError):
            await self._serial.run(lambda: _rowcount(self._conn.executemany(sql, batch)))

    async def fetch_all(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        return await self._serial.run(lambda: _fetch_all(self._conn, sql, params))

    async def fetch_one(self, sql: str, params: Params = ()) -> dict[str, Any] | None:
        return await self._serial.run(lambda: _fetch_one(self._conn, sql, params))


class SQLiteDatabase(_Statements):
    """The control plane's connection. One connection serves the process, so every statement
    waits for a transaction in progress (which would otherwise swallow it) to end."""

    def __init__(self, serial: Serial, conn: sqlite3.Connection) -> None:
        super().__init__(serial, conn)
        self._lock = anyio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SQLiteDatabase:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
            try:
                for pragma in ("journal_mode = WAL", "synchronous = NORMAL", "foreign_keys = ON"):
                    conn.execute(f"PRAGMA {pragma}")
            except BaseException:
                conn.close()
                raise
            return conn

        serial = Serial(_CONTROL_WORKERS)
        return cls(serial, await serial.run(connect))

    async def close(self) -> None:
        await self._serial.run(self._conn.close)

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
        statements = _Statements(self._serial, self._conn)
        async with self._lock:
            await statements.execute("BEGIN IMMEDIATE")
            try:
                yield statements
            except BaseException:
                await statements.execute("ROLLBACK")
                raise
            await statements.execute("COMMIT")
