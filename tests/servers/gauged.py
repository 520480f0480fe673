"""The probe server with `hold_db`: a call that keeps its tenant's `ctx.db` connection for a while,
so a metrics scrape can see a connection in use."""

from __future__ import annotations

import asyncio

from tenant_mcp import TenantContext
from tests.servers.probe import app

__all__ = ["app"]


@app.tool()
async def hold_db(seconds: float, ctx: TenantContext) -> int:
    row = await ctx.db.fetch_one("SELECT count(*) AS n FROM items")
    await asyncio.sleep(seconds)  # the call holds its connection until it ends
    return int(row["n"]) if row else 0
