"""The two facts every request carries: which tenant, and who inside it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

TenantStatus = Literal["active", "suspended"]
AuthMethod = Literal["api_key", "jwt", "oauth"]


@dataclass(frozen=True, slots=True)
class Tenant:
    """A customer of the server. `id` is internal and stable; `slug` is the name people type."""

    id: str
    slug: str
    name: str
    plan: str
    status: TenantStatus
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    # The tenant's catalogue policy (`tenant-mcp tool enable|disable`): items as "tool:name",
    # "prompt:name", "resource:uri", "template:uri". Disabled ones are missing for the tenant;
    # enabled ones are the opt-in items (`per_tenant=True`) it gets.
    disabled: frozenset[str] = frozenset()
    enabled: frozenset[str] = frozenset()

    @property
    def active(self) -> bool:
        return self.status == "active"

    def public(self) -> dict[str, Any]:
        """What an operator sees of the tenant (listings, exports); its catalogue policy aside."""
        return {
            "id": self.id, "slug": self.slug, "name": self.name, "plan": self.plan,
            "status": self.status, "metadata": self.metadata, "created_at": self.created_at,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, inside exactly one tenant.

    `key_id` is set for API keys and for tokens of the built-in OAuth server (the key that approved
    them), `claims` for JWTs. `client_id` is what sessions are bound to
    together with the tenant and subject, so a second key of the same tenant cannot resume
    another key's session.
    """

    tenant_id: str
    subject: str
    scopes: frozenset[str]
    auth_method: AuthMethod
    client_id: str
    key_id: str | None = None
    issuer: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    # The key's allow-list of items (`key create --tools a,b`); None: everything the tenant sees.
    items: frozenset[str] | None = None

    def has_scopes(self, required: frozenset[str]) -> bool:
        return required <= self.scopes

    @property
    def label(self) -> str:
        """How audit events and logs name the caller: `key:<key id>` or `jwt:<subject>`."""
        return f"key:{self.key_id}" if self.key_id else f"jwt:{self.subject}"
