"""Per-tenant limits: rates, per-tool rates, concurrency, sessions, quotas, overrides and usage.

Driven as clients and operators drive them: the official SDK client over HTTP and stdio, raw
HTTP for the 429 of a refused session, and the `tenant-mcp` CLI in a subprocess. The server is
tests/servers/limited.py ("tiny" plan: 3 requests a minute, 1 call at a time, 2 sessions, 5
calls a day). Every test uses tenants of its own, so the windows of one never bite another.
A rate counts every request but initialize and ping: the SDK client lists the tools once before
its first call (for their output schemas), so the tests list first and count that request.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import pytest
import redis
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

from tenant_mcp.audit.log import AuditLog
from tenant_mcp.call import Call
from tenant_mcp.controlplane import ControlPlane
from tenant_mcp.limits import RATE_LIMITED, Limiter, Limits
from tenant_mcp.models import Principal, Tenant
from tests.helpers import (
    REDIS_URL,
    ROOT,
    ServerProcess,
    Tenants,
    clean_env,
    free_port,
    mcp_client,
    postgres_database,
    run_cli,
)

pytestmark = pytest.mark.anyio

APP = "tests.servers.limited:app"
INIT = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "raw", "version": "0"}},
}  # fmt: skip
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('limits')}/control.db"


@pytest.fixture(scope="module")
def tenants(db: str) -> Tenants:
    return Tenants(db)


@pytest.fixture(scope="module")
def server(db: str, tenants: Tenants) -> Iterator[ServerProcess]:
    process = ServerProcess(APP, db)
    yield process
    process.stop()


def fresh(tenants: Tenants, plan: str) -> tuple[str, str]:
    """A new tenant on `plan` with one key: (slug, key)."""
    slug = f"t-{secrets.token_hex(4)}"
    tenants.create(slug, plan=plan)
    return slug, tenants.key(slug)


def cli(db: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*argv, db=db, env=env)


async def _listed(client: Client) -> Client:
    await client.list_tools()  # what the SDK client would do on its first call anyway
    return client


async def _call(client: Client, tool: str, **arguments: Any) -> Any:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    return result.structured_content["result"]


def _refusal(exc: pytest.ExceptionInfo[MCPError]) -> tuple[str, int]:
    error = exc.value.error
    assert error.code == RATE_LIMITED, error
    assert isinstance(error.data, dict)
    assert "retry after" in error.message
    return error.message, int(error.data["retryAfter"])


def _denials(tenants: Tenants, slug: str) -> list[str]:
    return [e["reason"] for e in tenants.audit(slug) if e["outcome"] == "denied"]


async def _eventually_denied(tenants: Tenants, slug: str, reason: str) -> None:
    """The audit writer flushes in batches: wait for the refusal's event."""
    with anyio.fail_after(5):
        while reason not in _denials(tenants, slug):
            await anyio.sleep(0.1)


async def test_tenant_rate_limit_refuses_with_retry_hint_and_spares_others(
    server: ServerProcess, tenants: Tenants
) -> None:
    slug, key = fresh(tenants, "tiny")
    other, other_key = fresh(tenants, "tiny")
    async with mcp_client(server.url, key) as client:
        await _listed(client)
        assert [await _call(client, "whoami") for _ in range(2)] == [slug] * 2
        with pytest.raises(MCPError) as exc:
            await client.call_tool("whoami", {})
        message, retry_after = _refusal(exc)
        assert "3/minute per tenant" in message and 1 <= retry_after <= 60
        assert other not in message and slug not in message  # no tenant named, not even its own
    # A second connection of the same tenant buys nothing; another tenant is untouched.
    async with mcp_client(server.url, key) as again, mcp_client(server.url, other_key) as neighbour:
        with pytest.raises(MCPError):
            await again.call_tool("whoami", {})
        assert await _call(await _listed(neighbour), "whoami") == other
    await _eventually_denied(tenants, slug, "rate limited: 3/minute per tenant")


def _rpc(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC message of a response, JSON or one SSE event."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [
            line[5:] for line in response.text.splitlines() if line.startswith("data:") and line[5:].strip()
        ]
        return dict(json.loads(data[-1]))
    return dict(response.json())


