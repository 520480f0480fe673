"""The PostgreSQL backend: one database for all tenants, isolated by row-level security.

Every table of tenant data (schema ``public``) gets a ``tenant_id`` column that defaults to the
transaction's tenant setting, the leading column of its primary key and unique keys, and a policy
that shows and accepts only rows of that tenant, with ``FORCE ROW LEVEL SECURITY`` so the table
owner is bound too. The server connects as a role that is not the owner, not a superuser and
not ``BYPASSRLS`` and refuses to start otherwise. The tenant is set per transaction with
``set_config(..., true)``, so a pooled connection never carries it into the next transaction;
without it the policy matches nothing and inserts fail: no tenant, no rows.

Above the database, a gateway refuses statements from `ctx.db` that would change the tenant
setting or the role, or reach the control plane's schema or the system catalogues. It is a net
for mistakes and injected SQL, not a sandbox for hostile tool code, which runs in the server's
process with its credentials anyway.

Migrations are applied by `migrate()` as the tables' owner (`tenant-mcp migrate`), under an
advisory lock so replicas starting together apply each step once; `tenantize()` then brings
every table of tenant data to the shape above.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from tenant_mcp.errors import ConfigurationError, TenantMCPError
from tenant_mcp.storage.database import DEFAULT_HOLD_SECONDS, Admit, Result, TenantDatabase
from tenant_mcp.storage.sql import Connection, ConstraintError, GatewayRefusal, Params, to_postgres, tokens

CONTROL_SCHEMA = "tenant_mcp"
DATA_SCHEMA = "public"
TENANT_SETTING = "tenant_mcp.tenant_id"
_MIGRATION_LOCK = 0x7E4A_4E7D_C0DE  # pg_advisory_xact_lock key: one migrator per database at a time
_CURRENT_TENANT = f"current_setting('{TENANT_SETTING}', true)"
_Conn = asyncpg.Connection | PoolConnectionProxy

# The gateway's rules. Statements that change settings (the tenant is one), the role, the
# transaction or the schema may not start a ctx.db statement; functions that run SQL from a string
# or change settings, the control schema and the catalogues may not appear anywhere.
_REFUSED_FIRST = frozenset(
    [
        "set",
        "reset",
        "discard",
        "copy",
        "listen",
        "notify",
        "unlisten",
        "do",
        "call",
        "grant",
        "revoke",
        "alter",
        "drop",
        "create",
        "truncate",
        "lock",
        "load",
        "begin",
        "start",
        "commit",
        "end",
        "rollback",
        "abort",
        "savepoint",
        "release",
        "prepare",
        "execute",
        "deallocate",
        "declare",
        "fetch",
        "move",
        "close",
        "vacuum",
        "analyze",
        "cluster",
        "reindex",
        "checkpoint",
        "comment",
        "import",
        "security",
        "refresh",
        "reassign",
    ]
)
_REFUSED_ANYWHERE = frozenset({"set_config", "dblink", "information_schema", CONTROL_SCHEMA})
_REFUSED_PREFIXES = ("pg_", "query_to_", "cursor_to_", "table_to_", "schema_to_", "database_to_", "lo_")


def _check(sql: str) -> None:
    """The gateway: refuse statements that could leave the caller's tenant or its transaction."""
    first, ended = True, False
    for token in tokens(sql):
        if token.kind == "param":
            continue
        if ended:  # only a trailing semicolon: several statements would each need checking
            raise GatewayRefusal("statement refused by the tenant gateway: one statement at a time")
        if token.text == ";":
            ended = True
            continue
        word = token.text.lower()
        if (
            (first and word in _REFUSED_FIRST)
            or word in _REFUSED_ANYWHERE
            or word.startswith(_REFUSED_PREFIXES)
        ):
            raise GatewayRefusal(
                f"statement refused by the tenant gateway: {token.text!r} is not allowed in ctx.db"
            )
        first = False
    if re.search(r"\bU&['\"]", sql, re.IGNORECASE):
        raise GatewayRefusal("statement refused by the tenant gateway: Unicode-escaped names are not allowed")


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
            url, min_size=1, max_size=max_size, server_settings={"search_path": search_path}
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


