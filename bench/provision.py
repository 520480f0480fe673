"""Control planes and tenant databases for the benchmarks, created fast.

Creating 10,000 tenants one `Admin.create_tenant` at a time would take most of the time budget,
so only the tenant `bench` is made through the admin API; the others, their keys and their leak
markers go in with bulk inserts into the same tables. Their tenant databases are copies of one
migrated file: that is the steady state of a server that has seen every tenant once, which is
what the per-tenant pool is measured in.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from example_servers.notes import app as notes
from tenant_mcp.admin import Admin
from tenant_mcp.auth import apikeys
from tenant_mcp.controlplane import ControlPlane
from tenant_mcp.storage import migration_sql
from tenant_mcp.storage.sqlite import DatabasePool

JWT_ISSUER = "https://idp.bench.invalid"
JWT_AUDIENCE = "https://mcp.bench.invalid/mcp"


@dataclass
class Plane:
    """A control plane: its URL, the key of the tenant `bench`, and the keys of the others."""

    url: str
    key: str
    others: list[str]


def slug(i: int) -> str:
    return f"tenant-{i:05d}"


async def control_plane(
    path: Path, *, tenants: int = 0, markers_each: int = 0, databases: bool = False, policies_each: int = 0
) -> Plane:
    """`bench` plus `tenants` others named `tenant-00001`..., each with one key and
    `markers_each` leak markers, and (with `databases`) a migrated notes database. With
    `policies_each`, every tenant (bench too) has that many items disabled in its catalogue."""
    url = f"sqlite:///{path}"
    async with Admin(url) as admin:
        bench_id = (await admin.create_tenant("bench", name="Bench Tenant")).id
        _, key = await admin.create_key("bench")
    async with ControlPlane(url) as cp:  # the others in bulk, straight into the tables
        ids = [uuid.uuid4().hex for _ in range(tenants)]
        keys = [apikeys.generate() for _ in range(tenants)]
        now = "2026-01-01T00:00:00.000Z"
        async with cp.db.transaction() as tx:
            await tx.execute_many(
                "INSERT INTO tenants (id, slug, name, plan, status, metadata, created_at) VALUES (?,?,?,?,?,?,?)",
                [(ids[i], slug(i + 1), f"Tenant {i + 1:05d} Ltd", "free", "active", "{}", now)
                 for i in range(tenants)],
            )  # fmt: skip
            await tx.execute_many(
                "INSERT INTO api_keys (key_id, tenant_id, digest, created_at) VALUES (?,?,?,?)",
                [(k.key_id, ids[i], k.digest, now) for i, k in enumerate(keys)],
            )
            await tx.execute_many(
                "INSERT INTO leak_markers (tenant_id, kind, value, created_at) VALUES (?,?,?,?)",
                [(tid, "identifier", f"acct-{i + 1:05d}-{j:03d}", now)
                 for i, tid in enumerate(ids) for j in range(markers_each)],
            )  # fmt: skip
        if policies_each:
            policy = json.dumps({"disabled": [f"tool:retired_{j:03d}" for j in range(policies_each)]})
            await cp.db.execute("UPDATE tenants SET catalogue = ?", (policy,))
        if databases:
            await _tenant_databases(cp.data_dir, [bench_id, *ids])
    return Plane(url, key, [k.key for k in keys])


async def _tenant_databases(data_dir: Path, tenant_ids: list[str]) -> None:
    pool = DatabasePool(data_dir, [migration_sql("sqlite", m) for m in notes._migrations], max_open=1)
    try:
        async with pool.lease(tenant_ids[0]) as handle:
            await handle.run(lambda conn: None)  # opens and migrates the first tenant's database
    finally:
        await pool.aclose()
    template = pool.path(tenant_ids[0])
    for tenant_id in tenant_ids[1:]:
        shutil.copyfile(template, pool.path(tenant_id))


def jwt_key_pair(directory: Path) -> tuple[Path, rsa.RSAPrivateKey]:
    """A fresh RS256 key: the public half in a PEM file for `--jwt-public-key`, the private half
    for `mint`."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = directory / "jwt-public.pem"
    path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path, private


def mint(private: rsa.RSAPrivateKey, tenant: str = "bench") -> str:
    now = datetime.now(UTC)
    claims = {"iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "sub": "bench-user", "tenant": tenant,
              "iat": now, "exp": now + timedelta(hours=1)}  # fmt: skip
    return jwt.encode(claims, private, algorithm="RS256")
