"""Per-tenant items and notifications: what is registered for, or happens in, one tenant never
reaches another."""

from __future__ import annotations

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from tests.helpers import ServerProcess, Tenants, legacy_subscribers, listening, mcp_client, until

pytestmark = pytest.mark.anyio


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
    listeners = {slug: (server.url, t.keys[slug]) for slug in ("acme", "globex")}
    async with listening(listeners, tools_list_changed=True) as seen:
        async with mcp_client(server.url, t.keys["acme"]) as c:
            assert (await c.call_tool("register_private_tool", {"name": "acme_runtime"})).structured_content
            result = await c.call_tool("acme_runtime", {})
            assert result.structured_content == {"result": "runtime tool of acme, made by acme"}
        await until(lambda: seen["acme"], then=0.3)  # then: give a misrouted event time to arrive
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
    listeners = {slug: (server.url, t.keys[slug]) for slug in ("acme", "globex")}
    async with listening(listeners, resource_subscriptions=[uri]) as seen:
        async with mcp_client(server.url, t.keys["globex"]) as c:
            await c.call_tool("touch_resource", {"uri": uri})
        await until(lambda: seen["globex"], then=0.3)
    assert seen == {"acme": [], "globex": [uri]}


async def test_legacy_resource_subscriptions_are_per_tenant(probe: tuple[ServerProcess, Tenants]) -> None:
    server, t = probe
    uri = "items://7"
    keys = {slug: t.keys[slug] for slug in ("acme", "globex")}
    async with legacy_subscribers(server.url, keys, uri) as (clients, seen):
        a, b = clients["acme"], clients["globex"]
        with pytest.raises(MCPError) as hidden:
            await b.subscribe_resource("nowhere://1")
        assert hidden.value.error.message == "Unknown resource: nowhere://1"
        await a.call_tool("touch_resource", {"uri": uri})
        await until(lambda: seen["acme"], then=0.3)
        assert seen == {"acme": [uri], "globex": []}
        await a.unsubscribe_resource(uri)
        await a.call_tool("touch_resource", {"uri": uri})
        await anyio.sleep(0.3)
        assert seen["acme"] == [uri]
