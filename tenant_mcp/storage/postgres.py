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

Migrations are applied by `migrate()` as the tables' owner (`tenant-mcp migrate`), under an
advisory lock so replicas starting together apply each step once; `tenantize()` then brings
every table of tenant data to the shape above.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from tenant_mcp.errors import ConfigurationError, TenantMCPError
from tenant_mcp.storage.database import (
    DEFAULT_HOLD_SECONDS,
    Admit,
    OwnedUnit,
    PoolUsage,
    Result,
    TenantDatabase,
)
from tenant_mcp.storage.gateway import SQLAllowList, check
from tenant_mcp.storage.sql import Connection, ConstraintError, Params, to_postgres

CONTROL_SCHEMA = "tenant_mcp"
DATA_SCHEMA = "public"
RLS_SCHEMA = "tenant_mcp_rls"  # the binding's key and the function that verifies it
BINDING_SETTING = "tenant_mcp.binding"
_MIGRATION_LOCK = 0x7E4A_4E7D_C0DE  # pg_advisory_xact_lock key: one migrator per database at a time
_CURRENT_TENANT = f"{RLS_SCHEMA}.tenant()"
_CLAIMED_TENANT = f"split_part(current_setting('{BINDING_SETTING}', true), '/', 1)"
_BIND = f"SELECT set_config('{BINDING_SETTING}', $1, true)"
_Conn = asyncpg.Connection | PoolConnectionProxy


def binding_value(key: bytes, tenant_id: str, backend_pid: int) -> str:
    """The setting that binds one transaction on one backend to `tenant_id` (see the module doc)."""
    mac = hmac.new(key, f"{tenant_id}/{backend_pid}".encode(), hashlib.sha256).hexdigest()
    return f"{tenant_id}/{mac}"


class _DataConnection(asyncpg.Connection):
    """A pooled connection that leaves nothing to its next borrower: on top of asyncpg's reset
    (settings, advisory locks, cursors, listeners), temporary objects and sequence state go."""

    def get_reset_query(self) -> str:
        return super().get_reset_query() + "\nDISCARD TEMP;\nDISCARD SEQUENCES;"


@contextmanager
def _constraints() -> Iterator[None]:
    """The same exception for a broken constraint on both backends."""
    try:
        yield
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise ConstraintError(str(exc)) from None


def _rowcount(status: str) -> int:
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _rows(records: Iterable[asyncpg.Record]) -> list[dict[str, Any]]:
    # tenant_id is the framework's column: ctx.db rows look the same as on SQLite.
    return [{k: v for k, v in r.items() if k != "tenant_id"} for r in records]


async def connect_pool(url: str, *, search_path: str, max_size: int = 10) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=max_size,
            connection_class=_DataConnection,
            # The gateway parses with standard strings; the server must read them the same way.
            server_settings={"search_path": search_path, "standard_conforming_strings": "on"},
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise ConfigurationError(f"cannot connect to PostgreSQL: {exc}") from None
    assert pool is not None
    return pool


async def _close(pool: asyncpg.Pool) -> None:
    """Close gracefully, but never hang shutdown on a connection someone failed to release."""
    try:
        await asyncio.wait_for(pool.close(), 10)
    except TimeoutError:
        pool.terminate()


