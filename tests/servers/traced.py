"""The probe server with an OpenTelemetry SDK recording in memory, and two test-only windows on it.

`recorded_spans` returns every span the process finished, of every tenant: deliberately, so a
test can check that each span carries the tenant of the request it belongs to. The leak guard is
off for the same reason.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tenant_mcp import TenantContext
from tests.servers.probe import app

app.leak_guard = None
_exporter = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(_exporter))
trace.set_tracer_provider(_provider)


@app.tool()
async def recorded_spans(ctx: TenantContext) -> list[dict[str, Any]]:
    return [
        {
            "name": span.name,
            "id": span.context.span_id if span.context else None,
            "parent": span.parent.span_id if span.parent else None,
            "attributes": dict(span.attributes or {}),
        }
        for span in _exporter.get_finished_spans()
    ]


@app.tool()
async def outbound_headers(ctx: TenantContext) -> dict[str, str]:
    """What an upstream call made now would carry for trace propagation."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
