"""The per-tenant SQLite pool alone, in one process: what a call's `ctx.db` write costs warm and
cold, and what an open tenant costs in memory.

    python -m bench.pool                 # 10,000 tenants, the default pool (64 open)
    python -m bench.pool --tenants 2000 --max-open 2000

One `INSERT` per call through `SQLiteStore.database(...)`, 8 calls in flight, as the HTTP
benchmark's target 3 does without the HTTP and MCP layers: A is one tenant, B rotates over all of
them. CPU time is the process's (every thread); memory is the resident set with `--max-open`
tenants open against one, per open tenant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from tenant_mcp.storage.database import new_id
from tenant_mcp.storage.sqlite import SQLiteStore

_SCHEMA = "CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT NOT NULL, body TEXT NOT NULL)"


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _calls(store: SQLiteStore, tenants: list[str], calls: int, in_flight: int = 8) -> float:
    """CPU seconds per call for `calls` writes, tenants taken in turn."""
    turn = iter(range(calls))

    async def worker() -> None:
        for i in turn:
            db = store.database(tenants[i % len(tenants)])
            await db.execute("INSERT INTO notes (id, title, body) VALUES (?, 'bench', '')", (new_id(),))
            await db._finish(commit=True)

    before = _cpu()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return (_cpu() - before) / calls


async def run(tenants: int, max_open: int, calls: int, rounds: int, where: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tenant-mcp-pool-", dir=where) as tmp:
        root = Path(tmp)
        ids = [uuid.uuid4().hex for _ in range(tenants)]
        store = SQLiteStore(root, [_SCHEMA], max_open=max_open)
        db = store.database(ids[0])
        await db.execute("SELECT 1")
        await db._finish(commit=True)
        await store.aclose()
        for tenant_id in ids[1:]:  # copies of one migrated file, as bench.provision makes them
            shutil.copyfile(store.path(ids[0]), store.path(tenant_id))

        store = SQLiteStore(root, [_SCHEMA], max_open=max_open)
        try:
            await _calls(store, ids[:1], calls // 4)  # one tenant open
            rss_one = _rss_kib()
            await _calls(store, ids[:max_open], max_open * 2)  # the pool full
            rss_full = _rss_kib()
            opened, threads = store.open_count, threading.active_count()
            one, rotating = [], []
            for _ in range(rounds):
                one.append(await _calls(store, ids[:1], calls))
                rotating.append(await _calls(store, ids, calls))
        finally:
            await store.aclose()
    one.sort()
    rotating.sort()
    a, b = one[len(one) // 2], rotating[len(rotating) // 2]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "tenants": tenants,
        "max_open": max_open,
        "cpu_us_per_call": {"1 tenant": round(a * 1e6, 1), f"rotating over {tenants:,}": round(b * 1e6, 1)},
        "ratio": round(a / b, 3),
        "threads_with_the_pool_full": threads,
        "open_tenants": opened,
        "bytes_per_open_tenant": round((rss_full - rss_one) * 1024 / max(opened - 1, 1)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pool", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--max-open", type=int, default=64)
    parser.add_argument("--calls", type=int, default=2000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", help="where the tenant files go (default: the temporary directory)")
    args = parser.parse_args()
    result = asyncio.run(run(args.tenants, args.max_open, args.calls, args.rounds, args.dir))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
