"""`TenantContext`: what a tool, resource or prompt function receives.

It is the SDK's `Context` (progress, logging, elicitation, nested reads all work as documented
there) plus the caller's tenant, principal and tenant-bound database. Annotate a parameter with
it and the framework fills it in; it never appears in an input schema.
"""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import Context

from tenant_mcp import _sdk
from tenant_mcp.audit.leakguard import Markers
from tenant_mcp.errors import required
from tenant_mcp.models import Principal, Tenant
from tenant_mcp.secrets import TenantSecrets
from tenant_mcp.storage import TenantDatabase


class TenantContext(Context[Any, Any]):
    _tenant: Tenant
    _principal: Principal
    _db: TenantDatabase | None
    _markers: Markers | None
    _secrets: TenantSecrets | None

    @classmethod
    def _bind(
        cls,
        base: Context[Any, Any],
        tenant: Tenant,
        principal: Principal,
        db: TenantDatabase | None,
        markers: Markers | None = None,
        secrets: TenantSecrets | None = None,
    ) -> TenantContext:
        ctx = cls(**_sdk.context_fields(base))
        ctx._tenant = tenant
        ctx._principal = principal
        ctx._db = db
        ctx._markers = markers
        ctx._secrets = secrets
        return ctx

    @property
    def tenant(self) -> Tenant:
        """The caller's tenant, decided by the server from the credential. Never from arguments."""
        return self._tenant

    @property
    def principal(self) -> Principal:
        return self._principal

    @property
    def db(self) -> TenantDatabase:
        """The caller's tenant database; see `tenant_mcp.storage`."""
        return required(self._db, "this server has no tenant database configured")

    @property
    def secrets(self) -> TenantSecrets:
        """The caller's tenant's secrets (`await ctx.secrets.get(name)`); see `tenant_mcp.secrets`."""
        return required(self._secrets, "the server is not running")

    @property
    def markers(self) -> Markers:
        """Register identifiers of this tenant for the outbound leak guard; see `tenant_mcp.audit.leakguard`."""
        return required(self._markers, "the server is not running")
