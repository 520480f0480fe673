"""Telemetry per tenant, from real processes: spans of an OpenTelemetry SDK, a Prometheus scrape
parsed with prometheus-client's parser, and the JSON request log."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.shared.exceptions import MCPError
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    ROOT,
    ServerProcess,
    Tenants,
    clean_env,
    free_port,
    mcp_client,
    postgres_database,
    standard_tenants,
    tool_result,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def tenants(tmp_path: Path) -> Tenants:
    return standard_tenants(f"sqlite:///{tmp_path}/control.db")


async def test_spans_carry_their_own_tenant_under_interleaved_load(tenants: Tenants, tmp_path: Path) -> None:
    server = ServerProcess("tests.servers.traced:app", tenants.db_url, log_dir=tmp_path)
    try:
        async with (
            mcp_client(server.url, tenants.keys["acme"]) as a,
            mcp_client(server.url, tenants.keys["globex"]) as b,
        ):

            async def calls(client: Any, who: str) -> None:
                for i in range(5):
                    assert not (await client.call_tool("add_item", {"value": f"{who}-{i}"})).is_error

            await asyncio.gather(calls(a, "acme"), calls(b, "globex"))
            headers = (await a.call_tool("outbound_headers", {})).structured_content
            assert headers is not None
            spans = tool_result(await a.call_tool("recorded_spans", {}))
    finally:
        server.stop()
    by_id = {s["id"]: s for s in spans}
    calls_by_tenant: dict[str, int] = {}
    for span in spans:
        if span["name"] == "tools/call add_item":
            tenant = span["attributes"]["tenant.id"]
            calls_by_tenant[tenant] = calls_by_tenant.get(tenant, 0) + 1
            assert span["attributes"]["tenant.plan"] == ("pro" if tenant == tenants.ids["acme"] else "free")
            assert "enduser.id" not in span["attributes"]
    assert calls_by_tenant == {tenants.ids["acme"]: 5, tenants.ids["globex"]: 5}
    db_spans = [s for s in spans if s["name"] == "ctx.db"]
    assert len(db_spans) >= 10
    for span in db_spans:  # a statement is a child of the call that ran it, in that call's tenant
        parent = by_id[span["parent"]]
        assert parent["name"] == "tools/call add_item" and span["attributes"]["db.operation.name"] == "INSERT"
    # The tenant never travels in propagation headers (no baggage, nothing naming it).
    assert "traceparent" in headers and "baggage" not in headers
    assert not any(tenants.ids["acme"] in v or "acme" in v for v in headers.values())


async def test_metrics_are_scraped_on_their_own_address_with_bounded_tenant_labels(
    tenants: Tenants, tmp_path: Path
) -> None:
    port = free_port()
    server = ServerProcess(
        "tests.servers.probe:app", tenants.db_url, "--metrics-address", f"127.0.0.1:{port}",
        "--metrics-tenants", "acme", log_dir=tmp_path,
    )  # fmt: skip
    try:
        async with (
            mcp_client(server.url, tenants.keys["acme"]) as a,
            mcp_client(server.url, tenants.keys["globex"]) as b,
        ):
            for _ in range(3):
                assert not (await a.call_tool("whoami", {})).is_error
            for _ in range(2):
                assert not (await b.call_tool("whoami", {})).is_error
            with pytest.raises(MCPError, match="not accepted"):
                await b.call_tool("whoami", {"tenant_id": tenants.ids["acme"]})
        text = httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        on_mcp_port = httpx2.get(f"{server.base}/metrics", timeout=5)
    finally:
        server.stop()
    assert on_mcp_port.status_code != 200 or "tenant_mcp_requests" not in on_mcp_port.text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    calls = {
        (s.labels["tenant"], s.labels["plan"], s.labels["outcome"]): s.value
        for s in families["tenant_mcp_requests"].samples
        if s.name.endswith("_total") and s.labels["method"] == "tools/call"
    }
    assert calls[("acme", "pro", "ok")] == 3
    assert calls[("other", "free", "ok")] == 2
    tenant_labels = {s.labels["tenant"] for f in families.values() for s in f.samples if "tenant" in s.labels}
    assert tenant_labels <= {"acme", "other"}  # globex's slug never becomes a label
    refusals = {
        (s.labels["reason"], s.labels["tenant"]): s.value
        for s in families["tenant_mcp_refusals"].samples
        if s.name.endswith("_total")
    }
    assert refusals[("tenant_override", "other")] >= 1
    for gauge in (
        "tenant_mcp_request_duration_seconds",
        "tenant_mcp_audit_queue_depth",
        "tenant_mcp_calls_in_flight",
    ):
        assert gauge in families, sorted(families)


async def test_json_request_log_has_one_line_per_request_without_values(
    tenants: Tenants, tmp_path: Path
) -> None:
    server = ServerProcess("tests.servers.probe:app", tenants.db_url, "--log-format", "json",
                           "--log-level", "info", log_dir=tmp_path)  # fmt: skip
    try:
        async with mcp_client(server.url, tenants.keys["acme"]) as a:
            assert not (await a.call_tool("add_item", {"value": "do-not-log-this-value"})).is_error
    finally:
        server.stop()
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith('{"time"')]
    call = next(line for line in lines if line["method"] == "tools/call")
    assert call["tenant"] == "acme" and call["target"] == "add_item" and call["outcome"] == "ok"
    assert set(call) >= {"time", "principal", "duration_ms", "request_id"}
    log = server.log.read_text()
    assert "do-not-log-this-value" not in log
    assert "Terminating session" not in log and '"POST /mcp' not in log  # no per-request noise beside it


async def test_default_logging_writes_no_line_per_request(tenants: Tenants, tmp_path: Path) -> None:
    """`serve`'s default log level writes start-up lines, not one per request (stateless mode,
    where the SDK ends a transport after every request and says so at INFO)."""
    server = ServerProcess("tests.servers.probe:app", tenants.db_url, "--stateless", "--json-response",
                           "--log-level", "info", log_dir=tmp_path)  # fmt: skip
    try:
        headers = {
            "Authorization": f"Bearer {tenants.keys['acme']}",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-06-18",
        }
        async with httpx2.AsyncClient(timeout=30) as http:

            async def calls(ids: range) -> None:
                for i in ids:
                    body = {"jsonrpc": "2.0", "id": i, "method": "tools/call",
                            "params": {"name": "whoami", "arguments": {}}}  # fmt: skip
                    assert (await http.post(server.url, json=body, headers=headers)).status_code == 200

            await calls(range(20))
            lines = server.log.read_text().splitlines()
            await calls(range(20, 40))
        assert server.log.read_text().splitlines() == lines, server.log.read_text()[-2000:]
    finally:
        server.stop()


LEGACY = "2025-11-25"
SSE = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(params=["sqlite", "postgresql"])
def data_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/control.db"
        return
    with postgres_database() as pg:
        done = subprocess.run(
            [sys.executable, "-m", "tenant_mcp.cli", "migrate", "tests.servers.gauged:app", "--db", pg.app,
             "--data-db", pg.data, "--migration-url", pg.owner],
            cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        yield pg.app


async def test_gauges_show_the_data_pool_sessions_and_streams_as_they_open_and_close(
    data_db: str, tmp_path: Path
) -> None:
    backend = "postgresql" if data_db.startswith("postgresql") else "sqlite"
    tenants = standard_tenants(data_db)
    port = free_port()
    server = ServerProcess("tests.servers.gauged:app", data_db, "--metrics-address", f"127.0.0.1:{port}",
                           log_dir=tmp_path)  # fmt: skip

    def gauges() -> dict[str, float]:
        text = httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        return {
            s.name + "".join(f",{k}={v}" for k, v in sorted(s.labels.items())): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name in ("tenant_mcp_db_connections_open", "tenant_mcp_db_connections_in_use",
                          "tenant_mcp_sessions_open", "tenant_mcp_streams_open")
        }  # fmt: skip

    async def until(expected: dict[str, float]) -> dict[str, float]:
        seen: dict[str, float] = {}
        with anyio.move_on_after(15):
            while True:
                seen = await anyio.to_thread.run_sync(gauges)
                if all(seen.get(name) == value for name, value in expected.items()):
                    return seen
                await anyio.sleep(0.05)
        raise AssertionError(f"expected {expected}, scraped {seen}")

    in_use = f"tenant_mcp_db_connections_in_use,backend={backend}"
    idle = {
        in_use: 0,
        "tenant_mcp_sessions_open": 0,
        "tenant_mcp_streams_open,kind=get": 0,
        "tenant_mcp_streams_open,kind=listen": 0,
    }
    try:
        await until(idle)
        async with httpx2.AsyncClient(timeout=30) as http, anyio.create_task_group() as tg:
            # A 2025-era session, and its GET stream.
            auth = {**SSE, "Authorization": f"Bearer {tenants.keys['acme']}"}
            init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                    "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
            r = await http.post(server.url, headers=auth, json=init)
            session = {**auth, "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": LEGACY}
            r = await http.post(server.url, headers=session, json={"jsonrpc": "2.0", "method": "notifications/initialized"})  # fmt: skip
            assert r.status_code == 202, r.text
            await until({**idle, "tenant_mcp_sessions_open": 1})

            async def get_stream() -> None:
                async with http.stream(
                    "GET", server.url, headers={**session, "Accept": "text/event-stream"}
                ) as s:
                    assert s.status_code == 200
                    async for _ in s.aiter_lines():
                        pass

            async def listen_stream() -> None:
                async with (
                    mcp_client(server.url, tenants.keys["globex"]) as c,
                    c.listen(resource_subscriptions=["items://1"]),
                ):
                    await anyio.sleep_forever()

            async def hold_db() -> None:
                async with mcp_client(server.url, tenants.keys["acme"]) as c:
                    assert not (await c.call_tool("hold_db", {"seconds": 60})).is_error

            for task in (get_stream, listen_stream, hold_db):
                tg.start_soon(task)
            busy = await until({
                in_use: 1,
                "tenant_mcp_streams_open,kind=get": 1,
                "tenant_mcp_streams_open,kind=listen": 1,
            })  # fmt: skip
            assert busy[f"tenant_mcp_db_connections_open,backend={backend}"] >= 1
            assert (await http.delete(server.url, headers=session)).status_code == 200
            tg.cancel_scope.cancel()
        await until(idle)
    finally:
        server.stop()
