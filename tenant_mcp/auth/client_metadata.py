"""Client ID Metadata Documents (MCP authorization, 2026-07-28): a client may use an HTTPS URL as
its `client_id`; the document at that URL describes it (name, redirect URIs), so no registration
is needed.

Fetching a URL that anyone can name is a server-side request forgery risk, so the fetch is
guarded: `https` only; every address the host resolves to must be public (no loopback, private,
link-local, multicast or reserved range) and the connection goes to the checked address (no
second lookup an attacker's DNS could answer differently); no redirects; a size and a time
limit. Documents are cached (successes for `cache_seconds`, failures briefly) so a flood of
authorization requests does not become a flood of fetches. `allow_private` lifts the address
rule and allows `http` to loopback, for tests only.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2

_FAILURE_SECONDS = 30.0
_MAX_CACHED = 1024


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class ClientMetadataFetcher:
    """Fetches and caches client metadata documents; `document` answers the JSON object or None."""

    def __init__(
        self,
        *,
        allow_private: bool = False,
        timeout: float = 5.0,
        max_bytes: int = 10 * 1024,
        cache_seconds: float = 300.0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.allow_private = allow_private
        self._verify = verify
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}

    @staticmethod
    def is_url(client_id: str) -> bool:
        return client_id.startswith(("https://", "http://"))

    async def document(self, client_id: str) -> dict[str, Any] | None:
        hit = self._cache.get(client_id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        try:
            with anyio.fail_after(self.timeout):
                document = await self._fetch(client_id)
        except (TimeoutError, OSError, httpx2.HTTPError, ValueError):
            document = None
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        ttl = self.cache_seconds if document is not None else _FAILURE_SECONDS
        self._cache[client_id] = (time.monotonic() + ttl, document)
        return document

    async def _fetch(self, url: str) -> dict[str, Any] | None:
        parts = urlsplit(url)
        host = parts.hostname
        if (
            host is None
            or "@" in parts.netloc
            or parts.fragment
            or "#" in url
            or not parts.path.strip("/")
            or "/./" in parts.path + "/"
            or "/../" in parts.path + "/"
        ):
            return None
        loopback = host in ("localhost", "127.0.0.1", "::1")
        if not (parts.scheme == "https" or (self.allow_private and parts.scheme == "http" and loopback)):
            return None
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [str(info[4][0]) for info in infos]
        if not addresses or not (self.allow_private or all(_public(a) for a in addresses)):
            return None
        address = addresses[0]
        literal = f"[{address}]" if ":" in address else address
        pinned = parts._replace(netloc=f"{literal}:{port}").geturl()
        async with (
            httpx2.AsyncClient(
                follow_redirects=False, trust_env=False, timeout=self.timeout, verify=self._verify
            ) as http,
            http.stream(
                "GET",
                pinned,
                headers={"Host": parts.netloc, "Accept": "application/json"},
                extensions={"sni_hostname": host} if parts.scheme == "https" else {},
            ) as response,
        ):
            if response.status_code != 200:
                return None
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self.max_bytes:
                    return None
        document = json.loads(body)
        if not isinstance(document, dict) or document.get("client_id") != url:
            return None
        return document
