"""`ctx.connections`: the caller's upstream connections. No method takes a tenant or a person.

`await ctx.connections.token("crm")` is the access token; `ctx.connections.client("crm")` an
`httpx2.AsyncClient` that adds it to every request (replacing any Authorization header: the
caller's own credential is never forwarded), refreshes it once when the API refuses it, and, when
the provider declares `api_base_url`, sends it to that origin only. Every token is a leak-guard
secret of the tenant: a tool that returns one has its answer withheld.

Without a usable connection the call fails with a connect link for the caller: a URL-mode
elicitation (`-32042`) for clients that declare support, else a tool error carrying the link.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx2
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import UrlElicitationRequiredError
from mcp_types import ElicitRequestURLParams
from opentelemetry import trace

from tenant_mcp.connections.service import Connections, NotConnected, Unavailable
from tenant_mcp.connections.store import LINK_SECONDS
from tenant_mcp.models import Principal, Tenant

_tracer = trace.get_tracer("tenant_mcp.connections")


class ConnectionRequired(ToolError):
    """The caller must connect the provider first; the message carries the link."""


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


class TenantConnections:
    def __init__(
        self,
        connections: Connections,
        tenant: Tenant,
        principal: Principal,
        guard: Callable[[str], None],
        url_elicitation: Callable[[], bool],
    ) -> None:
        self._connections = connections
        self._tenant = tenant
        self._principal = principal
        self._guard = guard
        self._url_elicitation = url_elicitation

    async def token(self, name: str) -> str:
        """The access token of connection `name` for the caller (refreshed when it expired)."""
        return await self._token(name, None)

    async def _token(self, name: str, refused: str | None) -> str:
        try:
            token = await self._connections.token(self._tenant, self._principal, name, refused=refused)
        except NotConnected as missing:
            raise self._connect(missing) from None
        except Unavailable as exc:
            raise ToolError(str(exc)) from None
        self._guard(token)
        return token

    def _connect(self, missing: NotConnected) -> Exception:
        provider = missing.provider
        minutes = LINK_SECONDS // 60
        message = (
            f"{provider.label} {'needs to be connected again' if missing.broken else 'is not connected'}: "
            f"open this link to connect it (single use, valid {minutes} minutes, only for you): {missing.link}"
        )
        if self._url_elicitation():
            params = ElicitRequestURLParams(
                mode="url",
                message=f"Connect {provider.label}",
                url=missing.link,
                elicitation_id=uuid.uuid4().hex,
            )
            return UrlElicitationRequiredError([params], message)
        return ConnectionRequired(message)

    def client(self, name: str, **kwargs: Any) -> httpx2.AsyncClient:
        """An HTTP client for the API of connection `name` (`base_url` defaults to the provider's
        `api_base_url`). Use it as `async with ctx.connections.client("crm") as http: ...`."""
        provider = self._connections.provider(name)
        if provider.api_base_url is not None:
            kwargs.setdefault("base_url", provider.api_base_url)
        kwargs.setdefault("timeout", 30.0)
        kwargs["transport"] = _Traced(kwargs.get("transport") or httpx2.AsyncHTTPTransport(), name)
        return httpx2.AsyncClient(auth=_Bearer(self, name, provider.api_base_url), **kwargs)


class _Traced(httpx2.AsyncBaseTransport):
    """Each upstream request a child span of the call's (a no-op without a tracing SDK): the
    connection, method, host and status; never the path's data, never a token. Nothing is
    propagated: no trace or baggage header leaves for the upstream, so the tenant does not either."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, connection: str) -> None:
        self._inner = inner
        self._connection = connection

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        attributes = {
            "tenant_mcp.connection": self._connection,
            "http.request.method": request.method,
            "server.address": request.url.host,
        }
        with _tracer.start_as_current_span(
            "upstream", kind=trace.SpanKind.CLIENT, attributes=attributes
        ) as span:
            response = await self._inner.handle_async_request(request)
            span.set_attribute("http.response.status_code", response.status_code)
            return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Bearer(httpx2.Auth):
    """Adds the connection's token; on a 401 refreshes it once and retries."""

    requires_request_body = True  # read before sending, so a retry can send it again

    def __init__(self, owner: TenantConnections, name: str, api_base_url: str | None) -> None:
        self._owner = owner
        self._name = name
        self._origin = _origin(api_base_url) if api_base_url else None

    def sync_auth_flow(self, request: httpx2.Request) -> Any:
        raise TypeError("ctx.connections.client is an async client")

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        if self._origin is not None and _origin(str(request.url)) != self._origin:
            raise ToolError(f"connection {self._name!r} sends its token only to its API's origin")
        token = await self._owner._token(self._name, None)
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            token = await self._owner._token(self._name, token)
            request.headers["Authorization"] = f"Bearer {token}"
            yield request
