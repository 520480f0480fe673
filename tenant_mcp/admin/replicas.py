"""`Replicas`: the one place from which an administrative change reaches the serving processes.

A change is stored in the control plane first; every replica notices it within its credential
cache window anyway. With Redis it notices at once: the change is announced on the channel the
replicas listen to, and a deleted tenant's session streams are removed there as well.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from tenant_mcp.auth.invalidation import Invalidation
from tenant_mcp.replication.redis import DEFAULT_PREFIX, BrokerError, drop_tenant_data, publish_invalidation

logger = logging.getLogger("tenant_mcp.admin")

OnAnnounceError = Callable[[BrokerError], None]


def _log(exc: BrokerError) -> None:
    logger.warning("%s; servers notice within their cache window", exc)


class Replicas:
    """Announces invalidations to every replica through Redis (nothing to do without it).

    An unreachable Redis does not undo or fail the change, which is already stored: `on_error`
    is told (by default a logged warning) and the replicas catch up within their cache window.
    """

    def __init__(
        self, redis_url: str | None, prefix: str | None = None, *, on_error: OnAnnounceError | None = None
    ) -> None:
        self.redis_url = redis_url or None  # "" (an empty variable) is no Redis
        self.prefix = prefix or DEFAULT_PREFIX
        self._on_error = on_error or _log

    async def announce(self, invalidation: Invalidation, *, deleted: bool = False) -> None:
        """Tell the replicas to drop what they cached about the change now; for a deleted tenant
        (`deleted`, invalidation of kind "tenant") also delete what Redis holds of it."""
        if self.redis_url is None:
            return
        try:
            await publish_invalidation(self.redis_url, invalidation, prefix=self.prefix)
            if deleted:
                await drop_tenant_data(self.redis_url, invalidation.id, prefix=self.prefix)
        except BrokerError as exc:
            self._on_error(exc)

    async def tenant_changed(self, tenant_id: str, *, deleted: bool = False) -> None:
        """A tenant's status, catalogue policy or limits changed, or (`deleted`) it is gone."""
        await self.announce(Invalidation(kind="tenant", id=tenant_id), deleted=deleted)
