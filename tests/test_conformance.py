"""The official MCP conformance suite (server mode) against `example_servers/everything.py`,
through the tenant layer.

The suite sends no credentials, so an authenticating reverse proxy sits in front: it forwards
every request unchanged (streaming, Host and Origin included, so the suite's DNS-rebinding check
reaches the server) and adds one tenant's key. The framework itself has no unauthenticated mode.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx2
import pytest
import uvicorn
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from tests.helpers import ServerProcess, Tenants, free_port
from tests.nodejs import JS, node_bin_dir, node_env, require_js_tools

BASELINE = Path(__file__).resolve().parent / "conformance" / "expected-failures.yml"
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "content-length",
    "accept-encoding",
}


class AuthProxy:
    """ASGI app: forward to `upstream`, adding `Authorization: Bearer <key>`, streaming both ways."""

    def __init__(self, upstream: str, key: str) -> None:
        self.upstream = upstream
        self.key = key
        self.client = httpx2.AsyncClient(timeout=httpx2.Timeout(120, connect=5))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        headers = [
            (k, v) for k, v in request.headers.items() if k not in _HOP_BY_HOP and k != "authorization"
        ]
        headers.append(("authorization", f"Bearer {self.key}"))
        upstream = self.client.build_request(
            request.method, self.upstream + request.url.path, params=request.query_params,
            headers=headers, content=await request.body(),
        )  # fmt: skip
        response = await self.client.send(upstream, stream=True)

        async def body() -> AsyncIterator[bytes]:
            async for chunk in response.aiter_raw():
                yield chunk

        out_headers = {k: v for k, v in response.headers.items() if k not in _HOP_BY_HOP}
        await StreamingResponse(
            body(),
            status_code=response.status_code,
            headers=out_headers,
            background=BackgroundTask(response.aclose),
        )(scope, receive, send)


@pytest.fixture(scope="module")
def proxied_everything(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = f"sqlite:///{tmp_path_factory.mktemp('conformance')}/cp.db"
    tenants = Tenants(db)
    tenants.create("conformance")
    key = tenants.key("conformance")
    port = free_port()
    # The proxy forwards the client's Host (the proxy's own address): allowed like a public name.
    server = ServerProcess(
        "example_servers.everything:app", db, "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}"
    )
    proxy = uvicorn.Server(
        uvicorn.Config(AuthProxy(server.base, key), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=proxy.run, daemon=True)
    thread.start()
    while not proxy.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/mcp"
    proxy.should_exit = True
    thread.join(10)
    server.stop()


def test_official_conformance_suite_passes_through_the_tenant_layer(proxied_everything: str) -> None:
    require_js_tools()
    cli = JS / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
    result = subprocess.run(
        [str(node_bin_dir() / "node"), str(cli), "server", "--url", proxied_everything,
         "--expected-failures", str(BASELINE)],
        cwd=JS, env=node_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    summary = result.stdout[result.stdout.find("=== SUMMARY ===") :]
    print(summary)
    assert result.returncode == 0, f"{summary}\n{result.stderr[-3000:]}"
    passed = [line for line in summary.splitlines() if line.lstrip().startswith("✓")]
    assert len(passed) >= 30, f"expected every active scenario to run and pass:\n{summary}"
