"""`ctx.db`: isolation below the query, atomic calls, bounded resources. Real SQLite files,
driven through a real server with the SDK client."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path

import anyio
import pytest

from tenant_mcp.errors import TenantMCPError
from tenant_mcp.storage.sql import GatewayRefusal
from tenant_mcp.storage.sqlite import WORKERS, SQLiteStore
from tests.helpers import ServerProcess, Tenants, mcp_client, tool_result

pytestmark = pytest.mark.anyio
SLUGS = [f"t{i}" for i in range(6)]  # the probe fixture's other tenants (conftest)


async def test_careless_raw_sql_sees_only_the_callers_rows(probe: tuple[ServerProcess, Tenants]) -> None:
    server, t = probe
    async with mcp_client(server.url, t.keys["acme"]) as a:
        await a.call_tool("add_item", {"value": "acme-secret"})
    async with mcp_client(server.url, t.keys["globex"]) as b:
        await b.call_tool("add_item", {"value": "globex-own"})
        rows = tool_result(await b.call_tool("raw_sql", {"sql": "SELECT owner, value FROM items"}))
        assert rows and all(r["owner"] == "globex" for r in rows), rows
        updated = tool_result(await b.call_tool("raw_sql", {"sql": "UPDATE items SET value = 'pwned'"}))
        assert updated[0]["rowcount"] == len(rows)
        tables = tool_result(await b.call_tool("raw_sql", {"sql": "SELECT name FROM sqlite_master"}))
        assert "acme" not in json.dumps(tables)
    async with mcp_client(server.url, t.keys["acme"]) as a:
        mine = tool_result(await a.call_tool("raw_sql", {"sql": "SELECT value FROM items"}))
        assert {"value": "acme-secret"} in mine and all(r["value"] != "pwned" for r in mine)


async def test_raw_sql_cannot_open_another_tenants_file(probe: tuple[ServerProcess, Tenants]) -> None:
    server, t = probe
    data_dir = Path(t.db_url[len("sqlite:///") :]).with_name("cp_data")
    acme_file = data_dir / f"{t.ids['acme']}.sqlite3"
    async with mcp_client(server.url, t.keys["acme"]) as a:  # this test may run on a worker of its own
        assert not (await a.call_tool("add_item", {"value": "acme-secret"})).is_error
    assert acme_file.exists(), "the acme database should exist after acme wrote to it"
    attacks = [
        f"ATTACH DATABASE '{acme_file}' AS other",
        "PRAGMA user_version = 0",
        "PRAGMA writable_schema = ON",
        f"VACUUM INTO '{data_dir / 'stolen.sqlite3'}'",
    ]
    async with mcp_client(server.url, t.keys["globex"]) as b:
        for sql in attacks:
            result = await b.call_tool("raw_sql", {"sql": sql})
            assert result.is_error, f"{sql!r} was allowed"
        assert (await b.call_tool("raw_sql", {"sql": "SELECT value FROM other.items"})).is_error
        rows = tool_result(await b.call_tool("raw_sql", {"sql": "PRAGMA table_info(items)"}))
        assert {r["name"] for r in rows} == {"id", "owner", "value"}
    assert not (data_dir / "stolen.sqlite3").exists()


async def test_the_authorizer_refuses_attach_and_pragmas(tmp_path: Path) -> None:
    pool = SQLiteStore(tmp_path, ["CREATE TABLE t (v TEXT)"])
    try:
        for sql in (
            "ATTACH DATABASE 'other.sqlite3' AS o",
            "PRAGMA user_version = 7",
            "SELECT * FROM pragma_database_list",
        ):
            db = pool.database("0" * 32)
            with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
                await db.fetch_all(sql)
            await db._finish(commit=False)
    finally:
        await pool.aclose()


async def test_a_call_that_raises_leaves_nothing_behind(probe: tuple[ServerProcess, Tenants]) -> None:
    server, t = probe
    async with mcp_client(server.url, t.keys["acme"]) as a:
        result = await a.call_tool("write_then_fail", {"value": "half-written"})
        assert result.is_error
        rows = tool_result(
            await a.call_tool("raw_sql", {"sql": "SELECT value FROM items WHERE value = 'half-written'"})
        )
        assert rows == []
        assert tool_result(await a.call_tool("partial_transaction", {"value": "tx"})) == 1
        values = {
            r["value"] for r in tool_result(await a.call_tool("raw_sql", {"sql": "SELECT value FROM items"}))
        }
        assert "tx:kept" in values and "tx:undone" not in values


async def test_injection_and_wrong_types_change_nothing(probe: tuple[ServerProcess, Tenants]) -> None:
    server, t = probe
    payload = "x'); DROP TABLE items; --"
    async with mcp_client(server.url, t.keys["globex"]) as b:
        before = tool_result(await b.call_tool("raw_sql", {"sql": "SELECT count(*) AS n FROM items"}))[0]["n"]
        item_id = (await b.call_tool("add_item", {"value": payload})).structured_content["result"]  # type: ignore[index]
        assert (await b.read_resource(f"items://{item_id}")).contents[0].text == payload  # type: ignore[union-attr]
        wrong = await b.call_tool("add_item", {"value": {"nested": 1}})
        assert wrong.is_error and "validation error" in wrong.content[0].text  # type: ignore[union-attr]
        after = tool_result(await b.call_tool("raw_sql", {"sql": "SELECT count(*) AS n FROM items"}))[0]["n"]
        assert after == before + 1


async def test_concurrent_writes_of_many_tenants_land_in_their_own_databases(
    probe: tuple[ServerProcess, Tenants],
) -> None:
    server, t = probe

    async def write(slug: str) -> None:
        async with mcp_client(server.url, t.keys[slug]) as c, anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(c.call_tool, "add_item", {"value": f"{slug}-{i}"})

    async with anyio.create_task_group() as tg:
        for slug in SLUGS:
            tg.start_soon(write, slug)
    for slug in SLUGS:
        async with mcp_client(server.url, t.keys[slug]) as c:
            rows = tool_result(await c.call_tool("raw_sql", {"sql": "SELECT owner, value FROM items"}))
        assert sorted(r["value"] for r in rows) == sorted(f"{slug}-{i}" for i in range(10)), slug
        assert {r["owner"] for r in rows} == {slug}


async def test_bulk_import_is_all_or_nothing(notes_server: ServerProcess, tenants: Tenants) -> None:
    async with mcp_client(notes_server.url, tenants.keys["acme"]) as c:
        before = len(tool_result(await c.call_tool("list_notes", {})))
        bad = [{"title": "ok", "body": "1"}, {"title": "", "body": "empty title"}]
        assert (await c.call_tool("bulk_import", {"notes": bad})).is_error
        assert len(tool_result(await c.call_tool("list_notes", {}))) == before
        good = [{"title": f"n{i}", "body": "b"} for i in range(5)]
        assert (await c.call_tool("bulk_import", {"notes": good})).structured_content == {"result": 5}
        assert len(tool_result(await c.call_tool("list_notes", {}))) == before + 5


async def test_pool_bounds_open_connections_and_threads(tmp_path: Path) -> None:
    """Open tenants hold connections, not threads: a few shared workers serve all of them."""
    pool = SQLiteStore(tmp_path, ["CREATE TABLE t (v TEXT)"], max_open=24)
    threads_before = threading.active_count()
    try:
        for batch in range(0, 80, 8):  # 40 tenants twice, 8 calls at a time
            dbs = [pool.database(f"{i % 40:032x}") for i in range(batch, batch + 8)]
            inserts = (
                db.execute("INSERT INTO t (v) VALUES (?)", (f"tenant {i % 40}",))
                for i, db in enumerate(dbs, batch)
            )
            await asyncio.gather(*inserts)
            await asyncio.gather(*(db._finish(commit=True) for db in dbs))
            assert pool.open_count <= 24
            assert threading.active_count() <= threads_before + WORKERS.limit < 24, batch
        assert len(list(tmp_path.glob("*.sqlite3"))) == 40
        db = pool.database(f"{7:032x}")  # closed long ago: reopened lazily, data intact
        assert await db.fetch_all("SELECT v FROM t") == [{"v": "tenant 7"}, {"v": "tenant 7"}]
        await db._finish(commit=False)
    finally:
        await pool.aclose()
    assert pool.open_count == 0


# -- transaction control and connection ownership (issue 11, findings 7 and 9) ------------------

TRANSACTION_CONTROL = [
    "COMMIT",
    "BEGIN",
    "BEGIN IMMEDIATE",
    "END",
    "ROLLBACK",
    "commit transaction",
    "SAVEPOINT tenant_mcp_sp1",
    "SAVEPOINT mine",
    "RELEASE tenant_mcp_sp1",
    "RELEASE SAVEPOINT tenant_mcp_sp1",
    "ROLLBACK TO SAVEPOINT tenant_mcp_sp1",
    "/* c */ COMMIT",
]


async def test_tool_sql_cannot_end_or_split_the_unit_of_work(tmp_path: Path) -> None:
    """COMMIT from tool SQL would make a failing call's earlier writes permanent. Also the exact
    texts the framework itself uses, which SQLite's statement cache would otherwise reuse unchecked."""
    store = SQLiteStore(tmp_path, ["CREATE TABLE t (v TEXT)"])
    tenant = "1" * 32
    try:
        db = store.database(tenant)
        async with db.transaction():  # the framework's own savepoints work (and are now cached)
            await db.execute("INSERT INTO t (v) VALUES ('inner')")
        await db.execute("INSERT INTO t (v) VALUES ('before')")
        for sql in TRANSACTION_CONTROL:
            with pytest.raises(GatewayRefusal, match="transaction control"):
                await db.execute(sql)
            assert db.refusal is not None and "ctx.db.transaction()" in db.refusal
        await db._finish(commit=False)  # the call fails: nothing of it may remain
        db = store.database(tenant)
        assert await db.fetch_all("SELECT v FROM t") == []
        with pytest.raises(GatewayRefusal):
            await db.execute("COMMIT")
        await db._finish(commit=True)
    finally:
        await store.aclose()


