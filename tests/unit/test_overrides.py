"""Refusing a request that names a tenant (`tenant_mcp.pipeline.overrides`): names compared as a
person reads them, schemas searched for what a tool declares, and `override()` on a `Call` saying
where the attempt is. The same refusals over the wire are in test_override."""

from __future__ import annotations

from typing import Any

import pytest
from mcp.server.mcpserver.prompts import Prompt
from mcp.server.mcpserver.tools import Tool
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

from tenant_mcp.call import Call
from tenant_mcp.models import Principal, Tenant
from tenant_mcp.pipeline.overrides import _fold, names_tenant, override, plain_name, schema_names
from tenant_mcp.scoping.catalogue import Entry, Visibility

ACME = Tenant(id="t-acme", slug="acme", name="Acme", plan="free", status="active")
WHO = Principal(ACME.id, "key:k", frozenset(), "api_key", "k", key_id="k")


@pytest.mark.parametrize(
    ("name", "folded"),
    [
        ("Tenant_ID", "tenant_id"),
        ("\uff34\uff45\uff4e\uff41\uff4e\uff54", "tenant"),  # full-width
        ("\U0001d42d\U0001d41e\U0001d427\U0001d41a\U0001d427\U0001d42d", "tenant"),  # mathematical bold
        ("t\u0435n\u0430nt", "tenant"),  # Cyrillic e and a
        ("\u0422\u0415NANT", "tenant"),  # Cyrillic capitals Te and Ie
        ("\u03a4\u0395\u039d\u0391\u039d\u03a4", "tenant"),  # Greek capitals, Nu included
        ("CUSTO\u039cER", "customer"),  # Greek capital Mu
        ("\u1d1b\u1d07\u0274\u1d00\u0274\u1d1b", "tenant"),  # Latin small capitals
        ("te\u0301nant", "tenant"),  # a combining accent
        ("ten\u200bant\u2060", "tenant"),  # zero-width characters
        ("\ufb01le", "file"),  # a ligature
    ],
)
def test_names_fold_as_a_person_reads_them(name: str, folded: str) -> None:
    assert _fold(name) == folded


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("X-TE\u039dANT-ID", True),  # a Greek capital Nu in an upper-case header name
        ("\u03a4\u0395\u039d\u0391\u039d\u03a4", True),
        ("CUSTO\u039cER_ID", True),
        ("\u1d1b\u1d07\u0274\u1d00\u0274\u1d1b_\u026a\u1d05", True),
        ("tenants", True),
        ("target_tenant_id", True),  # the word anywhere in the name, not only in front
        ("my_tenant", True),
        ("io.acme/for-tenant", True),
        ("X-Target-Tenant", True),
        ("maintenance", False),
        ("io.acme/tenant", True),
        ("urn:acme:org_id", True),
        ("com.example.tenant.id", True),  # a dotted suffix
        ("tenant/other", False),  # a namespace called tenant names no tenant
        ("x.tenancy", False),
        ("contenant", True),  # fail closed: an undeclared name with the word in it is refused
        ("organ", False),
        ("accounting", False),
        ("\u0422\u0415\u041d\u0410\u041d\u0422", False),  # in Cyrillic capitals: reads TEHAHT
    ],
)
def test_names_that_select_a_tenant(name: str, expected: bool) -> None:
    assert names_tenant(name) is expected


def test_plain_names_drop_every_separator() -> None:
    assert plain_name("X-Tenant_ID") == plain_name("x.tenant id") == plain_name("xTenantId") == "xtenantid"


def test_schema_names_are_every_property_declared_at_any_depth() -> None:
    schema = {
        "type": "object",
        "properties": {"filter": {"$ref": "#/$defs/Filter"}, "rows": {"type": "array", "items": {
            "type": "object", "properties": {"org_id": {"type": "string"}}}}},
        "$defs": {"Filter": {"properties": {"account_id": {}, "nested": {"anyOf": [{"properties": {"deep": {}}}]}}}},
    }  # fmt: skip
    assert schema_names(schema) == {"filter", "rows", "org_id", "account_id", "nested", "deep"}
    assert schema_names({"properties": {"a": {}}, "examples": [{"properties": "not a mapping"}]}) == {"a"}
    assert schema_names(None) == set()


class Transfer(BaseModel):
    account_id: str
    amount: int


async def transfer(transfers: list[Transfer], note: str = "") -> str:
    return note


async def brief(topic: str, org_id: str) -> str:
    return topic


def call(method: str, params: dict[str, Any], item: Any = None) -> Call:
    entry = None if item is None else Entry(item.name, item, None, Visibility())
    return Call(ACME, WHO, method, params, entry=entry)


TOOL = Tool.from_function(transfer)
PROMPT = Prompt.from_function(brief)


@pytest.mark.parametrize(
    ("method", "params", "item", "where"),
    [
        ("tools/call", {"name": "transfer", "arguments": {"transfers": []}}, TOOL, None),
        # a name the tool declares, at any depth of its schema, is the tool's own business
        ("tools/call", {"arguments": {"transfers": [{"account_id": "1", "amount": 1}]}}, TOOL, None),
        ("tools/call", {"arguments": {"tenant_id": "globex"}}, TOOL, "arguments.tenant_id"),
        ("tools/call", {"arguments": {"transfers": [{"org": "globex"}]}}, TOOL, "arguments.transfers[0].org"),
        ("tools/call", {"arguments": {"a": [[{"b": {"Tenant": 1}}]]}}, TOOL, "arguments.a[0][0].b.Tenant"),
        # a missing or hidden tool declares nothing
        ("tools/call", {"arguments": {"account_id": "1"}}, None, "arguments.account_id"),
        ("prompts/get", {"arguments": {"org_id": "acme"}}, PROMPT, None),
        ("prompts/get", {"arguments": {"tenant": "globex"}}, PROMPT, "arguments.tenant"),
        # `_meta`, in any namespace, for every method; a declared name does not excuse it
        (
            "tools/call",
            {"arguments": {}, "_meta": {"io.acme/tenant": "globex"}},
            TOOL,
            "_meta.io.acme/tenant",
        ),
        ("tools/call", {"_meta": {"ctx": {"account_id": "1"}}}, TOOL, "_meta.ctx.account_id"),
        ("resources/read", {"uri": "notes://1", "_meta": {"x": [{"org_id": 1}]}}, None, "_meta.x[0].org_id"),
        ("resources/read", {"uri": "notes://1", "arguments": {"tenant": "globex"}}, None, None),
        ("tools/call", {"arguments": "tenant_id", "_meta": "tenant"}, TOOL, None),  # no mapping keys
    ],
)
def test_override_says_where_a_request_names_a_tenant(
    method: str, params: dict[str, Any], item: Any, where: str | None
) -> None:
    assert override(call(method, params, item)) == where


def test_nesting_deeper_than_searched_is_refused() -> None:
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(40):
        deep = {"x": deep}
    with pytest.raises(MCPError, match="nested deeper than 32 levels"):
        override(call("tools/call", {"arguments": deep}, TOOL))
    shallow: dict[str, Any] = {"leaf": 1}
    for _ in range(15):  # 31 levels of mappings and lists
        shallow = {"x": [shallow]}
    assert override(call("tools/call", {"arguments": shallow}, TOOL)) is None
