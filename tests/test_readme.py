"""The README's server runs as shown: its Python block, saved as a module, served and called."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT, ServerProcess, Tenants, mcp_client

pytestmark = pytest.mark.anyio


async def test_the_readme_server_runs_as_shown(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) == 1, "the README shows one server"
    module = tmp_path / "readme_server.py"
    module.write_text(blocks[0])
    t = Tenants(f"sqlite:///{tmp_path}/control.db")
    t.create("acme")
    t.key("acme", scopes=("notes:export",))
    server = ServerProcess(f"{module}:app", t.db_url, log_dir=tmp_path)
    try:
        async with mcp_client(server.url, t.keys["acme"]) as client:
            note = await client.call_tool("create_note", {"title": "hello", "body": "world"})
            assert not note.is_error and json.loads(note.content[0].text)["title"] == "hello"  # type: ignore[union-attr]
            exported = await client.call_tool("export_notes", {})
            assert not exported.is_error and '"world"' in exported.content[0].text  # type: ignore[union-attr]
    finally:
        server.stop()
