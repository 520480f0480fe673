"""Adversarial tests of the HTTP transport, over real HTTP against real server processes.

Raw HTTP (httpx2) where the edge lies below what the SDK client can express: the auth gate, the
Host/Origin check, malformed JSON-RPC, oversized bodies, session hijacking, tenant-selecting
headers and concurrent calls that reuse JSON-RPC ids and progress tokens across tenants. The
official SDK client where the property is end-to-end (stateless and JSON-response modes, the
2026-07-28 per-request era).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx2
import pytest

from tenant_mcp.transports.http import HTTPOptions
from tests.helpers import INIT, LEGACY, MCP_HEADERS, ServerProcess, Tenants, mcp_client, standard_tenants

pytestmark = pytest.mark.anyio

COMMON_TOOLS = {"whoami", "create_note", "list_notes", "get_note", "search_notes", "delete_note"}


# -- helpers ---------------------------------------------------------------------------------------


def messages(response: httpx2.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a response, SSE (`data:` lines) or plain JSON."""
    ctype = response.headers.get("content-type", "")
    if ctype.startswith("text/event-stream"):
        return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
    if ctype.startswith("application/json") and response.content:
        body = response.json()
        return body if isinstance(body, list) else [body]
    return []


def reply(response: httpx2.Response, request_id: Any) -> dict[str, Any]:
    """The one response (result or error) to `request_id` in a response."""
    found = [m for m in messages(response) if "method" not in m and m.get("id") == request_id]
    assert len(found) == 1, (
        f"expected one reply to id {request_id!r}, got {response.status_code} {response.text!r}"
    )
    return found[0]


def bearer(key: str) -> dict[str, str]:
    return {**MCP_HEADERS, "Authorization": f"Bearer {key}"}


class RawSession:
    """A stateful 2025-11-25 session spoken in raw HTTP."""

    def __init__(self, client: httpx2.AsyncClient, url: str, key: str) -> None:
        self.client, self.url, self.key = client, url, key
        self.session_id = ""
        self._next_id = 1000

    async def open(self) -> RawSession:
        r = await self.client.post(self.url, headers=bearer(self.key), json=INIT)
        assert r.status_code == 200, f"initialize failed: {r.status_code} {r.text}"
        self.session_id = r.headers["mcp-session-id"]
        r = await self.client.post(
            self.url, headers=self.headers(), json={"jsonrpc": "2.0", "method": "notifications/initialized"}
        )
        assert r.status_code == 202, f"notifications/initialized: {r.status_code} {r.text}"
        return self

    def headers(self, **extra: str) -> dict[str, str]:
        return {
            **bearer(self.key),
            "mcp-session-id": self.session_id,
            "mcp-protocol-version": LEGACY,
            **extra,
        }

    async def post(self, body: Any, **extra: str) -> httpx2.Response:
        return await self.client.post(self.url, headers=self.headers(**extra), json=body)

    async def request(
        self, method: str, params: dict[str, Any] | None = None, *, request_id: Any = None
    ) -> tuple[httpx2.Response, dict[str, Any]]:
        if request_id is None:
            self._next_id += 1
            request_id = self._next_id
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            body["params"] = params
        r = await self.post(body)
        assert r.status_code == 200, f"{method}: {r.status_code} {r.text}"
        return r, reply(r, request_id)

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        _, message = await self.request("tools/call", {"name": tool, "arguments": arguments})
        assert "result" in message, f"tools/call {tool} failed at the protocol level: {message}"
        return message["result"]

    async def tool_names(self) -> set[str]:
        _, message = await self.request("tools/list")
        return {t["name"] for t in message["result"]["tools"]}


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=30) as client:
        yield client


def _server(tmp_path_factory: pytest.TempPathFactory, app: str, *args: str) -> tuple[ServerProcess, Tenants]:
    db_url = f"sqlite:///{tmp_path_factory.mktemp('protocol')}/control.db"
    tenants = standard_tenants(db_url)
    return ServerProcess(app, db_url, *args), tenants


async def wait_for_audit(tenants: Tenants, slug: str, predicate: Any, seconds: float = 2.0) -> dict[str, Any]:
    """The newest audit event of `slug` matching `predicate` (the audit is flushed in batches)."""
    deadline = time.monotonic() + seconds
    while True:
        events = tenants.audit(slug)
        for event in events:
            if predicate(event):
                return event
        if time.monotonic() > deadline:
            pytest.fail(f"no matching audit event for {slug} within {seconds}s; newest: {events[:5]}")
        await asyncio.sleep(0.1)


