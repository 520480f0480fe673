"""Streamable HTTP transport: the authenticating gate in front of the SDK's session manager.

Order of checks for every request to the MCP endpoint, each failing closed:
1. Host and Origin (DNS rebinding). Always on, for every bind address: the SDK only enables it
   for loopback binds unless configured, which would leave a 0.0.0.0 server open. The Host is
   matched exactly (host and port) in front of every route, not only this one.
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
import logging
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import anyio
from mcp.server.auth.middleware.auth_context import auth_context_var, get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenant_mcp import _sdk
from tenant_mcp.auth.authenticator import Authenticator, TenantAccessToken
from tenant_mcp.auth.client_metadata import ClientMetadataFetcher
from tenant_mcp.auth.jwt import JWTSettings
from tenant_mcp.auth.oauth import OAuthServer
from tenant_mcp.errors import AuthenticationError, ConfigurationError
from tenant_mcp.pipeline.overrides import names_tenant
from tenant_mcp.replication.redis import SessionEventStore
from tenant_mcp.runtime import Runtime
from tenant_mcp.scoping.server import ScopedServer
from tenant_mcp.telemetry import quiet_sdk_request_lines

logger = logging.getLogger("tenant_mcp.transports.http")

# `TenantMCP.running`: opens the runtime for as long as the app serves.
Running = Callable[..., AbstractAsyncContextManager[Runtime]]

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
PRM_PATH = "/.well-known/oauth-protected-resource"
# host[:port] of a Host header or an origin: a DNS name, IPv4 or bracketed IPv6, then a port with
# no leading zero. Everything else (userinfo, a path, a second port, an empty port) is refused.
_AUTHORITY = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?)(?::([1-9][0-9]{0,4}))?")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ANY_PORT = -1


def _authority(value: str) -> tuple[str, int | None] | None:
    match = _AUTHORITY.fullmatch(value.lower())
    if match is None:
        return None
    port = int(match[2]) if match[2] else None
    return (match[1], port) if port is None or port <= 65535 else None


def _entry(value: str) -> tuple[str, int | None]:
    """An allowed Host value: `name` (no port), `name:PORT` (that port) or `name:*` (any port)."""
    if value.endswith(":*"):
        return value[:-2].lower(), _ANY_PORT
    parsed = _authority(value)
    if parsed is None:
        raise ConfigurationError(f"not a host name or host:port: {value!r}")
    return parsed


def _url_authority(url: str) -> list[tuple[str, int | None]]:
    """The Host values a client of this URL sends: with the explicit port, or bare and default."""
    parts = urlsplit(url)
    parsed = _authority(parts.netloc)
    if parsed is None or parts.scheme not in _DEFAULT_PORTS:
        raise ConfigurationError(f"not an http(s) URL with a plain host: {url!r}")
    host, port = parsed
    default = _DEFAULT_PORTS[parts.scheme]
    return [(host, port)] if port not in (None, default) else [(host, None), (host, default)]


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
    # Where clients reach this server (behind a proxy: the proxy's https URL), without the MCP
    # path. Every advertised address derives from it; default: the issuer, else the bind address.
    public_url: str | None = field(default_factory=lambda: os.environ.get("TENANT_MCP_PUBLIC_URL") or None)
    # Tests only: let the built-in authorization server fetch client metadata documents from
    # loopback and private addresses (normally refused, see `tenant_mcp.auth.client_metadata`).
    client_metadata_allow_private: bool = field(
        default_factory=lambda: os.environ.get("TENANT_MCP_CLIENT_METADATA_ALLOW_PRIVATE") == "1"
    )

    def __post_init__(self) -> None:
        if self.public_url is not None:
            parts = urlsplit(self.public_url)
            if (
                parts.scheme not in _DEFAULT_PORTS
                or _authority(parts.netloc) is None
                or parts.query
                or parts.fragment
            ):
                raise ConfigurationError(
                    f"the public URL must be an http(s) URL like https://mcp.example.com, not {self.public_url!r}"
                )

    def host_entries(self) -> frozenset[tuple[str, int | None]]:
        """The exact (host, port) pairs a Host header may name; port None means no port given."""
        port = _ANY_PORT if self.port == 0 else self.port
        names = list(_LOOPBACK_HOSTS)
        if self.host not in (*_LOOPBACK, "0.0.0.0", "::"):  # noqa: S104 - compared, not bound
            names.append(f"[{self.host}]" if ":" in self.host else self.host.lower())
        entries: set[tuple[str, int | None]] = {(name, port) for name in names}
        for url in (self.public_url, self.oauth_issuer):
            if url:
                entries.update(_url_authority(url))
        entries.update(_entry(h) for h in self.allowed_hosts)
        return frozenset(entries)

    def transport_security(self) -> TransportSecuritySettings:
        """The SDK's own (prefix-matching) check below ours, told the same hosts."""
        hosts = [
            name if port is None else f"{name}:*" if port == _ANY_PORT else f"{name}:{port}"
            for name, port in sorted(self.host_entries(), key=str)
        ]
        origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*", *self.allowed_origins]
        if self.public_url:
            origins.append(_origin_of(self.public_url))
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
        )

    @property
    def base_url(self) -> str:
        """The public base URL: `public_url`, else the issuer, else the bind address."""
        return (self.public_url or self.oauth_issuer or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def authorization_servers(self) -> list[str]:
        issuers = list(self.jwt.issuers) if self.jwt else []
        return issuers + ([self.oauth_issuer.rstrip("/")] if self.oauth_issuer else [])

    @property
    def resource_url(self) -> str:
        """RFC 9728/8707 resource identifier: the public URL of the MCP endpoint."""
        return self.base_url + self.path

    @property
    def metadata_url(self) -> str:
        """RFC 9728: the well-known prefix goes between the resource's origin and its path."""
        parts = urlsplit(self.resource_url)
        return f"{parts.scheme}://{parts.netloc}{PRM_PATH}{parts.path.rstrip('/')}"


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class _Hosts:
    """Exact Host and Origin matching (the SDK's check matches `127.0.0.1:*` as a prefix, so it
    takes `127.0.0.1:80.evil.example`). Verdicts are memoised: clients send the same few values."""

    def __init__(self, options: HTTPOptions) -> None:
        self._entries = options.host_entries()
        self._origins = frozenset(o.lower() for o in options.allowed_origins if not o.endswith(":*"))
        self._origins |= {_origin_of(options.public_url)} if options.public_url else set()
        wild = [o[:-2].lower() for o in options.allowed_origins if o.endswith(":*")]
        self._origin_hosts = {*(f"http://{h}" for h in _LOOPBACK_HOSTS), *wild}
        self._verdicts: dict[tuple[bool, bytes], bool] = {}

    def _host_ok(self, value: str) -> bool:
        parsed = _authority(value)
        if parsed is None:
            return False
        host, port = parsed
        return parsed in self._entries or ((host, _ANY_PORT) in self._entries and port is not None)

    def _origin_ok(self, value: str) -> bool:
        value = value.lower()
        if value in self._origins:
            return True
        scheme, sep, rest = value.partition("://")
        parsed = _authority(rest) if sep and scheme in _DEFAULT_PORTS else None
        return (
            parsed is not None and parsed[1] is not None and f"{scheme}://{parsed[0]}" in self._origin_hosts
        )

    def accepts(self, value: bytes, *, origin: bool = False) -> bool:
        key = (origin, value)
        known = self._verdicts.get(key)
        if known is None:
            if len(self._verdicts) >= 4096:  # arbitrary values must not grow memory unbounded
                self._verdicts.clear()
            text = value.decode("latin-1")
            known = self._verdicts[key] = self._origin_ok(text) if origin else self._host_ok(text)
        return known


class _HostCheck:
    """ASGI middleware putting every route (MCP, OAuth, metadata, health, 404s) behind one exact
    Host check: a DNS-rebound page reaches nothing, and no URL is ever built from a foreign Host."""

    def __init__(self, app: ASGIApp, hosts: _Hosts) -> None:
        self._app = app
        self._hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            values = [value for name, value in scope["headers"] if name == b"host"]
            if len(values) != 1 or not self._hosts.accepts(values[0]):
                await Response("Invalid Host header", status_code=421)(scope, receive, send)
                return
        await self._app(scope, receive, send)


def _jsonrpc_error(status: int, code: int, message: str) -> Response:
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status)


