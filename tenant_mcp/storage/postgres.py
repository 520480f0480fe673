"""The PostgreSQL backend: one database for all tenants, isolated by row-level security.

Every table of tenant data (schema ``public``) gets a ``tenant_id`` column, the leading column of
its keys, and a policy that shows and accepts only rows of the transaction's tenant, with ``FORCE
ROW LEVEL SECURITY`` so the table owner is bound too.

The transaction's tenant is a *binding* that tool SQL cannot forge. The framework sets
``tenant_mcp.binding`` to ``<tenant id>/<HMAC-SHA256(key, "<tenant id>/<backend pid>")>`` for the
transaction only; the policy asks ``tenant_mcp_rls.tenant()``, a ``SECURITY DEFINER`` function of the
owner, which recomputes the MAC with the key (a table that only the owner and the control-plane
role can read) and returns the tenant only when it matches. Anything that writes the setting (an
SQL-executing function, an injected ``set_config``) can only write a value without a valid MAC
for another tenant, and a value copied from one connection is worthless on another: the policy then
matches nothing and inserts fail. No tenant, no rows.

Two roles serve: the control-plane role (tenants, keys, audit; computes bindings) and the data
role of `ctx.db`, which has DML on tenant tables and nothing else: no control schema, no key, no
TEMP, no CREATE, no sequences. The server refuses to start when either role is, or can switch
into, a superuser, a ``BYPASSRLS`` role or an owner, or when the data role has more than that.

Above the database, the gateway (`storage.gateway`) parses tool SQL with PostgreSQL's grammar and
refuses what is not on its allow-lists; pooled data connections are reset (temp objects, settings,
locks, listeners) before their next borrower.

This module is the data store of `ctx.db`. Beside it: `pg_migrate` (migrations, the key, the
grants), `pg_tenantize` (the tenant shape of tables), `pg_roles` (the start-up checks of the
roles), `pg_control` (the control plane's connection) and `pg` (what they share).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from tenant_mcp.errors import TenantMCPError
from tenant_mcp.storage.database import (
    DEFAULT_HOLD_SECONDS,
    Admit,
    OwnedUnit,
    PoolUsage,
    Result,
    TenantDatabase,
)
from tenant_mcp.storage.gateway import SQLAllowList, check
from tenant_mcp.storage.pg import (
    BINDING_SETTING,
    DATA_SCHEMA,
    AnyConnection,
    close_pool,
    connect_pool,
    rowcount,
)
from tenant_mcp.storage.pg_control import PostgresConnection
from tenant_mcp.storage.pg_roles import check_data_role, read_binding_key
from tenant_mcp.storage.sql import Params, constraint_errors, to_postgres

_BIND = f"SELECT set_config('{BINDING_SETTING}', $1, true)"


def binding_value(key: bytes, tenant_id: str, backend_pid: int) -> str:
    """The setting that binds one transaction on one backend to `tenant_id` (see the module doc)."""
    mac = hmac.new(key, f"{tenant_id}/{backend_pid}".encode(), hashlib.sha256).hexdigest()
    return f"{tenant_id}/{mac}"


def _rows(records: Iterable[asyncpg.Record]) -> list[dict[str, Any]]:
    # tenant_id is the framework's column: ctx.db rows look the same as on SQLite.
    return [{k: v for k, v in r.items() if k != "tenant_id"} for r in records]


_BUSY_AT_END = (
    "ctx.db was still in use by a task of the call when the call ended; the call's work was rolled back"
)


def drain_lock_key(tenant_id: str) -> int:
    """The advisory lock every call holds (shared) on its tenant while it has a connection, and that
    deleting the tenant takes exclusively: the deletion waits for calls in flight and none begins
    meanwhile. Collisions between tenants only make one deletion wait for another's calls."""
    return int(hashlib.sha256(tenant_id.encode()).hexdigest()[:15], 16)


async def _abandon(pool: asyncpg.Pool, conn: PoolConnectionProxy) -> None:
    """Give a connection back whatever state its transaction is in (closed if it cannot say)."""
    try:
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK")
    except BaseException:
        conn.terminate()
        raise
    finally:
        await pool.release(conn)