async def test_a_use_that_was_waiting_when_the_call_ended_releases_the_connection(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path, ["CREATE TABLE t (v TEXT)"])
    tenant = "2" * 32
    try:
        holder = store.database(tenant)
        await holder.execute("INSERT INTO t (v) VALUES ('holder')")  # holds the tenant's lease
        call = store.database(tenant)
        stray = asyncio.ensure_future(call.execute("INSERT INTO t (v) VALUES ('stray')"))
        await asyncio.sleep(0.05)  # the stray task now waits for the lease
        await call._finish(commit=True)  # the call returns meanwhile
        await holder._finish(commit=True)
        with pytest.raises(TenantMCPError, match="after its call ended"):
            await stray
        after = store.database(tenant)  # the lease is free again: this would hang before the fix
        with anyio.fail_after(5):
            assert await after.fetch_all("SELECT v FROM t") == [{"v": "holder"}]
        await after._finish(commit=True)
    finally:
        await store.aclose()


async def test_a_connection_held_too_long_is_rolled_back_and_released(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path, ["CREATE TABLE t (v TEXT)"], hold_seconds=0.3)
    tenant = "3" * 32
    try:
        stuck = store.database(tenant)
        await stuck.execute("INSERT INTO t (v) VALUES ('stuck')")
        await asyncio.sleep(0.6)  # a tool awaiting something forever while holding its transaction
        other = store.database(tenant)
        with anyio.fail_after(5):
            assert await other.fetch_all("SELECT v FROM t") == []
        await other._finish(commit=True)
        with pytest.raises(TenantMCPError, match=r"longer than 0\.3 s"):
            await stuck.execute("INSERT INTO t (v) VALUES ('late')")
        with pytest.raises(TenantMCPError, match="rolled back"):
            await stuck._finish(commit=True)
    finally:
        await store.aclose()


async def test_a_missing_table_says_which_and_what_to_do(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path, [])
    db = store.database("0" * 32)
    try:
        with pytest.raises(
            TenantMCPError, match=r"no such table: notes .*none of the app's 0 migration\(s\) creates it"
        ):
            await db.fetch_all("SELECT * FROM notes")
    finally:
        await db._finish(commit=False)
        await store.aclose()
    store = SQLiteStore(tmp_path / "other", ["CREATE TABLE notes (id INTEGER PRIMARY KEY); DROP TABLE notes"])
    db = store.database("0" * 32)
    try:
        with pytest.raises(TenantMCPError, match=r"no such table: notes .*migration 1 creates it"):
            await db.fetch_all("SELECT * FROM notes")
    finally:
        await db._finish(commit=False)
        await store.aclose()
