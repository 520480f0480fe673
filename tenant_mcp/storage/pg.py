"""What the PostgreSQL modules share: the framework's schemas, the names of the tenant binding,
connecting, and PostgreSQL's errors and statuses in the framework's terms."""

from __future__ import annotations

import asyncio

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from tenant_mcp.errors import ConfigurationError

CONTROL_SCHEMA = "tenant_mcp"
DATA_SCHEMA = "public"
RLS_SCHEMA = "tenant_mcp_rls"  # the binding's key and the function that verifies it
BINDING_SETTING = "tenant_mcp.binding"
CURRENT_TENANT = f"{RLS_SCHEMA}.tenant()"  # the verified tenant of the transaction, or NULL
AnyConnection = asyncpg.Connection | PoolConnectionProxy


class _ResettingConnection(asyncpg.Connection):
    """A pooled connection that leaves nothing to its next borrower: on top of asyncpg's reset
    (settings, advisory locks, cursors, listeners), temporary objects and sequence state go."""

    def get_reset_query(self) -> str:
        return super().get_reset_query() + "\nDISCARD TEMP;\nDISCARD SEQUENCES;"


def rowcount(status: str) -> int:
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


async def connect_pool(url: str, *, search_path: str, max_size: int = 10) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=max_size,
            connection_class=_ResettingConnection,
            # The gateway parses with standard strings; the server must read them the same way.
            server_settings={"search_path": search_path, "standard_conforming_strings": "on"},
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise ConfigurationError(f"cannot connect to PostgreSQL: {exc}") from None
    assert pool is not None
    return pool


async def close_pool(pool: asyncpg.Pool) -> None:
    """Close gracefully, but never hang shutdown on a connection someone failed to release."""
    try:
        await asyncio.wait_for(pool.close(), 10)
    except TimeoutError:
        pool.terminate()


async def connect(url: str) -> asyncpg.Connection:
    """One connection of its own (not pooled), for migrations and one-off questions."""
    try:
        return await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise ConfigurationError(f"cannot connect to PostgreSQL: {exc}") from None


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
