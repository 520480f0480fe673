"""`Runtime`: everything that exists only while the server is serving.

`TenantMCP.running()` builds it once and hands it, explicitly, to whatever serves requests (the
scoped server, the pipeline, the HTTP gate, the OAuth server); nothing reaches back for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tenant_mcp.audit.leakguard import LeakGuard
from tenant_mcp.audit.log import AuditLog
from tenant_mcp.auth.authenticator import Authenticator
from tenant_mcp.auth.invalidation import Invalidation
from tenant_mcp.connections.service import Connections
from tenant_mcp.controlplane import ControlPlane
from tenant_mcp.limits import Limiter
from tenant_mcp.replication.redis import Broker
from tenant_mcp.secrets import SecretStore
from tenant_mcp.storage import DataStore
from tenant_mcp.telemetry import Telemetry


@dataclass(frozen=True)
class Runtime:
    """The serving process's services, shared by every request of every tenant (each one keys
    what it holds by tenant)."""

    control_plane: ControlPlane
    authenticator: Authenticator
    audit: AuditLog
    store: DataStore
    leak_guard: LeakGuard | None
    telemetry: Telemetry
    secrets: SecretStore
    limiter: Limiter  # per-tenant rates, concurrency, sessions and quotas
    broker: Broker | None = None  # with Redis: what this replica shares with the others
    connections: Connections | None = None  # upstream OAuth connections, when any is declared

    async def invalidate(self, invalidation: Invalidation) -> None:
        """Make cached lookups stale here, and on every replica when Redis is configured."""
        if self.broker is not None:
            await self.broker.publish_invalidation(invalidation)
        else:
            self.authenticator.invalidate(invalidation)
