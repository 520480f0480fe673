"""Change notifications that reach only the tenant they belong to.

The SDK's `MCPServer` fans `ctx.notify_*()` events out through one global bus to every
`subscriptions/listen` stream, so tenant A's "resource updated" would reach tenant B. This bus
keeps one in-memory bus per tenant. Both `subscribe` (called by the listen handler while serving
a tenant's request) and `publish` (called from a tenant's tool) pick the bus from the current
request's tenant; with no tenant there is nothing to pick, and they refuse rather than broadcast.
"""

from __future__ import annotations

from collections.abc import Callable

from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.subscriptions import ServerEvent

from tenant_mcp.errors import TenantMCPError
from tenant_mcp.tenancy import current_call


class TenantSubscriptionBus:
    def __init__(self) -> None:
        self._buses: dict[str, InMemorySubscriptionBus] = {}
        self._counts: dict[str, int] = {}

    @staticmethod
    def _tenant() -> str:
        call = current_call()
        if call is None:
            raise TenantMCPError("notifications need a tenant: publish from inside a request")
        return call.tenant.slug

    async def publish(self, event: ServerEvent) -> None:
        await self.publish_to(self._tenant(), event)

    async def publish_to(self, tenant_slug: str, event: ServerEvent) -> None:
        bus = self._buses.get(tenant_slug)
        if bus is not None:
            await bus.publish(event)

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        tenant_id = self._tenant()
        bus = self._buses.setdefault(tenant_id, InMemorySubscriptionBus())
        self._counts[tenant_id] = self._counts.get(tenant_id, 0) + 1
        unsubscribe = bus.subscribe(listener)
        done = False

        def release() -> None:
            nonlocal done
            if done:
                return
            done = True
            unsubscribe()
            self._counts[tenant_id] -= 1
            if not self._counts[tenant_id]:  # idle tenants hold nothing
                del self._counts[tenant_id]
                del self._buses[tenant_id]

        return release
