"""Per-tenant items and notifications: what is registered for, or happens in, one tenant never
reaches another."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import ServerProcess, Tenants, mcp_client

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Tenants]]:
    db = f"sqlite:///{tmp_path_factory.mktemp('private')}/cp.db"
    t = Tenants(db)
    for slug in ("acme", "globex", "initech"):
        t.create(slug)
        t.key(slug)
    server = ServerProcess("tests.servers.probe:app", db)
    yield server, t
    server.stop()


async def test_same_name_private_tools_run_each_tenants_own_code(
    probe: tuple[ServerProcess, Tenants],
) -> None:
    server, t = probe
    for slug, expected in (("acme", "acme private report"), ("globex", "globex private report")):
        async with mcp_client(server.url, t.keys[slug]) as c:
            assert "private_report" in {tool.name for tool in (await c.list_tools()).tools}
            result = await c.call_tool("private_report", {})
            assert result.structured_content == {"result": expected}
    async with mcp_client(server.url, t.keys["initech"]) as c:
        assert "private_report" not in {tool.name for tool in (await c.list_tools()).tools}
        hidden = await c.call_tool("private_report", {})
        assert hidden.is_error and hidden.content[0].text == "Unknown tool: private_report"  # type: ignore[union-attr]


async def test_runtime_registration_is_private_and_announced_only_to_its_tenant(
    probe: tuple[ServerProcess, Tenants],
) -> None:
    server, t = probe
    seen: dict[str, list[str]] = {"acme": [], "globex": []}

    async def listen(slug: str, ready: anyio.Event) -> None:
        async with mcp_client(server.url, t.keys[slug]) as c, c.listen(tools_list_changed=True) as sub:
            ready.set()
            async for event in sub:
                seen[slug].append(type(event).__name__)

    async with anyio.create_task_group() as tg:
        for slug in seen:
            ready = anyio.Event()
            tg.start_soon(listen, slug, ready)
            await ready.wait()
        async with mcp_client(server.url, t.keys["acme"]) as c:
            assert (await c.call_tool("register_private_tool", {"name": "acme_runtime"})).structured_content
            result = await c.call_tool("acme_runtime", {})
            assert result.structured_content == {"result": "runtime tool of acme, made by acme"}
        with anyio.fail_after(5):
            while not seen["acme"]:
                await anyio.sleep(0.05)
        await anyio.sleep(0.3)  # give a misrouted event time to arrive
        tg.cancel_scope.cancel()
    assert seen["acme"] == ["ToolsListChanged"]
    assert seen["globex"] == []
    async with mcp_client(server.url, t.keys["globex"]) as c:
        assert "acme_runtime" not in {tool.name for tool in (await c.list_tools()).tools}
        assert (await c.call_tool("acme_runtime", {})).is_error


async def test_resource_updates_reach_only_the_publishing_tenant(
    probe: tuple[ServerProcess, Tenants],
) -> None:
    server, t = probe
    uri = "items://1"
    seen: dict[str, list[str]] = {"acme": [], "globex": []}

    async def listen(slug: str, ready: anyio.Event) -> None:
        async with mcp_client(server.url, t.keys[slug]) as c, c.listen(resource_subscriptions=[uri]) as sub:
            ready.set()
            async for event in sub:
                seen[slug].append(getattr(event, "uri", type(event).__name__))

    async with anyio.create_task_group() as tg:
        for slug in seen:
            ready = anyio.Event()
            tg.start_soon(listen, slug, ready)
            await ready.wait()
        async with mcp_client(server.url, t.keys["globex"]) as c:
            await c.call_tool("touch_resource", {"uri": uri})
        with anyio.fail_after(5):
            while not seen["globex"]:
                await anyio.sleep(0.05)
        await anyio.sleep(0.3)
        tg.cancel_scope.cancel()
    assert seen == {"acme": [], "globex": [uri]}


async def test_legacy_resource_subscriptions_are_per_tenant(probe: tuple[ServerProcess, Tenants]) -> None:
    server, t = probe
    uri = "items://7"
    seen: dict[str, list[str]] = {"acme": [], "globex": []}

    def handler(slug: str) -> Any:
        async def on_message(message: Any) -> None:
            root = getattr(message, "root", message)
            if getattr(root, "method", None) == "notifications/resources/updated":
                seen[slug].append(str(root.params.uri))

        return on_message

    async with (
        mcp_client(server.url, t.keys["acme"], mode="legacy", message_handler=handler("acme")) as a,
        mcp_client(server.url, t.keys["globex"], mode="legacy", message_handler=handler("globex")) as b,
    ):
        await a.subscribe_resource(uri)
        await b.subscribe_resource(uri)
        with pytest.raises(MCPError) as hidden:
            await b.subscribe_resource("nowhere://1")
        assert hidden.value.error.message == "Unknown resource: nowhere://1"
        await a.call_tool("touch_resource", {"uri": uri})
        with anyio.fail_after(5):
            while not seen["acme"]:
                await anyio.sleep(0.05)
        await anyio.sleep(0.3)
        assert seen == {"acme": [uri], "globex": []}
        await a.unsubscribe_resource(uri)
        await a.call_tool("touch_resource", {"uri": uri})
        await anyio.sleep(0.3)
        assert seen["acme"] == [uri]
