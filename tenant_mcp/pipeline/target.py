"""What a request names and carries, as the audit and telemetry record it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def target_of(method: str, params: Mapping[str, Any]) -> str | None:
    """The tool, prompt or URI a request is about, or None."""
    if method in ("tools/call", "prompts/get"):
        return str(params.get("name"))
    if method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
        return str(params.get("uri"))
    if method == "completion/complete":
        ref = params.get("ref")
        if isinstance(ref, Mapping):
            return str(ref.get("name") or ref.get("uri"))
    return None


def arguments_of(method: str, params: Mapping[str, Any]) -> Any:
    """The arguments a request carries (audited as names, values only when configured)."""
    if method in ("tools/call", "prompts/get"):
        return params.get("arguments")
    if method == "completion/complete":
        return params.get("argument")
    return None
