"""Upstream connections end to end: a real OAuth provider and API (tests/servers/upstream.py, its
own process), the MCP server as a process, the SDK client over HTTP, and a person's browser played
by an HTTP client with its own cookie jar (signed in at the provider as one upstream account)."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from tenant_mcp.connections.store import ConnectionStore
from tenant_mcp.controlplane import ControlPlane
from tenant_mcp.secrets import KeyRing, SecretStore
from tests.helpers import (
    ROOT,
    ServerProcess,
    Tenants,
    clean_env,
    free_port,
    interrupt,
    mcp_client,
    migrated,
    run_cli,
    tool_result,
)

pytestmark = pytest.mark.anyio
LINK = re.compile(r"http://127\.0\.0\.1:\d+/connections/connect\?link=[\w-]+")


@dataclass
class Stack:
    t: Tenants
    server: ServerProcess
    upstream: str  # base URL of the provider
    secret_key: str

    def admin(self, action: str, user: str = "") -> dict[str, Any]:
        return dict(httpx2.post(f"{self.upstream}/admin/{action}", params={"user": user}, timeout=10).json())

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, db=self.t.db_url, env={"TENANT_MCP_SECRET_KEY": self.secret_key}, stdin=stdin)


@contextmanager
def _stack(
    db_url: str, tmp_path: Path, app: str = "tests.servers.connected:app", args: tuple[str, ...] = ()
) -> Iterator[Stack]:
    t = Tenants(db_url)
    t.create("acme", name="Acme Corporation")
    t.create("globex", name="Globex Industries")
    t.key("acme", label="alice")
    t.key("acme", label="carol", name="acme2")
    t.key("globex", label="bob")
    secret_key = KeyRing.new_key()
    up_port = free_port()
    upstream = f"http://localhost:{up_port}"  # another host than the server: its own cookies
    server = ServerProcess(
        app, t.db_url, *args, log_dir=tmp_path, wait=False,
        env={"TENANT_MCP_SECRET_KEY": secret_key, "UPSTREAM_URL": upstream, "CRM_URL": upstream,
             "UPSTREAM_CLIENT_SECRET": "upstream-client-secret-9f2c", "CRM_CLIENT_ID": "tenant-mcp-test",
             "CRM_CLIENT_SECRET": "upstream-client-secret-9f2c"},
    )  # fmt: skip
    up_log = (tmp_path / "upstream.log").open("w")
    provider = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.servers.upstream:app", "--port", str(up_port), "--log-level",
         "warning"], cwd=ROOT, stdout=up_log, stderr=subprocess.STDOUT,
        env=clean_env(UPSTREAM_REDIRECT_URI=f"{server.base}/connections/callback", UPSTREAM_ACCESS_SECONDS="3600"),
    )  # fmt: skip
    try:
        server.wait_ready()
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx2.get(f"{upstream}/admin/log", timeout=1)
                break
            except httpx2.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield Stack(t, server, upstream, secret_key)
    finally:
        server.stop()
        interrupt(provider)
        up_log.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with _stack(f"sqlite:///{tmp_path}/control.db", tmp_path) as s:
        yield s


@pytest.fixture
def pg_stack(tmp_path: Path) -> Iterator[Stack]:
    with migrated("tests.servers.connected:app") as pg, _stack(pg.app, tmp_path) as s:
        yield s


def _text(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


async def _link(stack: Stack, key: str, tool: str = "crm_whoami", **args: Any) -> str:
    """Call a tool without a connection: the error carries a connect link."""
    async with mcp_client(stack.server.url, stack.t.keys[key]) as client:
        result = await client.call_tool(tool, args)
    assert result.is_error, _text(result)
    found = LINK.search(_text(result))
    assert found, _text(result)
    return found.group(0)


class Browser:
    """A person's browser: signed in at the provider as `upstream_user`."""

    def __init__(self, stack: Stack, upstream_user: str) -> None:
        self.http = httpx2.AsyncClient(timeout=30, follow_redirects=True)
        self.http.cookies.set("upstream_user", upstream_user)  # the provider's sign-in
        self.stack = stack

    async def open(self, link: str) -> httpx2.Response:
        return await self.http.get(link)

    async def submit(
        self, page: httpx2.Response, api_key: str | None, decision: str = "connect"
    ) -> httpx2.Response:
        fields = dict(re.findall(r'name="(link|csrf)" value="([^"]*)"', page.text))
        form = {**fields, "decision": decision, "api_key": api_key or ""}
        return await self.http.post(f"{self.stack.server.base}/connections/connect", data=form)

    async def connect(self, link: str, api_key: str) -> httpx2.Response:
        page = await self.open(link)
        assert page.status_code == 200, page.text
        return await self.submit(page, api_key)

    async def aclose(self) -> None:
        await self.http.aclose()


