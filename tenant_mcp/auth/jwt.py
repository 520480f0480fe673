"""OAuth 2.1 resource-server side: validate bearer JWTs with PyJWT, configured strictly.

PyJWT's defaults are permissive (no required `exp`, no `iss`/`aud` unless asked), so every check
is spelled out here: an asymmetric-algorithm allow-list, required `exp`/`iss`/`aud`/`sub`, the
audience equal to this server's resource URL (RFC 8707: a token minted for another API, or an
OpenID ID token whose audience is a client id, is refused), and keys only from the configured set.
A `kid` merely selects among trusted keys; `jku`, `x5u` and embedded `jwk` headers are ignored,
so a token can never bring its own key.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from tenant_mcp.errors import AuthenticationError, ConfigurationError

ASYMMETRIC_ALGORITHMS: tuple[str, ...] = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip


@dataclass(frozen=True)
class JWTSettings:
    """How bearer JWTs are validated. Exactly one of `jwks_url` and `public_key` is set."""

    issuers: tuple[str, ...]
    audience: str
    jwks_url: str | None = None
    public_key: str | None = None
    tenant_claim: str = "tenant"
    algorithms: tuple[str, ...] = ASYMMETRIC_ALGORITHMS
    leeway_seconds: float = 30.0
    jwks_cache_seconds: float = 300.0
    jwks_min_refetch_seconds: float = 10.0

    def __post_init__(self) -> None:
        if (self.jwks_url is None) == (self.public_key is None):
            raise ConfigurationError("JWT auth needs exactly one of a JWKS URL and a public key")
        if not self.issuers:
            raise ConfigurationError("JWT auth needs an issuer (--jwt-issuer)")
        if not self.audience:
            raise ConfigurationError("JWT auth needs an audience (--jwt-audience)")
        unsafe = [a for a in self.algorithms if a not in ASYMMETRIC_ALGORITHMS]
        if unsafe:
            raise ConfigurationError(
                f"algorithm {unsafe[0]!r} is not allowed: only asymmetric algorithms are"
            )
        if self.jwks_url is not None and not self.jwks_url.startswith(("https://", "http://")):
            raise ConfigurationError("the JWKS URL must be http(s)")
        if self.public_key is not None:
            _load_public_key(self.public_key)  # fail at startup, not on the first request

    @classmethod
    def from_public_key_file(cls, path: str | Path, **kwargs: Any) -> JWTSettings:
        try:
            pem = Path(path).read_text()
        except OSError as exc:
            raise ConfigurationError(f"cannot read JWT public key {str(path)!r}: {exc.strerror}") from None
        return cls(public_key=pem, **kwargs)


_KEY_ALGORITHMS: dict[type, tuple[str, ...]] = {
    rsa.RSAPublicKey: ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    ec.EllipticCurvePublicKey: ("ES256", "ES384", "ES512"),
    ed25519.Ed25519PublicKey: ("EdDSA",),
    ed448.Ed448PublicKey: ("EdDSA",),
}


def _load_public_key(pem: str) -> tuple[Any, tuple[str, ...]]:
    """The public key in a PEM (a public key or a certificate) and the algorithms that fit it.

    Parsed once at startup so a wrong file (a private key, garbage) stops the server instead of
    failing every request later.
    """
    data = pem.encode()
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        elif b"PRIVATE KEY-----" in data:
            raise ConfigurationError(
                "the JWT key file holds a private key; give the public key (or certificate)"
            )
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError:
        raise ConfigurationError("the JWT key file is not a PEM public key or certificate") from None
    for kind, algorithms in _KEY_ALGORITHMS.items():
        if isinstance(key, kind):
            return key, algorithms
    raise ConfigurationError(f"unsupported JWT key type {type(key).__name__}")


class _JWKSCache:
    """The trusted key set from a JWKS URL: cached, refetched on an unknown `kid`, rate-limited.

    The rate limit matters: without it, tokens with random `kid`s would make us hammer the IdP.
    """

    def __init__(self, url: str, ttl: float, min_refetch: float) -> None:
        self._url = url
        self._ttl = ttl
        self._min_refetch = min_refetch
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._lock = anyio.Lock()

    async def key(self, kid: str | None) -> jwt.PyJWK:
        now = time.monotonic()
        stale = now - self._fetched_at > self._ttl
        if (stale or kid not in self._keys) and now - self._attempted_at >= self._min_refetch:
            async with self._lock:
                if time.monotonic() - self._attempted_at >= self._min_refetch:
                    await self._refresh()
        key = self._keys.get(kid)
        if key is None and kid is None and len(self._keys) == 1:
            key = next(iter(self._keys.values()))
        if key is None:
            raise AuthenticationError("token kid is not in the trusted key set")
        return key

    async def _refresh(self) -> None:
        self._attempted_at = time.monotonic()
        try:
            raw = await anyio.to_thread.run_sync(self._fetch)
            keyset = jwt.PyJWKSet.from_dict(json.loads(raw))
        except Exception as exc:  # network, JSON or key errors all mean "keep the old set"
            if not self._keys:
                raise AuthenticationError(f"cannot load JWKS: {type(exc).__name__}") from None
            return
        self._keys = {k.key_id: k for k in keyset.keys}
        self._fetched_at = time.monotonic()

    def _fetch(self) -> bytes:
        request = urllib.request.Request(self._url, headers={"Accept": "application/json"})  # noqa: S310
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            body: bytes = response.read(1_000_000)
            return body


class JWTVerifier:
    """Turns a bearer JWT into its validated claims, or raises `AuthenticationError`."""

    def __init__(self, settings: JWTSettings) -> None:
        self.settings = settings
        self._jwks = (
            _JWKSCache(settings.jwks_url, settings.jwks_cache_seconds, settings.jwks_min_refetch_seconds)
            if settings.jwks_url
            else None
        )
        self._static = _load_public_key(settings.public_key) if settings.public_key is not None else None

    async def verify(self, token: str) -> dict[str, Any]:
        s = self.settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthenticationError("malformed JWT") from None
        alg = header.get("alg")
        if alg not in s.algorithms:
            raise AuthenticationError(f"JWT algorithm {alg!r} is not allowed")
        key: Any
        if self._static is not None:
            key, fitting = self._static
            if alg not in fitting:
                raise AuthenticationError(f"JWT algorithm {alg!r} does not fit the configured key")
        else:
            assert self._jwks is not None
            key = await self._jwks.key(header.get("kid"))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=s.audience,
                issuer=s.issuers,
                leeway=s.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"], "verify_signature": True},
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"JWT rejected: {type(exc).__name__}") from None
        except (ValueError, TypeError, AttributeError) as exc:  # a key/algorithm mismatch inside PyJWT
            raise AuthenticationError(f"JWT rejected: {type(exc).__name__}") from None
        return claims


def scopes_of(claims: dict[str, Any]) -> frozenset[str]:
    """Scopes from `scope` (space-separated, RFC 9068) or `scp` (list or string, common IdPs)."""
    raw: Any = claims.get("scope", claims.get("scp", ""))
    if isinstance(raw, str):
        return frozenset(raw.split())
    if isinstance(raw, Sequence):
        return frozenset(s for s in raw if isinstance(s, str))
    return frozenset()
