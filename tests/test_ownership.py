"""Calls own their connections, and deleting a tenant leaves nothing (issue 11, findings 7 and 8).

Driven as clients and operators do: a real server (`tests/servers/lifecycle.py`) on SQLite and
on PostgreSQL, the SDK client, and `tenant-mcp tenant delete` in a process of its own, with and
without Redis.
"""

from __future__ import annotations

import secrets
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

from tenant_mcp.storage import data_dir
from tests.helpers import (
    REDIS_URL,
    ROOT,
    Postgres,
    ServerProcess,
    Tenants,
    clean_env,
    mcp_client,
    postgres_database,
)

pytestmark = pytest.mark.anyio
APP = "tests.servers.lifecycle:app"
HOLD_SECONDS = 2.0
CONTROL_TABLES = (
    "api_keys", "audit_events", "oauth_codes", "oauth_tokens", "leak_markers", "secrets", "tenant_keys",
    "tenant_limits", "tenant_usage",
)  # fmt: skip


@dataclass
class Backend:
    name: str
    url: str
    pg: Postgres | None
    tmp: Path

    def cli(self, *args: str, env: dict[str, str] | None = None) -> list[str]:
        return [sys.executable, "-m", "tenant_mcp.cli", *args, "--db", self.url]

    def leftovers(self, tenant_id: str) -> dict[str, int]:
        """Rows of `tenant_id` anywhere: its data and every control-plane table."""
        counts: dict[str, int] = {}
        if self.pg is not None:
            for table in ("notes", "tenant_mcp_canaries"):
                rows = self.pg.sql(
                    f"SELECT count(*) AS n FROM public.{table} WHERE tenant_id = $1", tenant_id
                )
                counts[table] = rows[0]["n"]
            for table in CONTROL_TABLES:
                rows = self.pg.sql(
                    f"SELECT count(*) AS n FROM tenant_mcp.{table} WHERE tenant_id = $1", tenant_id
                )
                counts[table] = rows[0]["n"]
            counts["tenants"] = self.pg.sql(
                "SELECT count(*) AS n FROM tenant_mcp.tenants WHERE id = $1", tenant_id
            )[0]["n"]
            return counts
        files = list(data_dir(self.url).glob(f"{tenant_id}*"))
        counts["data files"] = len(files)
        conn = sqlite3.connect(self.url[len("sqlite:///") :])
        try:
            for table in CONTROL_TABLES:
                counts[table] = conn.execute(
                    f"SELECT count(*) FROM {table} WHERE tenant_id = ?", (tenant_id,)
                ).fetchone()[0]
            counts["tenants"] = conn.execute(
                "SELECT count(*) FROM tenants WHERE id = ?", (tenant_id,)
            ).fetchone()[0]
        finally:
            conn.close()
        return counts


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path}/cp.db", None, tmp_path)
        return
    with postgres_database() as pg:
        import subprocess

        done = subprocess.run(
            [sys.executable, "-m", "tenant_mcp.cli", "migrate", APP, "--db", pg.app, "--data-db", pg.data,
             "--migration-url", pg.owner],
            cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        yield Backend("postgresql", pg.app, pg, tmp_path)


def _server(backend: Backend, env: dict[str, str] | None = None) -> ServerProcess:
    env = {"TENANT_MCP_DB_HOLD_SECONDS": str(HOLD_SECONDS), **(env or {})}
    return ServerProcess(APP, backend.url, env=env, log_dir=backend.tmp)


def _result(result: Any) -> Any:
    assert not result.is_error, result.content
    return result.structured_content["result"]


def _idle_in_transaction(backend: Backend) -> int:
    assert backend.pg is not None
    rows = backend.pg.sql(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%'",
        backend.pg.name,
    )
    return int(rows[0]["n"])


# -- finding 7: calls own their connections --------------------------------------------------------


async def test_stray_tasks_of_one_tenant_never_hold_connections(backend: Backend) -> None:
    """A tool whose background task touches ctx.db as the call returns: before the fix each such
    task kept a pooled connection (PostgreSQL: twelve exhausted the pool and every tenant hung;
    SQLite: the tenant's lease was held for good)."""
    t = Tenants(backend.url)
    for slug in ("acme", "globex"):
        t.create(slug)
        t.key(slug)
    server = _server(backend)
    try:
        async with mcp_client(server.url, t.keys["acme"]) as a:
            for i in range(30):
                await a.call_tool("stray", {"body": f"stray {i}"})  # may fail: its task still ran SQL
        with anyio.fail_after(20):
            async with mcp_client(server.url, t.keys["globex"]) as b:
                for i in range(15):
                    _result(await b.call_tool("add_note", {"body": f"globex {i}"}))
                assert _result(await b.call_tool("count_notes", {})) == 15
            async with mcp_client(server.url, t.keys["acme"]) as a:
                _result(await a.call_tool("count_notes", {}))  # the straying tenant itself, too
                report = await a.call_tool("stray_outcomes", {})
                assert not report.is_error, report.content
                outcomes = report.structured_content or {}
        assert outcomes["pending"] == 0, outcomes
        assert set(outcomes) <= {"pending", "written", "TenantMCPError"}, outcomes
        if backend.pg is not None:
            assert _idle_in_transaction(backend) == 0
    finally:
        server.stop()


async def test_a_call_that_holds_its_connection_too_long_is_rolled_back(backend: Backend) -> None:
    t = Tenants(backend.url)
    for slug in ("acme", "globex"):
        t.create(slug)
        t.key(slug)
    server = _server(backend)
    try:
        async with mcp_client(server.url, t.keys["acme"]) as a, mcp_client(server.url, t.keys["acme"]) as a2:
            async with anyio.create_task_group() as tg:
                held: list[Any] = []

                async def hold() -> None:
                    held.append(await a.call_tool("hold", {"seconds": HOLD_SECONDS + 2}))

                tg.start_soon(hold)
                await anyio.sleep(0.5)
                start = time.monotonic()
                with anyio.fail_after(HOLD_SECONDS + 1.5):  # the same tenant's next call gets through
                    assert _result(await a2.call_tool("count_notes", {})) == 0
                assert time.monotonic() - start < HOLD_SECONDS + 1
            assert held[0].is_error and "longer than" in held[0].content[0].text, held[0].content
        if backend.pg is not None:
            assert _idle_in_transaction(backend) == 0
    finally:
        server.stop()


# -- finding 8: deletion that leaves nothing -------------------------------------------------------


@pytest.mark.parametrize("with_redis", [False, True], ids=["no-redis", "redis"])
async def test_delete_under_load_leaves_nothing_of_the_tenant(backend: Backend, with_redis: bool) -> None:
    t = Tenants(backend.url)
    for slug in ("victim", "bystander"):
        t.create(slug)
        t.key(slug)
    victim = t.ids["victim"]
    env: dict[str, str] = {}
    cli_args: list[str] = []
    prefix = f"tmtest-{secrets.token_hex(6)}"
    if with_redis:
        env = {"TENANT_MCP_REDIS_URL": REDIS_URL, "TENANT_MCP_REDIS_PREFIX": prefix}
        cli_args = ["--redis-url", REDIS_URL, "--redis-prefix", prefix]
    server = _server(backend, env)
    stop = anyio.Event()
    written = 0

    async def load() -> None:
        nonlocal written
        while not stop.is_set():
            try:
                async with mcp_client(server.url, t.keys["victim"]) as c:
                    while not stop.is_set():
                        if not (await c.call_tool("add_note", {"body": "x"})).is_error:
                            written += 1
            except Exception:
                await anyio.sleep(0.05)  # refused (401) once deleted: keep knocking

    try:
        async with mcp_client(server.url, t.keys["bystander"]) as b:
            _result(await b.call_tool("add_note", {"body": "bystander"}))
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(load)
            await anyio.sleep(1.0)
            assert written > 0, "the load wrote nothing before the deletion"
            done = await anyio.run_process(
                backend.cli("tenant", "delete", "victim", "--yes", *cli_args),
                cwd=ROOT,
                env=clean_env(),
                check=False,
            )
            assert done.returncode == 0, done.stderr
            await anyio.sleep(3.0)  # the load keeps knocking meanwhile
            stop.set()
        left = backend.leftovers(victim)
        assert not any(left.values()), f"rows of the deleted tenant remain: {left}"
        async with mcp_client(server.url, t.keys["bystander"]) as b:
            assert _result(await b.call_tool("count_notes", {})) == 1
        assert len(t.audit("bystander")) >= 2
    finally:
        server.stop()
        if with_redis:
            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)
            client.close()
