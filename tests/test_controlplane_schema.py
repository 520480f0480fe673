"""The control plane's DDL, generated from one table spec: databases the hand-written DDL created
(tests/controlplane_ddl_v1.py) open with this code, migrate cleanly from any version, and end up
with the very schema a fresh database gets, on both backends."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tenant_mcp import TenantMCPError
from tenant_mcp.controlplane import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS, ControlPlane
from tenant_mcp.controlplane.schema import AddColumn, Column, Index, Table, current_tables, render_table
from tenant_mcp.controlplane.tables import STEPS
from tenant_mcp.models import Tenant
from tenant_mcp.storage.pg_migrate import migrate
from tests import controlplane_ddl_v1 as v1
from tests.helpers import APP_ROLE, DATA_ROLE, Postgres, in_thread, postgres_database

pytestmark = pytest.mark.anyio


def _fold(sql: str | None) -> str:
    return re.sub(r"\s+", " ", sql or "").replace("( ", "(").replace(" )", ")").strip()


def _sqlite_schema(path: Path) -> dict[str, Any]:
    """Everything SQLite knows of each table: columns, keys, indexes, foreign keys, its DDL text."""
    conn = sqlite3.connect(path)
    try:
        out: dict[str, Any] = {}
        for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        ):
            indexes = [
                (i[1], i[2], i[3], [c[2] for c in conn.execute(f"PRAGMA index_info({i[1]})")])
                for i in conn.execute(f"PRAGMA index_list({name})")
            ]
            out[name] = {
                "sql": _fold(sql),
                "columns": conn.execute(f"PRAGMA table_xinfo({name})").fetchall(),
                "indexes": sorted(indexes),
                "foreign": conn.execute(f"PRAGMA foreign_key_list({name})").fetchall(),
            }
        out["versions"] = [v for (v,) in conn.execute("SELECT version FROM schema_version ORDER BY version")]
        return out
    finally:
        conn.close()


def _create_v1(path: Path, versions: int) -> None:
    """What the hand-written migrator did, for the first `versions` scripts."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        for version, script in enumerate(v1.SQLITE[:versions], start=1):
            for statement in filter(None, (s.strip() for s in script.split(";"))):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        conn.execute(
            "INSERT INTO tenants (id, slug, name, plan, status, metadata, created_at)"
            " VALUES ('t1', 'acme', 'Acme', 'free', 'active', '{}', '2026-01-01T00:00:00Z')"
        )
    conn.close()


async def _fresh_sqlite(tmp_path: Path) -> dict[str, Any]:
    async with ControlPlane(f"sqlite:///{tmp_path}/fresh.db"):
        pass
    return _sqlite_schema(tmp_path / "fresh.db")


@pytest.mark.parametrize("versions", range(1, len(v1.SQLITE) + 1))
async def test_sqlite_control_plane_of_the_hand_written_ddl_opens_and_migrates(
    tmp_path: Path, versions: int
) -> None:
    old = tmp_path / "old.db"
    _create_v1(old, versions)
    async with ControlPlane(f"sqlite:///{old}") as cp:
        tenant = await cp.require_tenant("acme")
        assert (tenant.id, tenant.name, tenant.disabled) == ("t1", "Acme", frozenset())
        _, key = await cp.create_key("acme", scopes=["read"], items=["tool:x"])
        await cp.set_item_policy("acme", "tool:x", "disabled")
        await cp.delete_tenant("acme")
        assert await cp.list_tenants() == []
    assert key
    assert _sqlite_schema(old) == await _fresh_sqlite(tmp_path)


async def test_sqlite_versions_are_the_hand_written_ones(tmp_path: Path) -> None:
    """The same first steps (later ones are tables added since): a database at version N has
    exactly the tables of version N."""
    assert len(SQLITE_MIGRATIONS) >= len(v1.SQLITE)
    for versions in range(1, len(v1.SQLITE) + 1):
        old, new = tmp_path / f"old{versions}.db", tmp_path / f"new{versions}.db"
        _create_v1(old, versions)
        conn = sqlite3.connect(new)
        with conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            for version, statements in enumerate(SQLITE_MIGRATIONS[:versions], start=1):
                for statement in statements:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        conn.close()
        assert _sqlite_schema(old) == _sqlite_schema(new), versions


# -- PostgreSQL ------------------------------------------------------------------------------------

_PG_SCHEMA = {
    "columns": "SELECT c.relname AS t, a.attnum AS n, a.attname AS c, format_type(a.atttypid, a.atttypmod) AS type,"
    " a.attnotnull AS notnull, a.attidentity AS identity, pg_get_expr(d.adbin, d.adrelid) AS dflt"
    " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace s ON s.oid = c.relnamespace"
    " LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
    " WHERE s.nspname IN ('tenant_mcp', 'public') AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped"
    " AND c.relname <> 'schema_version' ORDER BY 1, 2",
    "constraints": "SELECT conrelid::regclass::text AS t, conname, pg_get_constraintdef(oid) AS def"
    " FROM pg_constraint WHERE connamespace IN ('tenant_mcp'::regnamespace, 'public'::regnamespace)"
    " ORDER BY 1, 2",
    "indexes": "SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes"
    " WHERE schemaname IN ('tenant_mcp', 'public') ORDER BY 1, 2, 3",
    "tables": "SELECT relname, relrowsecurity, relforcerowsecurity, pg_get_userbyid(relowner) AS owner,"
    " relacl::text AS acl FROM pg_class"
    " WHERE relnamespace IN ('tenant_mcp'::regnamespace, 'public'::regnamespace) ORDER BY 1",
    "versions": "SELECT component, version FROM tenant_mcp.schema_version ORDER BY 1, 2",
}


