"""The notes server: a small multi-tenant MCP server built with tenant_mcp.

Run it with `tenant-mcp demo`, or `tenant-mcp serve example_servers.notes:app` against your own
tenants. Nothing below mentions a tenant id: the framework decides the tenant from the caller's
credential, and `ctx.db` is already that tenant's database.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from pydantic import Field

from tenant_mcp import TenantContext, TenantMCP, new_id

app = TenantMCP("notes", instructions="Personal notes. Every tenant sees only its own notes.")

# One schema for both backends; where SQL differs (here: the timestamp default), a migration
# gives one version per dialect. Nothing mentions a tenant: SQLite keeps a file per tenant, and on
# PostgreSQL the framework adds the tenant column, keys and row-level security policy.
_CREATE_NOTES = """
    CREATE TABLE notes (
        id INTEGER PRIMARY KEY,
        title TEXT NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
        body TEXT NOT NULL CHECK (length(body) <= 100000),
        created_at TEXT NOT NULL DEFAULT {now}
    );
    CREATE INDEX notes_created ON notes (created_at);
"""
app.migrations(
    [
        {
            "sqlite": _CREATE_NOTES.format(now="(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"),
            "postgresql": _CREATE_NOTES.format(
                now="""(to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))"""
            ),
        }
    ]
)

Title = Annotated[str, Field(min_length=1, max_length=200, description="a short title")]
Body = Annotated[str, Field(max_length=100_000, description="the note's text")]
NoteId = Annotated[int, Field(gt=0, description="a note id, as returned by create_note")]


@app.tool()
async def whoami(ctx: TenantContext) -> dict[str, str]:
    """Which tenant and principal this connection is authenticated as."""
    return {"tenant": ctx.tenant.slug, "subject": ctx.principal.subject}


@app.tool()
async def create_note(title: Title, body: Body, ctx: TenantContext) -> dict[str, Any]:
    """Create a note and return it with its id."""
    note_id = await ctx.db.insert("notes", {"id": new_id(), "title": title, "body": body})
    note = await ctx.db.get("notes", note_id)
    assert note is not None
    return note


@app.tool()
async def list_notes(ctx: TenantContext) -> list[dict[str, Any]]:
    """All notes, newest first (id and title)."""
    return await ctx.db.fetch_all("SELECT id, title, created_at FROM notes ORDER BY id DESC")


@app.tool()
async def get_note(note_id: NoteId, ctx: TenantContext) -> dict[str, Any]:
    """One note by id."""
    note = await ctx.db.get("notes", note_id)
    if note is None:
        raise ToolError(f"No note {note_id}")  # a message the model can act on
    return note


@app.tool()
async def search_notes(
    query: Annotated[str, Field(min_length=1, max_length=200)], ctx: TenantContext
) -> list[dict[str, Any]]:
    """Notes whose title or body contains the query (case-insensitive)."""
    pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return await ctx.db.fetch_all(
        "SELECT id, title FROM notes WHERE lower(title) LIKE lower(?1) ESCAPE '\\'"
        " OR lower(body) LIKE lower(?1) ESCAPE '\\' ORDER BY id DESC",
        (pattern,),
    )


@app.tool()
async def delete_note(note_id: NoteId, ctx: TenantContext) -> dict[str, Any]:
    """Delete a note by id."""
    if not await ctx.db.delete("notes", note_id):
        raise ToolError(f"No note {note_id}")
    return {"deleted": note_id}


@app.tool(scopes=["notes:export"])
async def export_notes(ctx: TenantContext) -> str:
    """Every note as JSON. Needs the notes:export scope."""
    notes = await ctx.db.fetch_all("SELECT id, title, body, created_at FROM notes ORDER BY id")
    return json.dumps(notes)


@app.tool(plans=["pro"])
async def bulk_import(
    notes: Annotated[list[dict[str, str]], Field(max_length=1000)], ctx: TenantContext
) -> int:
    """Import many notes at once ({"title", "body"} each). All or nothing. Pro plan only."""
    rows = []
    for i, note in enumerate(notes):
        title, body = note.get("title", ""), note.get("body", "")
        if not 1 <= len(title) <= 200 or len(body) > 100_000:
            raise ToolError(f"note {i}: title must be 1-200 characters and body at most 100000")
        rows.append((new_id(), title, body))
    async with ctx.db.transaction():
        return await ctx.db.execute_many("INSERT INTO notes (id, title, body) VALUES (?, ?, ?)", rows)


@app.resource("notes://{note_id}", mime_type="text/plain")
async def note_body(note_id: str, ctx: TenantContext) -> str:
    """The body of a note."""
    note = await ctx.db.get("notes", int(note_id)) if note_id.isdigit() else None
    if note is None:  # the SDK's own answer for an unknown URI, so nothing tells "missing" apart
        raise ResourceNotFoundError(f"Unknown resource: notes://{note_id}")
    return str(note["body"])


@app.resource("profile://me", mime_type="application/json")
async def profile(ctx: TenantContext) -> dict[str, str]:
    """The caller's tenant: name and plan."""
    return {"name": ctx.tenant.name, "plan": ctx.tenant.plan}


@app.prompt()
async def summarize_notes(ctx: TenantContext) -> str:
    """Ask the model to summarise the tenant's notes by title."""
    rows = await ctx.db.fetch_all("SELECT title FROM notes ORDER BY id DESC LIMIT 50")
    titles = "\n".join(f"- {row['title']}" for row in rows) or "(no notes yet)"
    return f"Summarise these notes for {ctx.tenant.name}:\n{titles}"


@app.completion()
async def complete(ref: Any, argument: Any, ctx: TenantContext) -> list[str]:
    """Note ids for `notes://{note_id}`, from the caller's own notes only."""
    if argument.name != "note_id":
        return []
    rows = await ctx.db.fetch_all(
        "SELECT id FROM notes WHERE CAST(id AS TEXT) LIKE ? ORDER BY id DESC LIMIT 20",
        (argument.value + "%",),
    )
    return [str(row["id"]) for row in rows]
