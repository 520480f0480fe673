"""Several replicas of one server sharing a control plane and a Redis: revocations, notifications
and resumable streams behave as if there were one process, and never cross tenants.

Two real server processes (`tests/servers/replica.py`, credentials cached for 30 s) share one
SQLite control-plane file and one Redis under a prefix of their own, so parallel test workers
sharing the Redis never see each other's messages.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx2
import pytest
import redis

from tenant_mcp.admin import Admin
from tenant_mcp.errors import ConfigurationError
from tenant_mcp.replication.redis import Names
from tests.helpers import (
    INIT,
    LEGACY,
    MCP_HEADERS,
    REDIS_URL,
    ROOT,
    ServerProcess,
    Tenants,
    clean_env,
    legacy_subscribers,
    listening,
    mcp_client,
    run_cli,
    until,
)
from tests.test_oauth import MemoryStorage, Person, provider
from tests.test_oauth import whoami as oauth_whoami

pytestmark = pytest.mark.anyio

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
    run_cli(*args, db=db, env=env, check=True)


async def accepted(url: str, key: str) -> bool:
    try:
        async with mcp_client(url, key) as c:
            return not (await c.call_tool("whoami", {})).is_error
    except Exception:
        return False


async def refused_within(url: str, key: str, seconds: float) -> float:
    """Seconds until the replica answers the key with 401. A bare POST, not a whole client
    session, so the measurement is the invalidation's delay, not the client's start-up."""
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    start = time.monotonic()
    async with httpx2.AsyncClient(timeout=10) as http:
        while time.monotonic() - start < seconds:
            if (await http.post(url, headers=headers, json=ping)).status_code == 401:
                return time.monotonic() - start
            await anyio.sleep(0.02)
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

    async with mcp_client(first.url, t.keys["globex"], mode="legacy") as c:  # a session: events on Redis
        await c.call_tool("whoami", {})
    stored = redis.Redis.from_url(REDIS_URL)
    globex_keys = f"{prefix}:tenant:{t.ids['globex']}:*"
    assert list(stored.scan_iter(globex_keys))
    cli(t.db_url, "tenant", "delete", "globex", "--yes", env=redis_env)
    assert await refused_within(first.url, t.keys["globex"], 1.0) < 1.0
    assert await refused_within(second.url, t.keys["globex"], 1.0) < 1.0
    assert not list(stored.scan_iter(globex_keys))  # nothing of the deleted tenant is left behind
    stored.close()


async def test_oauth_revocation_drops_cached_grants_at_once_and_tells_the_replicas(
    tmp_path_factory: pytest.TempPathFactory, prefix: str
) -> None:
    db = f"sqlite:///{tmp_path_factory.mktemp('oauth-replica')}/cp.db"
    t = Tenants(db)
    t.create("acme")
    key = t.key("acme")
    env = {"TENANT_MCP_REDIS_URL": REDIS_URL, "TENANT_MCP_REDIS_PREFIX": prefix}
    server = ServerProcess(APP, db, "--oauth-issuer", "http://127.0.0.1:{port}", env=env)
    listener = redis.Redis.from_url(REDIS_URL).pubsub()
    try:
        listener.subscribe(Names(prefix).auth_channel)
        storage = MemoryStorage()
        assert (await oauth_whoami(server, provider(server, Person(key), storage)))["tenant"] == "acme"
        assert storage.tokens is not None and storage.client is not None
        access = storage.tokens.access_token
        async with httpx2.AsyncClient(timeout=30) as http:
            bearer = {"Authorization": f"Bearer {access}"}
            assert (await http.post(server.url, headers=bearer, json={})).status_code != 401  # now cached
            revoked = await http.post(
                f"{server.base}/revoke",
                data={"token": access, "client_id": storage.client.client_id,
                      "client_secret": storage.client.client_secret or ""},
            )  # fmt: skip
            assert revoked.status_code == 200, revoked.text
            # Refused at once although grants are cached for 30 s...
            assert (await http.post(server.url, headers=bearer, json={})).status_code == 401
        # ...and the other replicas were told (the message carries no token).
        deadline = time.monotonic() + 5
        message: dict[str, Any] | None = None
        while (message is None or message["type"] != "message") and time.monotonic() < deadline:
            message = listener.get_message(timeout=0.1)
        assert message is not None and message["type"] == "message"
        data = message["data"]
        assert json.loads(data)["kind"] == "oauth" and access.encode() not in data
    finally:
        listener.close()
        server.stop()


async def test_the_cli_reports_an_unreachable_redis_but_keeps_the_revocation(
    replicas: tuple[ServerProcess, ServerProcess, Tenants],
) -> None:
    _, _, t = replicas
    result = run_cli("key", "revoke", t.key_ids["acme2"], "--redis-url", "redis://127.0.0.1:1/0", db=t.db_url)
    assert result.returncode == 0, result.stderr
    assert "warning: cannot publish to Redis" in result.stderr

    async def revoked(admin: Admin) -> bool:
        return (await admin.key(t.key_ids["acme2"])).revoked_at is not None

    assert t.run(revoked)


async def test_a_replica_that_lost_redis_drops_its_cache_and_listens_again(
    replicas: tuple[ServerProcess, ServerProcess, Tenants], prefix: str
) -> None:
    first, _, t = replicas
    redis_env = {"TENANT_MCP_REDIS_URL": REDIS_URL, "TENANT_MCP_REDIS_PREFIX": prefix}
    assert await accepted(first.url, t.keys["globex2"])
    cli(t.db_url, "key", "revoke", t.key_ids["globex2"])  # not announced: cached for 30 s
    await anyio.sleep(0.5)
    assert await accepted(first.url, t.keys["globex2"])

    admin = redis.Redis.from_url(REDIS_URL)
    ours = [c for c in admin.client_list() if c["name"].startswith(f"{prefix}:replica:") and int(c["sub"])]
    assert len(ours) == 2  # one pub/sub connection per replica
    for client in ours:  # Redis restarts, a network blip: the connections drop
        admin.client_kill_filter(_id=client["id"])
    # Reconnected, each replica assumes it missed invalidations and drops its whole cache.
    assert await refused_within(first.url, t.keys["globex2"], 5.0) < 5.0
    with anyio.fail_after(5):
        while admin.pubsub_numsub(Names(prefix).auth_channel)[0][1] < 2:
            await anyio.sleep(0.05)
    admin.close()
    assert await accepted(first.url, t.keys["acme"])
    cli(t.db_url, "key", "revoke", t.key_ids["acme"], env=redis_env)  # and invalidations arrive again
    assert await refused_within(first.url, t.keys["acme"], 1.0) < 1.0


@pytest.mark.parametrize("bad", ["", "a:b", "has space", "x" * 65])
def test_a_prefix_cannot_reach_into_another_deployments_names(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        Names(bad)


def test_serve_refuses_to_start_without_its_redis(tmp_path_factory: pytest.TempPathFactory) -> None:
    db = f"sqlite:///{tmp_path_factory.mktemp('noredis')}/cp.db"
    result = subprocess.run(
        [sys.executable, "-m", "tenant_mcp.cli", "serve", APP, "--db", db, "--port", "1",
         "--redis-url", "redis://user:hunter2@127.0.0.1:1/0"],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("tenant-mcp: error: cannot reach Redis at redis://***@127.0.0.1:1/0")
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


# -- (b) notifications -----------------------------------------------------------------------------


async def test_notifications_reach_the_tenants_listeners_on_every_replica_and_no_one_else(
    replicas: tuple[ServerProcess, ServerProcess, Tenants], prefix: str
) -> None:
    first, second, t = replicas
    uri = "items://1"
    listeners = {("acme", "first"): first, ("acme", "second"): second,
                 ("globex", "first"): first, ("globex", "second"): second}  # fmt: skip
    names = Names(prefix)
    watcher = redis.Redis.from_url(REDIS_URL)
    connections = {where: (server.url, t.keys[where[0]]) for where, server in listeners.items()}
    async with listening(connections, tools_list_changed=True, resource_subscriptions=[uri]) as seen:
        # Each replica's connection is on the channel of each tenant it has listeners for.
        counts = dict(
            watcher.pubsub_numsub(names.events_channel(t.ids["acme"]), names.events_channel(t.ids["globex"]))
        )
        assert list(counts.values()) == [2, 2]
        async with mcp_client(first.url, t.keys["acme"]) as c:
            await c.call_tool("touch_resource", {"uri": uri})
            await c.call_tool("tools_changed", {})
        # then: time for a misrouted or duplicated event to arrive
        await until(lambda: len(seen["acme", "second"]) >= 2, then=0.5)
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


async def test_legacy_resource_subscriptions_hear_other_replicas(
    replicas: tuple[ServerProcess, ServerProcess, Tenants],
) -> None:
    first, second, t = replicas
    uri = "items://5"
    keys = {slug: t.keys[slug] for slug in ("acme", "globex")}
    async with legacy_subscribers(second.url, keys, uri) as (_, seen):
        async with mcp_client(first.url, t.keys["acme"]) as publisher:
            await publisher.call_tool("touch_resource", {"uri": uri})
        await until(lambda: seen["acme"], then=0.3)
    assert seen == {"acme": [uri], "globex": []}


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


# -- (c) resumable streams -------------------------------------------------------------------------


class RawSession:
    """A 2025-era stateful session spoken by hand, to control exactly when a stream drops."""

    def __init__(self, http: httpx2.AsyncClient, url: str, key: str) -> None:
        self.http, self.url, self.key = http, url, key
        self.session_id = ""

    def headers(self, **extra: str) -> dict[str, str]:
        h = {**MCP_HEADERS, "Authorization": f"Bearer {self.key}", "MCP-Protocol-Version": LEGACY}
        if self.session_id:
            h["Mcp-Session-Id"] = self.session_id
        return {**h, **extra}

    async def open(self) -> RawSession:
        async with self.http.stream("POST", self.url, headers=self.headers(), json=INIT) as r:
            assert r.status_code == 200, await r.aread()
            self.session_id = r.headers["mcp-session-id"]
            async for _ in sse(r):
                break
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await self.http.post(self.url, headers=self.headers(), json=note)).status_code == 202
        return self

    def call(self, request_id: int, name: str, arguments: dict[str, Any]) -> Any:
        body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                "params": {"name": name, "arguments": arguments, "_meta": {"progressToken": f"p{request_id}"}}}  # fmt: skip
        return self.http.stream("POST", self.url, headers=self.headers(), json=body)

    def resume(self, last_event_id: str) -> Any:
        headers = self.headers(**{"Last-Event-ID": last_event_id, "Accept": "text/event-stream"})
        return self.http.stream("GET", self.url, headers=headers)


async def sse(response: httpx2.Response) -> AsyncIterator[tuple[str, dict[str, Any] | None]]:
    """(event id, JSON message or None for a priming event) for each event of an SSE response."""
    event_id, data = "", ""
    async for line in response.aiter_lines():
        if line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif not line:
            if event_id or data:
                yield event_id, json.loads(data) if data else None
            event_id, data = "", ""


async def test_streams_resume_through_redis_and_never_into_another_session(
    replicas: tuple[ServerProcess, ServerProcess, Tenants], prefix: str
) -> None:
    first, _, t = replicas
    steps = 30
    progress_seen: list[float] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress_seen.append(done)

    # The SDK's own 2025-era client is unbothered by the event store (priming events, event ids).
    async with mcp_client(first.url, t.keys["acme"], mode="legacy") as c:
        result = await c.call_tool("slow_echo", {"token": "sdk", "steps": 3}, progress_callback=on_progress)
        assert result.structured_content == {"tenant": "acme", "token": "sdk"} and progress_seen == [1, 2, 3]

    async with httpx2.AsyncClient(timeout=30) as http:
        a = await RawSession(http, first.url, t.keys["acme"]).open()
        received: list[tuple[str, dict[str, Any] | None]] = []
        async with a.call(3, "slow_echo", {"token": "resume", "steps": steps}) as r:
            async for event in sse(r):
                received.append(event)
                if sum(1 for _, m in received if m and m.get("method") == "notifications/progress") == 3:
                    break  # the connection drops mid-call
        last_id = received[-1][0]
        assert received[0][1] is None and received[0][0]  # the priming event carries an id
        await anyio.sleep(steps * 0.02 + 0.5)  # the call finishes while nobody is connected

        replayed: list[dict[str, Any]] = []
        async with a.resume(last_id) as r:
            assert r.status_code == 200
            with anyio.fail_after(10):
                async for _, message in sse(r):
                    if message is not None:
                        replayed.append(message)
                        if message.get("id") == 3:
                            break
        progress = [m["params"]["progress"] for m in replayed if m.get("method") == "notifications/progress"]
        assert progress == list(range(4, steps + 1))
        assert replayed[-1]["result"]["structuredContent"] == {"tenant": "acme", "token": "resume"}

        # The events live on Redis, under the tenant, capped and expiring.
        r_client = redis.Redis.from_url(REDIS_URL)
        keys = list(r_client.scan_iter(f"{prefix}:tenant:{t.ids['acme']}:session:*"))
        assert len(keys) == 2  # the SDK client's session and this one
        assert all(0 < r_client.ttl(key) <= 3600 for key in keys)
        assert max(r_client.xlen(key) for key in keys) >= steps + 2
        r_client.close()

        # Stream ids are JSON-RPC request ids, the same in every session: another session of the
        # same key, and a session of another tenant, get nothing for that event id.
        async def replay_of(session: RawSession, event_id: str) -> tuple[int, bytes]:
            async with session.resume(event_id) as r:
                with anyio.fail_after(10):
                    return r.status_code, await r.aread()

        a2 = await RawSession(http, first.url, t.keys["acme"]).open()
        b = await RawSession(http, first.url, t.keys["globex"]).open()
        for session in (a2, b):
            async with session.call(3, "slow_echo", {"token": "other", "steps": 1}) as r:
                async for _, message in sse(r):
                    if message is not None and message.get("id") == 3:
                        break
            unknown = await replay_of(session, "99999999999999-0")
            assert unknown == (200, b"")
            assert await replay_of(session, last_id) == unknown
            assert await replay_of(session, "not-an-id") == unknown


async def test_a_catalogue_change_reaches_every_replica_at_once_with_list_changed(
    replicas: tuple[ServerProcess, ServerProcess, Tenants], prefix: str
) -> None:
    first, second, t = replicas
    env = {"TENANT_MCP_REDIS_URL": REDIS_URL, "TENANT_MCP_REDIS_PREFIX": prefix}
    async with mcp_client(second.url, t.keys["acme"]) as c:
        assert "whoami" in {tool.name for tool in (await c.list_tools(cache_mode="bypass")).tools}
    async with listening({"acme": (second.url, t.keys["acme"])}, tools_list_changed=True) as heard:
        cli(t.db_url, "tool", "disable", "acme", "whoami", env=env)  # the CLI of "replica 1"
        start = time.monotonic()
        await until(lambda: "ToolsListChanged" in heard["acme"])
        async with mcp_client(second.url, t.keys["acme"]) as c:
            assert "whoami" not in {tool.name for tool in (await c.list_tools(cache_mode="bypass")).tools}
        assert time.monotonic() - start < 1.0
    async with mcp_client(first.url, t.keys["globex"]) as c:  # another tenant is untouched
        assert "whoami" in {tool.name for tool in (await c.list_tools(cache_mode="bypass")).tools}


async def test_a_plan_default_reaches_every_replica_with_list_changed(
    replicas: tuple[ServerProcess, ServerProcess, Tenants], prefix: str
) -> None:
    _, second, t = replicas
    env = {"TENANT_MCP_REDIS_URL": REDIS_URL, "TENANT_MCP_REDIS_PREFIX": prefix}
    async with listening({"globex": (second.url, t.keys["globex"])}, tools_list_changed=True) as heard:
        cli(t.db_url, "plan", "set-default", "free", "whoami", "disabled", env=env)  # globex is on free
        await until(lambda: "ToolsListChanged" in heard["globex"])
        async with mcp_client(second.url, t.keys["globex"]) as c:
            assert "whoami" not in {tool.name for tool in (await c.list_tools(cache_mode="bypass")).tools}


async def test_legacy_sessions_hear_catalogue_changes_of_their_own_tenant_only(
    replicas: tuple[ServerProcess, ServerProcess, Tenants], prefix: str
) -> None:
    _, second, t = replicas
    env = {"TENANT_MCP_REDIS_URL": REDIS_URL, "TENANT_MCP_REDIS_PREFIX": prefix}
    seen: dict[str, list[str]] = {"acme": [], "globex": []}

    def handler(slug: str) -> Any:
        async def on_message(message: Any) -> None:
            method = getattr(getattr(message, "root", message), "method", None)
            if method and method.endswith("/list_changed"):
                seen[slug].append(method)

        return on_message

    async with (
        mcp_client(second.url, t.keys["acme"], mode="legacy", message_handler=handler("acme")) as a,
        mcp_client(second.url, t.keys["globex"], mode="legacy", message_handler=handler("globex")) as b,
    ):
        await a.list_tools()  # a session that lists items hears when they change
        await b.list_tools()
        cli(t.db_url, "tool", "disable", "acme", "whoami", env=env)
        with anyio.fail_after(5):
            while "notifications/tools/list_changed" not in seen["acme"]:
                await anyio.sleep(0.05)
        assert "whoami" not in {tool.name for tool in (await a.list_tools(cache_mode="bypass")).tools}
        await anyio.sleep(0.3)
    assert seen["globex"] == []
