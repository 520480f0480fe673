"""`Connections`: the declared providers and the stored tokens, while the server serves.

Getting a token: a live one is returned as stored; an expired one is refreshed once. One refresh
runs at a time per connection: in this process a lock, across replicas a claim in the stored row,
so a rotating refresh token is never presented twice (the second use would be refused and break
the connection); the others wait for the new tokens.
When the provider refuses the refresh the connection is marked broken and the caller gets a new
connect link; when it merely does not answer, nothing changes and the call fails for now.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping

from tenant_mcp.connections import upstream
from tenant_mcp.connections.grant import Grant
from tenant_mcp.connections.provider import Provider, principal_id
from tenant_mcp.connections.store import ConnectionStore
from tenant_mcp.errors import TenantMCPError
from tenant_mcp.models import Principal, Tenant

_CLAIM = upstream.TIMEOUT + 5  # a refresh claim outlives the token request it covers
_POLL = 0.1
CALLBACK_PATH = "/connections/callback"
CONNECT_PATH = "/connections/connect"


class NotConnected(Exception):
    """No usable connection: `link` is where the principal that asked connects it."""

    def __init__(self, provider: Provider, link: str, *, broken: bool) -> None:
        super().__init__(provider.name)
        self.provider = provider
        self.link = link
        self.broken = broken


class Unavailable(TenantMCPError):
    """No token now, and no link would help: the provider did not answer a refresh (nothing was
    changed), or this transport has no browser to send a link to. The caller sees the message."""


class Connections:
    def __init__(
        self, providers: Mapping[str, Provider], store: ConnectionStore, base_url: str | None
    ) -> None:
        self.providers = dict(providers)
        self.store = store
        # Where browsers reach this server (the HTTP transport's public URL); None over stdio.
        self.base_url = base_url.rstrip("/") if base_url else None
        self._locks: weakref.WeakValueDictionary[tuple[str, str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    @property
    def callback_url(self) -> str:
        return f"{self.base_url}{CALLBACK_PATH}"

    def provider(self, name: str) -> Provider:
        provider = self.providers.get(name)
        if provider is None:
            raise TenantMCPError(f"no connection {name!r} is declared: use app.connection({name!r}, ...)")
        return provider

    async def link(self, tenant: Tenant, principal: Principal, provider: Provider) -> str:
        """A new connect link, bound to `principal` of `tenant`."""
        if self.base_url is None:
            raise Unavailable(
                f"connection {provider.name!r} needs the HTTP transport: the person connects in a browser"
            )
        secret = await self.store.new_link(
            tenant.id,
            provider.name,
            provider.owner(principal),
            principal_id(principal),
            upstream.pkce_verifier(),
        )
        return f"{self.base_url}{CONNECT_PATH}?link={secret}"

    async def token(
        self, tenant: Tenant, principal: Principal, name: str, *, refused: str | None = None
    ) -> str:
        """The access token for `name` as `principal` of `tenant`. `refused`: the API just refused
        this token, so it is refreshed even if it has not expired."""
        provider = self.provider(name)
        owner = provider.owner(principal)
        stored = await self.store.load(tenant.id, name, owner)
        if stored is not None and stored.status == "active" and stored.grant.usable(refused):
            return stored.grant.access_token
        key = (tenant.id, name, owner)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:
            return await self._refresh(tenant, principal, provider, owner, refused)

    async def _refresh(
        self, tenant: Tenant, principal: Principal, provider: Provider, owner: str, refused: str | None
    ) -> str:
        while True:
            stored = await self.store.load(tenant.id, provider.name, owner)
            if stored is None or stored.status != "active":
                link = await self.link(tenant, principal, provider)
                raise NotConnected(provider, link, broken=stored is not None)
            if stored.grant.usable(refused):
                return stored.grant.access_token  # refreshed meanwhile, here or by another replica
            if stored.refreshing:
                await asyncio.sleep(_POLL)  # another replica is refreshing: wait for its tokens
            elif await self.store.claim(tenant.id, provider.name, owner, stored.version, _CLAIM):
                return await self._renew(tenant, principal, provider, owner, stored.grant, stored.version + 1)

    async def _renew(
        self, tenant: Tenant, principal: Principal, provider: Provider, owner: str, grant: Grant, claim: int
    ) -> str:
        try:
            fresh = await upstream.refresh(provider, grant)
        except upstream.UpstreamUnavailable as exc:
            await self.store.release(tenant.id, provider.name, owner, claim)
            raise Unavailable(f"{exc}: try again later") from None
        except upstream.GrantRejected as exc:
            await self.store.mark_broken(tenant.id, provider.name, owner, str(exc), claim)
            raise NotConnected(provider, await self.link(tenant, principal, provider), broken=True) from None
        if await self.store.update(tenant.id, provider.name, owner, fresh, claim):
            return fresh.access_token
        # Revoked, or connected anew, while the refresh ran: what is stored now decides.
        return await self._refresh(tenant, principal, provider, owner, None)
