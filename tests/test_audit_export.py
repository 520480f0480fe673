"""Audit events leave the server without polling (sinks), and leave the database on demand
(export with a cursor) or by age (retention), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from tenant_mcp.audit.log import _iso
from tenant_mcp.controlplane import AuditEvent, ControlPlane
from tests.helpers import ServerProcess, Tenants, in_thread, mcp_client, migrated, run_cli, standard_tenants

pytestmark = pytest.mark.anyio


class _Hook(BaseHTTPRequestHandler):
    received: list[tuple[int, str, list[dict[str, Any]]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status = 500 if not self.received else 200  # the first delivery fails: the sink must retry
        self.received.append((status, self.headers.get("Authorization", ""), body))
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[tuple[str, list[tuple[int, str, list[dict[str, Any]]]]]]:
    received: list[tuple[int, str, list[dict[str, Any]]]] = []
    handler = type("Hook", (_Hook,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/audit", received
    server.shutdown()
    server.server_close()


async def test_sinks_receive_written_events_and_the_webhook_retries(
    hook: tuple[str, list[Any]], tmp_path: Path
) -> None:
    url, received = hook
    t = standard_tenants(f"sqlite:///{tmp_path}/control.db")
    jsonl = tmp_path / "audit.jsonl"
    server = ServerProcess(
        "tests.servers.sinks:app",
        t.db_url,
        env={"HOOK_URL": url, "AUDIT_JSONL": str(jsonl)},
        log_dir=tmp_path,
    )
    try:
        async with mcp_client(server.url, t.keys["acme"]) as a:
            for _ in range(3):
                assert not (await a.call_tool("whoami", {})).is_error
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(status == 200 for status, _, _ in received):
            await anyio.sleep(0.1)
    finally:
        server.stop()
    assert received[0][0] == 500 and any(status == 200 for status, _, _ in received), received
    delivered = [e for status, _, body in received if status == 200 for e in body]
    assert all(auth == "Bearer hook-secret" for _, auth, _ in received)
    calls = [e for e in delivered if e["method"] == "tools/call" and e["target"] == "whoami"]
    assert len(calls) == 3 and {e["tenant_id"] for e in calls} == {t.ids["acme"]}
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len([e for e in lines if e["method"] == "tools/call"]) == 3


def _events(t: Tenants) -> None:
    """Four events of acme (two old, two new) and one of globex, through the real control plane."""
    old, new = _iso(time.time() - 200 * 86400), _iso(time.time())

    async def go() -> None:
        async with ControlPlane(t.db_url) as cp:
            await cp.write_audit(
                [
                    AuditEvent(at, t.ids[slug], "key:x", "tools/call", f"tool{i}", "ok", None, 1.0, None)
                    for i, (at, slug) in enumerate(
                        [(old, "acme"), (old, "acme"), (new, "acme"), (new, "acme"), (new, "globex")]
                    )
                ]
            )

    in_thread(go())


def _check_export_and_prune(t: Tenants) -> None:
    _events(t)
    everything = run_cli("audit", "export", "acme", db=t.db_url)
    assert everything.returncode == 0, everything.stderr
    rows = [json.loads(line) for line in everything.stdout.splitlines()]
    assert [r["target"] for r in rows] == ["tool0", "tool1", "tool2", "tool3"]
    assert {r["tenant"] for r in rows} == {"acme"}
    # Resume from a cursor: only what came after it.
    cursor = rows[1]["id"]
    rest = run_cli("audit", "export", "acme", "--after", str(cursor), db=t.db_url)
    assert [json.loads(line)["target"] for line in rest.stdout.splitlines()] == ["tool2", "tool3"]
    assert f"cursor {rows[-1]['id']}" in rest.stderr
    recent = run_cli("audit", "export", "--since", "7d", db=t.db_url)
    assert sorted(json.loads(line)["target"] for line in recent.stdout.splitlines()) == [
        "tool2",
        "tool3",
        "tool4",
    ]
    pruned = run_cli("audit", "prune", "--older-than", "90d", "--json", db=t.db_url)
    assert pruned.returncode == 0 and json.loads(pruned.stdout)["deleted"] == 2, pruned
    left = run_cli("audit", "export", db=t.db_url)
    assert sorted(json.loads(line)["target"] for line in left.stdout.splitlines()) == [
        "tool2",
        "tool3",
        "tool4",
    ]
    assert run_cli("audit", "acme", db=t.db_url).returncode == 0  # the short form still shows
    bad = run_cli("audit", "prune", "--older-than", "soon", db=t.db_url)
    assert bad.returncode == 2 and "duration" in bad.stderr and "Traceback" not in bad.stderr


def test_export_and_retention_on_sqlite(tmp_path: Path) -> None:
    _check_export_and_prune(standard_tenants(f"sqlite:///{tmp_path}/control.db"))


def test_export_and_retention_on_postgres() -> None:
    with migrated("tests.servers.probe:app") as pg:
        _check_export_and_prune(standard_tenants(pg.app))