# -- 1. authentication edges -----------------------------------------------------------------------


def _auth_cases(tenants: Tenants) -> dict[str, tuple[dict[str, str], str]]:
    """name -> (extra headers, query string): every one of them must be refused with 401."""
    acme = tenants.keys["acme"]
    acme_key_id = tenants.key_ids["acme"]
    random_key = f"tmk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
    assert len(random_key) == len(acme), "the random key must be well-formed, like a real one"
    wrong_secret = f"tmk_{acme_key_id}_{secrets.token_urlsafe(32)}"  # a real key id, a wrong secret
    basic = base64.b64encode(f"acme:{acme}".encode()).decode()
    return {
        "no authorization": ({}, ""),
        "basic scheme with a valid key": ({"Authorization": f"Basic {basic}"}, ""),
        "basic scheme with the raw key": ({"Authorization": f"Basic {acme}"}, ""),
        "key without a scheme": ({"Authorization": acme}, ""),
        "token scheme": ({"Authorization": f"Token {acme}"}, ""),
        "random well-formed key": ({"Authorization": f"Bearer {random_key}"}, ""),
        "real key id, wrong secret": ({"Authorization": f"Bearer {wrong_secret}"}, ""),
        "valid key with a suffix": ({"Authorization": f"Bearer {acme}x"}, ""),
        "valid key truncated": ({"Authorization": f"Bearer {acme[:-1]}"}, ""),
        "prefix only": ({"Authorization": "Bearer tmk_"}, ""),
        "malformed tmk key": ({"Authorization": "Bearer tmk_nothex_short"}, ""),
        "jwt-looking token": ({"Authorization": "Bearer aaa.bbb.ccc"}, ""),
        "garbage token": ({"Authorization": "Bearer !!!%%%"}, ""),
        "scheme alone": ({"Authorization": "Bearer"}, ""),
        "key in X-API-Key": ({"X-API-Key": acme}, ""),
        "access_token in the query string": ({}, f"?access_token={acme}"),
        "api_key in the query string": ({}, f"?api_key={acme}"),
    }


async def test_unauthenticated_requests_get_identical_401s(
    notes_server: ServerProcess, tenants: Tenants, http: httpx2.AsyncClient
) -> None:
    cases = _auth_cases(tenants)
    bodies: dict[str, bytes] = {}
    for name, (extra, query) in cases.items():
        r = await http.post(notes_server.url + query, headers={**MCP_HEADERS, **extra}, json=INIT)
        assert r.status_code == 401, f"{name}: expected 401, got {r.status_code} {r.text}"
        challenge = r.headers.get("www-authenticate", "")
        assert challenge.startswith("Bearer "), f"{name}: 401 without a Bearer challenge: {challenge!r}"
        assert "mcp-session-id" not in r.headers, f"{name}: a session was opened without authentication"
        bodies[name] = r.content
        leak = r.text.lower() + challenge.lower()
        for word in (
            "acme",
            "globex",
            tenants.key_ids["acme"],
            tenants.key_ids["globex"],
            "unknown",
            "revoked",
        ):
            assert word.lower() not in leak, f"{name}: the 401 mentions {word!r}: {r.text} / {challenge}"
    reference = bodies["no authorization"]
    different = {name: body for name, body in bodies.items() if body != reference}
    assert not different, f"401 bodies differ, so they tell credentials apart: {different} vs {reference!r}"


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_other_http_methods_need_authentication_too(
    notes_server: ServerProcess, tenants: Tenants, http: httpx2.AsyncClient, method: str
) -> None:
    # A real session id of acme, presented without acme's credential.
    async with httpx2.AsyncClient(timeout=30) as own:
        acme = await RawSession(own, notes_server.url, tenants.keys["acme"]).open()
        headers = {
            "Accept": "text/event-stream",
            "mcp-session-id": acme.session_id,
            "mcp-protocol-version": LEGACY,
        }
        r = await http.request(method, notes_server.url, headers=headers)
        assert r.status_code == 401, f"{method} without a key: {r.status_code} {r.text}"
        assert r.headers.get("www-authenticate", "").startswith("Bearer ")
        assert await acme.tool_names() >= COMMON_TOOLS, "the session must survive the unauthenticated attempt"


