"""The audit trail: one event per MCP request, written in batches.

Writing each event in its own transaction would add a disk sync to every request. Events go into
a bounded in-memory queue instead and a background task writes them every `flush_seconds` (or
sooner when `batch_size` accumulate) in one transaction. `aclose` drains the queue, so a clean
shutdown loses nothing.

`every_request=False` (`TenantMCP(audit=False)`) keeps only the events that matter for security:
refusals (`denied`: bad credentials, tenant override attempts, hidden items) and `leak` events.
Routine `ok` and `error` events are then not recorded, and keys' `last_used_at` is only updated
by refused requests.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, overload

import anyio

from tenant_mcp.audit.sinks import Forwarder
from tenant_mcp.controlplane import AuditEvent, ControlPlane
from tenant_mcp.storage import sqlite_path

logger = logging.getLogger("tenant_mcp.audit.log")


# Outcomes recorded also when routine events are off.
SECURITY_OUTCOMES = frozenset({"denied", "leak"})
# Longest principal, method, target or reason stored. They can carry client text (a tool name, a
# URI, an error that quotes them), and a client must not be able to grow anyone's trail at will.
MAX_FIELD = 200
_PRUNE_EVERY = 3600.0  # seconds between retention passes


@overload
def _bounded(value: str) -> str: ...
@overload
def _bounded(value: None) -> None: ...
def _bounded(value: str | None) -> str | None:
    return value if value is None or len(value) <= MAX_FIELD else value[: MAX_FIELD - 1] + "…"


@functools.lru_cache(maxsize=4)  # every event of the same second shares its formatted second
def _second(whole: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def _iso(t: float) -> str:
    """UTC with milliseconds: sorts as text in the order of time (retention and export rely on it)."""
    return f"{_second(int(t))}.{int(t % 1 * 1000):03d}Z"


def _now() -> str:
    return _iso(time.time())


_NO_ARGUMENTS = "sha256:" + hashlib.sha256(b"{}").hexdigest()[:32]


def summarise_arguments(arguments: Any, *, keep_values: bool) -> str | None:
    """Arguments as a hash (the default: values may be customer data) or as JSON when configured."""
    if arguments is None:
        return None
    if not keep_values and arguments == {}:
        return _NO_ARGUMENTS  # the most common case, hashed once
    text = json.dumps(arguments, sort_keys=True, default=str, separators=(",", ":"))
    if keep_values:
        return text[:4096]
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]


_INSERT = (
    "INSERT INTO audit_events (at, tenant_id, principal, method, target, outcome, reason, duration_ms,"
    " arguments) VALUES (?,?,?,?,?,?,?,?,?)"
)


def _of_live_tenants(conn: sqlite3.Connection, events: Sequence[AuditEvent]) -> Sequence[AuditEvent]:
    """Drop events of tenants deleted meanwhile (as `ControlPlane.write_audit` does); inside the
    write transaction, so a deletion is entirely before or after."""
    ids = sorted({e.tenant_id for e in events if e.tenant_id is not None})
    if not ids:
        return events
    marks = ", ".join("?" for _ in ids)
    live = {row[0] for row in conn.execute(f"SELECT id FROM tenants WHERE id IN ({marks})", ids)}
    return (
        events if len(live) == len(ids) else [e for e in events if e.tenant_id in live or e.tenant_id is None]
    )


class _DirectWriter:
    """Writes a batch from the event loop's own thread, never waiting.

    The control plane's connection runs statements on a worker thread, which under load
    must win the GIL back from the busy event loop several times per batch; those hand-overs cost
    far more than the write (measured: about 3 more context switches per request and 10-20% more
    CPU per request). Here a batch is one short transaction on a plain connection: microseconds
    per event, no disk sync (WAL with synchronous=NORMAL), no lock wait (timeout 0). When another
    writer holds the database, `write` says so and the caller uses the control plane's connection,
    which waits off the loop. Checkpoints, which can sync to disk, are left to that connection.
    """

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, timeout=0)
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.execute("PRAGMA wal_autocheckpoint = 0")

    def write(self, events: Sequence[AuditEvent], used_keys: Iterable[str]) -> bool:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # locked by another writer
            return False
        try:
            events = _of_live_tenants(self._conn, events)
            self._conn.executemany(_INSERT, [
                (e.at, e.tenant_id, e.principal, e.method, e.target, e.outcome, e.reason, e.duration_ms, e.arguments)
                for e in events
            ])  # fmt: skip
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self._conn.executemany(
                "UPDATE api_keys SET last_used_at = ? WHERE key_id = ?", [(now, k) for k in used_keys]
            )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        return True

    def close(self) -> None:
        self._conn.close()


class AuditLog:
    """Collects events from request handlers and writes them to the control plane in batches."""

    def __init__(
        self,
        control_plane: ControlPlane,
        *,
        flush_seconds: float = 0.25,
        batch_size: int = 500,
        keep_argument_values: bool = False,
        every_request: bool = True,
        forwarder: Forwarder | None = None,
        retain_seconds: float | None = None,
    ) -> None:
        self._control_plane = control_plane
        self._flush_seconds = flush_seconds
        self._batch_size = batch_size
        self.keep_argument_values = keep_argument_values
        self.every_request = every_request
        self._pending: list[AuditEvent] = []
        self._wake = anyio.Event()
        self._closed = False
        self._lock = anyio.Lock()
        self._direct: _DirectWriter | None = None  # while `run` runs
        self._forwarder = forwarder
        self._retain = retain_seconds
        self.dropped = 0

    @property
    def depth(self) -> int:
        """Events waiting to be written."""
        return len(self._pending)

    def record(
        self,
        *,
        tenant_id: str | None,
        principal: str | None,
        method: str,
        target: str | None = None,
        outcome: str,
        reason: str | None = None,
        duration_ms: float = 0.0,
        arguments: Any = None,
    ) -> None:
        if not self.every_request and outcome not in SECURITY_OUTCOMES:
            return
        if len(self._pending) >= 100 * self._batch_size:
            # The database is stuck; keep serving rather than grow without bound, and say so.
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.error("audit queue full: %d events dropped", self.dropped)
            return
        self._pending.append(
            AuditEvent(
                at=_now(),
                tenant_id=tenant_id,
                principal=_bounded(principal),
                method=_bounded(method),
                target=_bounded(target),
                outcome=outcome,
                reason=_bounded(reason),
                duration_ms=round(duration_ms, 3),
                arguments=summarise_arguments(arguments, keep_values=self.keep_argument_values),
            )
        )
        if len(self._pending) >= self._batch_size:
            self._wake.set()

    async def flush(self) -> None:
        async with self._lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self._batch_size], self._pending[self._batch_size :]
            used_keys = {e.principal[4:] for e in batch if e.principal and e.principal.startswith("key:")}
            try:
                if self._direct is None or not self._direct.write(batch, used_keys):
                    await self._control_plane.write_audit(batch, used_keys)
            except Exception:
                logger.exception("writing %d audit events failed; retrying later", len(batch))
                self._pending[:0] = batch
                return
            if self._forwarder is not None:
                self._forwarder.forward(batch)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Flush periodically until `aclose`. Start it in a task group."""
        # The direct writer is for an SQLite control plane; PostgreSQL writes off the loop anyway.
        if not self._control_plane.postgres:
            self._direct = _DirectWriter(sqlite_path(self._control_plane.url))
        task_status.started()
        flushes = 0
        pruned = 0.0
        try:
            while not self._closed:
                with anyio.move_on_after(self._flush_seconds):
                    await self._wake.wait()
                self._wake = anyio.Event()
                await self.flush()
                flushes += 1
                if flushes % 40 == 0 and self._direct is not None:
                    await self._checkpoint()
                if self._retain is not None and time.monotonic() - pruned > _PRUNE_EVERY:
                    pruned = time.monotonic()
                    await self._prune(self._retain)
        finally:
            direct, self._direct = self._direct, None
            if direct is not None:
                direct.close()

    async def _prune(self, retain_seconds: float) -> None:
        """Delete events older than the retention, so the table cannot grow forever."""
        try:
            await self._control_plane.prune_audit(_iso(time.time() - retain_seconds))
        except Exception:
            logger.exception("audit: pruning old events failed; retrying later")

    async def _checkpoint(self) -> None:
        """The direct writer never checkpoints the WAL (that can sync to disk); this does, off the loop."""
        try:
            await self._control_plane.db.fetch_all("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception:
            logger.exception("audit: WAL checkpoint failed; retrying later")

    async def aclose(self) -> None:
        self._closed = True
        self._wake.set()
        await self.flush()