class _Unit(OwnedUnit):
    """One call's transaction: a pooled connection bound to the tenant for this transaction only.

    The call owns the connection: once the call has ended (or held it past `hold_seconds`), every
    use is an error, also one that was waiting for the pool when the call ended (it releases what it
    got); a statement still running then is cut off by closing the connection, and the work rolled
    back. A tenant's stray tasks therefore never keep pool connections from the other tenants.
    """

    def __init__(self, store: PostgresStore, tenant_id: str) -> None:
        super().__init__(tenant_id, store.hold_seconds, store.admit)
        self._store = store
        self._pool = store._pool
        self._conn: PoolConnectionProxy | None = None
        self._acquiring = asyncio.Lock()
        self._statement = asyncio.Lock()  # asyncpg runs one statement at a time per connection

    async def _connection(self) -> PoolConnectionProxy:
        self._check_open()
        if self._conn is not None:
            return self._conn
        async with self._acquiring:  # two tasks of one call must not take two connections
            if self._conn is not None:
                return self._conn
            await self._admit()
            conn = await self._pool.acquire()
            try:
                # One round trip (a simple query): the transaction and the tenant's drain lock,
                # which `PostgresStore.drop` takes exclusively. The key is an integer we computed.
                await conn.execute(
                    f"BEGIN; SELECT pg_advisory_xact_lock_shared({drain_lock_key(self._tenant_id)})"
                )
                await conn.execute(_BIND, self._store._binding(self._tenant_id, conn))
                await self._admit()  # a deletion that began meanwhile has suspended the tenant first
                # The call may have ended while this waited: `finish` found no connection to
                # release then, so this one must not be kept (no await between check and store).
                self._check_open()
            except BaseException:
                await _abandon(self._pool, conn)
                raise
            self._conn = conn
            self._held()
            return conn

    async def _end(self, *, commit: bool) -> None:
        if self._conn is None:
            return  # nothing held; a use still waiting for the pool releases what it gets itself
        conn, self._conn = self._conn, None
        if self._busy:
            # A task of the call is still running a statement: closing the connection is the only
            # way to stop it; the server rolls the transaction back and the pool opens a new one.
            conn.terminate()
            await self._pool.release(conn)
            if commit:
                raise TenantMCPError(_BUSY_AT_END)
            return
        try:
            await conn.execute("COMMIT" if commit else "ROLLBACK")
        except BaseException:
            await _abandon(self._pool, conn)
            raise
        await self._pool.release(conn)

    @asynccontextmanager
    async def _use(self) -> AsyncIterator[PoolConnectionProxy]:
        conn = await self._connection()
        async with self._statement:  # the call's tasks take turns on its connection
            self._check_open()  # the call may have ended while this waited its turn
            self._busy += 1
            try:
                with constraint_errors(asyncpg.IntegrityConstraintViolationError):
                    yield conn
            finally:
                self._busy -= 1

    def _checked(self, sql: str, params: Params) -> tuple[str, list[Any]]:
        """The statement as PostgreSQL will receive it, after the gateway has read that text."""
        text, args = to_postgres(sql, params)
        check(text, self._store._allow)
        return text, args

    async def _fetch(self, sql: str, params: Params) -> list[asyncpg.Record]:
        text, args = self._checked(sql, params)
        async with self._use() as conn:
            return await conn.fetch(text, *args)  # prepared once per connection (asyncpg's cache)

    async def execute(self, sql: str, params: Params) -> Result:
        # The gateway also keeps a parameterless execute, sent as a simple query, to one statement.
        text, args = self._checked(sql, params)
        async with self._use() as conn:
            status = await conn.execute(text, *args)
        return Result(rowcount=rowcount(status), lastrowid=None)

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> int:
        converted = [to_postgres(sql, row) for row in rows]
        if not converted:
            return 0
        check(converted[0][0], self._store._allow)
        async with self._use() as conn:
            await conn.executemany(converted[0][0], [args for _, args in converted])
        return len(converted)

    async def fetch_all(self, sql: str, params: Params) -> list[dict[str, Any]]:
        return _rows(await self._fetch(sql, params))

    async def fetch_one(self, sql: str, params: Params) -> dict[str, Any] | None:
        rows = await self._fetch(sql, params)
        return _rows(rows[:1])[0] if rows else None

    async def insert(self, table: str, values: Mapping[str, Any]) -> int:
        placeholders = ", ".join("?" for _ in values)
        sql = f"INSERT INTO {table} ({', '.join(values)}) VALUES ({placeholders}) RETURNING id"
        rows = await self._fetch(sql, list(values.values()))
        return int(rows[0]["id"])

    async def control(self, statement: str) -> None:
        async with self._use() as conn:
            await conn.execute(statement)


