"""The connect link's pages, mounted by the HTTP transport.

1. ``GET /connections/connect?link=...``: names the provider, the tenant and who asked. The
   browser gets a cookie: only the browser that opened the link last may continue it.
2. ``POST`` the same: the person proves they are the principal that asked. A link asked for by an
   API key (or by a token of the built-in OAuth server, which stands for its key) needs that same
   key pasted: another person of the tenant, or of another tenant, is refused even holding the
   link. A link asked for by a JWT principal cannot be proven here (the browser holds no token):
   it is a bearer link, single use, ten minutes, and the page says so. The link is used up and the
   browser goes to the provider with a fresh `state` and a PKCE challenge.
3. ``GET /connections/callback?code&state``: the state and the cookie must match; the code is
   exchanged with the PKCE verifier (which never left this server) and the tokens are sealed.
"""

from __future__ import annotations

import hmac
import html
import secrets
import time
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tenant_mcp.auth.pages import page, redirect
from tenant_mcp.connections import upstream
from tenant_mcp.connections.service import CALLBACK_PATH, CONNECT_PATH
from tenant_mcp.connections.store import LINK_SECONDS, digest
from tenant_mcp.errors import AuthenticationError

if TYPE_CHECKING:
    from tenant_mcp.runtime import Runtime

_COOKIE = "tenant_mcp_connect"
_EXPIRED = "<p>This connect link is invalid, used or expired. Ask your assistant again for a new one.</p>"