async def _raw_http(port: int, request: bytes) -> bytes:
    """Send bytes the HTTP client would refuse to produce; return everything the server answers."""
    data = b""
    with anyio.fail_after(10):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(request)
            try:
                while True:
                    data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    return data


async def test_two_authorization_headers_are_refused(
    notes_server: ServerProcess, tenants: Tenants, http: httpx2.AsyncClient
) -> None:
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
    acme = await RawSession(http, notes_server.url, tenants.keys["acme"]).open()
    for first, second in (("acme", "globex"), ("globex", "acme")):
        headers = [(k, v) for k, v in acme.headers().items() if k != "Authorization"]
        headers += [
            ("Authorization", f"Bearer {tenants.keys[first]}"),
            ("Authorization", f"Bearer {tenants.keys[second]}"),
        ]
        r = await http.post(notes_server.url, headers=headers, json=call)
        assert r.status_code in (400, 401), (
            f"two credentials ({first} first, {second} second) were accepted: {r.status_code} {r.text[:300]}"
        )


@pytest.mark.parametrize("hosts", [("127.0.0.1", "evil.example"), ("evil.example", "127.0.0.1")])
async def test_duplicate_host_headers_are_refused(
    notes_server: ServerProcess, tenants: Tenants, hosts: tuple[str, str]
) -> None:
    body = json.dumps(INIT).encode()
    head = "".join(f"Host: {h}\r\n" for h in hosts)
    request = (
        f"POST /mcp HTTP/1.1\r\n{head}Authorization: Bearer {tenants.keys['acme']}\r\n"
        f"Accept: application/json, text/event-stream\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    answer = await _raw_http(notes_server.port, request)
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 4"), f"duplicate Host {hosts}: {answer[:300]!r}"
    assert b"mcp-session-id" not in answer.lower(), f"duplicate Host {hosts} opened a session"


# -- 2. protocol edges -----------------------------------------------------------------------------


async def _note_titles(session: RawSession) -> list[str]:
    result = await session.call("list_notes", {})
    assert not result.get("isError"), result
    return [n["title"] for n in result["structuredContent"]["result"]]


async def test_malformed_requests_get_clean_errors_and_change_nothing(
    notes_server: ServerProcess, tenants: Tenants, http: httpx2.AsyncClient
) -> None:
    acme = await RawSession(http, notes_server.url, tenants.keys["acme"]).open()
    created = await acme.call("create_note", {"title": "protocol-baseline", "body": "b"})
    assert not created.get("isError"), created
    before = await _note_titles(acme)

    # Truncated JSON: parse error.
    r = await http.post(notes_server.url, headers=acme.headers(), content=b'{"jsonrpc":"2.0","id":2,"meth')
    assert r.status_code == 400, f"truncated JSON: {r.status_code} {r.text}"
    assert r.json()["error"]["code"] == -32700, r.text
    assert r.json()["id"] is None, r.text

    # Not JSON at all, and JSON that is not an object.
    for raw in (b"\xff\xfe\x00garbage", b"null", b"42", b'"tools/list"'):
        r = await http.post(notes_server.url, headers=acme.headers(), content=raw)
        assert 400 <= r.status_code < 500, f"{raw!r}: {r.status_code} {r.text}"
        assert "result" not in r.text, f"{raw!r} was executed: {r.text}"

    # A body that is not declared as JSON (what a browser form could send without a preflight).
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        r = await http.post(
            notes_server.url,
            headers=acme.headers(**{"Content-Type": ctype}),
            content=json.dumps(INIT).encode(),
        )
        assert 400 <= r.status_code < 500, f"Content-Type {ctype}: {r.status_code} {r.text}"
        assert "result" not in r.text, f"Content-Type {ctype} was executed: {r.text}"

    # A JSON-RPC batch (removed from MCP): refused as a whole, nothing in it executed.
    batch = [
        {"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
         "params": {"name": "create_note", "arguments": {"title": "from-a-batch", "body": "b"}}},
    ]  # fmt: skip
    r = await acme.post(batch)
    assert 400 <= r.status_code < 500, f"batch: {r.status_code} {r.text}"
    body = r.json()
    assert isinstance(body, dict) and "error" in body and "result" not in body, f"batch answered: {r.text}"
    assert body["error"]["code"] in (-32600, -32602), f"batch: unexpected error code {body}"

    # 5 MiB: refused before parsing, with a declared length and when streamed without one.
    big = json.dumps(
        {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
         "params": {"name": "create_note", "arguments": {"title": "huge-note", "body": "x" * (5 * 1024 * 1024)}}}
    ).encode()  # fmt: skip
    r = await http.post(notes_server.url, headers=acme.headers(), content=big)
    assert r.status_code == 413, f"5 MiB with Content-Length: {r.status_code} {r.text[:200]}"

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 64 * 1024):
            yield big[i : i + 64 * 1024]

    try:
        r = await http.post(notes_server.url, headers=acme.headers(), content=chunks())
        assert r.status_code == 413, f"5 MiB chunked: {r.status_code} {r.text[:200]}"
    except httpx2.TransportError:
        pass  # the server may close the connection while the client still sends; it must not accept it

    # Unknown method.
    _, message = await acme.request("no/such/method", {}, request_id=6)
    assert message.get("error", {}).get("code") == -32601, f"unknown method: {message}"

    # Arguments of the wrong type: a tool error, not a crash, and nothing done.
    for tool, arguments in [
        ("get_note", {"note_id": "abc"}),
        ("delete_note", {"note_id": "1 OR 1=1"}),
        ("delete_note", {"note_id": -1}),
        ("create_note", {"title": ["not", "a", "string"], "body": "b"}),
        ("create_note", {"title": "", "body": "b"}),
        ("create_note", {"title": "missing body"}),
        ("get_note", {}),
    ]:
        result = await acme.call(tool, arguments)
        assert result.get("isError") is True, f"{tool}({arguments}) did not fail: {result}"
        text = json.dumps(result["content"])
        assert "Traceback" not in text, f"{tool}({arguments}) leaked a traceback: {text}"

    # A bogus protocol-version header.
    for version in ("1999-01-01", "bogus"):
        r = await acme.post(
            {"jsonrpc": "2.0", "id": 7, "method": "tools/list"}, **{"mcp-protocol-version": version}
        )
        assert r.status_code == 400, f"mcp-protocol-version {version!r}: {r.status_code} {r.text}"
        r = await acme.post(
            {"jsonrpc": "2.0", "id": 8, "method": "tools/call",
             "params": {"name": "create_note", "arguments": {"title": "bogus-version", "body": "b"}}},
            **{"mcp-protocol-version": version},
        )  # fmt: skip
        assert r.status_code == 400, (
            f"mcp-protocol-version {version!r} on tools/call: {r.status_code} {r.text}"
        )

    # Nothing of the above changed acme's notes, and the server still answers, on this session and a new one.
    assert await _note_titles(acme) == before, "a refused request changed the data"
    assert notes_server.proc.poll() is None, "the server process died"
    whoami = await acme.call("whoami", {})
    assert whoami["structuredContent"]["tenant"] == "acme", whoami
    fresh = await RawSession(http, notes_server.url, tenants.keys["acme"]).open()
    assert await _note_titles(fresh) == before
    assert (await http.get(notes_server.base + "/healthz")).status_code == 200


