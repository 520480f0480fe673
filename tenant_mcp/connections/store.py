"""`ConnectionStore`: upstream tokens and pending connect links in the control plane.

Tokens are sealed with the tenant's data key (`tenant_mcp.secrets`), the tenant id, provider and
owner as associated data: a ciphertext copied to another tenant's row, another provider or another
person fails to decrypt, and deleting the tenant (its data key) makes every copy unreadable.
Connect links are stored as SHA-256 digests, like API keys: the link itself exists only in the
answer to the principal that asked.
"""

from __future__ import annotations

import hashlib
import secrets as _random
import time
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag

from tenant_mcp.connections.grant import Grant
from tenant_mcp.errors import TenantMCPError
from tenant_mcp.secrets import SecretStore
from tenant_mcp.storage.sql import Database

LINK_SECONDS = 10 * 60
MAX_LINKS = 5  # pending links per (tenant, provider, principal): a looping tool cannot pile them up


def digest(value: str) -> str:
    return hashlib.sha256(b"tenant_mcp connection link\0" + value.encode()).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _aad(tenant_id: str, provider: str, owner: str) -> bytes:
    return b"tenant_mcp connection\0" + "\0".join((tenant_id, provider, owner)).encode()


@dataclass(frozen=True)
class Connection:
    """A stored connection, decrypted. `version` changes with every write (optimistic updates:
    two replicas refreshing at once cannot overwrite each other's newer tokens)."""

    grant: Grant
    status: str
    version: int
    refreshing: bool = False  # a process (this one or another replica) is refreshing it now


@dataclass(frozen=True)
class ConnectionInfo:
    """What may be shown of a connection: never a token."""

    provider: str
    owner: str
    status: str
    reason: str | None
    connected_by: str
    created_at: str
    updated_at: str

    def public(self, tenant_slug: str) -> dict[str, Any]:
        return {"tenant": tenant_slug, "provider": self.provider, "owner": self.owner or "tenant",
                "status": self.status, "reason": self.reason, "connected_by": self.connected_by,
                "created_at": self.created_at, "updated_at": self.updated_at}  # fmt: skip


