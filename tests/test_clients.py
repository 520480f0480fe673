"""Clients nobody here wrote: the official TypeScript SDK client and the MCP Inspector in CLI mode,
over HTTP with a tenant key and (Inspector) over stdio exactly as a desktop config launches it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import ServerProcess, Tenants
from tests.nodejs import JS, node_bin_dir, node_env, require_js_tools

ROOT = JS.parent.parent


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


def inspector(*args: str, home: Path) -> Any:
    """The command docs/clients.md gives, `npx @modelcontextprotocol/inspector --cli ...`, run where
    `npm ci` installed the Inspector: offline and with `--no-install`, so npx uses that copy or fails,
    never downloads one. HOME is a scratch directory: the Inspector keeps state under it."""
    npx = node_bin_dir().parent / "lib" / "node_modules" / "npm" / "bin" / "npx-cli.js"
    env = {**node_env(), "npm_config_offline": "true", "HOME": str(home)}
    result = node(str(npx), "--no-install", "@modelcontextprotocol/inspector", "--cli", *args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_inspector_cli_over_http(notes_server: ServerProcess, tenants: Tenants, tmp_path: Path) -> None:
    for slug in ("acme", "globex"):
        auth = [
            notes_server.url,
            "--transport",
            "http",
            "--header",
            f"Authorization: Bearer {tenants.keys[slug]}",
        ]
        tools = {t["name"] for t in inspector(*auth, "--method", "tools/list", home=tmp_path)["tools"]}
        assert ("export_notes" in tools) == (slug == "acme")
        whoami = inspector(*auth, "--method", "tools/call", "--tool-name", "whoami", home=tmp_path)
        assert whoami["structuredContent"]["tenant"] == slug


def test_inspector_cli_over_stdio(notes_db: str, tenants: Tenants, tmp_path: Path) -> None:
    # --transport would be read by the Inspector itself, so the server gets it from its environment.
    executable = str(Path(sys.executable).parent / "tenant-mcp")
    for slug in ("acme", "globex"):
        env = ["-e", f"TENANT_MCP_API_KEY={tenants.keys[slug]}", "-e", "TENANT_MCP_TRANSPORT=stdio"]
        server = ["--", executable, "serve", "example_servers.notes:app", "--db", notes_db]
        whoami = inspector(*env, "--method", "tools/call", "--tool-name", "whoami", *server, home=tmp_path)
        assert whoami["structuredContent"]["tenant"] == slug


def test_the_inspector_command_for_a_clone_works_as_documented(
    notes_server: ServerProcess, tenants: Tenants, tmp_path: Path
) -> None:
    """docs/clients.md's command for a clone, run as written (the server's URL and a key filled in),
    with nothing on PATH but what the machine had: it must find Node.js and the Inspector itself."""
    require_js_tools()
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "docs" / "clients.md").read_text(), re.S)
    script = next(b for b in blocks if "npx-cli.js" in b)
    script = script.replace("http://127.0.0.1:8000/mcp", notes_server.url).replace(
        "tmk_...", tenants.keys["acme"]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANT_MCP_")}
    env |= {"npm_config_offline": "true", "HOME": str(tmp_path)}
    result = subprocess.run(
        ["bash", "-eu", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert {"whoami", "export_notes"} <= {t["name"] for t in json.loads(result.stdout)["tools"]}


def test_every_python_snippet_of_the_docs_compiles_as_a_script() -> None:
    """A snippet with a top-level `async with` or `await` is a SyntaxError when saved and run."""
    for page in sorted((ROOT / "docs").glob("*.md")):
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S):
            compile(block, str(page), "exec")


def test_the_python_client_snippet_runs_as_shown(
    notes_server: ServerProcess, tenants: Tenants, tmp_path: Path
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "clients.md").read_text(), re.S)
    script = next(b for b in blocks if "streamable_http_client" in b)
    script = script.replace("http://127.0.0.1:8000/mcp", notes_server.url).replace(
        "tmk_...", tenants.keys["globex"]
    )
    (tmp_path / "client.py").write_text(script)
    ran = subprocess.run(
        [sys.executable, "client.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "globex" in ran.stdout and "acme" not in ran.stdout, ran.stdout