# -- 3. Host and Origin ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hosts_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Tenants]]:
    server, tenants = _server(
        tmp_path_factory,
        "example_servers.notes:app",
        "--allowed-hosts", "mcp.example.test",
        "--allowed-origins", "https://app.example.test",
    )  # fmt: skip
    yield server, tenants
    server.stop()


@pytest.mark.parametrize("with_key", ["no key", "invalid key", "valid key"])
async def test_bad_host_and_origin_are_refused_before_authentication(
    notes_server: ServerProcess, tenants: Tenants, http: httpx2.AsyncClient, with_key: str
) -> None:
    headers = dict(MCP_HEADERS)
    if with_key == "invalid key":
        headers["Authorization"] = "Bearer tmk_000000000000_" + "A" * 43
    elif with_key == "valid key":
        headers["Authorization"] = f"Bearer {tenants.keys['acme']}"
    for host in ("evil.example", "127.0.0.1.evil.example", "localhost.evil.example:80", "evil.example:8000"):
        r = await http.post(notes_server.url, headers={**headers, "Host": host}, json=INIT)
        assert r.status_code == 421, f"Host {host!r} ({with_key}): {r.status_code} {r.text}"
        assert "www-authenticate" not in r.headers, "the Host check must come before authentication"
        assert "mcp-session-id" not in r.headers
    for origin in (
        "https://evil.example",
        "http://127.0.0.1.evil.example",
        "null",
        "http://localhost.evil.example",
    ):
        r = await http.post(notes_server.url, headers={**headers, "Origin": origin}, json=INIT)
        assert r.status_code == 403, f"Origin {origin!r} ({with_key}): {r.status_code} {r.text}"
        assert "www-authenticate" not in r.headers, "the Origin check must come before authentication"
        assert "mcp-session-id" not in r.headers
    # The loopback origin of the server itself is fine (then it is up to the credential).
    r = await http.post(notes_server.url, headers={**headers, "Origin": notes_server.base}, json=INIT)
    assert r.status_code == (200 if with_key == "valid key" else 401), f"own origin: {r.status_code} {r.text}"