class PostgresStore:
    """Tenant data in PostgreSQL: what `ctx.db`, the CLI and the test kit use across replicas."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        key: bytes,
        allow: SQLAllowList | None = None,
        *,
        hold_seconds: float = DEFAULT_HOLD_SECONDS,
        admit: Admit | None = None,
    ) -> None:
        self._pool = pool
        self._key = key
        self._allow = allow or SQLAllowList()
        self.hold_seconds = hold_seconds
        self.admit = admit

    @classmethod
    async def open(
        cls,
        url: str,
        migrations: Sequence[Any] | None = None,
        *,
        binding_key: bytes | None = None,
        allow: SQLAllowList | None = None,
        max_size: int = 10,
        hold_seconds: float = DEFAULT_HOLD_SECONDS,
        admit: Admit | None = None,
    ) -> PostgresStore:
        """Connect for tenant data.

        A serving app passes `migrations` (its schema version is checked on the control plane) and
        the `binding_key` it read there: the data role is then checked to hold no more than row
        access. Without a key (the CLI, on the control-plane role) the store reads it itself.
        """
        pool = await connect_pool(url, search_path=DATA_SCHEMA, max_size=max_size)
        try:
            if migrations is not None:
                await check_data_role(PostgresConnection(pool))
            key = binding_key if binding_key is not None else await read_binding_key(PostgresConnection(pool))
        except BaseException:
            await pool.close()
            raise
        return cls(pool, key, allow, hold_seconds=hold_seconds, admit=admit)

    def database(self, tenant_id: str) -> TenantDatabase:
        return TenantDatabase(_Unit(self, tenant_id))

    def usage(self) -> PoolUsage:
        size = self._pool.get_size()
        return PoolUsage("postgresql", size, size - self._pool.get_idle_size())

    def _binding(self, tenant_id: str, conn: AnyConnection) -> str:
        return binding_value(self._key, tenant_id, conn.get_server_pid())

    async def aclose(self) -> None:
        await close_pool(self._pool)

    @asynccontextmanager
    async def _as_tenant(self, tenant_id: str) -> AsyncIterator[AnyConnection]:
        # Framework statements also filter on tenant_id explicitly: an administrator running the
        # CLI as a superuser is not bound by the policy.
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_BIND, self._binding(tenant_id, conn))
            yield conn

    async def _tables(self, conn: AnyConnection, *, children_first: bool = False) -> list[str]:
        rows = await conn.fetch(
            "SELECT c.relname, ARRAY(SELECT DISTINCT f.confrelid::regclass::text FROM pg_constraint f"
            "   WHERE f.conrelid = c.oid AND f.contype = 'f' AND f.confrelid <> c.oid) AS parents"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped"
            " WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY c.relname",
            DATA_SCHEMA,
        )
        if not children_first:
            return [r["relname"] for r in rows]
        # Delete rows that reference others before the rows they reference.
        parents = {r["relname"]: {p.strip('"') for p in r["parents"]} for r in rows}
        order: list[str] = []
        while parents:
            leaves = sorted(t for t in parents if not any(t in ps for ps in parents.values()))
            if not leaves:  # a reference cycle: the remaining order cannot matter more
                leaves = sorted(parents)
            for table in leaves:
                order.append(table)
                del parents[table]
        return order

    async def drop(self, tenant_id: str) -> None:
        """Delete every row of the tenant, in all tables, in one transaction.

        It first waits for the tenant's calls in flight to end (each holds the tenant's drain lock,
        at most `hold_seconds`); calls that begin meanwhile wait, then see the tenant suspended or
        gone (`tenant delete` suspends it first) and write nothing."""
        async with self._as_tenant(tenant_id) as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", drain_lock_key(tenant_id))
            for table in await self._tables(conn, children_first=True):
                await conn.execute(f'DELETE FROM "{table}" WHERE tenant_id = $1', tenant_id)

    async def export(self, tenant_id: str) -> dict[str, list[dict[str, Any]]]:
        async with self._as_tenant(tenant_id) as conn:
            out: dict[str, list[dict[str, Any]]] = {}
            for table in await self._tables(conn):
                rows = _rows(await conn.fetch(f'SELECT * FROM "{table}" WHERE tenant_id = $1', tenant_id))
                if rows:
                    out[table] = rows
            return out

    async def plant_canary(self, tenant_id: str, value: str) -> None:
        async with self._as_tenant(tenant_id) as conn:
            await conn.execute(
                "INSERT INTO tenant_mcp_canaries (tenant_id, value) VALUES ($1, $2)", tenant_id, value
            )