class ConnectionStore:
    """Every operation names one tenant id (links: their digest, which names it)."""

    def __init__(self, db: Database, secrets: SecretStore) -> None:
        self._db = db
        self._secrets = secrets

    # -- tokens ------------------------------------------------------------------------------------

    async def load(self, tenant_id: str, provider: str, owner: str) -> Connection | None:
        async with self._db.transaction() as tx:
            row = await tx.fetch_one(
                "SELECT ciphertext, status, version, refreshing_until FROM connections"
                " WHERE tenant_id = ? AND provider = ? AND owner = ?",
                (tenant_id, provider, owner),
            )
            if row is None:
                return None
            try:
                data = await self._secrets.unseal(
                    tx, tenant_id, _aad(tenant_id, provider, owner), bytes(row["ciphertext"])
                )
            except InvalidTag:
                raise TenantMCPError(
                    f"connection {provider!r} failed to decrypt (tampered with or moved)"
                ) from None
        if data is None:
            return None
        refreshing = row["refreshing_until"] is not None and row["refreshing_until"] > time.time()
        return Connection(Grant.loads(data), row["status"], int(row["version"]), refreshing)

    async def save(self, tenant_id: str, provider: str, owner: str, grant: Grant, connected_by: str) -> None:
        """A new connection (the connect link completed): replaces a broken or older one."""
        async with self._db.transaction() as tx:
            sealed = await self._secrets.seal(tx, tenant_id, _aad(tenant_id, provider, owner), grant.dumps())
            now = _now()
            await tx.execute(
                "INSERT INTO connections (tenant_id, provider, owner, ciphertext, status, connected_by,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, 'active', ?, ?, ?)"
                " ON CONFLICT (tenant_id, provider, owner) DO UPDATE SET ciphertext = excluded.ciphertext,"
                " status = 'active', reason = NULL, connected_by = excluded.connected_by, refreshing_until = NULL,"
                " version = connections.version + 1, created_at = excluded.created_at,"
                " updated_at = excluded.updated_at",
                (tenant_id, provider, owner, sealed, connected_by, now, now),
            )

    async def claim(self, tenant_id: str, provider: str, owner: str, version: int, seconds: float) -> bool:
        """Take the right to refresh (for `seconds`, in case this process dies meanwhile): one
        refresh at a time across replicas, so a rotating refresh token is never used twice. The
        claim is version `version + 1`; `update`, `release` and `mark_broken` end it."""
        changed = await self._db.execute(
            "UPDATE connections SET version = version + 1, refreshing_until = ?"
            " WHERE tenant_id = ? AND provider = ? AND owner = ? AND version = ? AND status = 'active'"
            " AND (refreshing_until IS NULL OR refreshing_until < ?)",
            (time.time() + seconds, tenant_id, provider, owner, version, time.time()),
        )
        return changed == 1

    async def release(self, tenant_id: str, provider: str, owner: str, version: int) -> None:
        await self._db.execute(
            "UPDATE connections SET refreshing_until = NULL"
            " WHERE tenant_id = ? AND provider = ? AND owner = ? AND version = ?",
            (tenant_id, provider, owner, version),
        )

    async def update(self, tenant_id: str, provider: str, owner: str, grant: Grant, version: int) -> bool:
        """Store refreshed tokens, unless someone else wrote since `version` (then False)."""
        async with self._db.transaction() as tx:
            sealed = await self._secrets.seal(tx, tenant_id, _aad(tenant_id, provider, owner), grant.dumps())
            changed = await tx.execute(
                "UPDATE connections SET ciphertext = ?, version = version + 1, refreshing_until = NULL,"
                " updated_at = ?"
                " WHERE tenant_id = ? AND provider = ? AND owner = ? AND version = ? AND status = 'active'",
                (sealed, _now(), tenant_id, provider, owner, version),
            )
        return changed == 1

    async def mark_broken(self, tenant_id: str, provider: str, owner: str, reason: str, version: int) -> None:
        """The provider refused the refresh: the next call gets a connect link. The sealed tokens
        stay (an operator can see the reason; reconnecting replaces them)."""
        await self._db.execute(
            "UPDATE connections SET status = 'broken', reason = ?, version = version + 1, refreshing_until = NULL,"
            " updated_at = ?"
            " WHERE tenant_id = ? AND provider = ? AND owner = ? AND version = ?",
            (reason[:200], _now(), tenant_id, provider, owner, version),
        )

    async def list(self, tenant_id: str, provider: str | None = None) -> list[ConnectionInfo]:
        where, params = "tenant_id = ?", [tenant_id]
        if provider is not None:
            where, params = where + " AND provider = ?", [*params, provider]
        rows = await self._db.fetch_all(
            "SELECT provider, owner, status, reason, connected_by, created_at, updated_at FROM connections"
            f" WHERE {where} ORDER BY provider, owner",
            params,
        )
        return [ConnectionInfo(**row) for row in rows]

    async def revoke(self, tenant_id: str, provider: str | None = None) -> int:
        """Forget a tenant's connections (of one provider, or all) and their pending links."""
        where, params = "tenant_id = ?", [tenant_id]
        if provider is not None:
            where, params = where + " AND provider = ?", [*params, provider]
        async with self._db.transaction() as tx:
            await tx.execute(f"DELETE FROM connection_links WHERE {where}", params)
            return await tx.execute(f"DELETE FROM connections WHERE {where}", params)

    # -- connect links -----------------------------------------------------------------------------

    async def new_link(self, tenant_id: str, provider: str, owner: str, principal: str, verifier: str) -> str:
        """A fresh single-use link secret for `principal` (who must complete it), valid ten minutes."""
        link = _random.token_urlsafe(32)
        now = time.time()
        async with self._db.transaction() as tx:
            await tx.execute("DELETE FROM connection_links WHERE expires_at < ?", (now,))
            rows = await tx.fetch_all(
                "SELECT digest FROM connection_links WHERE tenant_id = ? AND provider = ? AND principal = ?"
                " ORDER BY expires_at DESC",
                (tenant_id, provider, principal),
            )
            for row in rows[MAX_LINKS - 1 :]:
                await tx.execute("DELETE FROM connection_links WHERE digest = ?", (row["digest"],))
            await tx.execute(
                "INSERT INTO connection_links (digest, tenant_id, provider, owner, principal, verifier, csrf,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (digest(link), tenant_id, provider, owner, principal, verifier, _random.token_urlsafe(24),
                 now + LINK_SECONDS),
            )  # fmt: skip
        return link

    async def pending(self, link: str) -> dict[str, Any] | None:
        """A link not yet used nor expired."""
        return await self._db.fetch_one(
            "SELECT * FROM connection_links WHERE digest = ? AND state IS NULL AND expires_at > ?",
            (digest(link), time.time()),
        )

    async def bind_browser(self, link: str, browser: str) -> None:
        """The browser that opened the link last is the only one that may continue it."""
        await self._db.execute(
            "UPDATE connection_links SET browser = ? WHERE digest = ? AND state IS NULL",
            (digest(browser), digest(link)),
        )

    async def start(self, link: str, state: str) -> bool:
        """The person proved who they are: the link is used up, the provider's `state` stands in
        for it until the callback. False when it was started already (a race, a replay)."""
        changed = await self._db.execute(
            "UPDATE connection_links SET state = ? WHERE digest = ? AND state IS NULL AND expires_at > ?",
            (digest(state), digest(link), time.time()),
        )
        return changed == 1

    async def finish(self, state: str) -> dict[str, Any] | None:
        """The started link of a callback's `state`, deleted: of two racing callbacks one wins."""
        async with self._db.transaction() as tx:
            row = await tx.fetch_one(
                "SELECT * FROM connection_links WHERE state = ? AND expires_at > ?",
                (digest(state), time.time()),
            )
            if (
                row is None
                or await tx.execute("DELETE FROM connection_links WHERE digest = ?", (row["digest"],)) != 1
            ):
                return None
        return row

    async def drop_link(self, link: str) -> None:
        await self._db.execute("DELETE FROM connection_links WHERE digest = ?", (digest(link),))
