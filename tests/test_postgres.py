"""The PostgreSQL backend: migrations, row-level security, the gateway, and the same servers.

Every test runs against a fresh database on the machine's PostgreSQL. Migrations run as the
owner (a superuser here); servers connect as `tenant_mcp_app`, a plain role.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tenant_mcp import ConstraintError, TenantMCPError
from tenant_mcp.controlplane import POSTGRES_MIGRATIONS, ControlPlane
from tenant_mcp.storage.gateway import check
from tenant_mcp.storage.pg_migrate import migrate
from tenant_mcp.storage.postgres import PostgresStore
from tests.helpers import (
    DATA_ROLE,
    ROOT,
    Postgres,
    ServerProcess,
    Tenants,
    clean_env,
    mcp_client,
    migrate_cli,
    migrated,
    postgres_database,
    run_cli,
    standard_tenants,
    tool_result,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def pg_notes() -> Iterator[Postgres]:
    with migrated("example_servers.notes:app") as pg:
        yield pg


@pytest.fixture(scope="module")
def pg_probe() -> Iterator[Postgres]:
    with migrated("tests.servers.probe:app") as pg:
        yield pg


@pytest.fixture(scope="module")
def probe_on_pg(
    pg_probe: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Tenants]]:
    t = standard_tenants(pg_probe.app)
    server = ServerProcess(
        "tests.servers.probe:app", pg_probe.app, log_dir=tmp_path_factory.mktemp("probe-pg")
    )
    yield server, t
    server.stop()


def test_migrate_shapes_every_table_and_runs_once(pg_notes: Postgres) -> None:
    again = migrate_cli("example_servers.notes:app", pg_notes)
    assert again.returncode == 0 and "already up to date" in again.stdout, again
    table = pg_notes.sql(
        "SELECT relrowsecurity, relforcerowsecurity, pg_get_userbyid(relowner) AS owner"
        " FROM pg_class WHERE oid = 'public.notes'::regclass"
    )[0]
    assert table["relrowsecurity"] and table["relforcerowsecurity"]
    assert table["owner"] != "tenant_mcp_app"
    key = pg_notes.sql(
        "SELECT ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, o)"
        " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o) AS cols"
        " FROM pg_constraint c WHERE c.conrelid = 'public.notes'::regclass AND c.contype = 'p'"
    )[0]
    assert key["cols"] == ["tenant_id", "id"]
    types = {
        r["attname"]: r["t"]
        for r in pg_notes.sql(
            "SELECT attname, format_type(atttypid, atttypmod) AS t FROM pg_attribute"
            " WHERE attrelid = 'public.notes'::regclass AND attnum > 0 AND NOT attisdropped"
        )
    }
    assert types["id"] == "bigint" and types["tenant_id"] == "text"
    role = pg_notes.sql(
        "SELECT rolsuper, rolbypassrls, has_table_privilege('tenant_mcp_app', 'public.notes', 'TRUNCATE') AS tr,"
        " has_schema_privilege('tenant_mcp_app', 'public', 'CREATE') AS cr FROM pg_roles WHERE rolname = 'tenant_mcp_app'"
    )[0]
    assert role == {"rolsuper": False, "rolbypassrls": False, "tr": False, "cr": False}
    versions = pg_notes.sql("SELECT component, version FROM tenant_mcp.schema_version ORDER BY 1, 2")
    control = [{"component": "control", "version": v} for v in range(1, len(POSTGRES_MIGRATIONS) + 1)]
    assert versions == [*control, {"component": "data", "version": 1}]


def test_server_refuses_a_role_that_bypasses_row_level_security(pg_notes: Postgres, tmp_path: Path) -> None:
    server = ServerProcess("example_servers.notes:app", pg_notes.owner, log_dir=tmp_path, wait=False)
    assert server.proc.wait(30) != 0
    assert "superuser or has BYPASSRLS" in server.log.read_text()
    server.stop()


def test_server_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    with postgres_database() as pg:
        server = ServerProcess("example_servers.notes:app", pg.app, log_dir=tmp_path, wait=False)
        assert server.proc.wait(30) != 0
        assert "run `tenant-mcp migrate" in server.log.read_text()
        server.stop()


async def test_notes_server_runs_unchanged_and_isolated(pg_notes: Postgres, tmp_path: Path) -> None:
    t = standard_tenants(pg_notes.app)
    server = ServerProcess("example_servers.notes:app", pg_notes.app, log_dir=tmp_path)
    try:
        async with mcp_client(server.url, t.keys["acme"]) as a, mcp_client(server.url, t.keys["globex"]) as b:
            note = (
                await a.call_tool("create_note", {"title": "Quarterly Plan", "body": "merger in Q3"})
            ).structured_content
            assert note is not None and "tenant_id" not in note and note["created_at"].endswith("Z")
            assert [
                n["title"] for n in tool_result(await a.call_tool("search_notes", {"query": "PLAN"}))
            ] == ["Quarterly Plan"]
            assert tool_result(await b.call_tool("list_notes", {})) == []
            assert tool_result(await b.call_tool("search_notes", {"query": "plan"})) == []
            stolen = await b.call_tool("get_note", {"note_id": note["id"]})
            missing = await b.call_tool("get_note", {"note_id": note["id"] + 1})
            assert stolen.is_error and missing.is_error
            # Another tenant's note answers exactly like a note that does not exist.
            assert stolen.content[0].text.replace(str(note["id"]), "N") == missing.content[0].text.replace(  # type: ignore[union-attr]
                str(note["id"] + 1), "N"
            )
            assert (await b.call_tool("delete_note", {"note_id": note["id"]})).is_error
            # The same title in another tenant is fine: keys are per tenant.
            assert not (
                await b.call_tool("create_note", {"title": "Quarterly Plan", "body": "copy"})
            ).is_error
            bad = [{"title": "ok", "body": "1"}, {"title": "", "body": "empty title"}]
            assert (await a.call_tool("bulk_import", {"notes": bad})).is_error
            assert len(tool_result(await a.call_tool("list_notes", {}))) == 1
            exported = json.loads((await a.call_tool("export_notes", {})).content[0].text)  # type: ignore[union-attr]
            assert [n["body"] for n in exported] == ["merger in Q3"]
            body = await a.read_resource(f"notes://{note['id']}")
            assert body.contents[0].text == "merger in Q3"  # type: ignore[union-attr]
    finally:
        server.stop()


async def test_careless_sql_sees_only_the_callers_rows(probe_on_pg: tuple[ServerProcess, Tenants]) -> None:
    server, t = probe_on_pg
    async with mcp_client(server.url, t.keys["acme"]) as a, mcp_client(server.url, t.keys["globex"]) as b:
        await a.call_tool("add_item", {"value": "acme secret"})
        await b.call_tool("add_item", {"value": "globex secret"})
        assert {
            r["owner"] for r in tool_result(await a.call_tool("raw_sql", {"sql": "SELECT * FROM items"}))
        } == {"acme"}
        # An update or delete without a WHERE touches only the caller's rows.
        assert tool_result(await a.call_tool("raw_sql", {"sql": "UPDATE items SET value = 'mine'"})) == [
            {"rowcount": 1}
        ]
        globex = tool_result(await b.call_tool("raw_sql", {"sql": "SELECT value FROM items"}))
        assert globex == [{"value": "globex secret"}]


async def test_tenant_a_cannot_reach_tenant_b_through_sql(probe_on_pg: tuple[ServerProcess, Tenants]) -> None:
    server, t = probe_on_pg
    other = t.ids["globex"]
    async with mcp_client(server.url, t.keys["globex"]) as b:
        await b.call_tool("add_item", {"value": "globex only"})
        before = tool_result(await b.call_tool("raw_sql", {"sql": "SELECT id, value FROM items ORDER BY id"}))
    refused = [
        f"SELECT set_config('tenant_mcp.tenant_id', '{other}', true)",
        f"SET tenant_mcp.tenant_id = '{other}'",
        f"set local tenant_mcp.tenant_id to '{other}'",
        "RESET ALL",
        "SET ROLE postgres",
        "SELECT * FROM tenant_mcp.api_keys",
        'SELECT * FROM "tenant_mcp"."tenants"',
        "SELECT * FROM pg_catalog.pg_tables",
        "SELECT query_to_xml('select * from items', true, false, '')",
        "COMMIT",
        "DROP TABLE items",
        "TRUNCATE items",
        "ALTER TABLE items DISABLE ROW LEVEL SECURITY",
        'SELECT * FROM U&"pg_cl\\0061ss"',
    ]
    async with mcp_client(server.url, t.keys["acme"]) as a:
        for sql in refused:
            result = await a.call_tool("raw_sql", {"sql": sql})
            assert result.is_error, sql
        # Past the gateway, the database itself holds the line.
        for sql in (
            f"INSERT INTO items (id, owner, value, tenant_id) VALUES (1, 'acme', 'planted', '{other}')",
            f"UPDATE items SET value = 'x' WHERE tenant_id = '{other}'",
            f"DELETE FROM items WHERE tenant_id = '{other}'",
            "SELECT 1; SELECT 2",
        ):
            result = await a.call_tool("raw_sql", {"sql": sql})
            assert result.is_error or tool_result(result) == [{"rowcount": 0}], (sql, result.content)
        assert (
            tool_result(
                await a.call_tool("raw_sql", {"sql": f"SELECT * FROM items WHERE tenant_id = '{other}'"})
            )
            == []
        )
        # A write that fails half-way, and a caught inner transaction, behave as on SQLite.
        assert (await a.call_tool("write_then_fail", {"value": "half"})).is_error
        assert tool_result(await a.call_tool("partial_transaction", {"value": "tx"})) == 1
        values = {
            r["value"] for r in tool_result(await a.call_tool("raw_sql", {"sql": "SELECT value FROM items"}))
        }
        assert "half" not in values and "tx:kept" in values and "tx:undone" not in values
    async with mcp_client(server.url, t.keys["globex"]) as b:
        assert (
            tool_result(await b.call_tool("raw_sql", {"sql": "SELECT id, value FROM items ORDER BY id"}))
            == before
        )
    # Each refusal is in acme's audit trail with its reason; the model saw only a generic error.
    await anyio.sleep(0.6)
    reasons = [e["reason"] or "" for e in t.audit("acme") if e["outcome"] == "denied"]
    assert sum("refused by the tenant gateway" in r for r in reasons) >= len(refused), reasons


async def test_a_pooled_connection_carries_no_tenant(pg_probe: Postgres) -> None:
    from tests.servers.probe import app

    store = await PostgresStore.open(pg_probe.data, app._migrations, binding_key=pg_probe.binding_key())
    tenant = "a" * 32
    try:
        db = store.database(tenant)
        await db.insert("items", {"id": 42, "owner": "direct", "value": "v"})
        assert [r["value"] for r in await db.fetch_all("SELECT value FROM items WHERE id = 42")] == ["v"]
        await db._finish(commit=True)
        async with store._pool.acquire() as conn:  # the same (only) connection, back from the pool
            assert await conn.fetchval("SELECT current_setting('tenant_mcp.binding', true)") in (None, "")
            assert await conn.fetchval("SELECT count(*) FROM items") == 0
            with pytest.raises(Exception, match=r"row-level security|null value"):
                await conn.execute("INSERT INTO items (id, owner, value) VALUES (43, 'x', 'y')")
        again = store.database(tenant)
        assert await again.fetch_value("SELECT count(*) FROM items WHERE id = 42") == 1
        await again._finish(commit=False)
    finally:
        await store.drop(tenant)
        await store.aclose()


async def test_two_tasks_of_one_call_share_its_connection_one_statement_at_a_time(pg_probe: Postgres) -> None:
    """asyncpg runs one statement at a time per connection; a call's tasks take turns on its own."""
    from tests.servers.probe import app

    store = await PostgresStore.open(pg_probe.data, app._migrations, binding_key=pg_probe.binding_key())
    tenant = "b" * 32
    try:
        db = store.database(tenant)
        await db.insert("items", {"id": 7, "owner": "direct", "value": "v"})
        counts = await asyncio.gather(*(db.fetch_value("SELECT count(*) FROM items") for _ in range(8)))
        assert counts == [1] * 8
        await db._finish(commit=True)
    finally:
        await store.drop(tenant)
        await store.aclose()


