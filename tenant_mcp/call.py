"""`Call`: the request being served, as the framework knows it once the credential is verified.

Built once per request by the pipeline (`tenant_mcp.pipeline`) and carried with it: the tenant
and principal, the catalogue entry the request names (looked up once), and the refusal the audit
should record. Handlers deeper down (the scoped server, the subscription bus) read it from a
context variable instead of being handed it through the SDK, which has no place for it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tenant_mcp.models import Principal, Tenant

if TYPE_CHECKING:
    from tenant_mcp.scoping.catalogue import Entry


@dataclass(slots=True)
class Call:
    """One authenticated request: who, what, and what the audit should say about it."""

    tenant: Tenant
    principal: Principal
    method: str
    params: Mapping[str, Any]
    # The tool or prompt a `tools/call` / `prompts/get` names, as the caller sees it: None when it
    # is missing or hidden (the two are never told apart). Resolved once, used by every step.
    entry: Entry[Any, Any] | None = None
    # Why the request was refused, when the answer itself does not say (a hidden item answers like
    # a missing one; a limit; a leak): recorded by the audit step.
    denied: str | None = None

    @property
    def name(self) -> str | None:
        """The item the request names (tool, prompt), or None."""
        name = self.params.get("name")
        return name if isinstance(name, str) else None


_current: contextvars.ContextVar[Call | None] = contextvars.ContextVar("tenant_mcp_call", default=None)


def current_call() -> Call | None:
    """The call being served on this task, or None outside a request."""
    return _current.get()


@contextmanager
def serving(call: Call) -> Iterator[Call]:
    """Make `call` the current call for the code inside."""
    reset = _current.set(call)
    try:
        yield call
    finally:
        _current.reset(reset)
