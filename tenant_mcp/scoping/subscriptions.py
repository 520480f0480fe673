"""Change notifications that reach only the tenant they belong to.

The SDK's `MCPServer` fans `ctx.notify_*()` events out through one global bus to every
`subscriptions/listen` stream, so tenant A's "resource updated" would reach tenant B. This bus
keeps one in-memory bus per tenant. Both `subscribe` (called by the listen handler while serving
a tenant's request) and `publish` (called from a tenant's tool) pick the bus from the current
request's tenant; with no tenant there is nothing to pick, and they refuse rather than broadcast.

With several replicas a relay (`tenant_mcp.replication.redis.Broker`) carries each published event to the
other replicas, which hand it to `deliver` for the same tenant; the relay is told which tenants
have local listeners so it only receives what someone here is listening for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.subscriptions import ServerEvent

from tenant_mcp.call import current_call
from tenant_mcp.errors import TenantMCPError
from tenant_mcp.models import Tenant


class EventRelay(Protocol):
    """Carries a tenant's events between replicas."""

    async def publish_event(self, tenant_id: str, event: ServerEvent) -> None: ...

    def watch(self, tenant_id: str) -> None: ...

    def unwatch(self, tenant_id: str) -> None: ...

    async def settled(self, tenant_id: str) -> None: ...


@dataclass
class _Local:
    slug: str
    bus: InMemorySubscriptionBus = field(default_factory=InMemorySubscriptionBus)
    listeners: int = 0


def _ignore(event: ServerEvent) -> None:
    pass


class TenantSubscriptionBus:
    def __init__(self) -> None:
        self._tenants: dict[str, _Local] = {}  # tenant id -> its listeners in this process
        self.relay: EventRelay | None = None  # set while serving with Redis

    @staticmethod
    def _tenant() -> Tenant:
        call = current_call()
        if call is None:
            raise TenantMCPError("notifications need a tenant: publish from inside a request")
        return call.tenant

    async def publish(self, event: ServerEvent) -> None:
        tenant_id = self._tenant().id
        await self.deliver(tenant_id, event)
        if self.relay is not None:
            await self.relay.publish_event(tenant_id, event)

    async def deliver(self, tenant_id: str, event: ServerEvent) -> None:
        """Hand `event` to the tenant's listeners in this process."""
        local = self._tenants.get(tenant_id)
        if local is not None:
            await local.bus.publish(event)

    def listening(self) -> list[str]:
        """Ids of the tenants with listeners in this process."""
        return list(self._tenants)

    async def announce(self, tenant_slug: str, event: ServerEvent) -> None:
        """A change of this process's own catalogue (a run-time registration), for the tenant's
        listeners here; other replicas have catalogues of their own."""
        for local in [t for t in self._tenants.values() if t.slug == tenant_slug]:
            await local.bus.publish(event)

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        tenant = self._tenant()
        local = self._tenants.setdefault(tenant.id, _Local(tenant.slug))
        local.listeners += 1
        unsubscribe = local.bus.subscribe(listener)
        relay = self.relay
        if relay is not None:
            relay.watch(tenant.id)
        done = False

        def release() -> None:
            nonlocal done
            if done:
                return
            done = True
            unsubscribe()
            if relay is not None:
                relay.unwatch(tenant.id)
            local.listeners -= 1
            if not local.listeners:  # idle tenants hold nothing
                del self._tenants[tenant.id]

        return release

    async def hold(self) -> Callable[[], None]:
        """Keep the current tenant subscribed, and wait until events from other replicas can
        arrive; returns the release. A listen stream takes this before its acknowledgement, so
        an event published right after the client sees the ack is not lost."""
        release = self.subscribe(_ignore)
        if self.relay is not None:
            try:
                await self.relay.settled(self._tenant().id)
            except BaseException:
                release()
                raise
        return release