async def test_a_tenant_over_its_rate_is_refused_before_the_mcp_layer(
    server: ServerProcess, tenants: Tenants
) -> None:
    """Once the rate is used up, further requests get HTTP 429 with Retry-After at the gate (no
    SDK parsing, no handler), with the same JSON-RPC error; notifications still go through."""
    slug, key = fresh(tenants, "tiny")
    _, other_key = fresh(tenants, "tiny")
    auth = {**ACCEPT, "Authorization": f"Bearer {key}", "mcp-protocol-version": "2025-06-18"}
    opened = httpx2.post(server.url, json=INIT, headers=auth, timeout=10)
    session = {**auth, "mcp-session-id": opened.headers["mcp-session-id"]}

    def post(body: dict[str, Any], headers: dict[str, str] = session) -> httpx2.Response:
        return httpx2.post(server.url, json=body, headers=headers, timeout=10)

    assert post({"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202
    call = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
    answers = [_rpc(post({**call, "id": i})) for i in range(4)]
    assert [a["result"]["structuredContent"]["result"] for a in answers[:3]] == [slug] * 3
    assert answers[3]["error"]["code"] == RATE_LIMITED  # refused in the MCP layer, arming the gate
    early = post({**call, "id": 99})
    assert early.status_code == 429 and early.headers["Retry-After"].isdigit()
    assert early.json()["id"] == 99 and early.json()["error"]["code"] == RATE_LIMITED
    assert early.json()["error"]["message"].startswith(
        "Rate limit exceeded: 3/minute per tenant; retry after"
    )
    notification = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99}}
    assert post(notification).status_code == 202  # never refused: a client must be able to deliver it
    assert "result" in _rpc(post({"jsonrpc": "2.0", "id": 100, "method": "ping"}))
    # Another tenant on the same plan is served.
    other_auth = {**ACCEPT, "Authorization": f"Bearer {other_key}", "mcp-protocol-version": "2025-06-18"}
    assert httpx2.post(server.url, json=INIT, headers=other_auth, timeout=10).status_code == 200
    with anyio.fail_after(5):
        while _denials(tenants, slug).count("rate limited: 3/minute per tenant") < 2:
            await anyio.sleep(0.1)


async def test_a_slow_request_of_a_tenant_refused_at_the_gate_gets_its_429(
    server: ServerProcess, tenants: Tenants, db: str
) -> None:
    """A request that reaches the gate while its tenant's rate is used up, but whose body arrives
    only once the window has room again, is answered at once with a 429 (it was a 500)."""
    slug, key = fresh(tenants, "tiny")
    assert cli(db, "limits", "set", slug, "--rate", "2/3 seconds").returncode == 0
    auth = {**ACCEPT, "Authorization": f"Bearer {key}", "mcp-protocol-version": "2025-06-18"}
    opened = httpx2.post(server.url, json=INIT, headers=auth, timeout=10)
    auth["mcp-session-id"] = opened.headers["mcp-session-id"]
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                       "params": {"name": "whoami", "arguments": {}}}).encode()  # fmt: skip

    async def slowly() -> AsyncIterator[bytes]:
        await anyio.sleep(3.5)  # past the moment the window has room again
        yield body

    async with httpx2.AsyncClient(timeout=10) as http:
        with anyio.fail_after(10):  # until the MCP layer refuses the tenant, arming the gate
            while "error" not in _rpc(await http.post(server.url, content=body, headers=auth)):
                await anyio.sleep(0.05)
        late = await http.post(
            server.url, content=slowly(), headers={**auth, "content-length": str(len(body))}
        )
    assert late.status_code == 429, late.text
    assert late.json()["id"] == 7 and late.headers["Retry-After"] == "1"


async def test_a_refused_call_never_runs_the_tool(server: ServerProcess, tenants: Tenants, db: str) -> None:
    slug, key = fresh(tenants, "tiny")
    async with mcp_client(server.url, key) as client:
        await _listed(client)
        assert [await _call(client, "touch_db") for _ in range(2)] == [1, 2]
        for _ in range(3):
            with pytest.raises(MCPError):
                await client.call_tool("touch_db", {})
        # Lift the rate through the CLI: the running server picks it up within its cache window.
        assert cli(db, "limits", "set", slug, "--rate", "none").returncode == 0
        with anyio.fail_after(5):
            while True:
                try:
                    count = await _call(client, "touch_db")
                    break
                except MCPError:
                    await anyio.sleep(0.2)
        assert count == 3, "a refused call inserted a row"


