"""The built-in OAuth 2.1 authorization server, for clients that only speak the MCP auth flow.

Teams without their own identity provider can still connect assistants that insist on OAuth.
The SDK's handlers serve RFC 8414 metadata, RFC 7591 dynamic client registration, the
authorization-code grant with PKCE (S256 only), refresh and RFC 7009 revocation; this module is
the provider behind them plus the sign-in page. A person signs in to a tenant by pasting one of
its API keys, sees the client's name and the scopes asked for, and approves or denies.

Tokens are opaque (`tmo_...` access, `tmr_...` refresh), stored only as SHA-256 digests, and bound
to one tenant, the API key used to approve, the client and this server's resource URL. Access
tokens live 15 minutes; refresh tokens rotate on every use (a replayed one revokes its whole
family). Revoking the key or suspending the tenant ends every token issued through it, because
each use re-checks both.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import secrets
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from mcp.server.auth.handlers.metadata import MetadataHandler
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    AuthorizeError,
    RefreshToken,
    RegistrationError,
    TokenError,
    construct_redirect_uri,
)
from mcp.server.auth.routes import build_metadata, cors_middleware, create_auth_routes
from mcp.server.auth.settings import AuthSettings, ClientRegistrationOptions, RevocationOptions
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from pydantic import AnyUrl, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenant_mcp.auth.client_metadata import ClientMetadataFetcher
from tenant_mcp.auth.invalidation import Invalidation
from tenant_mcp.auth.pages import page as _page
from tenant_mcp.auth.pages import redirect as _redirect
from tenant_mcp.errors import AuthenticationError, required
from tenant_mcp.storage.sql import Database

if TYPE_CHECKING:
    from tenant_mcp.runtime import Runtime

ACCESS_SECONDS = 15 * 60
REFRESH_SECONDS = 30 * 24 * 3600
CODE_SECONDS = 5 * 60
REQUEST_SECONDS = 10 * 60
CONSENT_PATH = "/oauth/consent"
_LOOPBACK_REDIRECT_HOSTS = ("127.0.0.1", "[::1]", "localhost")
_COOKIE = "tenant_mcp_consent"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def redirect_uri_problem(uri: str) -> str | None:
    """Why a redirect URI is unsafe, or None. Only `https`, and `http` to a loopback address (any
    port, RFC 8252 §7.3), with no fragment or user info: a `javascript:`/`data:` target would run
    in the browser, a plain `http` one would carry the code across the network in clear."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        return "only https redirect URIs (or http to a loopback address) are allowed"
    if "#" in uri:
        return "a redirect URI must not have a fragment"
    if "@" in parts.netloc or not parts.hostname:
        return "a redirect URI needs a host and no user info"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if scheme == "http" and host not in _LOOPBACK_REDIRECT_HOSTS:
        return "plain http redirect URIs must point at a loopback address (127.0.0.1, [::1], localhost)"
    return None


def _same_but_port(a: AnyUrl, b: AnyUrl) -> bool:
    """RFC 8252 §7.3: a native app's loopback redirect may use any port at request time."""
    return (
        a.scheme == b.scheme == "http"
        and a.host == b.host
        and (a.host or "") in _LOOPBACK_REDIRECT_HOSTS
        and (a.path, a.query, a.fragment, a.username) == (b.path, b.query, b.fragment, b.username)
    )


class _Client(OAuthClientInformationFull):
    """A registered client whose loopback redirect URIs match on any port."""

    def validate_redirect_uri(self, redirect_uri: AnyUrl | None) -> AnyUrl:
        if redirect_uri is not None and any(
            _same_but_port(redirect_uri, r) for r in self.redirect_uris or ()
        ):
            return redirect_uri
        return super().validate_redirect_uri(redirect_uri)


class TenantCode(AuthorizationCode):
    tenant_id: str
    key_id: str


class TenantRefreshToken(RefreshToken):
    tenant_id: str
    key_id: str
    family: str


