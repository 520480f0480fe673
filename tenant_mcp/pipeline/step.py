"""What a pipeline step is: one concern, wrapped around the rest of the request.

A step gets the request's `Call` and a `call_next()` that runs the steps after it and finally
the SDK's handler; it may refuse (raise), or look at and change the result. Observers (audit,
telemetry) do not wrap: they are told when a request starts and how it ended.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from tenant_mcp.call import Call

Result = Any  # the SDK's HandlerResult: a result mapping or model, on its way to the client
Next = Callable[[], Awaitable[Result]]
Verdict = Literal["ok", "denied", "error"]


class Step(Protocol):
    async def __call__(self, call: Call, call_next: Next) -> Result: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a request ended: `ok`, `denied` (refused: a limit, an override, a hidden item, a
    leak) or `error`, with the reason the audit records."""

    verdict: Verdict
    reason: str | None
    duration_ms: float
    target: str | None  # the tool, prompt or URI the request named
    request_id: Any


class Observer(Protocol):
    def started(self, call: Call) -> None: ...
    def finished(self, call: Call, outcome: Outcome) -> None: ...
