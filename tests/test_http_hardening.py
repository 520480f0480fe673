"""Regression tests for the outside review of the HTTP and OAuth surface (issue 12), each driven
over real HTTP against a real server process, the way an attacker holding one tenant's key (or
none) would: Host matching on every route, who may approve a grant, which redirect URIs a client
may register, and that errors before consent are shown rather than redirected."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import pytest

from tenant_mcp.errors import ConfigurationError
from tenant_mcp.transports.http import HTTPOptions
from tests.helpers import (
    INIT,
    MCP_HEADERS,
    ServerProcess,
    Tenants,
    mcp_client,
    migrate_cli,
    postgres_database,
)
from tests.test_jwt import ISS, PUBLIC_PEM, claims, sign
from tests.test_oauth import REDIRECT, ManualFlow, Person

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Tenants]]:
    logs = tmp_path_factory.mktemp("hardening")
    db = f"sqlite:///{logs}/cp.db"
    t = Tenants(db)
    t.create("acme", plan="pro")
    t.create("globex")
    t.key("acme", scopes=("notes:export",))
    t.key("globex")
    proc = ServerProcess(
        "example_servers.notes:app", db, "--oauth-issuer", "http://127.0.0.1:{port}", log_dir=logs
    )
    yield proc, t
    proc.stop()


ROUTES = (
    ("POST", "/mcp"),
    ("GET", "/mcp/"),
    ("GET", "/healthz"),
    ("GET", "/.well-known/oauth-protected-resource/mcp"),
    ("GET", "/.well-known/oauth-protected-resource"),
    ("GET", "/.well-known/oauth-authorization-server"),
    ("GET", "/authorize"),
    ("POST", "/token"),
    ("POST", "/register"),
    ("POST", "/revoke"),
    ("GET", "/oauth/consent"),
    ("GET", "/nowhere"),
)


# -- finding 7: Host matching ------------------------------------------------------------------


async def test_every_route_refuses_a_foreign_host(server: tuple[ServerProcess, Tenants]) -> None:
    proc, t = server
    port = proc.port
    foreign = (
        f"127.0.0.1:{port}.evil.example",
        "127.0.0.1:x@evil.example",
        f"localhost:{port}.evil.example",
        f"127.0.0.1:{port}@evil.example",
        "evil.example",
        f"evil.example:{port}",
        f"127.0.0.1:{port + 1 if port < 65535 else port - 1}",  # host right, port wrong
        f"127.0.0.1:0{port}",
        "127.0.0.1:",
    )
    async with httpx2.AsyncClient(timeout=30, follow_redirects=False) as http:
        for method, path in ROUTES:
            for host in foreign:
                r = await http.request(
                    method,
                    proc.base + path,
                    headers={"Host": host, "Authorization": f"Bearer {t.keys['acme']}"},
                )
                assert r.status_code == 421, f"{method} {path} Host {host!r}: {r.status_code} {r.text[:200]}"
                assert "location" not in r.headers
            r = await http.request(method, proc.base + path)
            assert r.status_code != 421, f"{method} {path} with the right Host: {r.status_code}"


async def test_no_redirect_is_built_from_host(server: tuple[ServerProcess, Tenants]) -> None:
    proc, t = server
    async with httpx2.AsyncClient(timeout=30, follow_redirects=False) as http:
        for host in (f"127.0.0.1:{proc.port}", f"localhost:{proc.port}"):
            r = await http.get(
                proc.base + "/mcp/", headers={"Host": host, "Authorization": f"Bearer {t.keys['acme']}"}
            )
            assert r.status_code not in (301, 302, 303, 307, 308), (host, r.status_code, r.headers)
            assert "location" not in r.headers


# -- finding 2: only API keys approve a grant -------------------------------------------------


async def test_an_oauth_access_token_cannot_approve_a_grant(server: tuple[ServerProcess, Tenants]) -> None:
    proc, t = server
    async with httpx2.AsyncClient(timeout=30, follow_redirects=False) as http:
        flow = ManualFlow(proc, http)
        await flow.register()
        tokens = await flow.exchange(await flow.code(t.keys["acme"]))
        assert tokens.status_code == 200, tokens.text
        access, refresh = tokens.json()["access_token"], tokens.json()["refresh_token"]
        for credential in (access, refresh):
            person = Person(credential)
            with pytest.raises(AssertionError):
                await person.open(flow.authorize_url())
            page = person.pages[-1]
            assert page.status_code == 401 and "not accepted" in page.text, (page.status_code, page.text)


# -- finding 5: redirect URIs and errors before consent ---------------------------------------

BAD_REDIRECTS = (
    "javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "file:///etc/passwd",
    "https://app.example/cb#fragment",
    "https://app.example/cb#",
    "http://evil.example/cb",
    "http://127.0.0.1.evil.example/cb",
    "http://localhost.evil.example/cb",
    "http://10.0.0.1/cb",
    "ftp://app.example/cb",
    "com.example.app:/cb",
    "https://user:pw@app.example/cb",
)
GOOD_REDIRECTS = (
    "https://app.example/cb",
    "https://app.example:8443/oauth/cb?x=1",
    "http://127.0.0.1/cb",
    "http://127.0.0.1:53123/cb",
    "http://localhost:9/callback",
    "http://[::1]:8080/cb",
)


async def test_registration_accepts_only_https_and_loopback_http(
    server: tuple[ServerProcess, Tenants],
) -> None:
    proc, _ = server
    async with httpx2.AsyncClient(timeout=30) as http:
        for uri in BAD_REDIRECTS:
            r = await http.post(f"{proc.base}/register", json={"client_name": "x", "redirect_uris": [uri]})
            assert r.status_code == 400, f"{uri!r} accepted: {r.status_code} {r.text}"
            assert r.json()["error"] in ("invalid_redirect_uri", "invalid_client_metadata"), r.text
            # one bad URI among good ones spoils the registration
            r = await http.post(
                f"{proc.base}/register", json={"client_name": "x", "redirect_uris": [GOOD_REDIRECTS[0], uri]}
            )
            assert r.status_code == 400, f"{uri!r} accepted next to a good one: {r.text}"
        for uri in GOOD_REDIRECTS:
            r = await http.post(f"{proc.base}/register", json={"client_name": "x", "redirect_uris": [uri]})
            assert r.status_code == 201, f"{uri!r} refused: {r.text}"


async def test_authorize_errors_are_shown_not_redirected(server: tuple[ServerProcess, Tenants]) -> None:
    """An attacker registers its own https redirect and sends victims to /authorize with a bad
    scope or resource: the server must not bounce them to the attacker's site (RFC 9700 4.11.2)."""
    proc, _ = server
    attacker = "https://evil.example/landing"
    async with httpx2.AsyncClient(timeout=30, follow_redirects=False) as http:
        r = await http.post(
            f"{proc.base}/register",
            json={"client_name": "x", "redirect_uris": [attacker], "scope": "notes:export",
                  "token_endpoint_auth_method": "none"},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        client_id = r.json()["client_id"]
        base = {"response_type": "code", "client_id": client_id, "redirect_uri": attacker,
                "code_challenge": "x" * 43, "code_challenge_method": "S256", "state": "s"}  # fmt: skip
        for extra in (
            {"scope": "not-a-scope"},
            {"resource": "https://other.example/mcp"},
            {"code_challenge_method": "plain"},
            {"response_type": "token"},
            {"code_challenge": ""},
        ):
            r = await http.get(f"{proc.base}/authorize", params={**base, **extra})
            assert r.status_code == 400, f"{extra}: {r.status_code} {r.headers.get('location')}"
            assert "location" not in r.headers, extra
        # the happy path still goes to this server's own sign-in page, never elsewhere
        r = await http.get(f"{proc.base}/authorize", params={**base, "scope": "notes:export"})
        assert r.status_code == 302 and r.headers["location"].startswith(f"{proc.base}/oauth/consent?"), (
            r.headers
        )


async def test_approval_redirect_carries_the_issuer(server: tuple[ServerProcess, Tenants]) -> None:
    """RFC 9207: the authorization response names its issuer, and the metadata says so."""
    proc, t = server
    async with httpx2.AsyncClient(timeout=30, follow_redirects=False) as http:
        flow = ManualFlow(proc, http)
        await flow.register()
        person = Person(t.keys["globex"])
        await person.open(flow.authorize_url())
        assert person.redirect is not None and person.redirect.startswith(REDIRECT)
        assert parse_qs(urlsplit(person.redirect).query)["iss"] == [proc.base]
        meta = (await http.get(f"{proc.base}/.well-known/oauth-authorization-server")).json()
        assert meta["authorization_response_iss_parameter_supported"] is True
        # a denial names the issuer too
        denied = Person(t.keys["globex"], approve=False)
        await denied.open(flow.authorize_url())
        query = parse_qs(urlsplit(denied.redirect or "").query)
        assert query["error"] == ["access_denied"] and query["iss"] == [proc.base]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", proc.base)


async def test_loopback_redirects_match_on_any_port(server: tuple[ServerProcess, Tenants]) -> None:
    """RFC 8252 §7.3: a native app registers its loopback redirect once and listens on any port."""
    proc, _ = server
    async with httpx2.AsyncClient(timeout=30, follow_redirects=False) as http:
        flow = ManualFlow(proc, http)
        await flow.register()  # REDIRECT is http://127.0.0.1:9/callback
        r = await http.get(flow.authorize_url("http://127.0.0.1:53124/callback"))
        assert r.status_code == 302 and r.headers["location"].startswith(f"{proc.base}/oauth/consent?"), (
            r.text
        )
        for other in (
            "http://127.0.0.1:53124/elsewhere",
            "http://localhost:9/callback",
            "https://127.0.0.1:9/callback",
        ):
            r = await http.get(flow.authorize_url(other))
            assert r.status_code == 400 and "location" not in r.headers, (other, r.status_code)


# -- finding 6: one public URL for every advertised address ------------------------------------

PUBLIC = "https://mcp.example.test"


def test_the_resource_never_comes_from_the_bind_address() -> None:
    """Behind a proxy on a wildcard bind (only compared here, never bound): the issuer, and above
    it the public URL, name the resource; a JWT audience does not move it."""
    behind = HTTPOptions(host="0.0.0.0", port=8123, oauth_issuer="https://auth.example.test")
    assert behind.resource_url == "https://auth.example.test/mcp"
    public = HTTPOptions(
        host="0.0.0.0", port=8123, oauth_issuer="https://auth.example.test", public_url=PUBLIC + "/"
    )
    assert public.resource_url == f"{PUBLIC}/mcp"
    assert public.metadata_url == f"{PUBLIC}/.well-known/oauth-protected-resource/mcp"
    with pytest.raises(ConfigurationError):
        HTTPOptions(public_url="ftp://mcp.example.test")


@pytest.fixture(scope="module")
def public_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Tenants, str]]:
    logs = tmp_path_factory.mktemp("public")
    db = f"sqlite:///{logs}/cp.db"
    t = Tenants(db)
    t.create("acme", plan="pro")
    t.key("acme")
    pem = logs / "idp.pem"
    pem.write_bytes(PUBLIC_PEM)
    proc = ServerProcess(
        "example_servers.notes:app", db, "--jwt-public-key", str(pem),
        "--jwt-issuer", ISS, env={"TENANT_MCP_PUBLIC_URL": PUBLIC}, log_dir=logs,
    )  # fmt: skip
    yield proc, t, db
    proc.stop()


