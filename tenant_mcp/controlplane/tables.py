"""The control plane's tables and their migration history, declared once for both backends.

Each `Step` is one schema version on SQLite (the ``schema_version`` table of the file) and, from
the fourth on, one on PostgreSQL (``tenant_mcp.schema_version``, component ``control``), whose
first version holds SQLite's first three. A new table or column is a new step at the end: steps
that have run on some database are never edited.
"""

from __future__ import annotations

from tenant_mcp.controlplane.schema import (
    AddColumn,
    Column,
    CreateTable,
    Index,
    References,
    Step,
    Table,
    current_tables,
    versions,
)

_TENANT = References("tenants")


def _tenant_id() -> Column:
    """The tenant a row belongs to: purging a tenant deletes every row of every table with one."""
    return Column("tenant_id", "text", references=_TENANT)


def _tenant_row(name: str, *columns: Column, key: tuple[str, ...] = ("tenant_id",)) -> Table:
    return Table(name, (_tenant_id(), *columns), primary_key=key)


TENANTS = Table(
    "tenants",
    (
        # SQLite numbers rows itself (rowid); `tenant_names` polls new tenants by this number.
        Column("seq", "integer", identity=True, unique=True, dialects=frozenset({"postgresql"})),
        Column("id", "text"),
        Column("slug", "text", unique=True),
        Column("name", "text"),
        Column("plan", "text"),
        Column("status", "text", choices=("active", "suspended")),
        Column("metadata", "text", default="{}"),
        Column("created_at", "text"),
    ),
    primary_key=("id",),
)

API_KEYS = Table(
    "api_keys",
    (
        Column("key_id", "text"),
        _tenant_id(),
        Column("digest", "text"),
        Column("scopes", "text", default="[]"),
        Column("label", "text", default=""),
        Column("created_at", "text"),
        Column("last_used_at", "text", null=True),
        Column("revoked_at", "text", null=True),
    ),
    primary_key=("key_id",),
    indexes=(Index("api_keys_tenant", ("tenant_id",)),),
)

AUDIT_EVENTS = Table(
    "audit_events",
    (
        Column("id", "integer", identity=True),
        Column("at", "text"),
        Column("tenant_id", "text", null=True),  # no foreign key: an event may precede its tenant
        Column("principal", "text", null=True),
        Column("method", "text"),
        Column("target", "text", null=True),
        Column("outcome", "text"),
        Column("reason", "text", null=True),
        Column("duration_ms", "real", default=0),
        Column("arguments", "text", null=True),
    ),
    primary_key=("id",),
    indexes=(Index("audit_events_tenant", ("tenant_id", "id")),),
)

# The built-in OAuth authorization server (tenant_mcp.auth.oauth). Codes and tokens are stored as
# SHA-256 digests, like API keys; a token is bound to one tenant, key, client and resource.
OAUTH_CLIENTS = Table(
    "oauth_clients",
    (Column("client_id", "text"), Column("info", "text"), Column("created_at", "text")),
    primary_key=("client_id",),
)

OAUTH_REQUESTS = Table(
    "oauth_requests",
    (
        Column("id", "text"),
        Column("client_id", "text"),
        Column("params", "text"),
        Column("csrf", "text"),
        Column("browser", "text", null=True),
        Column("expires_at", "real"),
    ),
    primary_key=("id",),
)

OAUTH_CODES = Table(
    "oauth_codes",
    (
        Column("digest", "text"),
        Column("client_id", "text"),
        _tenant_id(),
        Column("key_id", "text"),
        Column("scopes", "text"),
        Column("params", "text"),
        Column("expires_at", "real"),
    ),
    primary_key=("digest",),
)

OAUTH_TOKENS = Table(
    "oauth_tokens",
    (
        Column("digest", "text"),
        Column("kind", "text", choices=("access", "refresh")),
        Column("client_id", "text"),
        _tenant_id(),
        Column("key_id", "text"),
        Column("scopes", "text"),
        Column("resource", "text", null=True),
        Column("family", "text"),
        Column("expires_at", "real"),
        Column("revoked_at", "real", null=True),
    ),
    primary_key=("digest",),
    indexes=(Index("oauth_tokens_family", ("family",)),),
)

# Markers of the outbound leak guard (tenant_mcp.audit.leakguard): identifiers and canaries.
LEAK_MARKERS = Table(
    "leak_markers",
    (
        Column("id", "integer", identity=True),
        _tenant_id(),
        Column("kind", "text", choices=("identifier", "canary")),
        Column("value", "text"),
        Column("created_at", "text"),
    ),
    primary_key=("id",),
    unique=(("tenant_id", "value"),),
)

