"""`Invalidation`: which cached credential lookups another process has just made stale.

The CLI, the built-in OAuth server and other replicas send these (through Redis when several
processes serve; directly otherwise); authenticators, limiters and the catalogue act on them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Invalidation(BaseModel):
    """Cached credential lookups that another process has just made stale.

    `key`: an API key was revoked (id = key id). `tenant`: a tenant was suspended, activated or
    deleted, or its catalogue policy or limits changed (id = tenant id). `oauth`: tokens of the
    built-in authorization server were revoked (id = token family; receivers drop every cached
    grant). `all`: drop everything (after a reconnect, when messages may have been missed; a
    plan's defaults changed).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["key", "tenant", "oauth", "all"]
    id: str = Field(default="", max_length=200)