class _Gate:
    """ASGI app for the MCP endpoint: authenticate, then hand over to the SDK."""

    def __init__(self, server: ScopedServer, options: HTTPOptions, hosts: _Hosts) -> None:
        self._server = server
        # Handed over by the lifespan when the app starts serving.
        self.runtime: Runtime | None = None
        self._options = options
        self._hosts = hosts
        self._required = frozenset(options.required_scopes)
        self._open: set[_Exchange] = set()
        self._get_streams = 0
        self._header_verdicts: dict[bytes, bool] = {}
        if options.authorization_servers:
            self._challenge = (
                'Bearer error="invalid_token", error_description="Authentication required", '
                f'resource_metadata="{options.metadata_url}"'
            )
        else:
            self._challenge = 'Bearer error="invalid_token", error_description="Authentication required"'

    @property
    def open_get_streams(self) -> int:
        """Authenticated GET (SSE) streams being served, for the metrics."""
        return self._get_streams

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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One pass over the raw headers instead of a Request object: this runs for every message.
        # The Host was matched for every route by `_HostCheck`; browsers' Origin only matters here.
        origins: list[bytes] = []
        authorizations: list[bytes] = []
        override: str | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorizations.append(value)
            elif name == b"origin" and value:  # an empty Origin is as good as none (the SDK's rule)
                origins.append(value)
            elif override is None and self._names_tenant(name):
                override = name.decode("latin-1")
        if origins and (len(origins) > 1 or not self._hosts.accepts(origins[0], origin=True)):
            await Response("Invalid Origin header", status_code=403)(scope, receive, send)
            return
        rt = self.runtime
        if rt is None:
            await Response("The server is not serving", status_code=503)(scope, receive, send)
            return
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
                principal=token.principal.label,
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
        exchange = _Exchange(token, send, rt.authenticator)
        self._open.add(exchange)
        stream = scope["method"] == "GET"
        self._get_streams += stream
        try:
            with exchange.scope:
                await rt.limiter.serve(token, self._server.session_manager, scope, receive, exchange.send)
        finally:
            self._get_streams -= stream
            self._open.discard(exchange)
            auth_context_var.reset(reset)
        if exchange.scope.cancelled_caught:
            rt.audit.record(
                tenant_id=token.tenant.id,
                principal=token.principal.label,
                method="http",
                outcome="denied",
                reason="credential ended: open stream closed",
            )
            await exchange.close(scope, self._unauthorized())

    async def sweep(self, rt: Runtime) -> None:
        """Close the open exchanges (GET SSE streams, `subscriptions/listen` streams, long calls)
        whose credential has since been revoked or whose tenant was suspended. Each credential is
        re-checked once its last check is older than the cache window, so a revocation ends its
        streams within about that window; nothing is pushed in between (`_Exchange.send`)."""
        interval = max(0.05, rt.authenticator.cache_seconds / 2)
        while True:
            await anyio.sleep(interval)
            stale: dict[str, list[_Exchange]] = {}
            for exchange in list(self._open):
                if exchange.stale():
                    stale.setdefault(exchange.token.token, []).append(exchange)
            for credential, exchanges in stale.items():
                try:
                    token = await rt.authenticator.authenticate(credential)
                except AuthenticationError:
                    for exchange in exchanges:
                        exchange.scope.cancel()
                except Exception:
                    # The control plane did not answer: keep sweeping (the loop must outlive an
                    # outage), and check these again on the next tick; they push nothing meanwhile.
                    logger.exception("credential sweep: re-checking %d open stream(s) failed", len(exchanges))
                else:
                    for exchange in exchanges:
                        exchange.token = token


