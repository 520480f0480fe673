"""Catalogue entries built from developers' functions: the SDK's tool, prompt and resource
objects, their wire form, and who may see them. Functions that take a tenant as a parameter are
refused here, at registration: the tenant is never an argument."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Iterable
from typing import Any, TypedDict, Unpack

from mcp.server.mcpserver.prompts import Prompt
from mcp.server.mcpserver.resources import ResourceTemplate
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.context_injection import find_context_parameter
from mcp.shared.tool_name_validation import validate_and_warn_tool_name
from mcp_types import Prompt as MCPPrompt
from mcp_types import PromptArgument as MCPPromptArgument
from mcp_types import Resource as MCPResource
from mcp_types import ResourceTemplate as MCPResourceTemplate
from mcp_types import Tool as MCPTool
from mcp_types import ToolAnnotations

from tenant_mcp.errors import TenantMCPError
from tenant_mcp.limits import parse_rate
from tenant_mcp.pipeline.overrides import plain_name
from tenant_mcp.scoping.catalogue import Entry, StaticResource, Visibility


def visibility(scopes: Iterable[str], plans: Iterable[str] | None, per_tenant: bool = False) -> Visibility:
    if isinstance(scopes, str) or isinstance(plans, str):
        raise TypeError("scopes and plans are lists of strings, e.g. scopes=['notes:export']")
    return Visibility(frozenset(scopes), frozenset(plans) if plans is not None else None, per_tenant)


def _refuse_tenant_parameters(kind: str, name: str, parameters: Iterable[str]) -> None:
    for parameter in parameters:
        if plain_name(parameter).startswith("tenant"):
            raise TenantMCPError(
                f"{kind} {name!r} takes a parameter {parameter!r}: the tenant is never an argument. "
                "Read it from ctx.tenant (annotate a parameter with TenantContext)."
            )


class ToolOptions(TypedDict, total=False):
    """How the SDK builds a tool from a function (`Tool.from_function`'s keywords)."""

    name: str | None
    title: str | None
    description: str | None
    annotations: ToolAnnotations | None
    meta: dict[str, Any] | None
    structured_output: bool | None


def tool_entry(
    fn: Callable[..., Any],
    visibility: Visibility,
    *,
    templates: dict[Hashable, Tool] | None = None,
    rate: str | None = None,
    **options: Unpack[ToolOptions],
) -> Entry[Tool, MCPTool]:
    """The catalogue entry for a tool. With `templates`, a function registered before (for another
    tenant, say) reuses that build: the SDK makes two pydantic models per `Tool.from_function`, about
    1 ms and 25 KiB, which for the same function per tenant would be paid once per tenant."""
    if rate is not None:
        parse_rate(rate)
    name, meta, annotations = options.get("name"), options.get("meta"), options.get("annotations")
    key = (
        fn, options.get("title"), options.get("description"), options.get("structured_output"),
        annotations.model_dump_json() if annotations else None,
    )  # fmt: skip
    template = templates.get(key) if templates is not None and meta is None else None
    if template is None:
        tool = Tool.from_function(fn, **options)
        _refuse_tenant_parameters("tool", tool.name, tool.parameters.get("properties", {}))
        if templates is not None and meta is None:
            if len(templates) >= 1024:  # one-off functions (closures added and removed) must not pile up
                templates.clear()
            templates[key] = tool
    else:
        validate_and_warn_tool_name(name or fn.__name__)
        tool = template.model_copy(update={"name": name or fn.__name__})
    wire = MCPTool(
        name=tool.name,
        title=tool.title,
        description=tool.description,
        input_schema=tool.parameters,
        output_schema=tool.output_schema,
        annotations=tool.annotations,
        _meta=tool.meta,
    )
    return Entry(tool.name, tool, wire, visibility, rate)


def prompt_entry(
    fn: Callable[..., Any],
    *,
    name: str | None,
    title: str | None,
    description: str | None,
    visibility: Visibility,
) -> Entry[Prompt, MCPPrompt]:
    prompt = Prompt.from_function(fn, name=name, title=title, description=description)
    arguments = prompt.arguments or []
    _refuse_tenant_parameters("prompt", prompt.name, [a.name for a in arguments])
    wire = MCPPrompt(
        name=prompt.name,
        title=prompt.title,
        description=prompt.description,
        arguments=[
            MCPPromptArgument(name=a.name, description=a.description, required=a.required) for a in arguments
        ],
    )
    return Entry(prompt.name, prompt, wire, visibility)


def resource_entry(
    fn: Callable[..., Any],
    uri: str,
    *,
    name: str | None,
    title: str | None,
    description: str | None,
    mime_type: str | None,
    visibility: Visibility,
) -> tuple[str, Entry[Any, Any]]:
    """("templates", entry) for a URI with {variables}, else ("resources", entry)."""
    name = name or fn.__name__
    description = description or inspect.getdoc(fn)
    if "{" in uri:
        template = ResourceTemplate.from_function(
            fn, uri_template=uri, name=name, title=title, description=description, mime_type=mime_type
        )
        _refuse_tenant_parameters("resource template", uri, template.parameters.get("properties", {}))
        wire_t = MCPResourceTemplate(
            uri_template=uri, name=name, title=title, description=description, mime_type=mime_type
        )
        return "templates", Entry(uri, template, wire_t, visibility)
    context_kwarg = find_context_parameter(fn)
    extra = [p for p in inspect.signature(fn).parameters if p != context_kwarg]
    if extra:
        raise TenantMCPError(
            f"resource {uri!r} has parameters {extra}: a fixed URI takes only the context; "
            "use a template such as 'notes://{note_id}' for parameters"
        )
    static = StaticResource(uri=uri, fn=fn, context_kwarg=context_kwarg, mime_type=mime_type)
    wire_r = MCPResource(uri=uri, name=name, title=title, description=description, mime_type=mime_type)
    return "resources", Entry(uri, static, wire_r, visibility)
