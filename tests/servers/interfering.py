"""Deliberately interfering servers (tests only): no tenant's data reaches another, yet what one
tenant sees depends on what another does. The isolation kit finds none of these; the
noninterference check must find each, with a minimal reproduction.

- `counter`: ticket numbers come from one counter shared by all tenants ("ticket #7" tells B that
  others opened six);
- `handles`: handle names are unique across tenants, so "taken" reveals another tenant's handle;
- `lru`: a global LRU cache of lookups keyed without the tenant answers "cached" to B for a word
  only A looked up;
- `limiter`: a rate limiter keyed without the tenant, so A's searches use up B's allowance;
- `racy`: request state in a module-level variable across an await: only concurrent requests
  see another tenant's name (sequential scripts never do).

Each also has honest tools, so the random scripts must find the bug among them.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError

from tenant_mcp import TenantContext, TenantMCP

counter = TenantMCP("counter")
counter.migrations(["CREATE TABLE tickets (number INTEGER PRIMARY KEY, title TEXT NOT NULL)"])
_numbers = itertools.count(1)


@counter.tool()
async def open_ticket(title: str, ctx: TenantContext) -> dict[str, Any]:
    number = next(_numbers)  # BUG: one counter for every tenant
    await ctx.db.execute("INSERT INTO tickets (number, title) VALUES (?, ?)", (number, title))
    return {"ticket": f"#{number}", "title": title}


@counter.tool()
async def list_tickets(ctx: TenantContext) -> list[dict[str, Any]]:
    return await ctx.db.fetch_all("SELECT number, title FROM tickets ORDER BY number")


@counter.tool()
async def echo(text: str) -> str:
    return text


handles = TenantMCP("handles")
handles.migrations(["CREATE TABLE handles (name TEXT PRIMARY KEY)"])
_taken: set[str] = set()


@handles.tool()
async def claim_handle(name: str, ctx: TenantContext) -> str:
    if name in _taken:  # BUG: unique across tenants
        raise ToolError(f"the handle {name!r} is taken")
    _taken.add(name)
    await ctx.db.execute("INSERT INTO handles (name) VALUES (?)", (name,))
    return f"{name} is yours"


@handles.tool()
async def my_handles(ctx: TenantContext) -> list[str]:
    return [row["name"] for row in await ctx.db.fetch_all("SELECT name FROM handles ORDER BY name")]


lru = TenantMCP("lru")
_cache: OrderedDict[str, int] = OrderedDict()


@lru.tool()
async def lookup(word: str) -> dict[str, Any]:
    """An 'expensive' lookup behind a global LRU cache of 3 entries (BUG: keyed without the tenant)."""
    cached = word in _cache
    if cached:
        _cache.move_to_end(word)
    else:
        _cache[word] = sum(map(ord, word))
        if len(_cache) > 3:
            _cache.popitem(last=False)
    return {"word": word, "score": _cache[word], "cached": cached}


@lru.tool()
async def shout(text: str) -> str:
    return text.upper()


limiter = TenantMCP("limiter")
_calls: list[int] = [0]
_LIMIT = 4


@limiter.tool()
async def search(query: str) -> list[str]:
    """At most 4 searches per server run (BUG: the allowance is shared by all tenants)."""
    _calls[0] += 1
    if _calls[0] > _LIMIT:
        raise ToolError("rate limit exceeded, try again later")
    return [f"result for {query}"]


@limiter.tool()
async def ping() -> str:
    return "pong"


racy = TenantMCP("racy")
_caller: list[str] = [""]


@racy.tool()
async def greet(ctx: TenantContext) -> str:
    _caller[0] = ctx.tenant.name  # BUG: the caller kept in a module-level variable across an await
    await asyncio.sleep(0.01)
    return f"hello {_caller[0]}"


@racy.tool()
async def pong() -> str:
    return "pong"
