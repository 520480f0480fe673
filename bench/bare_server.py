"""The baseline: the bare `mcp` SDK `MCPServer` with the same tools as the notes example
(`whoami`, and `create_note` / `search_notes` doing the same SQLite work on one database file, as
a single-tenant server would, with `sqlite3` on a worker thread) and a trivial `TokenVerifier`
that accepts one static bearer token, so both sides authenticate."""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

TOKEN = "bench-static-token"


class StaticVerifier:
    async def verify_token(self, token: str) -> AccessToken | None:
        if token == TOKEN:
            return AccessToken(token=token, client_id="bench", scopes=[], subject="bench")
        return None


def build(port: int) -> MCPServer:
    mcp = MCPServer(
        "bare",
        token_verifier=StaticVerifier(),
        auth=AuthSettings.model_validate(
            {"issuer_url": "http://127.0.0.1:9", "resource_server_url": f"http://127.0.0.1:{port}/mcp",
             "validate_token_resource": False}
        ),
    )  # fmt: skip

    @mcp.tool()
    async def whoami() -> dict[str, str]:
        return {"tenant": "bench", "subject": "bench"}

    db = _Notes(Path(tempfile.mkdtemp()) / "notes.db")

    @mcp.tool()
    async def create_note(title: str, body: str) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(db.create, title, body)

    @mcp.tool()
    async def search_notes(query: str) -> list[dict[str, Any]]:
        return await anyio.to_thread.run_sync(db.search, query)

    return mcp


class _Notes:
    """The notes table of `example_servers.notes`, in one file, one connection, one writer."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.executescript(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT NOT NULL, body TEXT NOT NULL,"
            " created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));"
        )
        self._lock = threading.Lock()

    def create(self, title: str, body: str) -> dict[str, Any]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            note_id = self._conn.execute(
                "INSERT INTO notes (title, body) VALUES (?, ?)", (title, body)
            ).lastrowid
            row = self._conn.execute("SELECT * FROM notes WHERE id = ?", (note_id,)).fetchone()
            self._conn.execute("COMMIT")
        return dict(row)

    def search(self, query: str) -> list[dict[str, Any]]:
        pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, title FROM notes WHERE lower(title) LIKE lower(?1) ESCAPE '\\'"
                " OR lower(body) LIKE lower(?1) ESCAPE '\\' ORDER BY id DESC",
                (pattern,),
            ).fetchall()
        return [dict(r) for r in rows]


if __name__ == "__main__":
    port = int(sys.argv[1])
    stateless = os.environ.get("BENCH_MODE", "stateless-json") == "stateless-json"
    app = build(port).streamable_http_app(stateless_http=stateless, json_response=stateless)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
