"""Benchmarks of per-tenant limits (issue 13): fair share under a flood, and what limits cost.

    python -m bench.limits            # about 11 minutes
    python -m bench.limits --quick    # about 2 minutes

- Fair share: tenant X floods (16 connections, paced at 10x its rate limit, from a process of its
  own) while tenant Y calls at a steady modest rate. Y's p50 and p99 latency under the flood
  against Y alone, on a server without limits, with limits, and with limits but each 429 answered
  at once (not held back until a slot frees); and, as a control, Y on the server with limits
  while X floods another process. Y must see no refusal.
- Cost: capacity (server CPU time per request, as in `python -m bench`) of a server whose limits
  are configured but never bite against the same server without limits, in memory and on Redis.

Both use `write_row` or `whoami` of `bench.servers` over stateless JSON, the load of `python -m bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2

from bench import provision
from bench.harness import ROOT, Comparison, Load, LoadGenerator, Running, Server, Side, compare, serve

REDIS_URL = os.environ.get("TENANT_MCP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
X_RATE = 40  # X's limit, per second
FLOOD_CONNECTIONS = 16
Y_EVERY = 0.05  # Y calls every 50 ms (20/s, half its own limit)
JSON = ("--stateless", "--json-response")
_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
LIMITED = {"rate": f"{X_RATE}/second", "concurrency": 8}
# What a deployment would configure: a tenant rate, a concurrency cap and both quotas.
NOT_BITING = {"rate": "1000000/minute", "concurrency": 1000, "daily": 1_000_000_000, "monthly": 1_000_000_000}


def _server(label: str, db: str, **env: str) -> Server:
    command = (sys.executable, "-m", "tenant_mcp.cli", "serve", "bench.servers:app", "--port", "{port}",
               "--db", db, "--log-level", "warning", *JSON)  # fmt: skip
    return Server(label, command, tuple(env.items()))


def _body(request_id: int, tool: str) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                       "params": {"name": tool, "arguments": {}}})  # fmt: skip


async def _paced(http: httpx2.AsyncClient, url: str, token: str, every: float, until: float,
                 tool: str, latencies: list[float] | None, outcome: dict[str, int]) -> None:  # fmt: skip
    """Send a call every `every` seconds until `until`; count ok/refused, and time each if asked."""
    headers = {"Authorization": f"Bearer {token}", "MCP-Protocol-Version": "2025-11-25"}
    next_at = time.perf_counter()
    n = 0
    while next_at < until:
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        n += 1
        started = time.perf_counter()
        try:
            response = await http.post(url, content=_body(n, tool), headers=headers)
        except httpx2.TransportError as exc:  # counted apart, and shown
            kind = f"{type(exc).__name__}: {exc}"[:80]
            outcome[kind] = outcome.get(kind, 0) + 1
            next_at = max(next_at + every, time.perf_counter())
            continue
        elapsed = time.perf_counter() - started
        if response.headers.get("content-type") == "application/json":
            answer = response.json()
            kind = "ok" if "result" in answer and not answer["result"].get("isError") else "refused"
        else:  # not an answer of the MCP endpoint: counted apart, and shown
            kind = f"HTTP {response.status_code}: {response.text[:80]}"
        outcome[kind] = outcome.get(kind, 0) + 1
        if latencies is not None:
            latencies.append(elapsed)
        # A steady caller: a late call does not make the next ones bunch up to catch up.
        next_at = max(next_at + every, time.perf_counter())


def _flood(url: str, key: str, seconds: float, control: Any, results: Any) -> None:
    """Tenant X's flood, in a process of its own: in Y's process its 400 requests a second would
    take Y's event loop too, and Y would measure its own client rather than the server."""

    async def run() -> dict[str, int]:
        outcome: dict[str, int] = {}
        limits = httpx2.Limits(max_connections=FLOOD_CONNECTIONS, max_keepalive_connections=FLOOD_CONNECTIONS)
        async with httpx2.AsyncClient(headers=_HEADERS, timeout=60, limits=limits) as http:
            results.put("ready")
            await asyncio.get_running_loop().run_in_executor(None, control.wait)
            until = time.perf_counter() + seconds
            every = FLOOD_CONNECTIONS / (10 * X_RATE)  # 16 connections together at 10x X's rate
            await asyncio.gather(*(_paced(http, url, key, every, until, "write_row", None, outcome)
                                   for _ in range(FLOOD_CONNECTIONS)))  # fmt: skip
        return outcome

    results.put(asyncio.run(run()))