async def test_keys_unique_indexes_and_foreign_keys_hold_per_tenant() -> None:
    migrations = [
        """
        CREATE TABLE projects (id INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE);
        CREATE TABLE tasks (
            id INTEGER PRIMARY KEY,
            project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            title TEXT NOT NULL
        );
        CREATE UNIQUE INDEX tasks_title ON tasks (lower(title));
        CREATE TABLE labels (id INTEGER PRIMARY KEY, task_id INTEGER REFERENCES tasks(id) ON DELETE SET NULL);
        """,
        "ALTER TABLE tasks ADD COLUMN points INTEGER NOT NULL DEFAULT 0",
    ]
    with postgres_database() as pg:
        await migrate(pg.owner, control=(), data=migrations, app_role="tenant_mcp_app", data_role=DATA_ROLE)
        await migrate(
            pg.owner, control=(), data=migrations, app_role="tenant_mcp_app", data_role=DATA_ROLE
        )  # idempotent
        store = await PostgresStore.open(pg.app)
        a, b = "a" * 32, "b" * 32
        try:
            for tenant in (a, b):  # the same ids, codes and titles in two tenants
                db = store.database(tenant)
                await db.insert("projects", {"id": 1, "code": "X"})
                await db.insert("tasks", {"id": 1, "project_id": 1, "title": "Ship"})
                await db._finish(commit=True)
            db = store.database(a)
            await db.insert("projects", {"id": 2, "code": "Y"})
            await db._finish(commit=True)
            db = store.database(b)
            with pytest.raises(ConstraintError):  # a's project 2 is not b's to reference
                await db.insert("tasks", {"id": 2, "project_id": 2, "title": "Steal"})
            await db._finish(commit=False)
            db = store.database(b)
            with pytest.raises(ConstraintError):  # unique index holds within the tenant
                await db.insert("tasks", {"id": 3, "project_id": 1, "title": "SHIP"})
            await db._finish(commit=False)
            db = store.database(b)
            await db.insert("labels", {"id": 1, "task_id": 1})
            await db.delete("tasks", 1)  # SET NULL clears the reference, not the tenant
            assert await db.fetch_all("SELECT id, task_id FROM labels") == [{"id": 1, "task_id": None}]
            await db._finish(commit=True)
            await store.drop(b)
            assert pg.sql("SELECT format_type(atttypid, NULL) AS t FROM pg_attribute"
                          " WHERE attrelid = 'tasks'::regclass AND attname = 'points'") == [{"t": "bigint"}]  # fmt: skip
            db = store.database(a)
            assert await db.fetch_value("SELECT count(*) FROM tasks") == 1
            await db._finish(commit=False)
            assert pg.sql("SELECT count(*) AS n FROM projects WHERE tenant_id = $1", b) == [{"n": 0}]
        finally:
            await store.aclose()
        late = [
            *migrations,
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, task_id INTEGER REFERENCES tasks(id))",
        ]
        with pytest.raises(TenantMCPError, match=r"REFERENCES other \(tenant_id, id\)"):
            await migrate(pg.owner, control=(), data=late, app_role="tenant_mcp_app", data_role=DATA_ROLE)


