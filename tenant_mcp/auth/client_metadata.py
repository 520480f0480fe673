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

import asyncio
import ipaddress
import json
import socket
import ssl
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2

_FAILURE_SECONDS = 30.0


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
        max_documents: int = 1024,
        max_failures: int = 256,
    ) -> None:
        """`max_documents`: documents kept, the least recently used evicted first. `max_failures`:
        failed fetches remembered, apart, so a flood of bad client ids evicts only its own kind."""
        self.allow_private = allow_private
        self._verify = verify
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.cache_seconds = cache_seconds
        self.max_documents = max_documents
        self.max_failures = max_failures
        self._documents: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._failures: OrderedDict[str, float] = OrderedDict()
        self._pending: dict[str, asyncio.Future[dict[str, Any] | None]] = {}

    @staticmethod
    def is_url(client_id: str) -> bool:
        return client_id.startswith(("https://", "http://"))

    async def document(self, client_id: str) -> dict[str, Any] | None:
        now = time.monotonic()
        hit = self._documents.get(client_id)
        if hit is not None and hit[0] > now:
            self._documents.move_to_end(client_id)
            return hit[1]
        failed_until = self._failures.get(client_id)
        if failed_until is not None and failed_until > now:
            return None
        # Concurrent first requests for one URL share one fetch; a waiter that gives up (a
        # cancelled request) does not cancel it for the others.
        pending = self._pending.get(client_id)
        if pending is None:
            pending = self._pending[client_id] = asyncio.ensure_future(self._load(client_id))
            pending.add_done_callback(lambda _: self._pending.pop(client_id, None))
        return await asyncio.shield(pending)

    async def _load(self, client_id: str) -> dict[str, Any] | None:
        try:
            with anyio.fail_after(self.timeout):
                document = await self._fetch(client_id)
        except (TimeoutError, OSError, httpx2.HTTPError, ValueError):
            document = None
        if document is None:
            self._remember(self._failures, client_id, time.monotonic() + _FAILURE_SECONDS, self.max_failures)
        else:
            self._failures.pop(client_id, None)
            self._remember(
                self._documents,
                client_id,
                (time.monotonic() + self.cache_seconds, document),
                self.max_documents,
            )
        return document

    @staticmethod
    def _remember(cache: OrderedDict[str, Any], key: str, value: Any, limit: int) -> None:
        """Put `key` in `cache` as its most recent entry, evicting the least recently used past `limit`."""
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > limit:
            cache.popitem(last=False)

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
