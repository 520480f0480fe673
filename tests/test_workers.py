"""`tenant-mcp serve --workers N`: N processes on one port, sharing through Redis what must be
shared (rate limits, revocations) and writing one audit trail. Driven as 2026-07-28 clients do:
one POST per request, each on a fresh connection, so the kernel spreads them over the workers."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis

from tests.helpers import REDIS_URL, ROOT, ServerProcess, Tenants, clean_env

APP = "tests.servers.workers:app"
MODERN = "2026-07-28"


@pytest.fixture
def prefix() -> Iterator[str]:
    prefix = f"tmtest-{secrets.token_hex(6)}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


def _call(url: str, key: str) -> tuple[int, Any]:
    """One `pid` call on a connection of its own: (HTTP status, the JSON-RPC result or error)."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
    }
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "pid", "arguments": {}, "_meta": meta},
    }
    headers = {
        "Authorization": f"Bearer {key}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": "pid",
    }
    response = httpx2.post(url, content=json.dumps(body), headers=headers, timeout=10)
    if response.status_code != 200:
        return response.status_code, None
    answer = response.json()
    return 200, answer.get("result", {}).get("structuredContent", {}).get("result") or answer.get("error")


def _serve(db: str, *flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tenant_mcp.cli", "serve", APP, "--db", db, "--port", "0", *flags],
        cwd=ROOT, env=clean_env(**(env or {})), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_workers_refuse_sessions_and_a_missing_redis(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/cp.db"
    stateful = _serve(db, "--workers", "2", env={"TENANT_MCP_REDIS_URL": REDIS_URL})
    assert stateful.returncode == 2
    assert "--workers 2 needs --stateless" in stateful.stderr and "Traceback" not in stateful.stderr
    alone = _serve(db, "--workers", "2", "--stateless")
    assert alone.returncode == 2
    assert "--workers 2 needs Redis" in alone.stderr and "Traceback" not in alone.stderr


def test_two_workers_share_the_port_rate_limits_revocations_and_the_audit(
    tmp_path: Path, prefix: str
) -> None:
    db = f"sqlite:///{tmp_path}/cp.db"
    t = Tenants(db)
    t.create("acme")
    acme = t.key("acme")
    t.create("metered", plan="metered")
    metered = t.key("metered")
    env = {"TENANT_MCP_REDIS_URL": REDIS_URL, "TENANT_MCP_REDIS_PREFIX": prefix}
    server = ServerProcess(APP, db, "--stateless", "--workers", "2", env=env, log_dir=tmp_path)
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 20
        while len(pids) < 2 and time.monotonic() < deadline:
            status, pid = _call(server.url, acme)
            assert status == 200 and isinstance(pid, int), (status, pid)
            pids.add(pid)
        assert len(pids) == 2, "every connection went to one worker"
        served_acme = len(pids)

        # 10 calls a minute for the tenant, not per worker: exactly 10 of 30 get through.
        outcomes = [_call(server.url, metered) for _ in range(30)]
        served = [pid for status, pid in outcomes if status == 200 and isinstance(pid, int)]
        assert len(served) == 10, outcomes
        assert len(set(served)) == 2, "the metered calls all went to one worker"

        # A revocation reaches every worker at once (credentials are cached for 30 s).
        done = subprocess.run(
            [sys.executable, "-m", "tenant_mcp.cli", "key", "revoke", t.key_ids["acme"], "--db", db,
             "--redis-url", REDIS_URL, "--redis-prefix", prefix],
            cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        time.sleep(1.0)
        assert {_call(server.url, acme)[0] for _ in range(20)} == {401}
    finally:
        assert server.stop() in (0, 130)
    # Each worker flushed its audit events on the way out, into the one control plane.
    assert len([e for e in t.audit("metered") if e["target"] == "pid" and e["outcome"] == "ok"]) == 10
    assert len([e for e in t.audit("acme") if e["target"] == "pid" and e["outcome"] == "ok"]) >= served_acme
