"""The enforcement point: an `MCPServer` whose every list, call, read and get goes through the
catalogue for the current tenant.

Overriding the public `MCPServer` methods (not short-circuiting in middleware) matters: the SDK
then builds the response for a hidden item on exactly the same path as for a missing one, so the
two are byte-identical on the wire and nothing reveals that another tenant's item exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import pydantic_core
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.context import ServerMiddleware, ServerRequestContext
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import (
    ResourceError,
    ResourceNotFoundError,
    ToolError,
    UnexpectedResourceError,
)
from mcp.server.mcpserver.resources.templates import ResourceSecurityError
from mcp.server.subscriptions import ListenHandler
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import (
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
)
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    CallToolResult,
    CompleteRequestParams,
    CompleteResult,
    Completion,
    EmptyResult,
    GetPromptResult,
    InputRequiredResult,
    PromptReference,
    ResourceTemplateReference,
    SetLevelRequestParams,
    SubscribeRequestParams,
    SubscriptionsListenRequestParams,
    SubscriptionsListenResult,
    UnsubscribeRequestParams,
)
from mcp_types import Prompt as MCPPrompt
from mcp_types import Resource as MCPResource
from mcp_types import ResourceTemplate as MCPResourceTemplate
from mcp_types import Tool as MCPTool
from pydantic.networks import AnyUrl

from tenant_mcp import _sdk
from tenant_mcp.audit.leakguard import Markers
from tenant_mcp.auth.authenticator import TenantAccessToken
from tenant_mcp.call import Call, current_call
from tenant_mcp.context import TenantContext
from tenant_mcp.scoping.catalogue import Catalogue, StaticResource
from tenant_mcp.scoping.subscriptions import TenantSubscriptionBus
from tenant_mcp.secrets import TenantSecrets

if TYPE_CHECKING:
    from tenant_mcp.runtime import Runtime

CompletionHandler = Callable[..., Any]


def _ignore(value: str) -> None:
    """Without a leak guard there is nothing to register a secret with."""


def _require_call() -> Call:
    call = current_call()
    if call is None:
        # The middleware refuses unauthenticated requests before any handler runs; reaching
        # here means a code path bypassed it, so fail closed.
        raise MCPError(code=INTERNAL_ERROR, message="No tenant")
    return call


def _resource_bytes(value: Any) -> str | bytes:
    if isinstance(value, str | bytes):
        return value
    return json.dumps(pydantic_core.to_jsonable_python(value))


class ScopedServer(MCPServer[Any]):
    def __init__(
        self,
        name: str,
        *,
        catalogue: Catalogue,
        pipeline: ServerMiddleware[Any],
        instructions: str | None,
        version: str,
        max_subscriptions: tuple[int, int] = (1000, 10_000),
    ) -> None:
        self.catalogue = catalogue
        self.tenant_bus = TenantSubscriptionBus()
        # Set by `TenantMCP.running()` while the server serves: the services tools are bound to.
        self.runtime: Runtime | None = None
        self.completion_handler: CompletionHandler | None = None
        super().__init__(
            name,
            instructions=instructions,
            version=version,
            subscriptions=self.tenant_bus,
            middleware=[pipeline],
            warn_on_duplicate_tools=False,
        )
        ll = _sdk.lowlevel(self)
        # The SDK validates Mcp-Param headers against the tool's schema *before* middleware. Its
        # own lookup finds hidden tools (an oracle); without one it runs a whole scoped tools/list
        # per call (audited as a listing the client never sent). Answer for the caller instead.
        ll.get_tool_input_schema = self._input_schema
        for method in ("tools/list", "prompts/list", "resources/list"):
            _sdk.before_request(self, method, self._watch_lists)
        ll.add_request_handler("completion/complete", CompleteRequestParams, self._complete)
        ll.add_request_handler("logging/setLevel", SetLevelRequestParams, self._set_level)
        ll.add_request_handler("resources/subscribe", SubscribeRequestParams, self._subscribe)
        ll.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, self._unsubscribe)
        self._listen_handler = ListenHandler(self.tenant_bus)
        ll.add_request_handler("subscriptions/listen", SubscriptionsListenRequestParams, self._listen)
        # (tenant slug, session) -> uri -> release of the forwarding listener
        self._resource_subscriptions: dict[tuple[str, str], dict[str, Callable[[], None]]] = {}
        # tenant slug -> its resource subscriptions plus its open listen streams, in this process
        self._per_tenant: dict[str, int] = {}
        self.max_subscriptions_per_session, self.max_subscriptions_per_tenant = max_subscriptions
        self._forwarding: set[asyncio.Task[None]] = set()
        # 2025-era sessions that listed items: they hear list_changed for their tenant
        self._list_watchers: dict[tuple[str, str], Callable[[], None]] = {}

    # -- helpers -------------------------------------------------------------------------------

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        """The calling tenant's view of a tool's input schema: hidden and missing are both None.
        Runs before middleware, on the request's task: the gate has verified the token."""
        token = get_access_token()
        if not isinstance(token, TenantAccessToken):
            return None
        entry = self.catalogue.tools.visible(name, token.tenant, token.principal)
        return entry.wire.input_schema if entry else None

    def _bind(self, base: Context[Any, Any] | None, call: Call) -> TenantContext:
        base = base or Context(mcp_server=self, subscriptions=self.tenant_bus)
        rt = self.runtime
        if rt is None:
            return TenantContext._bind(base, call.tenant, call.principal, None)
        db = rt.store.database(call.tenant.id)
        markers = Markers(rt.leak_guard, rt.control_plane, call.tenant.id)
        guard, tenant_id = rt.leak_guard, call.tenant.id
        secrets = TenantSecrets(
            rt.secrets,
            tenant_id,
            call.tenant.slug,
            (lambda v: guard.add_secret(tenant_id, v)) if guard else _ignore,
        )
        return TenantContext._bind(base, call.tenant, call.principal, db, markers, secrets)

    @contextlib.asynccontextmanager
    async def _context(self, base: Context[Any, Any] | None, call: Call) -> AsyncIterator[TenantContext]:
        """The caller's `TenantContext` for one handler: its database work commits when the
        handler returns and rolls back when it raises."""
        ctx = self._bind(base, call)
        try:
            yield ctx
        except BaseException:
            await self._end(ctx, call, commit=False)
            raise
        await self._end(ctx, call, commit=True)

    @staticmethod
    async def _end(ctx: TenantContext, call: Call, *, commit: bool) -> None:
        if ctx._db is not None:
            await ctx.db._finish(commit=commit)
            if ctx._db.refusal is not None:  # recorded even when the tool caught the error
                call.denied = ctx._db.refusal

    @staticmethod
    def _hidden(call: Call, kind: str, key: str, exists: bool) -> None:
        call.denied = f"{kind} {'not visible' if exists else 'unknown'}: {key}"

    # -- list_changed for 2025-era sessions -------------------------------------------------------

    def _watch_lists(self, ctx: ServerRequestContext[Any, Any]) -> None:
        """A session that lists items hears when its tenant's lists change (a catalogue policy, a
        run-time registration), for as long as it lives. Requests without a session id (stateless,
        2026-07-28) are left out: they have no stream to hear on, or listen streams of their own."""
        call = current_call()
        headers = getattr(ctx.request, "headers", None)
        session_id = headers.get("mcp-session-id") if headers is not None else f"connection:{id(ctx.session)}"
        if call is None or session_id is None:
            return
        owner = (call.tenant.slug, session_id)
        if owner in self._list_watchers:
            return
        session, loop = ctx.session, asyncio.get_running_loop()
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
                task = loop.create_task(send(notify))
                self._forwarding.add(task)
                task.add_done_callback(self._forwarding.discard)

        self._list_watchers[owner] = self.tenant_bus.subscribe(listener)
        _sdk.on_session_end(ctx.session, self._unwatch_lists, owner)

    def _unwatch_lists(self, owner: tuple[str, str]) -> None:
        release = self._list_watchers.pop(owner, None)
        if release is not None:
            release()

    # -- tools ---------------------------------------------------------------------------------

    async def list_tools(self) -> list[MCPTool]:
        call = _require_call()
        return self.catalogue.tools.listing(call.tenant, call.principal)

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        call = _require_call()
        # The pipeline looked the entry up once for this request; look up only a name it did not.
        if call.method == "tools/call" and call.name == name:
            entry = call.entry
        else:
            entry = self.catalogue.tools.visible(name, call.tenant, call.principal)
        if entry is None:
            self._hidden(call, "tool", name, self._exists(self.catalogue.tools, name))
            raise ToolError(f"Unknown tool: {name}")  # the SDK's own words for a missing tool
        async with self._context(context, call) as ctx:
            result: CallToolResult | InputRequiredResult = await entry.item.run(
                arguments, ctx, convert_result=True
            )
        return result

    @staticmethod
    def _exists(section: Any, key: str) -> bool:
        return key in section.shared or any(key in own for own in section.private.values())

    # -- resources -----------------------------------------------------------------------------

    async def list_resources(self) -> list[MCPResource]:
        call = _require_call()
        return self.catalogue.resources.listing(call.tenant, call.principal)

    async def list_resource_templates(self) -> list[MCPResourceTemplate]:
        call = _require_call()
        return self.catalogue.templates.listing(call.tenant, call.principal)

    async def read_resource(
        self, uri: AnyUrl | str, context: Context[Any, Any] | None = None
    ) -> Iterable[ReadResourceContents] | InputRequiredResult:
        call = _require_call()
        async with self._context(context, call) as ctx:
            return await self._read(str(uri), call, ctx)

    async def _read(
        self, uri: str, call: Call, ctx: TenantContext
    ) -> Iterable[ReadResourceContents] | InputRequiredResult:
        static = self.catalogue.resources.visible(uri, call.tenant, call.principal)
        try:
            if static is not None:
                res: StaticResource = static.item
                kwargs = {res.context_kwarg: ctx} if res.context_kwarg else {}
                value = res.fn(**kwargs)
                if hasattr(value, "__await__"):
                    value = await value
                mime = res.mime_type or ("text/plain" if isinstance(value, str) else "application/json")
                return [ReadResourceContents(content=_resource_bytes(value), mime_type=mime)]
            for entry in self.catalogue.templates.entries(call.tenant, call.principal):
                try:
                    params = entry.item.matches(uri)
                except ResourceSecurityError:
                    break
                if params is None:
                    continue
                resource = await entry.item.create_resource(uri, params, context=ctx)
                if isinstance(resource, InputRequiredResult):
                    return resource
                content = await resource.read()
                return [
                    ReadResourceContents(content=content, mime_type=resource.mime_type, meta=resource.meta)
                ]
        except (MCPError, ResourceError):
            raise
        except Exception as exc:
            raise UnexpectedResourceError(f"Error reading resource {uri}") from exc
        self._hidden(call, "resource", uri, self._exists(self.catalogue.resources, uri))
        raise ResourceNotFoundError(f"Unknown resource: {uri}")

    # -- prompts -------------------------------------------------------------------------------

    async def list_prompts(self) -> list[MCPPrompt]:
        call = _require_call()
        return self.catalogue.prompts.listing(call.tenant, call.principal)

    async def get_prompt(
        self, name: str, arguments: dict[str, Any] | None = None, context: Context[Any, Any] | None = None
    ) -> GetPromptResult | InputRequiredResult:
        call = _require_call()
        if call.method == "prompts/get" and call.name == name:
            entry = call.entry
        else:
            entry = self.catalogue.prompts.visible(name, call.tenant, call.principal)
        if entry is None:
            self._hidden(call, "prompt", name, self._exists(self.catalogue.prompts, name))
            # An MCPError, not the SDK's ValueError: that one is logged with a full traceback, and
            # any client could drive the log volume with unknown names.
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown prompt: {name}")
        given = arguments or {}
        missing = [a.name for a in entry.item.arguments or () if a.required and a.name not in given]
        if missing:  # checked here for the same reason (the SDK raises ValueError)
            raise MCPError(code=INVALID_PARAMS, message=f"Missing required arguments: {', '.join(missing)}")
        async with self._context(context, call) as ctx:
            try:
                rendered = await entry.item.render(arguments, ctx)
            except MCPError:
                raise
            except Exception as exc:
                raise ValueError(str(exc)) from exc
        if isinstance(rendered, InputRequiredResult):
            return rendered
        return GetPromptResult(
            description=entry.item.description, messages=pydantic_core.to_jsonable_python(rendered)
        )

    # -- logging and resource subscriptions (2025-era sessions) ---------------------------------

    async def _set_level(
        self, ctx: ServerRequestContext[Any, Any], params: SetLevelRequestParams
    ) -> EmptyResult:
        """Accepted so clients can opt in; log messages go only to the requesting session anyway."""
        _require_call()
        return EmptyResult()

    def _visible_uri(self, uri: str, call: Call) -> bool:
        if self.catalogue.resources.visible(uri, call.tenant, call.principal) is not None:
            return True
        for entry in self.catalogue.templates.entries(call.tenant, call.principal):
            try:
                if entry.item.matches(uri) is not None:
                    return True
            except ResourceSecurityError:
                return False
        return False

    @staticmethod
    def _session_key(ctx: ServerRequestContext[Any, Any]) -> str:
        headers = getattr(ctx.request, "headers", None)
        return (
            headers.get("mcp-session-id") if headers is not None else None
        ) or f"connection:{id(ctx.session)}"

    async def _tenant_cap(self, call: Call) -> int:
        """The subscriptions the caller's tenant may hold here: the server's cap, or the tenant's
        `subscriptions` limit (its plan's, or its override) when lower."""
        rt = self.runtime
        own = (await rt.limiter.limits_of(call.tenant)).subscriptions if rt is not None else None
        if own is not None and own < self.max_subscriptions_per_tenant:
            return own
        return self.max_subscriptions_per_tenant

    def _take_place(self, call: Call, session: dict[str, Callable[[], None]] | None, cap: int) -> None:
        """Count one more subscription of the tenant (and session), or refuse past a cap."""
        slug = call.tenant.slug
        if session is not None and len(session) >= self.max_subscriptions_per_session:
            limit = f"{self.max_subscriptions_per_session} per session"
        elif self._per_tenant.get(slug, 0) >= cap:
            limit = f"{cap} per tenant"
            if cap < self.max_subscriptions_per_tenant:  # the tenant's own limit bit: audit it as one
                call.denied = f"rate limited: subscriptions {cap}"
        else:
            self._per_tenant[slug] = self._per_tenant.get(slug, 0) + 1
            return
        raise MCPError(code=INVALID_REQUEST, message=f"Subscription limit reached: at most {limit}")

    def _free_place(self, slug: str) -> None:
        left = self._per_tenant.get(slug, 0) - 1
        if left > 0:
            self._per_tenant[slug] = left
        else:
            self._per_tenant.pop(slug, None)

    def _drop(self, owner: tuple[str, str], uri: str | None = None) -> None:
        """Release one subscription of a session, or (uri None) all of them."""
        session = self._resource_subscriptions.get(owner)
        if session is None:
            return
        for key in [uri] if uri is not None else list(session):
            release = session.pop(key, None)
            if release is not None:
                release()
                self._free_place(owner[0])
        if uri is None:  # kept while the session lives: its exit-stack callback is registered once
            del self._resource_subscriptions[owner]

    async def _subscribe(
        self, ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams
    ) -> EmptyResult:
        """Forward this tenant's updates of `uri` to this session. Another tenant's URI, or one the
        caller cannot see, is refused exactly like an unknown resource. Capped per session and
        per tenant; released by unsubscribe or with the session."""
        call = _require_call()
        uri = str(params.uri)
        if not self._visible_uri(uri, call):
            self._hidden(call, "resource", uri, self._exists(self.catalogue.resources, uri))
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown resource: {uri}", data={"uri": uri})
        cap = await self._tenant_cap(call)
        owner = (call.tenant.slug, self._session_key(ctx))
        known = self._resource_subscriptions.get(owner)
        if known is not None and uri in known:
            return EmptyResult()
        self._take_place(call, known or {}, cap)
        if known is None:
            known = self._resource_subscriptions[owner] = {}
            # When the session ends (DELETE, idle timeout, shutdown) the SDK unwinds its
            # connection's exit stack (reachable from a lowlevel handler only through the
            # session): release all of the session's subscriptions then.
            _sdk.on_session_end(ctx.session, self._drop, owner)
        session = ctx.session
        loop = asyncio.get_running_loop()

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
                task = loop.create_task(forward())
                self._forwarding.add(task)
                task.add_done_callback(self._forwarding.discard)

        known[uri] = self.tenant_bus.subscribe(listener)
        (await self.tenant_bus.hold())()  # returns once other replicas' updates can arrive
        return EmptyResult()

    async def _unsubscribe(
        self, ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams
    ) -> EmptyResult:
        call = _require_call()
        self._drop((call.tenant.slug, self._session_key(ctx)), str(params.uri))
        return EmptyResult()

    async def _listen(
        self, ctx: ServerRequestContext[Any, Any], params: SubscriptionsListenRequestParams
    ) -> SubscriptionsListenResult:
        """The SDK's listen handler, once the tenant's events from other replicas can arrive: it
        acknowledges right after subscribing, and the client may act on the ack at once. An open
        stream counts against the tenant's subscription cap."""
        call = _require_call()
        slug = call.tenant.slug
        self._take_place(call, None, await self._tenant_cap(call))
        try:
            release = await self.tenant_bus.hold()
            try:
                return await self._listen_handler(ctx, params)
            finally:
                release()
        finally:
            self._free_place(slug)

    # -- completion ----------------------------------------------------------------------------

    async def _complete(
        self, ctx: ServerRequestContext[Any, Any], params: CompleteRequestParams
    ) -> CompleteResult:
        """A reference the caller cannot see completes to nothing, exactly like an unknown one."""
        call = _require_call()
        empty = CompleteResult(completion=Completion(values=[]))
        ref = params.ref
        if isinstance(ref, PromptReference):
            visible = self.catalogue.prompts.visible(ref.name, call.tenant, call.principal) is not None
        elif isinstance(ref, ResourceTemplateReference):
            visible = self.catalogue.templates.visible(ref.uri, call.tenant, call.principal) is not None
        else:
            visible = False
        if not visible or self.completion_handler is None:
            if not visible:
                key = ref.name if isinstance(ref, PromptReference) else getattr(ref, "uri", "?")
                self._hidden(call, "completion ref", str(key), False)
            return empty
        base = Context(request_context=ctx, mcp_server=self, subscriptions=self.tenant_bus)
        async with self._context(base, call) as tctx:
            try:
                result = self.completion_handler(ref, params.argument, tctx)
                if hasattr(result, "__await__"):
                    result = await result
            except MCPError:
                raise
            except Exception as exc:
                raise MCPError(
                    code=INTERNAL_ERROR, message=f"Error completing argument {params.argument.name}"
                ) from exc
        if result is None:
            return empty
        if isinstance(result, Completion):
            return CompleteResult(completion=result)
        values = [str(v) for v in result][:100]
        return CompleteResult(completion=Completion(values=values))
