"""`Provider`: an upstream API a tool calls as the tenant (or as the person), declared in code with
`app.connection(...)`. Its client secret stays in the process; only tokens are stored."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from tenant_mcp.errors import ConfigurationError
from tenant_mcp.models import Principal

Per = Literal["tenant", "principal"]
ClientAuth = Literal["client_secret_basic", "client_secret_post"]
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")


def principal_id(principal: Principal) -> str:
    """Who asked, as connections store it: the API key (an OAuth token of the built-in server is
    its approving key: the same person), or the JWT issuer and subject."""
    if principal.key_id:
        return f"key:{principal.key_id}"
    return f"jwt:{principal.issuer or ''}#{principal.subject}"


def _check_url(what: str, url: str) -> str:
    """https, or http to a loopback address (a provider on this machine, in tests); no user info
    or fragment. Tokens and client secrets never travel in clear across a network."""
    parts = urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ConfigurationError(f"connection {what} {url!r}: use https (http only to a loopback address)")
    if not parts.hostname or "@" in parts.netloc or parts.fragment:
        raise ConfigurationError(f"connection {what} {url!r}: a host, and no user info or fragment")
    return url


@dataclass(frozen=True)
class Provider:
    """An OAuth 2.1 provider (authorization code + PKCE S256, refresh) and, optionally, the API
    base URL tokens may be sent to (`ctx.connections.client` refuses any other origin)."""

    name: str
    authorize_url: str
    token_url: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    scopes: Sequence[str] = ()
    per: Per = "tenant"
    api_base_url: str | None = None
    title: str | None = None
    client_auth: ClientAuth = "client_secret_basic"

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ConfigurationError(
                f"connection name {self.name!r}: 1-63 lowercase letters, digits, '_', '-', starting with a letter"
            )
        if isinstance(self.scopes, str):
            raise TypeError("scopes is a list of strings, e.g. scopes=['contacts.read']")
        if self.per not in ("tenant", "principal"):
            raise ConfigurationError(
                'per is "tenant" (one connection per tenant) or "principal" (per person)'
            )
        if self.client_auth not in ("client_secret_basic", "client_secret_post"):
            raise ConfigurationError('client_auth is "client_secret_basic" or "client_secret_post"')
        if not self.client_id:
            raise ConfigurationError(f"connection {self.name!r} needs a client_id")
        _check_url("authorize_url", self.authorize_url)
        _check_url("token_url", self.token_url)
        if self.api_base_url is not None:
            _check_url("api_base_url", self.api_base_url)

    @property
    def label(self) -> str:
        return self.title or self.name

    def owner(self, principal: Principal) -> str:
        """Whose tokens a call uses: the tenant's one connection ("") or the caller's own."""
        return "" if self.per == "tenant" else principal_id(principal)
