"""Per-tenant secrets, encrypted at rest with envelope encryption.

Each tenant has its own data key (256-bit, AES-GCM), stored only wrapped by a key-encryption key
(KEK) that never touches the database: ``TENANT_MCP_SECRET_KEY`` (or ``TENANT_MCP_SECRET_KEY_FILE``)
holds one or more base64 keys separated by commas, the first one current; the others still
unwrap, so keys rotate with `tenant-mcp secret rotate-key`. Every ciphertext is bound to where it
belongs by AES-GCM's associated data: a wrapped data key to its tenant id, a secret to its tenant
id and name. A ciphertext copied into another tenant's row, or under another name, fails to
decrypt. Deleting a tenant deletes its data key, so its ciphertexts can never be read again.

Tools read values with ``await ctx.secrets.get("crm_api_key")``; operators manage them with the CLI
(values from stdin or an environment variable, never from the command line). A value read in a
process becomes a leak-guard marker of its tenant that is withheld from every response, the
tenant's own included: a model has no business reading it. Values never go into the audit trail,
logs or error messages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets as _random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from mcp.server.mcpserver.exceptions import ToolError

from tenant_mcp.errors import ConfigurationError, TenantMCPError
from tenant_mcp.storage.sql import Connection, Database

__all__ = ["KeyRing", "SecretInfo", "SecretNotSet", "SecretStore", "TenantSecrets"]


class SecretNotSet(ToolError):
    """The tenant has no such secret: an anticipated failure, so the message reaches the caller."""


_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,127}")
_NONCE = 12
MAX_VALUE = 64 * 1024


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise TenantMCPError(
            f"invalid secret name {name[:80]!r}: use 1-128 letters, digits, '_', '.', '-', starting with a letter"
        )
    return name


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """What may be shown of a secret: its name and dates, never its value."""

    name: str
    created_at: str
    updated_at: str


class KeyRing:
    """The key-encryption keys: the first wraps new data keys, every one unwraps."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ConfigurationError("a key ring needs at least one key")
        for key in keys:
            if len(key) != 32:
                raise ConfigurationError("TENANT_MCP_SECRET_KEY: each key is 32 bytes, base64-encoded")
        self._keys = {self.key_id(k): k for k in keys}
        self.current = self.key_id(keys[0])

    @staticmethod
    def key_id(key: bytes) -> str:
        return hashlib.sha256(b"tenant_mcp kek id\0" + key).hexdigest()[:16]

    @classmethod
    def from_env(cls) -> KeyRing | None:
        """The ring from ``TENANT_MCP_SECRET_KEY`` or ``TENANT_MCP_SECRET_KEY_FILE``; None when unset."""
        text = os.environ.get("TENANT_MCP_SECRET_KEY")
        path = os.environ.get("TENANT_MCP_SECRET_KEY_FILE")
        if not text and path:
            try:
                text = Path(path).read_text()
            except OSError as exc:
                raise ConfigurationError(
                    f"TENANT_MCP_SECRET_KEY_FILE: cannot read {path!r}: {exc.strerror}"
                ) from None
        if not text or not text.strip():
            return None
        try:
            keys = [base64.b64decode(part.strip(), validate=True) for part in text.split(",") if part.strip()]
        except (binascii.Error, ValueError):
            raise ConfigurationError(
                "TENANT_MCP_SECRET_KEY is not base64: make a key with `tenant-mcp secret new-key`"
            ) from None
        return cls(keys)

    @staticmethod
    def new_key() -> str:
        return base64.b64encode(_random.token_bytes(32)).decode()

    def wrap(self, tenant_id: str, data_key: bytes) -> tuple[str, bytes]:
        nonce = _random.token_bytes(_NONCE)
        aad = b"tenant_mcp data key\0" + tenant_id.encode()
        return self.current, nonce + AESGCM(self._keys[self.current]).encrypt(nonce, data_key, aad)

    def unwrap(self, tenant_id: str, key_id: str, wrapped: bytes) -> bytes:
        key = self._keys.get(key_id)
        if key is None:
            raise ConfigurationError(
                "a tenant's data key is wrapped by a key that TENANT_MCP_SECRET_KEY no longer holds: "
                "add the old key back (after the new one) and run `tenant-mcp secret rotate-key`"
            )
        aad = b"tenant_mcp data key\0" + tenant_id.encode()
        try:
            return AESGCM(key).decrypt(wrapped[:_NONCE], wrapped[_NONCE:], aad)
        except InvalidTag:
            raise TenantMCPError("a tenant data key failed to decrypt (tampered with or moved)") from None


