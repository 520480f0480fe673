"""The admin API (`tenant_mcp.Admin`) on SQLite and PostgreSQL: each action whole, the unknown
and the wrong refused without changing anything or naming another tenant, and a deletion that a
running server (another replica) acts on at once through Redis."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

from tenant_mcp import Admin, Limits, NotFoundError, TenantMCP, TenantMCPError
from tenant_mcp.controlplane import AuditEvent, ControlPlane
from tenant_mcp.errors import ConfigurationError
from tenant_mcp.replication.redis import BrokerError
from tenant_mcp.secrets import KeyRing
from tenant_mcp.storage import open_store
from tests.helpers import REDIS_URL, ServerProcess, mcp_client, migrate_cli, postgres_database

pytestmark = pytest.mark.anyio

APP = "tests.servers.replica:app"
SECRET_KEY = KeyRing.new_key()  # the servers of a module share its databases, secrets included
TENANT_TABLES = ("api_keys", "audit_events", "leak_markers", "secrets", "tenant_keys", "tenant_limits")


@dataclass
class Backend:
    url: str
    log_dir: Path


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    logs = tmp_path_factory.mktemp(f"admin-{request.param}")
    if request.param == "sqlite":
        yield Backend(f"sqlite:///{logs}/cp.db", logs)
        return
    with postgres_database() as pg:
        done = migrate_cli(APP, pg)
        assert done.returncode == 0, done.stderr
        yield Backend(pg.app, logs)


def keyring() -> KeyRing:
    return KeyRing([base64.b64decode(SECRET_KEY)])


def fresh() -> str:
    """A slug of its own per test: the databases are shared by a module's tests."""
    return f"t-{secrets.token_hex(4)}"


async def rows_left(url: str, tenant_id: str) -> dict[str, int]:
    async with ControlPlane(url) as cp:
        counts = {}
        for table in ("tenants", *TENANT_TABLES):
            column = "id" if table == "tenants" else "tenant_id"
            row = await cp.db.fetch_one(f"SELECT count(*) AS n FROM {table} WHERE {column} = ?", (tenant_id,))
            counts[table] = row["n"] if row else 0
        return {table: n for table, n in counts.items() if n}


async def data_left(url: str, tenant_id: str) -> dict[str, Any]:
    store = await open_store(url)
    try:
        return {table: rows for table, rows in (await store.export(tenant_id)).items() if rows}
    finally:
        await store.aclose()


# -- every action, then a deletion that leaves nothing ---------------------------------------------


async def test_a_tenant_from_creation_to_deletion(backend: Backend) -> None:
    slug, other = fresh(), fresh()
    async with Admin(backend.url, keyring=keyring()) as admin:
        tenant = await admin.create_tenant(slug, name=f"Name {slug}", plan="pro")
        kept = await admin.create_tenant(other)
        assert (await admin.tenant(slug)).id == tenant.id and tenant.status == "active"
        assert {slug, other} <= {t.slug for t in await admin.list_tenants()}

        record, key = await admin.create_key(slug, scopes=["a:b"], label="laptop", items=["whoami"])
        assert key.startswith(f"tmk_{record.key_id}_") and record.items == ("tool:whoami",)
        assert [k.key_id for k in await admin.list_keys(slug)] == [record.key_id]
        other_record, _ = await admin.create_key(other)

        assert (await admin.suspend(slug)).status == "suspended"
        assert (await admin.activate(slug)).status == "active"

        assert "tool:whoami" in (await admin.set_item_policy(slug, "whoami", "disabled")).disabled
        await admin.set_plan_policy("pro", "template:items://{item_id}", "disabled")
        assert "template:items://{item_id}" in (await admin.tenant(slug)).disabled

        limits = await admin.set_limits(slug, {"rate": "10/minute", "daily": None})
        assert limits.override == {"rate": "10/minute", "daily": None} and limits.effective is None
        assert (await admin.set_limits(slug, {"daily": "default"})).override == {"rate": "10/minute"}
        assert (await admin.usage(slug)).quota_left == {"daily": None, "monthly": None}

        await admin.set_secret(slug, "crm_key", "s3cret-value")
        assert [s.name for s in await admin.list_secrets(slug)] == ["crm_key"]
        await admin.set_secret(other, "crm_key", "other-value")
        assert await admin.rotate_secret_key() == 0  # one key: nothing to re-wrap

        canary = await admin.plant_canary(slug)
        export = await admin.export_tenant(slug)
        assert export.tables["tenant_mcp_canaries"] == [{"value": canary}]
        assert [k.key_id for k in export.keys] == [record.key_id]
        assert "digest" not in str(export.as_dict()) and key not in str(export.as_dict())

        async with ControlPlane(backend.url) as cp:
            event = AuditEvent(at="2026-01-01T00:00:00.000Z", tenant_id=tenant.id, principal=None,
                               method="tools/call", target="t", outcome="ok", reason=None, duration_ms=1.0,
                               arguments=None)  # fmt: skip
            await cp.write_audit([event, event])
        assert len(await admin.audit_events(slug)) == 2
        pages = [page async for page in admin.audit_pages(slug, page_size=1)]
        assert [len(p) for p in pages] == [1, 1] and pages[0][0]["tenant"] == slug
        assert not [p async for p in admin.audit_pages(slug, after=int(pages[-1][0]["id"]))]
        assert sorted(await rows_left(backend.url, tenant.id)) == sorted(["tenants", *TENANT_TABLES])

        assert (await admin.delete_tenant(slug, drain_seconds=0)).id == tenant.id
        with pytest.raises(NotFoundError):
            await admin.tenant(slug)
        # the other tenant keeps everything
        assert [k.key_id for k in await admin.list_keys(other)] == [other_record.key_id]
        assert [s.name for s in await admin.list_secrets(other)] == ["crm_key"]
        assert (await admin.tenant(other)).id == kept.id
    assert await rows_left(backend.url, tenant.id) == {}, "control-plane rows of the deleted tenant remain"
    assert await data_left(backend.url, tenant.id) == {}, "data of the deleted tenant remains"


