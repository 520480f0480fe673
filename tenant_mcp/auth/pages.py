"""The HTML pages a person's browser sees (the OAuth sign-in, the upstream connect page): never
framed (clickjacking), never cached, no referrer, no script, forms posting only where they must."""

from __future__ import annotations

import html
from urllib.parse import urlsplit

from starlette.responses import HTMLResponse, RedirectResponse, Response

_PAGE_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def _form_action(redirect_uri: str) -> str:
    """CSP `form-action` also governs the redirect after the POST, so it must name the client's
    redirect target (and nothing else) besides this server."""
    parts = urlsplit(redirect_uri)
    target = f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") else f"{parts.scheme}:"
    return f"form-action 'self' {target}"


def redirect(url: str) -> Response:
    return RedirectResponse(
        url, status_code=302, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    )


def page(title: str, body: str, *, status: int = 200, redirect_uri: str | None = None) -> HTMLResponse:
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 32rem; margin: 3rem auto; padding: 0 1rem; color: #1a1a1a; }}
h1 {{ font-size: 1.4rem; }} code {{ background: #f2f2f2; padding: 0 .25rem; }}
label {{ display: block; margin-top: 1rem; font-weight: 600; }}
input {{ width: 100%; padding: .5rem; font-size: 1rem; box-sizing: border-box; }}
.actions {{ margin-top: 1rem; display: flex; gap: .5rem; }}
button {{ padding: .5rem 1.2rem; font-size: 1rem; }} .error {{ color: #a00; }}
</style></head>
<body><main><h1>{html.escape(title)}</h1>{body}</main></body></html>"""
    headers = dict(_PAGE_HEADERS)
    action = _form_action(redirect_uri) if redirect_uri else "form-action 'none'"
    headers["Content-Security-Policy"] = f"{headers['Content-Security-Policy']}; {action}"
    return HTMLResponse(document, status_code=status, headers=headers)
