"""The connected server with an OpenTelemetry SDK recording in memory (`tests.servers.spans`)."""

from tests.servers.connected import app
from tests.servers.spans import record_spans

record_spans(app)
