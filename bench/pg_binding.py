"""What the unforgeable tenant binding costs on PostgreSQL, measured against the forgeable one.

    python -m bench.pg_binding [--url postgresql://postgres@127.0.0.1:5432] [--rounds 5] [--n 2000]

One throw-away database holds two copies of a table: ``forgeable`` with the policy the framework
used before (the tenant id in a setting that any SQL can write), ``bound`` with today's policy
(``tenant_mcp_rls.tenant()`` verifies an HMAC over tenant and backend). The same client runs the
same transactions on each, alternating rounds: a write (bind, INSERT, COMMIT) and a read (bind,
SELECT by key, COMMIT), as `ctx.db` sends them. It prints transactions per second of each and the
ratio bound / forgeable; the goal is >= 0.95.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable

import asyncpg

from tenant_mcp.storage.pg_migrate import migrate
from tenant_mcp.storage.postgres import PostgresStore

_SCHEMA = [
    "CREATE TABLE bound (id BIGINT PRIMARY KEY, body TEXT NOT NULL)",
    "CREATE TABLE forgeable (id BIGINT NOT NULL, body TEXT NOT NULL)",
]


async def _prepare(url: str) -> str:
    name = f"bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(f"{url}/postgres")
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    db = f"{url}/{name}"
    await migrate(db, control=(), data=_SCHEMA, app_role=None)
    conn = await asyncpg.connect(db)
    try:
        await conn.execute("ALTER TABLE forgeable DROP CONSTRAINT IF EXISTS forgeable_pkey")
        await conn.execute("DROP POLICY tenant_isolation ON forgeable")
        # The old shape: the tenant is whatever the setting says (its MAC is not looked at).
        forged = "split_part(current_setting('tenant_mcp.binding', true), '/', 1)"
        await conn.execute(f"ALTER TABLE forgeable ALTER COLUMN tenant_id SET DEFAULT {forged}")
        await conn.execute(
            f"CREATE POLICY tenant_isolation ON forgeable USING (tenant_id = {forged}) WITH CHECK (tenant_id = {forged})"
        )
        await conn.execute("ALTER TABLE forgeable ADD PRIMARY KEY (tenant_id, id)")
        await conn.execute("DROP ROLE IF EXISTS bench_data")
        await conn.execute("CREATE ROLE bench_data LOGIN")
        await conn.execute("GRANT USAGE ON SCHEMA public, tenant_mcp_rls TO bench_data")
        await conn.execute("GRANT SELECT, INSERT ON bound, forgeable TO bench_data")
        await conn.execute("GRANT EXECUTE ON FUNCTION tenant_mcp_rls.tenant() TO bench_data")
    finally:
        await conn.close()
    return name


async def _rate(n: int, offset: int, one: Callable[[int], Awaitable[None]]) -> float:
    start = time.perf_counter()
    for i in range(offset, offset + n):
        await one(i)
    return n / (time.perf_counter() - start)


async def main(url: str, rounds: int, n: int) -> None:
    name = await _prepare(url)
    host = url.split("@", 1)[1]
    data_url = f"postgresql://bench_data@{host}/{name}"
    owner = await asyncpg.connect(f"{url}/{name}")
    key = bytes(await owner.fetchval("SELECT key FROM tenant_mcp_rls.binding_key"))
    await owner.close()
    store = await PostgresStore.open(data_url, binding_key=key, max_size=1)
    tenant = "a" * 32
    base = secrets.randbelow(10**9) * 10**6

    # Both sides take the whole ctx.db path (pool, gateway, binding, reset); only the policy differs.
    def writer(table: str) -> Callable[[int], Awaitable[None]]:
        async def write(i: int) -> None:
            db = store.database(tenant)
            await db.execute(f"INSERT INTO {table} (id, body) VALUES (?, ?)", (base + i, "note body"))
            await db._finish(commit=True)

        return write

    def reader(table: str) -> Callable[[int], Awaitable[None]]:
        async def read(i: int) -> None:
            db = store.database(tenant)
            await db.fetch_one(f"SELECT body FROM {table} WHERE id = ?", (base + i,))
            await db._finish(commit=True)

        return read

    results: dict[str, list[float]] = {
        k: [] for k in ("write forgeable", "write bound", "read forgeable", "read bound")
    }
    try:
        for r in range(rounds):
            offset = r * n
            for op, make in (("write", writer), ("read", reader)):
                for table in ("forgeable", "bound"):
                    results[f"{op} {table}"].append(await _rate(n, offset, make(table)))
    finally:
        await store.aclose()
        admin = await asyncpg.connect(f"{url}/postgres")
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"{'transactions per second (median of ' + str(rounds) + ' rounds)':<50}")
    for op in ("write", "read"):
        ratio = med[f"{op} bound"] / med[f"{op} forgeable"]
        print(
            f"  {op:<6} forgeable {med[op + ' forgeable']:>8.0f}   bound {med[op + ' bound']:>8.0f}   ratio {ratio:.3f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url", default="postgresql://postgres@127.0.0.1:5432", help="a superuser's server URL"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=2000, help="transactions per round and kind")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.rounds, args.n))
