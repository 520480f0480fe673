"""stdio transport: one process, one tenant, authenticated by `TENANT_MCP_API_KEY` before serving.

Desktop assistants launch local servers as subprocesses and talk over stdin/stdout, with no
headers to carry a credential, so the key comes from the environment. It is verified before the
first message is read; a missing or bad key ends the process with a message on stderr. The
pipeline verifies it again once its cache window passes, so revoking the key or suspending the
tenant also stops a long-running stdio session.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser

from tenant_mcp.auth.jwt import JWTSettings
from tenant_mcp.errors import AuthenticationError, ConfigurationError
from tenant_mcp.runtime import Runtime
from tenant_mcp.scoping.server import ScopedServer

API_KEY_VARIABLE = "TENANT_MCP_API_KEY"


async def serve(
    server: ScopedServer,
    running: Callable[..., AbstractAsyncContextManager[Runtime]],
    *,
    api_key: str | None = None,
    jwt: JWTSettings | None = None,
) -> None:
    """Serve `server` over stdin/stdout as the tenant of `api_key` (default: the environment's)."""
    credential = api_key if api_key is not None else os.environ.get(API_KEY_VARIABLE, "")
    if not credential.strip():
        raise ConfigurationError(
            f"stdio needs a credential: set {API_KEY_VARIABLE} to one of the tenant's API keys"
        )
    async with running(jwt=jwt) as runtime:
        try:
            token = await runtime.authenticator.authenticate(credential.strip())
        except AuthenticationError:
            raise ConfigurationError(
                f"{API_KEY_VARIABLE} was refused: the key is unknown or revoked, or its tenant is suspended"
            ) from None
        # Set before the transport starts its tasks, so every message inherits it.
        reset = auth_context_var.set(AuthenticatedUser(token))
        try:
            await server.run_stdio_async()
        finally:
            auth_context_var.reset(reset)
