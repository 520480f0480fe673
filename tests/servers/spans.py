"""An OpenTelemetry SDK recording in memory, and a test-only tool that reads it back.

`recorded_spans` returns every span the process finished, of every tenant: deliberately, so a
test can check that each span carries the tenant of the request it belongs to. Servers that
install it turn their leak guard off for the same reason.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tenant_mcp import TenantContext, TenantMCP


def record_spans(app: TenantMCP) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    app.leak_guard = None

    @app.tool()
    async def recorded_spans(ctx: TenantContext) -> list[dict[str, Any]]:
        return [
            {
                "name": span.name,
                "id": span.context.span_id if span.context else None,
                "parent": span.parent.span_id if span.parent else None,
                "trace": span.context.trace_id if span.context else None,
                "attributes": dict(span.attributes or {}),
            }
            for span in exporter.get_finished_spans()
        ]
