"""Tenant A attacking tenant B through `ctx.db` on PostgreSQL.

Each hostile statement runs as careless tool SQL of tenant A, and a set of payloads runs as an
injected argument of a tool that formats its SQL with an f-string. Whatever the gateway lets
through, the database must hold the line: no statement may read or write a row of tenant B or any
row of the control plane, and none may leave anything behind on a pooled connection for the next
borrower. The binding itself is attacked below the gateway, on a raw data-role connection.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tenant_mcp import FULL_TEXT_SEARCH, SQLAllowList
from tenant_mcp.storage.pg_migrate import migrate
from tenant_mcp.storage.postgres import PostgresStore
from tenant_mcp.storage.sql import GatewayRefusal
from tests.helpers import (
    DATA_ROLE,
    Postgres,
    ServerProcess,
    Tenants,
    mcp_client,
    migrated,
    postgres_database,
    run_cli,
    standard_tenants,
)

pytestmark = pytest.mark.anyio

B_SECRET = "globex-secret-7f3a"
A_SECRET = "acme-secret-19c2"

# {b} is tenant B's id. A statement passes when it is refused, fails, or does nothing to B.
HOSTILE = [
    # functions that execute SQL text
    "SELECT ts_stat('SELECT to_tsvector(set_config(''tenant_mcp.binding'', ''{b}'', true))')",
    "SELECT * FROM ts_stat('SELECT to_tsvector(set_config(''tenant_mcp.tenant_id'', ''{b}'', true))')",
    "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, slug::tsquery FROM tenant_mcp.tenants')",
    "SELECT query_to_xml('select * from tenant_mcp.api_keys', true, false, '')",
    "SELECT query_to_xml('select set_config(''tenant_mcp.binding'', ''{b}'', true)', true, false, '')",
    "SELECT table_to_xml('tenant_mcp.tenants', true, false, '')",
    "SELECT schema_to_xml('tenant_mcp', true, false, '')",
    "SELECT database_to_xml(true, false, '')",
    "SELECT query_to_xml_and_xmlschema('select * from items', true, false, '')",
    "SELECT xpath('/a', query_to_xml('select * from items', true, false, ''))",
    "SELECT dblink('dbname=test', 'select 1')",
    # settings, roles, sessions
    "SELECT set_config('tenant_mcp.binding', '{b}', true)",
    "SELECT set_config('tenant_mcp.tenant_id', '{b}', true)",
    "SELECT set_config('role', 'postgres', true)",
    "SELECT current_setting('tenant_mcp.binding')",
    "SELECT * FROM pg_settings",
    "UPDATE pg_settings SET setting = 'postgres' WHERE name = 'role'",
    "SET ROLE postgres",
    "SET tenant_mcp.binding = '{b}'",
    "set local tenant_mcp.tenant_id to '{b}'",
    "RESET ALL",
    "RESET ROLE",
    "DISCARD ALL",
    "SET SESSION AUTHORIZATION postgres",
    # catalogues, files, sequences, large objects, locks
    "SELECT * FROM pg_stat_activity",
    "SELECT * FROM pg_catalog.pg_roles",
    "SELECT * FROM information_schema.tables",
    "SELECT 'tenant_mcp.tenants'::regclass",
    "SELECT 'postgres'::regrole",
    "SELECT to_regclass('tenant_mcp.tenants')",
    "SELECT has_table_privilege('tenant_mcp.api_keys', 'select')",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT nextval('tenant_mcp.audit_events_id_seq')",
    "SELECT lo_import('/etc/passwd')",
    "SELECT pg_advisory_lock(1)",
    "SELECT pg_sleep(0)",
    "SELECT pg_terminate_backend(pg_backend_pid())",
    "SELECT txid_current()",
    "SELECT version()",
    "SELECT row_security_active('items')",
    # the control plane
    "SELECT * FROM tenant_mcp.tenants",
    'SELECT * FROM "tenant_mcp"."api_keys"',
    'SELECT * FROM U&"tenant\\005fmcp".tenants',
    "TABLE tenant_mcp.tenants",
    "VALUES ((SELECT count(*) FROM tenant_mcp.api_keys))",
    "SELECT (SELECT slug FROM tenant_mcp.tenants LIMIT 1)",
    "SELECT * FROM items WHERE value = ANY(SELECT digest FROM tenant_mcp.api_keys)",
    "SELECT * FROM tenant_mcp_rls.binding_key",
    "INSERT INTO tenant_mcp.leak_markers (tenant_id, kind, value, created_at) VALUES ('{b}', 'canary', 'x', '')",
    "UPDATE tenant_mcp.api_keys SET revoked_at = NULL",
    "DELETE FROM tenant_mcp.audit_events",
    "UPDATE tenant_mcp.tenants SET status = 'active' RETURNING *",
    "SELECT CAST('tenant_mcp.tenants' AS regclass)",
    # comment and quoting tricks
    "SELECT 1 /* /* */ ' */; SELECT * FROM tenant_mcp.tenants",
    "SELECT 1 /* /* */ ' */ FROM tenant_mcp.tenants",
    "SELECT $$ ' $$, * FROM tenant_mcp.tenants",
    "SELECT $a$ x $a$; SELECT 1",
    "SELECT E'\\\\' ; SELECT * FROM tenant_mcp.api_keys --'",
    "SELECT 'a' -- '\n; SET ROLE postgres",
    "SELECT 1; RESET ALL",
    "SELECT * FROM items; SELECT * FROM tenant_mcp.tenants",
    'SELECT * FROM U&"\\0069tems"',
    # temp objects, INTO, DDL, EXPLAIN
    "SELECT * INTO TEMP items FROM items WHERE false",
    "SELECT * INTO items_copy FROM items",
    "CREATE TEMP TABLE items (id bigint, owner text, value text, tenant_id text)",
    "CREATE TABLE stolen (id int)",
    "SELECT * FROM pg_temp.items",
    "EXPLAIN SELECT * FROM items",
    "EXPLAIN ANALYZE SELECT * FROM items WHERE value = '" + B_SECRET + "'",
    "EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM items",
    # writes aimed at B
    "INSERT INTO items (id, owner, value, tenant_id) VALUES (1, 'x', 'planted', '{b}')",
    "INSERT INTO items SELECT id + 1, owner, value, '{b}' FROM items",
    "UPDATE items SET tenant_id = '{b}'",
    "UPDATE items SET value = 'x' WHERE tenant_id = '{b}'",
    "DELETE FROM items WHERE tenant_id = '{b}'",
    "WITH x AS (SELECT set_config('tenant_mcp.binding', '{b}', true)) SELECT * FROM x, items",
    "WITH d AS (UPDATE items SET value = value RETURNING *) SELECT * FROM d",
    "MERGE INTO items USING items AS s ON false WHEN NOT MATCHED THEN DO NOTHING",
    # utility statements and transaction control
    "COMMIT",
    "BEGIN",
    "SAVEPOINT s",
    "PREPARE p AS SELECT * FROM tenant_mcp.tenants",
    "DO $$ BEGIN PERFORM set_config('tenant_mcp.binding', '{b}', false); END $$",
    "COPY items TO STDOUT",
    "LISTEN x",
    "NOTIFY x",
    "LOCK TABLE items",
    "TRUNCATE items",
    "ALTER TABLE items DISABLE ROW LEVEL SECURITY",
    "DROP POLICY tenant_isolation ON items",
    "CALL x()",
    "DECLARE c CURSOR FOR SELECT 1",
    "VACUUM items",
    "SELECT * FROM items TABLESAMPLE SYSTEM (50)",
    "SELECT xmlparse(document '<x/>')",
]

INJECTED = [
    "x' OR 1=1 --",
    "%' UNION SELECT 1, slug FROM tenant_mcp.tenants --",
    "%' UNION SELECT 1, digest FROM tenant_mcp.api_keys --",
    "' || (SELECT set_config('tenant_mcp.binding', '{b}', true)) || '",
    "x' AND ts_stat('SELECT to_tsvector(set_config(''tenant_mcp.binding'', ''{b}'', true))') IS NOT NULL --",
    "x'; SET ROLE postgres; --",
    "x' /* /* */ ' */ UNION SELECT 1, slug FROM tenant_mcp.tenants --",
    "%' UNION SELECT 1, value FROM items WHERE tenant_id <> '' --",
]


def owner_sql(pg: Postgres, query: str, *args: Any) -> list[dict[str, Any]]:
    return pg.sql(query, *args)


def _snapshot(pg: Postgres, b: str) -> Any:
    return (
        owner_sql(pg, "SELECT id, owner, value FROM items WHERE tenant_id = $1 ORDER BY id", b),
        owner_sql(pg, "SELECT id, slug, status FROM tenant_mcp.tenants ORDER BY id"),
        owner_sql(pg, "SELECT key_id, revoked_at FROM tenant_mcp.api_keys ORDER BY key_id"),
        owner_sql(pg, "SELECT count(*) AS n FROM pg_class WHERE relpersistence = 't'"),
    )


def _forbidden(t: Tenants, pg: Postgres) -> list[str]:
    """Strings that must never reach tenant A: B's data and anything of the control plane."""
    keys = owner_sql(pg, "SELECT key_id, digest FROM tenant_mcp.api_keys")
    return [B_SECRET, t.ids["globex"], "globex", *[k["key_id"] for k in keys], *[k["digest"] for k in keys]]


