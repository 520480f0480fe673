"""What 2025-era sessions and listen streams hold: list_changed watchers, resource subscriptions
and open `subscriptions/listen` streams, per tenant and capped.

A session that listed items hears when its tenant's lists change; a session subscribed to a URI
hears that tenant's updates of it. Everything is keyed by (tenant slug, session), released when the
session ends, and bounded per session and per tenant so a client cannot make the process hold an
unbounded number of listeners. Whether an item is visible is the scoped server's decision, made
before anything here runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import (
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
)
from mcp_types import INVALID_REQUEST

from tenant_mcp import _sdk
from tenant_mcp.scoping.subscriptions import TenantSubscriptionBus

Owner = tuple[str, str]  # (tenant slug, session key)


def _session_id(ctx: ServerRequestContext[Any, Any]) -> str | None:
    """The session's id over HTTP (None for a request outside any session), or the connection's
    identity over stdio."""
    headers = getattr(ctx.request, "headers", None)
    return headers.get("mcp-session-id") if headers is not None else f"connection:{id(ctx.session)}"


class SessionSubscriptions:
    def __init__(self, bus: TenantSubscriptionBus, per_session: int, per_tenant: int) -> None:
        self._bus = bus
        self.max_per_session = per_session
        self.max_per_tenant = per_tenant
        self._resources: dict[Owner, dict[str, Callable[[], None]]] = {}  # owner -> uri -> release
        self._per_tenant: dict[str, int] = {}  # slug -> its subscriptions plus open listen streams
        self._list_watchers: dict[Owner, Callable[[], None]] = {}
        self._forwarding: set[asyncio.Task[None]] = set()
        self.open_listen_streams = 0  # every tenant's, for the metrics

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._forwarding.add(task)
        task.add_done_callback(self._forwarding.discard)

    # -- list_changed --------------------------------------------------------------------------

    def watch_lists(self, ctx: ServerRequestContext[Any, Any], slug: str) -> None:
        """The session of this listing hears when its tenant's lists change (a catalogue policy, a
        run-time registration), for as long as it lives. Requests without a session id (stateless,
        2026-07-28) are left out: they have no stream to hear on, or listen streams of their own."""
        session_id = _session_id(ctx)
        if session_id is None or (slug, session_id) in self._list_watchers:
            return
        owner, session = (slug, session_id), ctx.session
        senders = {
            ToolsListChanged: session.send_tool_list_changed,
            PromptsListChanged: session.send_prompt_list_changed,
            ResourcesListChanged: session.send_resource_list_changed,
        }

        async def send(notify: Callable[[], Awaitable[None]]) -> None:
            with contextlib.suppress(Exception):  # the session is gone; the exit stack releases us
                await notify()

        def listener(event: ServerEvent) -> None:
            notify = senders.get(type(event))
            if notify is not None:
                self._spawn(send(notify))

        self._list_watchers[owner] = self._bus.subscribe(listener)
        _sdk.on_session_end(session, self._unwatch_lists, owner)

    def _unwatch_lists(self, owner: Owner) -> None:
        release = self._list_watchers.pop(owner, None)
        if release is not None:
            release()

    # -- places under the caps -----------------------------------------------------------------

    def _take_place(self, slug: str, session: dict[str, Callable[[], None]] | None, own: int | None) -> None:
        """Count one more subscription of the tenant (and session), or refuse past a cap: the
        server's, or `own` (the tenant's `subscriptions` limit) when lower. A refusal by `own` says
        so in its data, as the refusals of other limits do."""
        data = None
        if session is not None and len(session) >= self.max_per_session:
            limit = f"{self.max_per_session} per session"
        elif own is not None and own < self.max_per_tenant and self._per_tenant.get(slug, 0) >= own:
            limit, data = f"{own} per tenant", {"reason": f"rate limited: subscriptions {own}"}
        elif self._per_tenant.get(slug, 0) >= self.max_per_tenant:
            limit = f"{self.max_per_tenant} per tenant"
        else:
            self._per_tenant[slug] = self._per_tenant.get(slug, 0) + 1
            return
        raise MCPError(
            code=INVALID_REQUEST, message=f"Subscription limit reached: at most {limit}", data=data
        )

    def _free_place(self, slug: str) -> None:
        left = self._per_tenant.get(slug, 0) - 1
        if left > 0:
            self._per_tenant[slug] = left
        else:
            self._per_tenant.pop(slug, None)

    # -- resource subscriptions ----------------------------------------------------------------

    @staticmethod
    def _owner(ctx: ServerRequestContext[Any, Any], slug: str) -> Owner:
        return slug, _session_id(ctx) or f"connection:{id(ctx.session)}"

    async def subscribe(
        self, ctx: ServerRequestContext[Any, Any], slug: str, uri: str, own: int | None = None
    ) -> None:
        """Forward the tenant's updates of `uri` (already checked visible) to this session, until
        unsubscribe or the session's end. `own`: the tenant's `subscriptions` limit, if any."""
        owner = self._owner(ctx, slug)
        known = self._resources.get(owner)
        if known is not None and uri in known:
            return
        self._take_place(slug, known or {}, own)
        if known is None:
            known = self._resources[owner] = {}
            _sdk.on_session_end(ctx.session, self._drop, owner)  # registered once per session
        session = ctx.session

        # Whether the subscriber's credential still holds is the transport's to check, against the
        # credential live now (a refreshed token included): it gates every push and closes the
        # streams of a revoked one (`tenant_mcp.transports.http`).
        async def forward() -> None:
            try:
                await session.send_resource_updated(uri)
            except Exception:  # the session is gone: stop forwarding to it
                self._drop(owner, uri)

        def listener(event: ServerEvent) -> None:
            if isinstance(event, ResourceUpdated) and event.uri == uri:
                self._spawn(forward())

        known[uri] = self._bus.subscribe(listener)
        (await self._bus.hold())()  # returns once other replicas' updates can arrive

    def unsubscribe(self, ctx: ServerRequestContext[Any, Any], slug: str, uri: str) -> None:
        self._drop(self._owner(ctx, slug), uri)

    def _drop(self, owner: Owner, uri: str | None = None) -> None:
        """Release one subscription of a session, or (uri None) all of them."""
        session = self._resources.get(owner)
        if session is None:
            return
        for key in [uri] if uri is not None else list(session):
            release = session.pop(key, None)
            if release is not None:
                release()
                self._free_place(owner[0])
        if uri is None:  # kept while the session lives: its exit-stack callback is registered once
            del self._resources[owner]

    # -- listen streams ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def listening(self, slug: str, own: int | None = None) -> AsyncIterator[None]:
        """Around a `subscriptions/listen` stream: it counts against the tenant's cap, and starts
        once the tenant's events from other replicas can arrive (the SDK acknowledges right after
        subscribing, and the client may act on the ack at once)."""
        self._take_place(slug, None, own)
        self.open_listen_streams += 1
        try:
            release = await self._bus.hold()
            try:
                yield
            finally:
                release()
        finally:
            self.open_listen_streams -= 1
            self._free_place(slug)
