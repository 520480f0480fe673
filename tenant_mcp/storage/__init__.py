"""Tenant data and the databases behind it.

`ctx.db` (`TenantDatabase`) is the same on every backend. Where the rows live depends on the
database URL: ``sqlite:///…`` gives every tenant its own file (`storage.sqlite`);
``postgresql://…`` keeps all tenants in one database behind row-level security
(`storage.postgres`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from tenant_mcp.errors import ConfigurationError
from tenant_mcp.storage.database import (
    DEFAULT_HOLD_SECONDS,
    Admit,
    PoolUsage,
    Result,
    TenantDatabase,
    new_id,
)
from tenant_mcp.storage.sql import ConstraintError

__all__ = [
    "DEFAULT_HOLD_SECONDS",
    "Admit",
    "ConstraintError",
    "DataStore",
    "PoolUsage",
    "Result",
    "TenantDatabase",
    "is_postgres",
    "new_id",
    "open_store",
]


class DataStore(Protocol):
    """Where tenant data lives: hands out `ctx.db` objects and serves the CLI and test kit."""

    def database(self, tenant_id: str) -> TenantDatabase: ...
    async def drop(self, tenant_id: str) -> None: ...
    async def export(self, tenant_id: str) -> dict[str, list[dict[str, Any]]]: ...
    async def plant_canary(self, tenant_id: str, value: str) -> None: ...
    def usage(self) -> PoolUsage: ...
    async def aclose(self) -> None: ...


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def sqlite_path(url: str) -> Path:
    """The file behind a ``sqlite:///relative`` or ``sqlite:////absolute`` URL."""
    if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
        raise ConfigurationError(
            f"unsupported database URL {url!r}: expected sqlite:///path/to/file.db or postgresql://user@host/db"
        )
    return Path(url[len("sqlite:///") :])


def data_dir(url: str) -> Path:
    """Where per-tenant SQLite files live: beside the control plane, so one path configures both."""
    path = sqlite_path(url)
    return path.with_name(path.stem + "_data")


async def open_store(
    url: str,
    migrations: Sequence[Any] | None = None,
    *,
    max_open: int = 64,
    hold_seconds: float = DEFAULT_HOLD_SECONDS,
    admit: Admit | None = None,
) -> DataStore:
    """The data store for a database URL.

    `migrations` is given by a serving app: SQLite then migrates each tenant's file on first
    open; PostgreSQL checks that the schema is current and that the role cannot bypass row-level
    security. Without it (the CLI), the store only reads, exports and deletes. A call may hold its
    connection `hold_seconds` at most; `admit` is asked, when a call acquires it, whether the
    tenant may still use its data (a suspended or deleted one may not).
    """
    if is_postgres(url):
        from tenant_mcp.storage.postgres import PostgresStore

        return await PostgresStore.open(url, migrations, hold_seconds=hold_seconds, admit=admit)
    from tenant_mcp.storage.sqlite import SQLiteStore

    return SQLiteStore(
        data_dir(url),
        [migration_sql("sqlite", m) for m in migrations or ()],
        max_open=max_open,
        hold_seconds=hold_seconds,
        admit=admit,
    )


def migration_sql(dialect: str, migration: Any) -> str:
    """A migration's SQL for `dialect`: a string for both, or a mapping with one per dialect."""
    if isinstance(migration, str):
        return migration
    try:
        return str(migration[dialect])
    except KeyError:
        raise ConfigurationError(f"a migration has no {dialect!r} version") from None
