"""What each tenant can see: shared items with visibility rules, plus per-tenant private items.

Shared items are registered with `@app.tool(scopes=..., plans=...)` and seen by every tenant whose
plan and principal's scopes allow them. Private items are registered for one tenant with
`app.tenant(slug).add_tool(...)`; another tenant may have its own item of the same name. A lookup
costs one dict probe for the shared set and one for the caller's private set, and a listing walks
only the shared items and the caller's own, so neither grows with the number of tenants.

The wire form of each item (`mcp_types.Tool`, ...) is built once at registration, not per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tenant_mcp.models import Principal, Tenant

Item = TypeVar("Item")
Wire = TypeVar("Wire")


@dataclass(frozen=True, slots=True)
class Visibility:
    """Who may see an item: every scope in `scopes`, and (when set) a plan in `plans`; an
    `opt_in` item only tenants it is enabled for (as data, see `Section.allowed`)."""

    scopes: frozenset[str] = frozenset()
    plans: frozenset[str] | None = None
    opt_in: bool = False

    def allows(self, tenant: Tenant, principal: Principal) -> bool:
        if self.plans is not None and tenant.plan not in self.plans:
            return False
        return principal.has_scopes(self.scopes)


@dataclass(frozen=True, slots=True)
class Entry(Generic[Item, Wire]):
    key: str
    item: Item
    wire: Wire
    visibility: Visibility
    rate: str | None = None  # tools: calls per moving window per tenant (tenant_mcp.limits)


@dataclass
class Section(Generic[Item, Wire]):
    """One kind of item (tools, prompts, ...): shared entries and per-tenant private entries."""

    kind: str
    item_kind: str  # how policies name this kind: "tool:name", "template:uri", ...
    shared: dict[str, Entry[Item, Wire]] = field(default_factory=dict)
    private: dict[str, dict[str, Entry[Item, Wire]]] = field(default_factory=dict)

    def allowed(self, entry: Entry[Item, Wire], tenant: Tenant, principal: Principal) -> bool:
        """Code's rule (scopes, plans), narrowed by data: the tenant's disabled items, opt-in items
        it is not enabled for, and the key's allow-list. Data never widens what code allows."""
        if not entry.visibility.allows(tenant, principal):
            return False
        if not (tenant.disabled or entry.visibility.opt_in or principal.items is not None):
            return True  # no policy concerns this request: the common case costs nothing more
        item = f"{self.item_kind}:{entry.key}"
        if item in tenant.disabled or (entry.visibility.opt_in and item not in tenant.enabled):
            return False
        return principal.items is None or item in principal.items

    def add_shared(self, entry: Entry[Item, Wire]) -> None:
        if entry.key in self.shared:
            raise ValueError(f"{self.kind} {entry.key!r} is already registered")
        if any(entry.key in own for own in self.private.values()):
            raise ValueError(f"{self.kind} {entry.key!r} is already registered for a tenant")
        self.shared[entry.key] = entry

    def add_private(self, tenant_slug: str, entry: Entry[Item, Wire]) -> None:
        own = self.private.setdefault(tenant_slug, {})
        if entry.key in self.shared or entry.key in own:
            raise ValueError(f"{self.kind} {entry.key!r} is already registered")
        own[entry.key] = entry

    def remove_private(self, tenant_slug: str, key: str) -> bool:
        own = self.private.get(tenant_slug)
        if own is None or own.pop(key, None) is None:
            return False
        if not own:
            del self.private[tenant_slug]
        return True

    def visible(self, key: str, tenant: Tenant, principal: Principal) -> Entry[Item, Wire] | None:
        """The entry the caller may use under `key`, or None exactly as if it did not exist."""
        entry = self.shared.get(key)
        if entry is None:
            own = self.private.get(tenant.slug)
            entry = own.get(key) if own else None
        if entry is None or not self.allowed(entry, tenant, principal):
            return None
        return entry

    def entries(self, tenant: Tenant, principal: Principal) -> Iterator[Entry[Item, Wire]]:
        for entry in self.shared.values():
            if self.allowed(entry, tenant, principal):
                yield entry
        own = self.private.get(tenant.slug)
        if own:
            for entry in own.values():
                if self.allowed(entry, tenant, principal):
                    yield entry

    def listing(self, tenant: Tenant, principal: Principal) -> list[Wire]:
        return [entry.wire for entry in self.entries(tenant, principal)]


@dataclass(frozen=True, slots=True)
class StaticResource:
    """A fixed URI whose content is computed per tenant (e.g. ``profile://me``)."""

    uri: str
    fn: Callable[..., Any]
    context_kwarg: str | None
    mime_type: str | None


@dataclass(frozen=True, slots=True)
class CatalogueItem:
    """A shared item as code registered it, for whoever reads the catalogue rather than serves it
    (reports, the isolation kit): `key` is how catalogue policies and keys' allow-lists name it."""

    kind: str  # "tool", "prompt", "resource" or "template"
    name: str  # the tool's or prompt's name, the resource's URI or URI template
    scopes: frozenset[str]
    plans: frozenset[str] | None  # None: every plan
    per_tenant: bool  # seen only by tenants it is enabled for
    fn: Callable[..., Any] | None  # the function that answers it

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"


class Catalogue:
    def __init__(self) -> None:
        # Item and wire types are SDK classes; the server module, which builds them, knows them.
        self.tools: Section[Any, Any] = Section("tool", "tool")
        self.prompts: Section[Any, Any] = Section("prompt", "prompt")
        self.resources: Section[Any, Any] = Section("resource", "resource")
        self.templates: Section[Any, Any] = Section("resource template", "template")

    def shared_items(self) -> list[CatalogueItem]:
        """Every shared item, tools first, in registration order."""
        return [
            CatalogueItem(
                section.item_kind,
                entry.key,
                entry.visibility.scopes,
                entry.visibility.plans,
                entry.visibility.opt_in,
                getattr(entry.item, "fn", None),
            )
            for section in (self.tools, self.prompts, self.resources, self.templates)
            for entry in section.shared.values()
        ]
