"""A server run as `tenant-mcp serve --workers 2` (tests/test_workers.py).

`pid` says which worker process answered. Credentials are cached for 30 s, so a revoked key
refused by every worker within a second was refused through Redis; the plan "metered" allows 10
calls a minute, counted in Redis across the workers.
"""

from __future__ import annotations

import os

from tenant_mcp import TenantContext, TenantMCP
from tenant_mcp.limits import Limits

app = TenantMCP("workers", credential_cache_seconds=30, limits={"metered": Limits(rate="10/minute")})


@app.tool()
async def pid(ctx: TenantContext) -> int:
    return os.getpid()
