"""PostgreSQL migrations, applied by `migrate()` as the tables' owner (`tenant-mcp migrate`).

Under an advisory lock, so replicas starting together apply each step once: the control plane's
steps in schema ``tenant_mcp``, the app's data steps in ``public`` (each checked for what
row-level security cannot scope, then brought to the tenant shape by `pg_tenantize`), the
binding key and its verifier, and the grants of the two serving roles. A server only checks the
versions (`check_version`).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import asyncpg

from tenant_mcp.errors import ConfigurationError, TenantMCPError
from tenant_mcp.storage.pg import (
    BINDING_SETTING,
    CONTROL_SCHEMA,
    CURRENT_TENANT,
    DATA_SCHEMA,
    RLS_SCHEMA,
    connect,
    quote,
)
from tenant_mcp.storage.pg_tenantize import tenantize
from tenant_mcp.storage.sql import Connection

_MIGRATION_LOCK = 0x7E4A_4E7D_C0DE  # pg_advisory_xact_lock key: one migrator per database at a time


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
    conn = await connect(url)
    try:
        return str(await conn.fetchval("SELECT current_user"))
    finally:
        await conn.close()


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
    conn = await connect(url)
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
        f"""CREATE OR REPLACE FUNCTION {CURRENT_TENANT} RETURNS text
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
    await conn.execute(f"REVOKE ALL ON FUNCTION {CURRENT_TENANT} FROM PUBLIC")


async def _least_privilege(conn: asyncpg.Connection) -> None:
    """What no serving role needs: creating objects in the data schema, or temporary tables
    (a temporary table has no policy and is searched before the tenant tables)."""
    await conn.execute(f"REVOKE CREATE ON SCHEMA {DATA_SCHEMA} FROM PUBLIC")
    database = await conn.fetchval("SELECT current_database()")
    # Only the database's owner can revoke this; otherwise the server's start-up check says what to do.
    await conn.execute(f"REVOKE TEMPORARY ON DATABASE {quote(database)} FROM PUBLIC")


async def _grant_control(conn: asyncpg.Connection, role: str) -> None:
    """The control-plane role: rows of the control plane and (for the CLI) of tenant data, the key."""
    quoted = quote(role)
    for schema in (DATA_SCHEMA, CONTROL_SCHEMA):
        await conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {quoted}")
        await conn.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {quoted}"
        )
    await conn.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {CONTROL_SCHEMA} TO {quoted}")
    await conn.execute(f"GRANT USAGE ON SCHEMA {RLS_SCHEMA} TO {quoted}")
    await conn.execute(f"GRANT SELECT ON {RLS_SCHEMA}.binding_key TO {quoted}")
    await conn.execute(f"GRANT EXECUTE ON FUNCTION {CURRENT_TENANT} TO {quoted}")


async def _grant_data(conn: asyncpg.Connection, role: str) -> None:
    """The data role of `ctx.db`: rows of tenant tables, and nothing else anywhere."""
    quoted = quote(role)
    for schema in (CONTROL_SCHEMA, RLS_SCHEMA):  # an earlier grant (one role for all) is taken back
        await conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {quoted}")
        await conn.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {quoted}")
    await conn.execute(f"REVOKE ALL ON SCHEMA {CONTROL_SCHEMA} FROM {quoted}")
    await conn.execute(f"GRANT USAGE ON SCHEMA {DATA_SCHEMA} TO {quoted}")
    await conn.execute(
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {DATA_SCHEMA} TO {quoted}"
    )
    await conn.execute(f"GRANT USAGE ON SCHEMA {RLS_SCHEMA} TO {quoted}")
    await conn.execute(f"GRANT EXECUTE ON FUNCTION {CURRENT_TENANT} TO {quoted}")