class _Connection:
    """A control-plane connection (pool or one pooled connection inside a transaction)."""

    dialect = "postgresql"

    def __init__(self, target: asyncpg.Pool | _Conn) -> None:
        self._target = target

    async def execute(self, sql: str, params: Params = ()) -> int:
        text, args = to_postgres(sql, params)
        with _constraints():
            return _rowcount(await self._target.execute(text, *args))

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> None:
        converted = [to_postgres(sql, row) for row in rows]
        if converted:
            await self._target.executemany(converted[0][0], [args for _, args in converted])

    async def fetch_all(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        text, args = to_postgres(sql, params)
        return [dict(r) for r in await self._target.fetch(text, *args)]

    async def fetch_one(self, sql: str, params: Params = ()) -> dict[str, Any] | None:
        text, args = to_postgres(sql, params)
        row = await self._target.fetchrow(text, *args)
        return dict(row) if row is not None else None


class PostgresDatabase(_Connection):
    """The control plane's tables (schema ``tenant_mcp``) through a connection pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self._pool = pool

    @classmethod
    async def open(cls, url: str) -> PostgresDatabase:
        return cls(await connect_pool(url, search_path=CONTROL_SCHEMA, max_size=5))

    async def close(self) -> None:
        await _close(self._pool)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Connection]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield _Connection(conn)


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
        self._busy += 1
        try:
            with _constraints():
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
        return Result(rowcount=_rowcount(status), lastrowid=None)

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
                await check_data_role(_Connection(pool))
            key = binding_key if binding_key is not None else await read_binding_key(_Connection(pool))
        except BaseException:
            await pool.close()
            raise
        return cls(pool, key, allow, hold_seconds=hold_seconds, admit=admit)

    def database(self, tenant_id: str) -> TenantDatabase:
        return TenantDatabase(_Unit(self, tenant_id))

    def usage(self) -> PoolUsage:
        size = self._pool.get_size()
        return PoolUsage("postgresql", size, size - self._pool.get_idle_size())

    def _binding(self, tenant_id: str, conn: _Conn) -> str:
        return binding_value(self._key, tenant_id, conn.get_server_pid())

    async def aclose(self) -> None:
        await _close(self._pool)

    @asynccontextmanager
    async def _as_tenant(self, tenant_id: str) -> AsyncIterator[_Conn]:
        # Framework statements also filter on tenant_id explicitly: an administrator running the
        # CLI as a superuser is not bound by the policy.
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_BIND, self._binding(tenant_id, conn))
            yield conn

    async def _tables(self, conn: _Conn, *, children_first: bool = False) -> list[str]:
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


async def read_binding_key(db: Connection) -> bytes:
    """The binding key, readable by the owner and the control-plane role only."""
    try:
        row = await db.fetch_one(f"SELECT key FROM {RLS_SCHEMA}.binding_key")
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
        row = None
    except asyncpg.InsufficientPrivilegeError:
        raise ConfigurationError(
            "this PostgreSQL role may not read the tenant binding key: use the control-plane role "
            "(`tenant-mcp migrate --app-role`) here, not the data role"
        ) from None
    if row is None:
        raise ConfigurationError("the PostgreSQL schema has no tenant binding key: run `tenant-mcp migrate`")
    return bytes(row["key"])


async def check_control_role(db: Connection) -> None:
    """Refuse a control-plane role that could bypass row-level security."""
    await _refuse_escalation(db, "control-plane")


async def check_data_role(db: Connection) -> None:
    """Refuse a `ctx.db` role that could bypass row-level security or reach past tenant rows."""
    name = await _refuse_escalation(db, "data")
    row = await db.fetch_one(
        "SELECT has_schema_privilege(?1, 'USAGE') AS control, has_database_privilege(current_database(), 'TEMP')"
        " AS temp, has_database_privilege(current_database(), 'CREATE') AS create_db,"
        " has_schema_privilege(?2, 'CREATE') AS create_data,"
        " coalesce(has_schema_privilege(?3, 'CREATE'), false) AS create_rls,"
        " (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        "   WHERE n.nspname = ?2 AND CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(c.oid, 'USAGE') END)"
        " AS sequences",
        (CONTROL_SCHEMA, DATA_SCHEMA, RLS_SCHEMA),
    )
    assert row is not None
    excess = [
        what
        for what, held in (
            ("may use the tenant_mcp schema (the control plane)", row["control"]),
            ("may create temporary tables", row["temp"]),
            ("may create schemas", row["create_db"]),
            ("may create tables", row["create_data"] or row["create_rls"]),
            ("may use sequences", row["sequences"]),
        )
        if held
    ]
    if excess:
        raise ConfigurationError(
            f"refusing to serve ctx.db as PostgreSQL role {name!r}: it {', and '.join(excess)}. The data "
            "role needs row access to tenant tables and nothing more: give it its own role and run "
            "`tenant-mcp migrate --data-role ROLE` as the owner (which revokes TEMP from PUBLIC; "
            "if the owner does not own the database, run REVOKE TEMPORARY ON DATABASE ... FROM PUBLIC)"
        )


async def _refuse_escalation(db: Connection, which: str) -> str:
    """The role's name, unless it is, or can SET ROLE into, a superuser, a BYPASSRLS role or an owner."""
    me = await db.fetch_one("SELECT current_user::text AS name")
    name = str(me["name"]) if me else "?"
    risky = await db.fetch_all(
        "SELECT r.rolname::text AS role, r.rolsuper AS super FROM pg_roles r"
        " WHERE (r.rolsuper OR r.rolbypassrls) AND pg_has_role(current_user, r.oid, 'MEMBER')"
        " ORDER BY r.rolname"
    )
    if risky:
        roles = ", ".join(r["role"] for r in risky)
        via = "" if [r["role"] for r in risky] == [name] else f" (it is or can become {roles})"
        raise ConfigurationError(
            f"refusing to serve the {which} connection as PostgreSQL role {name!r}: it is a superuser or "
            f"has BYPASSRLS{via}, so row-level security would not bind it. Connect as the role that "
            "`tenant-mcp migrate` set up, and grant it no membership in such roles."
        )
    owners = await db.fetch_all(
        "SELECT DISTINCT pg_get_userbyid(c.relowner) AS owner FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = ANY(?1::text[]) AND c.relkind IN ('r', 'p')"
        " AND pg_has_role(current_user, c.relowner, 'MEMBER')",
        ([DATA_SCHEMA, CONTROL_SCHEMA, RLS_SCHEMA],),
    )
    if owners:
        raise ConfigurationError(
            f"refusing to serve the {which} connection as PostgreSQL role {name!r}: it owns (or can "
            f"become {', '.join(sorted(r['owner'] for r in owners))}, the owner of) the tables, and an "
            "owner can switch row-level security off. Run migrations as the owner and serve as "
            "separate roles."
        )
    return name


async def check_version(db: Connection, component: str, expected: int) -> None:
    """Refuse to run against a schema older or newer than this code."""
    try:
        row = await db.fetch_one(
            f"SELECT coalesce(max(version), 0) AS v FROM {CONTROL_SCHEMA}.schema_version WHERE component = ?",
            (component,),
        )
        current = row["v"] if row else 0
    except asyncpg.UndefinedTableError:
        current = 0
    except asyncpg.InsufficientPrivilegeError:
        raise ConfigurationError(
            "this PostgreSQL role may not read the tenant_mcp schema: run `tenant-mcp migrate "
            "--app-role <role>` as the owner to grant it"
        ) from None
    if current != expected:
        raise ConfigurationError(
            f"the PostgreSQL {component} schema is at version {current}, this server needs {expected}: "
            "run `tenant-mcp migrate` (as the tables' owner)"
        )


async def current_role(url: str) -> str:
    """The role a URL logs in as (the URL may not say: peer authentication, PGUSER)."""
    try:
        conn = await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise ConfigurationError(f"cannot connect to PostgreSQL: {exc}") from None
    try:
        return str(await conn.fetchval("SELECT current_user"))
    finally:
        await conn.close()


# -- migrations ------------------------------------------------------------------------------------


async def migrate(
    url: str,
    *,
    control: Sequence[str],
    data: Sequence[str],
    app_role: str | None,
    data_role: str | None = None,
) -> dict[str, int]:
    """Bring both schemas up to date as the owner; returns how many steps each component applied.

    `app_role` is granted the control plane (and row access to tenant data, for the CLI);
    `data_role` row access to tenant data only, for `ctx.db`. Everything happens in one
    transaction under an advisory lock: a replica that starts while another migrates waits, then
    finds nothing left to do.
    """
    if app_role is not None and app_role == data_role:
        raise ConfigurationError(
            "the control-plane role and the data role must differ: the data role may not reach the control plane"
        )
    try:
        conn = await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise ConfigurationError(f"cannot connect to PostgreSQL: {exc}") from None
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            for role in (app_role, data_role):
                if role is not None and not await conn.fetchval(
                    "SELECT true FROM pg_roles WHERE rolname = $1", role
                ):
                    raise ConfigurationError(
                        f"PostgreSQL role {role!r} does not exist; create it first, e.g. "
                        f"CREATE ROLE {role} LOGIN PASSWORD '...'"
                    )
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {CONTROL_SCHEMA}")
            await _binding_function(conn)
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {CONTROL_SCHEMA}.schema_version (component TEXT NOT NULL,"
                " version INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
                " PRIMARY KEY (component, version))"
            )
            applied = {
                "control": await _apply(conn, "control", control, CONTROL_SCHEMA),
                "data": await _apply(conn, "data", data, DATA_SCHEMA),
            }
            await conn.execute(f"SET LOCAL search_path = {DATA_SCHEMA}")
            await tenantize(conn)
            await _least_privilege(conn)
            if app_role is not None:
                await _grant_control(conn, app_role)
            if data_role is not None:
                await _grant_data(conn, data_role)
        return applied
    finally:
        await conn.close()


async def _apply(conn: asyncpg.Connection, component: str, scripts: Sequence[str], schema: str) -> int:
    current = await conn.fetchval(
        f"SELECT coalesce(max(version), 0) FROM {CONTROL_SCHEMA}.schema_version WHERE component = $1",
        component,
    )
    if current > len(scripts):
        raise ConfigurationError(
            f"the PostgreSQL {component} schema is at version {current}, newer than this server "
            f"({len(scripts)} migrations): refusing to run an older release against it"
        )
    await conn.execute(f"SET LOCAL search_path = {schema}")
    for version, script in enumerate(scripts[current:], start=current + 1):
        try:
            await conn.execute(script)
        except asyncpg.InvalidForeignKeyError as exc:
            raise TenantMCPError(
                f"{component} migration {version} failed: {exc}. Keys of tenant tables start with "
                "tenant_id on PostgreSQL, so a foreign key to a table of an earlier migration names it: "
                "give the step a 'postgresql' version that declares tenant_id TEXT NOT NULL and "
                "FOREIGN KEY (tenant_id, col) REFERENCES other (tenant_id, id)"
            ) from None
        except asyncpg.PostgresError as exc:
            raise TenantMCPError(f"{component} migration {version} failed: {exc}") from None
        await conn.execute(
            f"INSERT INTO {CONTROL_SCHEMA}.schema_version (component, version) VALUES ($1, $2)",
            component,
            version,
        )
        if component == "data":
            await _refuse_shared(conn, version)
            await tenantize(conn)  # before the next step, so its foreign keys see tenant keys
    return len(scripts) - int(current)


async def tenantize(conn: asyncpg.Connection) -> None:
    """Give every table of tenant data its tenant column, keys and policy. Idempotent."""
    tables = await conn.fetch(
        "SELECT c.oid, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY c.relname",
        DATA_SCHEMA,
    )
    for table in tables:
        name = _quote(table["relname"])
        has_column = await conn.fetchval(
            "SELECT true FROM pg_attribute WHERE attrelid = $1 AND attname = 'tenant_id' AND NOT attisdropped",
            table["oid"],
        )
        if not has_column:
            await conn.execute(f"ALTER TABLE {name} ADD COLUMN tenant_id TEXT NOT NULL")
        # The default need not verify the binding: the policy's WITH CHECK does, once per statement.
        await conn.execute(f"ALTER TABLE {name} ALTER COLUMN tenant_id SET DEFAULT {_CLAIMED_TENANT}")
        # SQLite's INTEGER is 64-bit; PostgreSQL's is 32-bit and new_id() values need 53 bits.
        for column in await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped"
            " AND atttypid = 'int4'::regtype",
            table["oid"],
        ):
            await conn.execute(f"ALTER TABLE {name} ALTER COLUMN {_quote(column['attname'])} TYPE BIGINT")
    oids = [t["oid"] for t in tables]
    await _lead_keys_with_tenant(conn, oids)
    # A view runs as its owner unless it is a security-invoker view; then the caller's policies apply.
    for view in await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relkind = 'v'",
        DATA_SCHEMA,
    ):
        await conn.execute(f"ALTER VIEW {_quote(view['relname'])} SET (security_invoker = true)")
    for table in tables:
        name = _quote(table["relname"])
        await conn.execute(f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY")
        await conn.execute(f"ALTER TABLE {name} FORCE ROW LEVEL SECURITY")
        await conn.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {name}")
        # A scalar subquery: the binding is verified once per statement, not once per row.
        await conn.execute(
            f"CREATE POLICY tenant_isolation ON {name} USING (tenant_id = (SELECT {_CURRENT_TENANT}))"
            f" WITH CHECK (tenant_id = (SELECT {_CURRENT_TENANT}))"
        )


async def _lead_keys_with_tenant(conn: asyncpg.Connection, oids: list[int]) -> None:
    """Make tenant_id the first column of every primary key, unique key and foreign key.

    Keys then hold per tenant (two tenants may both have note 7's title) and a distributed
    PostgreSQL can shard by tenant_id. Foreign keys are dropped first and re-created last because
    they depend on the unique index of the key they reference.
    """
    foreign = await conn.fetch(
        "SELECT c.conrelid::regclass::text AS tbl, c.conname, c.confrelid::regclass::text AS ref,"
        " pg_get_constraintdef(c.oid) AS def,"
        " ARRAY(SELECT attname FROM unnest(c.conkey) WITH ORDINALITY k(n, o)"
        "   JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o) AS cols,"
        " ARRAY(SELECT attname FROM unnest(c.confkey) WITH ORDINALITY k(n, o)"
        "   JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.o) AS refcols"
        " FROM pg_constraint c WHERE c.contype = 'f' AND c.conrelid = ANY($1::oid[])",
        oids,
    )
    foreign = [f for f in foreign if f["cols"][0] != "tenant_id"]
    for fk in foreign:
        await conn.execute(f"ALTER TABLE {fk['tbl']} DROP CONSTRAINT {_quote(fk['conname'])}")
    keys = await conn.fetch(
        "SELECT c.conrelid::regclass::text AS tbl, c.conname, c.contype::text AS contype,"
        " ARRAY(SELECT attname FROM unnest(c.conkey) WITH ORDINALITY k(n, o)"
        "   JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o) AS cols"
        " FROM pg_constraint c WHERE c.contype IN ('p', 'u') AND c.conrelid = ANY($1::oid[])",
        oids,
    )
    for key in keys:
        if key["cols"][0] == "tenant_id":
            continue
        kind = "PRIMARY KEY" if key["contype"] == "p" else "UNIQUE"
        columns = ", ".join(_quote(c) for c in ["tenant_id", *key["cols"]])
        await conn.execute(
            f"ALTER TABLE {key['tbl']} DROP CONSTRAINT {_quote(key['conname'])},"
            f" ADD CONSTRAINT {_quote(key['conname'])} {kind} ({columns})"
        )
    await _exclusions_per_tenant(conn, oids)
    indexes = await conn.fetch(
        "SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS def"
        " FROM pg_index i LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
        " WHERE i.indisunique AND i.indrelid = ANY($1::oid[]) AND a.attname IS DISTINCT FROM 'tenant_id'"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
        oids,
    )
    for index in indexes:
        definition = re.sub(r" USING (\w+) \(", r" USING \1 (tenant_id, ", index["def"], count=1)
        await conn.execute(f"DROP INDEX {index['name']}")
        await conn.execute(definition)
    for fk in foreign:
        actions = fk["def"].split(")", 2)[
            -1
        ]  # "... REFERENCES t(id) ON DELETE CASCADE" -> " ON DELETE CASCADE"
        cols = ", ".join(_quote(c) for c in fk["cols"])
        # SET NULL / SET DEFAULT must not touch tenant_id (PostgreSQL 15 column lists).
        actions = re.sub(r"(ON DELETE SET (?:NULL|DEFAULT))(?! \()", rf"\1 ({cols})", actions)
        await conn.execute(
            f"ALTER TABLE {fk['tbl']} ADD CONSTRAINT {_quote(fk['conname'])} FOREIGN KEY (tenant_id, {cols})"
            f" REFERENCES {fk['ref']} (tenant_id, {', '.join(_quote(c) for c in fk['refcols'])}){actions}"
        )


async def _exclusions_per_tenant(conn: asyncpg.Connection, oids: list[int]) -> None:
    """Exclusion constraints hold per tenant: ``tenant_id WITH =`` leads each (needs btree_gist).

    A global one would tell tenant B that tenant A holds a conflicting row.
    """
    exclusions = await conn.fetch(
        "SELECT c.conrelid::regclass::text AS tbl, c.conname, pg_get_constraintdef(c.oid) AS def"
        " FROM pg_constraint c WHERE c.contype = 'x' AND c.conrelid = ANY($1::oid[])"
        " AND NOT pg_get_constraintdef(c.oid) ~ '\\(tenant_id WITH ='",
        oids,
    )
    if not exclusions:
        return
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
    except asyncpg.PostgresError as exc:
        raise TenantMCPError(
            f"exclusion constraint {exclusions[0]['conname']} must hold per tenant, which needs the "
            f"btree_gist extension ({exc}); install it as a superuser, or declare the constraint with "
            "tenant_id WITH = first in a 'postgresql' version of the migration"
        ) from None
    for ex in exclusions:
        definition = re.sub(r"\(", "(tenant_id WITH =, ", ex["def"], count=1)
        await conn.execute(
            f"ALTER TABLE {ex['tbl']} DROP CONSTRAINT {_quote(ex['conname'])},"
            f" ADD CONSTRAINT {_quote(ex['conname'])} {definition}"
        )


async def _refuse_shared(conn: asyncpg.Connection, version: int) -> None:
    """Refuse what a data step may create that row-level security cannot scope to one tenant."""
    shared = await conn.fetch(
        "SELECT c.relname AS name, c.relkind::text AS kind FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind IN ('S', 'm', 'f')"
        " UNION ALL SELECT p.proname, 'definer' FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = $1 AND p.prosecdef"
        " UNION ALL SELECT r.rulename, 'rule' FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND r.rulename <> '_RETURN'"
        " UNION ALL SELECT p.polname, 'policy' FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND p.polpermissive AND p.polname <> 'tenant_isolation' ORDER BY 1",
        DATA_SCHEMA,
    )
    if not shared:
        return
    name, kind = shared[0]["name"], shared[0]["kind"]
    why = {
        "S": f"creates sequence {name} (SERIAL, IDENTITY or CREATE SEQUENCE): a sequence is shared by "
        "every tenant and reveals their volume. Declare the id as BIGINT and give it tenant_mcp.new_id() values",
        "m": f"creates materialized view {name}: it holds a copy of every tenant's rows, which no policy "
        "can scope. Use a view (it runs as the caller, under the policies)",
        "f": f"creates foreign table {name}: its rows live outside the database's policies",
        "definer": f"creates SECURITY DEFINER function {name}: it runs as its owner, whom the policies may "
        "not bind. Use SECURITY INVOKER (the default)",
        "rule": f"creates rule {name}: its actions run with the table owner's rights. Use a trigger",
        "policy": f"creates permissive policy {name}: permissive policies are OR-ed with the tenant "
        "policy and would widen it. Declare it AS RESTRICTIVE (it then narrows the tenant's rows)",
    }[kind]
    raise TenantMCPError(f"data migration {version} {why}")


async def _binding_function(conn: asyncpg.Connection) -> None:
    """The binding key and `tenant()`, the verifier every policy calls (see the module doc)."""
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {RLS_SCHEMA}")
    await conn.execute(f"REVOKE ALL ON SCHEMA {RLS_SCHEMA} FROM PUBLIC")
    await conn.execute(
        f"CREATE TABLE IF NOT EXISTS {RLS_SCHEMA}.binding_key (id INTEGER PRIMARY KEY CHECK (id = 1),"
        " key BYTEA NOT NULL, inner_pad BYTEA NOT NULL, outer_pad BYTEA NOT NULL)"
    )
    await conn.execute(f"REVOKE ALL ON {RLS_SCHEMA}.binding_key FROM PUBLIC")
    if not await conn.fetchval(f"SELECT true FROM {RLS_SCHEMA}.binding_key"):
        key = secrets.token_bytes(32)
        block = key.ljust(64, b"\0")  # HMAC-SHA256's pads, so SQL needs only sha256()
        await conn.execute(
            f"INSERT INTO {RLS_SCHEMA}.binding_key VALUES (1, $1, $2, $3)",
            key,
            bytes(b ^ 0x36 for b in block),
            bytes(b ^ 0x5C for b in block),
        )
    # PL/pgSQL keeps its plans for the session (an SQL function would be planned per statement);
    # STABLE and PARALLEL RESTRICTED: evaluated in the leader, where pg_backend_pid() is the
    # connection's; a fixed search_path so no object of the caller's can stand in.
    await conn.execute(
        f"""CREATE OR REPLACE FUNCTION {_CURRENT_TENANT} RETURNS text
        LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
        SET search_path = pg_catalog, pg_temp AS $fn$
        DECLARE
            binding text := current_setting('{BINDING_SETTING}', true);
            tenant text := split_part(binding, '/', 1);
            inner_pad bytea;
            outer_pad bytea;
        BEGIN
            SELECT k.inner_pad, k.outer_pad INTO inner_pad, outer_pad FROM {RLS_SCHEMA}.binding_key k;
            IF split_part(binding, '/', 2) = encode(sha256(outer_pad || sha256(inner_pad
                    || convert_to(tenant || '/' || pg_backend_pid()::text, 'UTF8'))), 'hex') THEN
                RETURN tenant;
            END IF;
            RETURN NULL;
        END
        $fn$"""
    )
    await conn.execute(f"REVOKE ALL ON FUNCTION {_CURRENT_TENANT} FROM PUBLIC")


async def _least_privilege(conn: asyncpg.Connection) -> None:
    """What no serving role needs: creating objects in the data schema, or temporary tables
    (a temporary table has no policy and is searched before the tenant tables)."""
    await conn.execute(f"REVOKE CREATE ON SCHEMA {DATA_SCHEMA} FROM PUBLIC")
    database = await conn.fetchval("SELECT current_database()")
    # Only the database's owner can revoke this; otherwise the server's start-up check says what to do.
    await conn.execute(f"REVOKE TEMPORARY ON DATABASE {_quote(database)} FROM PUBLIC")


async def _grant_control(conn: asyncpg.Connection, role: str) -> None:
    """The control-plane role: rows of the control plane and (for the CLI) of tenant data, the key."""
    quoted = _quote(role)
    for schema in (DATA_SCHEMA, CONTROL_SCHEMA):
        await conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {quoted}")
        await conn.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {quoted}"
        )
    await conn.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {CONTROL_SCHEMA} TO {quoted}")
    await conn.execute(f"GRANT USAGE ON SCHEMA {RLS_SCHEMA} TO {quoted}")
    await conn.execute(f"GRANT SELECT ON {RLS_SCHEMA}.binding_key TO {quoted}")
    await conn.execute(f"GRANT EXECUTE ON FUNCTION {_CURRENT_TENANT} TO {quoted}")


async def _grant_data(conn: asyncpg.Connection, role: str) -> None:
    """The data role of `ctx.db`: rows of tenant tables, and nothing else anywhere."""
    quoted = _quote(role)
    for schema in (CONTROL_SCHEMA, RLS_SCHEMA):  # an earlier grant (one role for all) is taken back
        await conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {quoted}")
        await conn.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {quoted}")
    await conn.execute(f"REVOKE ALL ON SCHEMA {CONTROL_SCHEMA} FROM {quoted}")
    await conn.execute(f"GRANT USAGE ON SCHEMA {DATA_SCHEMA} TO {quoted}")
    await conn.execute(
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {DATA_SCHEMA} TO {quoted}"
    )
    await conn.execute(f"GRANT USAGE ON SCHEMA {RLS_SCHEMA} TO {quoted}")
    await conn.execute(f"GRANT EXECUTE ON FUNCTION {_CURRENT_TENANT} TO {quoted}")


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
