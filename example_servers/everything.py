"""The MCP conformance suite's fixture server, built with tenant_mcp.

`@modelcontextprotocol/conformance` (server mode) calls these exact names and checks these exact
contents. Every request still goes through the tenant layer: the suite sends no credentials, so
the test harness puts a small reverse proxy in front that adds one tenant's key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import warnings
from typing import Any

from mcp.server.mcpserver.prompts.base import UserMessage
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types import (
    AudioContent,
    EmbeddedResource,
    ImageContent,
    SamplingMessage,
    TextContent,
    TextResourceContents,
)

from tenant_mcp import TenantContext, TenantMCP

# The conformance suite's logging and sampling scenarios call these 2025-era features, which the
# 2026-07-28 spec deprecates (SEP-2577). This fixture server must keep serving them: silence exactly
# those two warnings, here, where they are raised.
warnings.filterwarnings(
    "ignore", message=r"The (logging|sampling) capability is deprecated", category=MCPDeprecationWarning
)

app = TenantMCP("everything", instructions="Fixtures for the MCP conformance suite.")

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="


def _resource(uri: str, text: str, mime_type: str) -> EmbeddedResource:
    return EmbeddedResource(
        type="resource", resource=TextResourceContents(uri=uri, mime_type=mime_type, text=text)
    )


@app.tool()
async def test_simple_text() -> str:
    """Returns one text block."""
    return "This is a simple text response for testing."


@app.tool()
async def test_image_content() -> list[ImageContent]:
    """Returns one PNG image."""
    return [ImageContent(type="image", data=PNG, mime_type="image/png")]


@app.tool()
async def test_audio_content() -> list[AudioContent]:
    """Returns one WAV clip."""
    return [AudioContent(type="audio", data=WAV, mime_type="audio/wav")]


@app.tool()
async def test_embedded_resource() -> list[EmbeddedResource]:
    """Returns an embedded text resource."""
    return [_resource("test://embedded-resource", "This is an embedded resource content.", "text/plain")]


@app.tool()
async def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
    """Returns text, an image and an embedded resource."""
    return [
        TextContent(type="text", text="Multiple content types test:"),
        ImageContent(type="image", data=PNG, mime_type="image/png"),
        _resource(
            "test://mixed-content-resource", json.dumps({"test": "data", "value": 123}), "application/json"
        ),
    ]


@app.tool()
async def test_tool_with_logging(ctx: TenantContext) -> str:
    """Sends three log messages while it runs."""
    for message in ("Tool execution started", "Tool processing data", "Tool execution completed"):
        await ctx.session.send_log_message("info", message, related_request_id=ctx.request_id)
        await asyncio.sleep(0.05)
    return "Logging test completed"


@app.tool()
async def test_error_handling() -> str:
    """Always fails, to test error results."""
    raise RuntimeError("This tool intentionally returns an error for testing")


@app.tool()
async def test_tool_with_progress(ctx: TenantContext) -> str:
    """Reports progress 0, 50 and 100 of 100."""
    for done in (0, 50, 100):
        await ctx.report_progress(done, 100)
        await asyncio.sleep(0.05)
    return "Progress test completed"


@app.tool()
async def test_sampling(prompt: str, ctx: TenantContext) -> str:
    """Asks the client's model to answer `prompt`."""
    result = await ctx.session.create_message(
        messages=[SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
        max_tokens=100,
        related_request_id=ctx.request_id,
    )
    text = result.content.text if isinstance(result.content, TextContent) else str(result.content)
    return f"LLM response: {text}"


async def _elicit(ctx: TenantContext, message: str, properties: dict[str, Any], required: list[str]) -> str:
    schema = {"type": "object", "properties": properties, "required": required}
    result = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
    return f"User response: action={result.action}, content={json.dumps(result.content)}"


@app.tool()
async def test_elicitation(message: str, ctx: TenantContext) -> str:
    """Asks the user for a username and an email address."""
    properties = {
        "username": {"type": "string", "description": "Your username"},
        "email": {"type": "string", "description": "Your email address"},
    }
    return await _elicit(ctx, message, properties, ["username", "email"])


@app.tool()
async def test_elicitation_sep1034_defaults(ctx: TenantContext) -> str:
    """Elicitation whose fields carry default values (SEP-1034)."""
    properties = {
        "name": {"type": "string", "default": "John Doe"},
        "age": {"type": "integer", "default": 30},
        "score": {"type": "number", "default": 95.5},
        "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
        "verified": {"type": "boolean", "default": True},
    }
    return await _elicit(ctx, "Please review your information", properties, [])


@app.tool()
async def test_elicitation_sep1330_enums(ctx: TenantContext) -> str:
    """Elicitation with every enum form of SEP-1330."""
    titled = [("value1", "First Choice"), ("value2", "Second Choice"), ("value3", "Third Choice")]
    properties = {
        "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
        "titledSingle": {"type": "string", "oneOf": [{"const": v, "title": t} for v, t in titled]},
        "legacyEnum": {
            "type": "string",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {
            "type": "array",
            "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
        },
        "titledMulti": {"type": "array", "items": {"anyOf": [{"const": v, "title": t} for v, t in titled]}},
    }
    return await _elicit(ctx, "Choose your options", properties, [])


@app.resource("test://static-text", mime_type="text/plain")
async def static_text() -> str:
    """A fixed text resource."""
    return "This is the content of the static text resource."


@app.resource("test://static-binary", mime_type="image/png")
async def static_binary() -> bytes:
    """A fixed binary resource (PNG)."""
    return base64.b64decode(PNG)


@app.resource("test://watched-resource", mime_type="text/plain")
async def watched_resource() -> str:
    """A resource clients may subscribe to."""
    return "Watched resource content"


@app.resource("test://template/{id}/data", mime_type="application/json")
async def template_data(id: str) -> str:
    """Data for an id, from a template."""
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@app.prompt()
async def test_simple_prompt() -> str:
    """A prompt without arguments."""
    return "This is a simple prompt for testing."


@app.prompt()
async def test_prompt_with_arguments(arg1: str, arg2: str) -> str:
    """A prompt with two arguments."""
    return f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"


@app.prompt()
async def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:
    """A prompt that embeds a resource."""
    return [
        UserMessage(content=_resource(resourceUri, "Embedded resource content for testing.", "text/plain")),
        UserMessage(content="Please process the embedded resource above."),
    ]


@app.prompt()
async def test_prompt_with_image() -> list[UserMessage]:
    """A prompt that contains an image."""
    return [
        UserMessage(content=ImageContent(type="image", data=PNG, mime_type="image/png")),
        UserMessage(content="Please analyze the image above."),
    ]


@app.completion()
async def complete(ref: Any, argument: Any, ctx: TenantContext) -> list[str]:
    """Completes nothing: the suite only checks the shape of the answer."""
    return []
