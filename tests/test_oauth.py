"""The built-in OAuth 2.1 authorization server, driven end to end by the SDK's own
`OAuthClientProvider` (discovery, dynamic registration, PKCE, refresh), with the sign-in page
answered the way a person would: open the link, paste an API key, approve or deny."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)

from tenant_mcp.admin import Admin
from tests.helpers import ServerProcess, Tenants, mcp_client, postgres_database

pytestmark = pytest.mark.anyio
REDIRECT = "http://127.0.0.1:9/callback"


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


class Person:
    """Plays the user at the sign-in page: follows the link, pastes a key, presses a button."""

    def __init__(self, api_key: str, *, approve: bool = True) -> None:
        self.api_key = api_key
        self.approve = approve
        self.redirect: str | None = None
        self.pages: list[httpx2.Response] = []

    async def open(self, authorization_url: str) -> None:
        async with httpx2.AsyncClient(follow_redirects=False, timeout=30) as browser:
            response = await browser.get(authorization_url)
            while response.status_code in (302, 303, 307) and not response.headers["location"].startswith(
                REDIRECT
            ):
                response = await browser.get(response.headers["location"])
            self.pages.append(response)
            assert response.status_code == 200, response.text
            form = dict(re.findall(r'name="(request|csrf)" value="([^"]+)"', response.text))
            decision = "approve" if self.approve else "deny"
            answer = await browser.post(
                response.url.copy_with(query=None),
                data={**form, "api_key": self.api_key, "decision": decision},
            )
            self.pages.append(answer)
            assert answer.status_code == 302, answer.text
            self.redirect = answer.headers["location"]

    async def callback(self) -> AuthorizationCodeResult:
        assert self.redirect is not None
        query = parse_qs(urlsplit(self.redirect).query)
        if "error" in query:
            raise RuntimeError(f"authorization failed: {query['error'][0]}")
        return AuthorizationCodeResult(
            code=query["code"][0], state=query.get("state", [None])[0], iss=query.get("iss", [None])[0]
        )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def oauth_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Tenants]]:
    """The notes server with the built-in authorization server, on each control-plane backend."""
    logs = tmp_path_factory.mktemp("oauth")
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            db, env = f"sqlite:///{logs}/cp.db", {}
        else:
            pg = stack.enter_context(postgres_database())
            db, env = pg.app, {"TENANT_MCP_MIGRATION_URL": pg.owner}
        server = ServerProcess("example_servers.notes:app", db, "--oauth-issuer", "http://127.0.0.1:{port}",
                               env=env, log_dir=logs)  # fmt: skip
        stack.callback(server.stop)
        t = Tenants(db)
        t.create("acme", plan="pro")
        t.create("globex")
        t.key("acme", scopes=("notes:export",))
        t.key("globex")
        yield server, t


def provider(
    server: ServerProcess, person: Person, storage: MemoryStorage | None = None
) -> OAuthClientProvider:
    return OAuthClientProvider(
        server.url,
        OAuthClientMetadata(client_name="Test Assistant", redirect_uris=[REDIRECT]),  # type: ignore[list-item]
        storage or MemoryStorage(),
        redirect_handler=person.open,
        callback_handler=person.callback,
    )


async def whoami(server: ServerProcess, auth: Any) -> dict[str, Any]:
    async with (
        httpx2.AsyncClient(auth=auth, timeout=30) as http,
        Client(streamable_http_client(server.url, http_client=http)) as client,
    ):
        result = await client.call_tool("whoami", {})
        tools = {tool.name for tool in (await client.list_tools()).tools}
        return {**(result.structured_content or {}), "tools": tools}


async def test_full_flow_binds_the_token_to_the_signing_in_tenant(
    oauth_server: tuple[ServerProcess, Tenants],
) -> None:
    server, t = oauth_server
    for slug in ("acme", "globex"):
        person = Person(t.keys[slug])
        seen = await whoami(server, provider(server, person))
        assert seen["tenant"] == slug
        assert ("export_notes" in seen["tools"]) == (slug == "acme")
        page = person.pages[0]
        assert "Test Assistant" in page.text and REDIRECT in page.text
        assert page.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"


async def test_denial_and_bad_keys(oauth_server: tuple[ServerProcess, Tenants]) -> None:
    server, t = oauth_server
    with pytest.raises(Exception):  # noqa: B017 - the SDK surfaces the denial as an error
        await whoami(server, provider(server, Person(t.keys["acme"], approve=False)))
    person = Person("tmk_000000000000_" + "A" * 43)
    with pytest.raises(AssertionError):
        await person.open(await _authorization_url(server))
    assert person.pages[-1].status_code == 401 and "not accepted" in person.pages[-1].text


async def _authorization_url(server: ServerProcess) -> str:
    captured: list[str] = []

    async def capture(url: str) -> None:
        captured.append(url)

    async def stop() -> AuthorizationCodeResult:
        raise RuntimeError("stop here: the test drives the page itself")

    auth = OAuthClientProvider(
        server.url,
        OAuthClientMetadata(client_name="Probe", redirect_uris=[REDIRECT]),  # type: ignore[list-item]
        MemoryStorage(),
        redirect_handler=capture,
        callback_handler=stop,
    )
    with pytest.raises(Exception):  # noqa: B017
        await whoami(server, auth)
    return captured[0]


async def test_revoking_the_key_ends_its_tokens_and_refresh_rotates(
    oauth_server: tuple[ServerProcess, Tenants],
) -> None:
    server, t = oauth_server
    key = t.key("acme", name="acme-oauth")
    storage = MemoryStorage()
    assert (await whoami(server, provider(server, Person(key), storage)))["tenant"] == "acme"
    assert storage.tokens is not None and storage.tokens.access_token.startswith("tmo_")
    first = storage.tokens

    async with httpx2.AsyncClient(timeout=30) as http:
        base = server.base
        token = await http.post(
            f"{base}/token",
            data={"grant_type": "refresh_token", "refresh_token": first.refresh_token,
                  "client_id": storage.client.client_id, "client_secret": storage.client.client_secret or ""},  # type: ignore[union-attr]
        )  # fmt: skip
        assert token.status_code == 200, token.text
        second = token.json()
        assert second["refresh_token"] != first.refresh_token
        replay = await http.post(
            f"{base}/token",
            data={"grant_type": "refresh_token", "refresh_token": first.refresh_token,
                  "client_id": storage.client.client_id, "client_secret": storage.client.client_secret or ""},  # type: ignore[union-attr]
        )  # fmt: skip
        assert replay.status_code == 400, "a rotated refresh token must not work twice"
        # the replay revoked the whole family, including the fresh access token
        await anyio.sleep(1.2)
        dead = await http.post(
            server.url, headers={"Authorization": f"Bearer {second['access_token']}"}, json={}
        )
        assert dead.status_code == 401

    storage = MemoryStorage()
    assert (await whoami(server, provider(server, Person(key), storage)))["tenant"] == "acme"
    live = storage.tokens.access_token  # type: ignore[union-attr]
    t.run(lambda admin: admin.revoke_key(t.key_ids["acme-oauth"]))
    await anyio.sleep(1.2)
    async with httpx2.AsyncClient(timeout=30) as http:
        r = await http.post(server.url, headers={"Authorization": f"Bearer {live}"}, json={})
        assert r.status_code == 401
        assert "resource_metadata=" in r.headers["www-authenticate"]


async def test_metadata_documents(oauth_server: tuple[ServerProcess, Tenants]) -> None:
    server, _ = oauth_server
    async with httpx2.AsyncClient(timeout=30) as http:
        prm = (await http.get(f"{server.base}/.well-known/oauth-protected-resource/mcp")).json()
        assert prm["resource"] == server.url
        assert prm["authorization_servers"] == [server.base]
        meta = (await http.get(f"{server.base}/.well-known/oauth-authorization-server")).json()
        assert meta["code_challenge_methods_supported"] == ["S256"]
        assert meta["registration_endpoint"] == f"{server.base}/register"
        assert meta["revocation_endpoint"] == f"{server.base}/revoke"
        # Public clients (registered with "none") are advertised, as registration accepts them.
        assert "none" in meta["token_endpoint_auth_methods_supported"]


class ManualFlow:
    """The authorization-code flow by hand, so each step can be attacked on its own."""

    def __init__(self, server: ServerProcess, http: httpx2.AsyncClient) -> None:
        self.server, self.http = server, http
        self.verifier = secrets.token_urlsafe(48)
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(self.verifier.encode()).digest()).rstrip(b"=").decode()
        )
        self.challenge = challenge

    async def register(self) -> dict[str, Any]:
        r = await self.http.post(f"{self.server.base}/register",
                                 json={"client_name": "Manual", "redirect_uris": [REDIRECT],
                                       "token_endpoint_auth_method": "none"})  # fmt: skip
        assert r.status_code == 201, r.text
        self.client: dict[str, Any] = r.json()
        return self.client

    def authorize_url(self, redirect: str = REDIRECT) -> str:
        q = {"response_type": "code", "client_id": self.client["client_id"], "redirect_uri": redirect,
             "code_challenge": self.challenge, "code_challenge_method": "S256", "state": "st-123",
             "resource": self.server.url}  # fmt: skip
        return str(httpx2.URL(f"{self.server.base}/authorize", params=q))

    async def code(self, key: str) -> str:
        person = Person(key)
        await person.open(self.authorize_url())
        query = parse_qs(urlsplit(person.redirect or "").query)
        assert query["state"] == ["st-123"], "state must come back unchanged"
        return query["code"][0]

    async def exchange(self, code: str, verifier: str | None = None) -> httpx2.Response:
        return await self.http.post(f"{self.server.base}/token",
                                    data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
                                          "client_id": self.client["client_id"],
                                          "code_verifier": verifier or self.verifier})  # fmt: skip


async def test_flow_attacks_are_refused(oauth_server: tuple[ServerProcess, Tenants]) -> None:
    server, t = oauth_server
    async with httpx2.AsyncClient(timeout=30, follow_redirects=False) as http:
        flow = ManualFlow(server, http)
        await flow.register()
        # an unregistered redirect URI is answered directly, never redirected to
        r = await http.get(flow.authorize_url("https://evil.example/steal"))
        assert r.status_code == 400 and "location" not in r.headers
        # the consent form needs the cookie of the browser that opened it, and its CSRF token
        page = await http.get((await http.get(flow.authorize_url())).headers["location"])
        fields = dict(re.findall(r'name="(request|csrf)" value="([^"]+)"', page.text))
        consent = f"{server.base}/oauth/consent"
        for data, cookies in (
            ({**fields, "api_key": t.keys["acme"], "decision": "approve"}, {}),
            (
                {**fields, "csrf": "forged", "api_key": t.keys["acme"], "decision": "approve"},
                dict(page.cookies),
            ),
        ):
            forged = await httpx2.AsyncClient(cookies=cookies).post(consent, data=data)
            assert forged.status_code == 400, forged.text
        # PKCE: a wrong verifier fails, and a code works once only
        code = await flow.code(t.keys["globex"])
        assert (await flow.exchange(code, verifier="x" * 64)).status_code == 400
        code = await flow.code(t.keys["globex"])
        first = await flow.exchange(code)
        assert first.status_code == 200, first.text
        assert (await flow.exchange(code)).status_code == 400
        access = first.json()["access_token"]
        # the token is bound to globex: it sees globex's data and catalogue only
        mcp_headers = {"Authorization": f"Bearer {access}", "Accept": "application/json, text/event-stream"}
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
        assert (await http.post(server.url, headers=mcp_headers, json=init)).status_code == 200
        # suspending the tenant ends the token within the credential cache window
        t.run(lambda admin: admin.suspend("globex"))
        try:
            await anyio.sleep(1.2)
            assert (await http.post(server.url, headers=mcp_headers, json=init)).status_code == 401
        finally:
            t.run(lambda admin: admin.activate("globex"))


async def test_a_grant_inherits_the_approving_keys_allow_list(
    oauth_server: tuple[ServerProcess, Tenants],
) -> None:
    server, t = oauth_server

    async def narrow_key(admin: Admin) -> str:
        _, key = await admin.create_key("globex", items=["list_notes"])
        return str(key)

    key = t.run(narrow_key)
    async with httpx2.AsyncClient(timeout=30, follow_redirects=False) as http:
        flow = ManualFlow(server, http)
        await flow.register()
        token = (await flow.exchange(await flow.code(key))).json()["access_token"]
    async with mcp_client(server.url, token) as client:
        assert {tool.name for tool in (await client.list_tools()).tools} == {"list_notes"}