async def test_public_url_names_every_advertised_address(
    public_server: tuple[ServerProcess, Tenants, str],
) -> None:
    proc, _, _ = public_server
    async with httpx2.AsyncClient(timeout=30, follow_redirects=False) as http:
        challenge = (await http.post(proc.url, json={})).headers["www-authenticate"]
        assert f'resource_metadata="{PUBLIC}/.well-known/oauth-protected-resource/mcp"' in challenge, (
            challenge
        )
        prm = (await http.get(f"{proc.base}/.well-known/oauth-protected-resource/mcp")).json()
        assert prm == {
            "resource": f"{PUBLIC}/mcp",
            "authorization_servers": [ISS],
            "bearer_methods_supported": ["header"],
        }
        # the proxy forwards the public Host: accepted, on every route, and only that exact one
        assert (
            await http.get(f"{proc.base}/healthz", headers={"Host": "mcp.example.test"})
        ).status_code == 200
        assert (
            await http.get(f"{proc.base}/healthz", headers={"Host": "mcp.example.test:443"})
        ).status_code == 200
        for host in ("mcp.example.test:8443", "mcp.example.test.evil.example", "evil.mcp.example.test"):
            assert (await http.get(f"{proc.base}/healthz", headers={"Host": host})).status_code == 421, host
        # the JWT audience defaults to the public resource, not to the bind address
        for aud, status in ((f"{PUBLIC}/mcp", 200), (proc.url, 401)):
            r = await http.post(
                proc.url,
                json=INIT,
                headers={**MCP_HEADERS, "Authorization": f"Bearer {sign(claims(aud))}"},
            )
            assert r.status_code == status, (aud, r.status_code, r.text)


