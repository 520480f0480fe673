"""One replica of a server that runs several times behind a load balancer (tests/test_redis.py,
tests/test_replicas.py).

Its credentials are cached for 30 s, so a revoked key that stops working within a second can
only have been stopped by the invalidation that came through Redis, not by the cache expiring.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from pydantic import Field

from tenant_mcp import TenantContext, TenantMCP, new_id

app = TenantMCP("replica", credential_cache_seconds=30)
app.migrations(["CREATE TABLE items (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, value TEXT NOT NULL)"])


@app.tool()
async def add_item(value: str, ctx: TenantContext) -> int:
    return await ctx.db.insert("items", {"id": new_id(), "owner": ctx.tenant.slug, "value": value})


@app.tool()
async def list_items(ctx: TenantContext) -> list[dict[str, Any]]:
    """Deliberately without a tenant filter: the backend must supply it."""
    return await ctx.db.fetch_all("SELECT id, owner, value FROM items ORDER BY id")


@app.tool()
async def whoami(ctx: TenantContext) -> dict[str, Any]:
    return {"tenant": ctx.tenant.slug}


@app.tool()
async def touch_resource(uri: str, ctx: TenantContext) -> str:
    await ctx.notify_resource_updated(uri)
    return "ok"


@app.tool()
async def tools_changed(ctx: TenantContext) -> str:
    await ctx.notify_tools_changed()
    return "ok"


@app.tool()
async def slow_echo(
    token: str, steps: Annotated[int, Field(ge=0, le=100)], ctx: TenantContext
) -> dict[str, Any]:
    for i in range(steps):
        await ctx.report_progress(i + 1, steps, f"{ctx.tenant.slug}:{token}")
        await asyncio.sleep(0.02)
    return {"tenant": ctx.tenant.slug, "token": token}


@app.resource("items://{item_id}")
async def item(item_id: str, ctx: TenantContext) -> str:
    return f"item {item_id} of {ctx.tenant.slug}"