async def test_per_tool_rate_limits_that_tool_only(server: ServerProcess, tenants: Tenants) -> None:
    slug, key = fresh(tenants, "pro")
    other, other_key = fresh(tenants, "pro")
    async with mcp_client(server.url, key) as client, mcp_client(server.url, other_key) as neighbour:
        assert [await _call(client, "export") for _ in range(2)] == [f"export of {slug}"] * 2
        with pytest.raises(MCPError) as exc:
            await client.call_tool("export", {})
        assert "2/minute per tool export" in _refusal(exc)[0]
        assert await _call(client, "whoami") == slug
        assert await _call(neighbour, "export") == f"export of {other}"
    await _eventually_denied(tenants, slug, "rate limited: 2/minute per tool export")


async def test_principal_rate_limits_one_key_not_its_tenant(
    server: ServerProcess, tenants: Tenants, db: str
) -> None:
    slug, key = fresh(tenants, "tiny")
    second_key = tenants.key(slug, name=f"{slug}-2")
    assert cli(db, "limits", "set", slug, "--rate", "none", "--principal-rate", "2/minute").returncode == 0
    async with mcp_client(server.url, key) as first, mcp_client(server.url, second_key) as second:
        await _listed(first)
        assert await _call(first, "whoami") == slug
        with pytest.raises(MCPError) as exc:
            await first.call_tool("whoami", {})
        assert "2/minute per principal" in _refusal(exc)[0]
        await _listed(second)
        assert await _call(second, "whoami") == slug


def test_bad_limits_in_code_fail_at_declaration() -> None:
    from tenant_mcp import Limits, TenantMCP, TenantMCPError

    for bad in (
        {"rate": "lots"},
        {"rate": "0/minute"},
        {"concurrency": 0},
        {"daily": 1.5},
        {"sessions": True},
    ):
        with pytest.raises(TenantMCPError):
            Limits(**bad)
    with pytest.raises(TypeError):
        TenantMCP("x", limits=Limits(rate="1/second"))  # type: ignore[arg-type]
    app = TenantMCP("x")
    with pytest.raises(TenantMCPError, match="invalid rate"):
        app.tool(rate="often")(lambda: None)


async def test_a_hidden_tools_rate_answers_like_a_missing_tool(
    server: ServerProcess, tenants: Tenants
) -> None:
    """A tool's own rate applies only where the tool is visible: to anyone else, calling it again
    and again is answered exactly as calling a tool that does not exist."""
    _, key = fresh(tenants, "unlimited")
    async with mcp_client(server.url, key) as client:
        await _listed(client)
        for _ in range(3):
            hidden = await client.call_tool("pro_report", {})
            missing = await client.call_tool("no_such_tool", {})
            assert hidden.is_error and missing.is_error
            dump = hidden.model_dump(mode="json")
            assert json.dumps(dump).replace("pro_report", "X") == json.dumps(
                missing.model_dump(mode="json")
            ).replace("no_such_tool", "X")


async def test_concurrency_cap_per_tenant(
    server: ServerProcess, tenants: Tenants, tmp_path: Path, db: str
) -> None:
    slug, key = fresh(tenants, "tiny")
    other, other_key = fresh(tenants, "tiny")
    for tenant in (slug, other):  # only the concurrency cap here
        assert cli(db, "limits", "set", tenant, "--rate", "none").returncode == 0
    release = tmp_path / "release"
    async with (
        mcp_client(server.url, key) as first,
        mcp_client(server.url, key) as second,
        mcp_client(server.url, other_key) as neighbour,
        anyio.create_task_group() as tg,
    ):
        await _listed(first)
        await _listed(neighbour)
        results: list[str] = []

        async def hold() -> None:
            results.append(await _call(first, "slow", release=str(release)))

        tg.start_soon(hold)
        with anyio.fail_after(10):  # until the slow call is running, calls beside it go through
            while True:
                try:
                    await second.call_tool("whoami", {})
                except MCPError as refused:
                    error = refused.error
                    break
                await anyio.sleep(0.1)
        assert error.code == RATE_LIMITED and "at most 1 at once" in error.message
        assert await _call(neighbour, "whoami") == other
        release.touch()
    assert results == ["done"]
    await _eventually_denied(tenants, slug, "rate limited: concurrency 1")


