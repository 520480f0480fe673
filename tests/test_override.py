"""The tenant comes from the credential. A client or model that tries to name one, in arguments,
in `_meta` or (see test_protocol) in headers, is refused with a clear error and audited."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from tenant_mcp import TenantContext, TenantMCP, TenantMCPError
from tenant_mcp.pipeline.overrides import names_tenant
from tests.helpers import ServerProcess, Tenants, mcp_client

pytestmark = pytest.mark.anyio


async def _refused(coro: Any) -> str:
    with pytest.raises(MCPError) as info:
        await coro
    assert info.value.error.code == INVALID_PARAMS
    message = info.value.error.message
    assert "server sets the tenant" in message
    assert "globex" not in message
    return message


@pytest.mark.parametrize("mode", ["auto", "legacy"])
@pytest.mark.parametrize(
    "argument", ["tenant_id", "tenant", "tenantId", "org_id", "organization_id", "Tenant-Slug"]
)
async def test_tenant_arguments_are_refused(
    probe: tuple[ServerProcess, Tenants], mode: str, argument: str
) -> None:
    server, t = probe
    async with mcp_client(server.url, t.keys["globex"], mode=mode) as c:
        message = await _refused(c.call_tool("whoami", {argument: "acme"}))
        assert f"arguments.{argument}" in message
        # the same for a hidden or unknown tool: the refusal does not reveal which tools exist
        assert await _refused(c.call_tool("private_reportz", {argument: "acme"})) == message
        # and nothing ran as acme
        own = await c.call_tool("whoami", {})
        assert own.structured_content["tenant"] == "globex"  # type: ignore[index]


async def test_tenant_hints_in_meta_and_prompt_arguments_are_refused(
    probe: tuple[ServerProcess, Tenants],
) -> None:
    server, t = probe
    async with mcp_client(server.url, t.keys["acme"], mode="legacy") as c:
        for key in ("tenant", "tenant_id", "io.acme/tenant", "x-org-id"):
            message = await _refused(c.call_tool("whoami", {}, meta={key: "globex"}))
            assert f"_meta.{key}" in message
        await _refused(c.get_prompt("pro_prompt", {"topic": "x", "tenant_id": "globex"}))


async def test_a_declared_parameter_is_not_an_override(probe: tuple[ServerProcess, Tenants]) -> None:
    server, t = probe
    async with mcp_client(server.url, t.keys["acme"]) as c:
        result = await c.call_tool("transfer", {"account_id": "42"})
        assert result.structured_content == {"result": "acme:42"}
        await _refused(c.call_tool("transfer", {"account_id": "42", "org_id": "globex"}))


async def test_override_attempts_are_audited(probe: tuple[ServerProcess, Tenants]) -> None:
    server, t = probe
    async with mcp_client(server.url, t.keys["globex"]) as c:
        with pytest.raises(MCPError):
            await c.call_tool("whoami", {"tenant_id": "acme-audit-probe"})
    for _ in range(40):
        events = [e for e in t.audit("globex") if e["reason"] and "arguments.tenant_id" in e["reason"]]
        if events:
            break
        await anyio.sleep(0.05)
    assert events and events[0]["outcome"] == "denied" and events[0]["method"] == "tools/call"
    assert "acme-audit-probe" not in str(events[0]), "argument values are stored only as a hash by default"
    assert events[0]["arguments"].startswith("sha256:")


LOOK_ALIKES = [
    "\uff54\uff45\uff4e\uff41\uff4e\uff54_id",  # full-width
    "tenant\u200bId",  # zero-width space
    "TENANT-ID",
    "t\u0435nant_id",  # Cyrillic e
    "\u0422enant",  # Cyrillic capital Te
    "org\u00ad_id",  # soft hyphen
    "ten\u0430nt.slug",  # Cyrillic a, dotted
    "te\u0301nant",  # combining accent
]


@pytest.mark.parametrize("argument", LOOK_ALIKES)
async def test_look_alike_tenant_arguments_are_refused(
    probe: tuple[ServerProcess, Tenants], argument: str
) -> None:
    server, t = probe
    async with mcp_client(server.url, t.keys["globex"], mode="legacy") as c:
        message = await _refused(c.call_tool("whoami", {argument: "acme"}))
        assert f"arguments.{argument}" in message
        await _refused(c.call_tool("whoami", {}, meta={argument: "acme"}))


@pytest.mark.parametrize(
    ("arguments", "where"),
    [
        ({"filter": {"tenant_id": "acme"}}, "arguments.filter.tenant_id"),
        (
            {"transfers": [{"account_id": "1", "amount": 1, "org_id": "acme"}]},
            "arguments.transfers[0].org_id",
        ),
        ({"a": [[{"b": {"Tenant": "acme"}}]]}, "arguments.a[0][0].b.Tenant"),
    ],
)
async def test_nested_tenant_arguments_are_refused_and_audited(
    probe: tuple[ServerProcess, Tenants], arguments: dict[str, Any], where: str
) -> None:
    server, t = probe
    async with mcp_client(server.url, t.keys["globex"], mode="legacy") as c:
        assert where in await _refused(c.call_tool("transfer_many", arguments))
    for _ in range(40):
        events = [e for e in t.audit("globex") if e["reason"] == f"tenant override attempt: {where}"]
        if events:
            break
        await anyio.sleep(0.05)
    assert events and events[0]["outcome"] == "denied"


async def test_meta_keys_in_any_namespace_and_depth_are_refused(probe: tuple[ServerProcess, Tenants]) -> None:
    server, t = probe
    async with mcp_client(server.url, t.keys["acme"], mode="legacy") as c:
        for meta, where in (
            ({"io.modelcontextprotocol/tenant": "globex"}, "_meta.io.modelcontextprotocol/tenant"),
            ({"com.example.tenant_id": "globex"}, "_meta.com.example.tenant_id"),
            ({"com.example/context": {"org": "globex"}}, "_meta.com.example/context.org"),
        ):
            assert where in await _refused(c.call_tool("whoami", {}, meta=meta))
        deep: dict[str, Any] = {"tenant_id": "globex"}
        for _ in range(100):
            deep = {"x": deep}
        with pytest.raises(MCPError) as info:
            await c.call_tool("whoami", {"x": deep})
        assert info.value.error.code == INVALID_PARAMS and "nested deeper" in info.value.error.message


async def test_a_nested_declared_parameter_is_not_an_override(probe: tuple[ServerProcess, Tenants]) -> None:
    server, t = probe
    async with mcp_client(server.url, t.keys["acme"]) as c:
        result = await c.call_tool("transfer_many", {"transfers": [{"account_id": "42", "amount": 5}]})
        assert result.structured_content == {"result": ["acme:42:5"]}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        *((name, True) for name in LOOK_ALIKES),
        ("X-Tenant-Id", True),
        ("io.acme/tenant", True),
        ("com.example.tenant_id", True),
        ("urn:acme:org_id", True),
        ("title", False),
        ("organ", False),
        ("tenancy_mode", False),
        ("Accept-Encoding", False),
        ("io.modelcontextprotocol/clientInfo", False),
    ],
)
def test_names_are_compared_as_a_person_reads_them(name: str, expected: bool) -> None:
    assert names_tenant(name) is expected


def test_registering_a_tenant_parameter_is_refused() -> None:
    app = TenantMCP("bad", database_url="sqlite:///./unused.db")

    async def leaky(tenant_id: str, ctx: TenantContext) -> str:
        return tenant_id

    with pytest.raises(TenantMCPError, match="the tenant is never an argument"):
        app.tool()(leaky)
    with pytest.raises(TenantMCPError, match="the tenant is never an argument"):
        app.tenant("acme").add_tool(leaky)


async def test_prompt_errors_a_client_can_cause_log_no_traceback(
    probe: tuple[ServerProcess, Tenants],
) -> None:
    """Unknown prompts and missing arguments are the client's mistakes: a clear -32602, and no
    traceback in the server log (any client could drive the log volume with them)."""
    server, t = probe
    log_start = server.log.stat().st_size
    for mode in ("legacy", "auto"):
        async with mcp_client(server.url, t.keys["acme"], mode=mode) as c:
            for _ in range(3):
                with pytest.raises(MCPError) as unknown:
                    await c.get_prompt("no_such_prompt", {})
                assert unknown.value.error.code == INVALID_PARAMS
                with pytest.raises(MCPError) as missing:
                    await c.get_prompt("pro_prompt", {})
                assert missing.value.error.code == INVALID_PARAMS
                assert missing.value.error.message == "Missing required arguments: topic"
    assert "Traceback" not in server.log.read_text()[log_start:]
