"""Audit sinks: audit events pushed to a file or a SIEM as they are written, no polling.

`AuditLog` hands each batch it has written to the database to every sink, through a bounded
queue per sink, so a slow or unreachable sink never holds up requests or the database write.
A sink that falls too far behind drops its oldest batches and says so in the log; the database
keeps every event regardless, and `tenant-mcp audit export` can fill the gap from a cursor.

Events are dicts with the columns of ``audit_events``; their ``tenant_id`` is the tenant's id.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import anyio
import httpx2

from tenant_mcp.controlplane import AuditEvent

logger = logging.getLogger("tenant_mcp.audit.log")

__all__ = ["AuditSink", "JSONLSink", "WebhookSink"]


class AuditSink(Protocol):
    """Where written audit events go next. `send` may raise: the batch is then retried or dropped
    as the sink's own policy says (`WebhookSink` retries; `JSONLSink` cannot fail but for disk)."""

    async def send(self, events: Sequence[dict[str, Any]]) -> None: ...


class JSONLSink:
    """Append each event as one JSON line to a file (for a log shipper to tail)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    async def send(self, events: Sequence[dict[str, Any]]) -> None:
        text = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events)
        await anyio.Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        async with await anyio.open_file(self.path, "a", encoding="utf-8") as f:
            await f.write(text)


class WebhookSink:
    """POST each batch as a JSON array to `url`, retrying with exponential backoff.

    A 2xx answer delivers the batch; anything else (or no answer) is retried after 0.5 s, 1 s,
    2 s ... up to `attempts` tries, then the batch is dropped with an error in the log.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        attempts: int = 6,
        backoff: float = 0.5,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.headers = dict(headers or {})
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout

    async def send(self, events: Sequence[dict[str, Any]]) -> None:
        delay = self.backoff
        async with httpx2.AsyncClient(timeout=self.timeout) as client:
            for attempt in range(1, self.attempts + 1):
                try:
                    response = await client.post(self.url, json=list(events), headers=self.headers)
                    if 200 <= response.status_code < 300:
                        return
                    problem = f"HTTP {response.status_code}"
                except httpx2.HTTPError as exc:
                    problem = type(exc).__name__
                if attempt == self.attempts:
                    raise RuntimeError(f"audit webhook gave up after {attempt} tries ({problem})")
                await anyio.sleep(delay)
                delay *= 2


class _Outlet:
    """One sink's bounded queue and the task that drains it."""

    def __init__(self, sink: AuditSink, max_batches: int = 1000) -> None:
        self.sink = sink
        self._queue: deque[list[dict[str, Any]]] = deque()
        self._max = max_batches
        self._ready = anyio.Event()
        self.dropped = 0

    def put(self, events: Sequence[AuditEvent]) -> None:
        if len(self._queue) >= self._max:
            self._queue.popleft()
            self.dropped += 1
            logger.error(
                "audit sink %s is behind: dropped a batch (%d so far)", type(self.sink).__name__, self.dropped
            )
        self._queue.append([asdict(e) for e in events])
        self._ready.set()

    async def run(self, *, closing: anyio.Event) -> None:
        while True:
            if not self._queue:
                if closing.is_set():
                    return
                with anyio.move_on_after(0.5):
                    await self._ready.wait()
                self._ready = anyio.Event()
                continue
            batch = self._queue[0]
            try:
                await self.sink.send(batch)
            except Exception as exc:
                self.dropped += 1
                logger.error("audit sink %s dropped %d events: %s", type(self.sink).__name__, len(batch), exc)
            self._queue.popleft()


class Forwarder:
    """The sinks of one running server: `forward` is called with each written batch."""

    def __init__(self, sinks: Sequence[AuditSink]) -> None:
        self._outlets = [_Outlet(sink) for sink in sinks]
        self._closing = anyio.Event()
        self.finished = anyio.Event()

    def forward(self, events: Sequence[AuditEvent]) -> None:
        for outlet in self._outlets:
            outlet.put(events)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with anyio.create_task_group() as tg:
                for outlet in self._outlets:
                    tg.start_soon(self._drain, outlet)
                task_status.started()
        finally:
            self.finished.set()

    async def _drain(self, outlet: _Outlet) -> None:
        await outlet.run(closing=self._closing)

    def close(self) -> None:
        """Deliver what is queued (within each sink's retries), then stop."""
        self._closing.set()