async def test_allowed_hosts_and_origins_flags(
    hosts_server: tuple[ServerProcess, Tenants], http: httpx2.AsyncClient
) -> None:
    server, tenants = hosts_server
    headers = bearer(tenants.keys["acme"])
    r = await http.post(server.url, headers={**headers, "Host": "mcp.example.test"}, json=INIT)
    assert r.status_code == 200, f"allowed host refused: {r.status_code} {r.text}"
    assert reply(r, 1)["result"]["protocolVersion"] == LEGACY
    for host in (
        "other.example.test",
        "mcp.example.test.evil.example",
        "evil-mcp.example.test",
        "example.test",
    ):
        r = await http.post(server.url, headers={**headers, "Host": host}, json=INIT)
        assert r.status_code == 421, f"Host {host!r}: {r.status_code} {r.text}"
    r = await http.post(server.url, headers={**headers, "Origin": "https://app.example.test"}, json=INIT)
    assert r.status_code == 200, f"allowed origin refused: {r.status_code} {r.text}"
    for origin in (
        "https://app.example.test.evil.example",
        "http://app.example.test",
        "https://evil.example",
    ):
        r = await http.post(server.url, headers={**headers, "Origin": origin}, json=INIT)
        assert r.status_code == 403, f"Origin {origin!r}: {r.status_code} {r.text}"
    # Loopback still works next to the extra host.
    r = await http.post(server.url, headers=headers, json=INIT)
    assert r.status_code == 200, f"loopback host refused: {r.status_code} {r.text}"


@pytest.mark.parametrize("bind", ["0.0.0.0", "::"])  # only compared, never bound
def test_wildcard_bind_does_not_allow_any_host(bind: str) -> None:
    """Not bound here (no test binds beyond loopback): the settings a wildcard bind would use."""
    settings = HTTPOptions(host=bind).transport_security()
    assert settings.enable_dns_rebinding_protection
    forbidden = {bind, f"{bind}:*", f"[{bind}]", f"[{bind}]:*"}
    assert not forbidden & set(settings.allowed_hosts), settings.allowed_hosts
    assert not any(h in ("*", "*:*") for h in settings.allowed_hosts), settings.allowed_hosts
    named = HTTPOptions(host="mcp.internal").transport_security()
    assert "mcp.internal:8000" in named.allowed_hosts and "mcp.internal:*" not in named.allowed_hosts


# -- 4. session binding ----------------------------------------------------------------------------


async def _attempt(
    http: httpx2.AsyncClient, url: str, key: str, session_id: str, verb: str
) -> tuple[int, bytes]:
    headers = {**bearer(key), "mcp-session-id": session_id, "mcp-protocol-version": LEGACY}
    if verb == "POST":
        r = await http.post(url, headers=headers, json={"jsonrpc": "2.0", "id": 77, "method": "tools/list"})
    elif verb == "GET":
        r = await http.get(url, headers={**headers, "Accept": "text/event-stream"})
    else:
        r = await http.delete(url, headers=headers)
    assert "mcp-session-id" not in r.headers, f"{verb}: the refusal names a session: {r.headers}"
    return r.status_code, r.content