class _Exchange:
    """One authenticated request in flight, and its response: ends with its credential."""

    def __init__(self, token: TenantAccessToken, send: Send, authenticator: Authenticator) -> None:
        self.token = token
        self.scope = anyio.CancelScope()
        self._send = send
        self._authenticator = authenticator
        self._started = self._finished = False

    def stale(self) -> bool:
        return self.token.verified_at + self._authenticator.cache_seconds < time.monotonic()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and self.stale():
            # A message pushed later in a long response: only while the credential still holds.
            try:
                self.token = await self._authenticator.authenticate(self.token.token)
            except AuthenticationError:
                self.scope.cancel()
                return
        self._started = True
        self._finished = message["type"] == "http.response.body" and not message.get("more_body", False)
        await self._send(message)

    async def close(self, scope: Scope, refusal: Response) -> None:
        """After the credential ended mid-exchange: end the stream cleanly, or refuse outright."""
        if not self._started:
            await refusal(scope, _no_receive, self._send)
        elif not self._finished:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class Mount(Protocol):
    """Routes of another concern served beside MCP (the built-in OAuth server, the upstream connect
    pages): mounted behind the same Host check, handed the runtime while the app serves."""

    runtime: Runtime | None

    def routes(self) -> list[BaseRoute]: ...


def build_app(
    server: ScopedServer,
    running: Running,
    options: HTTPOptions,
    *,
    replicated: bool = False,
    mounts: Sequence[Mount] = (),
) -> Starlette:
    """The ASGI app serving `server` at `options.path`; its lifespan enters `running()` and hands
    the runtime to the gate and the `mounts` (the built-in OAuth server is one, when configured). `replicated`: sessions keep their
    stream events in Redis (the runtime's broker), so a client can resume on another replica."""
    if not options.path.startswith("/"):
        raise ConfigurationError("the MCP path must start with '/'")
    hosts = _Hosts(options)
    gate = _Gate(server, options, hosts)
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
    if replicated and not options.stateless:
        _store_session_events(server, gate)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    oauth = None
    if options.oauth_issuer is not None:
        oauth = OAuthServer(
            issuer=options.oauth_issuer,
            resource=options.resource_url,
            client_metadata=ClientMetadataFetcher(allow_private=options.client_metadata_allow_private),
        )
        mounts = [oauth, *mounts]
    routes: list[BaseRoute] = [Route(options.path, endpoint=gate), Route("/healthz", health)]
    for mount in mounts:
        routes += mount.routes()
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
        async with (
            running(jwt=options.jwt, oauth=oauth) as runtime,
            server.session_manager.run(),
            anyio.create_task_group() as tg,
        ):
            served: list[_Gate | Mount] = [gate, *mounts]
            for piece in served:
                piece.runtime = runtime
            manager = server.session_manager
            runtime.telemetry.watch_http(
                sessions=lambda: _sdk.open_sessions(manager), get_streams=lambda: gate.open_get_streams
            )
            tg.start_soon(gate.sweep, runtime)
            try:
                yield {}
            finally:
                for piece in served:
                    piece.runtime = None
                tg.cancel_scope.cancel()

    starlette = Starlette(routes=routes, lifespan=lifespan)
    # `/mcp/` -> `/mcp` would be a redirect built from the Host header: answer 404 instead.
    starlette.router.redirect_slashes = False
    starlette.add_middleware(_HostCheck, hosts=hosts)
    return starlette


