"""Tenant B (globex) tries everything to reach tenant A's (acme's) notes, over real HTTP with the
official SDK client, in both protocol eras. Every attempt must answer exactly as for something
that does not exist."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import PromptReference, ResourceTemplateReference

from tests.helpers import ServerProcess, Tenants, mcp_client

pytestmark = pytest.mark.anyio
MODES = ["auto", "legacy"]
SECRET = "acme-launch-codes-7f3a"


def _dump(result: Any, *, replace: dict[str, str]) -> str:
    text = json.dumps(result.model_dump(mode="json", by_alias=True), sort_keys=True)
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


async def _error(coro: Any) -> tuple[int, str]:
    with pytest.raises(MCPError) as info:
        await coro
    return info.value.error.code, info.value.error.message


@pytest.fixture(scope="module")
def acme_note(notes_server: ServerProcess, tenants: Tenants) -> dict[str, Any]:
    import anyio

    async def create() -> dict[str, Any]:
        async with mcp_client(notes_server.url, tenants.keys["acme"]) as c:
            result = await c.call_tool("create_note", {"title": f"Plan {SECRET}", "body": f"body {SECRET}"})
            assert not result.is_error, result
            assert result.structured_content is not None
            return result.structured_content

    return anyio.run(create)


@pytest.mark.parametrize("mode", MODES)
async def test_listings_differ_by_plan_and_scope(
    notes_server: ServerProcess, tenants: Tenants, mode: str
) -> None:
    expected = {
        "acme": {"export_notes", "bulk_import"},  # plan pro + notes:export scope
        "acme2": {"bulk_import"},  # same tenant, key without the scope
        "globex": set(),  # plan free, no scope
    }
    common = {"whoami", "create_note", "list_notes", "get_note", "search_notes", "delete_note"}
    for who, extra in expected.items():
        async with mcp_client(notes_server.url, tenants.keys[who], mode=mode) as c:
            tools = {t.name for t in (await c.list_tools()).tools}
            assert tools == common | extra, who
            for tool in (await c.list_tools()).tools:
                assert "ctx" not in json.dumps(tool.input_schema), "context parameter leaked into a schema"
            assert [r.uri for r in (await c.list_resources()).resources] == ["profile://me"]
            templates = (await c.list_resource_templates()).resource_templates
            assert [t.uri_template for t in templates] == ["notes://{note_id}"]
            assert [p.name for p in (await c.list_prompts()).prompts] == ["summarize_notes"]


async def test_tenant_dependent_results_are_cached_privately(
    notes_server: ServerProcess, tenants: Tenants
) -> None:
    async with mcp_client(notes_server.url, tenants.keys["acme"]) as c:
        assert c.protocol_version == "2026-07-28"
        for result in (await c.list_tools(), await c.list_prompts(), await c.read_resource("profile://me")):
            assert result.cache_scope == "private", type(result).__name__


@pytest.mark.parametrize("mode", MODES)
async def test_hidden_tool_answers_exactly_like_a_missing_one(
    notes_server: ServerProcess, tenants: Tenants, mode: str
) -> None:
    async with mcp_client(notes_server.url, tenants.keys["globex"], mode=mode) as c:
        hidden = await c.call_tool("export_notes", {})
        missing = await c.call_tool("export_notez", {})
    assert hidden.is_error
    assert _dump(hidden, replace={"export_notes": "X"}) == _dump(missing, replace={"export_notez": "X"})


@pytest.mark.parametrize("mode", MODES)
async def test_other_tenants_note_ids_behave_like_missing_ids(
    notes_server: ServerProcess, tenants: Tenants, acme_note: dict[str, Any], mode: str
) -> None:
    real, fake = acme_note["id"], acme_note["id"] + 1
    async with mcp_client(notes_server.url, tenants.keys["globex"], mode=mode) as c:
        for tool in ("get_note", "delete_note"):
            a = await c.call_tool(tool, {"note_id": real})
            b = await c.call_tool(tool, {"note_id": fake})
            assert a.is_error and b.is_error
            assert _dump(a, replace={str(real): "N"}) == _dump(b, replace={str(fake): "N"})
            assert SECRET not in _dump(a, replace={})
        read_real = await _error(c.read_resource(f"notes://{real}"))
        read_fake = await _error(c.read_resource(f"notes://{fake}"))
        assert read_real[0] == read_fake[0]
        assert read_real[1].replace(str(real), "N") == read_fake[1].replace(str(fake), "N")
        unknown = await _error(c.read_resource("nowhere://N"))
        assert read_real == (unknown[0], unknown[1].replace("nowhere://N", f"notes://{real}"))
        for listing in ("list_notes", "search_notes", "whoami"):
            args = {"query": SECRET} if listing == "search_notes" else {}
            result = await c.call_tool(listing, args)
            assert SECRET not in _dump(result, replace={}), listing
            assert str(real) not in _dump(result, replace={}), listing
        prompt = await c.get_prompt("summarize_notes", {})
        assert SECRET not in _dump(prompt, replace={})
        profile = await c.read_resource("profile://me")
        assert "Acme" not in _dump(profile, replace={}) and "Globex Industries" in _dump(profile, replace={})
        completion = await c.complete(
            ResourceTemplateReference(type="ref/resource", uri="notes://{note_id}"),
            {"name": "note_id", "value": str(real)[:3]},
        )
        assert completion.completion.values == []
    # acme's note survived globex's delete attempt
    async with mcp_client(notes_server.url, tenants.keys["acme"], mode=mode) as c:
        own = await c.call_tool("get_note", {"note_id": real})
        assert not own.is_error and SECRET in own.structured_content["body"]  # type: ignore[index]
        completion = await c.complete(
            ResourceTemplateReference(type="ref/resource", uri="notes://{note_id}"),
            {"name": "note_id", "value": str(real)[:3]},
        )
        assert str(real) in completion.completion.values


async def test_hidden_prompt_resource_and_completion_refs_look_missing(
    probe: tuple[ServerProcess, Tenants],
) -> None:
    server, t = probe
    async with mcp_client(server.url, t.keys["globex"], mode="legacy") as c:
        hidden = await _error(c.get_prompt("pro_prompt", {"topic": "x"}))
        missing = await _error(c.get_prompt("pro_prompz", {"topic": "x"}))
        assert hidden[0] == missing[0]
        assert hidden[1].replace("pro_prompt", "X") == missing[1].replace("pro_prompz", "X")
        a = await c.complete(
            PromptReference(type="ref/prompt", name="pro_prompt"), {"name": "topic", "value": ""}
        )
        b = await c.complete(
            PromptReference(type="ref/prompt", name="pro_prompz"), {"name": "topic", "value": ""}
        )
        assert a.model_dump() == b.model_dump()
        # the private tool of the same name runs globex's own code
        report = await c.call_tool("private_report", {})
        assert "globex private report" in _dump(report, replace={})


async def test_denials_are_audited_without_naming_the_other_tenant(
    notes_server: ServerProcess, tenants: Tenants
) -> None:
    import anyio

    async with mcp_client(notes_server.url, tenants.keys["globex"]) as c:
        await c.call_tool("export_notes", {})
    for _ in range(40):
        events = tenants.audit("globex")
        denied = [e for e in events if e["target"] == "export_notes" and e["outcome"] == "denied"]
        if denied:
            break
        await anyio.sleep(0.05)
    assert denied, events[:5]
    assert denied[0]["reason"] == "tool not visible: export_notes"
    assert "acme" not in json.dumps(events).lower()