def test_public_url_flag_is_checked(tmp_path: Path) -> None:
    proc = ServerProcess(
        "example_servers.notes:app",
        f"sqlite:///{tmp_path}/cp.db",
        "--public-url",
        "mcp.example.test",
        wait=False,
    )
    assert proc.proc.wait(30) != 0
    proc.stop()
    output = proc.log.read_text()
    assert "public URL" in output and "Traceback" not in output, output


# -- finding 9: tokens are bound to the server (issuer) that issued them ----------------------


async def test_another_server_on_the_same_control_plane_does_not_redeem_tokens(
    server: tuple[ServerProcess, Tenants], tmp_path: Path
) -> None:
    proc, t = server
    other = ServerProcess("example_servers.notes:app", t.db_url, "--oauth-issuer", "http://127.0.0.1:{port}",
                          log_dir=tmp_path)  # fmt: skip
    try:
        async with httpx2.AsyncClient(timeout=30, follow_redirects=False) as http:
            flow = ManualFlow(proc, http)
            client = await flow.register()
            code = await flow.code(t.keys["acme"])
            # a code of the first server is worth nothing at the second
            stolen = await http.post(f"{other.base}/token", data={"grant_type": "authorization_code", "code": code,
                                     "redirect_uri": REDIRECT, "client_id": client["client_id"],
                                     "code_verifier": flow.verifier})  # fmt: skip
            assert stolen.status_code == 400, stolen.text
            tokens = await flow.exchange(code)
            assert tokens.status_code == 200, tokens.text
            refresh = {"grant_type": "refresh_token", "refresh_token": tokens.json()["refresh_token"],
                       "client_id": client["client_id"]}  # fmt: skip
            r = await http.post(f"{other.base}/token", data=refresh)
            assert r.status_code == 400, f"another issuer redeemed the refresh token: {r.text}"
            await http.post(f"{other.base}/revoke", data={"token": tokens.json()["refresh_token"],
                                                                    "client_id": client["client_id"]})  # fmt: skip
            # a pending sign-in of the first server is unknown to the second
            parked = (await http.get(flow.authorize_url())).headers["location"]
            assert parked.startswith(f"{proc.base}/oauth/consent?")
            elsewhere = await http.get(parked.replace(proc.base, other.base))
            assert elsewhere.status_code == 400 and "expired" in elsewhere.text, elsewhere.text
            # the issuing server still honours it (the other one neither rotated nor revoked it)
            r = await http.post(f"{proc.base}/token", data=refresh)
            assert r.status_code == 200, r.text
    finally:
        other.stop()


