"""A real (small) OAuth 2.1 provider and API, run as its own process by the connection tests.

- ``GET /authorize``: the person is whoever the provider's own cookie ``upstream_user`` names (the
  account they are signed in with there); checks the client, redirect URI and S256 challenge, then
  redirects back with a single-use code (for accounts named ``*-clicks``: after the person
  approves on a page of the provider's, as real providers do).
- ``POST /token``: client authentication (HTTP Basic), the authorization-code grant (PKCE
  verified) and the refresh grant (rotating refresh tokens; a used one is refused). For accounts
  named ``*-static`` refresh tokens do not rotate: a refresh answer carries none (RFC 6749 allows
  it) and the old one must be kept.
- ``GET /api/whoami``: the API. Records which token called it, answers the account it belongs to.
- ``/admin/...``: the test's levers: expire a user's access tokens, revoke everything of a user,
  read the call log and how many refreshes happened.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import secrets
import time
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

CLIENT_ID = "tenant-mcp-test"
CLIENT_SECRET = "upstream-client-secret-9f2c"
ACCESS_SECONDS = float(os.environ.get("UPSTREAM_ACCESS_SECONDS", "3600"))
REDIRECT_URI = os.environ.get("UPSTREAM_REDIRECT_URI", "")

codes: dict[str, dict[str, Any]] = {}
access: dict[str, dict[str, Any]] = {}  # token -> {user, expires_at, revoked}
refresh: dict[str, dict[str, Any]] = {}  # token -> {user, used, revoked}
calls: list[dict[str, str]] = []
refreshes: dict[str, int] = {}


def _error(status: int, error: str) -> JSONResponse:
    return JSONResponse({"error": error}, status_code=status)


async def authorize(request: Request) -> Response:
    q = request.query_params if request.method == "GET" else await request.form()
    if q.get("client_id") != CLIENT_ID or q.get("redirect_uri") != REDIRECT_URI:
        return _error(400, "invalid_client")
    if (
        q.get("response_type") != "code"
        or q.get("code_challenge_method") != "S256"
        or not q.get("code_challenge")
    ):
        return _error(400, "invalid_request")
    user = request.cookies.get("upstream_user")
    if not user:
        return Response("sign in first", status_code=401)
    if request.method == "GET" and user.endswith("-clicks"):
        # as real providers do: a page of its own where the person approves (a cross-site form post)
        fields = "".join(f'<input type="hidden" name="{k}" value="{html.escape(v)}">' for k, v in q.items())
        return HTMLResponse(
            f'<title>Approve</title><form method="post">{fields}<button>Approve</button></form>'
        )
    code = secrets.token_urlsafe(16)
    codes[code] = {"user": user, "challenge": q["code_challenge"], "redirect_uri": q["redirect_uri"],
                   "scope": q.get("scope", "")}  # fmt: skip
    return RedirectResponse(f"{REDIRECT_URI}?{urlencode({'code': code, 'state': q.get('state', '')})}", 302)


def _issue(user: str, *, refreshing: bool = False) -> dict[str, Any]:
    token, renew = f"up-at-{user}-{secrets.token_urlsafe(18)}", f"up-rt-{user}-{secrets.token_urlsafe(18)}"
    access[token] = {"user": user, "expires_at": time.time() + ACCESS_SECONDS, "revoked": False}
    answer = {"access_token": token, "token_type": "Bearer", "expires_in": ACCESS_SECONDS}
    if refreshing and user.endswith("-static"):
        return answer
    refresh[renew] = {"user": user, "used": False, "revoked": False}
    return {**answer, "refresh_token": renew}


async def token(request: Request) -> Response:
    expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    if request.headers.get("authorization") != expected:
        return _error(401, "invalid_client")
    form = await request.form()
    if form.get("grant_type") == "authorization_code":
        grant = codes.pop(str(form.get("code", "")), None)
        verifier = str(form.get("code_verifier", ""))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if (
            grant is None
            or grant["challenge"] != challenge
            or grant["redirect_uri"] != form.get("redirect_uri")
        ):
            return _error(400, "invalid_grant")
        return JSONResponse(_issue(grant["user"]))
    if form.get("grant_type") == "refresh_token":
        held = refresh.get(str(form.get("refresh_token", "")))
        if held is None or held["used"] or held["revoked"]:
            return _error(400, "invalid_grant")
        held["used"] = not held["user"].endswith("-static")
        refreshes[held["user"]] = refreshes.get(held["user"], 0) + 1
        return JSONResponse(_issue(held["user"], refreshing=True))
    return _error(400, "unsupported_grant_type")


async def whoami(request: Request) -> Response:
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    held = access.get(presented) if scheme == "Bearer" else None
    headers = {k: v for k, v in request.headers.items() if k != "authorization"}
    calls.append({"token": presented, "user": held["user"] if held else "", "headers": headers})
    if held is None or held["revoked"] or held["expires_at"] < time.time():
        return _error(401, "invalid_token")
    return JSONResponse({"user": held["user"]})


async def admin(request: Request) -> Response:
    action, user = request.path_params["action"], request.query_params.get("user", "")
    if action == "expire":
        for held in access.values():
            if held["user"] == user:
                held["expires_at"] = 0
    elif action == "revoke":
        for table in (access, refresh):
            for held in table.values():
                if held["user"] == user:
                    held["revoked"] = True
    return JSONResponse({"calls": calls, "refreshes": refreshes})


app = Starlette(routes=[
    Route("/authorize", authorize, methods=["GET", "POST"]),
    Route("/token", token, methods=["POST"]),
    Route("/api/whoami", whoami),
    Route("/admin/{action}", admin, methods=["GET", "POST"]),
])  # fmt: skip
