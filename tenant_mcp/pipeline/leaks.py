"""The step that scans what leaves the server for other tenants' markers (and the caller's own
secrets), and applies the leak guard's policy: block, redact or report.

Everything the client would receive is scanned: results and error messages alike. Markers the
caller itself sent (a name, a URI, an argument) are not a leak when reflected back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR

from tenant_mcp.audit.leakguard import Hit, LeakGuard, serialize
from tenant_mcp.audit.log import AuditLog
from tenant_mcp.call import Call
from tenant_mcp.pipeline.step import Next, Result
from tenant_mcp.pipeline.target import target_of
from tenant_mcp.telemetry import Telemetry

logger = logging.getLogger("tenant_mcp.leakguard")

LEAK_BLOCKED = "leak blocked"
# Neutral on purpose: another tenant's marker or a secret of the caller's own tenant.
WITHHELD = "The response was withheld because it contained data that may not leave the server. The event was recorded."


def _sent(params: Mapping[str, Any]) -> dict[str, Any]:
    """What the caller sent (name, URI, arguments): markers in it are not a leak when reflected."""
    return {k: v for k, v in params.items() if k != "_meta"}


class GuardLeaks:
    def __init__(self, guard: LeakGuard, audit: AuditLog, telemetry: Telemetry) -> None:
        self._guard = guard
        self._audit = audit
        self._telemetry = telemetry

    async def __call__(self, call: Call, call_next: Next) -> Result:
        try:
            result = await call_next()
        except MCPError as exc:
            if call.denied != LEAK_BLOCKED:
                error = [exc.error.message, exc.error.data]  # the data too: it is sent as well
                hits = self._guard.scan(serialize(error), call.tenant.id, sent=_sent(call.params))
                if hits:
                    self._record(call, hits)
                    if self._guard.policy != "report":
                        exc.error.message, exc.error.data = WITHHELD, None
            raise
        return self._outbound(call, result)

    def _outbound(self, call: Call, result: Result) -> Result:
        if not isinstance(result, Mapping):
            return result
        body = {k: v for k, v in result.items() if k != "_meta"}  # server info is the same for all
        hits = self._guard.scan(serialize(body), call.tenant.id, sent=_sent(call.params))
        if not hits:
            return result
        self._record(call, hits)
        if self._guard.policy == "block":
            call.denied = LEAK_BLOCKED
            raise MCPError(code=INTERNAL_ERROR, message=WITHHELD)
        if self._guard.policy == "redact":
            redacted: dict[str, Any] = self._guard.redact(body, hits)
            if "_meta" in result:
                redacted["_meta"] = result["_meta"]
            return redacted
        return result

    def _record(self, call: Call, hits: list[Hit]) -> None:
        """One `leak` event in each tenant's trail: what kind of marker, whose, which item. Never
        the marker itself."""
        guard = self._guard
        guard.hits += 1
        self._telemetry.leak(call.tenant)
        method, target = call.method, target_of(call.method, call.params)
        for owner, kind in sorted({(hit.owner, hit.kind) for hit in hits}):
            self._audit.record(
                tenant_id=call.tenant.id, principal=call.principal.label, method=method, target=target,
                outcome="leak", reason=f"{kind} marker of tenant {owner} in the response; policy {guard.policy}",
            )  # fmt: skip
            self._audit.record(
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
