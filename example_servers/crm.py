"""A server that wraps other APIs as each tenant: a per-tenant API key (`ctx.secrets`) for a
weather service and an OAuth connection (`ctx.connections`) to a CRM, one per person.

Try it on one machine with the test suite's small OAuth provider standing in for the CRM::

    export TENANT_MCP_SECRET_KEY=$(tenant-mcp secret new-key)
    tenant-mcp demo --port 8000 &              # creates acme and globex, prints their keys; Ctrl-C later
    echo "acme-weather-key-123" | tenant-mcp secret set acme weather_api_key
    UPSTREAM_REDIRECT_URI=http://127.0.0.1:8001/connections/callback \\
        uvicorn tests.servers.upstream:app --port 9100 &
    CRM_URL=http://localhost:9100 CRM_CLIENT_ID=tenant-mcp-test CRM_CLIENT_SECRET=upstream-client-secret-9f2c \\
        tenant-mcp serve example_servers.crm:app --port 8001

Then call `crm_me` with acme's key: the answer carries a connect link; open it, paste the key,
and the provider signs you in (the test provider reads the cookie `upstream_user`).
"""

from __future__ import annotations

import os

from tenant_mcp import TenantContext, TenantMCP

CRM_URL = os.environ.get("CRM_URL", "https://crm.example.com")

app = TenantMCP("crm", instructions="Contacts from the tenant's CRM, as the person asking.")

app.connection(
    "crm",
    title="Example CRM",
    authorize_url=f"{CRM_URL}/authorize",
    token_url=f"{CRM_URL}/token",
    client_id=os.environ.get("CRM_CLIENT_ID", "tenant-mcp-example"),
    client_secret=os.environ.get("CRM_CLIENT_SECRET"),  # from the environment, never in code
    scopes=["contacts.read"],
    per="principal",  # each person connects their own account; nobody acts with an admin's token
    api_base_url=CRM_URL,  # the token is sent to this origin only
)


@app.tool()
async def crm_me(ctx: TenantContext) -> str:
    """Who the CRM says you are (connects the CRM first, with a link, if needed)."""
    async with ctx.connections.client("crm") as http:
        response = await http.get("/api/whoami")
        response.raise_for_status()
        return str(response.json()["user"])


@app.tool()
async def weather_quota(ctx: TenantContext) -> str:
    """Whether the tenant's weather API key is set (the key itself is never shown)."""
    key = await ctx.secrets.get("weather_api_key")
    return f"the weather key of {ctx.tenant.name} is set ({len(key)} characters)"