async def _scenario(
    server: Running, x_key: str, y_key: str, *, flood: Running | None, seconds: float
) -> dict[str, Any]:
    """Y calls `server` for `seconds`, while X floods `flood` (None: no flood)."""
    url = server.url
    x_outcome: dict[str, int] = {}
    spawn = multiprocessing.get_context("spawn")
    go, results = spawn.Event(), spawn.Queue()
    flooder = None
    if flood is not None:
        flooder = spawn.Process(target=_flood, args=(flood.url, x_key, seconds, go, results))
    async with httpx2.AsyncClient(headers=_HEADERS, timeout=60) as http:
        await _paced(http, url, y_key, Y_EVERY, time.perf_counter() + 0.5, "write_row", None, {})  # warm-up
        if flooder is not None:
            flooder.start()
            assert await asyncio.to_thread(results.get, True, 60) == "ready"
        await asyncio.sleep(1.0)  # out of the rate window of the warm-up
        cpu = server.cpu_seconds()
        go.set()
        y_latencies: list[float] = []
        y_outcome: dict[str, int] = {}
        await _paced(
            http, url, y_key, Y_EVERY, time.perf_counter() + seconds, "write_row", y_latencies, y_outcome
        )
        if flooder is not None:
            x_outcome = await asyncio.to_thread(results.get, True, 60)
            flooder.join(10)
        cpu = server.cpu_seconds() - cpu
    ms = sorted(t * 1000 for t in y_latencies)
    return {
        "y_p50_ms": round(statistics.median(ms), 2),
        "y_p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2),
        "y_calls": len(ms), "y_refused": y_outcome.get("refused", 0),
        "x_ok_per_s": round(x_outcome.get("ok", 0) / seconds, 1),
        "x_refused_per_s": round(x_outcome.get("refused", 0) / seconds, 1),
        "server_cpu_share": round(cpu / seconds, 2),  # CPU seconds the server used per second
        "other_answers": {
            k: v for k, v in (Counter(x_outcome) + Counter(y_outcome)).items() if k not in ("ok", "refused")
        },
    }  # fmt: skip


def _log_tail(server: Running, lines: int = 30) -> str:
    server.log.seek(0)
    text = server.log.read().decode(errors="replace").splitlines()
    return "\n".join([line for line in text if "Terminating session" not in line][-lines:])


CONTROL = "control: with limits, X floods another process"


def fair_share(plane: provision.Plane, seconds: float, rounds: int) -> list[dict[str, Any]]:
    """Y alone and Y under X's flood, on a server without limits, one with, and one with whose
    429s are not held back, in alternating rounds (the machine's load drifts); medians over the
    rounds. The control row floods another process with the same limits while Y calls the server
    with limits: what the flood costs Y through the machine (CPU, scheduling) rather than through
    the server's event loop."""
    x_key, y_key = plane.others[0], plane.key
    limited = json.dumps(LIMITED)
    servers = {
        "without limits": _server("without limits", plane.url),
        "with limits": _server("with limits", plane.url, BENCH_LIMITS=limited),
        "with limits, 429s not held": _server(
            "with limits, 429s not held", plane.url, BENCH_LIMITS=limited, BENCH_HOLD="0"
        ),
        CONTROL: _server("another process", plane.url, BENCH_LIMITS=limited),
    }
    runs: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    with serve(*servers.values()) as running:
        for i in range(rounds):
            for label, server in servers.items():
                print(f"  fair share, round {i + 1}/{rounds}, {label} ...", flush=True)
                y_server = running[servers["with limits"] if label == CONTROL else server]
                for x_floods in (False, True):
                    flood = running[server] if x_floods else None
                    result = asyncio.run(_scenario(y_server, x_key, y_key, flood=flood, seconds=seconds))
                    runs.setdefault((label, x_floods), []).append(result)
                    if result["other_answers"]:
                        print(
                            f"  {result['other_answers']}; the server's log ends:\n{_log_tail(running[server])}"
                        )

    def median(label: str, flood: bool) -> dict[str, Any]:
        rows = runs[(label, flood)]
        out: dict[str, Any] = {
            k: round(statistics.median(r[k] for r in rows), 2) for k in rows[0] if k != "other_answers"
        }
        out["y_refused"] = sum(r["y_refused"] for r in rows)
        out["other_answers"] = sum((Counter(r["other_answers"]) for r in rows), Counter())
        return out

    rows = []
    for label in servers:
        alone, flooded = median(label, False), median(label, True)
        rows.append({
            "server": label, "alone": alone, "flooded": flooded,
            "p50_ratio": round(flooded["y_p50_ms"] / alone["y_p50_ms"], 2),
            "p99_ratio": round(flooded["y_p99_ms"] / alone["y_p99_ms"], 2),
            "rounds": {"alone": runs[(label, False)], "flooded": runs[(label, True)]},
        })  # fmt: skip
    return rows