async def test_given_the_app_it_knows_plans_and_the_catalogue(backend: Backend) -> None:
    app = TenantMCP(
        "plans", database_url=backend.url, limits={"pro": Limits(daily=100), "*": Limits(daily=5)}
    )

    @app.tool(plans=["pro"])
    def report() -> str:
        return "ok"

    slug = fresh()
    async with Admin(backend.url) as admin:
        await admin.create_tenant(slug)
        with pytest.raises(ConfigurationError, match="declared in the app"):
            await admin.catalogue(slug)
    async with Admin(app) as admin:
        assert admin.database_url == backend.url
        assert (await admin.limits(slug)).effective == Limits(daily=5)
        used = await admin.usage(slug)
        assert used.quota_left["daily"] == 5 and used.calls == 0
        assert await admin.catalogue(slug) == [
            {"item": "tool:report", "visible": False, "why": "code: plans pro"}
        ]


# -- the unknown and the wrong ------------------------------------------------------------------


UNKNOWN: list[Any] = [
    ("tenant", ()), ("suspend", ()), ("activate", ()), ("delete_tenant", ()), ("export_tenant", ()),
    ("create_key", ()), ("list_keys", ()), ("set_item_policy", ("whoami", "disabled")), ("limits", ()),
    ("set_limits", ({"daily": 5},)), ("usage", ()), ("set_secret", ("n", "v")), ("list_secrets", ()),
    ("delete_secret", ("n",)), ("plant_canary", ()), ("audit_events", ()),
]  # fmt: skip


@pytest.mark.parametrize(("method", "args"), UNKNOWN, ids=[m for m, _ in UNKNOWN])
async def test_an_unknown_tenant_is_not_found_and_nothing_changes(
    backend: Backend, method: str, args: tuple[Any, ...]
) -> None:
    known = fresh()
    async with Admin(backend.url, keyring=keyring()) as admin:
        await admin.create_tenant(known)
        before = [t.public() for t in await admin.list_tenants()]
        with pytest.raises(NotFoundError) as caught:
            await getattr(admin, method)("nobody", *args)
        assert str(caught.value) == "no tenant 'nobody'"
        assert [t.public() for t in await admin.list_tenants()] == before
        with pytest.raises(NotFoundError):
            await anext(admin.audit_pages("nobody"))


async def test_a_key_is_found_only_in_its_own_tenant(backend: Backend) -> None:
    owner, asker = fresh(), fresh()
    async with Admin(backend.url, keyring=keyring()) as admin:
        await admin.create_tenant(owner)
        await admin.create_tenant(asker)
        record, _ = await admin.create_key(owner)
        for action in (admin.key, admin.revoke_key):
            with pytest.raises(NotFoundError) as caught:
                await action(record.key_id, tenant=asker)
            assert str(caught.value) == f"no key {record.key_id!r}", "the message must not name the owner"
            assert owner not in str(caught.value)
        assert (await admin.key(record.key_id)).revoked_at is None, "another tenant revoked the key"
        with pytest.raises(NotFoundError) as caught:
            await admin.revoke_key("0123456789ab")
        assert str(caught.value) == "no key '0123456789ab'"
        assert (await admin.revoke_key(record.key_id, tenant=owner)).revoked_at is not None
        with pytest.raises(NotFoundError) as caught:
            await admin.delete_secret(asker, "never_set")
        assert str(caught.value) == f"tenant {asker!r} has no secret 'never_set'"