@pytest.mark.parametrize("intruder", ["globex", "acme2"])
async def test_session_cannot_be_used_with_another_credential(
    notes_server: ServerProcess, tenants: Tenants, http: httpx2.AsyncClient, intruder: str
) -> None:
    acme = await RawSession(http, notes_server.url, tenants.keys["acme"]).open()
    assert await acme.tool_names() >= COMMON_TOOLS
    key = tenants.keys[intruder]
    for verb in ("POST", "GET", "DELETE"):
        unknown = await _attempt(http, notes_server.url, key, uuid.uuid4().hex, verb)
        hijack = await _attempt(http, notes_server.url, key, acme.session_id, verb)
        assert hijack[0] == 404, f"{intruder} {verb} on acme's session: {hijack}"
        assert hijack == unknown, f"{intruder} {verb}: hijack {hijack} differs from unknown session {unknown}"
    # acme's session is intact: it answers, and the foreign GET did not take its standalone stream.
    assert await acme.tool_names() >= COMMON_TOOLS, "acme's session stopped working after the attempts"
    whoami = await acme.call("whoami", {})
    assert whoami["structuredContent"]["tenant"] == "acme"
    async with http.stream(
        "GET", notes_server.url, headers=acme.headers(Accept="text/event-stream")
    ) as stream:
        assert stream.status_code == 200, f"acme's own GET stream: {stream.status_code}"
    # Only acme can end it, and then it is gone.
    r = await http.delete(notes_server.url, headers=acme.headers())
    assert r.status_code == 200, f"acme's DELETE: {r.status_code} {r.text}"
    r = await acme.post({"jsonrpc": "2.0", "id": 78, "method": "tools/list"})
    assert r.status_code == 404, f"session still alive after its owner's DELETE: {r.status_code}"


async def test_sdk_client_sessions_are_bound_to_their_tenant(
    notes_server: ServerProcess, tenants: Tenants
) -> None:
    """Hijack through the SDK: globex's client reuses a session id that acme's client holds."""
    async with httpx2.AsyncClient(timeout=30) as http:
        acme = await RawSession(http, notes_server.url, tenants.keys["acme"]).open()
        status, _ = await _attempt(http, notes_server.url, tenants.keys["globex"], acme.session_id, "POST")
        assert status == 404
        # Same id, same JSON-RPC id, both tenants, concurrently: each gets its own answer or a 404.
        body = {
            "jsonrpc": "2.0",
            "id": 5,
            "method": "tools/call",
            "params": {"name": "whoami", "arguments": {}},
        }
        own, foreign = await asyncio.gather(
            http.post(notes_server.url, headers=acme.headers(), json=body),
            http.post(
                notes_server.url,
                headers={**acme.headers(), "Authorization": f"Bearer {tenants.keys['globex']}"},
                json=body,
            ),
        )
        assert reply(own, 5)["result"]["structuredContent"]["tenant"] == "acme"
        assert foreign.status_code == 404 and "acme" not in foreign.text, foreign.text


# -- 5. tenant-selecting headers -------------------------------------------------------------------


TENANT_HEADERS = [
    ("X-Tenant-Id", "globex"),
    ("X-Org-Id", "globex"),
    ("Tenant", "globex"),
    ("TENANT", "globex"),
    ("x-TeNaNt-iD", "globex"),
    ("X-Tenant", "globex"),
    ("Tenant-Slug", "globex"),
    ("X-Organization-Id", "globex"),
    ("X-Account-Id", "globex"),
    ("X-Tenant-Id", "acme"),  # even naming one's own tenant is refused
    ("X-Tenant-Id", ""),
]


@pytest.mark.parametrize(("header", "value"), TENANT_HEADERS)
async def test_tenant_selecting_headers_are_refused_and_audited(
    notes_server: ServerProcess, tenants: Tenants, http: httpx2.AsyncClient, header: str, value: str
) -> None:
    acme = await RawSession(http, notes_server.url, tenants.keys["acme"]).open()
    before = await _note_titles(acme)
    # On a request that would write, and on one that would open a session.
    title = f"override-{header}-{value}-{uuid.uuid4().hex[:6]}"
    call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
            "params": {"name": "create_note", "arguments": {"title": title, "body": "b"}}}  # fmt: skip
    for r in (
        await acme.post(call, **{header: value}),
        await http.post(notes_server.url, headers={**bearer(tenants.keys["acme"]), header: value}, json=INIT),
    ):
        assert r.status_code == 400, f"{header}: {value!r}: {r.status_code} {r.text}"
        assert "mcp-session-id" not in r.headers, "a refused request must not touch sessions"
        error = r.json()["error"]
        assert error["code"] == -32600, error
        assert header.lower() in error["message"].lower(), f"the message does not name the header: {error}"
        assert "server sets the tenant" in error["message"], error
        assert "globex" not in r.text, r.text
    assert await _note_titles(acme) == before, "the refused request was executed"

    wanted = f"tenant override attempt: header {header.lower()}"
    event = await wait_for_audit(
        tenants,
        "acme",
        lambda e: (
            e["outcome"] == "denied" and wanted in (e["reason"] or "").lower() and e["method"] == "http"
        ),
    )
    assert event["principal"] == f"key:{tenants.key_ids['acme']}", event
    assert event["at"] is not None
    globex_events = [e for e in tenants.audit("globex") if "tenant override attempt" in (e["reason"] or "")]
    assert not globex_events, f"acme's override attempt was recorded for globex: {globex_events}"


