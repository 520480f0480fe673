"""A server with small subscription caps: 3 per session, 5 per tenant."""

from __future__ import annotations

from tenant_mcp import TenantContext, TenantMCP

app = TenantMCP("capped", max_subscriptions_per_session=3, max_subscriptions_per_tenant=5)


@app.resource("items://{item_id}")
async def item(item_id: str, ctx: TenantContext) -> str:
    return item_id


@app.tool()
async def touch_resource(uri: str, ctx: TenantContext) -> str:
    await ctx.notify_resource_updated(uri)
    return "ok"
