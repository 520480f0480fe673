"""The isolation test kit: point it at your app and it attacks it as another tenant.

```python
from tenant_mcp.testing import check_isolation

def test_my_server_keeps_tenants_apart():
    report = check_isolation("myproject.server:app")
    assert report.ok, report.text
```

What it does, against a real server on a loopback port with a throwaway control plane:

1. provisions tenants A and B on the same plan (so they see the same catalogue) with every scope the
   app declares, and C on a plan that sees the least, and plants a canary in each tenant's data;
2. discovers every tool, resource, template and prompt, and calls each as A with generated
   arguments that carry A's markers, harvesting ids, URIs and names from A's answers;
3. attacks every surface (tool, resource, template, prompt) as B right after A has written fresh
   marked data again, so nothing B does first can push A's data out of a bounded shared structure
   (a "recent activity" list, an LRU cache) before B looks: B's first call reads what A just wrote,
   then B tries every harvested id and URI exactly (up to a budget of calls, stated in the report),
   then property-based variations of them (hypothesis); B also asks for completions with prefixes of
   A's values and tries to pass A's tenant in arguments;
4. reports every response to B or C that contains anything of A's (its slug, name, canary or the
   values it wrote), every item hidden from C that answers differently from a missing one, and
   every tenant override that is not refused.

The app's leak guard runs in ``report`` mode meanwhile, so the kit sees what a leak looks like
instead of the guard's generic refusal.

`check_noninterference` (on this kit's clients and harvesting)
checks the quieter leaks too: that what one tenant sees does not depend on what another does.
"""

from tenant_mcp.testing._kit import Finding, IsolationKit, IsolationReport, check_isolation
from tenant_mcp.testing._noninterference import Interference, NoninterferenceReport, check_noninterference

__all__ = [
    "Finding",
    "Interference",
    "IsolationKit",
    "IsolationReport",
    "NoninterferenceReport",
    "check_isolation",
    "check_noninterference",
]
