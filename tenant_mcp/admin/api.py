"""`Admin`: every operator action on tenants, done whole, for the CLI and for programs alike."""

from __future__ import annotations

import re
import secrets as _random
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol

import anyio

from tenant_mcp.admin.replicas import OnAnnounceError, Replicas
from tenant_mcp.admin.reports import TenantExport, TenantLimits, Usage, effective_limits, month_start, usage
from tenant_mcp.auth.invalidation import Invalidation
from tenant_mcp.connections.store import ConnectionInfo, ConnectionStore
from tenant_mcp.controlplane import ControlPlane, ItemState, KeyRecord
from tenant_mcp.errors import ConfigurationError, NotFoundError, TenantMCPError
from tenant_mcp.limits import Limits, read_override, write_override
from tenant_mcp.limits import usage as usage_rows
from tenant_mcp.models import Tenant, TenantStatus
from tenant_mcp.secrets import KeyRing, SecretInfo, SecretStore
from tenant_mcp.storage import DataStore, open_store

DEFAULT_DRAIN_SECONDS = 2.0
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


class AppSettings(Protocol):
    """What `Admin` reads of a `TenantMCP`: where its data lives, where its replicas meet, its
    plans' default limits and its catalogue. (A protocol, so this package need not import the app.)"""

    @property
    def database_url(self) -> str: ...
    @property
    def redis_url(self) -> str | None: ...
    @property
    def redis_prefix(self) -> str: ...
    @property
    def limits(self) -> Mapping[str, Limits]: ...
    def catalogue_report(self, tenant: Tenant) -> list[dict[str, Any]]: ...