@pytest.fixture(scope="module")
def pg_attack() -> Iterator[tuple[Postgres, Tenants]]:
    with migrated("tests.servers.probe:app") as pg:
        yield pg, standard_tenants(pg.app)


@pytest.fixture
async def store(pg_attack: tuple[Postgres, Tenants]) -> AsyncIterator[PostgresStore]:
    pg, _ = pg_attack
    s = await PostgresStore.open(pg.data, [], binding_key=_key(pg), max_size=1)
    try:
        yield s
    finally:
        await s.aclose()


def _key(pg: Postgres) -> bytes:
    return pg.binding_key()


async def _seed(store: PostgresStore, tenant: str, value: str) -> None:
    """The tenant holds exactly one row, `value` (attacks may have changed its own rows)."""
    db = store.database(tenant)
    await db.execute("DELETE FROM items")
    await db.execute("INSERT INTO items (id, owner, value) VALUES (?, ?, ?)", (7, "o", value))
    await db._finish(commit=True)


@pytest.mark.parametrize("template", HOSTILE)
async def test_hostile_tool_sql_stays_in_its_tenant(
    template: str, pg_attack: tuple[Postgres, Tenants], store: PostgresStore
) -> None:
    pg, t = pg_attack
    a, b = t.ids["acme"], t.ids["globex"]
    await _seed(store, b, B_SECRET)
    await _seed(store, a, A_SECRET)
    before = _snapshot(pg, b)
    sql = template.format(b=b)
    db = store.database(a)
    seen: Any = None
    try:
        seen = (
            await db.fetch_all(sql)
            if sql.lstrip().upper().startswith(("SELECT", "WITH", "TABLE", "VALUES"))
            else await db.execute(sql)
        )
        # Whatever ran, the same transaction still sees only tenant A.
        after = await db.fetch_all("SELECT value FROM items")
        assert {r["value"] for r in after} <= {A_SECRET, "x", "planted"}, (sql, after)
        await db._finish(commit=True)
    except Exception:
        await db._finish(commit=False)
    for needle in _forbidden(t, pg):
        assert needle not in repr(seen), (sql, seen)
    assert _snapshot(pg, b) == before, sql
    # The next borrower of the (only) pooled connection is B: it sees B's rows and nothing else.
    nxt = store.database(b)
    rows = await nxt.fetch_all("SELECT value FROM items")
    await nxt._finish(commit=False)
    assert [r["value"] for r in rows] == [B_SECRET], (sql, rows)


