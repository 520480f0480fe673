"""A deliberately buggy server (tests only): a bounded "recent activity" list shared by all tenants.

`log_event` appends to one module-level deque of 5 entries and `recent_activity` returns it
(BUG: neither keeps tenants apart). Another tenant's entries are visible only until 5 newer events
push them out, so a probe that writes a few times before it reads sees nothing but its own.
"""

from __future__ import annotations

from collections import deque

from tenant_mcp import TenantContext, TenantMCP

app = TenantMCP("recent")
_recent: deque[tuple[str, str]] = deque(maxlen=5)


@app.tool()
async def log_event(text: str, ctx: TenantContext) -> str:
    _recent.append((ctx.tenant.id, text))
    return "logged"


@app.tool()
async def recent_activity(ctx: TenantContext) -> list[str]:
    return [text for _, text in _recent]  # BUG: every tenant's recent events