async def _connect(
    stack: Stack, key: str, upstream_user: str, tool_args: dict[str, Any] | None = None
) -> None:
    link = await _link(stack, key, **(tool_args or {}))
    browser = Browser(stack, upstream_user)
    try:
        done = await browser.connect(link, stack.t.keys[key])
    finally:
        await browser.aclose()
    assert done.status_code == 200 and "connected" in done.text.lower(), done.text


async def test_tenants_connect_separately_and_calls_reach_upstream_with_their_own_token(stack: Stack) -> None:
    await _connect(stack, "acme", "acme-user")
    await _connect(stack, "globex", "globex-user")
    t = stack.t
    async with (
        mcp_client(stack.server.url, t.keys["acme"]) as a,
        mcp_client(stack.server.url, t.keys["acme2"]) as a2,
        mcp_client(stack.server.url, t.keys["globex"]) as b,
    ):
        calls = [
            (c, want)
            for _ in range(10)
            for c, want in ((a, "acme-user"), (b, "globex-user"), (a2, "acme-user"))
        ]
        results = await asyncio.gather(*(c.call_tool("crm_whoami", {}) for c, _ in calls))
        assert [_text(r) for r in results] == [want for _, want in calls]
        # a tool copying the caller's Authorization into its upstream request: replaced by the token
        assert _text(await b.call_tool("crm_whoami_forwarding", {})) == "globex-user"
    log = stack.admin("log")["calls"]
    assert len(log) == 31 and all(call["user"] in ("acme-user", "globex-user") for call in log)
    # each token belongs to its own account, and the callers' own keys never reached the upstream
    assert all(call["token"].startswith(f"up-at-{call['user']}-") for call in log)
    for key in t.keys.values():
        assert key not in json.dumps(log)
    listed = stack.cli("connection", "list", "acme", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["provider"], r["owner"], r["status"]) for r in rows] == [("crm", "tenant", "active")]
    assert rows[0]["connected_by"] == f"key:{t.key_ids['acme']}"
    assert "up-at-" not in listed.stdout and "up-rt-" not in listed.stdout


async def test_expiry_refreshes_once_for_concurrent_calls(stack: Stack) -> None:
    await _connect(stack, "acme", "acme-user")
    async with mcp_client(stack.server.url, stack.t.keys["acme"]) as a:
        assert _text(await a.call_tool("crm_whoami", {})) == "acme-user"
        stack.admin("expire", "acme-user")  # the API now refuses the stored access token
        results = await asyncio.gather(*(a.call_tool("crm_whoami", {}) for _ in range(6)))
        assert [_text(r) for r in results] == ["acme-user"] * 6
        assert stack.admin("log")["refreshes"] == {"acme-user": 1}
        # the rotated refresh token was kept: a second expiry refreshes again, no new link
        stack.admin("expire", "acme-user")
        assert _text(await a.call_tool("crm_whoami", {})) == "acme-user"
    assert stack.admin("log")["refreshes"] == {"acme-user": 2}


async def test_two_replicas_refresh_once_between_them(stack: Stack, tmp_path: Path) -> None:
    """A rotating refresh token presented twice is refused (and would break the connection): the
    replicas sharing the control plane take turns through the claim in the stored row."""
    await _connect(stack, "acme", "acme-user")
    replica = ServerProcess(
        "tests.servers.connected:app", stack.t.db_url, log_dir=tmp_path, env=stack.server.env
    )
    try:
        async with (
            mcp_client(stack.server.url, stack.t.keys["acme"]) as a,
            mcp_client(replica.url, stack.t.keys["acme"]) as b,
        ):
            for round_ in range(1, 4):
                stack.admin("expire", "acme-user")
                results = await asyncio.gather(*(c.call_tool("crm_whoami", {}) for c in (a, b) * 4))
                assert [_text(r) for r in results] == ["acme-user"] * 8
                assert stack.admin("log")["refreshes"] == {"acme-user": round_}
    finally:
        replica.stop()