def _store_session_events(server: ScopedServer, gate: _Gate) -> None:
    """Give every new stateful session its own `SessionEventStore` in Redis.

    The SDK passes its manager's `event_store` to each session's transport as it admits the
    session, inside the request that opens it, where the verified tenant is known. Without a
    verified tenant the session gets no store (no resumability) rather than an unscoped one.
    """
    manager = server.session_manager

    def choose() -> None:
        token, rt = get_access_token(), gate.runtime
        broker = rt.broker if rt is not None else None
        if isinstance(token, TenantAccessToken) and broker is not None:
            manager.event_store = SessionEventStore(broker, token.tenant.id)
        else:
            manager.event_store = None

    _sdk.on_session_admitted(manager, choose)


def _uvicorn_settings(options: HTTPOptions, log_level: str, access_log: bool) -> dict[str, Any]:
    return {
        "host": options.host,
        "port": options.port,
        "log_level": log_level,
        "access_log": access_log,
        "timeout_graceful_shutdown": 15,
        "lifespan": "on",
    }


def prepare_process(log_level: str) -> None:
    """What a serving process does once its app is built, before it serves."""
    if log_level != "debug":  # the SDK's per-request INFO lines ("Terminating session" in stateless mode)
        quiet_sdk_request_lines()
    # What exists now (the SDK, the app, its catalogue) lives as long as the process. Frozen, the
    # collector's full passes stop walking it again and again under load: a few per cent of CPU
    # with a small catalogue, more with many per-tenant tools.
    gc.collect()
    gc.freeze()


async def serve(
    asgi: Starlette, options: HTTPOptions, *, log_level: str = "info", access_log: bool = False
) -> None:
    """Serve until interrupted; on shutdown in-flight requests finish and the audit is flushed."""
    import uvicorn

    config = uvicorn.Config(asgi, **_uvicorn_settings(options, log_level, access_log))
    prepare_process(log_level)
    await uvicorn.Server(config).serve()


def serve_workers(
    factory: str, options: HTTPOptions, workers: int, *, log_level: str = "info", access_log: bool = False
) -> None:
    """Serve from `workers` processes sharing one listening socket, until interrupted.

    uvicorn's supervisor binds the socket, starts the processes (each imports `factory`,
    "module:function", and calls it for its ASGI app), restarts one that dies, and on SIGINT or
    SIGTERM stops them all, each finishing its in-flight requests and flushing its audit.
    """
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(
        factory, factory=True, workers=workers, **_uvicorn_settings(options, log_level, access_log)
    )
    Multiprocess(config, sockets=[_tcp_socket(options.host, options.port)]).run()


def _tcp_socket(host: str, port: int) -> socket.socket:
    """The listening socket the workers share, made as a TCP socket (protocol IPPROTO_TCP).

    uvicorn's own `bind_socket` leaves the protocol 0, and asyncio then does not set TCP_NODELAY on
    the connections it accepts: every response (headers and body written apart) waits for the
    client's delayed ACK, about 40 ms per request. Measured: 44 ms per request at one in flight."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot serve on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    logger.info(
        "serving on http://%s:%d with several workers (Press CTRL+C to quit)", host, sock.getsockname()[1]
    )
    return sock
