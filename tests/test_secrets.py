"""Per-tenant secrets end to end: set with the CLI, read by tools as the tenant, never shown."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from tenant_mcp.secrets import KeyRing
from tests.helpers import ServerProcess, Tenants, mcp_client, run_cli, standard_tenants

pytestmark = pytest.mark.anyio

ACME_VALUE = "acme-crm-token-5b1f9e"
GLOBEX_VALUE = "globex-crm-token-a07c33"


def _cli(t: Tenants, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, db=t.db_url, env=env, stdin=stdin)


def _fp(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Tenants, str]:
    t = standard_tenants(f"sqlite:///{tmp_path}/control.db")
    key = KeyRing.new_key()
    for slug, value in (("acme", ACME_VALUE), ("globex", GLOBEX_VALUE)):
        done = _cli(t, "secret", "set", slug, "crm", stdin=value + "\n", TENANT_MCP_SECRET_KEY=key)
        assert done.returncode == 0, done.stderr
    return t, key


def _text(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


async def test_each_tenant_reads_its_own_secret_and_no_one_sees_one(
    setup: tuple[Tenants, str], tmp_path: Path
) -> None:
    t, key = setup
    listed = _cli(t, "secret", "list", "acme", "--json", TENANT_MCP_SECRET_KEY=key)
    assert [s["name"] for s in json.loads(listed.stdout)] == ["crm"] and ACME_VALUE not in listed.stdout
    server = ServerProcess(
        "tests.servers.probe:app", t.db_url, env={"TENANT_MCP_SECRET_KEY": key}, log_dir=tmp_path
    )
    try:
        async with mcp_client(server.url, t.keys["acme"]) as a, mcp_client(server.url, t.keys["globex"]) as b:
            for _ in range(3):  # interleaved: each call gets its own tenant's value
                assert _text(await a.call_tool("secret_fingerprint", {"name": "crm"})) == _fp(ACME_VALUE)
                assert _text(await b.call_tool("secret_fingerprint", {"name": "crm"})) == _fp(GLOBEX_VALUE)
            # A tool that puts the value into its answer: withheld, for its own tenant too.
            with pytest.raises(MCPError, match="withheld") as shown:
                await a.call_tool("reveal_secret", {"name": "crm"})
            assert ACME_VALUE not in str(shown.value)
            missing = await a.call_tool("secret_fingerprint", {"name": "erp"})
            assert missing.is_error
    finally:
        server.stop()
    assert ACME_VALUE not in server.log.read_text() and GLOBEX_VALUE not in server.log.read_text()
    trail = json.dumps(t.audit("acme")) + json.dumps(t.audit("globex"))
    assert ACME_VALUE not in trail and GLOBEX_VALUE not in trail
    assert "secret marker" in trail  # the withheld answer is audited, without the value


async def test_a_missing_secret_says_which_and_how_to_set_it(
    setup: tuple[Tenants, str], tmp_path: Path
) -> None:
    t, key = setup
    server = ServerProcess(
        "tests.servers.probe:app", t.db_url, env={"TENANT_MCP_SECRET_KEY": key}, log_dir=tmp_path
    )
    try:
        async with mcp_client(server.url, t.keys["acme"]) as a:
            result = await a.call_tool("secret_fingerprint", {"name": "erp"})
    finally:
        server.stop()
    assert result.is_error
    assert "secret 'erp' is not set" in _text(result) and "tenant-mcp secret set acme erp" in _text(result)


async def test_a_ciphertext_moved_to_another_tenant_does_not_decrypt(
    setup: tuple[Tenants, str], tmp_path: Path
) -> None:
    t, key = setup
    db = sqlite3.connect(t.db_url[len("sqlite:///") :])
    with db:
        db.execute(
            "UPDATE secrets SET ciphertext = (SELECT ciphertext FROM secrets WHERE tenant_id = ?) WHERE tenant_id = ?",
            (t.ids["acme"], t.ids["globex"]),
        )
    db.close()
    server = ServerProcess(
        "tests.servers.probe:app", t.db_url, env={"TENANT_MCP_SECRET_KEY": key}, log_dir=tmp_path
    )
    try:
        async with mcp_client(server.url, t.keys["globex"]) as b:
            stolen = await b.call_tool("secret_fingerprint", {"name": "crm"})
    finally:
        server.stop()
    assert stolen.is_error and _fp(ACME_VALUE) not in _text(stolen)
    assert "failed to decrypt" in server.log.read_text() or "failed to decrypt" in _text(stolen)


def test_no_key_no_start_and_values_never_from_argv(setup: tuple[Tenants, str], tmp_path: Path) -> None:
    t, key = setup
    server = ServerProcess("tests.servers.probe:app", t.db_url, log_dir=tmp_path, wait=False)
    assert server.proc.wait(30) != 0
    log = server.log.read_text()
    server.stop()
    assert "TENANT_MCP_SECRET_KEY is not set" in log and "Traceback" not in log, log
    argv = _cli(t, "secret", "set", "acme", "crm", "plaintext-on-argv", TENANT_MCP_SECRET_KEY=key)
    assert argv.returncode == 2  # there is no argument for a value
    nokey = _cli(t, "secret", "set", "acme", "crm", stdin="x" * 8)
    assert (
        nokey.returncode == 2 and "TENANT_MCP_SECRET_KEY" in nokey.stderr and "Traceback" not in nokey.stderr
    )


def test_rotation_and_deletion(setup: tuple[Tenants, str]) -> None:
    t, old = setup
    new = KeyRing.new_key()
    rotated = _cli(t, "secret", "rotate-key", "--json", TENANT_MCP_SECRET_KEY=f"{new},{old}")
    assert rotated.returncode == 0 and json.loads(rotated.stdout)["rewrapped"] == 2, rotated.stderr
    # Only the new key now: both tenants' secrets still open (set again proves the data key unwraps).
    again = _cli(t, "secret", "set", "acme", "crm2", stdin="another-value-123", TENANT_MCP_SECRET_KEY=new)
    assert again.returncode == 0, again.stderr
    with_old = _cli(t, "secret", "set", "acme", "crm3", stdin="x" * 8, TENANT_MCP_SECRET_KEY=old)
    assert with_old.returncode == 2 and "no longer holds" in with_old.stderr
    assert _cli(t, "tenant", "delete", "acme", "--yes").returncode == 0
    db = sqlite3.connect(t.db_url[len("sqlite:///") :])
    left = db.execute("SELECT count(*) FROM tenant_keys WHERE tenant_id = ?", (t.ids["acme"],)).fetchone()[0]
    rows = db.execute("SELECT count(*) FROM secrets WHERE tenant_id = ?", (t.ids["acme"],)).fetchone()[0]
    db.close()
    assert left == 0 and rows == 0
