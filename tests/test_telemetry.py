"""Telemetry per tenant, from real processes: spans of an OpenTelemetry SDK, a Prometheus scrape
parsed with prometheus-client's parser, and the JSON request log."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.shared.exceptions import MCPError
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerProcess, Tenants, free_port, mcp_client, standard_tenants

pytestmark = pytest.mark.anyio


def _rows(result: Any) -> Any:
    assert not result.is_error, result.content
    return result.structured_content["result"]


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
            spans = _rows(await a.call_tool("recorded_spans", {}))
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
            for i in range(20):
                body = {
                    "jsonrpc": "2.0",
                    "id": i,
                    "method": "tools/call",
                    "params": {"name": "whoami", "arguments": {}},
                }
                assert (await http.post(server.url, json=body, headers=headers)).status_code == 200
            lines = server.log.read_text().splitlines()
            for i in range(20, 40):
                body = {
                    "jsonrpc": "2.0",
                    "id": i,
                    "method": "tools/call",
                    "params": {"name": "whoami", "arguments": {}},
                }
                assert (await http.post(server.url, json=body, headers=headers)).status_code == 200
        assert server.log.read_text().splitlines() == lines, server.log.read_text()[-2000:]
    finally:
        server.stop()
