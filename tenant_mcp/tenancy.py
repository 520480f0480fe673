"""Per-request tenancy: resolve the tenant once per MCP message, refuse overrides, audit.

`TenancyMiddleware` is the outermost of our MCP middleware. For every inbound message it reads the
verified credential (set by the HTTP gate or the stdio runner), re-checks it when older than the
authenticator's cache window (long-lived stdio sessions, so revocation still bites), refuses any
attempt by the client or model to name a tenant, and records one audit event per request.

The resolved call lives in a ContextVar, which the SDK carries with each message into the handler
task, so concurrent requests of different tenants never see each other's tenant.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST

from tenant_mcp.auth.authenticator import TenantAccessToken
from tenant_mcp.errors import AuthenticationError
from tenant_mcp.leakguard import Hit, LeakGuard, serialize
from tenant_mcp.models import Principal, Tenant

if TYPE_CHECKING:
    from mcp.server.context import CallNext, HandlerResult, ServerRequestContext

    from tenant_mcp.app import Runtime

logger = logging.getLogger("tenant_mcp.leakguard")

# Messages that carry no tenant data and are needed before a client can do anything.
_OPEN_METHODS = frozenset({"initialize", "notifications/initialized", "ping", "server/discover"})

# Argument, `_meta` and header names that try to choose a tenant. Compared after lowercasing and
# dropping '-', '_' and '.', so `Tenant-Id`, `tenant_id` and `tenantId` all match.
TENANT_WORDS = frozenset(
    {
        "tenant", "tenantid", "tenantslug", "tenantname", "org", "orgid", "organization",
        "organizationid", "organisationid", "accountid", "customerid", "workspaceid", "xtenantid",
        "xtenant", "xorgid", "xorganizationid", "xaccountid",
    }
)  # fmt: skip


def _norm(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(".", "")


def names_tenant(name: str) -> bool:
    """True for a name that selects a tenant: `tenant_id`, `X-Tenant-Id`, `io.acme/tenant`..."""
    last = _norm(name.rsplit("/", 1)[-1])
    return last in TENANT_WORDS or last.startswith("tenant")


@dataclass(slots=True)
class Call:
    """The tenant and principal of the request being handled, and what the audit should say."""

    tenant: Tenant
    principal: Principal
    denied: str | None = None  # set by the server when it answers "unknown" for a hidden item


_current: contextvars.ContextVar[Call | None] = contextvars.ContextVar("tenant_mcp_call", default=None)


def current_call() -> Call | None:
    return _current.get()


def principal_label(principal: Principal) -> str:
    return f"key:{principal.key_id}" if principal.key_id else f"jwt:{principal.subject}"


def _target(method: str, params: Mapping[str, Any]) -> str | None:
    if method in ("tools/call", "prompts/get"):
        return str(params.get("name"))
    if method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
        return str(params.get("uri"))
    if method == "completion/complete":
        ref = params.get("ref")
        if isinstance(ref, Mapping):
            return str(ref.get("name") or ref.get("uri"))
    return None


def _arguments(method: str, params: Mapping[str, Any]) -> Any:
    if method in ("tools/call", "prompts/get"):
        return params.get("arguments")
    if method == "completion/complete":
        return params.get("argument")
    return None


LEAK_BLOCKED = "leak blocked"
WITHHELD = "The response was withheld because it contained data of another tenant. The event was recorded."


class TenancyMiddleware:
    def __init__(
        self,
        runtime: Callable[[], Runtime | None],
        declared: Callable[[str, str, Tenant, Principal], Container[str]],
    ) -> None:
        self._runtime = runtime
        # declared(method, name, tenant, principal): the parameter names that item accepts
        self._declared = declared

    async def _principal(self, ctx: ServerRequestContext[Any, Any], rt: Runtime) -> TenantAccessToken | None:
        token = get_access_token()
        if not isinstance(token, TenantAccessToken):
            return None
        if time.monotonic() - token.verified_at > rt.authenticator.cache_seconds:
            try:
                token = await rt.authenticator.authenticate(token.token)
            except AuthenticationError as exc:
                rt.audit.record(
                    tenant_id=token.tenant.id,
                    principal=principal_label(token.principal),
                    method=ctx.method,
                    outcome="denied",
                    reason=str(exc),
                )
                return None
        return token

    def _override(self, method: str, params: Mapping[str, Any], call: Call) -> str | None:
        meta = params.get("_meta")
        if isinstance(meta, Mapping):
            for key in meta:
                if not key.startswith("io.modelcontextprotocol/") and names_tenant(key):
                    return f"_meta.{key}"
        arguments = params.get("arguments")
        if method in ("tools/call", "prompts/get") and isinstance(arguments, Mapping):
            suspects = [k for k in arguments if isinstance(k, str) and names_tenant(k)]
            if suspects:
                declared = self._declared(method, str(params.get("name")), call.tenant, call.principal)
                for key in suspects:
                    if key not in declared:
                        return f"arguments.{key}"
        return None

    def _guard_outbound(
        self,
        rt: Runtime,
        guard: LeakGuard,
        call: Call,
        method: str,
        params: Mapping[str, Any],
        result: HandlerResult,
    ) -> HandlerResult:
        """Scan a response for other tenants' markers and apply the policy."""
        if not isinstance(result, Mapping):
            return result
        body = {k: v for k, v in result.items() if k != "_meta"}  # server info is the same for all
        hits = guard.scan(serialize(body), call.tenant.id)
        if not hits:
            return result
        self._record_leak(rt, guard, call, method, params, hits)
        if guard.policy == "block":
            call.denied = LEAK_BLOCKED
            raise MCPError(code=INTERNAL_ERROR, message=WITHHELD)
        if guard.policy == "redact":
            redacted: dict[str, Any] = guard.redact(body, hits)
            if "_meta" in result:
                redacted["_meta"] = result["_meta"]
            return redacted
        return result

    @staticmethod
    def _record_leak(
        rt: Runtime, guard: LeakGuard, call: Call, method: str, params: Mapping[str, Any], hits: list[Hit]
    ) -> None:
        """One `leak` event in each tenant's trail: what kind of marker, whose, which item. Never
        the marker itself."""
        guard.hits += 1
        target = _target(method, params)
        for owner, kind in sorted({(hit.owner, hit.kind) for hit in hits}):
            rt.audit.record(
                tenant_id=call.tenant.id, principal=principal_label(call.principal), method=method, target=target,
                outcome="leak", reason=f"{kind} marker of tenant {owner} in the response; policy {guard.policy}",
            )  # fmt: skip
            rt.audit.record(
                tenant_id=owner, principal=None, method=method, target=target, outcome="leak",
                reason=f"{kind} marker of this tenant in a response to tenant {call.tenant.id}; policy {guard.policy}",
            )  # fmt: skip
        logger.warning(
            "leak guard: %d foreign marker(s) in %s %s (policy %s)", len(hits), method, target, guard.policy
        )

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        method = ctx.method
        rt = self._runtime()
        token = await self._principal(ctx, rt) if rt is not None else None
        if rt is None or token is None:
            if method in _OPEN_METHODS:
                return await call_next(ctx)
            raise MCPError(code=INVALID_REQUEST, message="Authentication required")
        if method.startswith("notifications/"):
            reset = _current.set(Call(token.tenant, token.principal))
            try:
                return await call_next(ctx)
            finally:
                _current.reset(reset)

        params: Mapping[str, Any] = ctx.params if isinstance(ctx.params, Mapping) else {}
        call = Call(token.tenant, token.principal)
        started = time.perf_counter()
        outcome, reason = "ok", None
        override = self._override(method, params, call)
        try:
            if override is not None:
                outcome, reason = "denied", f"tenant override attempt: {override}"
                raise MCPError(
                    code=INVALID_PARAMS,
                    message=f"'{override}' is not accepted: the server sets the tenant from your credentials",
                )
            reset = _current.set(call)
            try:
                async with await rt.limiter.admit(call, method, params):  # refuses before the handler runs
                    result = await call_next(ctx)
            finally:
                _current.reset(reset)
            if rt.leak_guard is not None:
                result = self._guard_outbound(rt, rt.leak_guard, call, method, params, result)
            if call.denied is not None:
                outcome, reason = "denied", call.denied
            elif isinstance(result, Mapping) and result.get("isError"):
                outcome = "error"
            return result
        except MCPError as exc:
            if rt.leak_guard is not None and call.denied != LEAK_BLOCKED:
                hits = rt.leak_guard.scan(exc.error.message, call.tenant.id)
                if hits:
                    self._record_leak(rt, rt.leak_guard, call, method, params, hits)
                    if rt.leak_guard.policy != "report":
                        exc.error.message, exc.error.data = WITHHELD, None
            if outcome == "ok":
                outcome, reason = ("denied", call.denied) if call.denied else ("error", exc.error.message)
            raise
        except BaseException as exc:
            outcome, reason = "error", type(exc).__name__
            raise
        finally:
            rt.audit.record(
                tenant_id=token.tenant.id,
                principal=principal_label(token.principal),
                method=method,
                target=_target(method, params),
                outcome=outcome,
                reason=reason,
                duration_ms=(time.perf_counter() - started) * 1000,
                arguments=_arguments(method, params),
            )
