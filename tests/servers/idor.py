"""A deliberately buggy server (tests only): an IDOR on one specific id among many.

`import_docs` stores 50 documents per call under ids from one counter shared by all tenants.
`get_doc` checks the owner, except on the "pinned" fast path (BUG: the 38th document of every
import is served without the tenant check). Only an attacker who tries that exact id sees it.
"""

from __future__ import annotations

import itertools

from tenant_mcp import TenantContext, TenantMCP

app = TenantMCP("idor")
_docs: dict[int, tuple[str, str]] = {}
_ids = itertools.count(7001)
_BATCH = 50


@app.tool()
async def import_docs(title: str, ctx: TenantContext) -> list[int]:
    ids = []
    for k in range(_BATCH):
        doc_id = next(_ids)
        _docs[doc_id] = (ctx.tenant.id, f"{title} (part {k})")
        ids.append(doc_id)
    return ids


@app.tool()
async def get_doc(doc_id: int, ctx: TenantContext) -> str:
    owner, text = _docs.get(doc_id, ("", ""))
    pinned = (doc_id - 7001) % _BATCH == 37
    if owner and (owner == ctx.tenant.id or pinned):  # BUG: the pinned path skips the owner check
        return text
    return "no such document"
