"""The credential cache of `tenant_mcp.auth.authenticator`: a lookup is reused for `cache_seconds`
and no longer, an invalidation drops exactly what it names, and a revoked key or a suspended
tenant stops working once the cache lets go. Against a real SQLite control plane, no server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from tenant_mcp.auth.authenticator import Authenticator, _TTLCache
from tenant_mcp.auth.invalidation import Invalidation
from tenant_mcp.controlplane import ControlPlane, KeyRecord
from tenant_mcp.errors import AuthenticationError
from tenant_mcp.models import Tenant

pytestmark = pytest.mark.anyio


def test_an_entry_lives_for_the_ttl_from_when_it_was_read() -> None:
    cache = _TTLCache(10.0)
    now = time.monotonic()
    cache.put("fresh", "a", read_at=now)
    cache.put("old", "b", read_at=now - 9.5)
    cache.put("stale", "c", read_at=now - 10.5)  # read long ago: expired on arrival
    assert cache.get("fresh") == "a" and cache.entry("fresh") == (now, "a")
    assert cache.get("old") == "b"
    assert cache.get("stale") is None and cache.entry("stale") is None
    assert cache.get("missing") is None


def test_false_and_empty_values_are_cached_values() -> None:
    cache = _TTLCache(10.0)
    cache.put("inactive", False, read_at=time.monotonic())
    cache.put("nothing", {}, read_at=time.monotonic())
    assert cache.get("inactive") is False
    assert cache.get("nothing") == {}


def test_entries_are_dropped_one_by_predicate_or_all() -> None:
    cache = _TTLCache(10.0)
    now = time.monotonic()
    for key, value in {"a": 1, "b": 2, "c": 3, "d": 4}.items():
        cache.put(key, value, read_at=now)
    cache.discard("a")
    cache.discard("never-there")
    cache.discard_where(lambda value: value % 2 == 0)
    assert [cache.get(k) for k in "abcd"] == [None, None, 3, None]
    cache.clear()
    assert cache.get("c") is None


def test_a_flood_of_distinct_keys_does_not_grow_the_cache_without_bound() -> None:
    cache = _TTLCache(10.0)
    now = time.monotonic()
    for i in range(100_002):
        cache.put(str(i), i, read_at=now)
    assert len(cache._items) <= 100_001
    assert cache.get("100001") == 100_001


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(f"sqlite:///{tmp_path}/cp.db") as cp:
        await cp.create_tenant("acme", plan="pro")
        await cp.create_tenant("globex")
        yield cp


async def test_a_revoked_key_works_until_the_cache_window_ends(plane: ControlPlane) -> None:
    auth = Authenticator(plane, cache_seconds=0.5)
    record, key = await plane.create_key("acme", scopes=("notes:export",))
    token = await auth.authenticate(key)
    assert token.tenant.slug == "acme" and token.principal.scopes == frozenset({"notes:export"})
    assert await auth.authenticate(key) is token  # the verified token itself is reused
    await plane.revoke_key(record.key_id)
    assert await auth.authenticate(key) is token  # inside the window: the bound, not a bug
    await anyio.sleep(0.55)
    with pytest.raises(AuthenticationError, match="revoked"):
        await auth.authenticate(key)


async def test_an_invalidation_drops_exactly_what_it_names(plane: ControlPlane) -> None:
    auth = Authenticator(plane, cache_seconds=60)
    acme_record, acme_key = await plane.create_key("acme")
    _, acme_other = await plane.create_key("acme")
    _, globex_key = await plane.create_key("globex")
    for key in (acme_key, acme_other, globex_key):
        await auth.authenticate(key)

    await plane.revoke_key(acme_record.key_id)
    await plane.set_status("globex", "suspended")
    assert (await auth.authenticate(acme_key)).tenant.slug == "acme"  # cached for a minute
    auth.invalidate(Invalidation(kind="key", id=acme_record.key_id))
    with pytest.raises(AuthenticationError, match="revoked"):
        await auth.authenticate(acme_key)
    await auth.authenticate(acme_other)  # the tenant's other key is untouched
    await auth.authenticate(globex_key)  # and so is the other tenant, until it is named

    globex = await plane.tenant_by_slug("globex")
    assert globex is not None
    auth.invalidate(Invalidation(kind="tenant", id=globex.id))
    with pytest.raises(AuthenticationError, match="missing or suspended"):
        await auth.authenticate(globex_key)
    await auth.authenticate(acme_other)


async def test_require_active_follows_suspension_through_the_cache(plane: ControlPlane) -> None:
    auth = Authenticator(plane, cache_seconds=60)
    acme = await plane.tenant_by_slug("acme")
    assert acme is not None
    await auth.require_active(acme.id)
    await plane.set_status("acme", "suspended")
    await auth.require_active(acme.id)  # cached
    auth.invalidate(Invalidation(kind="tenant", id=acme.id))
    with pytest.raises(AuthenticationError, match="suspended or deleted"):
        await auth.require_active(acme.id)
    await plane.set_status("acme", "active")
    auth.invalidate(Invalidation(kind="all"))
    await auth.require_active(acme.id)
    with pytest.raises(AuthenticationError):
        await auth.require_active("t-no-such-tenant")


async def test_an_invalidation_during_a_lookup_keeps_its_answer_out_of_the_cache(
    plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lookup that read the database before an invalidation must not cache what it read: it may
    be exactly the state the invalidation announced as stale."""
    auth = Authenticator(plane, cache_seconds=60)
    record, key = await plane.create_key("acme")
    read = plane.key_and_tenant

    async def read_then_revoked_elsewhere(key_id: str) -> tuple[KeyRecord | None, Tenant | None]:
        found = await read(key_id)
        async with ControlPlane(plane.url) as other:  # another process revokes and announces it
            await other.revoke_key(key_id)
        auth.invalidate(Invalidation(kind="key", id=key_id))
        return found

    monkeypatch.setattr(plane, "key_and_tenant", read_then_revoked_elsewhere)
    await auth.authenticate(key)  # answered from what it read before the revocation
    monkeypatch.setattr(plane, "key_and_tenant", read)
    with pytest.raises(AuthenticationError, match=f"API key {record.key_id} is revoked"):
        await auth.authenticate(key)
