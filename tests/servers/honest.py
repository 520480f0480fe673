"""An honest server with honest non-determinism (tests only): random ids, timestamps and a dice
roll. Tenants never affect each other; the noninterference check must say so."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError

from tenant_mcp import TenantContext, TenantMCP

app = TenantMCP("honest")
app.migrations(["CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT NOT NULL, at TEXT NOT NULL)"])


@app.tool()
async def add_item(name: str, ctx: TenantContext) -> dict[str, Any]:
    item = {"id": uuid.uuid4().hex, "name": name, "at": datetime.now(UTC).isoformat()}
    await ctx.db.execute("INSERT INTO items (id, name, at) VALUES (:id, :name, :at)", item)
    return item


@app.tool()
async def get_item(item_id: str, ctx: TenantContext) -> dict[str, Any]:
    row = await ctx.db.fetch_one("SELECT id, name, at FROM items WHERE id = ?", (item_id,))
    if row is None:
        raise ToolError(f"no item {item_id}")
    return row


@app.tool()
async def count_items(ctx: TenantContext) -> int:
    """A per-tenant count: the honest version of a shared counter."""
    row = await ctx.db.fetch_one("SELECT count(*) AS n FROM items")
    return int(row["n"]) if row else 0


@app.tool()
async def roll() -> int:
    """A dice roll: different on every call, by nature."""
    return random.randint(1, 6)
