"""Load generator, run in its own process so it does not share the server's interpreter.

It reads one JSON job per line on stdin and answers each with one JSON line on stdout, so the
harness pays for starting Python and importing httpx once, not once per round:

    {"url": ..., "tokens": [...], "requests": 1500, "concurrency": 8, "mode": "json",
     "method": "tools/call", "tool": "whoami", "arguments": {}}
    ->  {"rps": ..., "p50_ms": ..., "p99_ms": ..., "requests": ...}

With `"seconds": S` instead of a request count, each connection sends requests until S seconds
have passed: two generators started together then load two servers over the same interval
(the harness's paired mode).

Modes, one per way a client can speak to the server:
- `json`: stateless POSTs at protocol 2025-11-25, answered with `application/json`.
- `sse`: a session per connection (`initialize`, then `Mcp-Session-Id` on every call), answered
  with `text/event-stream`.
- `modern`: 2026-07-28 single-exchange POSTs: no session, the `_meta` envelope and the
  `Mcp-Method`/`Mcp-Name` headers on every request.
Tokens are used round-robin, one per request, so a job can spread over many tenants. Every
request gets a fresh JSON-RPC id, and every answer is checked: an error fails the job.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import sys
import time
from typing import Any

import httpx2

LEGACY = "2025-11-25"
MODERN = "2026-07-28"
_MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
}


def _answer(response: httpx2.Response, request_id: int) -> dict[str, Any]:
    """The JSON-RPC response for `request_id`, from a JSON body or an SSE stream."""
    if response.status_code != 200:
        raise SystemExit(f"bad response {response.status_code}: {response.text[:300]}")
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("id") == request_id:
                    return dict(message)
        raise SystemExit(f"no answer in the event stream: {response.text[:300]}")
    return dict(response.json())


class _Client:
    """One connection's worth of protocol state: headers, and for `sse` its session."""

    def __init__(self, http: httpx2.AsyncClient, job: dict[str, Any]) -> None:
        self.http = http
        self.job = job
        self.session: str | None = None

    def _headers(self, token: str, body: dict[str, Any]) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {token}"}
        if self.job["mode"] == "modern":
            headers |= {"MCP-Protocol-Version": MODERN, "Mcp-Method": body["method"]}
            if body["method"] == "tools/call":
                headers["Mcp-Name"] = body["params"]["name"]
        else:
            headers["MCP-Protocol-Version"] = LEGACY
        if self.session is not None:
            headers["Mcp-Session-Id"] = self.session
        return headers

    async def post(self, token: str, body: dict[str, Any]) -> httpx2.Response:
        return await self.http.post(
            self.job["url"], content=json.dumps(body), headers=self._headers(token, body)
        )

    async def open(self, token: str) -> None:
        if self.job["mode"] != "sse":
            return
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": LEGACY, "capabilities": {},
                           "clientInfo": {"name": "bench", "version": "1"}}}  # fmt: skip
        response = await self.post(token, init)
        _answer(response, 0)
        self.session = response.headers["mcp-session-id"]
        await self.post(token, {"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def close(self, token: str) -> None:
        if self.session is not None:
            await self.http.delete(self.job["url"], headers=self._headers(token, {"method": "delete"}))

    def body(self, request_id: int) -> dict[str, Any]:
        job = self.job
        params: dict[str, Any] = {}
        if job["method"] == "tools/call":
            params = {"name": job["tool"], "arguments": job.get("arguments") or {}}
        if job["mode"] == "modern":
            params["_meta"] = _MODERN_META
        return {"jsonrpc": "2.0", "id": request_id, "method": job["method"], "params": params}


async def run(job: dict[str, Any]) -> dict[str, float]:
    ids = itertools.count(1)
    tokens = itertools.cycle(job["tokens"])
    concurrency = int(job["concurrency"])
    latencies: list[float] = []
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(headers=headers, timeout=60, limits=limits) as http:
        first = job["tokens"][0]
        clients = [_Client(http, job) for _ in range(concurrency)]
        await asyncio.gather(*(client.open(first) for client in clients))  # sessions are not timed

        seconds = job.get("seconds")
        count = int(job.get("requests", 0)) // concurrency

        async def worker(client: _Client) -> None:
            sent = 0
            while (time.perf_counter() < deadline) if seconds else (sent < count):
                sent += 1
                request_id = next(ids)
                token = first if client.session is not None else next(tokens)
                started = time.perf_counter()
                answer = _answer(await client.post(token, client.body(request_id)), request_id)
                if "result" not in answer or answer["result"].get("isError"):
                    raise SystemExit(f"bad answer: {json.dumps(answer)[:300]}")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        deadline = started + float(seconds or 0)
        await asyncio.gather(*(worker(client) for client in clients))
        elapsed = time.perf_counter() - started
        await asyncio.gather(*(client.close(first) for client in clients))
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "requests": len(latencies),
    }


def main() -> None:
    for line in sys.stdin:
        print(json.dumps(asyncio.run(run(json.loads(line)))), flush=True)


if __name__ == "__main__":
    main()