def test_serving_postgresql_as_a_superuser_is_one_clear_line(tmp_path: Path) -> None:
    with postgres_database() as pg:
        assert migrate_cli("example_servers.notes:app", pg).returncode == 0
        proc = ServerProcess("example_servers.notes:app", pg.owner, log_dir=tmp_path, wait=False)
        assert proc.proc.wait(30) == 2
        proc.stop()
        output = proc.log.read_text()
        assert "superuser or has BYPASSRLS" in output and "Traceback" not in output, output
        assert output.strip().count("\n") == 0, output


# -- finding 8: no phantom tools/list per call ---------------------------------------------------


async def test_a_call_with_arguments_runs_no_listing(server: tuple[ServerProcess, Tenants]) -> None:
    """2026-07-28 `tools/call` with arguments: the Mcp-Param schema lookup is answered for the
    caller directly, so the audit trail holds the calls the client made and nothing else."""
    proc, t = server
    t.create("initech")
    key = t.key("initech")
    async with mcp_client(proc.url, key) as c:
        assert c.protocol_version == "2026-07-28"
        for i in range(3):
            assert not (await c.call_tool("create_note", {"title": f"t{i}", "body": "b"})).is_error
        hidden = await c.call_tool("export_notes", {"format": "csv"})
        missing = await c.call_tool("export_notez", {"format": "csv"})
        assert hidden.is_error and missing.is_error
        assert hidden.content[0].text.replace("export_notes", "X") == missing.content[0].text.replace(
            "export_notez", "X"
        )  # type: ignore[union-attr]
    for _ in range(100):
        events = t.audit("initech")
        if sum(e["target"] == "create_note" for e in events) == 3 and any(
            e["target"] == "export_notez" for e in events
        ):
            break
        await anyio.sleep(0.05)
    # The SDK client lists once itself (to cache output schemas); before, every call added one.
    listings = [e for e in events if e["method"] == "tools/list"]
    assert len(listings) <= 1, [(e["method"], e["target"]) for e in events]


# -- Client ID Metadata Documents ---------------------------------------------------------------


