"""The baseline: the bare `mcp` SDK `MCPServer` with the same `whoami` tool and a trivial
`TokenVerifier` that accepts one static bearer token, so both sides authenticate."""

from __future__ import annotations

import os
import sys

import uvicorn
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

TOKEN = "bench-static-token"


class StaticVerifier:
    async def verify_token(self, token: str) -> AccessToken | None:
        if token == TOKEN:
            return AccessToken(token=token, client_id="bench", scopes=[], subject="bench")
        return None


def build(port: int) -> MCPServer:
    mcp = MCPServer(
        "bare",
        token_verifier=StaticVerifier(),
        auth=AuthSettings.model_validate(
            {"issuer_url": "http://127.0.0.1:9", "resource_server_url": f"http://127.0.0.1:{port}/mcp",
             "validate_token_resource": False}
        ),
    )  # fmt: skip

    @mcp.tool()
    async def whoami() -> dict[str, str]:
        return {"tenant": "bench", "subject": "bench"}

    return mcp


if __name__ == "__main__":
    port = int(sys.argv[1])
    stateless = os.environ.get("BENCH_MODE", "stateless-json") == "stateless-json"
    app = build(port).streamable_http_app(stateless_http=stateless, json_response=stateless)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
