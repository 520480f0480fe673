"""The probe server with two audit sinks, set from the environment: a webhook and a JSONL file."""

from __future__ import annotations

import os

from tenant_mcp.audit.sinks import JSONLSink, WebhookSink
from tests.servers.probe import app

app.audit_sinks = [
    WebhookSink(os.environ["HOOK_URL"], headers={"Authorization": "Bearer hook-secret"}, backoff=0.1),
    JSONLSink(os.environ["AUDIT_JSONL"]),
]
