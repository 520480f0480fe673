"""Several replicas of one server sharing a control plane and a Redis: revocations and
notifications behave as if there were one process, and never cross tenants.

Two real server processes (`tests/servers/replica.py`, credentials cached for 30 s) share one
SQLite control-plane file and one Redis under a prefix of their own, so parallel test workers
sharing the Redis never see each other's messages.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import redis

from tenant_mcp.broker import Names
from tests.conftest import ROOT, ServerProcess, Tenants, clean_env, mcp_client

pytestmark = pytest.mark.anyio

REDIS_URL = os.environ.get("TENANT_MCP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
APP = "tests.servers.replica:app"


@pytest.fixture
def prefix() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()  # Redis is part of the test environment (.ci/run starts it); no silent skip
    prefix = f"tmtest-{secrets.token_hex(6)}"
    yield prefix
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


@pytest.fixture
def replicas(
    tmp_path_factory: pytest.TempPathFactory, prefix: str
) -> Iterator[tuple[ServerProcess, ServerProcess, Tenants]]:
    db = f"sqlite:///{tmp_path_factory.mktemp('replicas')}/cp.db"
    t = Tenants(db)
    for slug in ("acme", "globex"):
        t.create(slug)
        t.key(slug)
        t.key(slug, name=f"{slug}2")
    env = {"TENANT_MCP_REDIS_URL": REDIS_URL, "TENANT_MCP_REDIS_PREFIX": prefix}
    first = ServerProcess(APP, db, env=env)
    try:
        second = ServerProcess(APP, db, env=env)
    except BaseException:
        first.stop()
        raise
    yield first, second, t
    first.stop()
    second.stop()


def cli(db: str, *args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, "-m", "tenant_mcp.cli", *args, "--db", db], cwd=ROOT,
                   env=clean_env(**(env or {})), check=True, capture_output=True)  # fmt: skip


async def accepted(url: str, key: str) -> bool:
    try:
        async with mcp_client(url, key) as c:
            return not (await c.call_tool("whoami", {})).is_error
    except Exception:
        return False


async def refused_within(url: str, key: str, seconds: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if not await accepted(url, key):
            return time.monotonic() - start
        await anyio.sleep(0.05)
    raise AssertionError(f"{url} still accepts the key after {seconds} s")


# -- (a) revocation and suspension -----------------------------------------------------------------


async def test_revocation_and_suspension_reach_every_replica_at_once(
    replicas: tuple[ServerProcess, ServerProcess, Tenants], prefix: str
) -> None:
    first, second, t = replicas
    redis_env = {"TENANT_MCP_REDIS_URL": REDIS_URL, "TENANT_MCP_REDIS_PREFIX": prefix}
    for server in (first, second):  # both replicas cache every key for 30 s from here on
        for name in ("acme", "acme2", "globex", "globex2"):
            assert await accepted(server.url, t.keys[name])

    # Control: revoked without telling Redis, the key lives on in both caches.
    cli(t.db_url, "key", "revoke", t.key_ids["globex2"])
    await anyio.sleep(1.5)
    assert await accepted(first.url, t.keys["globex2"])
    assert await accepted(second.url, t.keys["globex2"])

    cli(t.db_url, "key", "revoke", t.key_ids["acme"], env=redis_env)
    assert await refused_within(first.url, t.keys["acme"], 1.0) < 1.0
    assert await refused_within(second.url, t.keys["acme"], 1.0) < 1.0
    assert await accepted(second.url, t.keys["acme2"])  # the tenant's other key is unaffected

    cli(t.db_url, "tenant", "suspend", "acme", env=redis_env)
    assert await refused_within(first.url, t.keys["acme2"], 1.0) < 1.0
    assert await refused_within(second.url, t.keys["acme2"], 1.0) < 1.0
    assert await accepted(first.url, t.keys["globex"])  # other tenants are unaffected
    assert await accepted(second.url, t.keys["globex"])

    cli(t.db_url, "tenant", "activate", "acme", env=redis_env)
    assert await accepted(first.url, t.keys["acme2"])
    assert await accepted(second.url, t.keys["acme2"])


async def test_the_cli_reports_an_unreachable_redis_but_keeps_the_revocation(
    replicas: tuple[ServerProcess, ServerProcess, Tenants],
) -> None:
    _, _, t = replicas
    result = subprocess.run(
        [sys.executable, "-m", "tenant_mcp.cli", "key", "revoke", t.key_ids["acme2"], "--db", t.db_url,
         "--redis-url", "redis://127.0.0.1:1/0"],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "warning: cannot publish to Redis" in result.stderr

    async def revoked(cp: Any) -> bool:
        record = await cp.key(t.key_ids["acme2"])
        return record is not None and record.revoked_at is not None

    assert t.run(revoked)


# -- (b) notifications -----------------------------------------------------------------------------


async def test_notifications_reach_the_tenants_listeners_on_every_replica_and_no_one_else(
    replicas: tuple[ServerProcess, ServerProcess, Tenants], prefix: str
) -> None:
    first, second, t = replicas
    uri = "items://1"
    listeners = {("acme", "first"): first, ("acme", "second"): second,
                 ("globex", "first"): first, ("globex", "second"): second}  # fmt: skip
    seen: dict[tuple[str, str], list[str]] = {where: [] for where in listeners}

    async def listen(where: tuple[str, str], ready: anyio.Event) -> None:
        async with (
            mcp_client(listeners[where].url, t.keys[where[0]]) as c,
            c.listen(tools_list_changed=True, resource_subscriptions=[uri]) as sub,
        ):
            ready.set()
            async for event in sub:
                seen[where].append(getattr(event, "uri", type(event).__name__))

    names = Names(prefix)
    watcher = redis.Redis.from_url(REDIS_URL)
    async with anyio.create_task_group() as tg:
        for where in listeners:
            ready = anyio.Event()
            tg.start_soon(listen, where, ready)
            await ready.wait()
        # Each replica's connection is on the channel of each tenant it has listeners for.
        counts = dict(
            watcher.pubsub_numsub(names.events_channel(t.ids["acme"]), names.events_channel(t.ids["globex"]))
        )
        assert list(counts.values()) == [2, 2]
        async with mcp_client(first.url, t.keys["acme"]) as c:
            await c.call_tool("touch_resource", {"uri": uri})
            await c.call_tool("tools_changed", {})
        with anyio.fail_after(5):
            while len(seen["acme", "second"]) < 2:
                await anyio.sleep(0.05)
        await anyio.sleep(0.5)  # time for a misrouted or duplicated event to arrive
        tg.cancel_scope.cancel()
    assert seen == {
        ("acme", "first"): [uri, "ToolsListChanged"],  # delivered locally, the echo from Redis skipped
        ("acme", "second"): [uri, "ToolsListChanged"],
        ("globex", "first"): [],
        ("globex", "second"): [],
    }
    # With no listeners left, the replicas leave the tenant channels.
    tenant_channels = f"{prefix}:tenant:*"
    with anyio.fail_after(5):
        while watcher.pubsub_channels(tenant_channels):
            await anyio.sleep(0.05)
    watcher.close()


# -- (d) bad messages ------------------------------------------------------------------------------


async def test_bad_messages_on_the_channels_are_dropped(
    replicas: tuple[ServerProcess, ServerProcess, Tenants], prefix: str
) -> None:
    first, _, t = replicas
    uri = "items://9"
    names = Names(prefix)
    acme, globex = t.ids["acme"], t.ids["globex"]
    seen: list[str] = []

    def event(tenant_id: str, **fields: Any) -> bytes:
        return json.dumps({"tenant_id": tenant_id, "origin": "elsewhere", **fields}).encode()

    bad = [
        b"\xff\xfe not json",
        b"{}",
        b"[1, 2, 3]",
        event(acme, kind="resource_updated"),  # no uri
        event(acme, kind="tools_list_changed", uri=uri),  # a uri where none belongs
        event(acme, kind="delete_everything"),
        event(acme, kind="resource_updated", uri=uri, extra="field"),
        event(globex, kind="resource_updated", uri=uri),  # names another tenant than its channel
        event(acme, kind="resource_updated", uri="x" * 70_000),  # oversized
    ]
    ready = anyio.Event()

    async def listen() -> None:
        async with mcp_client(first.url, t.keys["acme"]) as c, c.listen(resource_subscriptions=[uri]) as sub:
            ready.set()
            async for e in sub:
                seen.append(getattr(e, "uri", type(e).__name__))

    publisher = redis.Redis.from_url(REDIS_URL)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listen)
        await ready.wait()
        for message in bad:
            publisher.publish(names.events_channel(acme), message)
        for message in (b"not json", b'{"kind": "everything"}', b'{"kind": "key", "id": 5}'):
            publisher.publish(names.auth_channel, message)
        publisher.publish(names.events_channel(acme), event(acme, kind="resource_updated", uri=uri))
        with anyio.fail_after(5):
            while not seen:
                await anyio.sleep(0.05)
        await anyio.sleep(0.3)
        tg.cancel_scope.cancel()
    publisher.close()
    assert seen == [uri]  # only the one well-formed event, and the replica is still serving
    assert await accepted(first.url, t.keys["acme"])
    log = first.log.read_text()
    assert log.count("dropped a malformed message") >= 8, log
    assert "names another tenant" in log and "oversized" in log