async def test_session_cap_per_tenant(server: ServerProcess, tenants: Tenants) -> None:
    slug, key = fresh(tenants, "tiny")
    _, other_key = fresh(tenants, "tiny")

    def open_session(k: str) -> httpx2.Response:
        return httpx2.post(
            server.url, json=INIT, headers={**ACCEPT, "Authorization": f"Bearer {k}"}, timeout=10
        )

    opened = [open_session(key) for _ in range(2)]
    assert [r.status_code for r in opened] == [200, 200]
    refused = open_session(key)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"].isdigit()
    assert refused.json()["error"]["code"] == RATE_LIMITED
    assert "at most 2" in refused.json()["error"]["message"]
    # Another tenant at the same plan opens sessions freely.
    assert [open_session(other_key).status_code for _ in range(2)] == [200, 200]
    # Closing one session makes room again.
    session_id = opened[0].headers["mcp-session-id"]
    closed = httpx2.delete(
        server.url, headers={"Authorization": f"Bearer {key}", "mcp-session-id": session_id,
                             "mcp-protocol-version": "2025-06-18"},
    )  # fmt: skip
    assert closed.status_code == 200
    assert open_session(key).status_code == 200
    await _eventually_denied(tenants, slug, "rate limited: sessions 2")


async def test_subscription_cap_per_tenant(server: ServerProcess, tenants: Tenants, db: str) -> None:
    """Resource subscriptions count against the tenant's `subscriptions`, whichever session holds
    them; another tenant on the same plan is not affected, and an override raises the cap."""
    slug, key = fresh(tenants, "tiny")
    _, other_key = fresh(tenants, "tiny")
    assert cli(db, "limits", "set", slug, "--rate", "none").returncode == 0
    async with (
        mcp_client(server.url, key, mode="legacy") as first,
        mcp_client(server.url, key, mode="legacy") as second,
        mcp_client(server.url, other_key, mode="legacy") as neighbour,
    ):
        await first.subscribe_resource("limited://1")
        await second.subscribe_resource("limited://2")
        with pytest.raises(MCPError) as exc:
            await second.subscribe_resource("limited://3")
        assert exc.value.error.message == "Subscription limit reached: at most 2 per tenant"
        await neighbour.subscribe_resource("limited://1")  # the same plan, its own count
        await first.unsubscribe_resource("limited://1")
        await second.subscribe_resource("limited://3")  # room again
        assert cli(db, "limits", "set", slug, "--subscriptions", "3").returncode == 0
        with anyio.fail_after(5):
            while True:
                try:
                    await first.subscribe_resource("limited://4")
                    break
                except MCPError:
                    await anyio.sleep(0.2)
    await _eventually_denied(tenants, slug, "rate limited: subscriptions 2")


async def test_daily_quota_counts_durably_and_usage_reports_it(tenants: Tenants, db: str) -> None:
    slug, key = fresh(tenants, "tiny")
    set_ = cli(db, "limits", "set", slug, "--rate", "none", "--daily", "4", "--json")
    assert set_.returncode == 0, set_.stderr
    assert json.loads(set_.stdout)["override"] == {"daily": 4, "rate": None}
    server = ServerProcess(APP, db)
    try:
        async with mcp_client(server.url, key) as client:
            await _listed(client)
            assert [await _call(client, "whoami") for _ in range(4)] == [slug] * 4
            with pytest.raises(MCPError) as exc:
                await client.call_tool("whoami", {})
            message, retry_after = _refusal(exc)
            assert "Daily quota exceeded: 4" in message and retry_after <= 86400
    finally:
        server.stop()  # flushes the counts
    await _eventually_denied(tenants, slug, "quota exceeded: daily 4")
    # A restarted server still knows the quota is used up.
    server = ServerProcess(APP, db)
    try:
        async with mcp_client(server.url, key) as client:
            with pytest.raises(MCPError):
                await client.call_tool("whoami", {})
    finally:
        server.stop()
    report = cli(db, "usage", slug, "--json")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert (data["calls"], data["refused"], data["today"]) == (4, 2, 4)
    assert data["quota_left"] == {"daily": 0, "monthly": None}
    text = cli(db, "usage", slug, "--app", APP)
    assert "daily quota: 4, 0 left" in text.stdout and "monthly quota: unlimited" in text.stdout


