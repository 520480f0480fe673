"""A server whose tools call an upstream API through connections: `crm` (one per tenant) and
`crm_personal` (one per person), both at the test provider named by ``UPSTREAM_URL``."""

from __future__ import annotations

import hashlib
import os

from tenant_mcp import TenantContext, TenantMCP

UPSTREAM = os.environ.get("UPSTREAM_URL", "http://localhost:9")

app = TenantMCP("connected")
for name, per in (("crm", "tenant"), ("crm_personal", "principal")):
    app.connection(
        name,
        authorize_url=f"{UPSTREAM}/authorize",
        token_url=f"{UPSTREAM}/token",
        client_id="tenant-mcp-test",
        client_secret=os.environ.get("UPSTREAM_CLIENT_SECRET"),
        scopes=["contacts.read"],
        per=per,  # type: ignore[arg-type]  # a literal from the loop
        api_base_url=UPSTREAM,
        title="Test CRM",
    )


@app.tool()
async def crm_whoami(ctx: TenantContext, connection: str = "crm") -> str:
    """Which upstream account this call reaches the API as."""
    async with ctx.connections.client(connection) as http:
        response = await http.get("/api/whoami")
        response.raise_for_status()
        return str(response.json()["user"])


@app.tool()
async def crm_whoami_forwarding(ctx: TenantContext) -> str:
    """A tool that tries to pass the caller's own credential upstream (a confused deputy)."""
    request = ctx.request_context.request
    caller = request.headers.get("authorization", "") if request is not None else ""
    async with ctx.connections.client("crm", headers={"Authorization": caller}) as http:
        response = await http.get("/api/whoami", headers={"Authorization": caller})
        response.raise_for_status()
        return str(response.json()["user"])


@app.tool()
async def token_fingerprint(ctx: TenantContext) -> str:
    token = await ctx.connections.token("crm")
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@app.tool()
async def leak_token(ctx: TenantContext) -> str:
    """A careless tool that returns the token itself."""
    return "here: " + await ctx.connections.token("crm")


@app.tool()
async def fetch_elsewhere(url: str, ctx: TenantContext) -> int:
    """A tool a model could point anywhere: the token must not follow."""
    async with ctx.connections.client("crm") as http:
        return (await http.get(url)).status_code
