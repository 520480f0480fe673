"""The enforcement point: an `MCPServer` whose every list, call, read and get goes through the
catalogue for the current tenant.

Overriding the public `MCPServer` methods (not short-circuiting in middleware) matters: the SDK
then builds the response for a hidden item on exactly the same path as for a missing one, so the
two are byte-identical on the wire and nothing reveals that another tenant's item exists.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
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
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
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
from tenant_mcp.auth.authenticator import TenantAccessToken
from tenant_mcp.call import Call, current_call
from tenant_mcp.context import TenantContext
from tenant_mcp.scoping.catalogue import Catalogue, Entry, Item, Section, StaticResource, Wire
from tenant_mcp.scoping.sessions import SessionSubscriptions
from tenant_mcp.scoping.subscriptions import TenantSubscriptionBus

if TYPE_CHECKING:
    from tenant_mcp.runtime import Runtime

CompletionHandler = Callable[..., Any]


@contextlib.contextmanager
def _audited_cap(call: Call) -> Iterator[None]:
    """A subscription refused by the tenant's own `subscriptions` limit is audited as that limit."""
    try:
        yield
    except MCPError as exc:
        reason = exc.error.data.get("reason") if isinstance(exc.error.data, dict) else None
        if isinstance(reason, str) and reason.startswith("rate limited: subscriptions"):
            call.denied = reason
        raise


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
        self.sessions = SessionSubscriptions(self.tenant_bus, *max_subscriptions)

    @property
    def open_listen_streams(self) -> int:
        """`subscriptions/listen` streams open in this process, for the metrics."""
        return self.sessions.open_listen_streams

    # -- helpers -------------------------------------------------------------------------------

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        """The calling tenant's view of a tool's input schema: hidden and missing are both None.
        Runs before middleware, on the request's task: the gate has verified the token."""
        token = get_access_token()
        if not isinstance(token, TenantAccessToken):
            return None
        entry = self.catalogue.tools.visible(name, token.tenant, token.principal)
        return entry.wire.input_schema if entry else None

    @contextlib.asynccontextmanager
    async def _context(self, base: Context[Any, Any] | None, call: Call) -> AsyncIterator[TenantContext]:
        """The caller's `TenantContext` for one handler: its database work commits when the
        handler returns and rolls back when it raises."""
        base = base or Context(mcp_server=self, subscriptions=self.tenant_bus)
        ctx = TenantContext._bind(base, call.tenant, call.principal, self.runtime)
        try:
            yield ctx
        except BaseException:
            call.denied = await ctx._finish(commit=False) or call.denied
            raise
        call.denied = await ctx._finish(commit=True) or call.denied

    @staticmethod
    def _entry(call: Call, method: str, section: Section[Item, Wire], name: str) -> Entry[Item, Wire] | None:
        """The entry `name` as the caller sees it: the one the pipeline resolved for this request,
        else (a name the request did not carry) looked up now."""
        if call.method == method and call.name == name:
            return call.entry
        return section.visible(name, call.tenant, call.principal)

    @staticmethod
    def _hidden(call: Call, kind: str, key: str, exists: bool) -> None:
        call.denied = f"{kind} {'not visible' if exists else 'unknown'}: {key}"

    # -- tools ---------------------------------------------------------------------------------

    async def list_tools(self) -> list[MCPTool]:
        call = _require_call()
        return self.catalogue.tools.listing(call.tenant, call.principal)

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        call = _require_call()
        entry = self._entry(call, "tools/call", self.catalogue.tools, name)
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
        entry = self._entry(call, "prompts/get", self.catalogue.prompts, name)
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

    # -- list_changed, resource subscriptions, listen streams ------------------------------------

    async def _own_cap(self, call: Call) -> int | None:
        """The tenant's `subscriptions` limit (its plan's, or its override), if it has one."""
        rt = self.runtime
        return (await rt.limiter.limits_of(call.tenant)).subscriptions if rt is not None else None

    def _watch_lists(self, ctx: ServerRequestContext[Any, Any]) -> None:
        call = current_call()
        if call is not None:
            self.sessions.watch_lists(ctx, call.tenant.slug)

    async def _subscribe(
        self, ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams
    ) -> EmptyResult:
        """Another tenant's URI, or one the caller cannot see, is refused exactly like an unknown
        resource."""
        call = _require_call()
        uri = str(params.uri)
        if not self._visible_uri(uri, call):
            self._hidden(call, "resource", uri, self._exists(self.catalogue.resources, uri))
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown resource: {uri}", data={"uri": uri})
        with _audited_cap(call):
            await self.sessions.subscribe(ctx, call.tenant.slug, uri, await self._own_cap(call))
        return EmptyResult()

    async def _unsubscribe(
        self, ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams
    ) -> EmptyResult:
        self.sessions.unsubscribe(ctx, _require_call().tenant.slug, str(params.uri))
        return EmptyResult()

    async def _listen(
        self, ctx: ServerRequestContext[Any, Any], params: SubscriptionsListenRequestParams
    ) -> SubscriptionsListenResult:
        call = _require_call()
        with _audited_cap(call):
            async with self.sessions.listening(call.tenant.slug, await self._own_cap(call)):
                return await self._listen_handler(ctx, params)

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
