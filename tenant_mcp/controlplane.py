"""The control plane: tenants, API keys and audit events, in one database.

SQLite through aiosqlite is the default so a single machine needs no service. The schema has a
version table with forward-only migrations; every process that opens the store brings it up to
date, inside one write transaction so two processes starting together cannot apply a step twice.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from tenant_mcp.auth import apikeys
from tenant_mcp.errors import ConfigurationError, NotFoundError, TenantMCPError
from tenant_mcp.models import Tenant, TenantStatus

DEFAULT_DATABASE_URL = "sqlite:///./tenant_mcp.db"
SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")

_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE tenants (
        id TEXT PRIMARY KEY,
        slug TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        plan TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('active', 'suspended')),
        metadata TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL
    );
    CREATE TABLE api_keys (
        key_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        digest TEXT NOT NULL,
        scopes TEXT NOT NULL DEFAULT '[]',
        label TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        last_used_at TEXT,
        revoked_at TEXT
    );
    CREATE INDEX api_keys_tenant ON api_keys(tenant_id);
    CREATE TABLE audit_events (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        tenant_id TEXT,
        principal TEXT,
        method TEXT NOT NULL,
        target TEXT,
        outcome TEXT NOT NULL,
        reason TEXT,
        duration_ms REAL NOT NULL DEFAULT 0,
        arguments TEXT
    );
    CREATE INDEX audit_events_tenant ON audit_events(tenant_id, id);
    """,
    # The built-in OAuth authorization server (tenant_mcp.oauth). Codes and tokens are stored as
    # SHA-256 digests, like API keys; a token is bound to one tenant, key, client and resource.
    """
    CREATE TABLE oauth_clients (
        client_id TEXT PRIMARY KEY,
        info TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE oauth_requests (
        id TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        params TEXT NOT NULL,
        csrf TEXT NOT NULL,
        browser TEXT,
        expires_at REAL NOT NULL
    );
    CREATE TABLE oauth_codes (
        digest TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        key_id TEXT NOT NULL,
        scopes TEXT NOT NULL,
        params TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE TABLE oauth_tokens (
        digest TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('access', 'refresh')),
        client_id TEXT NOT NULL,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        key_id TEXT NOT NULL,
        scopes TEXT NOT NULL,
        resource TEXT,
        family TEXT NOT NULL,
        expires_at REAL NOT NULL,
        revoked_at REAL
    );
    CREATE INDEX oauth_tokens_family ON oauth_tokens(family);
    """,
    # Markers of the outbound leak guard (tenant_mcp.leakguard): identifiers and canaries.
    """
    CREATE TABLE leak_markers (
        id INTEGER PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        kind TEXT NOT NULL CHECK (kind IN ('identifier', 'canary')),
        value TEXT NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (tenant_id, value)
    );
    """,
)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def sqlite_path(url: str) -> Path:
    """The file behind a ``sqlite:///relative`` or ``sqlite:////absolute`` URL."""
    if url.startswith(("postgresql://", "postgres://")):
        raise ConfigurationError(
            "PostgreSQL is not supported yet by this version of tenant_mcp; use a sqlite:/// URL"
        )
    if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
        raise ConfigurationError(f"unsupported database URL {url!r}: expected sqlite:///path/to/file.db")
    return Path(url[len("sqlite:///") :])


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


def _tenant(row: aiosqlite.Row) -> Tenant:
    return Tenant(
        id=row["id"],
        slug=row["slug"],
        name=row["name"],
        plan=row["plan"],
        status=row["status"],
        metadata=json.loads(row["metadata"]),
        created_at=row["created_at"],
    )


