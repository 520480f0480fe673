"""`TenantMCP`: the object a developer creates, decorates and serves."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from anyio.abc import TaskGroup
from mcp.server.mcpserver.tools import Tool
from mcp.shared.subscriptions import PromptsListChanged, ResourcesListChanged, ServerEvent, ToolsListChanged
from mcp_types import ToolAnnotations

from tenant_mcp.audit.leakguard import LeakGuard, MarkerSync, Policy
from tenant_mcp.audit.log import AuditLog
from tenant_mcp.audit.sinks import AuditSink, Forwarder
from tenant_mcp.auth.authenticator import Authenticator
from tenant_mcp.auth.invalidation import Invalidation
from tenant_mcp.auth.jwt import JWTSettings, JWTVerifier
from tenant_mcp.connections.pages import ConnectPages
from tenant_mcp.connections.provider import ClientAuth, Per, Provider
from tenant_mcp.connections.service import Connections
from tenant_mcp.connections.store import ConnectionStore
from tenant_mcp.controlplane import DEFAULT_DATABASE_URL, POSTGRES_MIGRATIONS, ControlPlane
from tenant_mcp.errors import ConfigurationError, TenantMCPError, required
from tenant_mcp.limits import Limiter, Limits, OnRedisError
from tenant_mcp.models import Principal, Tenant
from tenant_mcp.pipeline import Pipeline
from tenant_mcp.replication.redis import DEFAULT_PREFIX, Broker, check_reachable
from tenant_mcp.runtime import Runtime
from tenant_mcp.scoping.catalogue import Catalogue, CatalogueItem, Section, Visibility
from tenant_mcp.scoping.entries import prompt_entry, resource_entry, tool_entry, visibility
from tenant_mcp.scoping.server import ScopedServer
from tenant_mcp.secrets import KeyRing, SecretStore
from tenant_mcp.storage import DEFAULT_HOLD_SECONDS, Admit, DataStore, is_postgres, migration_sql, open_store
from tenant_mcp.storage.gateway import SQLAllowList
from tenant_mcp.telemetry import Telemetry, TelemetrySettings

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from tenant_mcp.auth.oauth import OAuthServer
    from tenant_mcp.transports.http import HTTPOptions

F = TypeVar("F", bound=Callable[..., Any])
Migration = str | Mapping[str, str]


class TenantMCP:
    """A multi-tenant MCP server.

    Register tools, resources and prompts with the decorators; each runs inside the caller's
    tenant and receives a `TenantContext` if it asks for one. Serve with `tenant-mcp serve
    module:app`, `app.http_app()` (an ASGI app), `app.serve_http()` or `app.serve_stdio()`.

    `audit=False` turns off the routine audit event of every request (on by default); refusals
    and leak events are still recorded, see `tenant_mcp.audit.log`.

    `max_subscriptions_per_session` and `max_subscriptions_per_tenant` bound what clients can make
    the process hold: `resources/subscribe` entries (per session and per tenant) and open
    `subscriptions/listen` streams (per tenant); past a cap the request gets a clear error.

    `limits` maps plan names to their default `Limits` ("*" for any other plan); overrides per
    tenant are set with `tenant-mcp limits set`. `on_redis_error` says what rate limits do while
    Redis is unreachable: "fail_closed" (refuse) or "local" (limit in this process), see
    `tenant_mcp.limits`.
    """

    def __init__(
        self,
        name: str,
        *,
        database_url: str | None = None,
        instructions: str | None = None,
        version: str = "",
        audit: bool = True,
        audit_argument_values: bool = False,
        audit_sinks: Sequence[AuditSink] = (),
        audit_retain_days: float | None = None,
        max_open_databases: int = 64,
        credential_cache_seconds: float = 1.0,
        db_hold_seconds: float | None = None,
        leak_guard: Policy | None = "block",
        telemetry: TelemetrySettings | None = None,
        migration_url: str | None = None,
        data_url: str | None = None,
        sql_allow: SQLAllowList | None = None,
        redis_url: str | None = None,
        redis_prefix: str | None = None,
        max_subscriptions_per_session: int = 1000,
        max_subscriptions_per_tenant: int = 10_000,
        limits: Mapping[str, Limits] | None = None,
        on_redis_error: OnRedisError = "fail_closed",
    ) -> None:
        self.name = name
        self.database_url = database_url or os.environ.get("TENANT_MCP_DATABASE_URL") or DEFAULT_DATABASE_URL
        # PostgreSQL only: the tables' owner. When set, the server migrates before serving (under
        # an advisory lock, so replicas starting together are safe); otherwise run `tenant-mcp migrate`.
        self.migration_url = migration_url or os.environ.get("TENANT_MCP_MIGRATION_URL")
        # PostgreSQL only: `ctx.db` logs in as its own role, which cannot reach the control plane.
        self.data_url = data_url or os.environ.get("TENANT_MCP_DATA_URL")
        # PostgreSQL only: functions and types tool SQL may use beyond the gateway's defaults.
        self.sql_allow = sql_allow
        self.audit = audit
        self.audit_argument_values = audit_argument_values
        # Where written audit events go next (a JSONL file, a SIEM webhook), and how long they stay.
        self.audit_sinks = list(audit_sinks)
        self.audit_retain_days = audit_retain_days
        self.max_open_databases = max_open_databases
        self.credential_cache_seconds = credential_cache_seconds
        # How long one call may hold its database connection before it is rolled back and released.
        self.db_hold_seconds = db_hold_seconds or float(
            os.environ.get("TENANT_MCP_DB_HOLD_SECONDS") or DEFAULT_HOLD_SECONDS
        )
        self.leak_guard = leak_guard
        self.telemetry = telemetry or TelemetrySettings()
        # Several replicas share revocations, notifications and stream replay through Redis;
        # without it everything stays in this process.
        self.redis_url = redis_url or os.environ.get("TENANT_MCP_REDIS_URL") or None
        self.redis_prefix = redis_prefix or os.environ.get("TENANT_MCP_REDIS_PREFIX") or DEFAULT_PREFIX
        if isinstance(limits, Limits) or not all(isinstance(v, Limits) for v in (limits or {}).values()):
            raise TypeError(
                'limits maps plan names to Limits, e.g. limits={"free": Limits(rate="60/minute")}'
            )
        if on_redis_error not in ("fail_closed", "local"):
            raise ConfigurationError('on_redis_error is "fail_closed" or "local"')
        self.limits = dict(limits or {})
        self.on_redis_error: OnRedisError = on_redis_error
        self._catalogue = Catalogue()
        self._tool_templates: dict[Hashable, Tool] = {}  # per-tenant tools built once per function
        self._migrations: list[Migration] = []
        self._runtime: Runtime | None = None
        self._providers: dict[str, Provider] = {}
        self._connect_pages = ConnectPages()
        self._public_url: str | None = None  # where browsers reach the HTTP transport (connect links)
        self._background: set[asyncio.Task[None]] = set()
        self._pipeline = Pipeline(self._catalogue)
        self._server = ScopedServer(
            name,
            catalogue=self._catalogue,
            pipeline=self._pipeline,
            instructions=instructions,
            version=version,
            max_subscriptions=(max_subscriptions_per_session, max_subscriptions_per_tenant),
        )

    # -- registration --------------------------------------------------------------------------

    def tool(
        self,
        name: str | None = None,
        *,
        title: str | None = None,
        description: str | None = None,
        annotations: ToolAnnotations | None = None,
        meta: dict[str, Any] | None = None,
        structured_output: bool | None = None,
        scopes: Sequence[str] = (),
        plans: Sequence[str] | None = None,
        per_tenant: bool = False,
        rate: str | None = None,
    ) -> Callable[[F], F]:
        """Register a tool every tenant may see, limited by `scopes` and `plans` when given.

        `per_tenant=True`: registered once in code, seen only by tenants it is enabled for as data
        (`tenant-mcp tool enable TENANT NAME`), on every replica alike. `rate` ("10/minute") limits
        calls of this tool per tenant, on top of the tenant's limits."""
        if callable(name):
            raise TypeError("use @app.tool() with parentheses")

        def decorator(fn: F) -> F:
            entry = tool_entry(
                fn, visibility(scopes, plans, per_tenant), rate=rate, name=name, title=title,
                description=description, annotations=annotations, meta=meta, structured_output=structured_output,
            )  # fmt: skip
            self._catalogue.tools.add_shared(entry)
            return fn

        return decorator

    def resource(
        self,
        uri: str,
        *,
        name: str | None = None,
        title: str | None = None,
        description: str | None = None,
        mime_type: str | None = None,
        scopes: Sequence[str] = (),
        plans: Sequence[str] | None = None,
        per_tenant: bool = False,
    ) -> Callable[[F], F]:
        """Register a resource (fixed URI) or a resource template (URI with ``{variables}``).

        The same URI gives each tenant its own content: the function runs in the caller's tenant.
        """

        def decorator(fn: F) -> F:
            section, entry = resource_entry(
                fn, uri, name=name, title=title, description=description, mime_type=mime_type,
                visibility=visibility(scopes, plans, per_tenant),
            )  # fmt: skip
            self._section(section).add_shared(entry)
            return fn

        return decorator

    def prompt(
        self,
        name: str | None = None,
        *,
        title: str | None = None,
        description: str | None = None,
        scopes: Sequence[str] = (),
        plans: Sequence[str] | None = None,
        per_tenant: bool = False,
    ) -> Callable[[F], F]:
        if callable(name):
            raise TypeError("use @app.prompt() with parentheses")

        def decorator(fn: F) -> F:
            entry = prompt_entry(
                fn, name=name, title=title, description=description,
                visibility=visibility(scopes, plans, per_tenant),
            )  # fmt: skip
            self._catalogue.prompts.add_shared(entry)
            return fn

        return decorator

    def completion(self) -> Callable[[F], F]:
        """Register the completion handler: ``async def complete(ref, argument, ctx) -> list[str]``.

        It is only called for prompts and templates the caller can see; anything else completes
        to an empty list, the same as an unknown reference.
        """

        def decorator(fn: F) -> F:
            self._server.completion_handler = fn
            return fn

        return decorator

    def migrations(self, scripts: Sequence[Migration]) -> None:
        """Schema of tenant data, applied in order, once each.

        A script is SQL for both backends, or ``{"sqlite": ..., "postgresql": ...}`` where they
        differ. Never mention a tenant: on SQLite each tenant has its own file (migrated on first
        use); on PostgreSQL every table gets the tenant column, keys and policy after each step.
        """
        if self._runtime is not None:
            raise TenantMCPError("declare migrations before the server starts")
        if isinstance(scripts, str):
            raise TypeError("migrations takes a list of SQL scripts")
        for script in scripts:
            if not isinstance(script, str):
                missing = {"sqlite", "postgresql"} - set(script)
                if missing:
                    raise TenantMCPError(
                        f"a per-dialect migration needs both keys; missing {sorted(missing)}"
                    )
        self._migrations.extend(scripts)

    async def migrate(
        self, url: str | None = None, *, app_role: str | None = None, data_role: str | None = None
    ) -> dict[str, int]:
        """Apply the control-plane and tenant-data migrations to PostgreSQL as the tables' owner.

        `url` defaults to `migration_url`, then `database_url`. `app_role` (default: the role of
        `database_url`) is granted the control plane; `data_role` (default: the role of
        `data_url`) row access to tenant tables and nothing else, for `ctx.db`. Returns the
        number of steps applied per component.
        SQLite needs none of this: it migrates itself when opened.
        """
        from tenant_mcp.storage.pg_migrate import current_role, migrate  # asyncpg is an optional extra

        target = url or self.migration_url or self.database_url
        if not is_postgres(target):
            raise ConfigurationError("migrate is for PostgreSQL; SQLite databases migrate themselves on open")
        if app_role is None and is_postgres(self.database_url) and self.database_url != target:
            app_role = await current_role(self.database_url)
        if data_role is None and self.data_url and is_postgres(self.data_url):
            data_role = await current_role(self.data_url)
        return await migrate(
            target,
            control=POSTGRES_MIGRATIONS,
            data=[migration_sql("postgresql", m) for m in self._migrations],
            app_role=app_role,
            data_role=data_role,
        )

    def items(self) -> list[CatalogueItem]:
        """The items registered for every tenant (not those of `tenant(slug)`), with the rules
        code gives them: what tools and tests that inspect an app read, instead of its internals."""
        return self._catalogue.shared_items()

    def catalogue_report(self, tenant: Tenant) -> list[dict[str, Any]]:
        """Each shared item, whether `tenant` sees it (with a key holding the scopes the item
        needs and no allow-list), and why."""
        rows = []
        for section in (self._catalogue.tools, self._catalogue.prompts, self._catalogue.resources,
                        self._catalogue.templates):  # fmt: skip
            for entry in section.shared.values():
                item, rule = f"{section.item_kind}:{entry.key}", entry.visibility
                if rule.plans is not None and tenant.plan not in rule.plans:
                    why = f"code: plans {', '.join(sorted(rule.plans))}"
                elif item in tenant.disabled:
                    why = "policy: disabled for this tenant"
                elif rule.opt_in:
                    why = "policy: enabled" if item in tenant.enabled else "code: per_tenant, not enabled"
                else:
                    why = "code: every tenant"
                if rule.scopes:
                    why += f"; needs scopes {', '.join(sorted(rule.scopes))}"
                key = Principal(tenant.id, "report", rule.scopes, "api_key", "report")
                visible = section.allowed(entry, tenant, key)
                rows.append({"item": item, "visible": visible, "why": why})
        return rows

    def connection(
        self,
        name: str,
        *,
        authorize_url: str,
        token_url: str,
        client_id: str,
        client_secret: str | None = None,
        scopes: Sequence[str] = (),
        per: Per = "tenant",
        api_base_url: str | None = None,
        title: str | None = None,
        client_auth: ClientAuth = "client_secret_basic",
    ) -> Provider:
        """Declare an upstream OAuth 2.1 provider tools call as the tenant (`per="tenant"`: one
        connection per tenant) or as the calling person (`per="principal"`). Tools use
        `ctx.connections.token(name)` or `ctx.connections.client(name)`; the provider's redirect
        URI to register is ``<public URL>/connections/callback``. See docs/connections.md."""
        if self._runtime is not None:
            raise TenantMCPError("declare connections before the server runs")
        if name in self._providers:
            raise TenantMCPError(f"connection {name!r} is declared twice")
        provider = Provider(
            name, authorize_url, token_url, client_id, client_secret, tuple(scopes), per, api_base_url, title,
            client_auth,
        )  # fmt: skip
        self._providers[name] = provider
        return provider

    def tenant(self, slug: str) -> TenantScope:
        """Register items for one tenant only, also while serving."""
        return TenantScope(self, slug)

    def _section(self, name: str) -> Section[Any, Any]:
        section: Section[Any, Any] = getattr(self._catalogue, name)
        return section

    def _announce(self, slug: str, event: ServerEvent) -> None:
        """Tell the tenant's `subscriptions/listen` streams that its catalogue changed."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not serving yet: clients will list the new items when they connect
        task = loop.create_task(self._server.tenant_bus.announce(slug, event))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- running -------------------------------------------------------------------------------

    @property
    def runtime(self) -> Runtime:
        return required(self._runtime, "the server is not running")

    async def _open_secrets(self, control_plane: ControlPlane) -> SecretStore:
        secrets = SecretStore(control_plane.db, KeyRing.from_env())
        if not secrets.has_key and await secrets.configured():
            raise ConfigurationError(
                "tenants have secrets but TENANT_MCP_SECRET_KEY is not set: the server cannot decrypt them"
            )
        if not secrets.has_key and self._providers:
            raise ConfigurationError(
                "connections store tokens encrypted: set TENANT_MCP_SECRET_KEY (make one with "
                "`tenant-mcp secret new-key`)"
            )
        return secrets

    async def _open_store(self, control_plane: ControlPlane, *, admit: Admit | None = None) -> DataStore:
        if not is_postgres(self.database_url):
            return await open_store(
                self.database_url,
                self._migrations,
                max_open=self.max_open_databases,
                hold_seconds=self.db_hold_seconds,
                admit=admit,
            )
        # asyncpg is an optional extra
        from tenant_mcp.storage.pg_migrate import check_version
        from tenant_mcp.storage.pg_roles import check_control_role, read_binding_key
        from tenant_mcp.storage.postgres import PostgresStore

        if not self.data_url or not is_postgres(self.data_url):
            raise ConfigurationError(
                "on PostgreSQL, ctx.db needs a role of its own that cannot reach the control plane: set "
                "TENANT_MCP_DATA_URL (or --data-db) to postgresql://DATA_ROLE@HOST/DB, set up by "
                "`tenant-mcp migrate --data-role DATA_ROLE`"
            )
        db = control_plane.db
        await check_control_role(db)
        await check_version(db, "data", len(self._migrations))
        return await PostgresStore.open(
            self.data_url,
            self._migrations,
            binding_key=await read_binding_key(db),
            allow=self.sql_allow,
            hold_seconds=self.db_hold_seconds,
            admit=admit,
        )

    @asynccontextmanager
    async def running(
        self, *, jwt: JWTSettings | None = None, oauth: OAuthServer | None = None
    ) -> AsyncIterator[Runtime]:
        """Open the control plane and tenant databases and start the audit writer.

        The HTTP app and the stdio runner enter this; tests and embedders can too.
        """
        if self._runtime is not None:
            raise TenantMCPError("the server is already running")
        if self.migration_url and is_postgres(self.database_url):
            await self.migrate(self.migration_url)
        async with ControlPlane(self.database_url) as control_plane:
            secrets = await self._open_secrets(control_plane)
            authenticator = Authenticator(
                control_plane,
                jwt=JWTVerifier(jwt) if jwt else None,
                oauth=oauth,
                cache_seconds=self.credential_cache_seconds,
            )
            store = await self._open_store(control_plane, admit=authenticator.require_active)
            forwarder = Forwarder(self.audit_sinks) if self.audit_sinks else None
            audit = AuditLog(
                control_plane,
                keep_argument_values=self.audit_argument_values,
                every_request=self.audit,
                forwarder=forwarder,
                retain_seconds=None if self.audit_retain_days is None else self.audit_retain_days * 86400,
            )
            try:
                async with anyio.create_task_group() as tg:
                    await tg.start(audit.run)
                    if forwarder is not None:
                        await tg.start(forwarder.run)
                    guard = LeakGuard(self.leak_guard) if self.leak_guard else None
                    if guard is not None:
                        await tg.start(MarkerSync(guard, control_plane).run)
                    limiter = Limiter(
                        control_plane, audit, plans=self.limits,
                        redis_url=self.redis_url, redis_prefix=self.redis_prefix,
                        on_redis_error=self.on_redis_error, cache_seconds=self.credential_cache_seconds,
                    )  # fmt: skip
                    await tg.start(limiter.run)
                    broker = await self._start_broker(tg, authenticator, limiter)
                    telemetry = Telemetry(self.telemetry)
                    telemetry.start(
                        audit_depth=lambda: audit.depth,
                        in_flight=lambda: limiter.in_flight,
                        db=store.usage,
                        listen_streams=lambda: self._server.open_listen_streams,
                    )
                    connections = (
                        Connections(
                            self._providers, ConnectionStore(control_plane.db, secrets), self._public_url
                        )
                        if self._providers
                        else None
                    )
                    self._runtime = Runtime(
                        control_plane, authenticator, audit, store, guard, telemetry, secrets, limiter, broker,
                        connections,
                    )  # fmt: skip
                    self._server.runtime = self._runtime
                    self._pipeline.start(self._runtime)
                    try:
                        yield self._runtime
                    finally:
                        self._pipeline.stop()
                        telemetry.stop()
                        self._server.runtime = self._runtime = None
                        self._server.tenant_bus.relay = None
                        await audit.aclose()
                        if forwarder is not None:  # deliver what the sinks still hold, within reason
                            forwarder.close()
                            with anyio.move_on_after(10):
                                await forwarder.finished.wait()
                        tg.cancel_scope.cancel()  # stops the marker sync
            except ExceptionGroup as group:
                # The task group wraps whatever the body raised; give callers their own error back.
                if len(group.exceptions) == 1:
                    raise group.exceptions[0] from None
                raise
            finally:
                await store.aclose()

    async def _start_broker(
        self, tg: TaskGroup, authenticator: Authenticator, limiter: Limiter
    ) -> Broker | None:
        if self.redis_url is None:
            return None
        bus = self._server.tenant_bus

        def invalidated(invalidation: Invalidation) -> None:
            authenticator.invalidate(invalidation)
            # A tenant's (or, with "all", a plan's) catalogue policy may have changed: lists are stale.
            stale = [invalidation.id] if invalidation.kind == "tenant" else []
            if invalidation.kind == "all":
                stale = bus.listening()
            for tenant_id in stale:
                for event in (ToolsListChanged(), PromptsListChanged(), ResourcesListChanged()):
                    task = asyncio.get_running_loop().create_task(bus.deliver(tenant_id, event))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
            limiter.invalidate(invalidation)

        broker = Broker(self.redis_url, prefix=self.redis_prefix, invalidated=invalidated,
                        deliver=bus.deliver)  # fmt: skip
        await tg.start(broker.run)
        bus.relay = broker
        return broker

    def http_app(self, options: HTTPOptions | None = None) -> Starlette:
        """The ASGI app serving MCP at ``/mcp`` (runs `running()` in its lifespan)."""
        from tenant_mcp.transports.http import HTTPOptions, build_app

        options = options or HTTPOptions()
        self._public_url = options.base_url
        mounts = [self._connect_pages] if self._providers else []
        return build_app(
            self._server, self.running, options, replicated=self.redis_url is not None, mounts=mounts
        )

    async def check(self) -> None:
        """Migrate (when configured) and open what serving needs once, then close it again: a bad
        URL, a missing directory, an old schema or a PostgreSQL role that could bypass row-level
        security is then one clear `ConfigurationError`, not a traceback from inside a lifespan."""
        if self.migration_url and is_postgres(self.database_url):
            await self.migrate(self.migration_url)
        async with ControlPlane(self.database_url) as control_plane:
            await (await self._open_store(control_plane)).aclose()
            await self._open_secrets(control_plane)
        if self.redis_url is not None:
            await check_reachable(self.redis_url)

    async def serve_http(
        self, options: HTTPOptions | None = None, *, log_level: str = "info", access_log: bool = False
    ) -> None:
        """Serve over streamable HTTP until interrupted (`tenant-mcp serve` does this)."""
        from tenant_mcp.transports import http

        await self.check()
        options = options or http.HTTPOptions()
        # Off by default: the audit trail (and the JSON request log) already say per request what
        # an access line would, with the tenant; a line per request costs CPU at capacity.
        access_log = access_log and self.telemetry.log_format != "json"
        await http.serve(self.http_app(options), options, log_level=log_level, access_log=access_log)

    async def serve_stdio(self, *, api_key: str | None = None, jwt: JWTSettings | None = None) -> None:
        """Serve one tenant over stdin/stdout, authenticated by `api_key` (default:
        `TENANT_MCP_API_KEY`)."""
        from tenant_mcp.transports import stdio

        await stdio.serve(self._server, self.running, api_key=api_key, jwt=jwt)


class TenantScope:
    """Items for one tenant, registered at run time. Other tenants never see them, and may
    register items of the same name."""

    def __init__(self, app: TenantMCP, slug: str) -> None:
        self._app = app
        self.slug = slug

    def add_tool(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        title: str | None = None,
        description: str | None = None,
        annotations: ToolAnnotations | None = None,
        structured_output: bool | None = None,
        scopes: Sequence[str] = (),
        rate: str | None = None,
    ) -> None:
        entry = tool_entry(
            fn, visibility(scopes, None), templates=self._app._tool_templates, rate=rate, name=name, title=title,
            description=description, annotations=annotations, structured_output=structured_output,
        )  # fmt: skip
        self._app._catalogue.tools.add_private(self.slug, entry)
        self._app._announce(self.slug, ToolsListChanged())

    def remove_tool(self, name: str) -> None:
        if not self._app._catalogue.tools.remove_private(self.slug, name):
            raise TenantMCPError(f"tenant {self.slug!r} has no tool {name!r} of its own")
        self._app._announce(self.slug, ToolsListChanged())

    def add_resource(
        self,
        fn: Callable[..., Any],
        uri: str,
        *,
        name: str | None = None,
        title: str | None = None,
        description: str | None = None,
        mime_type: str | None = None,
    ) -> None:
        section, entry = resource_entry(
            fn, uri, name=name, title=title, description=description, mime_type=mime_type,
            visibility=Visibility(),
        )  # fmt: skip
        self._app._section(section).add_private(self.slug, entry)
        self._app._announce(self.slug, ResourcesListChanged())

    def add_prompt(
        self, fn: Callable[..., Any], *, name: str | None = None, title: str | None = None,
        description: str | None = None,
    ) -> None:  # fmt: skip
        entry = prompt_entry(fn, name=name, title=title, description=description, visibility=Visibility())
        self._app._catalogue.prompts.add_private(self.slug, entry)
        self._app._announce(self.slug, PromptsListChanged())