async def test_bad_input_is_refused_and_changes_nothing(backend: Backend) -> None:
    slug = fresh()
    async with Admin(backend.url) as admin:
        await admin.create_tenant(slug)
        await admin.set_limits(slug, {"daily": 7})
        for bad in ({"daily": 0}, {"rate": "often"}, {"bogus": 1}):
            with pytest.raises(TenantMCPError):
                await admin.set_limits(slug, bad)
        assert (await admin.limits(slug)).override == {"daily": 7}
        with pytest.raises(TenantMCPError, match="YYYY-MM-DD"):
            await admin.usage(slug, since="last week")
        with pytest.raises(TenantMCPError, match="drain_seconds"):
            await admin.delete_tenant(slug, drain_seconds=-1)
        assert (await admin.tenant(slug)).status == "active", "a refused deletion suspended the tenant"
        for bad_slug in ("Bad Slug", "x\n", ""):
            with pytest.raises(TenantMCPError):
                await admin.create_tenant(bad_slug)
        with pytest.raises(TenantMCPError, match="already exists"):
            await admin.create_tenant(slug)
        with pytest.raises(TenantMCPError, match="invalid item"):
            await admin.set_item_policy(slug, "widget:x", "enabled")
        with pytest.raises(ConfigurationError, match="TENANT_MCP_SECRET_KEY"):
            await admin.set_secret(slug, "name", "value")  # no keyring given, none in the environment
        assert [s.name for s in await admin.list_secrets(slug)] == []


# -- replicas --------------------------------------------------------------------------------------


@pytest.fixture
def prefix() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    prefix = f"tmtest-{secrets.token_hex(6)}"
    yield prefix
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


async def accepted(url: str, key: str) -> bool:
    try:
        async with mcp_client(url, key, mode="legacy") as c:
            return not (await c.call_tool("whoami", {})).is_error
    except Exception:
        return False


async def refused_within(url: str, key: str, seconds: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if not await accepted(url, key):
            return time.monotonic() - start
        await anyio.sleep(0.05)
    raise AssertionError(f"{url} still serves the key after {seconds} s")


async def test_a_deleted_tenant_stops_at_once_on_a_running_replica(backend: Backend, prefix: str) -> None:
    """The server caches credentials for 30 s: only the announcement through Redis can stop it
    within a second. A change made without Redis (the control) is still served after that."""
    gone, control, kept = fresh(), fresh(), fresh()
    keys: dict[str, str] = {}
    async with Admin(backend.url) as admin:
        for slug in (gone, control, kept):
            await admin.create_tenant(slug)
            keys[slug] = (await admin.create_key(slug))[1]
    env = {
        "TENANT_MCP_REDIS_URL": REDIS_URL,
        "TENANT_MCP_REDIS_PREFIX": prefix,
        "TENANT_MCP_SECRET_KEY": SECRET_KEY,
    }
    server = ServerProcess(APP, backend.url, env=env, log_dir=backend.log_dir)
    stored = redis.Redis.from_url(REDIS_URL)
    try:
        for slug in (gone, control, kept):  # cached from here on, and a session stream on Redis
            assert await accepted(server.url, keys[slug])
        async with Admin(backend.url) as silent:  # no Redis: replicas learn within their cache window
            await silent.suspend(control)
        await anyio.sleep(1.5)
        assert await accepted(server.url, keys[control]), "the control: a silent change took effect early"

        async with Admin(backend.url, redis_url=REDIS_URL, redis_prefix=prefix) as admin:
            tenant = await admin.tenant(gone)
            assert list(stored.scan_iter(f"{prefix}:tenant:{tenant.id}:*")), "sanity: the session is on Redis"
            await admin.delete_tenant(gone, drain_seconds=0)
        assert await refused_within(server.url, keys[gone], 1.0) < 1.0
        assert not list(stored.scan_iter(f"{prefix}:tenant:{tenant.id}:*")), "Redis still holds its streams"
        assert await accepted(server.url, keys[kept]), "another tenant stopped being served"
    finally:
        stored.close()
        server.stop()


async def test_an_unreachable_redis_is_reported_and_the_change_stands(backend: Backend) -> None:
    slug = fresh()
    errors: list[BrokerError] = []
    async with Admin(
        backend.url, redis_url="redis://127.0.0.1:1/0", on_announce_error=errors.append
    ) as admin:
        await admin.create_tenant(slug)
        await admin.suspend(slug)
        assert (await admin.tenant(slug)).status == "suspended"
    assert len(errors) == 1 and "cannot publish to Redis" in str(errors[0])