def _key(row: aiosqlite.Row) -> KeyRecord:
    return KeyRecord(
        key_id=row["key_id"],
        tenant_id=row["tenant_id"],
        digest=row["digest"],
        scopes=tuple(json.loads(row["scopes"])),
        label=row["label"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


class ControlPlane:
    """Async access to the control-plane database. Use as ``async with ControlPlane(url) as cp``."""

    def __init__(self, url: str = DEFAULT_DATABASE_URL) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self._conn: aiosqlite.Connection | None = None

    @property
    def data_dir(self) -> Path:
        """Where per-tenant databases live: beside the control plane, so one path configures both."""
        return self.path.with_name(self.path.stem + "_data")

    async def __aenter__(self) -> ControlPlane:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._conn is not None:
            return
        if self.path.parent and not self.path.parent.exists():
            raise ConfigurationError(f"directory {str(self.path.parent)!r} for the database does not exist")
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        await conn.execute("PRAGMA busy_timeout = 10000")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute("PRAGMA foreign_keys = ON")
        self._conn = conn
        await self._migrate()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise TenantMCPError("the control plane is not open")
        return self._conn

    async def _migrate(self) -> None:
        conn = self.conn
        await conn.execute("BEGIN IMMEDIATE")
        try:
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            async with conn.execute("SELECT max(version) FROM schema_version") as cur:
                row = await cur.fetchone()
            current = (row[0] if row else None) or 0
            for version, script in enumerate(_MIGRATIONS, start=1):
                if version <= current:
                    continue
                for statement in filter(None, (s.strip() for s in script.split(";"))):
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise

    # -- tenants ---------------------------------------------------------------------------

    async def create_tenant(
        self,
        slug: str,
        *,
        name: str | None = None,
        plan: str = "free",
        metadata: dict[str, Any] | None = None,
    ) -> Tenant:
        if not SLUG_RE.match(slug):
            raise TenantMCPError(
                f"invalid tenant slug {slug!r}: use 1-63 lowercase letters, digits and inner hyphens"
            )
        if not plan or len(plan) > 64:
            raise TenantMCPError("a plan name is 1-64 characters")
        tenant = Tenant(
            id=uuid.uuid4().hex,
            slug=slug,
            name=name or slug,
            plan=plan,
            status="active",
            metadata=metadata or {},
            created_at=_now(),
        )
        try:
            await self.conn.execute(
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
        except aiosqlite.IntegrityError:
            raise TenantMCPError(f"tenant {slug!r} already exists") from None
        return tenant

    async def tenant_by_slug(self, slug: str) -> Tenant | None:
        async with self.conn.execute("SELECT * FROM tenants WHERE slug = ?", (slug,)) as cur:
            row = await cur.fetchone()
        return _tenant(row) if row else None

    async def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        async with self.conn.execute("SELECT * FROM tenants WHERE id = ?", (tenant_id,)) as cur:
            row = await cur.fetchone()
        return _tenant(row) if row else None

    async def require_tenant(self, slug: str) -> Tenant:
        tenant = await self.tenant_by_slug(slug)
        if tenant is None:
            raise NotFoundError(f"no tenant {slug!r}")
        return tenant

    async def list_tenants(self) -> list[Tenant]:
        async with self.conn.execute("SELECT * FROM tenants ORDER BY slug") as cur:
            return [_tenant(row) for row in await cur.fetchall()]

    async def set_status(self, slug: str, status: TenantStatus) -> Tenant:
        await self.require_tenant(slug)
        await self.conn.execute("UPDATE tenants SET status = ? WHERE slug = ?", (status, slug))
        return await self.require_tenant(slug)

    async def delete_tenant(self, slug: str) -> Tenant:
        """Remove the tenant, its keys and its audit trail. Its data files are the caller's job."""
        tenant = await self.require_tenant(slug)
        conn = self.conn
        await conn.execute("BEGIN IMMEDIATE")
        try:
            await conn.execute("DELETE FROM api_keys WHERE tenant_id = ?", (tenant.id,))
            await conn.execute("DELETE FROM oauth_codes WHERE tenant_id = ?", (tenant.id,))
            await conn.execute("DELETE FROM oauth_tokens WHERE tenant_id = ?", (tenant.id,))
            await conn.execute("DELETE FROM leak_markers WHERE tenant_id = ?", (tenant.id,))
            await conn.execute("DELETE FROM audit_events WHERE tenant_id = ?", (tenant.id,))
            await conn.execute("DELETE FROM tenants WHERE id = ?", (tenant.id,))
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        return tenant

    # -- API keys ----------------------------------------------------------------------------

    async def create_key(
        self, tenant_slug: str, *, scopes: Sequence[str] = (), label: str = ""
    ) -> tuple[KeyRecord, str]:
        """Create a key and return it with its plaintext, which is not stored anywhere."""
        tenant = await self.require_tenant(tenant_slug)
        bad = [s for s in scopes if not s or any(c.isspace() for c in s)]
        if bad:
            raise TenantMCPError(f"invalid scope {bad[0]!r}: scopes are non-empty and contain no spaces")
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
        )
        await self.conn.execute(
            "INSERT INTO api_keys (key_id, tenant_id, digest, scopes, label, created_at) VALUES (?,?,?,?,?,?)",
            (
                record.key_id,
                tenant.id,
                record.digest,
                json.dumps(list(record.scopes)),
                label,
                record.created_at,
            ),
        )
        return record, new.key

    async def key(self, key_id: str) -> KeyRecord | None:
        async with self.conn.execute("SELECT * FROM api_keys WHERE key_id = ?", (key_id,)) as cur:
            row = await cur.fetchone()
        return _key(row) if row else None

    async def list_keys(self, tenant_slug: str) -> list[KeyRecord]:
        tenant = await self.require_tenant(tenant_slug)
        async with self.conn.execute(
            "SELECT * FROM api_keys WHERE tenant_id = ? ORDER BY created_at, key_id", (tenant.id,)
        ) as cur:
            return [_key(row) for row in await cur.fetchall()]

    async def revoke_key(self, key_id: str) -> KeyRecord:
        record = await self.key(key_id)
        if record is None:
            raise NotFoundError(f"no key {key_id!r}")
        if record.revoked_at is None:
            await self.conn.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ?", (_now(), key_id))
        revoked = await self.key(key_id)
        assert revoked is not None
        return revoked

    # -- leak markers ------------------------------------------------------------------------------

    async def add_marker(self, tenant_id: str, value: str, kind: str) -> None:
        await self.conn.execute(
            "INSERT OR IGNORE INTO leak_markers (tenant_id, kind, value, created_at) VALUES (?, ?, ?, ?)",
            (tenant_id, kind, value, _now()),
        )

    async def tenant_names(self, after_rowid: int = 0) -> list[tuple[int, str, str, str]]:
        """(rowid, id, slug, name) of tenants created after `after_rowid`: cheap to poll."""
        async with self.conn.execute(
            "SELECT rowid, id, slug, name FROM tenants WHERE rowid > ? ORDER BY rowid", (after_rowid,)
        ) as cur:
            return [(row[0], row[1], row[2], row[3]) for row in await cur.fetchall()]

    async def markers(self, after_id: int = 0) -> list[tuple[int, str, str, str]]:
        """(id, tenant id, kind, value) of markers added after `after_id`, oldest first."""
        async with self.conn.execute(
            "SELECT id, tenant_id, kind, value FROM leak_markers WHERE id > ? ORDER BY id", (after_id,)
        ) as cur:
            return [(row[0], row[1], row[2], row[3]) for row in await cur.fetchall()]

    # -- audit -------------------------------------------------------------------------------

    async def write_audit(self, events: Sequence[AuditEvent], used_keys: Iterable[str] = ()) -> None:
        """Write a batch in one transaction: one disk sync for many requests."""
        conn = self.conn
        await conn.execute("BEGIN IMMEDIATE")
        try:
            await conn.executemany(
                "INSERT INTO audit_events (at, tenant_id, principal, method, target, outcome, reason,"
                " duration_ms, arguments) VALUES (?,?,?,?,?,?,?,?,?)",
                [
                    (
                        e.at,
                        e.tenant_id,
                        e.principal,
                        e.method,
                        e.target,
                        e.outcome,
                        e.reason,
                        e.duration_ms,
                        e.arguments,
                    )
                    for e in events
                ],
            )
            now = _now()
            await conn.executemany(
                "UPDATE api_keys SET last_used_at = ? WHERE key_id = ?", [(now, k) for k in used_keys]
            )
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise

    async def audit_events(self, tenant_slug: str, limit: int = 50) -> list[dict[str, Any]]:
        tenant = await self.require_tenant(tenant_slug)
        async with self.conn.execute(
            "SELECT at, principal, method, target, outcome, reason, duration_ms, arguments"
            " FROM audit_events WHERE tenant_id = ? ORDER BY id DESC LIMIT ?",
            (tenant.id, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [dict(row) for row in rows]