class Admin:
    """Operator actions on one deployment: ``async with Admin(app_or_database_url) as admin``.

    Each action is the whole job. A change that running servers cache (a suspension, a revoked
    key, a catalogue policy, limits) is announced to every replica through Redis when there is
    one, so they act on it at once rather than within their credential cache window; deleting a
    tenant also drains its calls and removes its data everywhere it is kept.

    Given the app, the admin uses its database, Redis, plan limits and catalogue; given a database
    URL, pass `redis_url` (and `redis_prefix`) to reach the replicas. `keyring` encrypts secrets
    (default: from ``TENANT_MCP_SECRET_KEY``, read when a secret is first used). `on_announce_error`
    is told when Redis cannot be reached (default: a logged warning); the change stands regardless.

    A tenant or key that does not exist raises `NotFoundError`; bad input raises
    `TenantMCPError` and changes nothing.
    """

    def __init__(
        self,
        app: str | AppSettings,
        *,
        redis_url: str | None = None,
        redis_prefix: str | None = None,
        keyring: KeyRing | None = None,
        on_announce_error: OnAnnounceError | None = None,
    ) -> None:
        self._app = None if isinstance(app, str) else app
        if self._app is not None:
            redis_url = redis_url or self._app.redis_url
            redis_prefix = redis_prefix or self._app.redis_prefix
        self._control_plane = ControlPlane(app if isinstance(app, str) else app.database_url)
        self.replicas = Replicas(redis_url, redis_prefix, on_error=on_announce_error)
        self._keyring = keyring
        self._store: DataStore | None = None
        self._secrets: SecretStore | None = None

    @property
    def database_url(self) -> str:
        return self._control_plane.url

    async def __aenter__(self) -> Admin:
        await self._control_plane.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the databases (``async with`` does this)."""
        try:
            if self._store is not None:
                await self._store.aclose()
        finally:
            self._store = self._secrets = None
            await self._control_plane.close()

    async def _data(self) -> DataStore:
        """Tenant data, opened on first use (most actions never touch it)."""
        if self._store is None:
            self._store = await open_store(self._control_plane.url)
        return self._store

    # -- tenants ------------------------------------------------------------------------------

    async def create_tenant(
        self, slug: str, *, name: str | None = None, plan: str = "free", metadata: dict[str, Any] | None = None,
    ) -> Tenant:  # fmt: skip
        """A new active tenant. Its slug and name must differ from every other tenant's, even
        normalised: they are leak-guard markers, and a shared one would protect neither tenant."""
        return await self._control_plane.create_tenant(slug, name=name, plan=plan, metadata=metadata)

    async def tenant(self, slug: str) -> Tenant:
        """The tenant with this slug, with its plan's catalogue defaults folded into its policy."""
        return await self._control_plane.require_tenant(slug)

    async def list_tenants(self) -> list[Tenant]:
        """Every tenant, by slug."""
        return await self._control_plane.list_tenants()

    async def suspend(self, slug: str) -> Tenant:
        """Refuse every request of the tenant (its keys, tokens and data stay)."""
        return await self._set_status(slug, "suspended")

    async def activate(self, slug: str) -> Tenant:
        """Lift a suspension."""
        return await self._set_status(slug, "active")

    async def _set_status(self, slug: str, status: TenantStatus) -> Tenant:
        tenant = await self._control_plane.set_status(slug, status)
        await self.replicas.tenant_changed(tenant.id)
        return tenant

    async def delete_tenant(self, slug: str, *, drain_seconds: float = DEFAULT_DRAIN_SECONDS) -> Tenant:
        """Delete the tenant with its keys, tokens, secrets, audit trail and data, everywhere.

        `drain_seconds` (at least the servers' credential cache window) is how long servers get,
        once the tenant is suspended, to refuse it and to write the audit events of its last calls.
        A failure part way leaves the tenant suspended, so the deletion can simply be repeated.
        """
        if drain_seconds < 0:
            raise TenantMCPError("drain_seconds must not be negative")
        cp = self._control_plane
        tenant = await cp.require_tenant(slug)
        # 1. Credentials stop: suspended, and with Redis every replica drops its cache at once.
        #    Servers also refuse the tenant's calls in flight any new use of its data.
        if tenant.status != "suspended":
            await cp.set_status(slug, "suspended")
        await self.replicas.tenant_changed(tenant.id)
        # 2. Drain: every server has noticed and has flushed the audit events of calls that ended;
        #    the data drop waits for calls in flight (PostgreSQL's drain lock; on SQLite their
        #    writes go to the deleted file).
        await anyio.sleep(drain_seconds)
        store = await self._data()
        # 3. Data, then the control rows. 4. A second sweep for what committed in between; later
        #    audit batches find no tenant and write nothing.
        for _ in range(2):
            await store.drop(tenant.id)
            await cp.purge_tenant(tenant.id)
        # 5. Replicas forget it, and Redis holds nothing of it any more.
        await self.replicas.tenant_changed(tenant.id, deleted=True)
        return tenant

    async def export_tenant(self, slug: str) -> TenantExport:
        """The tenant's row, keys and every row of its data (for portability or before deletion)."""
        tenant = await self._control_plane.require_tenant(slug)
        keys = await self._control_plane.list_keys(slug)
        return TenantExport(tenant, keys, await (await self._data()).export(tenant.id))

    # -- keys ---------------------------------------------------------------------------------

    async def create_key(
        self, tenant: str, *, scopes: Sequence[str] = (), label: str = "", items: Sequence[str] | None = None
    ) -> tuple[KeyRecord, str]:
        """A new API key of the tenant, and its plaintext: stored nowhere, shown only now.

        `items` (tool names or KIND:NAME) limits the key to those catalogue items."""
        return await self._control_plane.create_key(tenant, scopes=scopes, label=label, items=items)

    async def list_keys(self, tenant: str) -> list[KeyRecord]:
        """The tenant's keys, revoked ones included, oldest first (never their plaintext)."""
        return await self._control_plane.list_keys(tenant)

    async def key(self, key_id: str, *, tenant: str | None = None) -> KeyRecord:
        """The key with this id; with `tenant`, only if it is that tenant's (another tenant's key
        is missing exactly as an unknown one is, so a tenant-facing caller learns nothing)."""
        record = await self._control_plane.key(key_id)
        if record is not None and tenant is not None:
            owner = await self._control_plane.tenant_by_slug(tenant)
            record = record if owner is not None and owner.id == record.tenant_id else None
        if record is None:
            raise NotFoundError(f"no key {key_id!r}")
        return record

    async def revoke_key(self, key_id: str, *, tenant: str | None = None) -> KeyRecord:
        """Revoke a key (and every OAuth token it approved); `tenant` as in `key`."""
        await self.key(key_id, tenant=tenant)
        record = await self._control_plane.revoke_key(key_id)
        await self.replicas.announce(Invalidation(kind="key", id=record.key_id))
        return record

    # -- the catalogue ------------------------------------------------------------------------

    async def set_item_policy(self, tenant: str, item: str, state: ItemState) -> Tenant:
        """Enable an item for a tenant (a `per_tenant=True` one, or one disabled before), disable
        it (the tenant then finds it missing), or return it to its plan's and code's say."""
        updated = await self._control_plane.set_item_policy(tenant, item, state)
        await self.replicas.tenant_changed(updated.id)
        return updated

    async def set_plan_policy(self, plan: str, item: str, state: ItemState) -> None:
        """The default of an item for every tenant on `plan`; a tenant's own policy wins."""
        await self._control_plane.set_plan_item_policy(plan, item, state)
        await self.replicas.announce(Invalidation(kind="all"))  # whoever is on the plan, wherever cached

    async def catalogue(self, tenant: str) -> list[dict[str, Any]]:
        """Each of the app's items, whether the tenant sees it, and why (needs the app)."""
        found = await self._control_plane.require_tenant(tenant)
        return self._require_app("the catalogue").catalogue_report(found)

    def _require_app(self, what: str) -> AppSettings:
        if self._app is None:
            raise ConfigurationError(f"{what} is declared in the app: create Admin(app), not Admin(url)")
        return self._app

    # -- limits -------------------------------------------------------------------------------

    async def limits(self, tenant: str) -> TenantLimits:
        """The tenant's override and, given the app, the limits it gets."""
        found = await self._control_plane.require_tenant(tenant)
        override = await read_override(self._control_plane, found.id)
        plans = self._app.limits if self._app is not None else None
        return TenantLimits(
            found, override, None if plans is None else effective_limits(plans, found, override)
        )

    async def set_limits(self, tenant: str, values: Mapping[str, Any]) -> TenantLimits:
        """Override limits of the tenant's plan: a value, None (unlimited) or "default" (back to
        the plan's) per field of `Limits`. Servers apply it within their cache window, or at once."""
        found = await self._control_plane.require_tenant(tenant)
        await write_override(self._control_plane, found.id, values)
        await self.replicas.tenant_changed(found.id)
        return await self.limits(tenant)

    async def usage(self, tenant: str, since: str | None = None) -> Usage:
        """Calls and refusals per UTC day from `since` (YYYY-MM-DD; default: this month's first)."""
        since = since or month_start()
        if not _DAY.fullmatch(since):
            raise TenantMCPError(f"since is a UTC date YYYY-MM-DD (got {since[:40]!r})")
        found = await self.limits(tenant)
        rows = await usage_rows(self._control_plane, found.tenant.id, min(since, month_start()))
        return usage(found, since, rows)

    # -- secrets ------------------------------------------------------------------------------

    def _secret_store(self) -> SecretStore:
        if self._secrets is None:
            self._secrets = SecretStore(self._control_plane.db, self._keyring or KeyRing.from_env())
        return self._secrets

    async def set_secret(self, tenant: str, name: str, value: str) -> None:
        """Store a secret, encrypted with the tenant's own data key; tools read it with
        ``ctx.secrets.get(name)``. Values never appear in errors, logs or the audit trail."""
        found = await self._control_plane.require_tenant(tenant)
        await self._secret_store().set(found.id, name, value)

    async def list_secrets(self, tenant: str) -> list[SecretInfo]:
        """Names and dates of the tenant's secrets, never their values."""
        found = await self._control_plane.require_tenant(tenant)
        return await self._secret_store().list(found.id)

    async def delete_secret(self, tenant: str, name: str) -> None:
        """Delete one secret; a name the tenant does not have raises `NotFoundError`."""
        found = await self._control_plane.require_tenant(tenant)
        if not await self._secret_store().delete(found.id, name):
            raise NotFoundError(f"tenant {found.slug!r} has no secret {name!r}")

    # -- upstream connections ------------------------------------------------------------------

    async def list_connections(self, tenant: str, provider: str | None = None) -> list[ConnectionInfo]:
        """The tenant's upstream connections (of `provider`, or all): who, which, in what state;
        never a token."""
        found = await self._control_plane.require_tenant(tenant)
        return await ConnectionStore(self._control_plane.db, self._secret_store()).list(found.id, provider)

    async def revoke_connections(self, tenant: str, provider: str | None = None) -> int:
        """Forget the tenant's connections (of `provider`, or all) and their pending links: its
        calls get a new connect link. The grant at the provider is the provider's to revoke."""
        found = await self._control_plane.require_tenant(tenant)
        return await ConnectionStore(self._control_plane.db, self._secret_store()).revoke(found.id, provider)

    async def rotate_secret_key(self) -> int:
        """Re-wrap every tenant's data key with the keyring's first key; returns how many."""
        return await self._secret_store().rotate()

    # -- canaries -----------------------------------------------------------------------------

    async def plant_canary(self, tenant: str) -> str:
        """Record a random value as the tenant's canary and write it into its data: a query that
        wrongly crosses tenants carries it out, and the leak guard (which knows it as the tenant's
        marker) catches it. Returns the value."""
        found = await self._control_plane.require_tenant(tenant)
        value = "tmcanary" + _random.token_hex(12)
        await self._control_plane.add_marker(found.id, value, "canary")
        await (await self._data()).plant_canary(found.id, value)
        return value

    # -- the audit trail ----------------------------------------------------------------------

    async def audit_events(self, tenant: str, limit: int = 50) -> list[dict[str, Any]]:
        """The tenant's most recent audit events, newest first."""
        return await self._control_plane.audit_events(tenant, limit)

    async def audit_pages(
        self, tenant: str | None = None, *, after: int = 0, since: str | None = None, page_size: int = 1000
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Audit events after the event id `after` (and at or after the ISO time `since`), oldest
        first, a page at a time, of one tenant or (None) of all. Each event's id is the cursor to
        resume from."""
        tenant_id = (await self._control_plane.require_tenant(tenant)).id if tenant else None
        while page := await self._control_plane.audit_page(
            tenant_id=tenant_id, after_id=after, since=since, limit=page_size
        ):
            yield page
            after = int(page[-1]["id"])

    async def prune_audit(self, before: str) -> int:
        """Delete audit events older than `before` (ISO time, UTC); returns how many."""
        return await self._control_plane.prune_audit(before)