class OAuthServer:
    """The SDK's `OAuthAuthorizationServerProvider`, backed by the control plane."""

    def __init__(
        self,
        *,
        issuer: str,
        resource: str,
        client_metadata: ClientMetadataFetcher | None = None,
    ) -> None:
        # The routes exist before the server runs; the serving runtime is handed over when it does.
        self.runtime: Runtime | None = None
        self.issuer = issuer.rstrip("/")
        self.resource = resource
        self.client_metadata = client_metadata or ClientMetadataFetcher()

    def _digest(self, secret: str) -> str:
        """Codes, tokens and pending sign-ins are stored under digests salted with this server's
        issuer: another server sharing the control plane (another issuer) finds nothing under a
        secret it did not issue."""
        return _digest(f"{self.issuer}\n{secret}")

    @property
    def _rt(self) -> Runtime:
        return required(self.runtime, "the server is not running", AuthenticationError)

    @property
    def _db(self) -> Database:
        return self._rt.control_plane.db

    def routes(self) -> list[BaseRoute]:
        """The SDK's authorization-server routes, adjusted: the metadata names RFC 9207 `iss`,
        `/authorize` shows its errors instead of redirecting them, plus the sign-in page."""
        # AuthSettings keeps a path-less issuer without the trailing slash a bare AnyHttpUrl adds;
        # clients compare issuers byte for byte (RFC 8414).
        issuer_url = AuthSettings.model_validate(
            {"issuer_url": self.issuer, "resource_server_url": None}
        ).issuer_url
        registration, revocation = ClientRegistrationOptions(enabled=True), RevocationOptions(enabled=True)
        metadata = build_metadata(issuer_url, None, registration, revocation)
        metadata.authorization_response_iss_parameter_supported = True
        # Registration accepts public clients (PKCE, no secret), and so does the token endpoint.
        metadata.token_endpoint_auth_methods_supported = ["client_secret_post", "client_secret_basic", "none"]
        metadata.client_id_metadata_document_supported = True
        routes: list[BaseRoute] = []
        for route in create_auth_routes(
            self,
            issuer_url=issuer_url,
            client_registration_options=registration,
            revocation_options=revocation,
        ):
            if route.path == "/.well-known/oauth-authorization-server":
                route = Route(route.path, cors_middleware(MetadataHandler(metadata).handle, ["GET", "OPTIONS"]),
                              methods=["GET", "OPTIONS"])  # fmt: skip
            elif route.path == "/authorize":
                route = Route(route.path, _ShownErrors(route.app, f"{self.issuer}{CONSENT_PATH}?"),
                              methods=["GET", "POST"])  # fmt: skip
            routes.append(route)
        routes.append(Route(CONSENT_PATH, self.consent, methods=["GET", "POST"]))
        return routes

    # -- clients (RFC 7591) ----------------------------------------------------------------------

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        if self.client_metadata.is_url(client_id):
            return await self._metadata_client(client_id)
        row = await self._db.fetch_one("SELECT info FROM oauth_clients WHERE client_id = ?", (client_id,))
        return _Client.model_validate_json(row["info"]) if row else None

    async def _metadata_client(self, client_id: str) -> OAuthClientInformationFull | None:
        """A client described by its metadata document: a public client (no shared secret can
        exist), held to the same redirect-URI rules as a registered one."""
        document = await self.client_metadata.document(client_id)
        if document is None or document.get("token_endpoint_auth_method", "none") != "none":
            return None
        redirects = document.get("redirect_uris")
        if not isinstance(redirects, list) or not redirects:
            return None
        if any(not isinstance(uri, str) or redirect_uri_problem(uri) for uri in redirects):
            return None
        fields = ("client_name", "client_uri", "logo_uri", "scope", "grant_types", "response_types")
        try:
            return _Client.model_validate(
                {
                    **{k: document[k] for k in fields if k in document},
                    "client_id": client_id,
                    "redirect_uris": redirects,
                    "token_endpoint_auth_method": "none",
                }
            )
        except ValidationError:
            return None

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        for uri in client_info.redirect_uris or ():
            problem = redirect_uri_problem(str(uri))
            if problem is not None:
                raise RegistrationError(error="invalid_redirect_uri", error_description=problem)
        await self._db.execute(
            "INSERT INTO oauth_clients (client_id, info, created_at) VALUES (?, ?, ?)",
            (
                client_info.client_id,
                client_info.model_dump_json(),
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            ),
        )

    # -- authorization -----------------------------------------------------------------------------

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        """Park the validated request and send the browser to the sign-in page."""
        problem = redirect_uri_problem(str(params.redirect_uri))  # a client registered before the rule
        if problem is not None:
            raise AuthorizeError(error="invalid_request", error_description=problem)
        if not 43 <= len(params.code_challenge) <= 128:  # RFC 7636 §4.2: base64url of a SHA-256
            raise AuthorizeError(error="invalid_request", error_description="malformed code_challenge")
        if params.resource is not None and params.resource.rstrip("/") != self.resource.rstrip("/"):
            raise AuthorizeError(error="invalid_request", error_description="unknown resource")
        request_id = secrets.token_urlsafe(24)
        await self._db.execute(
            "INSERT INTO oauth_requests (id, client_id, params, csrf, expires_at) VALUES (?, ?, ?, ?, ?)",
            (self._digest(request_id), client.client_id, params.model_dump_json(), secrets.token_urlsafe(24),
             time.time() + REQUEST_SECONDS),
        )  # fmt: skip
        await self._db.execute("DELETE FROM oauth_requests WHERE expires_at < ?", (time.time(),))
        return f"{self.issuer}{CONSENT_PATH}?request={request_id}"

    async def load_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: str
    ) -> TenantCode | None:
        row = await self._db.fetch_one(
            "SELECT * FROM oauth_codes WHERE digest = ? AND client_id = ?",
            (self._digest(authorization_code), client.client_id),
        )
        if row is None:
            return None
        params = json.loads(row["params"])
        return TenantCode(
            code=authorization_code,
            scopes=json.loads(row["scopes"]),
            expires_at=row["expires_at"],
            client_id=row["client_id"],
            code_challenge=params["code_challenge"],
            redirect_uri=params["redirect_uri"],
            redirect_uri_provided_explicitly=params["redirect_uri_provided_explicitly"],
            resource=params.get("resource"),
            tenant_id=row["tenant_id"],
            key_id=row["key_id"],
        )

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: TenantCode
    ) -> OAuthToken:
        # Single use: the DELETE decides which of two racing exchanges wins.
        deleted = await self._db.execute(
            "DELETE FROM oauth_codes WHERE digest = ?", (self._digest(authorization_code.code),)
        )
        if deleted != 1:
            raise TokenError(error="invalid_grant", error_description="authorization code already used")
        await self._check_key(authorization_code.key_id, authorization_code.tenant_id)
        return await self._issue(
            client.client_id, authorization_code.tenant_id, authorization_code.key_id, authorization_code.scopes,
            authorization_code.resource or self.resource, family=uuid.uuid4().hex,
        )  # fmt: skip

    # -- refresh and revocation ----------------------------------------------------------------------

    async def load_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: str
    ) -> TenantRefreshToken | None:
        row = await self._token_row(refresh_token, "refresh")
        if row is None or row["client_id"] != client.client_id:
            return None
        if row["revoked_at"] is not None:
            # A rotated refresh token came back: someone holds a copy. End the whole family.
            await self._revoke_family(row["family"])
            await self._revoked(row["family"])
            return None
        return TenantRefreshToken(
            token=refresh_token,
            client_id=row["client_id"],
            scopes=json.loads(row["scopes"]),
            expires_at=int(row["expires_at"]),
            resource=row["resource"],
            tenant_id=row["tenant_id"],
            key_id=row["key_id"],
            family=row["family"],
        )

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: TenantRefreshToken, scopes: list[str]
    ) -> OAuthToken:
        if not set(scopes) <= set(refresh_token.scopes):
            raise TokenError(error="invalid_scope", error_description="cannot widen scopes on refresh")
        rotated = await self._db.execute(
            "UPDATE oauth_tokens SET revoked_at = ? WHERE digest = ? AND revoked_at IS NULL",
            (time.time(), self._digest(refresh_token.token)),
        )
        if rotated != 1:
            raise TokenError(error="invalid_grant", error_description="refresh token already used")
        await self._check_key(refresh_token.key_id, refresh_token.tenant_id)
        return await self._issue(
            client.client_id, refresh_token.tenant_id, refresh_token.key_id, scopes or refresh_token.scopes,
            refresh_token.resource or self.resource, family=refresh_token.family,
        )  # fmt: skip

    async def load_access_token(self, token: str) -> AccessToken | None:
        """Unused by tenant_mcp (the authenticator verifies `tmo_` tokens); part of the protocol."""
        grant = await self.access_grant(token)
        if grant is None:
            return None
        return AccessToken(
            token=token, client_id=grant["client_id"], scopes=grant["scopes"], resource=grant["resource"]
        )

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        row = await self._token_row(token.token, None)
        if row is not None:
            await self._revoke_family(row["family"]) if row["kind"] == "refresh" else await self._db.execute(
                "UPDATE oauth_tokens SET revoked_at = ? WHERE digest = ?", (time.time(), row["digest"])
            )
            await self._revoked(row["family"])

    async def exchange_identity_assertion(self, *args: Any, **kwargs: Any) -> OAuthToken:
        raise TokenError(
            error="unsupported_grant_type", error_description="identity assertions are not supported"
        )

    # -- used by the authenticator -----------------------------------------------------------------

    async def access_grant(self, token: str) -> dict[str, Any] | None:
        """What a live access token grants (tenant, key, client, scopes, resource), else None."""
        row = await self._token_row(token, "access")
        if row is None or row["revoked_at"] is not None or row["expires_at"] < time.time():
            return None
        return {
            "tenant_id": row["tenant_id"],
            "key_id": row["key_id"],
            "client_id": row["client_id"],
            "scopes": json.loads(row["scopes"]),
            "resource": row["resource"],
            "expires_at": int(row["expires_at"]),
        }

    # -- internals -------------------------------------------------------------------------------

    async def _token_row(self, token: str, kind: str | None) -> Any:
        row = await self._db.fetch_one("SELECT * FROM oauth_tokens WHERE digest = ?", (self._digest(token),))
        if row is None or (kind is not None and row["kind"] != kind):
            return None
        return row

    async def _revoke_family(self, family: str) -> None:
        await self._db.execute(
            "UPDATE oauth_tokens SET revoked_at = ? WHERE family = ? AND revoked_at IS NULL",
            (time.time(), family),
        )

    async def _revoked(self, family: str) -> None:
        """Authenticators cache grants for a moment: drop them now, on every replica with Redis."""
        await self._rt.invalidate(Invalidation(kind="oauth", id=family))

    async def _check_key(self, key_id: str, tenant_id: str) -> None:
        control_plane = self._rt.control_plane
        record = await control_plane.key(key_id)
        tenant = await control_plane.tenant_by_id(tenant_id)
        if record is None or record.revoked_at is not None or tenant is None or not tenant.active:
            raise TokenError(error="invalid_grant", error_description="the grant is no longer valid")

    async def _issue(
        self, client_id: str, tenant_id: str, key_id: str, scopes: list[str], resource: str, *, family: str
    ) -> OAuthToken:
        access, refresh = "tmo_" + secrets.token_urlsafe(32), "tmr_" + secrets.token_urlsafe(32)
        now = time.time()
        rows = [
            (self._digest(access), "access", now + ACCESS_SECONDS),
            (self._digest(refresh), "refresh", now + REFRESH_SECONDS),
        ]
        await self._db.execute_many(
            "INSERT INTO oauth_tokens (digest, kind, client_id, tenant_id, key_id, scopes, resource, family,"
            " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (d, kind, client_id, tenant_id, key_id, json.dumps(scopes), resource, family, exp)
                for d, kind, exp in rows
            ],
        )
        return OAuthToken(
            access_token=access,
            expires_in=ACCESS_SECONDS,
            scope=" ".join(scopes) or None,
            refresh_token=refresh,
        )

    # -- the sign-in and consent page ----------------------------------------------------------------

    async def _pending(self, request_id: str) -> Any:
        return await self._db.fetch_one(
            "SELECT * FROM oauth_requests WHERE id = ? AND expires_at > ?",
            (self._digest(request_id), time.time()),
        )

    async def consent(self, request: Request) -> Response:
        if request.method == "POST":
            return await self._decide(request)
        request_id = request.query_params.get("request", "")
        pending = await self._pending(request_id)
        if pending is None:
            return _page("Sign-in link expired", "<p>This sign-in link is invalid or has expired. "
                         "Start again from your application.</p>", status=400)  # fmt: skip
        client = await self.get_client(pending["client_id"])
        params = AuthorizationParams.model_validate_json(pending["params"])
        browser = secrets.token_urlsafe(24)
        await self._db.execute(
            "UPDATE oauth_requests SET browser = ? WHERE id = ?", (self._digest(browser), pending["id"])
        )
        name = html.escape((client.client_name if client else None) or pending["client_id"])
        if self.client_metadata.is_url(pending["client_id"]):  # a self-described name: show whose it is
            name += f" <small>({html.escape(pending['client_id'])})</small>"
        scopes = params.scopes or []
        scope_list = (
            "".join(f"<li><code>{html.escape(s)}</code></li>" for s in scopes)
            or "<li>the key's own scopes</li>"
        )
        body = f"""
<p><strong>{name}</strong> wants to use this MCP server on your behalf.</p>
<p>It asks for:</p><ul>{scope_list}</ul>
<p>It will be sent back to <code>{html.escape(str(params.redirect_uri))}</code>.</p>
{_form(request_id, pending["csrf"])}"""
        response = _page("Authorize access", body, redirect_uri=str(params.redirect_uri))
        response.set_cookie(_COOKIE, browser, max_age=REQUEST_SECONDS, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path=CONSENT_PATH)  # fmt: skip
        return response

    async def _decide(self, request: Request) -> Response:
        form = await request.form()
        request_id = str(form.get("request", ""))
        pending = await self._pending(request_id)
        browser = request.cookies.get(_COOKIE, "")
        if (
            pending is None
            or not hmac.compare_digest(str(form.get("csrf", "")), pending["csrf"])
            or pending["browser"] is None
            or not hmac.compare_digest(self._digest(browser), pending["browser"])
        ):
            return _page(
                "Request refused", "<p>This form is invalid or has expired. Start again.</p>", status=400
            )
        params = AuthorizationParams.model_validate_json(pending["params"])
        redirect = str(params.redirect_uri)
        if form.get("decision") != "approve":
            await self._db.execute("DELETE FROM oauth_requests WHERE id = ?", (pending["id"],))
            return _redirect(
                construct_redirect_uri(redirect, error="access_denied", state=params.state, iss=self.issuer)
            )
        try:
            token = await self._rt.authenticator.authenticate(str(form.get("api_key", "")).strip())
        except AuthenticationError:
            token = None
        # Only an API key signs in: an access token (or a JWT) approving a grant would mint a new,
        # independent token family that outlives the revocation of the one it came from.
        if token is None or token.principal.auth_method != "api_key":
            return await self.consent_again(request_id, "That key was not accepted. Paste an active API key.")
        await self._db.execute("DELETE FROM oauth_requests WHERE id = ?", (pending["id"],))
        requested = params.scopes or sorted(token.principal.scopes)
        granted = [s for s in requested if s in token.principal.scopes]  # never more than the key has
        code = secrets.token_urlsafe(32)
        await self._db.execute(
            "INSERT INTO oauth_codes (digest, client_id, tenant_id, key_id, scopes, params, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (self._digest(code), pending["client_id"], token.tenant.id, token.principal.key_id, json.dumps(granted),
             params.model_dump_json(), time.time() + CODE_SECONDS),
        )  # fmt: skip
        return _redirect(construct_redirect_uri(redirect, code=code, state=params.state, iss=self.issuer))

    async def consent_again(self, request_id: str, message: str) -> Response:
        """Re-show the form after a bad key, keeping the same pending request."""
        pending = await self._pending(request_id)
        assert pending is not None
        body = f"""
<p role="alert" class="error">{html.escape(message)}</p>
{_form(request_id, pending["csrf"])}"""
        params = AuthorizationParams.model_validate_json(pending["params"])
        return _page("Authorize access", body, status=401, redirect_uri=str(params.redirect_uri))


