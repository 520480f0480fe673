"""tenant_mcp: multi-tenant MCP servers on the official SDK.

Every request is authenticated to exactly one tenant; every tool, resource, template and prompt
is scoped to it; the tenant is injected by the server, never taken from the client or the model;
and `ctx.db` keeps each tenant's rows in that tenant's own database.
"""

from tenant_mcp.admin import Admin
from tenant_mcp.app import TenantMCP, TenantScope
from tenant_mcp.auth.jwt import JWTSettings
from tenant_mcp.context import TenantContext
from tenant_mcp.errors import AuthenticationError, ConfigurationError, NotFoundError, TenantMCPError
from tenant_mcp.limits import Limits
from tenant_mcp.models import Principal, Tenant
from tenant_mcp.scoping.catalogue import CatalogueItem
from tenant_mcp.storage import ConstraintError, Result, TenantDatabase, new_id
from tenant_mcp.storage.gateway import FULL_TEXT_SEARCH, SQLAllowList
from tenant_mcp.transports.http import HTTPOptions

__all__ = [
    "FULL_TEXT_SEARCH",
    "Admin",
    "AuthenticationError",
    "CatalogueItem",
    "ConfigurationError",
    "ConstraintError",
    "HTTPOptions",
    "JWTSettings",
    "Limits",
    "NotFoundError",
    "Principal",
    "Result",
    "SQLAllowList",
    "Tenant",
    "TenantContext",
    "TenantDatabase",
    "TenantMCP",
    "TenantMCPError",
    "TenantScope",
    "new_id",
]