async def test_injected_arguments_stay_in_their_tenant(
    pg_attack: tuple[Postgres, Tenants], tmp_path: Path
) -> None:
    pg, t = pg_attack
    server = ServerProcess("tests.servers.probe:app", pg.app, log_dir=tmp_path)
    try:
        async with mcp_client(server.url, t.keys["globex"]) as b:
            assert not (await b.call_tool("add_item", {"value": B_SECRET + "-via-server"})).is_error
        async with mcp_client(server.url, t.keys["acme"]) as a:
            assert not (await a.call_tool("search_items", {"term": "nothing"})).is_error  # the tool works
            for template in INJECTED:
                result = await a.call_tool("search_items", {"term": template.format(b=t.ids["globex"])})
                text = repr(result.content) + repr(result.structured_content)
                for needle in _forbidden(t, pg):
                    assert needle not in text, (template, text)
                after = await a.call_tool("raw_sql", {"sql": "SELECT value FROM items"})
                assert B_SECRET not in repr(after.structured_content), template
    finally:
        server.stop()


async def test_a_forged_or_replayed_binding_sees_nothing(pg_attack: tuple[Postgres, Tenants]) -> None:
    """Below the gateway: the data role itself, on raw connections, cannot make RLS see B."""
    pg, t = pg_attack
    a, b = t.ids["acme"], t.ids["globex"]
    store = await PostgresStore.open(pg.data, [], binding_key=_key(pg), max_size=1)
    try:
        await _seed(store, b, B_SECRET)
        await _seed(store, a, A_SECRET)
        # A's genuine binding, as the framework set it on its connection.
        db = store.database(a)
        assert await db.fetch_value("SELECT count(*) FROM items") >= 1
        await db._finish(commit=False)
    finally:
        await store.aclose()
    conn = await asyncpg.connect(pg.data)
    other = await asyncpg.connect(pg.data)
    try:
        for forged in (b, f"{b}/", f"{b}/" + "0" * 64, f"{b}/{'f' * 64}", f"{a}/{'0' * 64}"):
            async with conn.transaction():
                await conn.execute("SELECT set_config('tenant_mcp.binding', $1, true)", forged)
                assert await conn.fetchval("SELECT count(*) FROM items") == 0, forged
                with pytest.raises(asyncpg.PostgresError):
                    await conn.execute("INSERT INTO items (id, owner, value) VALUES (5, 'x', 'y')")
        # A valid binding for one connection is worthless on another (a replay).
        from tenant_mcp.storage.postgres import binding_value

        valid = binding_value(_key(pg), a, conn.get_server_pid())
        async with conn.transaction():
            await conn.execute("SELECT set_config('tenant_mcp.binding', $1, true)", valid)
            assert await conn.fetchval("SELECT count(*) FROM items WHERE value = $1", A_SECRET) == 1
            assert await conn.fetchval("SELECT count(*) FROM items WHERE value = $1", B_SECRET) == 0
        async with other.transaction():
            await other.execute("SELECT set_config('tenant_mcp.binding', $1, true)", valid)
            assert await other.fetchval("SELECT count(*) FROM items") == 0
        # The binding does not outlive its transaction.
        assert await conn.fetchval("SELECT count(*) FROM items") == 0
        # Least privilege: no control plane, no key, no temp objects, no role switch.
        for sql in (
            "SELECT * FROM tenant_mcp_rls.binding_key",
            "SELECT * FROM tenant_mcp.tenants",
            "CREATE TEMP TABLE t (x int)",
            "CREATE TABLE t (x int)",
            "SET ROLE postgres",
            "SET ROLE tenant_mcp_app",
            "SELECT nextval('tenant_mcp.audit_events_id_seq')",
        ):
            with pytest.raises(asyncpg.PostgresError):
                await conn.execute(sql)
    finally:
        await conn.close()
        await other.close()