# -- 6. concurrency: no mis-routing across tenants -------------------------------------------------


STEPS = 5


async def test_concurrent_raw_calls_with_colliding_ids_and_progress_tokens(
    probe: tuple[ServerProcess, Tenants],
) -> None:
    """Regression for CVE-2026-25536 (TypeScript SDK): responses routed to the wrong client when two
    sessions reused request ids. Same JSON-RPC ids, same progress tokens, two tenants, in parallel."""
    server, tenants = probe
    async with httpx2.AsyncClient(timeout=30, limits=httpx2.Limits(max_connections=100)) as http:
        sessions = {
            slug: await RawSession(http, server.url, tenants.keys[slug]).open() for slug in ("acme", "globex")
        }
        assert sessions["acme"].session_id != sessions["globex"].session_id

        async def call(slug: str, i: int) -> tuple[str, int, httpx2.Response]:
            body = {
                "jsonrpc": "2.0",
                "id": 500 + i,  # the same id in both sessions
                "method": "tools/call",
                "params": {
                    "name": "slow_echo",
                    "arguments": {"token": f"tok{i}", "steps": STEPS},
                    "_meta": {"progressToken": f"progress-{i}"},  # the same token in both sessions
                },
            }
            return slug, i, await sessions[slug].post(body)

        jobs = [call(slug, i) for i in range(10) for slug in ("acme", "globex")]  # interleaved
        results = await asyncio.gather(*jobs)

    assert len(results) == 20
    for slug, i, r in results:
        assert r.status_code == 200, f"{slug} #{i}: {r.status_code} {r.text}"
        msgs = messages(r)
        answer = reply(r, 500 + i)
        assert "result" in answer, f"{slug} #{i}: {answer}"
        assert answer["result"]["structuredContent"] == {"tenant": slug, "token": f"tok{i}"}, (
            f"{slug} #{i} got someone else's answer: {answer}"
        )
        progress = [m["params"] for m in msgs if m.get("method") == "notifications/progress"]
        assert len(progress) == STEPS, f"{slug} #{i}: expected {STEPS} progress notifications, got {progress}"
        for p in progress:
            assert p["progressToken"] == f"progress-{i}", f"{slug} #{i}: foreign progress token {p}"
            assert p["message"] == f"{slug}:tok{i}", f"{slug} #{i}: foreign progress {p}"
        assert [p["progress"] for p in progress] == list(range(1, STEPS + 1)), progress
        others = [m for m in msgs if m.get("method") != "notifications/progress" and m.get("id") != 500 + i]
        assert not others, f"{slug} #{i}: unexpected messages on the stream: {others}"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_concurrent_sdk_calls_are_never_misrouted(
    probe: tuple[ServerProcess, Tenants], mode: str
) -> None:
    server, tenants = probe
    per_tenant = 20
    async with (
        mcp_client(server.url, tenants.keys["acme"], mode=mode) as acme,
        mcp_client(server.url, tenants.keys["globex"], mode=mode) as globex,
    ):
        expected_version = "2026-07-28" if mode == "auto" else LEGACY
        assert acme.protocol_version == globex.protocol_version == expected_version, (
            f"mode {mode} negotiated {acme.protocol_version}/{globex.protocol_version}"
        )
        clients = {"acme": acme, "globex": globex}
        progress: dict[tuple[str, int], list[str | None]] = {}

        async def call(slug: str, i: int) -> tuple[str, int, Any]:
            seen = progress.setdefault((slug, i), [])

            async def on_progress(value: float, total: float | None, message: str | None) -> None:
                seen.append(message)

            result = await clients[slug].call_tool(
                "slow_echo", {"token": f"tok{i}", "steps": STEPS}, progress_callback=on_progress
            )
            return slug, i, result

        results = await asyncio.gather(
            *(call(slug, i) for i in range(per_tenant) for slug in ("acme", "globex"))
        )

    assert len(results) == 2 * per_tenant
    for slug, i, result in results:
        assert not result.is_error, f"{slug} #{i}: {result}"
        assert result.structured_content == {"tenant": slug, "token": f"tok{i}"}, (
            f"{slug} #{i} got someone else's answer: {result.structured_content}"
        )
        seen = progress[(slug, i)]
        assert seen == [f"{slug}:tok{i}"] * STEPS, f"{slug} #{i}: progress of another call or tenant: {seen}"


