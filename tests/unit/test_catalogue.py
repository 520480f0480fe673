"""What each tenant can see (`tenant_mcp.scoping.catalogue.Section`): code's rule (plans, scopes),
narrowed by data (disabled items, opt-in items, a key's allow-list) and never widened by it;
private items belong to one tenant; a hidden item answers exactly like a missing one."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tenant_mcp.models import Principal, Tenant
from tenant_mcp.scoping.catalogue import Entry, Section, Visibility

ACME = Tenant(id="t-acme", slug="acme", name="Acme", plan="pro", status="active")
GLOBEX = Tenant(id="t-globex", slug="globex", name="Globex", plan="free", status="active")


def principal(tenant: Tenant, *scopes: str, items: frozenset[str] | None = None) -> Principal:
    return Principal(tenant.id, "key:k", frozenset(scopes), "api_key", "k", key_id="k", items=items)


def entry(key: str, **visibility: object) -> Entry[str, str]:
    return Entry(key, f"item {key}", f"wire {key}", Visibility(**visibility))  # type: ignore[arg-type]


@pytest.fixture
def tools() -> Section[str, str]:
    section: Section[str, str] = Section("tool", "tool")
    section.add_shared(entry("whoami"))
    section.add_shared(entry("report", plans=frozenset({"pro"})))
    section.add_shared(entry("export", scopes=frozenset({"notes:export"})))
    section.add_shared(entry("export_pro", scopes=frozenset({"notes:export"}), plans=frozenset({"pro"})))
    section.add_shared(entry("beta", opt_in=True))
    section.add_private("acme", entry("private_report"))
    section.add_private("globex", entry("globex_only"))
    return section


def names(section: Section[str, str], tenant: Tenant, who: Principal) -> set[str]:
    listed = {wire.removeprefix("wire ") for wire in section.listing(tenant, who)}
    assert listed == {key for key in _all_keys(section) if section.visible(key, tenant, who)}, (
        "listing and lookup disagree"
    )
    return listed


def _all_keys(section: Section[str, str]) -> set[str]:
    return set(section.shared) | {key for own in section.private.values() for key in own}


def test_plans_and_scopes_decide_what_code_allows(tools: Section[str, str]) -> None:
    assert names(tools, ACME, principal(ACME)) == {"whoami", "report", "private_report"}
    assert names(tools, ACME, principal(ACME, "notes:export")) == {
        "whoami", "report", "export", "export_pro", "private_report",
    }  # fmt: skip
    assert names(tools, GLOBEX, principal(GLOBEX, "notes:export")) == {"whoami", "export", "globex_only"}
    assert names(tools, GLOBEX, principal(GLOBEX, "notes:export", "admin")) == {
        "whoami",
        "export",
        "globex_only",
    }


def test_a_private_item_is_its_tenants_alone(tools: Section[str, str]) -> None:
    assert tools.visible("private_report", ACME, principal(ACME)) is tools.private["acme"]["private_report"]
    assert tools.visible("private_report", GLOBEX, principal(GLOBEX)) is None
    assert tools.visible("globex_only", ACME, principal(ACME)) is None
    another = replace(ACME, id="t-initech", slug="initech")
    assert names(tools, another, principal(another)) == {"whoami", "report"}


def test_a_hidden_item_looks_missing(tools: Section[str, str]) -> None:
    who = principal(GLOBEX)
    assert tools.visible("report", GLOBEX, who) is None  # hidden by plan
    assert tools.visible("export", GLOBEX, who) is None  # hidden by scope
    assert tools.visible("no_such_tool", GLOBEX, who) is None


def test_disabling_narrows_and_enabling_never_widens(tools: Section[str, str]) -> None:
    acme = replace(ACME, disabled=frozenset({"tool:whoami", "tool:private_report"}))
    assert names(tools, acme, principal(acme)) == {"report"}
    # Enabling an item the plan or the scopes do not allow gives nothing.
    globex = replace(GLOBEX, enabled=frozenset({"tool:report", "tool:export"}))
    assert names(tools, globex, principal(globex)) == {"whoami", "globex_only"}


def test_an_opt_in_item_needs_enabling_and_disabling_wins(tools: Section[str, str]) -> None:
    assert "beta" not in names(tools, ACME, principal(ACME))
    enabled = replace(ACME, enabled=frozenset({"tool:beta"}))
    assert "beta" in names(tools, enabled, principal(enabled))
    both = replace(enabled, disabled=frozenset({"tool:beta"}))
    assert "beta" not in names(tools, both, principal(both))
    # Policies name items by kind: a prompt called beta is another item.
    prompt = replace(ACME, enabled=frozenset({"prompt:beta"}))
    assert "beta" not in names(tools, prompt, principal(prompt))


def test_a_keys_allow_list_narrows_within_what_the_tenant_sees(tools: Section[str, str]) -> None:
    only = frozenset({"tool:whoami", "tool:export", "tool:beta", "tool:globex_only"})
    assert names(tools, ACME, principal(ACME, "notes:export", items=only)) == {"whoami", "export"}
    assert names(tools, ACME, principal(ACME, items=frozenset())) == set()


def test_policy_names_use_the_sections_item_kind() -> None:
    templates: Section[str, str] = Section("resource template", "template")
    templates.add_shared(entry("notes://{id}"))
    acme = replace(ACME, disabled=frozenset({"template:notes://{id}"}))
    assert templates.visible("notes://{id}", acme, principal(acme)) is None
    assert templates.visible(
        "notes://{id}", ACME, principal(ACME, items=frozenset({"template:notes://{id}"}))
    )


def test_names_are_unique_across_shared_and_private_items(tools: Section[str, str]) -> None:
    with pytest.raises(ValueError, match="'whoami' is already registered"):
        tools.add_shared(entry("whoami"))
    with pytest.raises(ValueError, match="already registered for a tenant"):
        tools.add_shared(entry("private_report"))
    with pytest.raises(ValueError, match="'whoami' is already registered"):
        tools.add_private("acme", entry("whoami"))
    with pytest.raises(ValueError, match="'private_report' is already registered"):
        tools.add_private("acme", entry("private_report"))
    tools.add_private("globex", entry("private_report"))  # another tenant's item of the same name
    assert (
        tools.visible("private_report", GLOBEX, principal(GLOBEX))
        is tools.private["globex"]["private_report"]
    )


def test_removing_a_private_item(tools: Section[str, str]) -> None:
    assert tools.remove_private("acme", "private_report")
    assert not tools.remove_private("acme", "private_report")
    assert not tools.remove_private("initech", "private_report")
    assert "acme" not in tools.private  # no empty per-tenant tables left behind
    assert tools.visible("private_report", ACME, principal(ACME)) is None
    tools.add_shared(entry("private_report"))  # the name is free again
