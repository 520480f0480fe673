"""Streamable HTTP transport: the authenticating gate in front of the SDK's session manager.

Order of checks for every request to the MCP endpoint, each failing closed:
1. Host and Origin (DNS rebinding). Always on, for every bind address: the SDK only enables it
   for loopback binds unless configured, which would leave a 0.0.0.0 server open.
2. The bearer credential (API key or JWT) -> exactly one active tenant, else 401 with
   `WWW-Authenticate` (and `resource_metadata` when JWTs are configured).
3. Headers that try to pick a tenant (`X-Tenant-Id`, ...) -> 400, audited as an override attempt.
4. Server-wide required scopes -> 403 `insufficient_scope`.
Then the SDK handles the request with the verified token in `scope["user"]`: its session table
binds each `Mcp-Session-Id` to (client id, issuer, tenant-qualified subject), so another tenant
or another key presenting the id gets the same 404 as for an unknown session.
"""

from __future__ import annotations

import gc
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.routes import create_auth_routes
from mcp.server.auth.settings import AuthSettings, ClientRegistrationOptions, RevocationOptions
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tenant_mcp.auth.jwt import JWTSettings
from tenant_mcp.broker import check_reachable, store_session_events
from tenant_mcp.controlplane import ControlPlane
from tenant_mcp.errors import AuthenticationError, ConfigurationError
from tenant_mcp.oauth import CONSENT_PATH, OAuthServer
from tenant_mcp.storage import is_postgres
from tenant_mcp.tenancy import names_tenant, principal_label

if TYPE_CHECKING:
    from tenant_mcp.app import TenantMCP

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
PRM_PATH = "/.well-known/oauth-protected-resource"


@dataclass
class HTTPOptions:
    """How the HTTP transport is served (`tenant-mcp serve` flags set most of these)."""

    host: str = "127.0.0.1"
    port: int = 8000
    path: str = "/mcp"
    stateless: bool = False
    json_response: bool = False
    allowed_hosts: Sequence[str] = ()
    allowed_origins: Sequence[str] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    jwt: JWTSettings | None = None
    oauth_issuer: str | None = None  # public base URL of the built-in authorization server, if on
    required_scopes: Sequence[str] = ()
    session_idle_timeout: float = 1800.0

    def transport_security(self) -> TransportSecuritySettings:
        hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]"]
        origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
        if self.host not in (*_LOOPBACK, "0.0.0.0", "::"):  # noqa: S104 - compared, not bound
            hosts += [self.host, f"{self.host}:*"]
        hosts += list(self.allowed_hosts)
        origins += list(self.allowed_origins)
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
        )

    @property
    def authorization_servers(self) -> list[str]:
        issuers = list(self.jwt.issuers) if self.jwt else []
        return issuers + ([self.oauth_issuer.rstrip("/")] if self.oauth_issuer else [])

    @property
    def resource_url(self) -> str:
        return self.jwt.audience if self.jwt else f"http://{self.host}:{self.port}{self.path}"

    @property
    def metadata_url(self) -> str:
        """RFC 9728: the well-known prefix goes between the resource's origin and its path."""
        parts = urlsplit(self.resource_url)
        return f"{parts.scheme}://{parts.netloc}{PRM_PATH}{parts.path.rstrip('/')}"


def _jsonrpc_error(status: int, code: int, message: str) -> Response:
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status)


class _Gate:
    """ASGI app for the MCP endpoint: authenticate, then hand over to the SDK."""

    def __init__(self, app: TenantMCP, options: HTTPOptions) -> None:
        self._app = app
        self._options = options
        self._security = TransportSecurityMiddleware(options.transport_security())
        self._required = frozenset(options.required_scopes)
        self._accepted_hosts: set[tuple[bytes, bytes]] = set()
        self._header_verdicts: dict[bytes, bool] = {}
        if options.authorization_servers:
            self._challenge = (
                'Bearer error="invalid_token", error_description="Authentication required", '
                f'resource_metadata="{options.metadata_url}"'
            )
        else:
            self._challenge = 'Bearer error="invalid_token", error_description="Authentication required"'

    def _unauthorized(self) -> Response:
        return JSONResponse(
            {"error": "invalid_token", "error_description": "Authentication required"},
            status_code=401,
            headers={"WWW-Authenticate": self._challenge},
        )

    def _names_tenant(self, header: bytes) -> bool:
        """`names_tenant` for a raw header name, memoised: clients send the same few names."""
        known = self._header_verdicts.get(header)
        if known is None:
            if len(self._header_verdicts) >= 4096:  # arbitrary names must not grow memory unbounded
                self._header_verdicts.clear()
            known = self._header_verdicts[header] = names_tenant(header.decode("latin-1"))
        return known

    async def _refuse_host(
        self, scope: Scope, receive: Receive, send: Send, host_origin: tuple[bytes, bytes]
    ) -> bool:
        """The SDK's Host/Origin check; an accepted pair is remembered (the answer only depends on it)."""
        if host_origin in self._accepted_hosts:
            return False
        refusal = await self._security.validate_request(Request(scope, receive), is_post=False)
        if refusal is not None:
            await refusal(scope, receive, send)
            return True
        if len(self._accepted_hosts) >= 1024:
            self._accepted_hosts.clear()
        self._accepted_hosts.add(host_origin)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One pass over the raw headers instead of a Request object: this runs for every message.
        host = origin = None
        authorizations: list[bytes] = []
        override: str | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorizations.append(value)
            elif name == b"host":
                host = value if host is None else host
            elif name == b"origin":
                origin = value if origin is None else origin
            elif override is None and self._names_tenant(name):
                override = name.decode("latin-1")
        if await self._refuse_host(scope, receive, send, (host or b"", origin or b"")):
            return
        rt = self._app.runtime
        # Exactly one credential: with two, a proxy and this server could disagree on the tenant.
        authorization = authorizations[0].decode("latin-1") if len(authorizations) == 1 else ""
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            await self._unauthorized()(scope, receive, send)
            return
        try:
            token = await rt.authenticator.authenticate(credential.strip())
        except AuthenticationError as exc:
            rt.audit.record(tenant_id=None, principal=None, method="http", outcome="denied", reason=str(exc))
            await self._unauthorized()(scope, receive, send)
            return
        if override is not None:
            rt.audit.record(
                tenant_id=token.tenant.id,
                principal=principal_label(token.principal),
                method="http",
                outcome="denied",
                reason=f"tenant override attempt: header {override}",
            )
            response = _jsonrpc_error(
                400,
                -32600,
                f"header '{override}' is not accepted: the server sets the tenant from your credentials",
            )
            await response(scope, receive, send)
            return
        if not token.principal.has_scopes(self._required):
            missing = " ".join(sorted(self._required - token.principal.scopes))
            await JSONResponse(
                {"error": "insufficient_scope", "error_description": f"Required scope: {missing}"},
                status_code=403,
                headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{missing}"'},
            )(scope, receive, send)
            return
        user = AuthenticatedUser(token)
        scope["user"] = user
        scope["auth"] = AuthCredentials(token.scopes)
        reset = auth_context_var.set(user)
        try:
            await rt.limiter.serve(token, self._app._server.session_manager, scope, receive, send)
        finally:
            auth_context_var.reset(reset)