# The canaries planted in tenant data: a table of the data schema, created per file on SQLite.
CANARIES = Table("public.tenant_mcp_canaries", (Column("value", "text"),))

# Per-tenant secrets (tenant_mcp.secrets): data keys wrapped by a key that is not stored here.
TENANT_KEYS = _tenant_row(
    "tenant_keys", Column("kek_id", "text"), Column("wrapped", "blob"), Column("created_at", "text")
)
SECRETS = _tenant_row(
    "secrets",
    Column("name", "text"),
    Column("ciphertext", "blob"),
    Column("created_at", "text"),
    Column("updated_at", "text"),
    key=("tenant_id", "name"),
)

# The per-tenant catalogue as data: a tenant's enabled/disabled items, a key's allow-list.
PLAN_POLICIES = Table(
    "plan_policies",
    (Column("plan", "text"), Column("catalogue", "text", default="{}")),
    primary_key=("plan",),
)

# Per-tenant limits (tenant_mcp.limits): overrides of the plan defaults, and usage per UTC day.
TENANT_LIMITS = _tenant_row("tenant_limits", Column("limits", "text"), Column("updated_at", "text"))
TENANT_USAGE = _tenant_row(
    "tenant_usage",
    Column("day", "text"),
    Column("calls", "integer", default=0),
    Column("refused", "integer", default=0),
    key=("tenant_id", "day"),
)

# Upstream connections (tenant_mcp.connections): OAuth tokens of a tenant (or one principal in it)
# for another API, sealed with the tenant's data key; pending connect links, stored by digest.
CONNECTIONS = _tenant_row(
    "connections",
    Column("provider", "text"),
    Column("owner", "text"),  # "" for the tenant's one connection, else the principal's id
    Column("ciphertext", "blob"),
    Column("status", "text", choices=("active", "broken")),
    Column("reason", "text", null=True),
    Column("connected_by", "text"),
    Column("version", "integer", default=1),
    Column("refreshing_until", "real", null=True),  # a replica's claim to refresh, until then
    Column("created_at", "text"),
    Column("updated_at", "text"),
    key=("tenant_id", "provider", "owner"),
)
CONNECTION_LINKS = Table(
    "connection_links",
    (
        Column("digest", "text"),
        _tenant_id(),
        Column("provider", "text"),
        Column("owner", "text"),
        Column("principal", "text"),  # who asked: the only one who may complete it
        Column("verifier", "text"),  # PKCE; never leaves this server
        Column("csrf", "text"),
        Column("browser", "text", null=True),
        Column("state", "text", null=True, unique=True),
        Column("expires_at", "real"),
    ),
    primary_key=("digest",),
)

STEPS: tuple[Step, ...] = (
    Step((CreateTable(TENANTS), CreateTable(API_KEYS), CreateTable(AUDIT_EVENTS))),
    Step(
        tuple(CreateTable(t) for t in (OAUTH_CLIENTS, OAUTH_REQUESTS, OAUTH_CODES, OAUTH_TOKENS)),
        postgres_version=False,
    ),
    Step(
        (CreateTable(LEAK_MARKERS), CreateTable(CANARIES, dialects=frozenset({"postgresql"}))),
        postgres_version=False,
    ),
    Step((CreateTable(TENANT_KEYS), CreateTable(SECRETS))),
    Step(
        (
            AddColumn("tenants", Column("catalogue", "text", default="{}")),
            AddColumn("api_keys", Column("items", "text", null=True)),
            CreateTable(PLAN_POLICIES),
        )
    ),
    Step((CreateTable(TENANT_LIMITS), CreateTable(TENANT_USAGE))),
    Step((CreateTable(CONNECTIONS), CreateTable(CONNECTION_LINKS))),
)

SQLITE_MIGRATIONS = versions(STEPS, "sqlite")
# `tenant-mcp migrate` runs each as one script, in the ``tenant_mcp`` schema.
POSTGRES_MIGRATIONS: tuple[str, ...] = tuple(";\n".join(v) for v in versions(STEPS, "postgresql"))

# The tables with rows of one tenant (a tenant_id column), which deleting the tenant empties.
TENANT_TABLES: tuple[str, ...] = tuple(
    t.name for t in current_tables(STEPS, "postgresql").values() if "tenant_id" in {c.name for c in t.columns}
)
