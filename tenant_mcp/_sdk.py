"""Every reach into the `mcp` SDK's private surface, in one place.

The framework needs a few things the SDK (2.x) has no public hook for. Each is one small function
here, named for what it does, so an SDK upgrade is checked against this file alone (the suite
fails loudly if an attribute moves: nothing here swallows an AttributeError).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context

C = TypeVar("C", bound=Context[Any, Any])

if TYPE_CHECKING:
    from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
    from mcp.server.lowlevel.server import Server
    from mcp.server.mcpserver import MCPServer
    from mcp.server.session import ServerSession
    from mcp.server.streamable_http import StreamableHTTPServerTransport
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager


def lowlevel(server: MCPServer[Any]) -> Server[Any]:
    """The low-level server under an `MCPServer`: where request handlers are registered."""
    return server._lowlevel_server


def before_request(
    server: MCPServer[Any], method: str, hook: Callable[[ServerRequestContext[Any, Any]], None]
) -> None:
    """Run `hook(ctx)` before the registered handler of `method` (the SDK's own handlers for
    `tools/list` and friends are private methods; this wraps them through the public registry)."""
    ll = lowlevel(server)
    entry = ll.get_request_handler(method)
    if entry is None:
        raise RuntimeError(f"the SDK registers no handler for {method}")
    handler = entry.handler

    async def hooked(ctx: ServerRequestContext[Any, Any], params: Any) -> Any:
        hook(ctx)
        return await handler(ctx, params)

    ll.add_request_handler(method, entry.params_type, hooked)


def on_session_end(session: ServerSession, callback: Callable[..., Any], *args: Any) -> None:
    """Call `callback(*args)` when the session ends (DELETE, idle timeout, shutdown): the SDK
    unwinds its connection's exit stack then, reachable from a handler only through the session."""
    session._connection.exit_stack.callback(callback, *args)


def derive_context(cls: type[C], base: Context[Any, Any]) -> C:
    """An instance of `cls` (a `Context` subclass) carrying the request state of the SDK's `Context`
    of this request. Built without running pydantic's validation again: the SDK's constructor
    only stores its four private fields, and copying them is a third of the cost."""
    ctx = cls.model_construct()
    private = ctx.__pydantic_private__
    assert private is not None and base.__pydantic_private__ is not None
    private.update(base.__pydantic_private__)
    return ctx


def session_open(manager: StreamableHTTPSessionManager, session_id: str) -> bool:
    """Whether the stateful session is still open (not ended by DELETE, idle timeout or a crash)."""
    return session_id in manager._server_instances


def open_sessions(manager: StreamableHTTPSessionManager) -> int:
    """How many stateful sessions the manager holds (a plain read: the metrics thread calls it)."""
    return len(manager._server_instances)


def on_session_admitted(manager: StreamableHTTPSessionManager, hook: Callable[[], None]) -> None:
    """Run `hook()` inside the request that opens a session, just before the SDK makes the session's
    transport (the pinned SDK's one place for it), e.g. to choose its event store."""
    admit: Callable[[AuthorizationContext | None], StreamableHTTPServerTransport | None]
    admit = manager._admit_session

    def admit_with(requestor: AuthorizationContext | None) -> StreamableHTTPServerTransport | None:
        hook()
        return admit(requestor)

    setattr(manager, "_admit_session", admit_with)  # noqa: B010 - mypy refuses assigning to a method