async def test_a_refresh_answer_without_a_refresh_token_keeps_the_old_one(stack: Stack) -> None:
    await _connect(stack, "acme", "acme-static")  # this account's refresh tokens do not rotate
    async with mcp_client(stack.server.url, stack.t.keys["acme"]) as a:
        for _ in range(3):  # losing the refresh token on the first refresh would need a new link
            stack.admin("expire", "acme-static")
            assert _text(await a.call_tool("crm_whoami", {})) == "acme-static"
    assert stack.admin("log")["refreshes"] == {"acme-static": 3}


async def test_a_revoked_upstream_grant_breaks_the_connection_and_gives_a_new_link(stack: Stack) -> None:
    await _connect(stack, "acme", "acme-user")
    stack.admin("revoke", "acme-user")
    link = await _link(stack, "acme")
    rows = json.loads(stack.cli("connection", "list", "acme", "crm", "--json").stdout)
    assert rows[0]["status"] == "broken" and "invalid_grant" in rows[0]["reason"]
    browser = Browser(stack, "acme-user")
    try:
        assert (await browser.connect(link, stack.t.keys["acme"])).status_code == 200
    finally:
        await browser.aclose()
    async with mcp_client(stack.server.url, stack.t.keys["acme"]) as a:
        assert _text(await a.call_tool("crm_whoami", {})) == "acme-user"
    revoked = stack.cli("connection", "revoke", "acme", "--json")
    assert json.loads(revoked.stdout)["revoked"] == 1
    await _link(stack, "acme")  # forgotten: the next call asks to connect again


async def test_a_link_is_completed_only_by_the_principal_that_asked(stack: Stack) -> None:
    t = stack.t
    link = await _link(stack, "acme", connection="crm_personal")
    thief = Browser(stack, "thief-account")
    owner = Browser(stack, "acme-user")
    try:
        # another tenant's key, then another person of the same tenant: refused, nothing connected
        for key in ("globex", "acme2"):
            refused = await thief.connect(link, t.keys[key])
            assert refused.status_code == 401 and "not the key that asked" in refused.text
            assert "Globex" not in refused.text
        # a browser that did not open the link last cannot continue it
        stale = await thief.open(link)
        await owner.open(link)
        assert (await thief.submit(stale, t.keys["acme"])).status_code == 400
        done = await owner.connect(link, t.keys["acme"])
        assert done.status_code == 200, done.text
        # used up: neither the owner nor anyone else can open it again
        assert (await owner.open(link)).status_code == 400
    finally:
        await thief.aclose()
        await owner.aclose()
    async with (
        mcp_client(stack.server.url, t.keys["acme"]) as a,
        mcp_client(stack.server.url, t.keys["acme2"]) as c,
    ):
        assert _text(await a.call_tool("crm_whoami", {"connection": "crm_personal"})) == "acme-user"
        # per person: carol (same tenant, another key) has no connection of her own
        mine = await c.call_tool("crm_whoami", {"connection": "crm_personal"})
        assert mine.is_error and LINK.search(_text(mine))
    assert all(call["user"] != "thief-account" for call in stack.admin("log")["calls"])
    trail = json.dumps(t.audit("acme"))
    assert "not the one that asked" in trail


async def test_a_callback_replayed_or_from_another_browser_connects_nothing(stack: Stack) -> None:
    link = await _link(stack, "acme")
    browser = Browser(stack, "acme-user")
    try:
        page = await browser.open(link)
        browser.http.follow_redirects = False
        to_provider = await browser.submit(page, stack.t.keys["acme"])
        assert to_provider.status_code == 302
        location = to_provider.headers["location"]
        assert "code_challenge_method=S256" in location and "code_challenge=" in location
        back = await browser.http.get(location)
        callback = back.headers["location"]
        async with httpx2.AsyncClient(timeout=30) as other:  # the code, in a browser without the cookie
            assert (await other.get(callback)).status_code == 400
        assert (await browser.http.get(callback)).status_code == 400  # the link was used up by the attempt
    finally:
        await browser.aclose()
    await _link(stack, "acme")