def test_limits_cli_contract(tenants: Tenants, db: str) -> None:
    slug, _ = fresh(tenants, "tiny")
    shown = cli(db, "limits", "show", slug, "--app", APP, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["effective"] == {
        "rate": "3/minute", "principal_rate": None, "concurrency": 1, "sessions": 2, "daily": 5, "monthly": None,
        "subscriptions": 2,
    }  # fmt: skip
    assert (
        cli(db, "limits", "set", slug, "--concurrency", "8", "--principal-rate", "10/second").returncode == 0
    )
    assert cli(db, "limits", "set", slug, "--daily", "default").returncode == 0
    shown = json.loads(cli(db, "limits", "show", slug, "--app", APP, "--json").stdout)
    assert shown["override"] == {"concurrency": 8, "principal_rate": "10/second"}
    assert shown["effective"]["concurrency"] == 8 and shown["effective"]["daily"] == 5
    text = cli(db, "limits", "show", slug).stdout
    assert "concurrency" in text and "(plan)" in text
    for argv, code, words in (
        (("limits", "set", slug, "--rate", "lots"), 1, "invalid rate"),
        (("limits", "set", slug, "--concurrency", "0"), 2, "at least 1"),
        (("limits", "set", slug, "--daily", "many"), 2, "whole number"),
        (("limits", "set", slug), 2, "at least one limit"),
        (("limits", "set", "nobody", "--rate", "1/second"), 1, "no tenant 'nobody'"),
        (("limits", "show", "nobody"), 1, "no tenant 'nobody'"),
        (("usage", slug, "--since", "yesterday"), 2, "YYYY-MM-DD"),
    ):
        result = cli(db, *argv)
        assert result.returncode == code, (argv, result.stderr)
        assert result.stderr.startswith("tenant-mcp: error: ") and words in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    unchanged = json.loads(cli(db, "limits", "show", slug, "--json").stdout)
    assert unchanged["override"] == {"concurrency": 8, "principal_rate": "10/second"}, (
        "a bad set changed something"
    )


# -- stdio, and Redis down ------------------------------------------------------------------------


class RedisProxy:
    """A TCP proxy to the test Redis that can be cut, to take Redis away from a running server."""

    def __init__(self, delay: float = 0.0) -> None:
        self.port = free_port()
        self._scope = anyio.CancelScope()
        self._delay = delay  # added to every chunk Redis answers (a slow network)

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        host, port = REDIS_URL.split("//", 1)[1].split("/", 1)[0].split(":")
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)

        async def pipe(a: anyio.abc.ByteStream, b: anyio.abc.ByteStream, delay: float = 0.0) -> None:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                async for chunk in a:
                    await anyio.sleep(delay)
                    await b.send(chunk)

        async def handle(client: anyio.abc.SocketStream) -> None:
            async with (
                client,
                await anyio.connect_tcp(host, int(port)) as upstream,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(pipe, client, upstream)
                await pipe(upstream, client, self._delay)
                tg.cancel_scope.cancel()

        with self._scope:
            async with listener:
                task_status.started()
                await listener.serve(handle)

    def cut(self) -> None:
        self._scope.cancel()


async def _stdio_calls(
    db: str, key: str, errlog: Path, env: dict[str, str], n: int, proxy: RedisProxy | None = None
) -> list[str]:
    """Call whoami `n` times over stdio (after cutting `proxy`); each answer, or the refusal's message."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "tenant_mcp.cli", "serve", APP, "--transport", "stdio", "--db", db],
        env=clean_env(TENANT_MCP_API_KEY=key, **env), cwd=ROOT,
    )  # fmt: skip
    answers = []
    with errlog.open("a") as err:
        async with Client(stdio_client(params, errlog=err)) as client:
            if proxy is not None:
                proxy.cut()
                await anyio.sleep(0.3)
            try:
                await _listed(client)
            except MCPError as exc:
                answers.append(exc.error.message)
            for _ in range(n):
                try:
                    answers.append(await _call(client, "whoami"))
                except MCPError as exc:
                    assert exc.error.code == RATE_LIMITED
                    answers.append(exc.error.message)
    return answers


async def test_stdio_limits_the_same_way(tenants: Tenants, db: str, tmp_path: Path) -> None:
    slug, key = fresh(tenants, "tiny")
    answers = await _stdio_calls(db, key, tmp_path / "err.log", {}, 3)
    assert answers[:2] == [slug] * 2
    assert answers[2].startswith("Rate limit exceeded: 3/minute per tenant; retry after")


@pytest.fixture
async def redis_proxy() -> AsyncIterator[RedisProxy]:
    proxy = RedisProxy()
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        yield proxy
        proxy.cut()


def _redis_env(proxy: RedisProxy, **extra: str) -> dict[str, str]:
    prefix = f"tmtest-{secrets.token_hex(6)}"  # nothing is left behind: Redis is gone before any write
    return {"TENANT_MCP_REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0", "TENANT_MCP_REDIS_PREFIX": prefix,
            **extra}  # fmt: skip


async def test_redis_down_fails_closed_by_default(
    tenants: Tenants, db: str, tmp_path: Path, redis_proxy: RedisProxy
) -> None:
    slug, key = fresh(tenants, "tiny")
    answers = await _stdio_calls(db, key, tmp_path / "err.log", _redis_env(redis_proxy), 2, redis_proxy)
    assert len(answers) == 3 and all(a.startswith("The rate limiter is unavailable") for a in answers), (
        answers
    )
    await _eventually_denied(tenants, slug, "rate limiter unavailable")


async def test_redis_down_spares_tenants_without_a_rate(
    tenants: Tenants, db: str, tmp_path: Path, redis_proxy: RedisProxy
) -> None:
    slug, key = fresh(tenants, "unlimited")
    answers = await _stdio_calls(db, key, tmp_path / "err.log", _redis_env(redis_proxy), 2, redis_proxy)
    assert answers == [slug] * 2


async def test_redis_down_with_local_fallback_still_limits(
    tenants: Tenants, db: str, tmp_path: Path, redis_proxy: RedisProxy
) -> None:
    slug, key = fresh(tenants, "tiny")
    env = _redis_env(redis_proxy, LIMITED_ON_REDIS_ERROR="local")
    answers = await _stdio_calls(db, key, tmp_path / "err.log", env, 4, redis_proxy)
    assert answers[:2] == [slug] * 2, answers
    assert all(a.startswith("Rate limit exceeded") for a in answers[2:]), answers


# -- two replicas on one Redis --------------------------------------------------------------------


async def test_rate_limit_holds_across_two_replicas(tmp_path: Path) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    prefix = f"tmtest-{secrets.token_hex(6)}"
    db = f"sqlite:///{tmp_path}/cp.db"
    t = Tenants(db)
    slug, key = fresh(t, "pro")
    assert cli(db, "limits", "set", slug, "--rate", "10/minute").returncode == 0
    env = {"TENANT_MCP_REDIS_URL": REDIS_URL, "TENANT_MCP_REDIS_PREFIX": prefix}
    replicas = [ServerProcess(APP, db, env=env, log_dir=tmp_path) for _ in range(2)]
    try:
        async with mcp_client(replicas[0].url, key) as one, mcp_client(replicas[1].url, key) as two:
            accepted = 2  # the two listings
            await _listed(one)
            await _listed(two)
            for i in range(30):
                try:
                    await _call((one, two)[i % 2], "whoami")
                    accepted += 1
                except MCPError as exc:
                    assert exc.error.code == RATE_LIMITED
            assert accepted == 10
    finally:
        for replica in replicas:
            replica.stop()
        for k in client.scan_iter(f"{prefix}:*"):
            client.delete(k)
        client.close()


async def test_override_reaches_replicas_at_once_through_redis(tmp_path: Path) -> None:
    """With Redis, `limits set` is an invalidation: no waiting for the cache window (30 s here)."""
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"tmtest-{secrets.token_hex(6)}"
    db = f"sqlite:///{tmp_path}/cp.db"
    t = Tenants(db)
    slug, key = fresh(t, "pro")
    env = {"TENANT_MCP_REDIS_URL": REDIS_URL, "TENANT_MCP_REDIS_PREFIX": prefix}
    server = ServerProcess(APP, db, "--log-level", "warning", env={**env, "LIMITED_CACHE_SECONDS": "30"},
                           log_dir=tmp_path)  # fmt: skip
    try:
        async with mcp_client(server.url, key) as c:
            assert await _call(c, "whoami") == slug  # limits now cached for 30 s
            assert cli(db, "limits", "set", slug, "--daily", "1", env=env).returncode == 0
            await anyio.sleep(0.5)
            with pytest.raises(MCPError) as exc:
                await c.call_tool("whoami", {})
            assert "Daily quota exceeded: 1" in exc.value.error.message
    finally:
        server.stop()
        for k in client.scan_iter(f"{prefix}:*"):
            client.delete(k)
        client.close()


# -- PostgreSQL control plane ---------------------------------------------------------------------


async def test_overrides_quotas_and_usage_on_postgres(tmp_path: Path) -> None:
    with postgres_database() as pg:
        env = {"TENANT_MCP_MIGRATION_URL": pg.owner}
        server = ServerProcess(APP, pg.app, env=env, log_dir=tmp_path)
        try:
            t = Tenants(pg.app)
            slug, key = fresh(t, "tiny")
            other, other_key = fresh(t, "tiny")
            assert cli(pg.app, "limits", "set", slug, "--rate", "none", "--daily", "2").returncode == 0
            async with mcp_client(server.url, key) as client, mcp_client(server.url, other_key) as neighbour:
                await _listed(client)
                assert [await _call(client, "touch_db") for _ in range(2)] == [1, 2]
                with pytest.raises(MCPError) as exc:
                    await client.call_tool("touch_db", {})
                assert "Daily quota exceeded: 2" in _refusal(exc)[0]
                assert await _call(await _listed(neighbour), "whoami") == other
        finally:
            server.stop()
        data = json.loads(cli(pg.app, "usage", slug, "--json", "--app", APP).stdout)
        assert (data["calls"], data["refused"], data["quota_left"]) == (2, 1, {"daily": 0, "monthly": None})
        assert (
            pg.sql("SELECT count(*) AS n FROM tenant_mcp.tenant_usage")[0]["n"] == 2
        )  # one row per tenant and day


async def test_usage_of_a_deleted_tenant_does_not_block_the_others(tenants: Tenants, db: str) -> None:
    gone, gone_key = fresh(tenants, "unlimited")
    kept, kept_key = fresh(tenants, "unlimited")
    server = ServerProcess(APP, db)
    try:
        async with mcp_client(server.url, gone_key) as a, mcp_client(server.url, kept_key) as b:
            assert await _call(a, "whoami") == gone
            # before the counts are flushed
            tenants.run(lambda admin: admin.delete_tenant(gone, drain_seconds=0))
            assert await _call(b, "whoami") == kept
        await anyio.sleep(1.5)
    finally:
        server.stop()
    data = json.loads(cli(db, "usage", kept, "--json").stdout)
    assert data["calls"] == 1


# -- quota bookkeeping in one process ---------------------------------------------------------------
#
# The limiter of one server process, driven directly (no transport) on a real SQLite control plane
# and the real Redis, where the order of concurrent admissions and flushes must be controlled.


@contextlib.asynccontextmanager
async def _limiter(
    tmp_path: Path, limits: Limits, **options: Any
) -> AsyncIterator[tuple[Limiter, ControlPlane]]:
    async with ControlPlane(f"sqlite:///{tmp_path}/cp.db") as cp:
        yield Limiter(cp, AuditLog(cp), plans={"q": limits}, **options), cp


@contextlib.asynccontextmanager
async def _slow_redis_limiter(tmp_path: Path) -> AsyncIterator[tuple[Limiter, ControlPlane]]:
    """A limiter whose rates live in Redis 0.3 s away: calls wait there after their quota
    reservation, long enough for other calls and a flush to come between."""
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"tmtest-{secrets.token_hex(6)}"
    proxy = RedisProxy(delay=0.3)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(proxy.serve)
            url = f"redis://127.0.0.1:{proxy.port}/0"
            limits = Limits(rate="100/minute", daily=2)
            async with _limiter(tmp_path, limits, redis_url=url, redis_prefix=prefix) as made:
                yield made
            proxy.cut()
    finally:
        for k in client.scan_iter(f"{prefix}:*"):
            client.delete(k)
        client.close()


async def _tenant(cp: ControlPlane, slug: str = "acme") -> Tenant:
    return await cp.create_tenant(slug, plan="q")


def _tool_call(tenant: Tenant, method: str = "tools/call") -> Call:
    principal = Principal(tenant_id=tenant.id, subject=f"{tenant.id}:k", scopes=frozenset(),
                          auth_method="api_key", client_id="k", key_id="k")  # fmt: skip
    return Call(tenant, principal, method, {"name": "whoami", "arguments": {}})


async def _admitted(limiter: Limiter, tenant: Tenant) -> bool:
    try:
        async with await limiter.admit(_tool_call(tenant)):
            return True
    except MCPError as exc:
        assert exc.error.code == RATE_LIMITED
        return False


async def test_concurrent_first_calls_share_one_quota_read(tmp_path: Path) -> None:
    """Calls of a tenant arriving together before its quota counts are known must not each read
    them and reserve against their own copy: with a daily quota of 2, three calls admit two."""
    async with _slow_redis_limiter(tmp_path) as (limiter, cp):
        tenant = await _tenant(cp)
        async with await limiter.admit(_tool_call(tenant, "tools/list")):
            pass  # its limits are now known: the calls below go straight to their quota
        results: list[bool] = []

        async def one() -> None:
            results.append(await _admitted(limiter, tenant))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
        assert sorted(results) == [False, True, True]


async def test_a_flush_keeps_reservations_of_calls_being_admitted(tmp_path: Path) -> None:
    """A flush that lands while a call is between its quota reservation and its admission must
    not lose that reservation."""
    async with _slow_redis_limiter(tmp_path) as (limiter, cp):
        tenant = await _tenant(cp)
        results: list[bool] = []

        async def one() -> None:
            results.append(await _admitted(limiter, tenant))

        async with anyio.create_task_group() as calls:
            calls.start_soon(one)
            await anyio.sleep(0.2)  # the first call has reserved and waits for Redis
            await limiter.flush()
            calls.start_soon(one)
        assert results == [True, True]
        assert not await _admitted(limiter, tenant), "a third call was admitted on a quota of 2"


async def test_usage_flush_reads_every_tenants_quota_in_one_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _limiter(tmp_path, Limits(daily=2)) as (limiter, cp):
        tenants = [await _tenant(cp, f"t{i}") for i in range(20)]
        for tenant in tenants:
            assert await _admitted(limiter, tenant)
        queries: list[str] = []
        for name in ("fetch_all", "fetch_one", "execute", "execute_many"):
            real = getattr(cp.db, name)

            def counted(sql: str, *args: Any, _real: Any = real) -> Any:
                queries.append(sql)
                return _real(sql, *args)

            monkeypatch.setattr(cp.db, name, counted)
        await limiter.flush()
        assert len(queries) <= 2, queries  # the counts written, then read back, for all 20 tenants
        monkeypatch.undo()
        for tenant in tenants:  # and the counts read back are right: one call left each
            assert await _admitted(limiter, tenant)
            assert not await _admitted(limiter, tenant)


# -- rates of one request: all windows or none; Redis round trips in batches ------------------------


@contextlib.asynccontextmanager
async def _on_redis(tmp_path: Path, limits: Limits, replicas: int = 1) -> AsyncIterator[list[Limiter]]:
    """`replicas` limiters on one control plane and one Redis prefix."""
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"tmtest-{secrets.token_hex(6)}"
    try:
        async with ControlPlane(f"sqlite:///{tmp_path}/cp.db") as cp:
            yield [
                Limiter(cp, AuditLog(cp), plans={"q": limits}, redis_url=REDIS_URL, redis_prefix=prefix)
                for _ in range(replicas)
            ]
    finally:
        for k in client.scan_iter(f"{prefix}:*"):
            client.delete(k)
        client.close()


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_a_refused_request_uses_up_none_of_its_rates(tmp_path: Path, store: str) -> None:
    """The tenant's rate refuses the third call: its principal's rate must not count it, or the
    principal would be refused later for calls it never got."""
    limits = Limits(rate="2/second", principal_rate="3/minute")
    async with contextlib.AsyncExitStack() as stack:
        if store == "redis":
            (limiter,) = await stack.enter_async_context(_on_redis(tmp_path, limits))
            cp = limiter._cp
        else:
            limiter, cp = await stack.enter_async_context(_limiter(tmp_path, limits))
        tenant = await _tenant(cp)
        assert [await _admitted(limiter, tenant) for _ in range(3)] == [True, True, False]
        await anyio.sleep(1.2)  # the tenant's window has room again; the principal's has one
        assert [await _admitted(limiter, tenant) for _ in range(2)] == [True, False]


async def test_a_rate_holds_across_replicas_within_a_tenth(tmp_path: Path) -> None:
    """Far from its limit a replica admits a share of the headroom without asking Redis; two
    replicas flooded together still admit no more than 10 % over the limit, and no less."""
    async with _on_redis(tmp_path, Limits(rate="1000/minute"), replicas=2) as replicas:
        tenant = await _tenant(replicas[0]._cp)
        admitted = 0
        for i in range(1500):
            admitted += await _admitted(replicas[i % 2], tenant)
        assert 1000 <= admitted <= 1100, admitted
        for replica in replicas:  # the hits each admitted without asking are recorded
            await replica._flush_logged("test")
        assert not await _admitted(replicas[0], tenant)
