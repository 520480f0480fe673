"""`ControlPlane`: tenants, API keys, policies, leak markers and audit events, in one database.

SQLite is the default so a single machine needs no service; every process that
opens it brings the schema up to date inside one write transaction, so two processes starting
together cannot apply a step twice. On PostgreSQL (several replicas) the tables live in the
``tenant_mcp`` schema, migrated by `tenant-mcp migrate` as their owner; a server only checks
that the schema is current. The tables are declared in `controlplane.tables`; queries are written
once, with ``?`` placeholders, for both.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tenant_mcp.auth import apikeys
from tenant_mcp.controlplane.tables import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS, TENANT_TABLES
from tenant_mcp.errors import ConfigurationError, NotFoundError, TenantMCPError, required
from tenant_mcp.models import Tenant, TenantStatus
from tenant_mcp.storage import data_dir, is_postgres, sqlite_path
from tenant_mcp.storage.sql import Connection, ConstraintError, Database

DEFAULT_DATABASE_URL = "sqlite:///./tenant_mcp.db"
# Always fullmatch: `$` also matches before a trailing newline, which made "acme\n" a second acme.
SLUG_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _check_text(what: str, value: str) -> None:
    """Names people read: printable, no surrounding whitespace, at most 200 characters."""
    if (
        not value
        or len(value) > 200
        or value != value.strip()
        or any(unicodedata.category(c).startswith("C") for c in value)
    ):
        raise TenantMCPError(
            f"invalid {what} {value!r}: 1-200 printable characters without leading or trailing spaces"
        )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    tenant_id: str
    digest: str
    scopes: tuple[str, ...]
    label: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None
    items: tuple[str, ...] | None = None  # allow-list ("tool:name", ...); None: no list

    def public(self, tenant_slug: str) -> dict[str, Any]:
        """Everything about the key except its digest."""
        return {
            "key_id": self.key_id,
            "tenant": tenant_slug,
            "scopes": list(self.scopes),
            "label": self.label,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
            "revoked_at": self.revoked_at,
            "items": None if self.items is None else list(self.items),
        }


@dataclass(frozen=True, slots=True)
class AuditEvent:
    at: str
    tenant_id: str | None
    principal: str | None
    method: str
    target: str | None
    outcome: str
    reason: str | None
    duration_ms: float
    arguments: str | None


ItemState = Literal["enabled", "disabled", "default"]


def _with_item(catalogue: str, key: str, state: ItemState) -> str:
    policy = json.loads(catalogue or "{}")
    enabled, disabled = set(policy.get("enabled", ())) - {key}, set(policy.get("disabled", ())) - {key}
    if state == "enabled":
        enabled.add(key)
    elif state == "disabled":
        disabled.add(key)
    return json.dumps({"enabled": sorted(enabled), "disabled": sorted(disabled)})


ITEM_KINDS = ("tool", "prompt", "resource", "template")


def item_key(item: str) -> str:
    """``kind:name`` of a catalogue item; a bare name is a tool."""
    kind, sep, name = item.partition(":")
    if not sep:
        kind, name = "tool", item
    if kind not in ITEM_KINDS or not name or len(item) > 300:
        raise TenantMCPError(
            f"invalid item {item[:80]!r}: use NAME (a tool) or KIND:NAME, KIND one of {', '.join(ITEM_KINDS)}"
        )
    return f"{kind}:{name}"


# A tenant with its plan's catalogue defaults, which its own policy overrides item by item.
_TENANTS = (
    "SELECT t.*, p.catalogue AS plan_catalogue FROM tenants t LEFT JOIN plan_policies p ON p.plan = t.plan"
)


_KEY_COLUMNS = (
    "key_id",
    "tenant_id",
    "digest",
    "scopes",
    "label",
    "created_at",
    "last_used_at",
    "revoked_at",
    "items",
)
_KEY_AND_TENANT = (
    "SELECT " + ", ".join(f"k.{c} AS k_{c}" for c in _KEY_COLUMNS) + ", t.*, p.catalogue AS plan_catalogue"
    " FROM api_keys k LEFT JOIN tenants t ON t.id = k.tenant_id LEFT JOIN plan_policies p ON p.plan = t.plan"
    " WHERE k.key_id = ?"
)


def _tenant(row: Mapping[str, Any]) -> Tenant:
    own = json.loads(row.get("catalogue") or "{}")
    plan = json.loads(row.get("plan_catalogue") or "{}")
    enabled, disabled = set(own.get("enabled", ())), set(own.get("disabled", ()))
    return Tenant(
        id=row["id"],
        slug=row["slug"],
        name=row["name"],
        plan=row["plan"],
        status=row["status"],
        metadata=json.loads(row["metadata"]),
        created_at=row["created_at"],
        disabled=frozenset((set(plan.get("disabled", ())) - enabled) | disabled),
        enabled=frozenset((set(plan.get("enabled", ())) - disabled) | enabled),
    )


def _key(row: Mapping[str, Any]) -> KeyRecord:
    return KeyRecord(
        key_id=row["key_id"],
        tenant_id=row["tenant_id"],
        digest=row["digest"],
        scopes=tuple(json.loads(row["scopes"])),
        label=row["label"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
        items=None if row.get("items") is None else tuple(json.loads(row["items"])),
    )


class ControlPlane:
    """Async access to the control-plane database. Use as ``async with ControlPlane(url) as cp``."""

    def __init__(self, url: str = DEFAULT_DATABASE_URL) -> None:
        self.url = url
        self.postgres = is_postgres(url)
        if not self.postgres:
            sqlite_path(url)  # a bad URL fails here, before anything opens
        self._db: Database | None = None

    @property
    def data_dir(self) -> Path:
        """Where per-tenant SQLite databases live (SQLite only)."""
        return data_dir(self.url)

    async def __aenter__(self) -> ControlPlane:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._db is not None:
            return
        if self.postgres:
            from tenant_mcp.storage.pg_control import PostgresDatabase
            from tenant_mcp.storage.pg_migrate import check_version

            pg = await PostgresDatabase.open(self.url)
            try:
                await check_version(pg, "control", len(POSTGRES_MIGRATIONS))
            except BaseException:
                await pg.close()
                raise
            self._db = pg
            return
        path = sqlite_path(self.url)
        if path.parent and not path.parent.exists():
            raise ConfigurationError(f"directory {str(path.parent)!r} for the database does not exist")
        from tenant_mcp.storage.sqlite import SQLiteDatabase

        self._db = await SQLiteDatabase.open(path)
        await self._migrate()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> Database:
        return required(self._db, "the control plane is not open")

    async def _migrate(self) -> None:
        async with self.db.transaction() as tx:
            await tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = await tx.fetch_one("SELECT max(version) AS v FROM schema_version")
            current = (row["v"] if row else None) or 0
            if current > len(SQLITE_MIGRATIONS):  # a newer tenant_mcp wrote it: never run against it
                raise ConfigurationError(
                    f"the control plane's schema is at version {current}, newer than this version of "
                    f"tenant_mcp knows ({len(SQLITE_MIGRATIONS)}): upgrade tenant_mcp"
                )
            for version, statements in enumerate(SQLITE_MIGRATIONS[current:], start=current + 1):
                for statement in statements:
                    await tx.execute(statement)
                await tx.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    # -- tenants ---------------------------------------------------------------------------

    async def create_tenant(
        self,
        slug: str,
        *,
        name: str | None = None,
        plan: str = "free",
        metadata: dict[str, Any] | None = None,
    ) -> Tenant:
        if not SLUG_RE.fullmatch(slug):
            raise TenantMCPError(
                f"invalid tenant slug {slug!r}: use 1-63 lowercase letters, digits and inner hyphens"
            )
        if not plan or len(plan) > 64:
            raise TenantMCPError("a plan name is 1-64 characters")
        name = slug if name is None else name
        _check_text("tenant name", name)
        await self._check_distinct(slug, name)
        tenant = Tenant(
            id=uuid.uuid4().hex,
            slug=slug,
            name=name,
            plan=plan,
            status="active",
            metadata=metadata or {},
            created_at=_now(),
        )
        try:
            await self.db.execute(
                "INSERT INTO tenants (id, slug, name, plan, status, metadata, created_at) VALUES (?,?,?,?,?,?,?)",
                (
                    tenant.id,
                    slug,
                    tenant.name,
                    plan,
                    "active",
                    json.dumps(tenant.metadata),
                    tenant.created_at,
                ),
            )
        except ConstraintError:
            raise TenantMCPError(f"tenant {slug!r} already exists") from None
        return tenant

    async def _check_distinct(self, slug: str, name: str) -> None:
        """The slug and name are leak-guard markers: refuse one that, normalised as the guard does
        (trimmed, lower case), equals another tenant's slug or name. Two tenants holding the same
        marker would each be allowed to see it, which switches the guard off for that word."""
        mine = {slug.strip().lower(), name.strip().lower()}
        for row in await self.db.fetch_all("SELECT slug, name FROM tenants"):
            if row["slug"] != slug and mine & {row["slug"].strip().lower(), row["name"].strip().lower()}:
                raise TenantMCPError(
                    f"tenant name {name!r} (or slug) is already another tenant's slug or name: choose a distinct one"
                )

    async def tenant_by_slug(self, slug: str) -> Tenant | None:
        row = await self.db.fetch_one(f"{_TENANTS} WHERE t.slug = ?", (slug,))
        return _tenant(row) if row else None

    async def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        row = await self.db.fetch_one(f"{_TENANTS} WHERE t.id = ?", (tenant_id,))
        return _tenant(row) if row else None

    async def require_tenant(self, slug: str) -> Tenant:
        tenant = await self.tenant_by_slug(slug)
        if tenant is None:
            raise NotFoundError(f"no tenant {slug!r}")
        return tenant

    async def list_tenants(self) -> list[Tenant]:
        return [_tenant(row) for row in await self.db.fetch_all(f"{_TENANTS} ORDER BY t.slug")]

    async def set_status(self, slug: str, status: TenantStatus) -> Tenant:
        await self.require_tenant(slug)
        await self.db.execute("UPDATE tenants SET status = ? WHERE slug = ?", (status, slug))
        return await self.require_tenant(slug)

    async def delete_tenant(self, slug: str) -> Tenant:
        """Remove the tenant, its keys and its audit trail. Its data files are the caller's job."""
        tenant = await self.require_tenant(slug)
        await self.purge_tenant(tenant.id)
        return tenant

    async def purge_tenant(self, tenant_id: str) -> None:
        """Delete every control-plane row of a tenant id; harmless when there is none (a second sweep).

        The tenant row goes first: an audit batch checks (on PostgreSQL: locks) it before writing,
        so a batch either committed before (and its events are deleted below) or finds no tenant
        and drops them."""
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM tenants WHERE id = ?", (tenant_id,))
            # secrets and tenant_keys: the data key goes, so no copy of a ciphertext can be read again
            for table in TENANT_TABLES:
                await tx.execute(f"DELETE FROM {table} WHERE tenant_id = ?", (tenant_id,))

    # -- API keys ----------------------------------------------------------------------------

    async def create_key(
        self,
        tenant_slug: str,
        *,
        scopes: Sequence[str] = (),
        label: str = "",
        items: Sequence[str] | None = None,
    ) -> tuple[KeyRecord, str]:
        """Create a key and return it with its plaintext, which is not stored anywhere.

        `items` ("tool:name", ... or bare tool names) limits the key to those items."""
        tenant = await self.require_tenant(tenant_slug)
        allowed = None if items is None else tuple(dict.fromkeys(item_key(i) for i in items))
        bad = [s for s in scopes if not s or any(c.isspace() for c in s)]
        if bad:
            raise TenantMCPError(f"invalid scope {bad[0]!r}: scopes are non-empty and contain no spaces")
        if label:
            _check_text("key label", label)
        new = apikeys.generate()
        record = KeyRecord(
            key_id=new.key_id,
            tenant_id=tenant.id,
            digest=new.digest,
            scopes=tuple(dict.fromkeys(scopes)),
            label=label,
            created_at=_now(),
            last_used_at=None,
            revoked_at=None,
            items=allowed,
        )
        await self.db.execute(
            "INSERT INTO api_keys (key_id, tenant_id, digest, scopes, label, created_at, items)"
            " VALUES (?,?,?,?,?,?,?)",
            (
                record.key_id,
                tenant.id,
                record.digest,
                json.dumps(list(record.scopes)),
                label,
                record.created_at,
                None if allowed is None else json.dumps(list(allowed)),
            ),
        )
        return record, new.key

    async def set_item_policy(self, tenant_slug: str, item: str, state: ItemState) -> Tenant:
        """Enable or disable an item for one tenant, or return it to its plan's and code's say."""
        tenant = await self.require_tenant(tenant_slug)
        async with self.db.transaction() as tx:
            row = await tx.fetch_one("SELECT catalogue FROM tenants WHERE id = ?", (tenant.id,))
            text = _with_item(row["catalogue"] if row else "{}", item_key(item), state)
            await tx.execute("UPDATE tenants SET catalogue = ? WHERE id = ?", (text, tenant.id))
        return await self.require_tenant(tenant_slug)

    async def set_plan_item_policy(self, plan: str, item: str, state: ItemState) -> None:
        """The default for every tenant on `plan` (a tenant's own policy of the item wins)."""
        if not plan or len(plan) > 100:
            raise TenantMCPError("a plan name has 1 to 100 characters")
        async with self.db.transaction() as tx:
            row = await tx.fetch_one("SELECT catalogue FROM plan_policies WHERE plan = ?", (plan,))
            text = _with_item(row["catalogue"] if row else "{}", item_key(item), state)
            await tx.execute(
                "INSERT INTO plan_policies (plan, catalogue) VALUES (?, ?)"
                " ON CONFLICT (plan) DO UPDATE SET catalogue = excluded.catalogue",
                (plan, text),
            )

    async def key(self, key_id: str) -> KeyRecord | None:
        row = await self.db.fetch_one("SELECT * FROM api_keys WHERE key_id = ?", (key_id,))
        return _key(row) if row else None

    async def key_and_tenant(self, key_id: str) -> tuple[KeyRecord | None, Tenant | None]:
        """A key and its tenant in one read: what verifying an API key needs, read at one moment
        (a cold credential costs one round trip, not two)."""
        row = await self.db.fetch_one(_KEY_AND_TENANT, (key_id,))
        if row is None:
            return None, None
        key = _key({column[2:]: value for column, value in row.items() if column.startswith("k_")})
        return key, (_tenant(row) if row["id"] is not None else None)

    async def list_keys(self, tenant_slug: str) -> list[KeyRecord]:
        tenant = await self.require_tenant(tenant_slug)
        rows = await self.db.fetch_all(
            "SELECT * FROM api_keys WHERE tenant_id = ? ORDER BY created_at, key_id", (tenant.id,)
        )
        return [_key(row) for row in rows]

    async def revoke_key(self, key_id: str) -> KeyRecord:
        record = await self.key(key_id)
        if record is None:
            raise NotFoundError(f"no key {key_id!r}")
        if record.revoked_at is None:
            await self.db.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ?", (_now(), key_id))
        revoked = await self.key(key_id)
        assert revoked is not None
        return revoked

    # -- leak markers ------------------------------------------------------------------------------

    async def add_marker(self, tenant_id: str, value: str, kind: str) -> None:
        await self.db.execute(
            "INSERT INTO leak_markers (tenant_id, kind, value, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (tenant_id, kind, value, _now()),
        )

    async def tenant_names(self, after_rowid: int = 0) -> list[tuple[int, str, str, str]]:
        """(sequence, id, slug, name) of tenants created after `after_rowid`: cheap to poll."""
        seq = "seq" if self.postgres else "rowid"
        rows = await self.db.fetch_all(
            f"SELECT {seq} AS seq, id, slug, name FROM tenants WHERE {seq} > ? ORDER BY {seq}", (after_rowid,)
        )
        return [(row["seq"], row["id"], row["slug"], row["name"]) for row in rows]

    async def markers(self, after_id: int = 0) -> list[tuple[int, str, str, str]]:
        """(id, tenant id, kind, value) of markers added after `after_id`, oldest first."""
        rows = await self.db.fetch_all(
            "SELECT id, tenant_id, kind, value FROM leak_markers WHERE id > ? ORDER BY id", (after_id,)
        )
        return [(row["id"], row["tenant_id"], row["kind"], row["value"]) for row in rows]

    # -- audit -------------------------------------------------------------------------------

    async def write_audit(self, events: Sequence[AuditEvent], used_keys: Iterable[str] = ()) -> None:
        """Write a batch in one transaction: one disk sync for many requests."""
        async with self.db.transaction() as tx:
            events = await self._of_live_tenants(tx, events)
            await tx.execute_many(
                "INSERT INTO audit_events (at, tenant_id, principal, method, target, outcome, reason,"
                " duration_ms, arguments) VALUES (?,?,?,?,?,?,?,?,?)",
                [
                    (e.at, e.tenant_id, e.principal, e.method, e.target, e.outcome, e.reason, e.duration_ms,
                     e.arguments)
                    for e in events
                ],
            )  # fmt: skip
            now = _now()
            await tx.execute_many(
                "UPDATE api_keys SET last_used_at = ? WHERE key_id = ?", [(now, k) for k in sorted(used_keys)]
            )

    async def audit_page(
        self, *, tenant_id: str | None, after_id: int, since: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """Events after the cursor `after_id`, oldest first (for export): ids are the cursor."""
        where, params = ["e.id > ?"], list[Any]([after_id])
        if tenant_id is not None:
            where.append("e.tenant_id = ?")
            params.append(tenant_id)
        if since is not None:
            where.append("e.at >= ?")
            params.append(since)
        return await self.db.fetch_all(
            "SELECT e.id, e.at, e.tenant_id, t.slug AS tenant, e.principal, e.method, e.target, e.outcome,"
            " e.reason, e.duration_ms, e.arguments FROM audit_events e LEFT JOIN tenants t ON t.id = e.tenant_id"
            f" WHERE {' AND '.join(where)} ORDER BY e.id LIMIT ?",
            (*params, limit),
        )

    async def prune_audit(self, before: str) -> int:
        """Delete audit events older than `before` (ISO time, UTC); returns how many."""
        return await self.db.execute("DELETE FROM audit_events WHERE at < ?", (before,))

    async def _of_live_tenants(self, tx: Connection, events: Sequence[AuditEvent]) -> Sequence[AuditEvent]:
        """Drop events of tenants deleted meanwhile (a deletion must leave nothing, and failing
        the batch would lose the other tenants' events). On PostgreSQL the tenant rows are locked
        until the batch commits, so a deletion in progress waits for it and then deletes its events."""
        ids = sorted({e.tenant_id for e in events if e.tenant_id is not None})
        if not ids:
            return events
        lock = " FOR KEY SHARE" if self.postgres else ""
        marks = ", ".join("?" for _ in ids)
        rows = await tx.fetch_all(f"SELECT id FROM tenants WHERE id IN ({marks}){lock}", ids)
        live = {row["id"] for row in rows}
        return (
            events
            if len(live) == len(ids)
            else [e for e in events if e.tenant_id in live or e.tenant_id is None]
        )

    async def audit_events(self, tenant_slug: str, limit: int = 50) -> list[dict[str, Any]]:
        tenant = await self.require_tenant(tenant_slug)
        return await self.db.fetch_all(
            "SELECT at, principal, method, target, outcome, reason, duration_ms, arguments"
            " FROM audit_events WHERE tenant_id = ? ORDER BY id DESC LIMIT ?",
            (tenant.id, limit),
        )