# -- 7. stateless and JSON-response modes ----------------------------------------------------------


@pytest.fixture(scope="module", params=["stateless", "stateless+json"])
def stateless_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ServerProcess, Tenants]]:
    args = ("--stateless", "--json-response") if request.param == "stateless+json" else ("--stateless",)
    server, tenants = _server(tmp_path_factory, "example_servers.notes:app", *args)
    yield request.param, server, tenants
    server.stop()


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_stateless_modes_keep_tenants_apart(
    stateless_server: tuple[str, ServerProcess, Tenants], mode: str
) -> None:
    kind, server, tenants = stateless_server
    expected = {"acme": COMMON_TOOLS | {"export_notes", "bulk_import"}, "globex": COMMON_TOOLS}
    marker = f"{kind}-{mode}-{uuid.uuid4().hex[:8]}"
    for slug, tools in expected.items():
        async with mcp_client(server.url, tenants.keys[slug], mode=mode) as client:
            who = await client.call_tool("whoami", {})
            assert who.structured_content is not None and who.structured_content["tenant"] == slug, who
            names = {t.name for t in (await client.list_tools()).tools}
            assert names == tools, f"{kind}/{mode}: {slug} sees {sorted(names)}"
            created = await client.call_tool("create_note", {"title": f"{slug}-{marker}", "body": "b"})
            assert not created.is_error, created
    for slug, other in (("acme", "globex"), ("globex", "acme")):
        async with mcp_client(server.url, tenants.keys[slug], mode=mode) as client:
            listed = await client.call_tool("list_notes", {})
            titles = {n["title"] for n in (listed.structured_content or {}).get("result", [])}
            assert f"{slug}-{marker}" in titles, f"{kind}/{mode}: {slug} lost its note: {titles}"
            assert f"{other}-{marker}" not in titles, f"{kind}/{mode}: {slug} sees {other}'s note"
            hidden = await client.call_tool("export_notes", {})
            assert hidden.is_error == (slug == "globex"), f"{kind}/{mode}: {slug} export_notes: {hidden}"


async def test_stateless_raw_wire(stateless_server: tuple[str, ServerProcess, Tenants]) -> None:
    kind, server, tenants = stateless_server
    async with httpx2.AsyncClient(timeout=30) as http:
        headers = {**bearer(tenants.keys["globex"]), "mcp-protocol-version": LEGACY}
        r = await http.post(
            server.url, headers=headers, json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"}
        )
        assert r.status_code == 200, f"{kind}: {r.status_code} {r.text}"
        wanted = "application/json" if kind == "stateless+json" else "text/event-stream"
        assert r.headers["content-type"].startswith(wanted), (
            f"{kind}: content-type {r.headers['content-type']}"
        )
        assert "mcp-session-id" not in r.headers, f"{kind}: a stateless server handed out a session"
        names = {t["name"] for t in reply(r, 3)["result"]["tools"]}
        assert names == COMMON_TOOLS, f"{kind}: globex sees {sorted(names)}"
        # The gate is the same in every mode.
        r = await http.post(server.url, headers={**headers, "X-Tenant-Id": "acme"}, json={"jsonrpc": "2.0", "id": 4,
                                                                                           "method": "tools/list"})  # fmt: skip
        assert r.status_code == 400 and "x-tenant-id" in r.json()["error"]["message"], r.text
        r = await http.post(server.url, headers={**MCP_HEADERS, "mcp-protocol-version": LEGACY}, json=INIT)
        assert r.status_code == 401, f"{kind}: {r.status_code}"
        # A session id from nowhere does not change whose request it is.
        r = await http.post(
            server.url,
            headers={**headers, "mcp-session-id": uuid.uuid4().hex},
            json={
                "jsonrpc": "2.0",
                "id": 5,
                "method": "tools/call",
                "params": {"name": "whoami", "arguments": {}},
            },
        )
        if r.status_code == 200:
            assert reply(r, 5)["result"]["structuredContent"]["tenant"] == "globex", r.text
        else:
            assert 400 <= r.status_code < 500, r.text
