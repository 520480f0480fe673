"""A test server with the sharp tools an attacker would love, to prove they stay in their tenant.

- `raw_sql` runs any SQL the caller sends through `ctx.db` (the careless tool every codebase has).
- `search_items` builds its SQL with an f-string (the injection every codebase has once).
- `write_then_fail` writes a row and then raises: nothing of it may persist.
- `slow_echo` sleeps and reports progress, to interleave concurrent calls of two tenants.
- `touch_resource` publishes a resource-updated event for the caller's tenant.
- `register_private_tool` adds a tool for the caller's tenant only, at run time.
- acme and globex each have a private tool called `private_report` (same name, different code).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Annotated, Any

from pydantic import BaseModel, Field

from tenant_mcp import TenantContext, TenantMCP, new_id

app = TenantMCP("probe")
app.migrations(["CREATE TABLE items (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, value TEXT NOT NULL)"])


@app.tool()
async def whoami(ctx: TenantContext) -> dict[str, Any]:
    return {
        "tenant": ctx.tenant.slug,
        "subject": ctx.principal.subject,
        "scopes": sorted(ctx.principal.scopes),
    }


@app.tool()
async def add_item(value: str, ctx: TenantContext) -> int:
    return await ctx.db.insert("items", {"id": new_id(), "owner": ctx.tenant.slug, "value": value})


@app.tool()
async def raw_sql(sql: str, ctx: TenantContext) -> list[dict[str, Any]]:
    """Deliberately careless: runs whatever SQL it is given."""
    if sql.lstrip().lower().startswith(("select", "with", "pragma")):
        return await ctx.db.fetch_all(sql)
    result = await ctx.db.execute(sql)
    return [{"rowcount": result.rowcount}]


@app.tool()
async def search_items(term: str, ctx: TenantContext) -> list[dict[str, Any]]:
    """Deliberately injectable: the argument is formatted into the SQL."""
    return await ctx.db.fetch_all(f"SELECT id, value FROM items WHERE value LIKE '%{term}%'")


@app.tool()
async def write_then_fail(value: str, ctx: TenantContext) -> None:
    await ctx.db.insert("items", {"id": new_id(), "owner": ctx.tenant.slug, "value": value})
    raise RuntimeError("crashed after writing")


@app.tool()
async def partial_transaction(value: str, ctx: TenantContext) -> int:
    """The inner transaction fails and is caught: its write is undone, the outer one kept."""
    await ctx.db.insert("items", {"id": new_id(), "owner": ctx.tenant.slug, "value": value + ":kept"})
    try:
        async with ctx.db.transaction():
            await ctx.db.insert(
                "items", {"id": new_id(), "owner": ctx.tenant.slug, "value": value + ":undone"}
            )
            raise ValueError("inner failure")
    except ValueError:
        pass
    return 1


@app.tool()
async def slow_echo(
    token: str, steps: Annotated[int, Field(ge=0, le=100)], ctx: TenantContext
) -> dict[str, Any]:
    for i in range(steps):
        await ctx.report_progress(i + 1, steps, f"{ctx.tenant.slug}:{token}")
        await asyncio.sleep(0.01)
    return {"tenant": ctx.tenant.slug, "token": token}


@app.tool()
async def touch_resource(uri: str, ctx: TenantContext) -> str:
    await ctx.notify_resource_updated(uri)
    return "ok"


@app.tool()
async def register_private_tool(name: str, ctx: TenantContext) -> str:
    slug = ctx.tenant.slug

    async def private(ctx: TenantContext) -> str:
        return f"runtime tool of {ctx.tenant.slug}, made by {slug}"

    app.tenant(slug).add_tool(private, name=name)
    return name


@app.resource("items://{item_id}")
async def item(item_id: str, ctx: TenantContext) -> str:
    row = await ctx.db.fetch_one("SELECT value FROM items WHERE id = ?", (int(item_id),))
    if row is None:
        raise ValueError(f"no item {item_id}")
    return str(row["value"])


@app.prompt(plans=["pro"])
async def pro_prompt(topic: str, ctx: TenantContext) -> str:
    return f"pro prompt about {topic} for {ctx.tenant.slug}"


async def acme_report(ctx: TenantContext) -> str:
    return "acme private report"


async def globex_report(ctx: TenantContext) -> str:
    return "globex private report"


app.tenant("acme").add_tool(acme_report, name="private_report")
app.tenant("globex").add_tool(globex_report, name="private_report")


@app.tool()
async def transfer(account_id: str, ctx: TenantContext) -> str:
    """Declares `account_id` itself: a declared parameter is the tool's business, not an override."""
    return f"{ctx.tenant.slug}:{account_id}"


class Transfer(BaseModel):
    account_id: str
    amount: int


@app.tool()
async def transfer_many(transfers: list[Transfer], ctx: TenantContext) -> list[str]:
    """Declares `account_id` in a nested object: declared anywhere in the schema is declared."""
    return [f"{ctx.tenant.slug}:{t.account_id}:{t.amount}" for t in transfers]


@app.tool()
async def secret_fingerprint(name: str, ctx: TenantContext) -> str:
    """Uses a secret without showing it: the first hex digits of its SHA-256."""
    return hashlib.sha256((await ctx.secrets.get(name)).encode()).hexdigest()[:12]


@app.tool()
async def reveal_secret(name: str, ctx: TenantContext) -> str:
    """The careless tool: puts the secret into its answer (the leak guard must withhold it)."""
    return "the value is " + await ctx.secrets.get(name)