class DocumentServer:
    """Serves client metadata documents on loopback and counts the requests for each."""

    def __init__(self) -> None:
        self.documents: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits[self.path] = owner.hits.get(self.path, 0) + 1
                body = owner.documents.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body or b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def add(self, path: str, **fields: Any) -> str:
        client_id = self.base + path
        document = {"client_id": client_id, "client_name": "Doc Client", "redirect_uris": [REDIRECT],
                    "token_endpoint_auth_method": "none", **fields}  # fmt: skip
        self.documents[path] = json.dumps(document).encode()
        return client_id


@pytest.fixture(scope="module")
def documents() -> Iterator[DocumentServer]:
    served = DocumentServer()
    yield served
    served.httpd.shutdown()


@pytest.fixture(scope="module")
def cimd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Tenants]]:
    logs = tmp_path_factory.mktemp("cimd")
    db = f"sqlite:///{logs}/cp.db"
    t = Tenants(db)
    t.create("acme")
    t.key("acme")
    proc = ServerProcess("example_servers.notes:app", db, "--oauth-issuer", "http://127.0.0.1:{port}",
                         env={"TENANT_MCP_CLIENT_METADATA_ALLOW_PRIVATE": "1"}, log_dir=logs)  # fmt: skip
    yield proc, t
    proc.stop()


def _authorize_query(client_id: str, challenge: str = "x" * 43) -> dict[str, str]:
    return {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "code_challenge": challenge,
            "code_challenge_method": "S256", "state": "s"}  # fmt: skip


async def test_a_client_metadata_document_is_a_client(
    cimd_server: tuple[ServerProcess, Tenants], documents: DocumentServer
) -> None:
    proc, t = cimd_server
    client_id = documents.add("/good.json")
    async with httpx2.AsyncClient(timeout=30, follow_redirects=False) as http:
        meta = (await http.get(f"{proc.base}/.well-known/oauth-authorization-server")).json()
        assert meta["client_id_metadata_document_supported"] is True
        flow = ManualFlow(proc, http)
        flow.client = {"client_id": client_id}
        person = Person(t.keys["acme"])
        await person.open(flow.authorize_url())
        assert "Doc Client" in person.pages[0].text and client_id in person.pages[0].text
        code = parse_qs(urlsplit(person.redirect or "").query)["code"][0]
        tokens = await flow.exchange(code)
        assert tokens.status_code == 200, tokens.text
        assert documents.hits["/good.json"] == 1, "the document is cached"


@pytest.mark.parametrize(
    "case",
    [
        "mismatched client_id",
        "javascript redirect",
        "plain http redirect",
        "secret client",
        "oversized",
        "missing",
    ],
)
async def test_a_bad_client_metadata_document_is_no_client(
    cimd_server: tuple[ServerProcess, Tenants], documents: DocumentServer, case: str
) -> None:
    proc, _ = cimd_server
    path = "/" + case.replace(" ", "-") + ".json"
    fields: dict[str, Any] = {
        "mismatched client_id": {"client_id": documents.base + "/other.json"},
        "javascript redirect": {"redirect_uris": ["javascript:alert(1)"]},
        "plain http redirect": {"redirect_uris": ["http://evil.example/cb"]},
        "secret client": {"token_endpoint_auth_method": "client_secret_post"},
        "oversized": {"client_name": "x" * 20_000},
        "missing": {},
    }[case]
    client_id = documents.add(path, **fields) if case != "missing" else documents.base + path
    async with httpx2.AsyncClient(timeout=30, follow_redirects=False) as http:
        r = await http.get(f"{proc.base}/authorize", params=_authorize_query(client_id))
        assert r.status_code == 400 and "location" not in r.headers, (case, r.status_code, r.headers)


async def test_client_metadata_is_never_fetched_from_private_addresses(
    server: tuple[ServerProcess, Tenants], documents: DocumentServer
) -> None:
    """SSRF: without the test-only allowance, loopback and private targets are not even contacted."""
    proc, _ = server
    client_id = documents.add("/ssrf.json")
    port = documents.httpd.server_address[1]
    async with httpx2.AsyncClient(timeout=30, follow_redirects=False) as http:
        for target in (client_id, f"https://127.0.0.1:{port}/ssrf.json", f"https://localhost:{port}/ssrf.json",
                       f"https://[::1]:{port}/ssrf.json", f"https://10.0.0.1:{port}/ssrf.json",
                       "https://169.254.169.254/latest/meta-data.json", f"https://0.0.0.0:{port}/ssrf.json"):  # fmt: skip
            r = await http.get(f"{proc.base}/authorize", params=_authorize_query(target))
            assert r.status_code == 400 and "location" not in r.headers, (target, r.status_code)
    assert documents.hits.get("/ssrf.json", 0) == 0
