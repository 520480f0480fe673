"""One place that turns a bearer credential into (tenant, principal), or refuses it.

HTTP, stdio and every later transport call `Authenticator.authenticate`. Lookups are cached for
`cache_seconds` (default 1 s) so the hot path does not hit the database on every request, which
bounds how long a revoked key or a suspended tenant keeps working, also when the change was made
by another process. With Redis (`tenant_mcp.replication.redis`), revocations and suspensions also arrive as
invalidations that drop the affected entries at once; the TTL stays as the backstop.

The verified token itself is cached too, so a repeated credential costs one dict probe instead of
a digest, a JWT signature check and a token object. It lives no longer than the oldest database
read it was built from (`verified_at` + `cache_seconds`), so the revocation bound stays the same,
it is dropped with the entries an invalidation names, and it is never used at or past its own
expiry (`exp` of a JWT, `expires_at` of an OAuth token).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from mcp.server.auth.provider import AccessToken
from pydantic import ConfigDict

from tenant_mcp.auth import apikeys
from tenant_mcp.auth.jwt import JWTVerifier, scopes_of
from tenant_mcp.controlplane import ControlPlane, KeyRecord
from tenant_mcp.errors import AuthenticationError
from tenant_mcp.models import Principal, Tenant

if TYPE_CHECKING:
    from tenant_mcp.auth.invalidation import Invalidation


class GrantSource(Protocol):
    """Where tokens of the built-in authorization server are looked up (`tenant_mcp.auth.oauth`)."""

    resource: str

    async def access_grant(self, token: str) -> dict[str, Any] | None: ...


class TenantAccessToken(AccessToken):
    """The SDK's `AccessToken`, carrying the resolved tenant and principal.

    `subject` is tenant-qualified on purpose: the SDK binds a session to (client_id, iss,
    subject), so putting the tenant id in the subject binds every session to its tenant too.
    """

    # Frozen: one verified token is shared by every request that presents the same credential.
    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    tenant: Tenant
    principal: Principal
    verified_at: float  # monotonic time of the oldest database read the token was built from


class _TTLCache:
    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._items: dict[str, tuple[float, Any]] = {}

    def get(self, key: str) -> Any:
        hit = self.entry(key)
        return None if hit is None else hit[1]

    def entry(self, key: str) -> tuple[float, Any] | None:
        """(monotonic time the value was read, value), or None when missing or expired."""
        hit = self._items.get(key)
        if hit is None or hit[0] + self._ttl < time.monotonic():
            return None
        return hit

    def put(self, key: str, value: Any, *, read_at: float) -> None:
        """Store a value read (from the database) at monotonic time `read_at`."""
        if len(self._items) > 100_000:  # a flood of distinct ids must not grow memory unbounded
            self._items.clear()
        self._items[key] = (read_at, value)

    def discard(self, key: str) -> None:
        self._items.pop(key, None)

    def discard_where(self, stale: Callable[[Any], bool]) -> None:
        self._items = {k: hit for k, hit in self._items.items() if not stale(hit[1])}

    def clear(self) -> None:
        self._items.clear()


class Authenticator:
    def __init__(
        self,
        control_plane: ControlPlane,
        *,
        jwt: JWTVerifier | None = None,
        oauth: GrantSource | None = None,
        cache_seconds: float = 1.0,
    ) -> None:
        self.control_plane = control_plane
        self.jwt = jwt
        self.oauth = oauth
        self.cache_seconds = cache_seconds
        self._keys = _TTLCache(cache_seconds)
        self._tenants = _TTLCache(cache_seconds)
        self._grants = _TTLCache(cache_seconds)
        # Bumped by every invalidation: a lookup that started before one must not cache its
        # (possibly stale) answer after it.
        self._generation = 0
        self._verified = _TTLCache(cache_seconds)
        self._active = _TTLCache(cache_seconds)  # tenant id -> bool, for `require_active`

    async def authenticate(self, token: str) -> TenantAccessToken:
        hit = self._verified.get(token)
        if isinstance(hit, TenantAccessToken) and (hit.expires_at is None or time.time() < hit.expires_at):
            return hit
        generation = self._generation
        verified = await self._verify(token)
        if generation == self._generation:
            self._verified.put(token, verified, read_at=verified.verified_at)
        return verified

    async def _verify(self, token: str) -> TenantAccessToken:
        if apikeys.looks_like_api_key(token):
            return await self._api_key(token)
        if self.oauth is not None and token.startswith("tmo_"):
            return await self._oauth(token)
        if self.jwt is not None and token.count(".") == 2:
            return await self._jwt(token)
        raise AuthenticationError("unrecognised credential")

    async def _key(self, key_id: str) -> tuple[KeyRecord | None, Tenant | None, float]:
        """The key, its tenant, and when they were read."""
        cached = self._keys.entry(key_id)
        if cached is None:
            generation, read_at = self._generation, time.monotonic()
            record, tenant = await self.control_plane.key_and_tenant(key_id)
            if generation == self._generation:
                self._keys.put(key_id, (record, tenant), read_at=read_at)
                self._saw(tenant, read_at)
            return record, tenant, read_at
        read_at, (record, tenant) = cached
        return record, tenant, read_at

    async def _api_key(self, token: str) -> TenantAccessToken:
        key_id = apikeys.parse_key_id(token)
        if key_id is None:
            raise AuthenticationError("malformed API key")
        record, tenant, read_at = await self._key(key_id)
        if record is None or not apikeys.matches(token, record.digest):
            raise AuthenticationError(f"unknown API key {key_id}")
        if record.revoked_at is not None:
            raise AuthenticationError(f"API key {key_id} is revoked")
        if tenant is None or not tenant.active:
            raise AuthenticationError(f"tenant of API key {key_id} is missing or suspended")
        principal = Principal(
            tenant_id=tenant.id,
            subject=f"key:{key_id}",
            scopes=frozenset(record.scopes),
            auth_method="api_key",
            client_id=key_id,
            key_id=key_id,
            items=None if record.items is None else frozenset(record.items),
        )
        return self._token(token, tenant, principal, expires_at=None, verified_at=read_at)

    async def _oauth(self, token: str) -> TenantAccessToken:
        """A token of the built-in authorization server: live only while its key and tenant are."""
        assert self.oauth is not None
        cached = self._grants.entry(token)
        if cached is None:
            generation, grant_read_at = self._generation, time.monotonic()
            grant: dict[str, Any] = await self.oauth.access_grant(token) or {}
            if generation == self._generation:
                self._grants.put(token, grant, read_at=grant_read_at)
        else:
            grant_read_at, grant = cached
        if not grant or grant["expires_at"] < time.time():
            raise AuthenticationError("unknown, expired or revoked OAuth token")
        if (grant["resource"] or "").rstrip("/") != self.oauth.resource.rstrip("/"):
            raise AuthenticationError("OAuth token was issued for another resource")
        record, tenant, key_read_at = await self._key(grant["key_id"])
        if (
            record is None
            or record.revoked_at is not None
            or tenant is None
            or tenant.id != grant["tenant_id"]
        ):
            raise AuthenticationError("the API key behind this OAuth token is revoked")
        if not tenant.active:
            raise AuthenticationError("tenant of this OAuth token is suspended")
        principal = Principal(
            tenant_id=tenant.id,
            subject=f"key:{record.key_id}",
            scopes=frozenset(grant["scopes"]) & frozenset(record.scopes),
            auth_method="oauth",
            client_id=grant["client_id"],
            key_id=record.key_id,
            items=None if record.items is None else frozenset(record.items),  # the approving key's list
        )
        return self._token(
            token,
            tenant,
            principal,
            expires_at=grant["expires_at"],
            verified_at=min(grant_read_at, key_read_at),
        )

    async def _jwt(self, token: str) -> TenantAccessToken:
        assert self.jwt is not None
        claims = await self.jwt.verify(token)
        claim = self.jwt.settings.tenant_claim
        slug = claims.get(claim)
        if not isinstance(slug, str) or not slug:
            raise AuthenticationError(f"JWT has no {claim!r} claim")
        cached = self._tenants.entry(slug)
        if cached is None:
            generation, read_at = self._generation, time.monotonic()
            tenant = await self.control_plane.tenant_by_slug(slug)
            if tenant is not None and generation == self._generation:
                self._tenants.put(slug, tenant, read_at=read_at)
                self._saw(tenant, read_at)
        else:
            read_at, tenant = cached
        if tenant is None or not tenant.active:
            raise AuthenticationError("JWT tenant is unknown or suspended")
        allowed = tenant.metadata.get("jwt_issuers")
        if isinstance(allowed, str):
            allowed = [allowed]  # a lone string must not turn `in` into a substring test
        if allowed is not None and (
            not isinstance(allowed, list)
            or not all(isinstance(i, str) for i in allowed)
            or claims["iss"] not in allowed
        ):
            raise AuthenticationError("JWT issuer is not allowed for this tenant")
        client_id = claims.get("client_id") or claims.get("azp") or "jwt"
        principal = Principal(
            tenant_id=tenant.id,
            subject=str(claims["sub"]),
            scopes=scopes_of(claims),
            auth_method="jwt",
            client_id=str(client_id),
            issuer=str(claims["iss"]),
            claims=claims,
        )
        return self._token(token, tenant, principal, expires_at=int(claims["exp"]), verified_at=read_at)

    def _saw(self, tenant: Tenant | None, read_at: float) -> None:
        """A tenant read for a credential answers `require_active` for the same window: the first
        `ctx.db` of a call does not read it again right after authentication."""
        if tenant is not None:
            self._active.put(tenant.id, tenant.active, read_at=read_at)

    async def require_active(self, tenant_id: str) -> None:
        """Raise unless the tenant exists and is active, as of at most `cache_seconds` ago.

        Asked when a call acquires its tenant's data: a call already running when its tenant was
        suspended or deleted writes nothing once this process knows (at once with Redis)."""
        active = self._active.get(tenant_id)
        if active is None:
            generation, read_at = self._generation, time.monotonic()
            tenant = await self.control_plane.tenant_by_id(tenant_id)
            active = tenant is not None and tenant.status == "active"
            if generation == self._generation:
                self._active.put(tenant_id, active, read_at=read_at)
        if not active:
            raise AuthenticationError("the tenant is suspended or deleted")

    def invalidate(self, invalidation: Invalidation) -> None:
        """Drop cached lookups that another process (the CLI, another replica) has made stale."""
        self._generation += 1
        kind, ident = invalidation.kind, invalidation.id
        if kind == "key":
            self._keys.discard(ident)
            self._verified.discard_where(lambda token: token.principal.key_id == ident)
        elif kind == "tenant":
            self._keys.discard_where(lambda hit: hit[0] is not None and hit[0].tenant_id == ident)
            self._tenants.discard_where(lambda tenant: tenant.id == ident)
            self._verified.discard_where(lambda token: token.tenant.id == ident)
            self._active.discard(ident)
        elif kind == "oauth":
            self._grants.clear()  # grants are cached by token, which no message may carry
            self._verified.discard_where(lambda token: token.principal.auth_method == "oauth")
        else:
            self._keys.clear()
            self._tenants.clear()
            self._grants.clear()
            self._verified.clear()
            self._active.clear()

    @staticmethod
    def _token(
        token: str, tenant: Tenant, principal: Principal, *, expires_at: int | None, verified_at: float
    ) -> TenantAccessToken:
        claims = {"iss": principal.issuer} if principal.issuer else None
        return TenantAccessToken(
            token=token,
            client_id=principal.client_id,
            scopes=sorted(principal.scopes),
            expires_at=expires_at,
            subject=f"{tenant.id}:{principal.subject}",
            claims=claims,
            tenant=tenant,
            principal=principal,
            verified_at=verified_at,
        )
