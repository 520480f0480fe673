"""One replica of a server that runs several times behind a load balancer (tests/test_redis.py).

Its credentials are cached for 30 s, so a revoked key that stops working within a second can
only have been stopped by the invalidation that came through Redis, not by the cache expiring.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from pydantic import Field

from tenant_mcp import TenantContext, TenantMCP

app = TenantMCP("replica", credential_cache_seconds=30)


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