async def test_url_elicitation_for_clients_that_support_it(stack: Stack) -> None:
    async def elicit(context: Any, params: Any) -> Any:
        raise AssertionError("the link is an error, not a request")

    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {stack.t.keys['acme']}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as hc,
        Client(
            streamable_http_client(stack.server.url, http_client=hc), elicitation_callback=elicit
        ) as client,
    ):
        with pytest.raises(MCPError) as raised:
            await client.call_tool("crm_whoami", {})
    error = raised.value.error
    assert error.code == -32042
    assert error.data is not None
    [elicitation] = error.data["elicitations"]
    assert elicitation["mode"] == "url" and LINK.fullmatch(elicitation["url"])


async def test_tokens_never_reach_a_response_the_audit_or_the_logs(stack: Stack) -> None:
    await _connect(stack, "acme", "acme-user")
    async with mcp_client(stack.server.url, stack.t.keys["acme"]) as a:
        assert _text(await a.call_tool("crm_whoami", {})) == "acme-user"
        with pytest.raises(MCPError, match="withheld") as shown:
            await a.call_tool("leak_token", {})
        elsewhere = await a.call_tool("fetch_elsewhere", {"url": f"{stack.server.base}/healthz"})
        assert elsewhere.is_error and "only to its API" in _text(elsewhere)
        stack.admin("expire", "acme-user")
        assert _text(await a.call_tool("crm_whoami", {})) == "acme-user"
    tokens = {call["token"] for call in stack.admin("log")["calls"]}
    assert len(tokens) == 2
    stack.server.stop()
    seen = (
        str(shown.value) + _text(elsewhere) + stack.server.log.read_text() + json.dumps(stack.t.audit("acme"))
    )
    for token in tokens:
        assert token not in seen
    assert "up-rt-" not in seen and "upstream-client-secret" not in seen
    db = sqlite3.connect(stack.t.db_url[len("sqlite:///") :])
    dump = "\n".join(db.iterdump())
    db.close()
    assert all(token not in dump for token in tokens) and "up-rt-" not in dump  # sealed at rest


async def test_tenant_delete_makes_the_stored_tokens_undecryptable(stack: Stack) -> None:
    await _connect(stack, "acme", "acme-user")
    path = stack.t.db_url[len("sqlite:///") :]
    db = sqlite3.connect(path)
    [(copied,)] = db.execute("SELECT ciphertext FROM connections WHERE tenant_id = ?", (stack.t.ids["acme"],))
    db.close()
    stack.server.stop()
    deleted = stack.cli("tenant", "delete", "acme", "--yes")
    assert deleted.returncode == 0, deleted.stderr
    tenant_id = stack.t.ids["acme"]
    db = sqlite3.connect(path)
    with db:
        assert db.execute("SELECT count(*) FROM connections").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM connection_links").fetchone() == (0,)
        # a backup of the connections table put back: nothing decrypts it any more
        db.execute(
            "INSERT INTO connections (tenant_id, provider, owner, ciphertext, status, connected_by, created_at,"
            " updated_at) VALUES (?, 'crm', '', ?, 'active', 'x', 'x', 'x')",
            (tenant_id, copied),
        )
    db.close()
    async with ControlPlane(stack.t.db_url) as cp:
        store = ConnectionStore(cp.db, SecretStore(cp.db, _ring(stack.secret_key)))
        assert await store.load(tenant_id, "crm", "") is None


def _ring(key: str) -> KeyRing:
    import base64

    return KeyRing([base64.b64decode(key)])


