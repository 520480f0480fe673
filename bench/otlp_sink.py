"""A stand-in OTLP/HTTP collector: accepts trace exports on 127.0.0.1 and discards them.

The bench measures what exporting spans costs the server, so something has to answer the
exporter as a collector would, and nothing may leave the machine. This answers every
``POST /v1/traces`` with an empty `ExportTraceServiceResponse` and counts the spans it was sent
(``GET /spans``), so the report can say none were dropped on the way.

    python -m bench.otlp_sink PORT
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

_EMPTY = ExportTraceServiceResponse().SerializeToString()


class _Sink(ThreadingHTTPServer):
    spans = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the exporter's session expects of a collector
    server: _Sink

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/v1/traces":
            self._answer(404, b"", "text/plain")
            return
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        self.server.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        self._answer(200, _EMPTY, "application/x-protobuf")

    def do_GET(self) -> None:
        self._answer(200, str(self.server.spans).encode(), "text/plain")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Sink:
    """The sink running in a process of its own."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def spans(self) -> int:
        return int(httpx2.get(self.url + "/spans", timeout=5).text)


@contextmanager
def running(port: int) -> Iterator[Sink]:
    proc = subprocess.Popen([sys.executable, "-m", "bench.otlp_sink", str(port)])
    sink = Sink(port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                sink.spans()
                break
            except httpx2.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the OTLP sink did not start") from None
                time.sleep(0.1)
        yield sink
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    _Sink(("127.0.0.1", int(sys.argv[1])), _Handler).serve_forever()
