"""`TenantContext`: what a tool, resource or prompt function receives.

It is the SDK's `Context` (progress, logging, elicitation, nested reads all work as documented
there) plus the caller's tenant, principal and the tenant-bound services: `ctx.db`, `ctx.secrets`,
`ctx.connections`, `ctx.markers`. Annotate a parameter with it and the framework fills it in; it never appears in an
input schema. The services are made on first use, so a tool that uses none pays for none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver import Context

from tenant_mcp import _sdk
from tenant_mcp.audit.leakguard import Markers
from tenant_mcp.connections.tenant import TenantConnections
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
    connections: TenantConnections | None = None
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
        # Into the instance's own dict, not pydantic's private store: read on every `ctx.tenant`,
        # `ctx.db`..., it is then a plain attribute (30 ns) rather than a `__getattr__` (1.3 us).
        object.__setattr__(ctx, "_tenancy", _Tenancy(tenant, principal, runtime))
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

    def _withhold(self, rt: Runtime) -> Callable[[str], None]:
        """Makes a value a secret of the caller's tenant: withheld from every response."""
        guard, tenant_id = rt.leak_guard, self._tenancy.tenant.id
        return (lambda value: guard.add_secret(tenant_id, value)) if guard else _ignore

    @property
    def secrets(self) -> TenantSecrets:
        """The caller's tenant's secrets (`await ctx.secrets.get(name)`); see `tenant_mcp.secrets`."""
        t = self._tenancy
        if t.secrets is None:
            rt = t.running()
            t.secrets = TenantSecrets(rt.secrets, t.tenant.id, t.tenant.slug, self._withhold(rt))
        return t.secrets

    @property
    def connections(self) -> TenantConnections:
        """The caller's upstream connections (`await ctx.connections.token(name)`,
        `ctx.connections.client(name)`); see `tenant_mcp.connections`."""
        t = self._tenancy
        if t.connections is None:
            rt = t.running()
            if rt.connections is None:
                raise TenantMCPError("this server declares no connections (app.connection(...))")
            t.connections = TenantConnections(
                rt.connections, t.tenant, t.principal, self._withhold(rt), self._url_elicitation
            )
        return t.connections

    def _url_elicitation(self) -> bool:
        """Whether the calling client declared URL-mode elicitation (a connect link is then one)."""
        try:
            capabilities = self.client_capabilities
        except (AttributeError, RuntimeError, ValueError):
            return False
        elicitation = capabilities.elicitation if capabilities is not None else None
        return elicitation is not None and elicitation.url is not None

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