async def test_on_postgresql_two_replicas_connect_refresh_and_break(pg_stack: Stack, tmp_path: Path) -> None:
    """The same flow with the control plane on PostgreSQL: connect, interleaved calls, one refresh
    between two replicas, a revoked grant breaking the connection."""
    stack = pg_stack
    await _connect(stack, "acme", "acme-user")
    await _connect(stack, "globex", "globex-user")
    replica = ServerProcess(
        "tests.servers.connected:app", stack.t.db_url, log_dir=tmp_path, env=stack.server.env
    )
    try:
        async with (
            mcp_client(stack.server.url, stack.t.keys["acme"]) as a,
            mcp_client(replica.url, stack.t.keys["globex"]) as b,
            mcp_client(replica.url, stack.t.keys["acme"]) as a_there,
        ):
            stack.admin("expire", "acme-user")
            calls = [(a, "acme-user"), (b, "globex-user"), (a_there, "acme-user")] * 4
            results = await asyncio.gather(*(c.call_tool("crm_whoami", {}) for c, _ in calls))
            assert [_text(r) for r in results] == [want for _, want in calls]
            assert stack.admin("log")["refreshes"] == {"acme-user": 1}
            stack.admin("revoke", "globex-user")
            broken = await b.call_tool("crm_whoami", {})
            assert broken.is_error and LINK.search(_text(broken))
            assert _text(await a.call_tool("crm_whoami", {})) == "acme-user"
    finally:
        replica.stop()


async def test_the_example_server(tmp_path: Path) -> None:
    with _stack(f"sqlite:///{tmp_path}/control.db", tmp_path, "example_servers.crm:app") as stack:
        done = stack.cli("secret", "set", "acme", "weather_api_key", "--from-env", "WEATHER")
        assert done.returncode != 0  # the variable is not set: nothing is stored, a clear error
        set_ = stack.cli("secret", "set", "acme", "weather_api_key", stdin="acme-weather-key-123")
        assert set_.returncode == 0, set_.stderr
        await _connect(stack, "acme", "acme-user", {"tool": "crm_me"})
        async with mcp_client(stack.server.url, stack.t.keys["acme"]) as a:
            assert _text(await a.call_tool("crm_me", {})) == "acme-user"
            assert "is set (20 characters)" in _text(await a.call_tool("weather_quota", {}))


async def test_the_connect_page_in_a_real_browser(stack: Stack) -> None:
    """Headless Chromium (Debian's, driven by Playwright): the page reads as a person sees it, a
    wrong key is refused on the page, the right one goes to the provider and, after the person
    approves on the provider's page, back (the cookie is `SameSite=Lax`: a `Strict` one would not
    come back from a navigation the provider's page started; the CSP lets the form go there).
    A screenshot is kept in tests/artifacts/."""
    from tests.test_oauth_browser import ARTIFACTS, CHROMIUM, FLAGS

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (bash .ci/run installs it)")
    playwright_api = pytest.importorskip("playwright.async_api")
    link = await _link(stack, "acme", connection="crm_personal")
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            context = await browser.new_context()
            await context.add_cookies(
                [{"name": "upstream_user", "value": "acme-clicks", "url": stack.upstream}]
            )
            page = await context.new_page()
            await page.goto(link)
            assert await page.title() == "Connect Test CRM"
            body = await page.inner_text("main")
            assert "Acme Corporation" in body and "you (this key)" in body
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "connect-page.png"), full_page=True)
            field = "Paste the API key your assistant uses, to prove the link is yours"
            await page.get_by_label(field).fill(stack.t.keys["acme2"])  # a colleague's key
            await page.get_by_role("button", name="Continue to Test CRM").click()
            assert "not the key that asked" in await page.inner_text("[role=alert]")
            await page.get_by_label(field).fill(stack.t.keys["acme"])
            await page.get_by_role("button", name="Continue to Test CRM").click()
            await page.wait_for_url(f"{stack.upstream}/authorize**")
            await page.get_by_role("button", name="Approve").click()  # on the provider's own page
            await page.wait_for_url(f"{stack.server.base}/connections/callback**")
            assert await page.title() == "Test CRM connected"
        finally:
            await browser.close()
    async with mcp_client(stack.server.url, stack.t.keys["acme"]) as a:
        assert _text(await a.call_tool("crm_whoami", {"connection": "crm_personal"})) == "acme-clicks"