def _pg_schema(pg: Postgres) -> dict[str, Any]:
    return {what: pg.sql(query) for what, query in _PG_SCHEMA.items()}


async def _migrate(pg: Postgres, control: tuple[str, ...]) -> dict[str, int]:
    return await migrate(pg.owner, control=control, data=[], app_role=APP_ROLE, data_role=DATA_ROLE)


@pytest.fixture(scope="module")
def fresh_pg() -> Iterator[dict[str, Any]]:
    with postgres_database() as pg:
        assert in_thread(_migrate(pg, POSTGRES_MIGRATIONS)) == {
            "control": len(POSTGRES_MIGRATIONS),
            "data": 0,
        }
        yield _pg_schema(pg)


@pytest.mark.parametrize("versions", range(1, len(v1.POSTGRES) + 1))
async def test_postgres_control_plane_of_the_hand_written_ddl_opens_and_migrates(
    fresh_pg: dict[str, Any], versions: int
) -> None:
    assert len(POSTGRES_MIGRATIONS) >= len(v1.POSTGRES)  # later steps: tables added since
    with postgres_database() as pg:
        await _migrate(pg, v1.POSTGRES[:versions])
        if versions < len(POSTGRES_MIGRATIONS):
            with pytest.raises(TenantMCPError, match=f"at version {versions}, this server needs"):
                await ControlPlane(pg.app).open()
        applied = await _migrate(pg, POSTGRES_MIGRATIONS)
        assert applied == {"control": len(POSTGRES_MIGRATIONS) - versions, "data": 0}
        async with ControlPlane(pg.app) as cp:
            await cp.create_tenant("acme")
            _, key = await cp.create_key("acme", scopes=["read"], items=["tool:x"])
            await cp.set_item_policy("acme", "tool:x", "disabled")
            assert [t.slug for t in await cp.list_tenants()] == ["acme"]
            await cp.delete_tenant("acme")
        assert key
        assert _pg_schema(pg) == fresh_pg


def test_a_table_spec_renders_each_dialect() -> None:
    table = Table(
        "events",
        (
            Column("id", "integer", identity=True),
            Column("at", "real"),
            Column("body", "blob", null=True),
            Column("kind", "text", default="it's", choices=("a", "b")),
        ),
        primary_key=("id",),
        indexes=(Index("events_at", ("at",)),),
    )
    assert [_fold(s) for s in render_table(table, "sqlite")] == [
        "CREATE TABLE events (id INTEGER PRIMARY KEY, at REAL NOT NULL, body BLOB,"
        " kind TEXT NOT NULL DEFAULT 'it''s' CHECK (kind IN ('a', 'b')))",
        "CREATE INDEX events_at ON events(at)",
    ]
    assert _fold(render_table(table, "postgresql")[0]) == (
        "CREATE TABLE events (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at DOUBLE PRECISION NOT NULL,"
        " body BYTEA, kind TEXT NOT NULL DEFAULT 'it''s' CHECK (kind IN ('a', 'b')))"
    )


def test_a_table_spec_refuses_what_it_cannot_render() -> None:
    with pytest.raises(ValueError, match="must be the INTEGER key"):
        Table("t", (Column("id", "integer", identity=True), Column("k", "text")), primary_key=("k",))
    with pytest.raises(ValueError, match="does not have"):
        Table("t", (Column("id", "text"),), primary_key=("id",), indexes=(Index("t_x", ("x",)),))
    with pytest.raises(ValueError, match="NOT NULL one without a default"):
        AddColumn("t", Column("x", "text"))
    with pytest.raises(ValueError, match="declared twice"):
        Table("t", (Column("id", "text"), Column("id", "text")))


def _sample(column: Column, tenant: Tenant) -> Any:
    """A value `column` accepts, distinct per tenant where it is text (keys are text)."""
    if column.name == "tenant_id":
        return tenant.id
    if column.choices:
        return column.choices[0]
    return {"text": f"{tenant.slug}-{column.name}", "integer": 1, "real": 1.0, "blob": b"x"}[column.type]


async def test_deleting_a_tenant_empties_every_table_with_a_tenant_id(tmp_path: Path) -> None:
    """A table added to the spec with a tenant_id column is purged with its tenant, unasked."""
    async with ControlPlane(f"sqlite:///{tmp_path}/cp.db") as cp:
        gone, kept = await cp.create_tenant("gone"), await cp.create_tenant("kept")
        tables = [
            t for t in current_tables(STEPS, "sqlite").values() if "tenant_id" in {c.name for c in t.columns}
        ]
        assert len(tables) >= 9
        for table in tables:
            for tenant in (gone, kept):
                values = {c.name: _sample(c, tenant) for c in table.columns if not c.identity}
                await cp.db.execute(
                    f"INSERT INTO {table.name} ({', '.join(values)}) VALUES ({', '.join('?' for _ in values)})",
                    list(values.values()),
                )
        await cp.delete_tenant("gone")
        for table in tables:
            rows = await cp.db.fetch_all(f"SELECT tenant_id FROM {table.name}")
            assert [r["tenant_id"] for r in rows] == [kept.id], table.name


async def test_a_sqlite_control_plane_of_a_newer_release_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cp.db'}"
    async with ControlPlane(url):
        pass
    conn = sqlite3.connect(tmp_path / "cp.db")
    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (len(SQLITE_MIGRATIONS) + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(TenantMCPError, match="newer than this version of tenant_mcp knows"):
        async with ControlPlane(url):
            pass
