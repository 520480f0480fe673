"""Long-lived streams and subscriptions (issue 12, findings 3 and 4): revoking a key or suspending
a tenant closes its open notification streams of both eras within the credential cache window,
nothing is pushed after that, and subscriptions are capped and released with their session."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import pytest

from tests.helpers import (
    INIT,
    LEGACY,
    MCP_HEADERS,
    ServerProcess,
    Tenants,
    keyed_tenants,
    mcp_client,
    sqlite_url,
)

pytestmark = pytest.mark.anyio
URI = "items://1"
WINDOW = 3.0  # credential cache (1 s) plus the sweep, with room for a loaded machine


def _messages(text: str) -> list[dict[str, Any]]:
    if text.lstrip().startswith("{"):
        return [json.loads(text)]
    return [
        json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and line[5:].strip()
    ]


class Stream:
    """A server-to-client stream read in the background: its messages, and whether it ended."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.ended = anyio.Event()
        self.started = anyio.Event()

    def updates(self) -> list[str]:
        return [
            m["params"]["uri"] for m in self.messages if m.get("method") == "notifications/resources/updated"
        ]

    async def read(self, http: httpx2.AsyncClient, method: str, url: str, **kwargs: Any) -> None:
        try:
            async with http.stream(method, url, **kwargs) as response:
                assert response.status_code == 200, await response.aread()
                self.started.set()
                async for line in response.aiter_lines():
                    if line.startswith("data:") and line[5:].strip():
                        self.messages.append(json.loads(line[5:]))
        except httpx2.HTTPError:
            pass
        finally:
            self.started.set()
            self.ended.set()


def _tenant(t: Tenants, slug: str) -> tuple[str, str]:
    """A fresh tenant with two keys: one to watch (and revoke), one to cause updates."""
    t.create(slug)
    watched = t.key(slug, name=f"{slug}-watched")
    other = t.key(slug, name=f"{slug}-other")
    return watched, other


async def _touch(server: ServerProcess, key: str) -> None:
    async with mcp_client(server.url, key) as c:
        assert (await c.call_tool("touch_resource", {"uri": URI})).structured_content == {"result": "ok"}


def _end_credential(t: Tenants, slug: str, how: str) -> None:
    if how == "revoke":
        t.run(lambda admin: admin.revoke_key(t.key_ids[f"{slug}-watched"]))
    else:
        t.run(lambda admin: admin.suspend(slug))


@asynccontextmanager
async def legacy_session(
    server: ServerProcess, key: str
) -> AsyncIterator[tuple[httpx2.AsyncClient, dict[str, str]]]:
    async with httpx2.AsyncClient(timeout=30) as http:
        auth = {**MCP_HEADERS, "Authorization": f"Bearer {key}"}
        r = await http.post(server.url, headers=auth, json=INIT)
        assert r.status_code == 200, r.text
        session = {**auth, "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": LEGACY}
        r = await http.post(
            server.url, headers=session, json={"jsonrpc": "2.0", "method": "notifications/initialized"}
        )
        assert r.status_code == 202, r.text
        yield http, session


@pytest.mark.parametrize("how", ["revoke", "suspend"])
async def test_ending_the_credential_closes_a_legacy_get_stream(
    probe: tuple[ServerProcess, Tenants], how: str
) -> None:
    server, t = probe
    slug = f"legacy-{how}"
    watched, other = _tenant(t, slug)
    async with legacy_session(server, watched) as (http, session), anyio.create_task_group() as tg:
        stream = Stream()
        get_headers = {k: v for k, v in session.items() if k != "Content-Type"} | {
            "Accept": "text/event-stream"
        }
        tg.start_soon(lambda: stream.read(http, "GET", server.url, headers=get_headers))
        await stream.started.wait()
        sub = {"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe", "params": {"uri": URI}}
        r = await http.post(server.url, headers=session, json=sub)
        assert "result" in _messages(r.text)[0], r.text
        await _touch(server, other)
        with anyio.fail_after(5):
            while not stream.updates():
                await anyio.sleep(0.05)
        if how == "suspend":
            t.run(lambda admin: admin.suspend(slug))
        else:
            _end_credential(t, slug, how)
        ended_at = time.monotonic()
        with anyio.fail_after(WINDOW + 2):
            await stream.ended.wait()
        assert time.monotonic() - ended_at < WINDOW, "the stream outlived the credential cache window"
        if how == "revoke":
            await _touch(server, other)  # the tenant is still active: its other key still publishes
            await anyio.sleep(0.5)
        assert stream.updates() == [URI], stream.messages
        tg.cancel_scope.cancel()
    for _ in range(40):
        closed = [e for e in t.audit(slug) if e["reason"] == "credential ended: open stream closed"]
        if closed:
            break
        await anyio.sleep(0.05)
    assert closed and closed[0]["outcome"] == "denied", t.audit(slug)[:5]


