"""Upstream connections: tools call other APIs with the tenant's (or the person's) own OAuth
tokens, never one shared token and never the caller's own credential. See docs/connections.md."""

from tenant_mcp.connections.provider import Provider
from tenant_mcp.connections.tenant import ConnectionRequired, TenantConnections

__all__ = ["ConnectionRequired", "Provider", "TenantConnections"]