def test_concurrent_migrations_apply_each_step_once() -> None:
    with postgres_database() as pg:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tenant_mcp.cli",
                    "migrate",
                    "example_servers.notes:app",
                    "--db",
                    pg.app,
                    "--migration-url",
                    pg.owner,
                ],
                cwd=ROOT,
                env=clean_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        outputs = [p.communicate(timeout=60) for p in procs]
        assert all(p.returncode == 0 for p in procs), outputs
        assert sorted(o[0].strip() for o in outputs).count("already up to date") == 2, outputs
        rows = pg.sql("SELECT component, count(*) AS n FROM tenant_mcp.schema_version GROUP BY 1 ORDER BY 1")
        assert rows == [
            {"component": "control", "n": len(POSTGRES_MIGRATIONS)},
            {"component": "data", "n": 1},
        ]


def test_cli_manages_tenants_on_postgres(pg_notes: Postgres, tmp_path: Path) -> None:
    env = {"TENANT_MCP_DATABASE_URL": pg_notes.app}
    assert run_cli("tenant", "create", "initech", "--plan", "pro", env=env).returncode == 0
    key = json.loads(run_cli("key", "create", "initech", "--json", env=env).stdout)["key"]
    canary = json.loads(run_cli("canary", "plant", "initech", "--json", env=env).stdout)["canary"]
    tenant_id = pg_notes.sql("SELECT id FROM tenant_mcp.tenants WHERE slug = 'initech'")[0]["id"]
    assert pg_notes.sql("SELECT value FROM tenant_mcp_canaries WHERE tenant_id = $1", tenant_id) == [
        {"value": canary}
    ]
    out = tmp_path / "initech.json"
    done = run_cli("tenant", "export", "initech", "-o", str(out), env=env)
    assert done.returncode == 0, done.stderr
    exported = json.loads(out.read_text())
    assert exported["tables"]["tenant_mcp_canaries"] == [{"value": canary}]
    assert key.startswith("tmk_")
    assert run_cli("tenant", "delete", "initech", "--yes", env=env).returncode == 0
    assert pg_notes.sql("SELECT count(*) AS n FROM tenant_mcp_canaries WHERE tenant_id = $1", tenant_id) == [
        {"n": 0}
    ]
    assert pg_notes.sql("SELECT count(*) AS n FROM tenant_mcp.tenants WHERE id = $1", tenant_id) == [{"n": 0}]


