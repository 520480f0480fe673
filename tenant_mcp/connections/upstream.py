"""The OAuth 2.1 client side: the authorization request (PKCE S256) and the token endpoint calls
(code exchange, refresh). Nothing here logs a token or puts one into an exception message."""

from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import urlencode, urlsplit

import httpx2

from tenant_mcp.connections.grant import Grant
from tenant_mcp.connections.provider import Provider

TIMEOUT = 15.0


class GrantRejected(Exception):
    """The provider refused the grant (`invalid_grant` and friends): the connection is broken."""


class UpstreamUnavailable(Exception):
    """The provider did not answer usefully (network, 5xx): nothing is decided, try later."""


def pkce_verifier() -> str:
    """RFC 7636: 64 random characters; it stays on this server, only its challenge travels."""
    return secrets.token_urlsafe(48)


def pkce_challenge(verifier: str) -> str:
    """The S256 challenge of `verifier`."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def authorize_url(provider: Provider, *, redirect_uri: str, state: str, challenge: str) -> str:
    query = {
        "response_type": "code",
        "client_id": provider.client_id,
        "redirect_uri": redirect_uri,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if provider.scopes:
        query["scope"] = " ".join(provider.scopes)
    separator = "&" if urlsplit(provider.authorize_url).query else "?"
    return f"{provider.authorize_url}{separator}{urlencode(query)}"


async def _token_request(provider: Provider, form: dict[str, str], previous: Grant | None) -> Grant:
    auth: httpx2.Auth | None = None
    if provider.client_secret is not None:
        if provider.client_auth == "client_secret_basic":
            auth = httpx2.BasicAuth(provider.client_id, provider.client_secret)
        else:
            form = {**form, "client_secret": provider.client_secret}
    try:
        async with httpx2.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as http:
            response = await http.post(
                provider.token_url, data={**form, "client_id": provider.client_id}, auth=auth or httpx2.USE_CLIENT_DEFAULT,
                headers={"Accept": "application/json"},
            )  # fmt: skip
    except httpx2.HTTPError as exc:
        raise UpstreamUnavailable(
            f"{provider.name}: token endpoint unreachable ({type(exc).__name__})"
        ) from None
    if response.status_code >= 500 or response.status_code == 429:
        raise UpstreamUnavailable(f"{provider.name}: token endpoint answered {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200:
        # RFC 6749 §5.2: an error code and maybe a description; both are the provider's words, no token.
        error = body.get("error") if isinstance(body, dict) else None
        raise GrantRejected(f"{provider.name}: {str(error or response.status_code)[:80]}")
    try:
        return Grant.from_token_response(body, previous)
    except ValueError as exc:
        raise GrantRejected(f"{provider.name}: {exc}") from None


async def exchange_code(provider: Provider, *, code: str, verifier: str, redirect_uri: str) -> Grant:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": redirect_uri,
    }
    return await _token_request(provider, form, None)


async def refresh(provider: Provider, grant: Grant) -> Grant:
    if not grant.refresh_token:
        raise GrantRejected(f"{provider.name}: the access token expired and there is no refresh token")
    form = {"grant_type": "refresh_token", "refresh_token": grant.refresh_token}
    return await _token_request(provider, form, grant)
