"""Per-tenant tools built from one function share the SDK's build but keep their own names."""

from __future__ import annotations

from tenant_mcp import TenantMCP


async def echo(text: str) -> str:
    """Echo the text."""
    return text


def test_same_function_for_many_tenants_shares_the_build() -> None:
    app = TenantMCP("t", database_url="sqlite:///unused.db")
    app.tenant("acme").add_tool(echo)
    app.tenant("globex").add_tool(echo, name="say")
    tools = app._catalogue.tools.private
    acme, globex = tools["acme"]["echo"], tools["globex"]["say"]
    assert (acme.item.name, globex.item.name) == ("echo", "say")
    assert (acme.wire.name, globex.wire.name) == ("echo", "say")
    assert acme.item.fn_metadata is globex.item.fn_metadata  # built once
    assert globex.wire.input_schema == acme.wire.input_schema
    app.tenant("globex").remove_tool("say")
    assert "echo" in app._catalogue.tools.private["acme"]
