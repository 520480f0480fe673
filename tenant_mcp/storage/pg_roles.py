"""Start-up checks of the serving roles: neither can bypass row-level security, the data role
holds row access and nothing more, and only the control-plane role reads the binding key."""

from __future__ import annotations

import asyncpg

from tenant_mcp.errors import ConfigurationError
from tenant_mcp.storage.pg import CONTROL_SCHEMA, DATA_SCHEMA, RLS_SCHEMA
from tenant_mcp.storage.sql import Connection


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
