"""Several replicas of one server against the same PostgreSQL (and Redis), driven round-robin.

This is the deployment the README describes for outgrowing one machine: two `tenant-mcp serve`
processes started at the same moment, each migrating on start (an advisory lock lets one do it),
and a client that lands on either replica for each request.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.conftest import (
    ROOT,
    Postgres,
    ServerProcess,
    Tenants,
    clean_env,
    mcp_client,
    postgres_database,
    standard_tenants,
)

pytestmark = pytest.mark.anyio
APP = "tests.servers.probe:app"


def _rows(result: Any) -> Any:
    assert not result.is_error, result.content
    return result.structured_content["result"]


def _env(pg: Postgres) -> dict[str, str]:
    return {"TENANT_MCP_MIGRATION_URL": pg.owner}


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Postgres, list[ServerProcess], Tenants]]:
    logs = tmp_path_factory.mktemp("replicas")
    with postgres_database() as pg:
        # Both start at once and both try to migrate: the advisory lock lets one apply the steps.
        servers = [ServerProcess(APP, pg.app, env=_env(pg), log_dir=logs, wait=False) for _ in range(2)]
        try:
            for server in servers:
                server.wait_ready()
            yield pg, servers, standard_tenants(pg.app)
        finally:
            for server in servers:
                server.stop()


def test_replicas_started_together_migrate_once(
    cluster: tuple[Postgres, list[ServerProcess], Tenants],
) -> None:
    pg, _, _ = cluster
    rows = pg.sql("SELECT component, count(*) AS n FROM tenant_mcp.schema_version GROUP BY 1 ORDER BY 1")
    assert rows == [{"component": "control", "n": 1}, {"component": "data", "n": 1}]


async def test_round_robin_keeps_tenants_apart(
    cluster: tuple[Postgres, list[ServerProcess], Tenants],
) -> None:
    _, servers, t = cluster
    written: dict[str, set[str]] = {"acme": set(), "globex": set()}
    for i in range(12):
        slug = ("acme", "globex")[i % 2]
        server = servers[(i // 2) % 2]  # each tenant writes through both replicas
        async with mcp_client(server.url, t.keys[slug]) as c:
            value = f"{slug}-{i}"
            await c.call_tool("add_item", {"value": value})
            written[slug].add(value)
    for server in servers:
        for slug in ("acme", "globex"):
            async with mcp_client(server.url, t.keys[slug]) as c:
                rows = _rows(await c.call_tool("raw_sql", {"sql": "SELECT owner, value FROM items"}))
            assert {r["value"] for r in rows} == written[slug], (server.url, slug)
            assert {r["owner"] for r in rows} == {slug}
    # One audit trail: calls through both replicas land in the same table.
    await anyio.sleep(0.6)
    calls = [e for e in t.audit("acme") if e["method"] == "tools/call" and e["target"] == "add_item"]
    assert len(calls) >= 6


async def test_a_key_revoked_through_one_replica_fails_on_the_other(
    cluster: tuple[Postgres, list[ServerProcess], Tenants],
) -> None:
    pg, servers, t = cluster
    key = t.key("acme", name="short-lived")
    for server in servers:
        async with mcp_client(server.url, key) as c:
            assert (await c.call_tool("whoami", {})).structured_content["tenant"] == "acme"  # type: ignore[index]
    revoke = subprocess.run(
        [sys.executable, "-m", "tenant_mcp.cli", "key", "revoke", t.key_ids["short-lived"], "--db", pg.app],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert revoke.returncode == 0, revoke.stderr
    revoked_at = time.monotonic()
    for server in servers:
        while True:
            try:
                async with mcp_client(server.url, key) as c:
                    await c.call_tool("whoami", {})
            except Exception:  # 401 at connect: the replica no longer accepts the key
                break
            assert time.monotonic() - revoked_at < 2.5, f"{server.url} still accepts a revoked key"
            await anyio.sleep(0.1)


async def test_killing_a_replica_loses_no_committed_write(
    cluster: tuple[Postgres, list[ServerProcess], Tenants], tmp_path: Path
) -> None:
    pg, servers, t = cluster
    doomed = ServerProcess(APP, pg.app, log_dir=tmp_path)
    committed: list[int] = []

    async def writer(n: int) -> None:
        try:
            async with mcp_client(doomed.url, t.keys["globex"]) as c:
                for i in range(200):
                    result = await c.call_tool("add_item", {"value": f"burst-{n}-{i}"})
                    if not result.is_error:
                        committed.append(result.structured_content["result"])  # type: ignore[index]
        except Exception:
            pass  # the replica died under us: the calls in flight have no answer

    async with anyio.create_task_group() as tg:
        for n in range(4):
            tg.start_soon(writer, n)
        while len(committed) < 20:
            await anyio.sleep(0.02)
        doomed.proc.kill()  # SIGKILL: no graceful shutdown, no flush
    doomed.stop()
    assert committed
    async with mcp_client(servers[0].url, t.keys["globex"]) as c:
        ids = json.dumps(committed)
        rows = _rows(await c.call_tool("raw_sql", {"sql": f"SELECT id FROM items WHERE id IN ({ids[1:-1]})"}))
    assert sorted(r["id"] for r in rows) == sorted(committed)
