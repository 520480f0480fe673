"""`TenantContext`: what a tool, resource or prompt function receives.

It is the SDK's `Context` (progress, logging, elicitation, nested reads all work as documented
there) plus the caller's tenant, principal and the tenant-bound services: `ctx.db`, `ctx.secrets`,
`ctx.markers`. Annotate a parameter with it and the framework fills it in; it never appears in an
input schema. The services are made on first use, so a tool that uses none pays for none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver import Context

from tenant_mcp import _sdk
from tenant_mcp.audit.leakguard import Markers
from tenant_mcp.errors import TenantMCPError, required
from tenant_mcp.models import Principal, Tenant
from tenant_mcp.secrets import TenantSecrets
from tenant_mcp.storage import TenantDatabase

if TYPE_CHECKING:
    from tenant_mcp.runtime import Runtime


def _ignore(value: str) -> None:
    """Without a leak guard there is nothing to register a secret with."""


@dataclass(slots=True)
class _Tenancy:
    """The caller and its services for one handler (one pydantic private attribute, not six)."""

    tenant: Tenant
    principal: Principal
    runtime: Runtime | None
    db: TenantDatabase | None = None
    markers: Markers | None = None
    secrets: TenantSecrets | None = None
    finished: bool = False  # the handler returned: no new unit of work may start from this context

    def running(self) -> Runtime:
        return required(self.runtime, "the server is not running")


class TenantContext(Context[Any, Any]):
    _tenancy: _Tenancy

    @classmethod
    def _bind(
        cls, base: Context[Any, Any], tenant: Tenant, principal: Principal, runtime: Runtime | None
    ) -> TenantContext:
        ctx = _sdk.derive_context(cls, base)
        ctx._tenancy = _Tenancy(tenant, principal, runtime)
        return ctx

    @property
    def tenant(self) -> Tenant:
        """The caller's tenant, decided by the server from the credential. Never from arguments."""
        return self._tenancy.tenant

    @property
    def principal(self) -> Principal:
        return self._tenancy.principal

    @property
    def db(self) -> TenantDatabase:
        """The caller's tenant database; see `tenant_mcp.storage`."""
        t = self._tenancy
        if t.db is None:
            if t.runtime is None:
                raise TenantMCPError("this server has no tenant database configured")
            if t.finished:  # a task the handler left behind: its call has ended, and with it ctx.db
                raise TenantMCPError("ctx.db was used after its call ended")
            t.db = t.runtime.store.database(t.tenant.id)
        return t.db

    @property
    def secrets(self) -> TenantSecrets:
        """The caller's tenant's secrets (`await ctx.secrets.get(name)`); see `tenant_mcp.secrets`."""
        t = self._tenancy
        if t.secrets is None:
            rt, tenant_id = t.running(), t.tenant.id
            guard = rt.leak_guard
            withhold = (lambda value: guard.add_secret(tenant_id, value)) if guard else _ignore
            t.secrets = TenantSecrets(rt.secrets, tenant_id, t.tenant.slug, withhold)
        return t.secrets

    @property
    def markers(self) -> Markers:
        """Register identifiers of this tenant for the outbound leak guard; see `tenant_mcp.audit.leakguard`."""
        t = self._tenancy
        if t.markers is None:
            rt = t.running()
            t.markers = Markers(rt.leak_guard, rt.control_plane, t.tenant.id)
        return t.markers

    async def _finish(self, *, commit: bool) -> str | None:
        """End the handler's unit of work (commit or roll back) if it used the database; the
        gateway's refusal, if any, for the audit trail (recorded even when the tool caught it)."""
        self._tenancy.finished = True
        db = self._tenancy.db
        if db is None:
            return None
        await db._finish(commit=commit)
        return db.refusal