async def test_two_tenants_on_tiny_pools_never_see_each_other(pg_attack: tuple[Postgres, Tenants]) -> None:
    pg, t = pg_attack
    a, b = t.ids["acme"], t.ids["globex"]
    for size in (1, 2):
        store = await PostgresStore.open(pg.data, [], binding_key=_key(pg), max_size=size)
        try:
            await _seed(store, a, A_SECRET)
            await _seed(store, b, B_SECRET)

            async def worker(store: PostgresStore, tenant: str, mine: str, rounds: int = 25) -> None:
                for i in range(rounds):
                    for attempt in (
                        "SELECT * INTO TEMP items FROM items WHERE false",
                        "CREATE TEMP TABLE items (id bigint, owner text, value text, tenant_id text)",
                        "SELECT set_config('tenant_mcp.binding', '', false)",
                        "SET search_path = pg_temp, public",
                    ):
                        db = store.database(tenant)
                        try:
                            await db.execute(attempt)
                            await db._finish(commit=True)
                        except Exception:
                            await db._finish(commit=False)
                    db = store.database(tenant)
                    values = {r["value"] for r in await db.fetch_all("SELECT value FROM items")}
                    await db._finish(commit=i % 2 == 0)
                    assert values <= {mine, "x", "planted"} and mine in values, (tenant, values)
                    await asyncio.sleep(0)

            await asyncio.gather(
                worker(store, a, A_SECRET), worker(store, b, B_SECRET), worker(store, a, A_SECRET)
            )
        finally:
            await store.aclose()


