"""Clients nobody here wrote: the official TypeScript SDK client and the MCP Inspector CLI, over
HTTP with a tenant key and (Inspector) over stdio exactly as a desktop config launches it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import ServerProcess, Tenants
from tests.nodejs import JS, node_bin_dir, node_env, require_js_tools

INSPECTOR = JS / "node_modules" / "@modelcontextprotocol" / "inspector-cli" / "build"


def node(*args: str, cwd: Path = JS, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    require_js_tools()
    return subprocess.run([str(node_bin_dir() / "node"), *args], cwd=cwd, env=env or node_env(),
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def ts_client(url: str, key: str, title: str, other_id: int | None = None) -> dict[str, Any]:
    result = node("ts_client.mjs", url, key, title, *([str(other_id)] if other_id else []))
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_typescript_client_sees_only_its_own_tenant(notes_server: ServerProcess, tenants: Tenants) -> None:
    acme = ts_client(notes_server.url, tenants.keys["acme"], "ts acme note")
    assert acme["protocolVersion"] == "2025-11-25"
    assert acme["whoami"]["tenant"] == "acme"
    assert {"export_notes", "bulk_import"} <= set(acme["tools"])
    assert acme["profile"] == {"name": "Acme Corporation", "plan": "pro"}
    assert acme["ownBody"] == "body of ts acme note"
    assert "ts acme note" in acme["prompt"]

    acme_id = acme["created"]["id"]
    globex = ts_client(notes_server.url, tenants.keys["globex"], "ts globex note", other_id=acme_id)
    assert globex["whoami"]["tenant"] == "globex"
    assert "export_notes" not in globex["tools"] and "bulk_import" not in globex["tools"]
    assert globex["profile"] == {"name": "Globex Industries", "plan": "free"}
    assert all("acme" not in n["title"] for n in globex["notes"])
    assert "ts acme note" not in globex["prompt"]
    assert globex["otherGet"] == {
        "isError": True,
        "text": f"Error executing tool get_note: No note {acme_id}",
    }
    assert globex["otherRead"]["code"] == -32602
    assert globex["otherRead"]["message"].endswith(f"Unknown resource: notes://{acme_id}")


def inspector(*args: str, env: dict[str, str] | None = None) -> Any:
    # The CLI finds its own package.json relative to the working directory, so it runs from its build dir.
    result = node("cli.js", "--cli", *args, cwd=INSPECTOR, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_inspector_cli_over_http(notes_server: ServerProcess, tenants: Tenants) -> None:
    for slug in ("acme", "globex"):
        auth = ["--transport", "http", "--header", f"Authorization: Bearer {tenants.keys[slug]}"]
        tools = {t["name"] for t in inspector(notes_server.url, *auth, "--method", "tools/list")["tools"]}
        assert ("export_notes" in tools) == (slug == "acme")
        whoami = inspector(notes_server.url, *auth, "--method", "tools/call", "--tool-name", "whoami")
        assert whoami["structuredContent"]["tenant"] == slug


def test_inspector_cli_over_stdio(notes_db: str, tenants: Tenants) -> None:
    # --transport would be read by the Inspector itself, so the server gets it from its environment.
    executable = str(Path(sys.executable).parent / "tenant-mcp")
    for slug in ("acme", "globex"):
        env = ["-e", f"TENANT_MCP_API_KEY={tenants.keys[slug]}", "-e", "TENANT_MCP_TRANSPORT=stdio"]
        server = ["--", executable, "serve", "example_servers.notes:app", "--db", notes_db]
        whoami = inspector(*env, "--method", "tools/call", "--tool-name", "whoami", *server)
        assert whoami["structuredContent"]["tenant"] == slug