class _Unit:
    """One call's transaction: a pooled connection with the tenant set for this transaction only.

    The call owns the connection: once the call has ended (or held it past `hold_seconds`), every
    use is an error, also one that was waiting for the pool when the call ended (it releases what it
    got); a statement still running then is cut off by closing the connection, and the work rolled
    back. A tenant's stray tasks therefore never keep pool connections from the other tenants.
    """

    def __init__(self, store: PostgresStore, tenant_id: str) -> None:
        self._store = store
        self._pool = store._pool
        self._tenant_id = tenant_id
        self._conn: PoolConnectionProxy | None = None
        self._acquiring = asyncio.Lock()
        self._busy = 0
        self._ended: str | None = None
        self._expired = False
        self._expiry: asyncio.TimerHandle | None = None
        self._reaper: asyncio.Task[None] | None = None

    def _check_open(self) -> None:
        if self._ended is not None:
            raise TenantMCPError(self._ended)

    async def _admit(self) -> None:
        if self._store.admit is not None:
            await self._store.admit(self._tenant_id)

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
                await conn.execute("SELECT set_config($1, $2, true)", TENANT_SETTING, self._tenant_id)
                await self._admit()  # a deletion that began meanwhile has suspended the tenant first
                # The call may have ended while this waited: `finish` found no connection to
                # release then, so this one must not be kept (no await between check and store).
                self._check_open()
            except BaseException:
                await _abandon(self._pool, conn)
                raise
            self._conn = conn
            self._expiry = asyncio.get_running_loop().call_later(self._store.hold_seconds, self._expire)
            return conn

    def _expire(self) -> None:
        self._expired = True
        self._ended = (
            f"ctx.db held its database connection longer than {self._store.hold_seconds:g} s;"
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

    async def _fetch(self, sql: str, params: Params) -> list[asyncpg.Record]:
        _check(sql)
        text, args = to_postgres(sql, params)
        async with self._use() as conn:
            return await conn.fetch(text, *args)  # prepared once per connection (asyncpg's cache)

    async def execute(self, sql: str, params: Params) -> Result:
        _check(sql)  # also what keeps a parameterless execute, sent as a simple query, to one statement
        text, args = to_postgres(sql, params)
        async with self._use() as conn:
            status = await conn.execute(text, *args)
        return Result(rowcount=_rowcount(status), lastrowid=None)

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> int:
        _check(sql)
        converted = [to_postgres(sql, row) for row in rows]
        if not converted:
            return 0
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
        self, pool: asyncpg.Pool, *, hold_seconds: float = DEFAULT_HOLD_SECONDS, admit: Admit | None = None
    ) -> None:
        self._pool = pool
        self.hold_seconds = hold_seconds
        self.admit = admit

    @classmethod
    async def open(
        cls,
        url: str,
        migrations: Sequence[Any] | None = None,
        *,
        hold_seconds: float = DEFAULT_HOLD_SECONDS,
        admit: Admit | None = None,
    ) -> PostgresStore:
        """Connect for tenant data. With `migrations` (a serving app), also refuse a role that
        could bypass row-level security and a schema older than the app."""
        pool = await connect_pool(url, search_path=DATA_SCHEMA)
        try:
            if migrations is not None:
                await _check_role(pool)
                await check_version(_Connection(pool), "data", len(migrations))
        except BaseException:
            await pool.close()
            raise
        return cls(pool, hold_seconds=hold_seconds, admit=admit)

    def database(self, tenant_id: str) -> TenantDatabase:
        return TenantDatabase(_Unit(self, tenant_id))

    async def aclose(self) -> None:
        await _close(self._pool)

    @asynccontextmanager
    async def _as_tenant(self, tenant_id: str) -> AsyncIterator[_Conn]:
        # Framework statements also filter on tenant_id explicitly: an administrator running the
        # CLI as a superuser is not bound by the policy.
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT set_config($1, $2, true)", TENANT_SETTING, tenant_id)
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


async def _check_role(pool: asyncpg.Pool) -> None:
    row = await pool.fetchrow(
        "SELECT current_user AS name, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
    )
    assert row is not None
    if row["rolsuper"] or row["rolbypassrls"]:
        raise ConfigurationError(
            f"refusing to serve as PostgreSQL role {row['name']!r}: it is a superuser or has BYPASSRLS, "
            "so row-level security would not bind it. Connect as the application role that "
            "`tenant-mcp migrate --app-role` set up."
        )
    owned = await pool.fetchval(
        "SELECT count(*) FROM pg_tables WHERE schemaname = ANY($1::text[])"
        " AND pg_has_role(current_user, tableowner, 'MEMBER')",
        [DATA_SCHEMA, CONTROL_SCHEMA],
    )
    if owned:
        raise ConfigurationError(
            f"refusing to serve as PostgreSQL role {row['name']!r}: it owns (or is a member of the "
            "owner of) the tables, and an owner can switch row-level security off. Run migrations "
            "as the owner and serve as a separate application role."
        )


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
) -> dict[str, int]:
    """Bring both schemas up to date as the owner; returns how many steps each component applied.

    Everything happens in one transaction under an advisory lock: a replica that starts while
    another migrates waits, then finds nothing left to do.
    """
    try:
        conn = await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise ConfigurationError(f"cannot connect to PostgreSQL: {exc}") from None
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            if app_role is not None and not await conn.fetchval(
                "SELECT true FROM pg_roles WHERE rolname = $1", app_role
            ):
                raise ConfigurationError(
                    f"PostgreSQL role {app_role!r} does not exist; create it first, e.g. "
                    f"CREATE ROLE {app_role} LOGIN PASSWORD '...'"
                )
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {CONTROL_SCHEMA}")
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
            if app_role is not None:
                await _grant(conn, app_role)
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
            await conn.execute(
                f"ALTER TABLE {name} ADD COLUMN tenant_id TEXT NOT NULL DEFAULT nullif({_CURRENT_TENANT}, '')"
            )
        # SQLite's INTEGER is 64-bit; PostgreSQL's is 32-bit and new_id() values need 53 bits.
        for column in await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped"
            " AND atttypid = 'int4'::regtype",
            table["oid"],
        ):
            await conn.execute(f"ALTER TABLE {name} ALTER COLUMN {_quote(column['attname'])} TYPE BIGINT")
    oids = [t["oid"] for t in tables]
    await _lead_keys_with_tenant(conn, oids)
    for table in tables:
        name = _quote(table["relname"])
        await conn.execute(f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY")
        await conn.execute(f"ALTER TABLE {name} FORCE ROW LEVEL SECURITY")
        await conn.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {name}")
        await conn.execute(
            f"CREATE POLICY tenant_isolation ON {name} USING (tenant_id = {_CURRENT_TENANT})"
            f" WITH CHECK (tenant_id = {_CURRENT_TENANT})"
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


async def _grant(conn: asyncpg.Connection, role: str) -> None:
    """The application role may read and write rows, and nothing else (no DDL, no TRUNCATE)."""
    quoted = _quote(role)
    await conn.execute(f"REVOKE CREATE ON SCHEMA {DATA_SCHEMA} FROM PUBLIC")
    for schema in (DATA_SCHEMA, CONTROL_SCHEMA):
        await conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {quoted}")
        await conn.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {quoted}"
        )
        await conn.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {quoted}")


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
