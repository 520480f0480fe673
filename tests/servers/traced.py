"""The probe server with an OpenTelemetry SDK recording in memory (`tests.servers.spans`), and
`outbound_headers`: what an upstream call made now would carry for trace propagation."""

from __future__ import annotations

from opentelemetry import propagate

from tenant_mcp import TenantContext
from tests.servers.probe import app
from tests.servers.spans import record_spans

record_spans(app)


@app.tool()
async def outbound_headers(ctx: TenantContext) -> dict[str, str]:
    """What an upstream call made now would carry for trace propagation."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