def test_server_refuses_a_data_role_that_can_switch_into_bypassrls(tmp_path: Path) -> None:
    # Roles are global to the cluster: this test's data role and BYPASSRLS role are its own.
    suffix = secrets.token_hex(4)
    data, bypass = f"tm_data_{suffix}", f"tm_bypass_{suffix}"
    with migrated("tests.servers.probe:app") as pg:
        pg.sql(f"CREATE ROLE {data} LOGIN")
        pg.sql(f"CREATE ROLE {bypass} NOLOGIN BYPASSRLS")
        try:
            done = run_cli("migrate", "tests.servers.probe:app", "--db", pg.app, "--migration-url", pg.owner,
                       "--data-role", data)  # fmt: skip
            assert done.returncode == 0, done.stderr
            pg.sql(f"GRANT {bypass} TO {data}")
            data_url = pg.data.replace(f"{DATA_ROLE}@", f"{data}@")
            server = ServerProcess(
                "tests.servers.probe:app",
                pg.app,
                env={"TENANT_MCP_DATA_URL": data_url},
                log_dir=tmp_path,
                wait=False,
            )
            assert server.proc.wait(30) != 0
            log = server.log.read_text()
            server.stop()
            assert bypass in log and "BYPASSRLS" in log and "Traceback" not in log, log
        finally:
            pg.sql(f"DROP OWNED BY {data}")
            pg.sql(f"DROP ROLE {data}")
            pg.sql(f"DROP ROLE {bypass}")


def test_server_refuses_the_control_role_for_data(tmp_path: Path) -> None:
    with migrated("tests.servers.probe:app") as pg:
        server = ServerProcess(
            "tests.servers.probe:app",
            pg.app,
            env={"TENANT_MCP_DATA_URL": pg.app},
            log_dir=tmp_path,
            wait=False,
        )
        assert server.proc.wait(30) != 0
        log = server.log.read_text()
        server.stop()
        assert "tenant_mcp schema" in log and "Traceback" not in log, log


async def test_exclusion_constraints_and_sequences_are_per_tenant() -> None:
    with postgres_database() as pg:
        excl = [
            {
                "sqlite": "CREATE TABLE bookings (id INTEGER PRIMARY KEY, room TEXT, during TEXT)",
                "postgresql": "CREATE TABLE bookings (id BIGINT PRIMARY KEY, room TEXT NOT NULL,"
                " during TSRANGE NOT NULL, EXCLUDE USING gist (during WITH &&))",
            }
        ]
        await migrate(
            pg.owner,
            control=(),
            data=[e["postgresql"] for e in excl],
            app_role="tenant_mcp_app",
            data_role=DATA_ROLE,
        )
        store = await PostgresStore.open(pg.data, [], binding_key=_key(pg))
        try:
            for tenant in ("a" * 32, "b" * 32):  # the same room and time in two tenants: no clash
                db = store.database(tenant)
                await db.execute(
                    "INSERT INTO bookings (id, room, during) VALUES (1, 'blue', '[2026-01-01 10:00, 2026-01-01 11:00)')"
                )
                await db._finish(commit=True)
        finally:
            await store.aclose()
    with postgres_database() as pg:
        with pytest.raises(Exception, match=r"new_id\(\)"):
            await migrate(
                pg.owner,
                control=(),
                data=["CREATE TABLE t (id SERIAL PRIMARY KEY)"],
                app_role="tenant_mcp_app",
                data_role=DATA_ROLE,
            )
        with pytest.raises(Exception, match=r"new_id\(\)"):
            await migrate(
                pg.owner,
                control=(),
                data=["CREATE TABLE t (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY)"],
                app_role="tenant_mcp_app",
                data_role=DATA_ROLE,
            )


