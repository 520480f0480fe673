"""The per-tenant catalogue as data: items enabled, disabled and allow-listed per tenant and per
key with the CLI, seen by a running server, and always answering like missing items."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import ResourceTemplateReference

from tests.helpers import ServerProcess, Tenants, mcp_client, run_cli, standard_tenants

pytestmark = pytest.mark.anyio
APP = "tests.servers.probe:app"


def _cli(t: Tenants, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, db=t.db_url)


async def _names(client: Any) -> set[str]:
    return {tool.name for tool in (await client.list_tools(cache_mode="bypass")).tools}


async def _call_error(client: Any, name: str) -> str:
    """What calling `name` answers, with the name itself replaced (hidden must equal missing)."""
    try:
        result = await client.call_tool(name, {})
    except MCPError as exc:
        return f"error {exc.error.code}: {exc.error.message}".replace(name, "NAME")
    return json.dumps(result.model_dump(mode="json"), sort_keys=True).replace(name, "NAME")


@pytest.fixture
def served(tmp_path: Path) -> Any:
    t = standard_tenants(f"sqlite:///{tmp_path}/control.db")
    server = ServerProcess(APP, t.db_url, log_dir=tmp_path)
    yield server, t
    server.stop()


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_policies_narrow_and_hidden_equals_missing(served: Any, mode: str) -> None:
    server, t = served
    assert _cli(t, "tool", "disable", "acme", "whoami").returncode == 0
    assert _cli(t, "tool", "enable", "acme", "quarterly_report").returncode == 0
    assert (
        _cli(t, "tool", "enable", "globex", "prompt:pro_prompt").returncode == 0
    )  # cannot widen a plan rule
    await anyio.sleep(1.2)  # no Redis here: the change is picked up within the credential cache window
    async with (
        mcp_client(server.url, t.keys["acme"], mode=mode) as a,
        mcp_client(server.url, t.keys["globex"], mode=mode) as b,
    ):
        acme, globex = await _names(a), await _names(b)
        assert "whoami" not in acme and "quarterly_report" in acme
        assert "whoami" in globex and "quarterly_report" not in globex
        assert (await a.call_tool("quarterly_report", {})).content[0].text == "quarterly report of acme"  # type: ignore[union-attr]
        # Disabled, not enabled, and unknown: byte for byte the same answer.
        assert await _call_error(a, "whoami") == await _call_error(a, "no_such_tool")
        assert await _call_error(b, "quarterly_report") == await _call_error(b, "no_such_tool")
        assert "pro_prompt" not in {p.name for p in (await b.list_prompts()).prompts}
    assert _cli(t, "tool", "reset", "acme", "whoami").returncode == 0


async def test_a_key_allow_list_limits_that_key_only(served: Any) -> None:
    server, t = served
    made = _cli(t, "key", "create", "acme", "--tools", "whoami,add_item", "--json")
    assert made.returncode == 0, made.stderr
    narrow = json.loads(made.stdout)
    assert narrow["items"] == ["tool:whoami", "tool:add_item"]
    async with mcp_client(server.url, narrow["key"]) as k, mcp_client(server.url, t.keys["acme"]) as full:
        assert await _names(k) == {"whoami", "add_item"}
        assert "raw_sql" in await _names(full)
        assert await _call_error(k, "raw_sql") == await _call_error(k, "no_such_tool")
        assert not (await k.call_tool("whoami", {})).is_error


def test_tool_list_says_why_and_bad_items_are_clear_errors(served: Any) -> None:
    _, t = served
    assert _cli(t, "tool", "disable", "globex", "raw_sql").returncode == 0
    listed = _cli(t, "tool", "list", "globex", "--app", APP, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["item"]: r for r in json.loads(listed.stdout)}
    assert rows["tool:raw_sql"] == {
        "item": "tool:raw_sql",
        "visible": False,
        "why": "policy: disabled for this tenant",
    }
    assert rows["tool:quarterly_report"]["why"] == "code: per_tenant, not enabled"
    assert rows["prompt:pro_prompt"]["visible"] is False and "plans pro" in rows["prompt:pro_prompt"]["why"]
    assert rows["tool:whoami"]["visible"] is True
    bad = _cli(t, "tool", "disable", "globex", "widget:x")
    assert bad.returncode != 0 and "invalid item" in bad.stderr and "Traceback" not in bad.stderr
    missing = _cli(t, "tool", "disable", "nobody", "whoami")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr


async def test_plan_defaults_and_other_kinds_answer_like_missing(served: Any) -> None:
    server, t = served
    # Every free tenant loses raw_sql; globex (free) takes it back for itself; acme (pro) is untouched.
    assert _cli(t, "plan", "set-default", "free", "raw_sql", "disabled").returncode == 0
    t.create("initech", plan="free")
    t.key("initech")
    assert _cli(t, "tool", "enable", "globex", "raw_sql").returncode == 0
    assert _cli(t, "tool", "disable", "acme", "prompt:pro_prompt").returncode == 0
    assert _cli(t, "tool", "disable", "acme", "template:items://{item_id}").returncode == 0
    await anyio.sleep(1.2)
    async with mcp_client(server.url, t.keys["initech"]) as i, mcp_client(server.url, t.keys["globex"]) as g:
        assert "raw_sql" not in await _names(i) and "raw_sql" in await _names(g)
    async with mcp_client(server.url, t.keys["acme"]) as a:
        assert "raw_sql" in await _names(a)
        assert "pro_prompt" not in {p.name for p in (await a.list_prompts()).prompts}
        with pytest.raises(MCPError) as hidden:
            await a.get_prompt("pro_prompt", {"topic": "x"})
        with pytest.raises(MCPError) as missing:
            await a.get_prompt("no_such_prompt", {"topic": "x"})
        assert hidden.value.error.message.replace("pro_prompt", "N") == missing.value.error.message.replace(
            "no_such_prompt", "N"
        )
        assert not (await a.list_resource_templates()).resource_templates
        item = (await a.call_tool("add_item", {"value": "v"})).structured_content
        assert item is not None
        with pytest.raises(MCPError) as read:
            await a.read_resource(f"items://{item['result']}")
        with pytest.raises(MCPError) as unknown:
            await a.read_resource("nothing://here")
        assert read.value.error.code == unknown.value.error.code


def test_enabling_never_widens_a_scope_or_plan_rule() -> None:
    """Data can turn an opt-in item on, never past the scopes and plans that code requires."""
    from tenant_mcp.models import Principal, Tenant
    from tenant_mcp.scoping.catalogue import Entry, Section, Visibility

    section: Section[str, str] = Section("tool", "tool")
    rules = {
        "scoped": Visibility(scopes=frozenset({"notes:export"})),
        "pro_only": Visibility(plans=frozenset({"pro"})),
        "opt_in_scoped": Visibility(scopes=frozenset({"notes:export"}), opt_in=True),
    }
    for name, rule in rules.items():
        section.add_shared(Entry(name, name, name, rule))
    tenant = Tenant("t" * 32, "acme", "Acme", "free", "active", enabled=frozenset(f"tool:{n}" for n in rules))
    no_scope = Principal(tenant.id, "key:x", frozenset(), "api_key", "x")
    with_scope = Principal(tenant.id, "key:y", frozenset({"notes:export"}), "api_key", "y")
    assert section.listing(tenant, no_scope) == []
    assert section.listing(tenant, with_scope) == ["scoped", "opt_in_scoped"]


async def test_a_disabled_template_completes_and_subscribes_like_a_missing_one(tmp_path: Path) -> None:
    t = standard_tenants(f"sqlite:///{tmp_path}/control.db")
    server = ServerProcess("example_servers.notes:app", t.db_url, log_dir=tmp_path)
    try:
        async with mcp_client(server.url, t.keys["acme"], mode="legacy") as a:
            note = (await a.call_tool("create_note", {"title": "t", "body": "b"})).structured_content
            assert note is not None
        assert _cli(t, "tool", "disable", "acme", "template:notes://{note_id}").returncode == 0
        await anyio.sleep(1.2)
        async with mcp_client(server.url, t.keys["acme"], mode="legacy") as a:
            prefix = {"name": "note_id", "value": str(note["id"])[:3]}
            hidden = await a.complete(
                ResourceTemplateReference(type="ref/resource", uri="notes://{note_id}"), prefix
            )
            missing = await a.complete(
                ResourceTemplateReference(type="ref/resource", uri="nothing://{note_id}"), prefix
            )
            assert hidden.model_dump() == missing.model_dump() and hidden.completion.values == []
            errors = []
            for uri in (f"notes://{note['id']}", "nothing://1"):
                with pytest.raises(MCPError) as refused:
                    await a.subscribe_resource(uri)
                errors.append((refused.value.error.code, refused.value.error.message.replace(uri, "URI")))
            assert errors[0] == errors[1]
    finally:
        server.stop()