class SecretStore:
    """Secrets of all tenants in the control plane; every operation names one tenant id."""

    def __init__(self, db: Database, ring: KeyRing | None) -> None:
        self._db = db
        self._ring = ring

    @property
    def has_key(self) -> bool:
        return self._ring is not None

    def _keyring(self) -> KeyRing:
        if self._ring is None:
            raise ConfigurationError(
                "secrets need a key-encryption key: set TENANT_MCP_SECRET_KEY (make one with "
                "`tenant-mcp secret new-key`)"
            )
        return self._ring

    async def configured(self) -> bool:
        """Whether any tenant has secrets (a server then refuses to start without the key)."""
        return await self._db.fetch_one("SELECT 1 AS x FROM tenant_keys LIMIT 1") is not None

    async def _data_key(self, tx: Connection, tenant_id: str, *, create: bool) -> bytes | None:
        ring = self._keyring()
        row = await tx.fetch_one("SELECT kek_id, wrapped FROM tenant_keys WHERE tenant_id = ?", (tenant_id,))
        if row is not None:
            return ring.unwrap(tenant_id, row["kek_id"], bytes(row["wrapped"]))
        if not create:
            return None
        data_key = AESGCM.generate_key(bit_length=256)
        kek_id, wrapped = ring.wrap(tenant_id, data_key)
        await tx.execute(
            "INSERT INTO tenant_keys (tenant_id, kek_id, wrapped, created_at) VALUES (?, ?, ?, ?)",
            (tenant_id, kek_id, wrapped, _now()),
        )
        return data_key

    @staticmethod
    def _aad(tenant_id: str, name: str) -> bytes:
        return b"tenant_mcp secret\0" + tenant_id.encode() + b"\0" + name.encode()

    async def seal(self, tx: Connection, tenant_id: str, aad: bytes, data: bytes) -> bytes:
        """`data` encrypted with the tenant's data key (made on first use), bound to `aad` (which
        names the tenant and where the ciphertext belongs). Upstream connection tokens use it too."""
        key = await self._data_key(tx, tenant_id, create=True)
        assert key is not None
        nonce = _random.token_bytes(_NONCE)
        return nonce + AESGCM(key).encrypt(nonce, data, aad)

    async def unseal(self, tx: Connection, tenant_id: str, aad: bytes, sealed: bytes) -> bytes | None:
        """What `seal` sealed, or None when the tenant has no data key (it was deleted).
        Raises `InvalidTag` when the ciphertext was tampered with or moved."""
        key = await self._data_key(tx, tenant_id, create=False)
        if key is None:
            return None
        return AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], aad)

    async def set(self, tenant_id: str, name: str, value: str) -> None:
        check_name(name)
        data = value.encode()
        if not data or len(data) > MAX_VALUE:
            raise TenantMCPError(f"a secret value has 1 to {MAX_VALUE} bytes")
        async with self._db.transaction() as tx:
            sealed = await self.seal(tx, tenant_id, self._aad(tenant_id, name), data)
            now = _now()
            await tx.execute(
                "INSERT INTO secrets (tenant_id, name, ciphertext, created_at, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (tenant_id, name) DO UPDATE SET ciphertext = excluded.ciphertext,"
                " updated_at = excluded.updated_at",
                (tenant_id, name, sealed, now, now),
            )

    async def get(self, tenant_id: str, name: str) -> str | None:
        check_name(name)
        async with self._db.transaction() as tx:
            row = await tx.fetch_one(
                "SELECT ciphertext FROM secrets WHERE tenant_id = ? AND name = ?", (tenant_id, name)
            )
            if row is None:
                return None
            try:
                data = await self.unseal(tx, tenant_id, self._aad(tenant_id, name), bytes(row["ciphertext"]))
            except InvalidTag:
                raise TenantMCPError(f"secret {name!r} failed to decrypt (tampered with or moved)") from None
        return None if data is None else data.decode()

    async def list(self, tenant_id: str) -> list[SecretInfo]:
        rows = await self._db.fetch_all(
            "SELECT name, created_at, updated_at FROM secrets WHERE tenant_id = ? ORDER BY name", (tenant_id,)
        )
        return [SecretInfo(r["name"], r["created_at"], r["updated_at"]) for r in rows]

    async def delete(self, tenant_id: str, name: str) -> bool:
        check_name(name)
        return (
            await self._db.execute("DELETE FROM secrets WHERE tenant_id = ? AND name = ?", (tenant_id, name))
            > 0
        )

    async def rotate(self) -> int:
        """Re-wrap every data key with the current KEK; returns how many were re-wrapped."""
        ring = self._keyring()
        count = 0
        async with self._db.transaction() as tx:
            rows = await tx.fetch_all(
                "SELECT tenant_id, kek_id, wrapped FROM tenant_keys WHERE kek_id <> ?", (ring.current,)
            )
            for row in rows:
                data_key = ring.unwrap(row["tenant_id"], row["kek_id"], bytes(row["wrapped"]))
                kek_id, wrapped = ring.wrap(row["tenant_id"], data_key)
                await tx.execute(
                    "UPDATE tenant_keys SET kek_id = ?, wrapped = ? WHERE tenant_id = ?",
                    (kek_id, wrapped, row["tenant_id"]),
                )
                count += 1
        return count


class TenantSecrets:
    """`ctx.secrets`: the calling tenant's secrets, read-only. No method takes a tenant."""

    def __init__(self, store: SecretStore, tenant_id: str, slug: str, guard: Callable[[str], None]) -> None:
        self._store = store
        self._tenant_id = tenant_id
        self._slug = slug
        self._guard = guard

    async def get(self, name: str) -> str:
        """The value of secret `name` of the caller's tenant. It is withheld from any response."""
        value = await self._store.get(self._tenant_id, name)
        if value is None:
            raise SecretNotSet(
                f"secret {name!r} is not set for this tenant: an operator sets it with "
                f"`tenant-mcp secret set {self._slug} {name}` (value on stdin)"
            )
        self._guard(value)
        return value
