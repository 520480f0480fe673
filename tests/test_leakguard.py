"""The outbound leak guard: other tenants' markers in a response are caught, whatever code path
put them there; a tenant's own markers never count; matching is on token boundaries."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from tenant_mcp.errors import TenantMCPError
from tenant_mcp.leakguard import LeakGuard, serialize
from tests.conftest import ROOT, ServerProcess, Tenants, clean_env, mcp_client

pytestmark = pytest.mark.anyio


def _leaky(tmp_path_factory: pytest.TempPathFactory, policy: str) -> tuple[ServerProcess, Tenants]:
    db = f"sqlite:///{tmp_path_factory.mktemp('leaky-' + policy)}/cp.db"
    t = Tenants(db)
    t.create("acme", name="Acme Corporation")
    t.create("globex", name="Globex Industries")
    t.key("acme")
    t.key("globex")
    return ServerProcess("tests.servers.leaky:app", db, env={"LEAKY_POLICY": policy}), t


@pytest.fixture(scope="module")
def blocking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Tenants]]:
    server, t = _leaky(tmp_path_factory, "block")
    yield server, t
    server.stop()


async def _withheld(coro: Any) -> None:
    with pytest.raises(MCPError) as info:
        await coro
    assert "withheld" in info.value.error.message
    assert "acme" not in info.value.error.message.lower()


async def _leak_events(t: Tenants, slug: str) -> list[dict[str, Any]]:
    for _ in range(40):
        events = [e for e in t.audit(slug) if e["outcome"] == "leak"]
        if events:
            return events
        await anyio.sleep(0.05)
    return []


async def test_a_cache_keyed_without_the_tenant_is_caught(blocking: tuple[ServerProcess, Tenants]) -> None:
    server, t = blocking
    async with mcp_client(server.url, t.keys["acme"]) as a:
        assert (await a.call_tool("profile_cached", {})).structured_content == {
            "name": "Acme Corporation",
            "plan": "free",
        }
    async with mcp_client(server.url, t.keys["globex"]) as b:
        await _withheld(b.call_tool("profile_cached", {}))
    events = await _leak_events(t, "globex")
    assert events and all(f"marker of tenant {t.ids['acme']}" in e["reason"] for e in events)
    assert {e["reason"].split()[0] for e in events} == {"slug", "name"}  # "Acme" and "Acme Corporation"
    assert "Acme Corporation" not in json.dumps(events), "the audit never stores the marker itself"
    owner_side = await _leak_events(t, "acme")
    assert owner_side and t.ids["globex"] in owner_side[0]["reason"]


async def test_registered_identifiers_and_unfiltered_lists_are_caught(
    blocking: tuple[ServerProcess, Tenants],
) -> None:
    server, t = blocking
    async with mcp_client(server.url, t.keys["acme"]) as a:
        await a.call_tool("register_account", {"account": "ACCT-778899"})
        await a.call_tool("remember", {"text": "invoice for ACCT-778899 is overdue"})
        own = await a.call_tool("recall", {})  # its own marker never counts against it
        assert "ACCT-778899" in json.dumps(own.structured_content)
    async with mcp_client(server.url, t.keys["globex"]) as b:
        await b.call_tool("remember", {"text": "globex memo"})
        await _withheld(b.call_tool("recall", {}))
        assert (await b.call_tool("own_recall", {})).structured_content == {"result": ["globex memo"]}
        # markers shorter than the safe length are refused
        assert (await b.call_tool("register_account", {"account": "abc"})).is_error


async def test_a_query_outside_ctx_db_is_caught_by_a_canary(blocking: tuple[ServerProcess, Tenants]) -> None:
    server, t = blocking
    planted = subprocess.run(
        [sys.executable, "-m", "tenant_mcp.cli", "canary", "plant", "acme", "--db", t.db_url, "--json"],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    canary = json.loads(planted.stdout)["canary"]
    await anyio.sleep(2.5)  # the server picks up markers planted by another process
    async with mcp_client(server.url, t.keys["globex"]) as b:
        await _withheld(b.call_tool("shared_search", {}))
    async with mcp_client(server.url, t.keys["acme"]) as a:
        assert canary in json.dumps((await a.call_tool("shared_search", {})).structured_content)


async def test_words_that_merely_contain_a_marker_pass(blocking: tuple[ServerProcess, Tenants]) -> None:
    server, t = blocking
    async with mcp_client(server.url, t.keys["globex"]) as b:
        result = await b.call_tool("echo", {"text": "the acmeist globexx movement"})
        assert not result.is_error
        await _withheld(b.call_tool("echo", {"text": "we compete with ACME."}))


@pytest.mark.parametrize("policy", ["redact", "report"])
async def test_redact_and_report_policies(tmp_path_factory: pytest.TempPathFactory, policy: str) -> None:
    server, t = _leaky(tmp_path_factory, policy)
    try:
        async with mcp_client(server.url, t.keys["acme"]) as a:
            await a.call_tool("profile_cached", {})
        async with mcp_client(server.url, t.keys["globex"]) as b:
            leaked = (await b.call_tool("profile_cached", {})).structured_content
        if policy == "redact":
            assert leaked == {"name": "[redacted]", "plan": "free"}
        else:
            assert leaked == {"name": "Acme Corporation", "plan": "free"}
        events = await _leak_events(t, "globex")
        assert events and f"policy {policy}" in events[0]["reason"]
    finally:
        server.stop()


def test_guard_rules() -> None:
    guard = LeakGuard("block")
    with pytest.raises(TenantMCPError):
        guard.add("a", "abc", "identifier")
    guard.add("a", "Acme Corp", "name")
    guard.add("a", "shared-term", "identifier")
    guard.add("b", "shared-term", "identifier")  # held by both: never a leak for either
    guard.add("b", "Zürich Bank", "name")
    text = serialize({"x": "ACME CORP owes Zürich Bank; acme corporation; shared-term"})
    assert [(h.owner, h.kind) for h in guard.scan(text, "b")] == [("a", "name")]
    assert [(h.owner, h.kind) for h in guard.scan(text, "a")] == [("b", "name")]
    assert guard.scan(text, "a")[0].end - guard.scan(text, "a")[0].start == len("Zürich Bank")
    assert guard.redact({"x": "pay ACME CORP"}, guard.scan(serialize({"x": "pay ACME CORP"}), "b")) == {
        "x": "pay [redacted]"
    }


def test_incremental_markers_and_many_tenants() -> None:
    guard = LeakGuard("block")
    guard.add_many(
        [(f"t{i}", f"tenant-{i:05d}-mark-{j}", "identifier") for i in range(2000) for j in range(5)]
    )
    assert guard.marker_count == 10_000
    for i in range(3000):  # crosses the merge threshold of the small automaton
        guard.add(f"new{i}", f"fresh-{i:05d}", "identifier")
    assert guard.marker_count == 13_000
    text = "report mentions tenant-01234-mark-3 and fresh-02999 and fresh-00001"
    owners = sorted(hit.owner for hit in guard.scan(text, "t1"))
    assert owners == ["new1", "new2999", "t1234"]
