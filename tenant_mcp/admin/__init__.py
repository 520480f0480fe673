"""The admin API: create, suspend, activate, delete and export tenants; keys, catalogue policies,
limits, secrets, canaries and the audit trail.

```python
from tenant_mcp import Admin

async with Admin(app) as admin:  # or Admin("postgresql://...", redis_url="redis://...")
    await admin.create_tenant("acme", plan="pro")
    record, key = await admin.create_key("acme", scopes=["notes:export"])
    await admin.delete_tenant("acme")  # suspend, drain, drop its data and rows, tell the replicas
```

`tenant-mcp` is a thin shell over it: what the CLI does, a program can do the same way.
"""

from tenant_mcp.admin.api import DEFAULT_DRAIN_SECONDS, Admin, AppSettings
from tenant_mcp.admin.replicas import Replicas
from tenant_mcp.admin.reports import TenantExport, TenantLimits, Usage
from tenant_mcp.controlplane import ItemState, KeyRecord, item_key
from tenant_mcp.secrets import SecretInfo

__all__ = [
    "DEFAULT_DRAIN_SECONDS",
    "Admin",
    "AppSettings",
    "ItemState",
    "KeyRecord",
    "Replicas",
    "SecretInfo",
    "TenantExport",
    "TenantLimits",
    "Usage",
    "item_key",
]
