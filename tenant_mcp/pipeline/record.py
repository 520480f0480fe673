"""Observers: one audit event and one telemetry record (metrics, request log, span attributes)
per request, whatever its outcome."""

from __future__ import annotations

from tenant_mcp.audit.log import AuditLog
from tenant_mcp.call import Call
from tenant_mcp.pipeline.step import Outcome
from tenant_mcp.pipeline.target import arguments_of
from tenant_mcp.telemetry import Telemetry


class AuditRecord:
    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit

    def started(self, call: Call) -> None:
        pass

    def finished(self, call: Call, outcome: Outcome) -> None:
        self._audit.record(
            tenant_id=call.tenant.id, principal=call.principal.label, method=call.method, target=outcome.target,
            outcome=outcome.verdict, reason=outcome.reason, duration_ms=outcome.duration_ms,
            arguments=arguments_of(call.method, call.params),
        )  # fmt: skip


class TelemetryRecord:
    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    def started(self, call: Call) -> None:
        self._telemetry.begin(call.tenant, call.principal, call.principal.label)

    def finished(self, call: Call, outcome: Outcome) -> None:
        self._telemetry.end(
            tenant=call.tenant, principal=call.principal.label, method=call.method, target=outcome.target,
            outcome=outcome.verdict, reason=outcome.reason, duration_ms=outcome.duration_ms,
            request_id=outcome.request_id,
        )  # fmt: skip
