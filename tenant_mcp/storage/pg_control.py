"""The control plane's PostgreSQL connection: its tables (schema ``tenant_mcp``) through a pool,
with the `storage.sql.Database` API the control plane uses on either backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from tenant_mcp.storage.pg import (
    CONTROL_SCHEMA,
    AnyConnection,
    close_pool,
    connect_pool,
    rowcount,
)
from tenant_mcp.storage.sql import Params, constraint_errors, to_postgres


class PostgresConnection:
    """A control-plane connection (pool or one pooled connection inside a transaction)."""

    dialect = "postgresql"

    def __init__(self, target: asyncpg.Pool | AnyConnection) -> None:
        self._target = target

    async def execute(self, sql: str, params: Params = ()) -> int:
        text, args = to_postgres(sql, params)
        with constraint_errors(asyncpg.IntegrityConstraintViolationError):
            return rowcount(await self._target.execute(text, *args))

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> None:
        converted = [to_postgres(sql, row) for row in rows]
        if converted:
            await self._target.executemany(converted[0][0], [args for _, args in converted])

    async def fetch_all(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        text, args = to_postgres(sql, params)
        return [dict(r) for r in await self._target.fetch(text, *args)]

    async def fetch_one(self, sql: str, params: Params = ()) -> dict[str, Any] | None:
        text, args = to_postgres(sql, params)
        row = await self._target.fetchrow(text, *args)
        return dict(row) if row is not None else None


class PostgresDatabase(PostgresConnection):
    """The control plane's tables (schema ``tenant_mcp``) through a connection pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self._pool = pool

    @classmethod
    async def open(cls, url: str) -> PostgresDatabase:
        return cls(await connect_pool(url, search_path=CONTROL_SCHEMA, max_size=5))

    async def close(self) -> None:
        await close_pool(self._pool)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresConnection]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield PostgresConnection(conn)