class _ShownErrors:
    """`/authorize` answers its errors on a page of its own. Before a person has approved, the
    client is not trusted: bouncing the browser to its redirect URI (an invalid scope, an unknown
    resource) would make this server an open redirector (RFC 9700 §4.11.2)."""

    def __init__(self, app: ASGIApp, allowed_prefix: str) -> None:
        self._app = app
        self._allowed = allowed_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused: list[Message] = []

        async def guarded(message: Message) -> None:
            if message["type"] == "http.response.start" and 300 <= message["status"] < 400:
                location = dict(message.get("headers", [])).get(b"location", b"").decode("latin-1")
                if not location.startswith(self._allowed):
                    refused.append(message)
                    query = parse_qs(urlsplit(location).query)
                    detail = query.get("error_description", query.get("error", ["invalid request"]))[0]
                    page = _page("Request refused", f"<p>This authorization request is invalid: "
                                 f"{html.escape(detail)}.</p><p>Go back to your application.</p>", status=400)  # fmt: skip
                    await page(scope, receive, send)
                    return
            if not refused:
                await send(message)

        await self._app(scope, receive, guarded)


def _form(request_id: str, csrf: str) -> str:
    return f"""<form method="post" action="{CONSENT_PATH}">
  <input type="hidden" name="request" value="{html.escape(request_id)}">
  <input type="hidden" name="csrf" value="{html.escape(csrf)}">
  <label for="api_key">Sign in with one of your tenant's API keys</label>
  <input id="api_key" name="api_key" type="password" autocomplete="off" required>
  <div class="actions">
    <button type="submit" name="decision" value="approve">Approve</button>
    <button type="submit" name="decision" value="deny" formnovalidate>Deny</button>
  </div>
</form>"""
