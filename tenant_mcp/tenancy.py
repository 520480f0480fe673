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
import functools
import logging
import re
import time
import unicodedata
from collections.abc import Callable, Container, Iterator, Mapping
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

# Argument, `_meta` and header names that try to choose a tenant. Compared as a person reads them
# (see `_fold`), so `Tenant-Id`, `tenant_id`, `tenantId` and their look-alikes all match.
TENANT_WORDS = frozenset(
    {
        "tenant", "tenantid", "tenantslug", "tenantname", "org", "orgid", "organization",
        "organizationid", "organisationid", "accountid", "customerid", "workspaceid", "xtenantid",
        "xtenant", "xorgid", "xorganizationid", "xaccountid",
    }
)  # fmt: skip


# Letters of other scripts that look like Latin ones (after casefolding), for the tenant words.
_HOMOGLYPHS = str.maketrans(
    {
        **dict(zip("авеіјкмнопрстухѕԁԛԝһӏ", "abeijkmhonpctyxsdqwhl", strict=True)),  # Cyrillic
        **dict(zip("αβγεηικνορτυχω", "abyenikvoptuxw", strict=True)),  # Greek
        **dict(zip("օսցհոɡıȷ", "oughngij", strict=True)),  # Armenian, Latin extensions
    }
)
_MAX_DEPTH = 32  # levels of arguments or `_meta` searched for tenant names; deeper is refused


def _fold(name: str) -> str:
    """`name` as a person reads it: compatibility forms (full-width, ligatures) decomposed, accents,
    zero-width and other format characters dropped, case folded, look-alike letters mapped."""
    if name.isascii():
        return name.lower()
    chars = unicodedata.normalize("NFKD", name)
    kept = "".join(c for c in chars if unicodedata.category(c)[0] != "M" and unicodedata.category(c) != "Cf")
    return kept.casefold().translate(_HOMOGLYPHS)


_SEPARATORS = re.compile(r"[\W_]+")


def _norm(name: str) -> str:
    return _SEPARATORS.sub("", _fold(name))


@functools.lru_cache(maxsize=4096)  # argument names repeat (a list of 1,000 objects has few keys)
def names_tenant(name: str) -> bool:
    """True for a name that selects a tenant: `tenant_id`, `X-Tenant-Id`, `io.acme/tenant`,
    `com.example.tenant_id`, their full-width or Cyrillic look-alikes... Separators are dropped, and
    every dotted suffix of the last `/` or `:` segment is tried, so a namespace in front hides nothing.
    """
    parts = re.split(r"[/:]", _fold(name))[-1].split(".")
    for i in range(len(parts)):
        word = _SEPARATORS.sub("", "".join(parts[i:]))
        if word in TENANT_WORDS or word.startswith("tenant"):
            return True
    return False


def schema_names(schema: Any) -> set[str]:
    """Every property name declared anywhere in a JSON schema (nested objects, `$defs`, items)."""
    names: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            properties = node.get("properties")
            if isinstance(properties, Mapping):
                names.update(k for k in properties if isinstance(k, str))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return names


def _suspect(value: Any) -> bool:
    """True if a key under `value` may name a tenant or it nests too deep: the fast walk every
    request takes (no paths built), before `_tenant_keys` says where."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth >= _MAX_DEPTH:
            return True
        if isinstance(node, dict):
            for key in node:
                if names_tenant(str(key)):
                    return True
            node = node.values()
        for child in node:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def _tenant_keys(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(path, key) of every mapping key under `value` that names a tenant. Deeper than `_MAX_DEPTH`
    levels is refused rather than left unsearched."""
    if not isinstance(value, dict | list) or not _suspect(value):  # parsed JSON: dicts and lists
        return
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        node, where, depth = stack.pop()
        if isinstance(node, dict | list) and depth >= _MAX_DEPTH:
            raise MCPError(code=INVALID_PARAMS, message=f"{path} nested deeper than {_MAX_DEPTH} levels")
        if isinstance(node, dict):
            for key, child in node.items():
                key = str(key)
                if names_tenant(key):
                    yield f"{where}.{key}", key
                stack.append((child, f"{where}.{key}", depth + 1))
        elif isinstance(node, list):
            stack.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(node))


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


def _sent(params: Mapping[str, Any]) -> dict[str, Any]:
    """What the caller sent (name, URI, arguments): markers in it are not a leak when reflected."""
    return {k: v for k, v in params.items() if k != "_meta"}


LEAK_BLOCKED = "leak blocked"
# Neutral on purpose: another tenant's marker or a secret of the caller's own tenant.
WITHHELD = "The response was withheld because it contained data that may not leave the server. The event was recorded."


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
        """Where the request names a tenant (`_meta` keys in any namespace, argument names at any
        depth that the item does not declare), or None."""
        for where, _ in _tenant_keys(params.get("_meta"), "_meta"):
            return where
        if method in ("tools/call", "prompts/get"):
            declared: Container[str] | None = None
            for where, key in _tenant_keys(params.get("arguments"), "arguments"):
                if declared is None:
                    declared = self._declared(method, str(params.get("name")), call.tenant, call.principal)
                if key not in declared:
                    return where
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
        hits = guard.scan(serialize(body), call.tenant.id, sent=_sent(params))
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
        rt.telemetry.leak(call.tenant)
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
            "leak guard: %d foreign marker(s) in %s %.200s (policy %s)",
            len(hits),
            method,
            target,
            guard.policy,
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
        label = principal_label(token.principal)
        rt.telemetry.begin(token.tenant, token.principal, label)
        started = time.perf_counter()
        outcome, reason = "ok", None
        try:
            override = self._override(method, params, call)
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
                error = [exc.error.message, exc.error.data]  # the data too: it is sent as well
                hits = rt.leak_guard.scan(serialize(error), call.tenant.id, sent=_sent(params))
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
            duration_ms = (time.perf_counter() - started) * 1000
            target = _target(method, params)
            rt.audit.record(
                tenant_id=token.tenant.id,
                principal=label,
                method=method,
                target=target,
                outcome=outcome,
                reason=reason,
                duration_ms=duration_ms,
                arguments=_arguments(method, params),
            )
            rt.telemetry.end(
                tenant=token.tenant, principal=label, method=method, target=target, outcome=outcome,
                reason=reason, duration_ms=duration_ms, request_id=ctx.request_id,
            )  # fmt: skip