def test_migrate_explains_what_it_needs() -> None:
    sqlite = run_cli("migrate", "example_servers.notes:app", "--db", "sqlite:///x.db")
    assert sqlite.returncode == 2 and "migrate is for PostgreSQL" in sqlite.stderr
    assert "Traceback" not in sqlite.stderr
    with postgres_database() as pg:
        missing = run_cli(
            "migrate", "example_servers.notes:app", "--migration-url", pg.owner, "--app-role", "nobody_here"
        )
        assert missing.returncode == 2 and "role 'nobody_here' does not exist" in missing.stderr, (
            missing.stderr
        )
        start = time.monotonic()
        down = run_cli(
            "migrate", "example_servers.notes:app", "--migration-url", "postgresql://postgres@127.0.0.1:1/x"
        )
        assert down.returncode == 2 and "cannot connect to PostgreSQL" in down.stderr
        assert time.monotonic() - start < 30


def test_the_gateway_reads_sql_as_sql() -> None:
    """Words inside literals, comments and quoted names are not statements; a second statement
    after a semicolon is refused even when it looks harmless."""
    for ok in (
        "SELECT * FROM items WHERE value = 'set_config; SET x = 1'",
        "UPDATE items SET value = $1",
        "SELECT '--' AS x -- ; SET ROLE postgres",
        "SELECT 1 /* ; RESET ALL */;",
        "SELECT 1 /* /* nested */ ; RESET ALL */",
        "SELECT $$ ; SET ROLE x $$ AS text",
    ):
        check(ok)
    for bad, reason in (
        ("select SET_CONFIG('a', 'b', true)", "function set_config()"),
        ("SELECT 1; SELECT 2", "one statement"),
        ("UPDATE items SET v = 1; SET ROLE x", "one statement"),
        ('SELECT * FROM "pg_catalog"."pg_tables"', "pg_catalog.pg_tables"),
        ("SELECT 1 /* /* */ ' */; SELECT * FROM x", "one statement"),
        ("EXPLAIN ANALYZE SELECT 1", "EXPLAIN"),
        ("SELECT * INTO TEMP items FROM items", "INTO"),
        ("SELECT ts_stat('select 1')", "ts_stat()"),
        ("SELECT 'x'::regclass", "type regclass"),
        # typed fields of the tree are checked like any other node
        ("INSERT INTO tenant_mcp.tenants (id) VALUES (1)", "tenant_mcp.tenants"),
        ("UPDATE pg_settings SET setting = 'x'", "pg_settings"),
        ("DELETE FROM tenant_mcp.audit_events", "tenant_mcp.audit_events"),
        ("INSERT INTO items (v) VALUES (1) RETURNING v::regrole", "type regrole"),
        ("WITH d AS (DELETE FROM tenant_mcp.api_keys RETURNING *) SELECT 1", "tenant_mcp.api_keys"),
    ):
        with pytest.raises(TenantMCPError, match="gateway") as refused:
            check(bad)
        assert reason in str(refused.value), (bad, refused.value)


