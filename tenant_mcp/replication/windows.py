"""Moving windows of request rates shared by the replicas in Redis, synced in batches.

Asking Redis for every request costs a round trip of the event loop (50-80 us of CPU in redis-py,
a tenth of a simple request). So each replica keeps, per window, a small local budget: far from
the limit it admits up to `_SHARE` of the headroom it last saw (at most `_MAX_BATCH` hits, for at
most a tenth of the window) without asking, and reports those hits with its next round trip.
Close to the limit the budget is 0 and every hit asks Redis, so the limit is exact there. All the
windows of one request (tenant, principal, tool) are checked and hit in one script, all or none.

What this gives up: with N replicas, hits admitted but not yet reported are at most N x `_SHARE`
of the limit, so a tenant flooding every replica at once can be admitted up to that much over
its limit (5 % per replica). Reported hits carry the time of their report, not of their
admission, so they stay in the window a little longer: the error errs towards refusing.
Timestamps are Redis's clock, so replicas' clocks need not agree.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis

_SHARE = 0.05  # of the headroom a replica may admit without asking
_MAX_BATCH = 100  # hits a replica may admit without asking, at most
_MAX_AGE = 1.0  # seconds a budget is good for, at most (and a tenth of the window)

# KEYS: one list of hit times per window, newest first. ARGV: per window its limit, its length in
# seconds, the hits already admitted to record whatever the count, then `want`: 1 to admit one
# more hit on every window (or on none), 0 to record only. Returns: the index (1-based) of the
# first window without room or 0, then per window the hits in it and, if full, the milliseconds
# until its oldest hit leaves it.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = #KEYS
local want = tonumber(ARGV[3 * n + 1])
local counts, full = {}, 0
for i = 1, n do
  local key, limit, expiry = KEYS[i], tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1])
  local last = redis.call('LINDEX', key, -1)
  while last and tonumber(last) <= now - expiry do
    redis.call('RPOP', key)
    last = redis.call('LINDEX', key, -1)
  end
  local done = tonumber(ARGV[3 * i])
  while done > 0 do
    local batch = {}
    for j = 1, math.min(done, 1000) do batch[j] = now end
    redis.call('LPUSH', key, unpack(batch))
    done = done - #batch
  end
  redis.call('LTRIM', key, 0, limit - 1)
  counts[i] = redis.call('LLEN', key)
  if full == 0 and want == 1 and counts[i] >= limit then full = i end
end
local out = {full}
for i = 1, n do
  local key, limit, expiry = KEYS[i], tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1])
  local wait = 0
  if want == 1 and full == 0 then
    redis.call('LPUSH', key, now)
    counts[i] = counts[i] + 1
  elseif counts[i] >= limit then
    wait = math.ceil((tonumber(redis.call('LINDEX', key, limit - 1)) + expiry - now) * 1000)
  end
  redis.call('EXPIRE', key, math.ceil(expiry))
  out[#out + 1] = counts[i]
  out[#out + 1] = wait
end
return out
"""


@dataclass(frozen=True, slots=True)
class Window:
    """One moving window: at most `limit` hits in any `seconds`, under `key`."""

    key: str
    limit: int
    seconds: int


@dataclass(slots=True)
class _Budget:
    window: Window
    left: int = 0  # hits this replica may still admit without asking
    until: float = 0.0  # monotonic deadline of `left`
    unreported: int = 0  # hits admitted without asking, not yet recorded in Redis
    asking: int = 0  # round trips under way

    def idle(self, now: float) -> bool:
        return not (self.unreported or self.asking or (self.left and now < self.until))


class SharedWindows:
    """The windows of every rate in one Redis; `hit` admits a request on all its windows or none."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._script = redis.register_script(_SCRIPT)
        self._prefix = prefix
        self._budgets: dict[str, _Budget] = {}

    @classmethod
    def connect(cls, url: str, prefix: str) -> SharedWindows:
        """Short timeouts: a hung Redis must slow a request down by a second at most, not hang it."""
        from redis.asyncio import Redis

        return cls(Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0), prefix)

    async def hit(self, windows: list[Window]) -> tuple[int, float] | None:
        """None when admitted; else (index of the first full window, seconds until it has room).
        Raises whatever Redis raises (unreachable, timed out): the caller decides what that means."""
        now = time.monotonic()
        budgets = [self._budget(w) for w in windows]
        if all(b.left > 0 and now < b.until for b in budgets):
            for b in budgets:
                b.left -= 1
                b.unreported += 1
            return None
        answer = await self._run(budgets, want=True)
        full = answer[0]
        for window, budget, count in zip(windows, budgets, answer[1::2], strict=True):
            headroom = window.limit - count
            budget.left = min(_MAX_BATCH, math.floor(headroom * _SHARE))
            budget.until = now + min(_MAX_AGE, window.seconds / 10)
        if full:
            return full - 1, answer[2 * full] / 1000
        return None

    async def report(self) -> None:
        """Record the hits admitted without asking (called every second, so that windows gone
        quiet still reach Redis), and forget budgets that are used up or stale."""
        now = time.monotonic()
        owed = [b for b in self._budgets.values() if b.unreported]
        self._budgets = {k: b for k, b in self._budgets.items() if not b.idle(now)}
        if owed:
            await self._run(owed, want=False)

    def _budget(self, window: Window) -> _Budget:
        budget = self._budgets.get(window.key)
        if budget is None or budget.window != window:  # a new limit: start from Redis's count
            budget = self._budgets[window.key] = _Budget(window)
        return budget

    async def _run(self, budgets: list[_Budget], *, want: bool) -> list[int]:
        reported = [b.unreported for b in budgets]
        keys: list[str] = []
        args: list[int] = []
        for b, done in zip(budgets, reported, strict=True):
            b.left = b.unreported = 0
            b.asking += 1
            keys.append(f"{self._prefix}:{b.window.key}")
            args += [b.window.limit, b.window.seconds, done]
        try:
            answer = await self._script(keys=keys, args=[*args, int(want)])
        except BaseException:
            for b, done in zip(budgets, reported, strict=True):  # recorded with a later round trip
                b.unreported += done
            raise
        finally:
            for b in budgets:
                b.asking -= 1
        return [int(x) for x in answer]
