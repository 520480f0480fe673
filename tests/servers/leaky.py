"""A deliberately leaky server (tests only, never shipped): the mistakes scoping cannot stop.

- `profile_cached` keeps a module-level cache keyed without the tenant;
- `remember`/`recall` keep notes in a module-level list and forget to filter on the tenant;
- `shared_search` reads every tenant's database file directly, outside `ctx.db`;
- `search_memory` echoes the caller's query next to every tenant's notes;
- `strict_lookup` fails with every tenant's notes in the error's data.
The leak guard and the isolation kit must catch all five; `echo` only reflects the caller's own text,
which is never a leak.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from tenant_mcp import TenantContext, TenantMCP

app = TenantMCP("leaky", leak_guard=os.environ.get("LEAKY_POLICY", "block"))  # type: ignore[arg-type]
app.migrations(["CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"])
_profile_cache: dict[str, Any] = {}
_memory: list[tuple[str, str]] = []


@app.tool()
async def profile_cached(ctx: TenantContext) -> dict[str, Any]:
    """BUG: the cache key forgets the tenant."""
    if "profile" not in _profile_cache:
        _profile_cache["profile"] = {"name": ctx.tenant.name, "plan": ctx.tenant.plan}
    return _profile_cache["profile"]


@app.tool()
async def register_account(account: str, ctx: TenantContext) -> str:
    await ctx.markers.add(account)
    return "registered"


@app.tool()
async def remember(text: str, ctx: TenantContext) -> str:
    _memory.append((ctx.tenant.id, text))
    return "ok"


@app.tool()
async def recall(ctx: TenantContext) -> list[str]:
    """BUG: returns every tenant's memories."""
    return [text for _, text in _memory]


@app.tool()
async def search_memory(query: str, ctx: TenantContext) -> dict[str, Any]:
    """BUG: the matches ignore the tenant (the query itself is the caller's own text)."""
    return {"query": query, "matches": [text for _, text in _memory]}


@app.tool()
async def strict_lookup(key: str, ctx: TenantContext) -> str:
    """BUG: the error's details carry every tenant's notes."""
    raise MCPError(
        code=INVALID_PARAMS, message=f"no entry {key}", data={"known": [text for _, text in _memory]}
    )


@app.tool()
async def own_recall(ctx: TenantContext) -> list[str]:
    return [text for tenant, text in _memory if tenant == ctx.tenant.id]


@app.tool()
async def shared_search(ctx: TenantContext) -> list[str]:
    """BUG: a 'search index' over every tenant's file, outside ctx.db."""
    data_dir = Path(app.database_url[len("sqlite:///") :]).with_name(Path(app.database_url).stem + "_data")
    found = []
    for path in sorted(data_dir.glob("*.sqlite3")):
        with sqlite3.connect(path) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "tenant_mcp_canaries" in tables:
                found += [row[0] for row in conn.execute("SELECT value FROM tenant_mcp_canaries")]
    return found


@app.tool()
async def echo(text: str, ctx: TenantContext) -> str:
    return text
