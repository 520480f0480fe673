"""Servers in their own processes, a load generator in another, alternating rounds, medians.

Only ratios measured in one run mean anything on a shared machine, so every comparison starts its
servers side by side, warms each up, and then alternates rounds A, B, A, B... Besides throughput
and median and 99th-percentile latency it reads each server's CPU time per request from /proc,
which moves less with the machine's load than throughput does.

Paired mode (`compare(..., paired=True)`) loads both servers at the same moment instead, both
pinned to one CPU and each driven by its own load generator on the other CPUs, for the same number
of seconds: the two then share whatever else the machine does in that interval, and the
comparison is also one under CPU contention (a server at capacity is a contended server).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx2

logging.getLogger("httpx2").setLevel(logging.WARNING)  # not a line per readiness probe
ROOT = Path(__file__).resolve().parent.parent
_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Server:
    """A server command (`{port}` is filled in) and its environment."""

    label: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Load:
    """What the load generator sends; see `bench.load`."""

    tokens: tuple[str, ...]
    mode: str = "json"
    method: str = "tools/call"
    tool: str = "whoami"
    concurrency: int = 8
    arguments: tuple[tuple[str, str], ...] = ()  # the tool's arguments, the same in every call


@dataclass(frozen=True)
class Side:
    label: str
    server: Server
    load: Load


@dataclass
class Running:
    url: str
    pid: int
    log: IO[bytes] = field(repr=False)

    def _tree(self) -> list[int]:
        """The server process and its descendants (the workers of `serve --workers N`)."""
        pids, i = [self.pid], 0
        while i < len(pids):
            for task in Path(f"/proc/{pids[i]}/task").iterdir():
                pids += [int(child) for child in (task / "children").read_text().split()]
            i += 1
        return pids

    def cpu_seconds(self) -> float:
        """User and system time of the whole server (every process, all threads)."""
        total = 0
        for pid in self._tree():
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
        return total / _TICK

    def rss_kib(self) -> int:
        total = 0
        for pid in self._tree():
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            total += next(int(line.split()[1]) for line in lines if line.startswith("VmRSS:"))
        return total


@contextmanager
def _launch(
    server: Server, cpus: set[int] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], Running]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENANT_MCP_", "BENCH_"))}
    env |= dict(server.env)
    command = [part.replace("{port}", str(port)) for part in server.command]
    # A file, not a pipe: an unread pipe fills up with the server's log lines and stalls it.
    with tempfile.TemporaryFile() as log:
        # Pinned before it starts: every thread the server starts later inherits the CPU set.
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log, preexec_fn=pin
        )
        try:
            yield proc, Running(f"http://127.0.0.1:{port}/mcp", proc.pid, log)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(server: Server, proc: subprocess.Popen[bytes], running: Running) -> None:
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            running.log.seek(0)
            raise RuntimeError(f"{server.label} exited: {running.log.read().decode()[-2000:]}")
        try:
            httpx2.post(running.url, timeout=1)
            return
        except httpx2.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.label} did not start") from None
            time.sleep(0.1)


@contextmanager
def serve(*servers: Server, cpus: set[int] | None = None) -> Iterator[dict[Server, Running]]:
    """Start the distinct servers side by side (their start-up overlaps) and wait until each answers;
    with `cpus`, every server runs on those CPUs only."""
    with ExitStack() as stack:
        launched = {s: stack.enter_context(_launch(s, cpus)) for s in dict.fromkeys(servers)}
        for s, (proc, running) in launched.items():
            _wait_ready(s, proc, running)
        yield {s: running for s, (_, running) in launched.items()}


class LoadGenerator:
    """The `bench.load` process, kept running across rounds."""

    def __init__(self, cpus: set[int] | None = None) -> None:
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.load"], cwd=ROOT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=pin,
        )  # fmt: skip

    def run(self, url: str, load: Load, requests: int) -> dict[str, float]:
        self.start(url, load, requests=requests)
        return self.result()

    def start(self, url: str, load: Load, *, requests: int = 0, seconds: float = 0.0) -> None:
        """Send a job without waiting for it: `requests` in all, or for `seconds`."""
        assert self._proc.stdin is not None
        job = {"url": url, "requests": requests, "seconds": seconds, "tokens": list(load.tokens),
               "mode": load.mode, "method": load.method, "tool": load.tool,
               "concurrency": load.concurrency, "arguments": dict(load.arguments)}  # fmt: skip
        self._proc.stdin.write(json.dumps(job) + "\n")
        self._proc.stdin.flush()

    def result(self) -> dict[str, float]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            assert self._proc.stderr is not None
            raise RuntimeError(f"load generator failed: {self._proc.stderr.read()[-2000:]}")
        result: dict[str, float] = json.loads(line)
        return result

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(30)


@dataclass
class Comparison:
    """How B compares to A; `metric` is what the target is about."""

    target: str
    name: str
    a: Side
    b: Side
    metric: str = "throughput"  # judged on capacity; "scaling": on throughput; "latency": on p50
    goal: str = ""
    threshold: float = 0.0
    requests: int = 0  # per round; 0 means the run's default


@dataclass
class Pairing:
    """Paired mode: the CPU both servers share, and one load generator per side on the others."""

    seconds: float
    server_cpu: int = field(default_factory=lambda: max(os.sched_getaffinity(0)))
    generators: tuple[LoadGenerator, LoadGenerator] = field(init=False)

    def __post_init__(self) -> None:
        others = os.sched_getaffinity(0) - {self.server_cpu}
        if not others:
            raise RuntimeError("paired mode needs two CPUs: one for the servers, one for the load")
        self.generators = (LoadGenerator(others), LoadGenerator(others))

    def applies(self, c: Comparison) -> bool:
        """Two distinct servers compared on capacity; one server under two loads, or a latency
        target, is measured in alternating rounds."""
        return c.a.server != c.b.server and c.metric == "throughput"

    def round(self, running: dict[Server, Running], sides: tuple[Side, Side]) -> list[dict[str, float]]:
        servers = [running[side.server] for side in sides]
        cpu = [server.cpu_seconds() for server in servers]
        for gen, side, server in zip(self.generators, sides, servers, strict=True):
            gen.start(server.url, side.load, seconds=self.seconds)
        results = [gen.result() for gen in self.generators]
        for measured, server, before in zip(results, servers, cpu, strict=True):
            measured["cpu_ms"] = (server.cpu_seconds() - before) * 1000 / measured["requests"]
        return results

    def close(self) -> None:
        for gen in self.generators:
            gen.close()


def compare(
    gen: LoadGenerator, c: Comparison, *, rounds: int, requests: int, paired: Pairing | None = None
) -> dict[str, Any]:
    """Alternating rounds (or paired ones, see the module docstring); medians per side; the ratio
    B/A of the metric and of capacity (A's CPU time per request over B's); each server's resident
    memory at the end. A throughput target is judged on capacity, a latency target on the p50
    ratio; p99 latency is reported for both."""
    requests = c.requests or requests
    paired = paired if paired is not None and paired.applies(c) else None
    method = "paired" if paired else "alternating"
    print(f"  [{c.target}] {c.name}: {c.a.label} vs {c.b.label} ({method}) ...", flush=True)
    with serve(c.a.server, c.b.server, cpus={paired.server_cpu} if paired else None) as running:
        for side in (c.a, c.b):  # warm-up
            gen.run(running[side.server].url, side.load, max(requests // 3, side.load.concurrency))
        runs: dict[str, list[dict[str, float]]] = {c.a.label: [], c.b.label: []}
        for _ in range(rounds):
            if paired:
                for side, measured in zip((c.a, c.b), paired.round(running, (c.a, c.b)), strict=True):
                    runs[side.label].append(measured)
                continue
            for side in (c.a, c.b):
                server = running[side.server]
                cpu = server.cpu_seconds()
                measured = gen.run(server.url, side.load, requests)
                measured["cpu_ms"] = (server.cpu_seconds() - cpu) * 1000 / measured["requests"]
                runs[side.label].append(measured)
        rss = {side.label: running[side.server].rss_kib() for side in (c.a, c.b)}

    def med(side: Side, key: str) -> float:
        return statistics.median(r[key] for r in runs[side.label])

    rps_a, rps_b = med(c.a, "rps"), med(c.b, "rps")
    p50_a, p50_b = med(c.a, "p50_ms"), med(c.b, "p50_ms")
    ratio = p50_b / p50_a if c.metric == "latency" else rps_b / rps_a
    # Throughput on a shared machine swings with other processes' load; CPU time per request of
    # the server itself barely does, and its inverse ratio is B's capacity relative to A's.
    capacity = med(c.a, "cpu_ms") / med(c.b, "cpu_ms")
    met = {"latency": ratio <= c.threshold, "scaling": ratio >= c.threshold}.get(
        c.metric, capacity >= c.threshold
    )
    result: dict[str, Any] = {
        "target": c.target, "name": c.name, "a": c.a.label, "b": c.b.label, "metric": c.metric,
        "rps_a": round(rps_a, 1), "rps_b": round(rps_b, 1),
        "p50_ms_a": round(p50_a, 2), "p50_ms_b": round(p50_b, 2),
        "p99_ms_a": round(med(c.a, "p99_ms"), 2), "p99_ms_b": round(med(c.b, "p99_ms"), 2),
        "p99_ratio": round(med(c.b, "p99_ms") / med(c.a, "p99_ms"), 3), "method": method,
        "cpu_ms_per_request_a": round(med(c.a, "cpu_ms"), 3), "cpu_ms_per_request_b": round(med(c.b, "cpu_ms"), 3),
        "capacity_ratio": round(capacity, 3),
        "ratio": round(ratio, 3), "goal": c.goal, "met": met,
        "rss_kib_a": rss[c.a.label], "rss_kib_b": rss[c.b.label],
        "rounds": runs,
    }  # fmt: skip
    return result
