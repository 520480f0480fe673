"""Errors a developer or operator sees. Nothing here is sent to an MCP client verbatim."""

from __future__ import annotations

from typing import TypeVar

_T = TypeVar("_T")


class TenantMCPError(Exception):
    """Base class for errors raised by tenant_mcp."""


class ConfigurationError(TenantMCPError):
    """The server or CLI was configured in a way that cannot work (bad URL, missing key file, ...)."""


class NotFoundError(TenantMCPError):
    """A tenant or key named by an operator does not exist."""


class AuthenticationError(TenantMCPError):
    """A credential was missing, malformed, expired, revoked or for a suspended tenant.

    The message is for logs and audit only; clients always get the same generic 401 so a probe
    cannot tell a revoked key from a key that never existed.
    """


def required(value: _T | None, message: str, error: type[TenantMCPError] = TenantMCPError) -> _T:
    """`value`, which is only None when what provides it is missing (not running, not configured)."""
    if value is None:
        raise error(message)
    return value