def build_app(app: TenantMCP, options: HTTPOptions) -> Starlette:
    if not options.path.startswith("/"):
        raise ConfigurationError("the MCP path must start with '/'")
    server = app._server
    # Creates the SDK's session manager with our transport settings; we route to it ourselves.
    server.streamable_http_app(
        streamable_http_path=options.path,
        json_response=options.json_response,
        stateless_http=options.stateless,
        max_request_body_size=options.max_body_bytes,
        session_idle_timeout=options.session_idle_timeout,
        transport_security=options.transport_security(),
        host=options.host,
    )
    # Resumable SSE streams (Last-Event-ID) with Redis; the SDK keeps no events without a store.
    if app.redis_url is not None and not options.stateless:
        store_session_events(server.session_manager, lambda: app.runtime.broker)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    routes = [Route(options.path, endpoint=_Gate(app, options)), Route("/healthz", health)]
    oauth = None
    if options.oauth_issuer is not None:
        oauth = OAuthServer(lambda: app.runtime, issuer=options.oauth_issuer, resource=options.resource_url)
        routes += create_auth_routes(
            oauth,
            # AuthSettings keeps a path-less issuer without the trailing slash a bare AnyHttpUrl adds;
            # clients compare issuers byte for byte (RFC 8414).
            issuer_url=AuthSettings.model_validate(
                {"issuer_url": oauth.issuer, "resource_server_url": None}
            ).issuer_url,
            client_registration_options=ClientRegistrationOptions(enabled=True),
            revocation_options=RevocationOptions(enabled=True),
        )
        routes.append(Route(CONSENT_PATH, oauth.consent, methods=["GET", "POST"]))
    if options.authorization_servers:
        metadata = {
            "resource": options.resource_url,
            "authorization_servers": options.authorization_servers,
            "bearer_methods_supported": ["header"],
            **({"scopes_supported": list(options.required_scopes)} if options.required_scopes else {}),
        }
        body = json.dumps(metadata).encode()

        async def protected_resource(request: Request) -> Response:
            return Response(body, media_type="application/json", headers={"Cache-Control": "max-age=3600"})

        paths = dict.fromkeys([PRM_PATH, PRM_PATH + options.path, urlsplit(options.metadata_url).path])
        routes += [Route(path, protected_resource) for path in paths]

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with app.running(jwt=options.jwt, oauth=oauth), server.session_manager.run():
            yield {}

    return Starlette(routes=routes, lifespan=lifespan)


async def serve(app: TenantMCP, options: HTTPOptions, *, log_level: str = "info") -> None:
    """Serve until interrupted; on shutdown in-flight requests finish and the audit is flushed."""
    import uvicorn

    # Migrate (when configured) and open the control plane once up front: a bad URL, a missing
    # directory or an old schema is then a clean configuration error, not a traceback from
    # inside uvicorn's lifespan.
    if app.migration_url and is_postgres(app.database_url):
        await app.migrate(app.migration_url)
    async with ControlPlane(app.database_url):
        pass
    if app.redis_url is not None:
        await check_reachable(app.redis_url)
    config = uvicorn.Config(
        app.http_app(options),
        host=options.host,
        port=options.port,
        log_level=log_level,
        timeout_graceful_shutdown=15,
        lifespan="on",
    )
    # What exists now (the SDK, the app, its catalogue) lives as long as the process. Frozen, the
    # collector's full passes stop walking it again and again under load: a few per cent of CPU
    # with a small catalogue, more with many per-tenant tools.
    gc.collect()
    gc.freeze()
    await uvicorn.Server(config).serve()
