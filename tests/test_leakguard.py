"""The outbound leak guard: other tenants' markers in a response are caught, whatever code path
put them there; a tenant's own markers never count; matching is on token boundaries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from tenant_mcp.audit.leakguard import LeakGuard, serialize
from tenant_mcp.errors import TenantMCPError
from tests.helpers import ServerProcess, Tenants, mcp_client, run_cli

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
        with pytest.raises(MCPError) as info:  # the error's data is scanned like its message
            await b.call_tool("strict_lookup", {"key": "x"})
        assert "withheld" in info.value.error.message and info.value.error.data is None
        assert (await b.call_tool("own_recall", {})).structured_content == {"result": ["globex memo"]}
        # markers shorter than the safe length are refused
        assert (await b.call_tool("register_account", {"account": "abc"})).is_error


async def test_a_query_outside_ctx_db_is_caught_by_a_canary(blocking: tuple[ServerProcess, Tenants]) -> None:
    server, t = blocking
    planted = run_cli("canary", "plant", "acme", "--json", db=t.db_url, check=True)
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


async def _answer(coro: Any, name: str) -> str:
    """The answer to a request about `name`, with the name itself replaced."""
    try:
        result = await coro
    except MCPError as exc:
        return json.dumps([exc.error.code, exc.error.message.replace(name, "X")])
    return json.dumps(result.model_dump(mode="json", exclude={"meta"})).replace(name, "X")


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_reflected_text_is_never_a_leak(blocking: tuple[ServerProcess, Tenants], mode: str) -> None:
    """Another tenant's slug, name or registered identifier in the caller's own request is no oracle:
    an unknown name answers the same whoever owns the string, and nothing lands in the owner's trail."""
    server, t = blocking
    async with mcp_client(server.url, t.keys["acme"]) as a:
        await a.call_tool("register_account", {"account": "ACCT-REFLECT-42"})
    probes = ["acme", "Acme Corporation", "ACCT-REFLECT-42"]
    log_start = server.log.stat().st_size
    async with mcp_client(server.url, t.keys["globex"], mode=mode) as b:
        echoed = await b.call_tool("echo", {"text": "we compete with ACME. and ACCT-REFLECT-42"})
        assert not echoed.is_error and "ACME." in json.dumps(echoed.structured_content)
        for probe in probes:
            missing = "zz-unknown-" + probe.replace(" ", "-").lower()
            for send in (
                lambda n: b.call_tool(n, {}),
                lambda n: b.read_resource(f"notes://{n}"),
                lambda n: b.get_prompt(n, {}),
            ):
                assert await _answer(send(probe), probe) == await _answer(send(missing), missing)
    await anyio.sleep(0.6)  # two audit flushes
    assert not [e for e in t.audit("acme") if e["outcome"] == "leak" and e["principal"] is None and any(
        p in (e["target"] or "") for p in probes)], "a probe with the caller's own text wrote into acme's trail"  # fmt: skip
    log = server.log.read_text()[log_start:]
    assert "Traceback" not in log, "an unknown prompt must not log a traceback"


async def test_client_text_in_the_audit_trail_is_bounded(blocking: tuple[ServerProcess, Tenants]) -> None:
    server, t = blocking
    long = "probe-" + "x" * 100_000
    async with mcp_client(server.url, t.keys["globex"], mode="legacy") as b:  # 2026 puts the name in a header
        assert (await b.call_tool(long + " acme", {})).is_error
        with pytest.raises(MCPError):
            await b.get_prompt(long, {})
        with pytest.raises(MCPError):
            await b.read_resource(f"notes://{long}")
    for _ in range(40):
        events = [e for e in t.audit("globex") if "probe-xxx" in (e["target"] or "")]
        if len(events) >= 3:
            break
        await anyio.sleep(0.05)
    assert len(events) >= 3
    for event in events:
        for field in ("target", "reason", "principal", "method"):
            assert len(event[field] or "") <= 200, (field, len(event[field]))


@pytest.mark.parametrize("policy", ["block", "redact", "report"])
async def test_a_marker_from_another_tenants_data_is_caught_next_to_a_reflected_one(
    tmp_path_factory: pytest.TempPathFactory, policy: str
) -> None:
    server, t = _leaky(tmp_path_factory, policy)
    try:
        async with mcp_client(server.url, t.keys["acme"]) as a:
            await a.call_tool("register_account", {"account": "ACCT-445566"})
            await a.call_tool("remember", {"text": "invoice for ACCT-445566 is overdue"})
        async with mcp_client(server.url, t.keys["globex"]) as b:
            # the caller names acme itself; the identifier comes out of acme's data
            query = {"query": "anything about Acme?"}
            if policy == "block":
                await _withheld(b.call_tool("search_memory", query))
            else:
                found = (await b.call_tool("search_memory", query)).structured_content
                matches = ["invoice for [redacted] is overdue"] if policy == "redact" else [
                    "invoice for ACCT-445566 is overdue"]  # fmt: skip
                assert found == {"query": "anything about Acme?", "matches": matches}
            # a caller that sends the identifier itself learns nothing new from it
            own = await b.call_tool("search_memory", {"query": "ACCT-445566"})
            assert not own.is_error and "ACCT-445566 is overdue" in json.dumps(own.structured_content)
        events = await _leak_events(t, "globex")
        assert events and all(e["reason"].startswith("identifier marker") for e in events), events
        assert all(f"policy {policy}" in e["reason"] for e in events)
        await anyio.sleep(0.6)
        assert len([e for e in t.audit("globex") if e["outcome"] == "leak"]) == 1
    finally:
        server.stop()


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
    # a marker the caller sent itself is not a leak; one it did not send still is
    assert [(h.owner, h.kind) for h in guard.scan(text, "b", sent={"q": "acme corp?"})] == []
    assert [(h.owner, h.kind) for h in guard.scan(text, "a", sent={"q": "Acme Corp"})] == [("b", "name")]
    # A value that becomes a secret of its tenant is withheld from that tenant too, also when it
    # was registered before as an ordinary marker of it.
    guard.add("b", "token-8c1d2e", "identifier")
    guard.add_secret("b", "token-8c1d2e")
    assert [(h.owner, h.kind) for h in guard.scan(serialize("token-8c1d2e"), "b")] == [("b", "secret")]
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