async def test_a_jwt_principal_gets_a_bearer_link_of_its_own(tmp_path: Path) -> None:
    """The documented limit: a JWT principal cannot prove itself on the page (the browser holds
    no token), so its link is completed by whoever opens it first, with a warning on the page.
    It still connects only that subject's own account, and another subject gets its own link."""
    from tests.test_jwt import ISS, PUBLIC_PEM, claims, sign

    pem = tmp_path / "idp.pem"
    pem.write_bytes(PUBLIC_PEM)
    args = ("--jwt-public-key", str(pem), "--jwt-issuer", ISS)
    with _stack(f"sqlite:///{tmp_path}/control.db", tmp_path, args=args) as stack:
        dave = sign(claims(stack.server.url, sub="dave", tenant="acme"))
        erin = sign(claims(stack.server.url, sub="erin", tenant="acme"))
        async with mcp_client(stack.server.url, dave) as d:
            result = await d.call_tool("crm_whoami", {"connection": "crm_personal"})
        found = LINK.search(_text(result))
        assert result.is_error and found
        browser = Browser(stack, "dave-account")
        try:
            page = await browser.open(found.group(0))
            assert "Only continue if you asked for this yourself" in page.text and "api_key" not in page.text
            done = await browser.submit(page, None)
            assert done.status_code == 200 and "connected" in done.text.lower(), done.text
        finally:
            await browser.aclose()
        async with mcp_client(stack.server.url, dave) as d, mcp_client(stack.server.url, erin) as e:
            assert _text(await d.call_tool("crm_whoami", {"connection": "crm_personal"})) == "dave-account"
            other = await e.call_tool("crm_whoami", {"connection": "crm_personal"})
            assert other.is_error and LINK.search(_text(other))
        rows = json.loads(stack.cli("connection", "list", "acme", "--json").stdout)
        assert [r["owner"] for r in rows] == [f"jwt:{ISS}#dave"]


async def test_over_stdio_a_missing_connection_says_it_needs_the_http_transport(tmp_path: Path) -> None:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    t = Tenants(f"sqlite:///{tmp_path}/control.db")
    t.create("acme")
    key = t.key("acme")
    params = StdioServerParameters(
        command=sys.executable, cwd=ROOT,
        args=["-m", "tenant_mcp.cli", "serve", "tests.servers.connected:app", "--transport", "stdio", "--db", t.db_url],
        env=clean_env(TENANT_MCP_API_KEY=key, TENANT_MCP_SECRET_KEY=KeyRing.new_key()),
    )  # fmt: skip
    with (tmp_path / "stderr.log").open("a") as err:
        async with Client(stdio_client(params, errlog=err)) as client:
            result = await client.call_tool("crm_whoami", {})
    assert result.is_error and "needs the HTTP transport" in _text(result), _text(result)


@pytest.fixture
def traced_stack(tmp_path: Path) -> Iterator[Stack]:
    with _stack(f"sqlite:///{tmp_path}/control.db", tmp_path, app="tests.servers.connected_traced:app") as s:
        yield s


async def test_upstream_calls_are_child_spans_that_carry_no_tenant_upstream(traced_stack: Stack) -> None:
    await _connect(traced_stack, "acme", "alice@acme")
    async with mcp_client(traced_stack.server.url, traced_stack.t.keys["acme"]) as client:
        assert _text(await client.call_tool("crm_whoami", {})) == "alice@acme"
        spans = tool_result(await client.call_tool("recorded_spans", {}))
    upstream = [s for s in spans if s["name"] == "upstream"]
    assert upstream, [s["name"] for s in spans]
    calls = {s["trace"] for s in spans if s["name"] == "tools/call crm_whoami"}
    assert all(s["trace"] in calls for s in upstream)  # inside the trace of the call that made it
    assert upstream[-1]["attributes"]["tenant_mcp.connection"] == "crm"
    assert upstream[-1]["attributes"]["http.response.status_code"] == 200
    headers = traced_stack.admin("log")["calls"][-1]["headers"]  # what the upstream received
    assert not {"traceparent", "tracestate", "baggage"} & set(headers), headers
    assert traced_stack.t.ids["acme"] not in json.dumps(headers) and "acme" not in json.dumps(headers).lower()
