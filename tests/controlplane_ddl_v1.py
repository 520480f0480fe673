"""The control plane's DDL as written by hand before it was generated from one table spec
(tenant_mcp 0.x up to issue #16), kept verbatim: databases created by it exist and must open.

SQLite ran each script split at ``;``, one schema_version row per script; PostgreSQL ran each as
one script in the ``tenant_mcp`` schema.
"""

SQLITE: tuple[str, ...] = (
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
    # The built-in OAuth authorization server (tenant_mcp.auth.oauth). Codes and tokens are stored as
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
    # Markers of the outbound leak guard (tenant_mcp.audit.leakguard): identifiers and canaries.
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
    # Per-tenant secrets (tenant_mcp.secrets): data keys wrapped by a key that is not stored here.
    """
    CREATE TABLE tenant_keys (
        tenant_id TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
        kek_id TEXT NOT NULL,
        wrapped BLOB NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE secrets (
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        ciphertext BLOB NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (tenant_id, name)
    );
    """,
    # The per-tenant catalogue as data: a tenant's enabled/disabled items, a key's allow-list.
    """
    ALTER TABLE tenants ADD COLUMN catalogue TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE api_keys ADD COLUMN items TEXT;
    CREATE TABLE plan_policies (plan TEXT PRIMARY KEY, catalogue TEXT NOT NULL DEFAULT '{}');
    """,
    # Per-tenant limits (tenant_mcp.limits): overrides of the plan defaults, and usage per UTC day.
    """
    CREATE TABLE tenant_limits (
        tenant_id TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
        limits TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE tenant_usage (
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        day TEXT NOT NULL,
        calls INTEGER NOT NULL DEFAULT 0,
        refused INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant_id, day)
    );
    """,
)


# The same tables on PostgreSQL: 64-bit floats for times (REAL is 32-bit there), identity columns
# for SQLite's rowids, and the canary table of tenant data (created per file on SQLite).
POSTGRES: tuple[str, ...] = (
    """
    CREATE TABLE tenants (
        seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
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
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at TEXT NOT NULL,
        tenant_id TEXT,
        principal TEXT,
        method TEXT NOT NULL,
        target TEXT,
        outcome TEXT NOT NULL,
        reason TEXT,
        duration_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
        arguments TEXT
    );
    CREATE INDEX audit_events_tenant ON audit_events(tenant_id, id);
    CREATE TABLE oauth_clients (client_id TEXT PRIMARY KEY, info TEXT NOT NULL, created_at TEXT NOT NULL);
    CREATE TABLE oauth_requests (
        id TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        params TEXT NOT NULL,
        csrf TEXT NOT NULL,
        browser TEXT,
        expires_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE oauth_codes (
        digest TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        key_id TEXT NOT NULL,
        scopes TEXT NOT NULL,
        params TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
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
        expires_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION
    );
    CREATE INDEX oauth_tokens_family ON oauth_tokens(family);
    CREATE TABLE leak_markers (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        kind TEXT NOT NULL CHECK (kind IN ('identifier', 'canary')),
        value TEXT NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (tenant_id, value)
    );
    CREATE TABLE public.tenant_mcp_canaries (value TEXT NOT NULL);
    """,
    """
    CREATE TABLE tenant_keys (
        tenant_id TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
        kek_id TEXT NOT NULL,
        wrapped BYTEA NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE secrets (
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        ciphertext BYTEA NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (tenant_id, name)
    );
    """,
    """
    ALTER TABLE tenants ADD COLUMN catalogue TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE api_keys ADD COLUMN items TEXT;
    CREATE TABLE plan_policies (plan TEXT PRIMARY KEY, catalogue TEXT NOT NULL DEFAULT '{}');
    """,
    """
    CREATE TABLE tenant_limits (
        tenant_id TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
        limits TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE tenant_usage (
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        day TEXT NOT NULL,
        calls BIGINT NOT NULL DEFAULT 0,
        refused BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant_id, day)
    );
    """,
)