def cost(plane: provision.Plane, rounds: int, requests: int) -> list[dict[str, Any]]:
    prefix = f"bench-{secrets.token_hex(4)}"
    redis = {"TENANT_MCP_REDIS_URL": REDIS_URL, "TENANT_MCP_REDIS_PREFIX": prefix}
    quiet = json.dumps(NOT_BITING)
    key = Load((plane.key,))
    comparisons = [
        Comparison("13", "whoami, limits not biting (in memory)",
                   Side("no limits", _server("no limits", plane.url), key),
                   Side("limits", _server("limits", plane.url, BENCH_LIMITS=quiet), key),
                   goal=">= 0.97", threshold=0.97),
        Comparison("13", "whoami, limits not biting (Redis)",
                   Side("Redis, no limits", _server("Redis, no limits", plane.url, **redis), key),
                   Side("Redis, limits", _server("Redis, limits", plane.url, BENCH_LIMITS=quiet, **redis), key),
                   goal=">= 0.90", threshold=0.90),
    ]  # fmt: skip
    gen = LoadGenerator()
    try:
        return [compare(gen, c, rounds=rounds, requests=requests) for c in comparisons]
    finally:
        gen.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limits", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs: under a minute")
    parser.add_argument(
        "--output", default=str(ROOT / "bench" / "limits-results.json"), help="JSON results file"
    )
    args = parser.parse_args(argv)
    seconds, rounds, requests = (3.0, 1, 300) if args.quick else (8.0, 5, 1200)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tenant-mcp-bench-") as tmp:
        plane = asyncio.run(provision.control_plane(Path(tmp) / "control.db", tenants=1, databases=True))
        share = fair_share(plane, seconds, rounds)
        costs = cost(plane, rounds, requests)
    cost_rows = [{k: v for k, v in r.items() if k != "rounds"} for r in costs]
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m bench.limits" + (" --quick" if args.quick else ""),
        "x_rate_per_s": X_RATE, "flood_connections": FLOOD_CONNECTIONS, "y_calls_per_s": 1 / Y_EVERY,
        "seconds_per_scenario": seconds, "fair_share": share,
        "cost": cost_rows,
        "seconds": round(time.monotonic() - started),
    }  # fmt: skip
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"\nFair share: X floods at {10 * X_RATE}/s ({FLOOD_CONNECTIONS} connections, limit {X_RATE}/s), "
          f"Y calls write_row {1 / Y_EVERY:.0f}/s; medians of {rounds} rounds of {seconds:.0f} s\n")  # fmt: skip
    print("| server | Y alone p50 / p99 ms | Y flooded p50 / p99 ms | p50, p99 ratio | Y refused "
          "| X ok/s, refused/s | server CPU alone, flooded |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---|---|")
    for r in share:
        a, f = r["alone"], r["flooded"]
        print(f"| {r['server']} | {a['y_p50_ms']} / {a['y_p99_ms']} | {f['y_p50_ms']} / {f['y_p99_ms']} "
              f"| {r['p50_ratio']}, {r['p99_ratio']} | {f['y_refused']} | {f['x_ok_per_s']}, {f['x_refused_per_s']} "
              f"| {a['server_cpu_share']}, {f['server_cpu_share']} |")  # fmt: skip
    print("\nCost of limits that do not bite (capacity = server CPU per request, A over B)\n")
    print("| comparison | A req/s | B req/s | CPU ms/request A, B | capacity B/A | goal |")
    print("|---|---:|---:|---|---:|---|")
    for r in cost_rows:
        print(f"| {r['name']} | {r['rps_a']} | {r['rps_b']} | {r['cpu_ms_per_request_a']}, "
              f"{r['cpu_ms_per_request_b']} | {r['capacity_ratio']} | {r['goal']} |")  # fmt: skip
    for r in share:
        if r["flooded"]["other_answers"] or r["alone"]["other_answers"]:
            print(f"answers other than the MCP endpoint's, {r['server']}: {r['alone']['other_answers']} alone, "
                  f"{r['flooded']['other_answers']} flooded")  # fmt: skip
    print(f"\n{report['seconds']} s; written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
