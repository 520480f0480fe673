"""The tenant shape of every table of tenant data on PostgreSQL (`tenantize`).

A ``tenant_id`` column (defaulting to the transaction's claimed tenant), leading every key, unique
index and exclusion constraint, and a forced policy that shows and accepts only rows of the
verified tenant. Views run as the caller, under those policies.
"""

from __future__ import annotations

import re

import asyncpg

from tenant_mcp.errors import TenantMCPError
from tenant_mcp.storage.pg import BINDING_SETTING, CURRENT_TENANT, DATA_SCHEMA, quote

_CLAIMED_TENANT = f"split_part(current_setting('{BINDING_SETTING}', true), '/', 1)"


async def tenantize(conn: asyncpg.Connection) -> None:
    """Give every table of tenant data its tenant column, keys and policy. Idempotent."""
    tables = await conn.fetch(
        "SELECT c.oid, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY c.relname",
        DATA_SCHEMA,
    )
    for table in tables:
        name = quote(table["relname"])
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
            await conn.execute(f"ALTER TABLE {name} ALTER COLUMN {quote(column['attname'])} TYPE BIGINT")
    oids = [t["oid"] for t in tables]
    await _lead_keys_with_tenant(conn, oids)
    # A view runs as its owner unless it is a security-invoker view; then the caller's policies apply.
    for view in await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relkind = 'v'",
        DATA_SCHEMA,
    ):
        await conn.execute(f"ALTER VIEW {quote(view['relname'])} SET (security_invoker = true)")
    for table in tables:
        name = quote(table["relname"])
        await conn.execute(f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY")
        await conn.execute(f"ALTER TABLE {name} FORCE ROW LEVEL SECURITY")
        await conn.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {name}")
        # A scalar subquery: the binding is verified once per statement, not once per row.
        await conn.execute(
            f"CREATE POLICY tenant_isolation ON {name} USING (tenant_id = (SELECT {CURRENT_TENANT}))"
            f" WITH CHECK (tenant_id = (SELECT {CURRENT_TENANT}))"
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
        await conn.execute(f"ALTER TABLE {fk['tbl']} DROP CONSTRAINT {quote(fk['conname'])}")
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
        columns = ", ".join(quote(c) for c in ["tenant_id", *key["cols"]])
        await conn.execute(
            f"ALTER TABLE {key['tbl']} DROP CONSTRAINT {quote(key['conname'])},"
            f" ADD CONSTRAINT {quote(key['conname'])} {kind} ({columns})"
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
        cols = ", ".join(quote(c) for c in fk["cols"])
        # SET NULL / SET DEFAULT must not touch tenant_id (PostgreSQL 15 column lists).
        actions = re.sub(r"(ON DELETE SET (?:NULL|DEFAULT))(?! \()", rf"\1 ({cols})", actions)
        await conn.execute(
            f"ALTER TABLE {fk['tbl']} ADD CONSTRAINT {quote(fk['conname'])} FOREIGN KEY (tenant_id, {cols})"
            f" REFERENCES {fk['ref']} (tenant_id, {', '.join(quote(c) for c in fk['refcols'])}){actions}"
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
            f"ALTER TABLE {ex['tbl']} DROP CONSTRAINT {quote(ex['conname'])},"
            f" ADD CONSTRAINT {quote(ex['conname'])} {definition}"
        )
