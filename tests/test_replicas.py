"""Several replicas of one server against the same PostgreSQL and Redis, driven round-robin.

This is the deployment the README describes for outgrowing one machine: two `tenant-mcp serve`
processes started at the same moment, each migrating on start (an advisory lock lets one do it),
sharing revocations and notifications through Redis, and clients that land on either replica.
The replicas cache credentials for 30 s, so a revocation that bites within a second came
through Redis.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
import redis

from tenant_mcp.controlplane import POSTGRES_MIGRATIONS
from tests.helpers import (
    REDIS_URL,
    Postgres,
    ServerProcess,
    Tenants,
    listening,
    mcp_client,
    postgres_database,
    run_cli,
    standard_tenants,
    tool_result,
    until,
)

pytestmark = pytest.mark.anyio
APP = "tests.servers.replica:app"


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Postgres, list[ServerProcess], Tenants]]:
    logs = tmp_path_factory.mktemp("replicas")
    prefix = f"tmtest-{secrets.token_hex(6)}"
    with postgres_database() as pg:
        env = {"TENANT_MCP_MIGRATION_URL": pg.owner, "TENANT_MCP_REDIS_URL": REDIS_URL,
               "TENANT_MCP_REDIS_PREFIX": prefix}  # fmt: skip
        # Both start at once and both try to migrate: the advisory lock lets one apply the steps.
        servers = [ServerProcess(APP, pg.app, env=env, log_dir=logs, wait=False) for _ in range(2)]
        try:
            for server in servers:
                server.wait_ready()
            yield pg, servers, standard_tenants(pg.app)
        finally:
            for server in servers:
                server.stop()
            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)
            client.close()


def test_replicas_started_together_migrate_once(
    cluster: tuple[Postgres, list[ServerProcess], Tenants],
) -> None:
    pg, _, _ = cluster
    rows = pg.sql("SELECT component, count(*) AS n FROM tenant_mcp.schema_version GROUP BY 1 ORDER BY 1")
    assert rows == [{"component": "control", "n": len(POSTGRES_MIGRATIONS)}, {"component": "data", "n": 1}]


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
                rows = tool_result(await c.call_tool("list_items", {}))
            assert {r["value"] for r in rows} == written[slug], (server.url, slug)
            assert {r["owner"] for r in rows} == {slug}
    # One audit trail: calls through both replicas land in the same table.
    await anyio.sleep(0.6)
    calls = [e for e in t.audit("acme") if e["method"] == "tools/call" and e["target"] == "add_item"]
    assert len(calls) >= 6


async def _refused_within(url: str, key: str, seconds: float) -> None:
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    start = time.monotonic()
    async with httpx2.AsyncClient(timeout=10) as http:
        while (await http.post(url, headers=headers, json=ping)).status_code != 401:
            assert time.monotonic() - start < seconds, f"{url} still accepts a revoked key"
            await anyio.sleep(0.02)


async def test_a_key_revoked_through_one_replica_fails_on_the_other(
    cluster: tuple[Postgres, list[ServerProcess], Tenants],
) -> None:
    pg, servers, t = cluster
    key = t.key("acme", name="short-lived")
    for server in servers:  # both replicas have verified and cached it
        async with mcp_client(server.url, key) as c:
            assert (await c.call_tool("whoami", {})).structured_content == {"tenant": "acme"}
    revoke = run_cli("key", "revoke", t.key_ids["short-lived"], db=pg.app, env=servers[0].env)
    assert revoke.returncode == 0, revoke.stderr
    async with anyio.create_task_group() as tg:
        for server in servers:
            tg.start_soon(_refused_within, server.url, key, 1.0)
    async with mcp_client(servers[1].url, t.keys["acme"]) as c:  # the tenant's other key still works
        assert (await c.call_tool("whoami", {})).structured_content == {"tenant": "acme"}


async def test_a_notification_reaches_the_tenants_listener_on_the_other_replica_only(
    cluster: tuple[Postgres, list[ServerProcess], Tenants],
) -> None:
    _, (first, second), t = cluster
    uri = "items://7"
    listeners = {slug: (second.url, t.keys[slug]) for slug in ("acme", "globex")}
    async with listening(listeners, resource_subscriptions=[uri]) as seen:
        async with mcp_client(first.url, t.keys["acme"]) as c:
            await c.call_tool("touch_resource", {"uri": uri})
        await until(lambda: seen["acme"], then=0.5)  # then: time for a misrouted event to arrive
    assert seen == {"acme": [uri], "globex": []}


async def test_killing_a_replica_loses_no_committed_write(
    cluster: tuple[Postgres, list[ServerProcess], Tenants], tmp_path: Path
) -> None:
    pg, servers, t = cluster
    doomed = ServerProcess(APP, pg.app, log_dir=tmp_path, env=servers[0].env)
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
        stored = {r["id"] for r in tool_result(await c.call_tool("list_items", {}))}
    assert set(committed) <= stored, sorted(set(committed) - stored)
