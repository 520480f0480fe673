"""Per-tenant telemetry: the tenant on trace spans, Prometheus metrics, one log line per request.

Every MCP request crosses `TenancyMiddleware` once. When the tenant is known it goes onto the
SDK's request span (`tenant.id`, `tenant.plan`, and `enduser.id` only when asked for); when the
request ends, one record goes to the metrics and the request log, beside the audit event.

Cardinality is bounded by configuration, never by traffic: metrics carry a tenant label only for
the slugs named in `TelemetrySettings.metrics_tenants` (everyone else is ``other``); plans are
declared in code, refusal reasons are folded into a fixed set. The tenant never goes into baggage,
so it never leaves in outbound propagation headers. Metrics are served on their own address,
never on the public MCP port.

Tracing needs an OpenTelemetry SDK (extra ``[otel]``); without one, spans cost next to nothing.
Metrics need ``prometheus-client`` (extra ``[metrics]``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry import trace

from tenant_mcp.errors import ConfigurationError

if TYPE_CHECKING:
    from tenant_mcp.models import Principal, Tenant
    from tenant_mcp.storage.database import PoolUsage

request_log = logging.getLogger("tenant_mcp.requests")

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Refusal reasons as the audit trail words them, folded into labels a dashboard can group by.
_REASONS = (
    ("tenant override", "tenant_override"),
    ("statement refused by the tenant gateway", "sql_gateway"),
    ("rate limit", "rate_limited"),
    ("quota", "quota_exceeded"),
    ("concurren", "concurrency"),
    ("leak", "leak"),
    ("scope", "scope"),
    ("subscription limit", "subscriptions"),
)


@dataclass(frozen=True)
class TelemetrySettings:
    """What the server reports about itself, and where.

    `metrics_address` (``host:port``) serves Prometheus metrics there; `metrics_tenants` are the
    slugs that get a tenant label of their own; `log_format="json"` writes one line per request
    to stderr; `enduser_id` puts the principal on spans (off by default: it identifies a person).
    """

    metrics_address: str | None = None
    metrics_tenants: frozenset[str] = field(default_factory=frozenset)
    log_format: Literal["json"] | None = None
    enduser_id: bool = False


def refusal_reason(reason: str | None) -> str:
    text = (reason or "").lower()
    return next((label for needle, label in _REASONS if needle in text), "other")


def quiet_sdk_request_lines() -> None:
    """Raise the SDK's transport loggers to WARNING: at INFO they write a line per request, which a
    server with an audit trail (and a JSON request log) does not need and pays for at capacity."""
    for name in ("mcp.server.streamable_http", "mcp.server.streamable_http_manager"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Telemetry:
    """The running server's metrics registry, request log and span decoration."""

    def __init__(self, settings: TelemetrySettings) -> None:
        self.settings = settings
        self._metrics = _Metrics(settings) if settings.metrics_address else None
        self._stop: Callable[[], None] | None = None

    def start(
        self,
        *,
        audit_depth: Callable[[], int],
        in_flight: Callable[[], int],
        db: Callable[[], PoolUsage],
        listen_streams: Callable[[], int],
    ) -> None:
        """Serve metrics (when configured) and start the request log.

        The gauges are read when scraped, from the metrics server's thread: each callable must
        only read (no awaits, no locks), and cheaply.
        """
        if self._metrics is not None and self.settings.metrics_address is not None:
            m = self._metrics
            m.audit_queue.set_function(audit_depth)
            m.in_flight.set_function(in_flight)
            backend = db().backend
            m.db_open.labels(backend=backend).set_function(lambda: db().open)
            m.db_in_use.labels(backend=backend).set_function(lambda: db().in_use)
            m.streams.labels(kind="listen").set_function(listen_streams)
            m.streams.labels(kind="get").set(0)
            m.sessions.set(0)
            self._stop = m.serve(self.settings.metrics_address)
        if self.settings.log_format == "json" and not request_log.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            request_log.addHandler(handler)
            request_log.setLevel(logging.INFO)
            request_log.propagate = False
            # The request line replaces the SDK's per-request INFO lines ("Terminating session").
            quiet_sdk_request_lines()

    def watch_http(self, *, sessions: Callable[[], int], get_streams: Callable[[], int]) -> None:
        """What only the HTTP transport knows: its open (2025-era, stateful) sessions and GET
        streams. Over stdio there are neither (the process is the one session)."""
        if self._metrics is not None:
            self._metrics.sessions.set_function(sessions)
            self._metrics.streams.labels(kind="get").set_function(get_streams)

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None

    def begin(self, tenant: Tenant, principal: Principal, label: str) -> None:
        """Put the caller on the SDK's span for this request (a no-op without an SDK)."""
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("tenant.id", tenant.id)
            span.set_attribute("tenant.plan", tenant.plan)
            if self.settings.enduser_id:
                span.set_attribute("enduser.id", label)

    def end(
        self,
        *,
        tenant: Tenant,
        principal: str,
        method: str,
        target: str | None,
        outcome: str,
        reason: str | None,
        duration_ms: float,
        request_id: Any,
    ) -> None:
        if self._metrics is not None:
            self._metrics.request(tenant, method, outcome, reason, duration_ms)
        if self.settings.log_format == "json":
            # Never argument values or secrets: the target is the tool/resource/prompt name.
            line = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
                "tenant": tenant.slug,
                "principal": principal,
                "method": method,
                "target": target,
                "outcome": outcome,
                "duration_ms": round(duration_ms, 3),
                "request_id": None if request_id is None else str(request_id),
            }
            if outcome != "ok":
                line["reason"] = refusal_reason(reason) if outcome == "denied" else "error"
            request_log.info(json.dumps(line, separators=(",", ":")))

    def leak(self, tenant: Tenant) -> None:
        if self._metrics is not None:
            self._metrics.leaks.labels(plan=tenant.plan, tenant=self._metrics.tenant(tenant)).inc()


