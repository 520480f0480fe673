"""The verified-token cache and the audit switch keep their security properties.

A cached token is reused only inside the credential cache window, is refused once its key is
revoked or its tenant suspended (within that window), and is never used at or past its expiry.
With routine audit events off, refusals and leaks are still recorded.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tenant_mcp.audit.log import AuditLog
from tenant_mcp.auth.authenticator import Authenticator
from tenant_mcp.auth.jwt import JWTSettings, JWTVerifier
from tenant_mcp.controlplane import ControlPlane
from tenant_mcp.errors import AuthenticationError

pytestmark = pytest.mark.anyio
WINDOW = 0.3


async def test_cached_token_is_reused_and_revocation_still_bites(tmp_path: Path) -> None:
    async with ControlPlane(f"sqlite:///{tmp_path}/control.db") as cp:
        await cp.create_tenant("acme")
        record, key = await cp.create_key("acme")
        auth = Authenticator(cp, cache_seconds=WINDOW)
        first = await auth.authenticate(key)
        assert await auth.authenticate(key) is first  # one dict probe, no digest, no new object
        await cp.revoke_key(record.key_id)
        await anyio.sleep(WINDOW * 1.5)
        with pytest.raises(AuthenticationError, match="revoked"):
            await auth.authenticate(key)


async def test_cached_token_follows_a_suspension(tmp_path: Path) -> None:
    async with ControlPlane(f"sqlite:///{tmp_path}/control.db") as cp:
        await cp.create_tenant("acme")
        _, key = await cp.create_key("acme")
        auth = Authenticator(cp, cache_seconds=WINDOW)
        await auth.authenticate(key)
        await cp.set_status("acme", "suspended")
        await anyio.sleep(WINDOW * 1.5)
        with pytest.raises(AuthenticationError, match="suspended"):
            await auth.authenticate(key)


async def test_cached_jwt_is_never_used_past_its_expiry(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    settings = JWTSettings(
        issuers=("https://idp.test",), audience="https://mcp.test/mcp", public_key=pem.decode()
    )
    async with ControlPlane(f"sqlite:///{tmp_path}/control.db") as cp:
        await cp.create_tenant("acme")
        # A long cache window: expiry, not the window, must end the token's life.
        auth = Authenticator(cp, jwt=JWTVerifier(settings), cache_seconds=3600)
        exp = int(time.time()) + 2
        claims = {"iss": "https://idp.test", "aud": "https://mcp.test/mcp", "sub": "u1", "tenant": "acme",
                  "iat": datetime.now(UTC), "exp": exp}  # fmt: skip
        token = jwt.encode(claims, private, algorithm="RS256")
        first = await auth.authenticate(token)
        assert await auth.authenticate(token) is first
        await anyio.sleep(max(0.0, exp - time.time()) + 0.05)
        # Past `exp` the cache no longer answers; the verifier decides (within its clock-skew leeway).
        assert (await auth.authenticate(token)) is not first
        expired = jwt.encode(
            claims | {"exp": datetime.now(UTC) - timedelta(minutes=5)}, private, algorithm="RS256"
        )
        with pytest.raises(AuthenticationError):
            await auth.authenticate(expired)


async def test_audit_off_keeps_security_events(tmp_path: Path) -> None:
    async with ControlPlane(f"sqlite:///{tmp_path}/control.db") as cp:
        log = AuditLog(cp, every_request=False)
        log.record(tenant_id=None, principal=None, method="tools/call", outcome="ok", arguments={})
        log.record(tenant_id=None, principal=None, method="tools/call", outcome="error")
        log.record(tenant_id=None, principal=None, method="http", outcome="denied", reason="bad key")
        log.record(tenant_id=None, principal=None, method="tools/call", outcome="leak", reason="marker")
        assert [e.outcome for e in log._pending] == ["denied", "leak"]


async def test_audit_batches_wait_for_another_writer(tmp_path: Path) -> None:
    """The direct writer never blocks the loop; with the database locked, the batch goes through
    the control plane's connection once the lock is released."""
    async with ControlPlane(f"sqlite:///{tmp_path}/control.db") as cp:
        log = AuditLog(cp, flush_seconds=0.05)
        blocker = sqlite3.connect(tmp_path / "control.db", isolation_level=None)
        async with anyio.create_task_group() as tg:
            await tg.start(log.run)
            blocker.execute("BEGIN IMMEDIATE")
            log.record(tenant_id=None, principal=None, method="tools/call", outcome="ok")
            await anyio.sleep(0.3)
            blocker.execute("COMMIT")
            log.record(tenant_id=None, principal=None, method="tools/list", outcome="ok")
            await anyio.sleep(0.3)
            await log.aclose()
        blocker.close()
        rows = await cp.db.fetch_all("SELECT method FROM audit_events ORDER BY id")
        assert [row["method"] for row in rows] == ["tools/call", "tools/list"]
