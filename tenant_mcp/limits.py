"""Per-tenant capacity: request rates, concurrent calls, open sessions, daily and monthly quotas.

Tenants are isolated in data; this module isolates them in capacity, keyed on the one thing a
caller cannot multiply: its tenant (and, within it, the principal and the tool). Opening more
sessions or connections does not buy more.

- Rates are moving windows of the `limits` library (async API): in this process by default,
  in Redis when the server has a Redis URL, so a tenant's rate holds across replicas.
- Concurrency (calls running at once) and open sessions are counted per process: they protect
  the process's own event loop, `ctx.db` pool and memory.
- Daily and monthly quotas count tool calls in this process and in the control plane
  (`tenant_usage`, flushed every second), so usage survives restarts and replicas see each
  other's counts within about a second.

The effective limits of a tenant are its plan's defaults (`TenantMCP(limits={"free": Limits(...)})`)
with the override stored in the control plane (`tenant-mcp limits set`) on top, re-read every
`credential_cache_seconds` and at once on a tenant invalidation through Redis.

A refused request never reaches the tool (nor `ctx.db`): the middleware asks `admit()` first and
gets a JSON-RPC error with a retry hint, audited as `denied: rate limited ...`/`quota exceeded ...`.
Over HTTP, `serve()` refuses before the SDK (429 with Retry-After) a new session over the cap and
the requests of a tenant whose rate was just found used up.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import anyio
import limits as _limits
from anyio.abc import TaskStatus
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.responses import JSONResponse, Response

from tenant_mcp._sdk import session_open
from tenant_mcp.errors import ConfigurationError, TenantMCPError
from tenant_mcp.replication.windows import SharedWindows, Window

if TYPE_CHECKING:
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from starlette.types import Message, Receive, Scope, Send

    from tenant_mcp.audit.log import AuditLog
    from tenant_mcp.auth.authenticator import TenantAccessToken
    from tenant_mcp.auth.invalidation import Invalidation
    from tenant_mcp.call import Call
    from tenant_mcp.controlplane import ControlPlane
    from tenant_mcp.models import Tenant

logger = logging.getLogger("tenant_mcp.limits")

RATE_LIMITED = -32029  # JSON-RPC error code of every refusal here (implementation-defined range)
OnRedisError = Literal["fail_closed", "local"]

# Methods that run application code (and may open ctx.db): the ones concurrency caps count.
_WORK = frozenset({"tools/call", "resources/read", "prompts/get", "completion/complete"})
# Never limited: a client must be able to connect and check liveness to learn about its limits.
_FREE = frozenset({"initialize", "ping", "server/discover"})
_LOCAL_FALLBACK_SECONDS = 5.0  # with on_redis_error="local": how long before trying Redis again
_FLUSH_SECONDS = 1.0
_SWEEP_SECONDS = 5.0
_IDLE_SECONDS = 60.0  # a tenant's quota counts are refreshed while it called within this long
_HOLD_SECONDS = 1.0  # a 429 at the gate is held back until a slot frees, at most this long
_HOLD_MAX = 32  # refusals held back at a time per tenant; past that, answered at once
_HOLD_SPREAD = 0.2  # seconds over which held refusals are released once a slot frees
_PEEK_BYTES = 64 * 1024  # larger bodies of a blocked tenant go to the SDK, which refuses them there
FIELDS = ("rate", "principal_rate", "concurrency", "sessions", "daily", "monthly", "subscriptions")


def parse_rate(value: str) -> _limits.RateLimitItem:
    """`"100/minute"`, `"10 per second"`, `"1000/day"`: one window of the `limits` notation."""
    try:
        items = _limits.parse_many(value)
    except ValueError:
        items = []
    if len(items) != 1 or items[0].amount < 1:
        raise TenantMCPError(f"invalid rate {value!r}: use COUNT/PERIOD, e.g. 100/minute or 5/second")
    return items[0]


@dataclass(frozen=True, slots=True)
class Limits:
    """A tenant's limits; None means unlimited.

    `rate`: requests per moving window for the whole tenant ("100/minute"); `principal_rate`: the
    same per API key or JWT subject; `concurrency`: calls running at once (tool calls, resource
    reads, prompts, completions); `sessions`: open HTTP sessions; `daily` and `monthly`: tool
    calls per UTC day and calendar month; `subscriptions`: resource subscriptions and open
    `subscriptions/listen` streams together (below the server's `max_subscriptions_per_tenant`).
    """

    rate: str | None = None
    principal_rate: str | None = None
    concurrency: int | None = None
    sessions: int | None = None
    daily: int | None = None
    monthly: int | None = None
    subscriptions: int | None = None

    def __post_init__(self) -> None:
        for name in ("rate", "principal_rate"):
            value = getattr(self, name)
            if value is not None:
                parse_rate(value)
        for name in ("concurrency", "sessions", "daily", "monthly", "subscriptions"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise TenantMCPError(f"invalid {name} {value!r}: a whole number of at least 1, or None")

    def with_override(self, override: Mapping[str, Any]) -> Limits:
        """These limits with a stored override on top (a key set to None there lifts that limit)."""
        return dataclasses.replace(self, **{k: v for k, v in override.items() if k in FIELDS})

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}


NO_LIMITS = Limits()


def check_override(values: Mapping[str, Any]) -> dict[str, Any]:
    """A stored override, validated: only known fields, each a valid value or None (unlimited)."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise TenantMCPError(f"unknown limit {unknown[0]!r}; known: {', '.join(FIELDS)}")
    Limits(**values)
    return dict(values)


class Refused(Exception):
    """A request over a limit. `reason` goes to the audit, `message` to the client."""

    def __init__(self, reason: str, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.wait = retry_after
        self.retry_after = max(1, math.ceil(retry_after))

    def error(self) -> MCPError:
        return MCPError(
            code=RATE_LIMITED,
            message=f"{self.message}; retry after {self.retry_after} s",
            data={"retryAfter": self.retry_after, "reason": self.reason},
        )


class _LocalStorage(MemoryStorage):
    """The `limits` in-memory storage with moving windows kept as deques of hit times.

    The library's own keeps each window as a list it inserts into at the front (a copy of the
    whole window per hit: 50 us at 80,000 hits a minute) and sweeps expired entries in a worker
    thread after nearly every hit. Here a hit drops the expired times from the left and appends
    to the right, O(1) amortised, and idle windows are swept inline every few seconds. Same
    semantics: at most `limit` hits in any `expiry` seconds."""

    def __init__(self) -> None:
        super().__init__()
        self._windows: dict[str, tuple[int, deque[float]]] = {}  # key -> (expiry, hit times)
        self._next_sweep = 0.0

    def _window(self, key: str, expiry: int, now: float) -> deque[float]:
        entry = self._windows.get(key)
        if entry is None:
            entry = self._windows[key] = (expiry, deque())
        window, cutoff = entry[1], now - expiry
        while window and window[0] < cutoff:
            window.popleft()
        return window

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        now = time.time()
        if now >= self._next_sweep:
            self._sweep(now)
        window = self._window(key, expiry, now)
        if len(window) + amount > limit:
            return False
        window.extend([now] * amount)
        return True

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        now = time.time()
        window = self._window(key, expiry, now)
        return (window[0] if window else now), len(window)

    async def clear(self, key: str) -> None:
        self._windows.pop(key, None)
        await super().clear(key)

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + _SWEEP_SECONDS
        self._windows = {k: (e, w) for k, (e, w) in self._windows.items() if w and w[-1] >= now - e}


def _describe(item: _limits.RateLimitItem) -> str:
    unit = item.GRANULARITY.name
    return f"{item.amount}/{unit}" if item.multiples == 1 else f"{item.amount}/{item.multiples} {unit}s"


def _rate_refusal(item: _limits.RateLimitItem, scope: str, wait: float) -> Refused:
    return Refused(
        f"rate limited: {_describe(item)} per {scope}",
        f"Rate limit exceeded: {_describe(item)} per {scope}",
        wait,
    )


def _day(now: datetime) -> str:
    return now.strftime("%Y-%m-%d")


_today_cache: list[Any] = [0, ""]  # (second, UTC day): one strftime a second, not one a call


def _today() -> str:
    second = int(time.time())
    if _today_cache[0] != second:
        _today_cache[:] = [second, _day(datetime.now(UTC))]
    return str(_today_cache[1])


def _until_tomorrow(now: datetime) -> float:
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (tomorrow - now).total_seconds()


def _until_next_month(now: datetime) -> float:
    first = (now.replace(day=1) + timedelta(days=32)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    return (first - now).total_seconds()


@dataclass
class _Quota:
    """Tool calls of one tenant this UTC day and month: the durable counts plus this process's,
    updated in place (calls being admitted hold it between their reservation and the answer)."""

    day: str
    day_calls: int
    month_calls: int
    used_at: float = 0.0  # monotonic time of the last call that asked


_READ_BATCH = 500  # tenants per query when quota counts are read back


class _Usage:
    """Durable call and refusal counts per tenant and UTC day, written in batches.

    A tool call is counted when it reserves its place (before any await of its admission), so at
    any moment a tenant's quota counts are what the control plane holds plus `_pending` (and
    `_flushing` while a batch is being written). Refusing a reserved call takes it back.
    """

    def __init__(self, control_plane: ControlPlane) -> None:
        self._cp = control_plane
        self._pending: dict[tuple[str, str], list[int]] = {}  # (tenant id, day) -> [calls, refused]
        self._flushing: dict[tuple[str, str], list[int]] = {}  # the batch being written
        self._quotas: dict[str, _Quota] = {}  # tenants with a quota: their counts
        self._reading: dict[str, anyio.Event] = {}  # tenants whose counts are being read

    def count(self, tenant_id: str, *, refused: bool, day: str | None = None, calls: int = 1) -> None:
        counts = self._pending.setdefault((tenant_id, day or _today()), [0, 0])
        counts[1 if refused else 0] += calls

    async def quota(self, tenant_id: str) -> _Quota:
        """The tenant's counts for today, read once however many calls ask at the same time."""
        while True:
            quota = self._quotas.get(tenant_id)
            if quota is not None and quota.day == _today():
                quota.used_at = time.monotonic()
                return quota
            reading = self._reading.get(tenant_id)
            if reading is not None:
                await reading.wait()  # then look again (the reader may have failed)
                continue
            reading = self._reading[tenant_id] = anyio.Event()
            try:
                day, counts = await self._read([tenant_id])
                self._quotas[tenant_id] = _Quota(day, *counts[tenant_id])
            finally:
                del self._reading[tenant_id]
                reading.set()

    async def _read(self, tenant_ids: list[str]) -> tuple[str, dict[str, tuple[int, int]]]:
        """(today, tenant id -> (calls today, calls this month)) in one query per batch of tenants."""
        now = datetime.now(UTC)
        day, month = _day(now), now.strftime("%Y-%m-01")
        rows: list[dict[str, Any]] = []
        for i in range(0, len(tenant_ids), _READ_BATCH):
            batch = tenant_ids[i : i + _READ_BATCH]
            rows += await self._cp.db.fetch_all(
                f"SELECT tenant_id, day, calls FROM tenant_usage WHERE tenant_id IN ({', '.join('?' * len(batch))})"
                " AND day >= ? AND day <= ?",
                (*batch, month, day),
            )
        # From here on nothing awaits: the counts not yet durable are added as they are now.
        counts = {t: [0, 0] for t in tenant_ids}
        unwritten = [(t, d, c[0]) for (t, d), c in (*self._flushing.items(), *self._pending.items())]
        for t, d, calls in [(r["tenant_id"], r["day"], r["calls"]) for r in rows] + unwritten:
            mine = counts.get(t)
            if mine is not None and month[:7] == d[:7] and d <= day:
                mine[1] += calls
                if d == day:
                    mine[0] += calls
        return day, {t: (c[0], c[1]) for t, c in counts.items()}

    async def flush(self) -> None:
        """Write the counts, then bring the quota counts of tenants that called lately up to date
        with every replica's calls (in place); the others are read again on their next call."""
        pending, self._pending = self._pending, {}
        if pending:
            self._flushing = pending
            try:
                async with self._cp.db.transaction() as tx:
                    # A tenant deleted meanwhile is skipped (its row would break the foreign key
                    # and with it the whole batch).
                    await tx.execute_many(
                        "INSERT INTO tenant_usage (tenant_id, day, calls, refused) SELECT ?, ?, CAST(? AS BIGINT), CAST(? AS BIGINT)"
                        " WHERE EXISTS (SELECT 1 FROM tenants WHERE id = ?)"
                        " ON CONFLICT (tenant_id, day) DO UPDATE SET calls = tenant_usage.calls + excluded.calls,"
                        " refused = tenant_usage.refused + excluded.refused",
                        [(t, d, c[0], c[1], t) for (t, d), c in pending.items()],
                    )
            except Exception:
                for (tenant_id, day), counts in pending.items():  # kept for the next attempt
                    self.count(tenant_id, refused=False, day=day, calls=counts[0])
                    self.count(tenant_id, refused=True, day=day, calls=counts[1])
                raise
            finally:
                self._flushing = {}
        idle = time.monotonic() - _IDLE_SECONDS
        self._quotas = {t: q for t, q in self._quotas.items() if q.used_at >= idle}
        if self._quotas:
            day, fresh = await self._read(list(self._quotas))
            for tenant_id, quota in self._quotas.items():
                if quota.day == day and tenant_id in fresh:
                    quota.day_calls, quota.month_calls = fresh[tenant_id]

    def forget(self, tenant_id: str) -> None:
        self._quotas.pop(tenant_id, None)


def _release(counter: dict[str, int], key: str) -> None:
    """One less held under `key` (counters keep no zero entries: they would grow with every tenant)."""
    left = counter[key] - 1
    if left:
        counter[key] = left
    else:
        del counter[key]


class _Admission:
    """What `Limiter.admit` returns: holds a concurrency slot while the request runs."""

    __slots__ = ("_counter", "_tenant_id")

    def __init__(self, counter: dict[str, int] | None, tenant_id: str) -> None:
        self._counter = counter
        self._tenant_id = tenant_id

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        if self._counter is not None:
            _release(self._counter, self._tenant_id)


_NOTHING_HELD = _Admission(None, "")


class Limiter:
    """The limits of every tenant, enforced for one server process (see the module docstring)."""

    def __init__(
        self,
        control_plane: ControlPlane,
        audit: AuditLog,
        *,
        plans: Mapping[str, Limits],
        redis_url: str | None = None,
        redis_prefix: str = "tenant_mcp",
        on_redis_error: OnRedisError = "fail_closed",
        cache_seconds: float = 1.0,
    ) -> None:
        self._cp = control_plane
        self._audit = audit
        self._plans = dict(plans)
        self._on_redis_error = on_redis_error
        self._cache_seconds = cache_seconds
        self._local = MovingWindowRateLimiter(_LocalStorage())
        self._shared: SharedWindows | None = None
        if redis_url is not None:
            self._shared = SharedWindows.connect(redis_url, f"{redis_prefix}:limits")
        self._redis_down_until = 0.0
        self._items: dict[str, _limits.RateLimitItem] = {}
        self._overrides: dict[str, tuple[float, Limits]] = {}
        self._inflight: dict[str, int] = {}  # tenant id -> calls running
        self._opening: dict[str, int] = {}  # tenant id -> requests opening a session
        self._sessions: dict[str, set[str]] = {}  # tenant id -> sessions it opened here (some may have ended)
        # tenant id -> (no slot before, the tenant rate used up, the refusal): see `_block`
        self._blocked: dict[str, tuple[float, str, Refused]] = {}
        self._held: dict[str, int] = {}  # tenant id -> refusals held back (`_refuse_early`)
        self._usage = _Usage(control_plane)

    # -- effective limits --------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Calls running in this process, all tenants together (a metrics gauge)."""
        return sum(self._inflight.values())

    def plan_limits(self, plan: str) -> Limits:
        return self._plans.get(plan) or self._plans.get("*") or NO_LIMITS

    async def limits_of(self, tenant: Tenant) -> Limits:
        """The tenant's plan defaults with its stored override on top, cached `cache_seconds`."""
        hit = self._overrides.get(tenant.id)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self._cache_seconds:
            return hit[1]
        override = await read_override(self._cp, tenant.id)
        effective = self.plan_limits(tenant.plan).with_override(override)
        if len(self._overrides) > 100_000:
            self._overrides.clear()
        self._overrides[tenant.id] = (now, effective)
        return effective

    def invalidate(self, invalidation: Invalidation) -> None:
        """A tenant's override or status changed elsewhere: read it again on its next request."""
        if invalidation.kind == "tenant":
            self._overrides.pop(invalidation.id, None)
            self._blocked.pop(invalidation.id, None)
            self._usage.forget(invalidation.id)
        elif invalidation.kind == "all":
            self._overrides.clear()
            self._blocked.clear()

    def _item(self, rate: str) -> _limits.RateLimitItem:
        item = self._items.get(rate)
        if item is None:
            item = self._items[rate] = parse_rate(rate)
        return item

    # -- requests ----------------------------------------------------------------------------

    async def admit(self, call: Call) -> _Admission:
        """Admit one request or raise the MCPError that refuses it (and set `call.denied`)."""
        method = call.method
        if method in _FREE:
            return _NOTHING_HELD
        tenant = call.tenant
        try:
            held = await self._check(call, method)
        except Refused as refusal:
            self._usage.count(tenant.id, refused=True)
            call.denied = refusal.reason
            raise refusal.error() from None
        return held

    async def _check(self, call: Call, method: str) -> _Admission:
        tenant, principal = call.tenant, call.principal
        limits = await self.limits_of(tenant)
        reserved = await self._reserve(tenant.id, limits) if method == "tools/call" else None
        try:
            # The entry is None for a hidden tool, as for a missing one: no rate of its own.
            tool_rate = call.entry.rate if method == "tools/call" and call.entry is not None else None
            hits: list[tuple[str, str, tuple[str, ...]]] = []
            if tool_rate is not None:
                name = str(call.name)
                hits.append((tool_rate, f"tool {name}", ("tool", tenant.id, name)))
            if limits.principal_rate is not None:
                hits.append((limits.principal_rate, "principal", ("principal", tenant.id, principal.subject)))
            if limits.rate is not None:
                hits.append((limits.rate, "tenant", ("tenant", tenant.id)))
            if hits:
                try:
                    await self._hit(hits)
                except Refused as refusal:
                    if limits.rate is not None and refusal.reason.endswith(" per tenant"):
                        self._block(tenant.id, limits.rate, refusal)
                    raise
            if limits.concurrency is None or method not in _WORK:
                return _NOTHING_HELD
            running = self._inflight.get(tenant.id, 0)
            if running >= limits.concurrency:
                raise Refused(
                    f"rate limited: concurrency {limits.concurrency}",
                    f"Too many concurrent calls: at most {limits.concurrency} at once for this tenant",
                    1,
                )
        except Refused:
            if reserved is not None:  # the call does not run, so it does not use up the quota
                day, quota = reserved
                self._usage.count(tenant.id, refused=False, day=day, calls=-1)
                if quota is not None:
                    quota.day_calls -= 1
                    quota.month_calls -= 1
            raise
        self._inflight[tenant.id] = running + 1
        return _Admission(self._inflight, tenant.id)

    async def _reserve(self, tenant_id: str, limits: Limits) -> tuple[str, _Quota | None]:
        """Count the tool call in usage and against the tenant's quotas (its day, and its quota
        counts if it has quotas), or refuse it when a quota is used up. Counted before any other
        await, so calls arriving together cannot overshoot in this process."""
        if limits.daily is None and limits.monthly is None:
            day = _today()
            self._usage.count(tenant_id, refused=False, day=day)
            return day, None
        quota = await self._usage.quota(tenant_id)
        now = datetime.now(UTC)
        if limits.daily is not None and quota.day_calls >= limits.daily:
            raise Refused(
                f"quota exceeded: daily {limits.daily}",
                f"Daily quota exceeded: {limits.daily} tool calls per UTC day for this tenant",
                _until_tomorrow(now),
            )
        if limits.monthly is not None and quota.month_calls >= limits.monthly:
            raise Refused(
                f"quota exceeded: monthly {limits.monthly}",
                f"Monthly quota exceeded: {limits.monthly} tool calls per month for this tenant",
                _until_next_month(now),
            )
        quota.day_calls += 1
        quota.month_calls += 1
        self._usage.count(tenant_id, refused=False, day=quota.day)
        return quota.day, quota

    async def _hit(self, hits: list[tuple[str, str, tuple[str, ...]]]) -> None:
        """Count one hit on each of the windows (rate, scope as the refusal names it, key), or on
        none of them: raise `Refused` for the first without room."""
        items = [(self._item(rate), scope, key) for rate, scope, key in hits]
        if self._shared is not None and time.monotonic() >= self._redis_down_until:
            windows = [Window(item.key_for(*key), item.amount, item.get_expiry()) for item, _, key in items]
            try:
                full = await self._shared.hit(windows)
            except Exception as exc:  # Redis unreachable, timed out, or refused the script
                if self._on_redis_error == "fail_closed":
                    logger.warning("rate limits: Redis unavailable (%s); refusing (fail_closed)", exc)
                    raise Refused(
                        "rate limiter unavailable",
                        "The rate limiter is unavailable; the request was not run",
                        1,
                    ) from None
                logger.warning(
                    "rate limits: Redis unavailable (%s); limiting in this process for a while", exc
                )
                self._redis_down_until = time.monotonic() + _LOCAL_FALLBACK_SECONDS
            else:
                if full is not None:
                    index, wait = full
                    raise _rate_refusal(*items[index][:2], wait)
                return
        for item, scope, key in items:  # all in memory, no await that yields: atomic
            if not await self._local.test(item, *key):
                stats = await self._local.get_window_stats(item, *key)
                raise _rate_refusal(item, scope, stats.reset_time - time.time())
        for item, _, key in items:
            await self._local.hit(item, *key)

    # -- before the MCP layer ----------------------------------------------------------------

    def _block(self, tenant_id: str, rate: str, refusal: Refused) -> None:
        """Remember that the tenant's `rate` is used up: no slot frees before `refusal.wait`. Until
        then the HTTP gate refuses its requests before the SDK parses them, as long as `rate` is
        still the tenant's (an override that lifts or changes it ends the block)."""
        if len(self._blocked) > 100_000:
            self._blocked.clear()
        self._blocked[tenant_id] = (time.monotonic() + refusal.wait, rate, refusal)

    async def serve(
        self, token: TenantAccessToken, manager: StreamableHTTPSessionManager, scope: Scope, receive: Receive,
        send: Send,
    ) -> None:  # fmt: skip
        """Hand an authenticated HTTP request to the SDK, unless a limit refuses it first: a
        tenant whose rate is used up (HTTP 429, cheaper than a JSON-RPC refusal under a flood),
        or a new session over the tenant's cap."""
        blocked = self._blocked.get(token.tenant.id) if self._blocked else None
        if blocked is not None:
            if time.monotonic() < blocked[0] and (await self.limits_of(token.tenant)).rate == blocked[1]:
                replay = await self._refuse_early(token, blocked, scope, receive, send)
                if replay is None:
                    return
                receive = replay
            else:
                self._blocked.pop(token.tenant.id, None)
        if opens_session(manager, scope):
            await self.open_session(token, manager, scope, receive, send)
        else:
            await manager.handle_request(scope, receive, send)

    async def _refuse_early(
        self, token: TenantAccessToken, blocked: tuple[float, str, Refused], scope: Scope, receive: Receive,
        send: Send,
    ) -> Receive | None:  # fmt: skip
        """429 for a single JSON-RPC request (never a notification or a response, which a client
        must be able to deliver); None when refused, else a `receive` that replays the body.

        The 429 is held back until a slot frees (at most `_HOLD_SECONDS`, `_HOLD_MAX` requests per
        tenant at a time): a client that asks again as soon as it is answered, as a runaway agent
        does, then floods at the pace of its connections, not of the server's refusals, and leaves
        the event loop to the other tenants (a refusal still costs 0.25 ms of HTTP parsing)."""
        length = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if scope["method"] != "POST" or not length.isdigit() or int(length) > _PEEK_BYTES:
            return receive
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        if isinstance(request, dict) and "id" in request and request.get("method") not in (None, *_FREE):
            tenant_id = token.tenant.id
            reset_at, _, refusal = blocked
            self._usage.count(tenant_id, refused=True)
            self._audit.record(
                tenant_id=tenant_id, principal=token.principal.label,
                method=str(request["method"]), outcome="denied", reason=refusal.reason,
            )  # fmt: skip
            held = self._held.get(tenant_id, 0)
            if held < _HOLD_MAX:
                self._held[tenant_id] = held + 1
                try:
                    # Spread over `_HOLD_SPREAD`: released together, a flood's connections would all
                    # ask again at once, and several would reach the MCP layer before one re-arms this.
                    wait = max(0.0, reset_at - time.monotonic()) + random.random() * _HOLD_SPREAD  # noqa: S311
                    await anyio.sleep(min(_HOLD_SECONDS, wait))
                finally:
                    _release(self._held, tenant_id)
            retry_after = max(1, math.ceil(reset_at - time.monotonic()))
            response = _too_many(
                f"{refusal.message}; retry after {retry_after} s", retry_after, request["id"]
            )
            await response(scope, receive, send)
            return None
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay

    # -- sessions ----------------------------------------------------------------------------

    async def open_session(
        self, token: TenantAccessToken, manager: StreamableHTTPSessionManager, scope: Scope, receive: Receive,
        send: Send,
    ) -> None:  # fmt: skip
        """Serve a request that opens an HTTP session, unless the tenant has its `sessions` open.

        Each tenant's open sessions are the ids this process saw it open, minus those the SDK has
        since ended, checked only when the tenant is at its cap: O(cap), not O(all sessions).
        Requests still opening a session count too, so a burst cannot overshoot.
        """
        tenant = token.tenant
        limits = await self.limits_of(tenant)
        if limits.sessions is None:
            await manager.handle_request(scope, receive, send)
            return
        opening = self._opening.get(tenant.id, 0)
        ids = self._sessions.get(tenant.id, set())
        if len(ids) + opening >= limits.sessions:
            ids = {i for i in ids if session_open(manager, i)}  # some may have ended meanwhile
            self._sessions[tenant.id] = ids
        if len(ids) + opening >= limits.sessions:
            self._usage.count(tenant.id, refused=True)
            self._audit.record(
                tenant_id=tenant.id, principal=token.principal.label, method="http", outcome="denied",
                reason=f"rate limited: sessions {limits.sessions}",
            )  # fmt: skip
            await _too_many(
                f"Too many open sessions: at most {limits.sessions} for this tenant; close one (DELETE) "
                "or wait for an idle one to expire",
                30,
            )(scope, receive, send)
            return
        self._opening[tenant.id] = opening + 1
        opened: list[bytes] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                opened.extend(v for k, v in message.get("headers", ()) if k == b"mcp-session-id")
            await send(message)

        try:
            await manager.handle_request(scope, receive, watch)
        finally:
            _release(self._opening, tenant.id)
            session_id = opened[0].decode("latin-1") if opened else None
            if session_id is not None and session_open(manager, session_id):
                self._sessions.setdefault(tenant.id, set()).add(session_id)

    # -- background --------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Every second until cancelled, and once more on the way out: write usage counts, and
        record in Redis the hits admitted without asking it (`SharedWindows`)."""
        task_status.started()
        try:
            while True:
                await anyio.sleep(_FLUSH_SECONDS)
                await self._flush_logged("retrying")
        finally:
            with anyio.CancelScope(shield=True):
                await self._flush_logged("on shutdown")

    async def _flush_logged(self, when: str) -> None:
        try:
            await self._usage.flush()
        except Exception:
            logger.exception("usage counts could not be written (%s)", when)
        if self._shared is not None and time.monotonic() >= self._redis_down_until:
            try:
                await self._shared.report()
            except Exception as exc:
                logger.warning("rate limits: hits could not be recorded in Redis (%s); %s", exc, when)

    async def flush(self) -> None:
        await self._usage.flush()


def opens_session(manager: StreamableHTTPSessionManager, scope: Scope) -> bool:
    """Whether the SDK would open a new (2025-era) session for this request: stateful, no
    session id, and not a sessionless 2026-era request (as its `_handle_request` decides)."""
    if manager.stateless:
        return False
    version = None
    for name, value in scope["headers"]:
        if name == b"mcp-session-id":
            return False
        if name == b"mcp-protocol-version":
            version = value.decode("latin-1")
    return version is None or version in HANDSHAKE_PROTOCOL_VERSIONS


def _too_many(message: str, retry_after: int, request_id: Any = None) -> Response:
    body = {"jsonrpc": "2.0", "id": request_id, "error": {"code": RATE_LIMITED, "message": message,
                                                          "data": {"retryAfter": retry_after}}}  # fmt: skip
    return JSONResponse(body, status_code=429, headers={"Retry-After": str(retry_after)})


# -- control plane -----------------------------------------------------------------------------


async def read_override(cp: ControlPlane, tenant_id: str) -> dict[str, Any]:
    row = await cp.db.fetch_one("SELECT limits FROM tenant_limits WHERE tenant_id = ?", (tenant_id,))
    if row is None:
        return {}
    try:
        stored = json.loads(row["limits"])
        return check_override(stored)
    except (ValueError, TenantMCPError) as exc:
        # Written by hand or by a newer version: refuse to guess, and say where.
        raise ConfigurationError(f"stored limits of tenant {tenant_id} are invalid: {exc}") from None


async def write_override(cp: ControlPlane, tenant_id: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `values` into the tenant's stored override; a value of "default" removes that key."""
    current = await read_override(cp, tenant_id)
    for name, value in values.items():
        if value == "default":
            current.pop(name, None)
        else:
            current[name] = value
    check_override(current)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    await cp.db.execute(
        "INSERT INTO tenant_limits (tenant_id, limits, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (tenant_id) DO UPDATE SET limits = excluded.limits, updated_at = excluded.updated_at",
        (tenant_id, json.dumps(current, sort_keys=True), now),
    )
    return current


async def usage(cp: ControlPlane, tenant_id: str, since: str) -> list[dict[str, Any]]:
    """Per UTC day from `since` (YYYY-MM-DD): tool calls admitted and requests refused."""
    return await cp.db.fetch_all(
        "SELECT day, calls, refused FROM tenant_usage WHERE tenant_id = ? AND day >= ? ORDER BY day",
        (tenant_id, since),
    )