async def test_an_app_extends_the_gateway_for_full_text_search(pg_attack: tuple[Postgres, Tenants]) -> None:
    pg, t = pg_attack
    sql = "SELECT value FROM items WHERE to_tsvector('simple', value) @@ plainto_tsquery('simple', ?)"
    plain = await PostgresStore.open(pg.data, [], binding_key=_key(pg), max_size=1)
    fts = await PostgresStore.open(
        pg.data,
        [],
        binding_key=_key(pg),
        max_size=1,
        allow=SQLAllowList.of(FULL_TEXT_SEARCH, types={"tsvector", "tsquery"}),
    )
    try:
        await _seed(fts, t.ids["acme"], "quarterly merger plan")
        await _seed(fts, t.ids["globex"], "merger of globex")
        db = plain.database(t.ids["acme"])
        with pytest.raises(GatewayRefusal, match=r"function (to_tsvector|plainto_tsquery)\(\)"):
            await db.fetch_all(sql, ("merger",))
        await db._finish(commit=False)
        db = fts.database(t.ids["acme"])
        assert await db.fetch_all(sql, ("merger",)) == [{"value": "quarterly merger plan"}]
        with pytest.raises(GatewayRefusal, match=r"function ts_stat\(\)"):  # never part of the bundle
            await db.fetch_all("SELECT * FROM ts_stat('SELECT to_tsvector(value) FROM items')")
        await db._finish(commit=False)
    finally:
        await plain.aclose()
        await fts.aclose()


async def test_views_run_as_the_caller_and_shared_copies_are_refused() -> None:
    """A view created by a migration runs with its owner's rights (a superuser here, whom row-level
    security never binds) unless it is a security-invoker view; a materialized view or a
    SECURITY DEFINER function holds or reads every tenant's rows."""
    schema = [
        "CREATE TABLE notes (id BIGINT PRIMARY KEY, body TEXT NOT NULL)",
        "CREATE VIEW recent_notes AS SELECT id, body FROM notes",
    ]
    with postgres_database() as pg:
        await migrate(pg.owner, control=(), data=schema, app_role="tenant_mcp_app", data_role=DATA_ROLE)
        store = await PostgresStore.open(pg.data, [], binding_key=_key(pg))
        try:
            for tenant, body in (("a" * 32, A_SECRET), ("b" * 32, B_SECRET)):
                db = store.database(tenant)
                await db.execute("INSERT INTO notes (id, body) VALUES (1, ?)", (body,))
                await db._finish(commit=True)
            db = store.database("a" * 32)
            assert await db.fetch_all("SELECT body FROM recent_notes") == [{"body": A_SECRET}]
            await db._finish(commit=False)
        finally:
            await store.aclose()
    for shared, word in (
        (["CREATE MATERIALIZED VIEW all_notes AS SELECT id, body FROM notes"], "materialized view"),
        (
            [
                "CREATE FUNCTION peek() RETURNS SETOF notes LANGUAGE sql SECURITY DEFINER AS 'SELECT * FROM notes'"
            ],
            "SECURITY DEFINER",
        ),
        (["CREATE POLICY everyone ON notes USING (true)"], "permissive policy everyone"),
        (["CREATE RULE copy AS ON INSERT TO notes DO ALSO NOTIFY notes"], "rule copy"),
    ):
        with postgres_database() as pg, pytest.raises(Exception, match=word):
            await migrate(pg.owner, control=(), data=[schema[0], *shared], app_role=None, data_role=DATA_ROLE)