@pytest.mark.parametrize("how", ["revoke", "suspend"])
async def test_ending_the_credential_closes_a_listen_stream(
    probe: tuple[ServerProcess, Tenants], how: str
) -> None:
    server, t = probe
    slug = f"listen-{how}"
    watched, other = _tenant(t, slug)
    seen: list[str] = []
    ended = anyio.Event()
    ready = anyio.Event()

    async def listen() -> None:
        try:
            async with mcp_client(server.url, watched) as c, c.listen(resource_subscriptions=[URI]) as sub:
                ready.set()
                async for event in sub:
                    seen.append(str(getattr(event, "uri", type(event).__name__)))
        except Exception:
            pass
        finally:
            ready.set()
            ended.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(listen)
        await ready.wait()
        await _touch(server, other)
        with anyio.fail_after(5):
            while not seen:
                await anyio.sleep(0.05)
        _end_credential(t, slug, how)
        ended_at = time.monotonic()
        with anyio.fail_after(WINDOW + 2):
            await ended.wait()
        assert time.monotonic() - ended_at < WINDOW, "the listen stream outlived the credential cache window"
        tg.cancel_scope.cancel()
    assert seen == [URI]


# -- finding 4: subscriptions are capped, and released with their session ----------------------


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Tenants]]:
    db = sqlite_url(tmp_path_factory, "capped")
    t = keyed_tenants(db, "acme", "globex")
    with ServerProcess("tests.servers.capped:app", db) as server:
        yield server, t


async def _subscribe(
    http: httpx2.AsyncClient, server: ServerProcess, session: dict[str, str], uri: str
) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": 9, "method": "resources/subscribe", "params": {"uri": uri}}
    return _messages((await http.post(server.url, headers=session, json=body)).text)[0]


async def test_subscriptions_are_capped_per_session_and_per_tenant(
    capped: tuple[ServerProcess, Tenants],
) -> None:
    server, t = capped
    async with (
        legacy_session(server, t.keys["acme"]) as (http, one),
        legacy_session(server, t.keys["acme"]) as (_, two),
    ):
        for i in range(3):
            assert "result" in await _subscribe(http, server, one, f"items://{i}")
        assert "result" in await _subscribe(http, server, one, "items://0"), "a repeat is no new subscription"
        over = await _subscribe(http, server, one, "items://3")
        assert "subscription limit" in over["error"]["message"].lower(), over
        assert "3" in over["error"]["message"], over
        for i in range(2):
            assert "result" in await _subscribe(http, server, two, f"items://{10 + i}")
        over = await _subscribe(http, server, two, "items://12")
        assert "subscription limit" in over["error"]["message"].lower() and "5" in over["error"]["message"], (
            over
        )
        # another tenant is not affected by acme's full quota
        async with legacy_session(server, t.keys["globex"]) as (_, three):
            assert "result" in await _subscribe(http, server, three, "items://1")
        # unsubscribing frees a place; ending a session frees all of its places
        body = {"jsonrpc": "2.0", "id": 10, "method": "resources/unsubscribe", "params": {"uri": "items://0"}}
        assert "result" in _messages((await http.post(server.url, headers=one, json=body)).text)[0]
        assert "result" in await _subscribe(http, server, two, "items://12")
        assert (await http.delete(server.url, headers=one)).status_code == 200
        async with legacy_session(server, t.keys["acme"]) as (_, four):
            for i in range(2):  # the deleted session's two places are free again
                assert "result" in await _subscribe(http, server, four, f"items://{30 + i}"), i
            over = await _subscribe(http, server, four, "items://32")
            assert "5 per tenant" in over["error"]["message"], over


async def test_listen_streams_count_against_the_tenant_cap(capped: tuple[ServerProcess, Tenants]) -> None:
    server, t = capped
    t.create("initech")
    key = t.key("initech")
    release = anyio.Event()

    async def hold(ready: anyio.Event) -> None:
        async with mcp_client(server.url, key) as c, c.listen(resource_subscriptions=["items://1"]):
            ready.set()
            await release.wait()

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            ready = anyio.Event()
            tg.start_soon(hold, ready)
            with anyio.fail_after(10):
                await ready.wait()
        async with mcp_client(server.url, key) as c:
            with pytest.raises(Exception) as refused:
                async with c.listen(resource_subscriptions=["items://2"]):
                    pass
            assert "subscription limit" in str(refused.value).lower(), refused.value
        release.set()
    # the streams ended: their places are free again
    async with mcp_client(server.url, key) as c, c.listen(resource_subscriptions=["items://2"]):
        pass


def _rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status").read().splitlines():  # noqa: SIM115 - one read
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_subscriptions_are_freed_with_their_session(probe: tuple[ServerProcess, Tenants]) -> None:
    """4 cycles of 1,000 subscribes and a session delete leave the process no more than 10 MB larger."""
    server, t = probe
    t.create("rss")
    key = t.key("rss")

    async def cycle() -> None:
        async with legacy_session(server, key) as (http, session):
            for i in range(1000):
                body = {
                    "jsonrpc": "2.0",
                    "id": i,
                    "method": "resources/subscribe",
                    "params": {"uri": f"items://{i}"},
                }
                r = await http.post(server.url, headers=session, json=body)
                assert "result" in _messages(r.text)[0], r.text
            assert (await http.delete(server.url, headers=session)).status_code == 200

    await cycle()  # warm up: caches, pools, the allocator's arenas
    before = _rss(server.proc.pid)
    for _ in range(4):
        await cycle()
    grown = _rss(server.proc.pid) - before
    assert grown < 10 * 1024 * 1024, f"RSS grew by {grown / 1e6:.1f} MB"