def test_control_plane_schemas_of_both_backends_match(pg_notes: Postgres, tmp_path: Path) -> None:
    """Both DDLs come from one table spec; a renderer that drops or adds a column for one backend fails here."""

    async def create() -> None:
        async with ControlPlane(f"sqlite:///{tmp_path}/cp.db"):
            pass

    anyio.run(create)
    conn = sqlite3.connect(tmp_path / "cp.db")
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name <> 'schema_version'"
        )
    ]
    sqlite = {t: sorted(r[1] for r in conn.execute(f"PRAGMA table_info({t})")) for t in tables}
    conn.close()
    rows = pg_notes.sql(
        "SELECT table_name AS t, column_name AS c FROM information_schema.columns"
        " WHERE table_schema = 'tenant_mcp' AND table_name <> 'schema_version'"
    )
    postgres: dict[str, list[str]] = {}
    for row in rows:
        postgres.setdefault(row["t"], []).append(row["c"])
    postgres = {
        t: sorted(c for c in cols if not (t == "tenants" and c == "seq")) for t, cols in postgres.items()
    }
    assert postgres == sqlite


async def test_stdio_on_postgres(pg_notes: Postgres, tmp_path: Path) -> None:
    from tests.test_stdio import stdio_session

    t = Tenants(pg_notes.app)
    t.create("stdio-a")
    t.create("stdio-b")
    async with (
        stdio_session(pg_notes.app, t.key("stdio-a"), tmp_path / "a.log") as a,
        stdio_session(pg_notes.app, t.key("stdio-b"), tmp_path / "b.log") as b,
    ):
        note = (await a.call_tool("create_note", {"title": "over stdio", "body": "a's"})).structured_content
        assert note is not None
        assert [n["title"] for n in tool_result(await a.call_tool("list_notes", {}))] == ["over stdio"]
        assert tool_result(await b.call_tool("list_notes", {})) == []
        assert (await b.call_tool("get_note", {"note_id": note["id"]})).is_error