class _Metrics:
    def __init__(self, settings: TelemetrySettings) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError:
            raise ConfigurationError(
                "metrics need prometheus-client: pip install 'tenant-mcp[metrics]'"
            ) from None
        self._tenants = settings.metrics_tenants
        self.registry = CollectorRegistry()
        labels = ("method", "outcome", "plan", "tenant")
        self.requests = Counter(
            "tenant_mcp_requests", "MCP requests by method, outcome and plan", labels, registry=self.registry
        )
        self.latency = Histogram(
            "tenant_mcp_request_duration_seconds",
            "Time in the server per MCP request",
            ("method", "outcome", "plan"),
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.refusals = Counter(
            "tenant_mcp_refusals",
            "Refused requests by reason",
            ("reason", "plan", "tenant"),
            registry=self.registry,
        )
        self.leaks = Counter(
            "tenant_mcp_leak_events",
            "Responses the leak guard caught",
            ("plan", "tenant"),
            registry=self.registry,
        )

        def gauge(name: str, documentation: str, *labels: str) -> Gauge:
            """A gauge read when scraped (its value is a function of the running server)."""
            return Gauge(name, documentation, labels, registry=self.registry)

        self.audit_queue = gauge("tenant_mcp_audit_queue_depth", "Audit events waiting to be written")
        self.in_flight = gauge(
            "tenant_mcp_calls_in_flight", "Tool calls, reads and gets running in this process"
        )
        self.db_open = gauge(
            "tenant_mcp_db_connections_open",
            "ctx.db connections open (SQLite: tenant files kept open; PostgreSQL: the pool's size)",
            "backend",
        )
        self.db_in_use = gauge(
            "tenant_mcp_db_connections_in_use", "ctx.db connections held by a call", "backend"
        )
        self.sessions = gauge(
            "tenant_mcp_sessions_open", "Stateful (2025-era) HTTP sessions open in this process"
        )
        self.streams = gauge(
            "tenant_mcp_streams_open",
            "Long-lived response streams open: GET (SSE) streams and subscriptions/listen streams",
            "kind",
        )

    def tenant(self, tenant: Tenant) -> str:
        return tenant.slug if tenant.slug in self._tenants else "other"

    def request(
        self, tenant: Tenant, method: str, outcome: str, reason: str | None, duration_ms: float
    ) -> None:
        label = self.tenant(tenant)
        self.requests.labels(method=method, outcome=outcome, plan=tenant.plan, tenant=label).inc()
        self.latency.labels(method=method, outcome=outcome, plan=tenant.plan).observe(duration_ms / 1000)
        if outcome == "denied":
            self.refusals.labels(reason=refusal_reason(reason), plan=tenant.plan, tenant=label).inc()

    def serve(self, address: str) -> Callable[[], None]:
        from prometheus_client import start_http_server

        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigurationError(
                f"--metrics-address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:9464"
            )
        try:
            server, thread = start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        except OSError as exc:
            raise ConfigurationError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from None

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(5)

        return stop


def configure_tracing() -> bool:
    """Install an OpenTelemetry SDK tracer provider when the standard ``OTEL_*`` variables ask for
    one (``OTEL_TRACES_EXPORTER=otlp|console`` or an OTLP endpoint); True when installed.

    The SDK reads the rest itself: service name, resource attributes, sampler, endpoint, headers.
    """
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    if exporter == "none" or (not exporter and not endpoint):
        return False
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError:
        raise ConfigurationError(
            "OTEL_* asks for traces but the OpenTelemetry SDK is not installed: pip install 'tenant-mcp[otel]'"
        ) from None
    span_exporter: SpanExporter
    if exporter == "console":
        span_exporter = ConsoleSpanExporter(out=sys.stderr)  # stdout may be the stdio transport
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigurationError(
                "OTLP traces need the exporter: pip install 'tenant-mcp[otel]'"
            ) from None
        span_exporter = OTLPSpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    return True
