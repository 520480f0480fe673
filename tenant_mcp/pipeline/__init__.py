"""The request pipeline: what every MCP request passes through, once, in one direction.

The transport has verified the credential (the HTTP gate per request, the stdio runner once per
process) and put the resulting token where the SDK keeps it. `Pipeline` is the SDK middleware
that takes it from there:

1. the token -> the request's `Call` (tenant, principal, the catalogue entry it names, looked up
   once); a token older than the credential cache window is verified again first (stdio: so a
   revoked key or a suspended tenant also ends a long-running process's access);
2. the steps, outermost first, composed in `_compose` (one line per concern);
3. the SDK's handler, which answers from the scoped server (`tenant_mcp.scoping.server`);
4. the observers (audit, telemetry), told how the request ended.

The `Call` is the current call (a context variable the SDK carries into the handler's task) for
as long as the request runs, so concurrent requests of different tenants never see each other's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_REQUEST

from tenant_mcp.auth.authenticator import TenantAccessToken
from tenant_mcp.call import Call, serving
from tenant_mcp.errors import AuthenticationError
from tenant_mcp.pipeline.leaks import GuardLeaks
from tenant_mcp.pipeline.limits import Admit
from tenant_mcp.pipeline.overrides import RefuseOverrides
from tenant_mcp.pipeline.record import AuditRecord, TelemetryRecord
from tenant_mcp.pipeline.step import Next, Observer, Outcome, Result, Step, Verdict
from tenant_mcp.pipeline.target import target_of
from tenant_mcp.scoping.catalogue import Catalogue

if TYPE_CHECKING:
    from mcp.server.context import CallNext, HandlerResult, ServerRequestContext

    from tenant_mcp.runtime import Runtime

# Messages that carry no tenant data and are needed before a client can do anything.
_OPEN_METHODS = frozenset({"initialize", "notifications/initialized", "ping", "server/discover"})


def _compose(rt: Runtime) -> tuple[list[Step], list[Observer]]:
    """The concerns of every request, outermost first. A new concern is a new step here."""
    steps: list[Step] = []
    if rt.leak_guard is not None:
        steps.append(GuardLeaks(rt.leak_guard, rt.audit, rt.telemetry))  # sees every answer, errors too
    steps.append(RefuseOverrides())  # before anything of the request runs
    steps.append(Admit(rt.limiter))  # rates, concurrency, quotas: refused before the handler
    return steps, [AuditRecord(rt.audit), TelemetryRecord(rt.telemetry)]


class Pipeline:
    """The SDK middleware in front of every handler. Built with the server; `start(runtime)`
    composes its steps when the server starts serving, `stop()` when it ends."""

    def __init__(self, catalogue: Catalogue) -> None:
        self._catalogue = catalogue
        self._rt: Runtime | None = None
        self._steps: Sequence[Step] = ()
        self._observers: Sequence[Observer] = ()

    def start(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._steps, self._observers = _compose(runtime)

    def stop(self) -> None:
        self._rt = None
        self._steps = self._observers = ()

    async def _token(self, rt: Runtime, method: str) -> TenantAccessToken | None:
        """The verified token of this request, verified again when older than the cache window."""
        token = get_access_token()
        if not isinstance(token, TenantAccessToken):
            return None
        if time.monotonic() - token.verified_at > rt.authenticator.cache_seconds:
            try:
                token = await rt.authenticator.authenticate(token.token)
            except AuthenticationError as exc:
                rt.audit.record(
                    tenant_id=token.tenant.id, principal=token.principal.label, method=method,
                    outcome="denied", reason=str(exc),
                )  # fmt: skip
                return None
        return token

    def _call(self, token: TenantAccessToken, method: str, params: Mapping[str, Any]) -> Call:
        call = Call(token.tenant, token.principal, method, params)
        if method == "tools/call":
            call.entry = self._catalogue.tools.visible(str(call.name), call.tenant, call.principal)
        elif method == "prompts/get":
            call.entry = self._catalogue.prompts.visible(str(call.name), call.tenant, call.principal)
        return call

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        method = ctx.method
        rt = self._rt
        token = await self._token(rt, method) if rt is not None else None
        if token is None:
            if method in _OPEN_METHODS:
                return await call_next(ctx)
            raise MCPError(code=INVALID_REQUEST, message="Authentication required")
        params: Mapping[str, Any] = ctx.params if isinstance(ctx.params, Mapping) else {}
        call = self._call(token, method, params)
        if method.startswith("notifications/"):
            with serving(call):
                return await call_next(ctx)

        steps, observers = self._steps, self._observers

        async def run(i: int) -> Result:
            if i == len(steps):
                return await call_next(ctx)
            return await steps[i](call, lambda: run(i + 1))

        for observer in observers:
            observer.started(call)
        started = time.perf_counter()
        verdict: Verdict = "ok"
        reason: str | None = None
        try:
            with serving(call):
                result: HandlerResult = await run(0)
            if call.denied is not None:
                verdict, reason = "denied", call.denied
            elif isinstance(result, Mapping) and result.get("isError"):
                verdict = "error"
            return result
        except MCPError as exc:
            verdict, reason = ("denied", call.denied) if call.denied else ("error", exc.error.message)
            raise
        except BaseException as exc:
            verdict, reason = "error", type(exc).__name__
            raise
        finally:
            outcome = Outcome(
                verdict,
                reason,
                (time.perf_counter() - started) * 1000,
                target_of(method, params),
                ctx.request_id,
            )
            for observer in observers:
                observer.finished(call, outcome)


__all__ = ["Next", "Pipeline", "Step"]
