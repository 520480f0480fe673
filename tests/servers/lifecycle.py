"""A test server for calls that outlive themselves and tenants deleted under load.

- `stray` starts a background task that touches `ctx.db` just as the call returns (a common
  mistake): the task must get an error, and the call's connection must go back to the pool.
- `hold` keeps its transaction open for a while (a tool stuck on a slow upstream).
- `add_note` / `count_notes`: ordinary writes and reads, for load and for checks.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tenant_mcp import TenantContext, TenantMCP, new_id

app = TenantMCP("lifecycle")
app.migrations(["CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"])

_strays: set[asyncio.Task[None]] = set()
_outcomes: dict[str, int] = {}


async def _touch(ctx: TenantContext, body: str) -> None:
    try:
        await ctx.db.insert("notes", {"id": new_id(), "body": body})
        outcome = "written"
    except Exception as exc:
        outcome = type(exc).__name__
    _outcomes[outcome] = _outcomes.get(outcome, 0) + 1


@app.tool()
async def stray(body: str, ctx: TenantContext) -> str:
    task = asyncio.create_task(_touch(ctx, body))
    _strays.add(task)
    task.add_done_callback(_strays.discard)
    await asyncio.sleep(0)  # the task starts acquiring; the call returns meanwhile
    return "started"


@app.tool()
async def stray_outcomes(ctx: TenantContext) -> dict[str, Any]:
    await asyncio.sleep(0.2)
    return {"pending": len(_strays), **_outcomes}


@app.tool()
async def hold(seconds: float, ctx: TenantContext) -> str:
    await ctx.db.insert("notes", {"id": new_id(), "body": "held"})
    await asyncio.sleep(seconds)
    return "done"


@app.tool()
async def add_note(body: str, ctx: TenantContext) -> int:
    return await ctx.db.insert("notes", {"id": new_id(), "body": body})


@app.tool()
async def count_notes(ctx: TenantContext) -> int:
    return int(await ctx.db.fetch_value("SELECT count(*) FROM notes"))
