"""The server under test: the notes example, configured by the harness through the environment.

`tenant-mcp serve bench.servers:app` imports this in the server process, so each variant is its
own process and nothing here leaks into another variant:

- `BENCH_AUDIT=0`: `audit=False` (routine audit events off).
- `BENCH_GUARD=0`: the outbound leak guard off.
- `BENCH_PRIVATE=N:K`: `K` private tools for the tenant `bench` and for each of `tenant-00001` ..
  `tenant-N` (registered before serving, as `app.tenant(slug).add_tool` does at run time).
- `BENCH_MAX_OPEN=N`: `max_open_databases=N` (the per-tenant connection pool's bound).
- `BENCH_LIMITS={"rate": "40/second", ...}`: these `Limits` for every plan (`bench.limits`).
- `BENCH_HOLD=0`: refusals at the gate answered at once, not held back until a slot frees (to
  show what holding them back buys; not a setting of the framework).

It also adds `write_row`, a tool that writes one row through `ctx.db`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable

import tenant_mcp.limits
from example_servers.notes import app
from tenant_mcp import TenantContext, new_id
from tenant_mcp.limits import Limits

app.audit = os.environ.get("BENCH_AUDIT", "1") != "0"
if os.environ.get("BENCH_GUARD", "1") == "0":
    app.leak_guard = None
if "BENCH_MAX_OPEN" in os.environ:
    app.max_open_databases = int(os.environ["BENCH_MAX_OPEN"])
if "BENCH_LIMITS" in os.environ:
    app.limits = {"*": Limits(**json.loads(os.environ["BENCH_LIMITS"]))}
if os.environ.get("BENCH_HOLD", "1") == "0":
    tenant_mcp.limits._HOLD_MAX = 0


@app.tool()
async def write_row(ctx: TenantContext) -> dict[str, int]:
    """Write one row into the caller's database."""
    note_id = new_id()
    await ctx.db.execute("INSERT INTO notes (id, title, body) VALUES (?, 'bench', '')", (note_id,))
    return {"id": note_id}


def _private_tool(index: int) -> Callable[[str], Awaitable[str]]:
    async def private_tool(text: str) -> str:
        """A tenant's own tool."""
        return text

    private_tool.__name__ = f"private_{index:02d}"
    return private_tool


def _register_private(tenants: int, tools: int) -> None:
    # The same K functions for every tenant, as a platform offering per-tenant integrations would.
    functions = [_private_tool(i) for i in range(tools)]
    for slug in ["bench", *(f"tenant-{i:05d}" for i in range(1, tenants + 1))]:
        scope = app.tenant(slug)
        for fn in functions:
            scope.add_tool(fn)


if "BENCH_PRIVATE" in os.environ:
    _tenants, _, _tools = os.environ["BENCH_PRIVATE"].partition(":")
    _register_private(int(_tenants), int(_tools))
