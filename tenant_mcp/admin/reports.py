"""What the admin API hands back beyond tenants and keys: an export, a tenant's limits, its usage.

Plain frozen data, so a caller (the CLI, a web console, a test) formats it as it likes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tenant_mcp.controlplane import KeyRecord
from tenant_mcp.limits import Limits
from tenant_mcp.models import Tenant


@dataclass(frozen=True, slots=True)
class TenantExport:
    """Everything stored for a tenant: its row, its keys (never their digests) and its data."""

    tenant: Tenant
    keys: list[KeyRecord]
    tables: dict[str, list[dict[str, Any]]]

    def as_dict(self) -> dict[str, Any]:
        """The export as JSON-ready data (the format of `tenant-mcp tenant export`)."""
        return {
            "tenant": self.tenant.public(),
            "keys": [k.public(self.tenant.slug) for k in self.keys],
            "tables": self.tables,
        }


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """A tenant's stored override of its plan's limits (a value of None there: unlimited) and,
    when the admin knows the app's plans, the limits servers apply (`effective`)."""

    tenant: Tenant
    override: dict[str, Any]
    effective: Limits | None

    @property
    def quotas(self) -> dict[str, Any]:
        """What quotas count against: the effective limits, else what the override says."""
        return self.effective.as_dict() if self.effective is not None else self.override


def effective_limits(plans: Mapping[str, Limits], tenant: Tenant, override: Mapping[str, Any]) -> Limits:
    """The plan's defaults ("*" for any other plan) with the tenant's override on top."""
    return (plans.get(tenant.plan) or plans.get("*") or Limits()).with_override(override)


@dataclass(frozen=True, slots=True)
class Usage:
    """A tenant's tool calls and refusals per UTC day from `since`, and what its quotas leave."""

    limits: TenantLimits
    since: str
    days: list[dict[str, Any]]  # {"day", "calls", "refused"}, oldest first
    today: int  # calls today (UTC)
    this_month: int  # calls this calendar month (UTC)
    quota_left: dict[str, int | None]  # "daily", "monthly": None when unlimited or unknown

    @property
    def calls(self) -> int:
        return sum(d["calls"] for d in self.days)

    @property
    def refused(self) -> int:
        return sum(d["refused"] for d in self.days)


def month_start() -> str:
    return time.strftime("%Y-%m-01", time.gmtime())


def usage(limits: TenantLimits, since: str, rows: Sequence[Mapping[str, Any]]) -> Usage:
    """`rows`: the days from `min(since, month_start())`, so this month's total is complete."""
    today = time.strftime("%Y-%m-%d", time.gmtime())
    used = {
        "daily": sum(d["calls"] for d in rows if d["day"] == today),
        "monthly": sum(d["calls"] for d in rows if d["day"][:7] == today[:7]),
    }
    left: dict[str, int | None] = {}
    for period, n in used.items():
        quota = limits.quotas.get(period)
        left[period] = None if quota is None else max(0, quota - n)
    shown = [dict(d) for d in rows if d["day"] >= since]
    return Usage(limits, since, shown, used["daily"], used["monthly"], left)
