"""The stdio transport, driven the way a desktop assistant drives it.

Every server here is launched with exactly what a `claude_desktop_config.json` entry would hold:
the `tenant-mcp` executable, `serve example_servers.notes:app --transport stdio --db URL`, and the
tenant's key in `TENANT_MCP_API_KEY`. The client is the official SDK's stdio client.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

from tests.helpers import ROOT, Tenants, clean_env, data_url, standard_tenants

pytestmark = pytest.mark.anyio

TENANT_MCP = str(Path(sys.executable).parent / "tenant-mcp")
SECRET = "acme-stdio-secret-5c1e"
COMMON_TOOLS = {"whoami", "create_note", "list_notes", "get_note", "search_notes", "delete_note"}
# The credential cache window is 1 s; the brief promises revocation bites within 2.5 s.
REVOCATION_DEADLINE = 2.5


def desktop_args(db_url: str) -> list[str]:
    data = ["--data-db", data_url(db_url)] if db_url.startswith("postgresql://") else []
    return ["serve", "example_servers.notes:app", "--transport", "stdio", "--db", db_url, *data]


def desktop_env(key: str | None) -> dict[str, str]:
    return clean_env() if key is None else clean_env(TENANT_MCP_API_KEY=key)


@pytest.fixture
def tenants(tmp_path: Path) -> Tenants:
    """A fresh control plane per test: acme (pro, notes:export), globex (free), a second acme key."""
    return standard_tenants(f"sqlite:///{tmp_path}/control.db")


@asynccontextmanager
async def stdio_session(db_url: str, key: str, errlog: Path, **client_kwargs: Any) -> AsyncIterator[Client]:
    """The SDK client over stdio, launching the server exactly as a desktop config would."""
    params = StdioServerParameters(
        command=TENANT_MCP, args=desktop_args(db_url), env=desktop_env(key), cwd=ROOT
    )
    with errlog.open("a") as err:
        async with Client(stdio_client(params, errlog=err), **client_kwargs) as client:
            yield client


def _text(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


def _dump(result: Any) -> str:
    return json.dumps(result.model_dump(mode="json", by_alias=True), sort_keys=True)


async def _tool_names(client: Client) -> set[str]:
    return {tool.name for tool in (await client.list_tools(cache_mode="bypass")).tools}


async def _whoami(client: Client) -> str:
    result = await client.call_tool("whoami", {})
    assert not result.is_error, f"whoami failed: {_text(result)}"
    return str(result.structured_content["tenant"])


async def _list_notes(client: Client) -> list[dict[str, Any]]:
    result = await client.call_tool("list_notes", {})
    assert not result.is_error, f"list_notes failed: {_text(result)}"
    content = result.structured_content
    return content["result"] if isinstance(content, dict) else content


async def _refused_within(client: Client, deadline: float) -> tuple[float, MCPError]:
    """Call a tool until it is refused with a JSON-RPC error; how long that took, and the error."""
    started = time.monotonic()
    while True:
        try:
            await client.call_tool("list_notes", {})
        except MCPError as exc:
            return time.monotonic() - started, exc
        elapsed = time.monotonic() - started
        assert elapsed < deadline, f"the session still answered tool calls {elapsed:.1f}s after the change"
        await anyio.sleep(0.1)


# -- two tenants -----------------------------------------------------------------------------------


async def test_two_tenants_over_stdio_see_their_own_catalogue_and_data(
    tenants: Tenants, tmp_path: Path
) -> None:
    errlog = tmp_path / "stderr.log"
    async with (
        # Both protocol eras: the 2026 discovery probe, and the initialize handshake.
        stdio_session(tenants.db_url, tenants.keys["acme"], errlog, mode="auto") as acme,
        stdio_session(tenants.db_url, tenants.keys["globex"], errlog, mode="legacy") as globex,
    ):
        assert await _whoami(acme) == "acme"
        assert await _whoami(globex) == "globex"

        acme_tools, globex_tools = await _tool_names(acme), await _tool_names(globex)
        assert acme_tools == COMMON_TOOLS | {"bulk_import", "export_notes"}, "acme (pro, notes:export)"
        assert globex_tools == COMMON_TOOLS, "globex (free, no scopes) must not see bulk_import/export_notes"
        hidden = await globex.call_tool("bulk_import", {"notes": [{"title": "x", "body": "y"}]})
        unknown = await globex.call_tool("bulk_importz", {"notes": [{"title": "x", "body": "y"}]})
        assert hidden.is_error, "globex (plan free) could call the pro-only bulk_import"
        assert _dump(hidden).replace("bulk_import", "X") == _dump(unknown).replace("bulk_importz", "X"), (
            "a tool hidden by plan must answer exactly like one that does not exist"
        )

        created = await acme.call_tool("create_note", {"title": f"Plan {SECRET}", "body": f"body {SECRET}"})
        assert not created.is_error, _text(created)
        note_id = created.structured_content["id"]
        assert [n["id"] for n in await _list_notes(acme)] == [note_id]

        assert await _list_notes(globex) == [], "globex sees a note that acme created"

        stolen = await globex.call_tool("get_note", {"note_id": note_id})
        missing_id = note_id + 1
        missing = await globex.call_tool("get_note", {"note_id": missing_id})
        assert stolen.is_error and missing.is_error, (_dump(stolen), _dump(missing))
        assert SECRET not in _dump(stolen), "acme's note leaked to globex"
        assert _dump(stolen).replace(str(note_id), "ID") == _dump(missing).replace(str(missing_id), "ID"), (
            "an id of another tenant must answer exactly like an id that does not exist"
        )

        # acme's own view is untouched by globex's attempts.
        own = await acme.call_tool("get_note", {"note_id": note_id})
        assert not own.is_error and own.structured_content["body"] == f"body {SECRET}"


# -- refused before serving ------------------------------------------------------------------------

INITIALIZE = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "desktop-test", "version": "1"},
        },
    }
)
REFUSED = ["missing", "blank", "wrong", "tampered", "revoked", "suspended"]


@dataclass
class Refusal:
    key: str | None
    proc: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Refusal]:
    """Launch the server once per refused credential, all at once (each launch costs seconds of
    imports), sending `initialize` straight away as a desktop assistant would."""
    t = Tenants(f"sqlite:///{tmp_path_factory.mktemp('refused')}/control.db")
    for slug in ("live", "revoked", "suspended"):
        t.create(slug)
        t.key(slug)
    t.run(lambda admin: admin.revoke_key(t.key_ids["revoked"]))
    t.run(lambda admin: admin.suspend("suspended"))
    live = t.keys["live"]
    keys: dict[str, str | None] = {
        "missing": None,
        "blank": "   ",
        "wrong": "tmk_0123456789ab_" + "A" * 43,  # well-formed, unknown key id
        "tampered": live[:-1] + ("B" if live[-1] != "B" else "C"),  # a real key id, wrong secret
        "revoked": t.keys["revoked"],
        "suspended": t.keys["suspended"],
    }

    def launch(key: str | None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [TENANT_MCP, *desktop_args(t.db_url)],
            cwd=ROOT,
            env=desktop_env(key),
            input=INITIALIZE + "\n",
            capture_output=True,
            text=True,
            timeout=60,
        )

    with ThreadPoolExecutor(len(keys)) as pool:
        procs = dict(zip(keys, pool.map(launch, keys.values()), strict=True))
    return {case: Refusal(keys[case], procs[case]) for case in keys}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_key_exits_non_zero_before_serving(refusals: dict[str, Refusal], case: str) -> None:
    key, proc = refusals[case].key, refusals[case].proc
    assert proc.returncode != 0, f"{case}: exited 0\nstderr: {proc.stderr}"
    assert proc.stdout == "", f"{case}: the server answered before the key was accepted: {proc.stdout!r}"
    assert "TENANT_MCP_API_KEY" in proc.stderr, f"{case}: stderr does not name the variable: {proc.stderr}"
    if key and key.strip():
        assert key not in proc.stderr, f"{case}: the refused key was echoed to stderr"


@pytest.mark.parametrize("case", REFUSED)
def test_refused_key_message_is_one_clean_line(refusals: dict[str, Refusal], case: str) -> None:
    proc = refusals[case].proc
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, f"{case}: a traceback instead of a message:\n{proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"{case}: expected one line on stderr, got {len(lines)}:\n{proc.stderr}"
    assert lines[0].startswith("tenant-mcp: error: "), lines[0]
    assert "TENANT_MCP_API_KEY" in lines[0], lines[0]


# -- revocation and suspension stop a running session ----------------------------------------------


async def test_revoking_the_key_stops_an_open_session(tenants: Tenants, tmp_path: Path) -> None:
    errlog = tmp_path / "stderr.log"
    async with (
        stdio_session(tenants.db_url, tenants.keys["acme2"], errlog) as revoked,
        stdio_session(tenants.db_url, tenants.keys["acme"], errlog) as other_key,
    ):
        assert await _whoami(revoked) == "acme"
        assert await _whoami(other_key) == "acme"

        tenants.run(lambda admin: admin.revoke_key(tenants.key_ids["acme2"]))
        took, error = await _refused_within(revoked, REVOCATION_DEADLINE)
        assert isinstance(error, MCPError), error
        for attempt in ("whoami", "list_notes", "create_note"):
            args = {"title": "t", "body": "b"} if attempt == "create_note" else {}
            with pytest.raises(MCPError):
                await revoked.call_tool(attempt, args)
        assert await _whoami(other_key) == "acme", "revoking one key must not stop the tenant's other keys"

    assert await anyio.to_thread.run_sync(lambda: _list_notes_direct(tenants)) == 0, (
        "the refused create_note was carried out"
    )
    assert took < REVOCATION_DEADLINE


def _list_notes_direct(tenants: Tenants) -> int:
    """How many notes acme has, read from its data file (0 when it has none)."""
    path = (
        Path(tenants.db_url[len("sqlite:///") :]).with_name("control_data") / f"{tenants.ids['acme']}.sqlite3"
    )
    if not path.exists():
        return 0
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM notes").fetchone()[0])
    finally:
        conn.close()


async def test_suspending_the_tenant_stops_an_open_session(tenants: Tenants, tmp_path: Path) -> None:
    errlog = tmp_path / "stderr.log"
    async with stdio_session(tenants.db_url, tenants.keys["globex"], errlog) as globex:
        assert await _whoami(globex) == "globex"
        tenants.run(lambda admin: admin.suspend("globex"))
        took, error = await _refused_within(globex, REVOCATION_DEADLINE)
        assert isinstance(error, MCPError)
        with pytest.raises(MCPError):
            await globex.call_tool("whoami", {})
    assert took < REVOCATION_DEADLINE

    # The refusal is in globex's audit trail (written when the server shuts down, at the latest).
    denied = [e for e in tenants.audit("globex") if e["outcome"] == "denied"]
    assert denied, f"no denied event in globex's audit: {tenants.audit('globex')}"


# -- stdout carries only protocol messages ---------------------------------------------------------


async def test_failing_calls_do_not_corrupt_the_stream(tenants: Tenants, tmp_path: Path) -> None:
    parse_errors: list[Exception] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, Exception):
            parse_errors.append(message)

    errlog = tmp_path / "stderr.log"
    async with stdio_session(tenants.db_url, tenants.keys["acme"], errlog, message_handler=on_message) as c:
        failed = await c.call_tool("get_note", {"note_id": 424242})
        assert failed.is_error
        invalid = await c.call_tool("create_note", {"title": "", "body": "b"})
        assert invalid.is_error, "an empty title must be refused"
        bad_import = await c.call_tool("bulk_import", {"notes": [{"title": "ok"}, {"title": ""}]})
        assert bad_import.is_error
        unknown = await c.call_tool("no_such_tool", {})
        assert unknown.is_error
        with pytest.raises(MCPError):
            await c.read_resource("notes://999999")
        with pytest.raises(MCPError):  # a tenant override attempt is a JSON-RPC error
            await c.call_tool("list_notes", {"tenant_id": "globex"})

        # Still a working session after all of that, and nothing half-done was kept.
        assert await _whoami(c) == "acme"
        assert await _list_notes(c) == [], "a failed all-or-nothing bulk_import left rows behind"
    assert parse_errors == [], f"stdout carried something that is not a JSON-RPC message: {parse_errors}"


def _protocol_message(line: str) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except json.JSONDecodeError:
        raise AssertionError(f"non-protocol output on stdout: {line!r}") from None
    assert isinstance(message, dict) and message.get("jsonrpc") == "2.0", f"not a JSON-RPC message: {line!r}"
    return message


def test_stdout_lines_are_all_json_rpc(tenants: Tenants, tmp_path: Path) -> None:
    """Raw pipes: every line the server writes to stdout is one JSON-RPC message, even around errors."""
    requests: list[dict[str, Any]] = [
        json.loads(INITIALIZE),
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "get_note", "arguments": {"note_id": 7}},
        },
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "nope", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 4, "method": "resources/read", "params": {"uri": "notes://1"}},
        {"jsonrpc": "2.0", "id": 5, "method": "no/such/method", "params": {}},
        {"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}},
    ]
    proc = subprocess.Popen(
        [TENANT_MCP, *desktop_args(tenants.db_url)],
        cwd=ROOT,
        env=desktop_env(tenants.keys["acme"]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "stderr.log").open("w"),
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    answers: dict[int, dict[str, Any]] = {}
    watchdog = threading.Timer(60, proc.kill)  # a hung server must fail the test, not hang it
    watchdog.start()
    try:
        for request in requests:
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            if "id" not in request:
                continue
            while request["id"] not in answers:  # responses arrive in order per request here
                line = proc.stdout.readline()
                assert line, f"stdout closed early; stderr: {(tmp_path / 'stderr.log').read_text()}"
                message = _protocol_message(line)
                if "id" in message:
                    answers[message["id"]] = message
        proc.stdin.close()
        rest = proc.stdout.read()
        proc.wait(20)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for line in rest.splitlines():
        _protocol_message(line)
    assert answers[2]["result"]["isError"] is True
    assert "error" in answers[5], answers[5]
    assert answers[6]["result"]["structuredContent"]["tenant"] == "acme", answers[6]
    assert proc.returncode == 0, "closing stdin should end the server cleanly"
