"""Benchmarks: what tenant isolation costs, as ratios measured in one run.

Each comparison starts both servers as separate processes, warms both up, then runs alternating
rounds A, B, A, B... with the load generator in a third process, and reports the median
throughput of each side and their ratio. Only ratios from the same run mean anything on a shared
machine.

    python -m bench            # the full run
    python -m bench --quick    # fewer tenants, markers and requests
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2

from bench.bare_server import TOKEN
from tenant_mcp.controlplane import ControlPlane

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Side:
    label: str
    command: list[str]
    token: str
    env: dict[str, str] | None = None


@contextmanager
def _server(side: Side) -> Iterator[str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANT_MCP_")} | (side.env or {})
    command = [part.replace("{port}", str(port)) for part in side.command]
    # A file, not a pipe: an unread pipe fills up with the server's log lines and stalls it.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 60
        try:
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"{side.label} exited: {log.read().decode()[-2000:]}")
                try:
                    httpx2.post(f"http://127.0.0.1:{port}/mcp", timeout=1)
                    break
                except httpx2.HTTPError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{side.label} did not start") from None
                    time.sleep(0.1)
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _load(url: str, token: str, requests: int, concurrency: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.load", url, token, str(requests), str(concurrency)],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:] or out.stdout[-2000:])
    result: dict[str, float] = json.loads(out.stdout)
    return result


def compare(
    name: str, a: Side, b: Side, *, rounds: int, requests: int, concurrency: int
) -> dict[str, object]:
    """B's throughput as a ratio of A's: alternating rounds, medians."""
    print(f"  {name}: {a.label} vs {b.label} ...", flush=True)
    with _server(a) as url_a, _server(b) as url_b:
        for url, side in ((url_a, a), (url_b, b)):
            _load(url, side.token, max(requests // 4, concurrency), concurrency)  # warm-up
        runs: dict[str, list[dict[str, float]]] = {a.label: [], b.label: []}
        for _ in range(rounds):
            for url, side in ((url_a, a), (url_b, b)):
                runs[side.label].append(_load(url, side.token, requests, concurrency))
    med = {label: statistics.median(r["rps"] for r in results) for label, results in runs.items()}
    p50 = {label: statistics.median(r["p50_ms"] for r in results) for label, results in runs.items()}
    return {
        "name": name,
        "a": a.label, "b": b.label,
        "rps_a": round(med[a.label], 1), "rps_b": round(med[b.label], 1),
        "p50_ms_a": round(p50[a.label], 2), "p50_ms_b": round(p50[b.label], 2),
        "ratio": round(med[b.label] / med[a.label], 3),
    }  # fmt: skip


async def _provision(db_url: str, marker_tenants: int, markers_each: int) -> str:
    """The measured tenant and its key, plus `marker_tenants` others with markers for the guard."""
    async with ControlPlane(db_url) as cp:
        await cp.create_tenant("bench", name="Bench Tenant")
        _, key = await cp.create_key("bench")
        async with cp.db.transaction() as tx:
            await tx.execute_many(
                "INSERT INTO tenants (id, slug, name, plan, status, metadata, created_at) VALUES (?,?,?,?,?,?,?)",
                [(f"{i:032x}", f"tenant-{i:05d}", f"Tenant {i:05d} Ltd", "free", "active", "{}", "2026-01-01")
                 for i in range(1, marker_tenants + 1)],
            )  # fmt: skip
            await tx.execute_many(
                "INSERT INTO leak_markers (tenant_id, kind, value, created_at) VALUES (?,?,?,?)",
                [(f"{i:032x}", "identifier", f"acct-{i:05d}-{j:03d}", "2026-01-01")
                 for i in range(1, marker_tenants + 1) for j in range(markers_each)],
            )  # fmt: skip
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: about a minute")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results.json"), help="JSON results file")
    parser.add_argument("--concurrency", type=int, default=8, help="in-flight requests (default 8)")
    args = parser.parse_args(argv)
    rounds, requests = (3, 300) if args.quick else (5, 1500)
    marker_tenants, markers_each = (1000, 10) if args.quick else (10_000, 100)

    with tempfile.TemporaryDirectory(prefix="tenant-mcp-bench-") as tmp:
        db_url = f"sqlite:///{tmp}/control.db"
        print(f"setup: {marker_tenants} tenants x {markers_each} leak markers ...", flush=True)
        key = asyncio.run(_provision(db_url, marker_tenants, markers_each))
        serve = [sys.executable, "-m", "tenant_mcp.cli", "serve", "--port", "{port}", "--db", db_url,
                 "--stateless", "--json-response", "--log-level", "warning"]  # fmt: skip
        sdk = Side("bare SDK", [sys.executable, "bench/bare_server.py", "{port}"], TOKEN)
        tenant = Side("tenant_mcp", [*serve[:4], "example_servers.notes:app", *serve[4:]], key)
        no_guard = Side("guard off", [*serve[:4], "bench.servers:notes_without_guard", *serve[4:]], key)
        guarded = Side(f"guard on ({marker_tenants * markers_each:,} markers)", tenant.command, key)
        results = [
            compare("whoami, stateless JSON", sdk, tenant, rounds=rounds, requests=requests,
                    concurrency=args.concurrency),
            compare("leak guard", no_guard, guarded, rounds=rounds, requests=requests,
                    concurrency=args.concurrency),
        ]  # fmt: skip

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
        "command": "python -m bench" + (" --quick" if args.quick else ""),
        "rounds": rounds, "requests_per_round": requests, "concurrency": args.concurrency,
        "results": results,
    }  # fmt: skip
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"\n{report['date']}, {report['machine']}, `{report['command']}`\n")
    print("| comparison | A | B | A req/s | B req/s | B/A |")
    print("|---|---|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['name']} | {r['a']} | {r['b']} | {r['rps_a']} | {r['rps_b']} | {r['ratio']} |")
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
