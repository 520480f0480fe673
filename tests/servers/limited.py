"""A server with per-plan limits and a per-tool rate (tests/test_limits.py).

Plans: "tiny" (3 calls a minute, 1 at a time, 2 sessions, 5 calls a day, 2 subscriptions), "pro"
(generous), any other plan unlimited. `limited://{n}` are resources to subscribe to. `slow` holds a call open until its release file appears, so a test can hold
calls in flight; `touch_db` proves by a row whether a refused call ever ran.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio

from tenant_mcp import TenantContext, TenantMCP, new_id
from tenant_mcp.limits import Limits

app = TenantMCP(
    "limited",
    limits={
        "tiny": Limits(rate="3/minute", concurrency=1, sessions=2, daily=5, subscriptions=2),
        "pro": Limits(rate="1000/minute", concurrency=4, sessions=50),
    },
    on_redis_error=os.environ.get("LIMITED_ON_REDIS_ERROR", "fail_closed"),  # type: ignore[arg-type]
    credential_cache_seconds=float(os.environ.get("LIMITED_CACHE_SECONDS", "1")),
)
app.migrations(["CREATE TABLE runs (id INTEGER PRIMARY KEY, tool TEXT NOT NULL)"])


@app.tool()
async def whoami(ctx: TenantContext) -> str:
    return ctx.tenant.slug


@app.tool()
async def touch_db(ctx: TenantContext) -> int:
    await ctx.db.insert("runs", {"id": new_id(), "tool": "touch_db"})
    row = await ctx.db.fetch_one("SELECT count(*) AS n FROM runs")
    return int(row["n"]) if row else 0


@app.tool(rate="2/minute")
async def export(ctx: TenantContext) -> str:
    return f"export of {ctx.tenant.slug}"


@app.tool()
async def slow(release: str, ctx: TenantContext) -> str:
    with anyio.fail_after(20):
        while not Path(release).exists():
            await anyio.sleep(0.02)
    return "done"


@app.tool(rate="1/minute", plans=["pro"])
async def pro_report(ctx: TenantContext) -> str:
    return f"report of {ctx.tenant.slug}"


@app.resource("limited://{n}")
async def numbered(n: str) -> str:
    return f"resource {n}"
