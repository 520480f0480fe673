"""The control plane: tenants, API keys, audit events and OAuth state, in one database.

`schema` describes tables and renders them as SQLite or PostgreSQL DDL; `tables` declares the
control plane's tables and migration history with it; `store` is `ControlPlane`, the async access
to them.
"""

from tenant_mcp.controlplane.store import (
    DEFAULT_DATABASE_URL,
    ITEM_KINDS,
    SLUG_RE,
    AuditEvent,
    ControlPlane,
    ItemState,
    KeyRecord,
    item_key,
)
from tenant_mcp.controlplane.tables import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS

__all__ = [
    "DEFAULT_DATABASE_URL",
    "ITEM_KINDS",
    "POSTGRES_MIGRATIONS",
    "SLUG_RE",
    "SQLITE_MIGRATIONS",
    "AuditEvent",
    "ControlPlane",
    "ItemState",
    "KeyRecord",
    "item_key",
]