class ConnectPages:
    """The routes; the runtime is handed over while the server serves (as to the OAuth server)."""

    def __init__(self) -> None:
        self.runtime: Runtime | None = None

    def routes(self) -> list[BaseRoute]:
        return [
            Route(CONNECT_PATH, self.connect, methods=["GET", "POST"]),
            Route(CALLBACK_PATH, self.callback, methods=["GET"]),
        ]

    async def connect(self, request: Request) -> Response:
        rt = self.runtime
        if rt is None or rt.connections is None:
            return page("Not available", "<p>The server is not serving.</p>", status=503)
        if request.method == "POST":
            return await self._start(request, rt)
        link = request.query_params.get("link", "")
        pending = await rt.connections.store.pending(link)
        if pending is None:
            return page("Link expired", _EXPIRED, status=400)
        browser = secrets.token_urlsafe(24)
        await rt.connections.store.bind_browser(link, browser)
        response = await self._form(rt, link, pending)
        response.set_cookie(_COOKIE, browser, max_age=LINK_SECONDS, httponly=True, samesite="lax",
                            secure=request.url.scheme == "https", path="/connections")  # fmt: skip
        return response

    async def _form(
        self, rt: Runtime, link: str, pending: dict[str, str], error: str | None = None
    ) -> Response:
        assert rt.connections is not None
        provider = rt.connections.providers.get(pending["provider"])
        tenant = await rt.control_plane.tenant_by_id(pending["tenant_id"])
        if provider is None or tenant is None:
            return page("Link expired", _EXPIRED, status=400)
        by_key = pending["principal"].startswith("key:")
        proof = (
            '<label for="api_key">Paste the API key your assistant uses, to prove the link is yours</label>'
            '<input id="api_key" name="api_key" type="password" autocomplete="off" required>'
            if by_key
            else "<p><strong>Only continue if you asked for this yourself, just now.</strong> Anyone holding "
            "this link could complete it.</p>"
        )
        you = "you (this key)" if by_key else "you"
        whom = you if provider.per == "principal" else f"everyone in {html.escape(tenant.name)}"
        alert = f'<p role="alert" class="error">{html.escape(error)}</p>' if error else ""
        body = f"""{alert}
<p>Connect <strong>{html.escape(provider.label)}</strong> for <strong>{html.escape(tenant.name)}</strong>.
Tools will call it with the account you sign in with there, on behalf of {whom}.</p>
<form method="post" action="{CONNECT_PATH}">
  <input type="hidden" name="link" value="{html.escape(link)}">
  <input type="hidden" name="csrf" value="{html.escape(pending["csrf"])}">
  {proof}
  <div class="actions">
    <button type="submit" name="decision" value="connect">Continue to {html.escape(provider.label)}</button>
    <button type="submit" name="decision" value="cancel" formnovalidate>Cancel</button>
  </div>
</form>"""
        return page(f"Connect {provider.label}", body, status=401 if error else 200,
                    redirect_uri=provider.authorize_url)  # fmt: skip

    async def _start(self, request: Request, rt: Runtime) -> Response:
        assert rt.connections is not None
        form = await request.form()
        link = str(form.get("link", ""))
        pending = await rt.connections.store.pending(link)
        browser = request.cookies.get(_COOKIE, "")
        if (
            pending is None
            or not hmac.compare_digest(str(form.get("csrf", "")), pending["csrf"])
            or pending["browser"] is None
            or not hmac.compare_digest(digest(browser), pending["browser"])
        ):
            return page("Link expired", _EXPIRED, status=400)
        if form.get("decision") != "connect":
            await rt.connections.store.drop_link(link)
            return page("Not connected", "<p>Nothing was connected. You can close this window.</p>")
        if pending["principal"].startswith("key:"):
            try:
                token = await rt.authenticator.authenticate(str(form.get("api_key", "")).strip())
            except AuthenticationError:
                token = None
            if (
                token is None
                or token.tenant.id != pending["tenant_id"]
                or f"key:{token.principal.key_id}" != pending["principal"]
            ):
                rt.audit.record(tenant_id=pending["tenant_id"], principal=pending["principal"],
                                method="connections/connect", target=pending["provider"], outcome="denied",
                                reason="connect link: the key pasted is not the one that asked")  # fmt: skip
                return await self._form(rt, link, pending, "That is not the key that asked for this link.")
        provider = rt.connections.providers[pending["provider"]]
        state = secrets.token_urlsafe(32)
        if not await rt.connections.store.start(link, state):
            return page("Link expired", _EXPIRED, status=400)
        return redirect(
            upstream.authorize_url(
                provider, redirect_uri=rt.connections.callback_url, state=state,
                challenge=upstream.pkce_challenge(pending["verifier"]),
            )
        )  # fmt: skip

    async def callback(self, request: Request) -> Response:
        rt = self.runtime
        if rt is None or rt.connections is None:
            return page("Not available", "<p>The server is not serving.</p>", status=503)
        started = await rt.connections.store.finish(request.query_params.get("state", ""))
        browser = request.cookies.get(_COOKIE, "")
        if (
            started is None
            or started["browser"] is None
            or not hmac.compare_digest(digest(browser), started["browser"])
        ):
            return page("Link expired", _EXPIRED, status=400)
        provider = rt.connections.providers.get(started["provider"])
        code = request.query_params.get("code")
        if provider is None or not code:
            return page("Not connected", "<p>The provider did not grant access. Nothing was connected.</p>",
                        status=400)  # fmt: skip
        began = time.monotonic()
        try:
            grant = await upstream.exchange_code(
                provider, code=code, verifier=started["verifier"], redirect_uri=rt.connections.callback_url
            )
        except (upstream.GrantRejected, upstream.UpstreamUnavailable) as exc:
            rt.audit.record(tenant_id=started["tenant_id"], principal=started["principal"],
                            method="connections/connect", target=provider.name, outcome="error", reason=str(exc))  # fmt: skip
            return page("Not connected", f"<p>{html.escape(provider.label)} did not complete the connection. "
                        "Ask your assistant again for a new link.</p>", status=502)  # fmt: skip
        if await rt.control_plane.tenant_by_id(started["tenant_id"]) is None:
            return page("Link expired", _EXPIRED, status=400)
        await rt.connections.store.save(
            started["tenant_id"], provider.name, started["owner"], grant, started["principal"]
        )
        rt.audit.record(tenant_id=started["tenant_id"], principal=started["principal"], method="connections/connect",
                        target=provider.name, outcome="ok", duration_ms=(time.monotonic() - began) * 1000)  # fmt: skip
        return page(f"{provider.label} connected",
                    "<p>Connected. You can close this window and go back to your assistant.</p>")  # fmt: skip
