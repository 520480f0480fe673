"""Benchmarks: what tenant isolation costs, as ratios measured in one run (issue #6's targets).

    python -m bench            # the full run, under 5 minutes
    python -m bench --quick    # 1,000 tenants instead of 10,000, fewer rounds: under a minute
    python -m bench --paired   # both servers of a comparison loaded at once, on one shared CPU

Each comparison starts its servers as separate processes (see `bench.harness`), drives them with
the load generator in a third (`bench.load`), warms both up, runs alternating rounds and reports
medians, the ratio B/A, and each server's CPU time per request. Results print as a table and go to
a JSON file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench import otlp_sink, provision
from bench.harness import (
    ROOT,
    Comparison,
    Load,
    LoadGenerator,
    Pairing,
    Server,
    Side,
    compare,
    free_port,
    serve,
)

PRIVATE_TOOLS = 20
JSON = ("--stateless", "--json-response")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def _tenant_mcp(label: str, db: str, *flags: str, app: str = "bench.servers:app", **env: str) -> Server:
    """`tenant-mcp serve` with its default settings (logging included) plus `flags`."""
    command = (sys.executable, "-m", "tenant_mcp.cli", "serve", app, "--port", "{port}", "--db", db, *flags)
    return Server(label, command, tuple(env.items()))


_NOTE = (("title", "Quarterly plan"), ("body", "Ship the tenant stack at the bare SDK's cost. " * 4))
_MODES = (("stateless JSON", "stateless-json", JSON, "json"), ("stateful SSE sessions", "stateful", (), "sse"),
          ("2026-07-28 requests", "stateful", (), "modern"))  # fmt: skip


def _realistic(planes: list[provision.Plane]) -> list[Comparison]:
    """Issue #17's target 2: calls with arguments doing SQLite work, against the bare SDK doing
    the same work on one file. Each comparison has a control plane (and notes table) of its own,
    as the bare server has a fresh file: both sides start empty and write the same rows."""
    found = []
    runs = [(tool, arguments, mode) for tool, arguments in (("create_note", _NOTE), ("search_notes", (("query", "plan"),)))
            for mode in _MODES]  # fmt: skip
    for small, (tool, arguments, (label, bare_mode, flags, mode)) in zip(planes, runs, strict=True):
        found.append(Comparison(
            "17.2", f"{tool}, {label}",
            Side("bare SDK", _bare(bare_mode), Load(("bench-static-token",), mode=mode, tool=tool, arguments=arguments)),
            Side("tenant_mcp", _tenant_mcp("tenant_mcp", small.url, *flags, app="example_servers.notes:app"),
                 Load((small.key,), mode=mode, tool=tool, arguments=arguments)),
            goal=">= 0.9", threshold=0.9, requests=1500,
        ))  # fmt: skip
    return found


def _bare(mode: str) -> Server:
    return Server("bare SDK", (sys.executable, "bench/bare_server.py", "{port}"), (("BENCH_MODE", mode),))


def _workers(small: provision.Plane, redis_prefix: str) -> list[Comparison]:
    """`serve --workers 2` against one process, both --stateless and on Redis (as --workers needs):
    throughput with 16 in flight, so that one process cannot keep up alone."""
    redis = ("--redis-url", REDIS_URL, "--redis-prefix", redis_prefix)
    notes = "example_servers.notes:app"
    one = _tenant_mcp("1 worker", small.url, *JSON, *redis, app=notes)
    two = _tenant_mcp("2 workers", small.url, *JSON, *redis, "--workers", "2", app=notes)
    return [
        Comparison("17.4", f"whoami, {label}, 2 workers vs 1",
                   Side("1 worker", one, Load((small.key,), mode=mode, concurrency=16)),
                   Side("2 workers", two, Load((small.key,), mode=mode, concurrency=16)),
                   metric="scaling", goal=">= 1.7", threshold=1.7)
        for mode, label in (("json", "stateless JSON"), ("modern", "2026-07-28 requests"))
    ]  # fmt: skip


def comparisons(
    small: provision.Plane,
    big: provision.Plane,
    marked: provision.Plane,
    jwt: tuple[Path, str],
    n: int,
    policied: provision.Plane,
    realistic: list[provision.Plane],
    otlp: str,
    redis_prefix: str = "tenant_mcp_bench",
) -> list[Comparison]:
    """`otlp`: the URL of the local OTLP/HTTP sink (`bench.otlp_sink`) that target 15 exports to."""
    key = Load((small.key,))
    notes = "example_servers.notes:app"
    jwt_flags = ("--jwt-public-key", str(jwt[0]), "--jwt-issuer", provision.JWT_ISSUER,
                 "--jwt-audience", provision.JWT_AUDIENCE)  # fmt: skip
    with_jwt = _tenant_mcp("tenant_mcp, JWT configured", small.url, *JSON, *jwt_flags)
    pool = _tenant_mcp(f"tenant_mcp, {n:,} tenant databases", big.url, *JSON)
    tools_1 = _tenant_mcp("1 tenant", small.url, *JSON, BENCH_PRIVATE=f"0:{PRIVATE_TOOLS}")
    tools_n = _tenant_mcp(f"{n:,} tenants", big.url, *JSON, BENCH_PRIVATE=f"{n}:{PRIVATE_TOOLS}")
    listing = Load((big.key,), method="tools/list", concurrency=1)
    telemetry_off = _tenant_mcp("telemetry off", small.url, *JSON)
    metrics = ("--metrics-address", f"127.0.0.1:{free_port()}")
    return [
        Comparison("1", "whoami, stateless JSON",
                   Side("bare SDK", _bare("stateless-json"), Load(("bench-static-token",))),
                   Side("tenant_mcp", _tenant_mcp("tenant_mcp", small.url, *JSON, app=notes), key),
                   goal=">= 0.95", threshold=0.95),
        Comparison("1", "whoami, stateful SSE sessions",
                   Side("bare SDK", _bare("stateful"), Load(("bench-static-token",), mode="sse")),
                   Side("tenant_mcp", _tenant_mcp("tenant_mcp", small.url, app=notes), Load((small.key,), mode="sse")),
                   goal=">= 0.95", threshold=0.95),
        Comparison("1", "whoami, 2026-07-28 requests",
                   Side("bare SDK", _bare("stateful"), Load(("bench-static-token",), mode="modern")),
                   Side("tenant_mcp", _tenant_mcp("tenant_mcp", small.url, app=notes),
                        Load((small.key,), mode="modern")),
                   goal=">= 0.95", threshold=0.95),
        *_realistic(realistic),
        Comparison("17.5", "whoami, default logging",
                   Side("--log-level warning", _tenant_mcp("quiet", small.url, *JSON, "--log-level", "warning"), key),
                   Side("default", _tenant_mcp("default", small.url, *JSON), key),
                   goal=">= 0.98", threshold=0.98),
        Comparison("2", f"tools/list p50 latency, {PRIVATE_TOOLS} private tools per tenant",
                   Side("1 tenant", tools_1, Load((small.key,), method="tools/list", concurrency=1)),
                   Side(f"{n:,} tenants", tools_n, listing),
                   metric="latency", goal="<= 1.2", threshold=1.2, requests=400),
        Comparison("3", "write_row (one row via ctx.db)",
                   Side("1 tenant", pool, Load((big.key,), tool="write_row")),
                   Side(f"round-robin over {n:,} tenants", pool, Load(tuple(big.others), tool="write_row")),
                   goal=">= 0.7", threshold=0.7, requests=1000),
        Comparison("4", "whoami, JWT vs API key",
                   Side("API key", with_jwt, key), Side("RS256 JWT", with_jwt, Load((jwt[1],))),
                   goal=">= 0.9", threshold=0.9),
        Comparison("5", "whoami, audit",
                   Side("audit off", _tenant_mcp("audit off", small.url, *JSON, BENCH_AUDIT="0"), key),
                   Side("audit on", _tenant_mcp("audit on", small.url, *JSON), key),
                   goal=">= 0.99", threshold=0.99),
        Comparison("19", f"tools/list p50 latency, {n:,} tenants x 10 catalogue policies",
                   Side("no policies", tools_n, listing),
                   Side("policies", _tenant_mcp("policies", policied.url, *JSON, BENCH_PRIVATE=f"{n}:{PRIVATE_TOOLS}"),
                        Load((policied.key,), method="tools/list", concurrency=1)),
                   metric="latency", goal="<= 1.1", threshold=1.1, requests=400),
        Comparison("19", "whoami, catalogue policies",
                   Side("no policies", pool, Load((big.key,))),
                   Side("policies", _tenant_mcp("policies", policied.url, *JSON), Load((policied.key,))),
                   goal=">= 0.9", threshold=0.9),
        Comparison("15", "whoami, tracing (console exporter) and metrics",
                   Side("telemetry off", telemetry_off, key),
                   Side("telemetry on, console", _tenant_mcp(
                       "telemetry on, console", small.url, *JSON, *metrics, OTEL_TRACES_EXPORTER="console"), key),
                   goal=">= 0.95", threshold=0.95),
        Comparison("15", "whoami, tracing (OTLP/HTTP to a local sink) and metrics",
                   Side("telemetry off", telemetry_off, key),
                   Side("telemetry on, OTLP", _tenant_mcp(
                       "telemetry on, OTLP", small.url, *JSON, *metrics, OTEL_TRACES_EXPORTER="otlp",
                       OTEL_EXPORTER_OTLP_ENDPOINT=otlp), key),
                   goal=">= 0.95", threshold=0.95),
        *_workers(small, redis_prefix),
        Comparison("-", "whoami, leak guard",
                   Side("guard off", _tenant_mcp("guard off", marked.url, *JSON, BENCH_GUARD="0"), Load((marked.key,))),
                   Side("guard on", _tenant_mcp("guard on", marked.url, *JSON), Load((marked.key,))),
                   goal="(cost shown)", threshold=0.0),
    ]  # fmt: skip


def memory(gen: LoadGenerator, results: list[dict[str, Any]], big: provision.Plane, n: int) -> dict[str, Any]:
    """Per idle tenant and per private tool, from resident memory of the target-2 servers and one
    more: `n` idle tenants, only `bench` holding tools."""
    listing = next(r for r in results if r["target"] == "2")
    idle = _tenant_mcp("idle tenants", big.url, *JSON, BENCH_PRIVATE=f"0:{PRIVATE_TOOLS}")
    with serve(idle) as running:
        gen.run(running[idle].url, Load((big.key,), method="tools/list", concurrency=1), 1000)
        rss_idle = running[idle].rss_kib()
    one, all_ = listing["rss_kib_a"], listing["rss_kib_b"]
    return {
        "rss_kib": {
            "1 tenant": one,
            f"{n} idle tenants": rss_idle,
            f"{n} tenants x {PRIVATE_TOOLS} tools": all_,
        },
        "bytes_per_idle_tenant": round((rss_idle - one) * 1024 / n),
        "bytes_per_private_tool": round((all_ - rss_idle) * 1024 / (n * PRIVATE_TOOLS)),
        "goal_bytes_per_idle_tenant": "< 2048",
        "met": (rss_idle - one) * 1024 / n < 2048,
    }


def _machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())  # fmt: skip
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, mcp {version('mcp')}"


def _table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['date']}, {report['machine']}, `{report['command']}`",
        "",
        "| target | comparison | A | B | A | B | B/A | CPU ms/request A, B | capacity B/A | p99 ms A, B | goal | met |",
        "|---|---|---|---|---:|---:|---:|---|---:|---|---|---|",
    ]
    for r in report["results"]:
        latency = r["metric"] == "latency"
        unit, a, b = (
            ("ms p50", r["p50_ms_a"], r["p50_ms_b"]) if latency else ("req/s", r["rps_a"], r["rps_b"])
        )
        met = "-" if r["target"] == "-" else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['target']} | {r['name']} | {r['a']} | {r['b']} | {a} {unit} | {b} {unit} | {r['ratio']} "
                     f"| {r['cpu_ms_per_request_a']}, {r['cpu_ms_per_request_b']} | {r['capacity_ratio']}"
                     f"{' (paired)' if r['method'] == 'paired' else ''} | {r['p99_ms_a']}, {r['p99_ms_b']} "
                     f"| {r['goal']} ({_JUDGED[r['metric']]}) | {met} |")  # fmt: skip
    m = report["memory"]
    lines += ["", f"Memory (server RSS): {m['bytes_per_idle_tenant']:,} bytes per idle tenant (goal {m['goal_bytes_per_idle_tenant']}: "
              f"{'met' if m['met'] else 'missed'}), {m['bytes_per_private_tool']:,} bytes per private tool; RSS KiB {m['rss_kib']}"]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 tenants, fewer rounds: under a minute")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results.json"), help="JSON results file")
    parser.add_argument("--only", help="comma-separated targets to run, e.g. 1,4 (memory runs with 2)")
    parser.add_argument("--paired", action="store_true",
                        help="load both servers of a comparison at once, pinned to one CPU (two distinct "
                        "servers compared on capacity; the others alternate as usual)")  # fmt: skip
    args = parser.parse_args(argv)
    rounds, requests = (3, 120) if args.quick else (5, 1200)
    n, markers_each = (1000, 10) if args.quick else (10_000, 100)
    started = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="tenant-mcp-bench-") as tmp:
        root = Path(tmp)
        print(
            f"setup: control planes with 1 and {n:,} tenants, {n * markers_each:,} leak markers ...",
            flush=True,
        )
        for name in ("small", "big", "marked", "policied"):
            (root / name).mkdir()
        small = asyncio.run(provision.control_plane(root / "small" / "control.db"))
        big = asyncio.run(provision.control_plane(root / "big" / "control.db", tenants=n, databases=True))
        marked = asyncio.run(provision.control_plane(root / "marked" / "control.db", tenants=n,
                                                     markers_each=markers_each))  # fmt: skip
        policied = asyncio.run(provision.control_plane(root / "policied" / "control.db", tenants=n,
                                                       policies_each=10))  # fmt: skip
        notes = []
        for i in range(len(_MODES) * 2):
            (root / f"notes{i}").mkdir()
            notes.append(asyncio.run(provision.control_plane(root / f"notes{i}" / "control.db")))
        public_key, private_key = provision.jwt_key_pair(root)
        gen = LoadGenerator()
        paired = Pairing(seconds=1.0 if args.quick else 4.0) if args.paired else None
        try:
            with otlp_sink.running(free_port()) as sink:
                selected = comparisons(
                    small,
                    big,
                    marked,
                    (public_key, provision.mint(private_key)),
                    n,
                    policied,
                    notes,
                    sink.url,
                    f"tenant_mcp_bench_{os.getpid()}",
                )
                if args.only:
                    selected = [c for c in selected if c.target in args.only.split(",")]
                for c in selected:
                    c.requests //= 8 if args.quick else 1
                results = [compare(gen, c, rounds=rounds, requests=requests, paired=paired) for c in selected]
                # Requests the OTLP server answered (warm-up and rounds), and the spans that reached
                # the sink: the servers flush their exporters as they stop.
                otlp = {"requests": sum(max((c.requests or requests) // 3, c.b.load.concurrency)
                                        + rounds * (c.requests or requests)
                                        for c in selected if c.b.label == "telemetry on, OTLP"),
                        "spans_received": sink.spans()}  # fmt: skip
            mem = memory(gen, results, big, n) if any(r["target"] == "2" for r in results) else {}
        finally:
            gen.close()
            if paired is not None:
                paired.close()

    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": _machine(),
        "command": "python -m bench" + (" --quick" if args.quick else "") + (" --paired" if args.paired else ""),
        "tenants": n, "rounds": rounds, "requests_per_round": requests,
        "seconds": round(time.monotonic() - started),
        "results": results, "memory": mem, "otlp": otlp,
    }  # fmt: skip
    Path(args.output).write_text(json.dumps(report, indent=2))
    print()
    print(_table(report) if mem else _table({**report, "memory": _NO_MEMORY}))
    if otlp["requests"]:
        print(f"\nOTLP sink: {otlp['spans_received']:,} spans received for {otlp['requests']:,} requests")
    print(f"\n{report['seconds']} s; written to {args.output}")
    return 0


_JUDGED = {"latency": "p50", "scaling": "throughput", "throughput": "capacity"}
_NO_MEMORY = {"bytes_per_idle_tenant": 0, "bytes_per_private_tool": 0, "goal_bytes_per_idle_tenant": "-",
              "met": False, "rss_kib": "not measured"}  # fmt: skip

if __name__ == "__main__":
    sys.exit(main())
