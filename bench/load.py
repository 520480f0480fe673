"""Load generator, run in its own process: N tool calls at fixed concurrency, fresh JSON-RPC ids.

Usage: python -m bench.load URL TOKEN REQUESTS CONCURRENCY  ->  prints {"rps": ..., "p50_ms": ...}
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import sys
import time

import httpx2


async def main(url: str, token: str, requests: int, concurrency: int) -> dict[str, float]:
    ids = itertools.count(1)
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": "2025-11-25",
    }
    latencies: list[float] = []
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(headers=headers, timeout=30, limits=limits) as http:

        async def worker(count: int) -> None:
            for _ in range(count):
                body = {"jsonrpc": "2.0", "id": next(ids), "method": "tools/call",
                        "params": {"name": "whoami", "arguments": {}}}  # fmt: skip
                started = time.perf_counter()
                response = await http.post(url, content=json.dumps(body))
                if response.status_code != 200 or b'"isError":true' in response.content:
                    raise SystemExit(f"bad response {response.status_code}: {response.text[:200]}")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"rps": len(latencies) / elapsed, "p50_ms": statistics.median(latencies) * 1000}


if __name__ == "__main__":
    url, token, requests, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(asyncio.run(main(url, token, requests, concurrency))))
