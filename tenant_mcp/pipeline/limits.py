"""The step that admits a request under its tenant's limits (rates, concurrency, quotas), or
refuses it before the handler runs; what it holds (a concurrency slot) is released after."""

from __future__ import annotations

from tenant_mcp.call import Call
from tenant_mcp.limits import Limiter
from tenant_mcp.pipeline.step import Next, Result


class Admit:
    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter

    async def __call__(self, call: Call, call_next: Next) -> Result:
        async with await self._limiter.admit(call):
            return await call_next()
