"""The `tenant-mcp` command line, run as an operator runs it.

Starting Python and importing the MCP SDK costs well over a second per process, and these tests
run the CLI about a hundred times. So most invocations go through a small fork server: one
interpreter imports `tenant_mcp.cli` once, then forks a fresh child per command, which gets its own
argv, environment, working directory, stdin (/dev/null), stdout and stderr files, runs `main()`
exactly as `sys.exit(main())` would (an uncaught exception prints its traceback and exits 1), and
exits with its code. `test_fork_runner_matches_real_processes` checks that this gives byte-identical
results to `python -m tenant_mcp.cli`, and the demo tests run the real `tenant-mcp` executable.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tenant_mcp.controlplane import AuditEvent, ControlPlane
from tenant_mcp.storage import migration_sql, new_id
from tenant_mcp.storage.sqlite import DatabasePool
from tests.helpers import ROOT, Tenants, clean_env, free_port, interrupt, mcp_client

TENANT_MCP = str(Path(sys.executable).parent / "tenant-mcp")
SECRET = "acme-cli-secret-93b2"
ERROR_LINE = re.compile(r"^tenant-mcp: error: \S.*$")

_FORK_SERVER = r"""
import json, os, sys, time, traceback
import tenant_mcp.cli as cli

def child(req):
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        f = os.open(req[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(f, fd)
        os.close(f)
    sys.argv = ["tenant-mcp", *req["argv"]]
    try:
        code = cli.main()
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        traceback.print_exc()
        code = 1
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

while True:
    line = sys.stdin.readline()
    if not line:
        break
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            child(req)
        finally:
            os._exit(70)
    deadline = time.monotonic() + req["timeout"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            rc = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            rc = "timeout"
            break
        time.sleep(0.005)
    sys.stdout.write(json.dumps({"rc": rc}) + "\n")
    sys.stdout.flush()
"""


@dataclass
class Run:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.rc == 0, f"{self.argv} exited {self.rc}: {self.stderr}"
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError as exc:
            raise AssertionError(
                f"{self.argv}: --json output does not parse ({exc}): {self.stdout!r}"
            ) from None

    def ok(self) -> Run:
        assert self.rc == 0, f"{self.argv} exited {self.rc}\nstdout: {self.stdout}\nstderr: {self.stderr}"
        assert "Traceback" not in self.stderr, self.stderr
        return self

    def clean_error(self) -> str:
        """A user mistake: non-zero, exactly one 'tenant-mcp: error: ...' line on stderr, no traceback."""
        where = f"{self.argv} (exit {self.rc})\nstdout: {self.stdout}\nstderr: {self.stderr}"
        assert self.rc != 0, f"a mistake exited 0: {where}"
        assert "Traceback" not in self.stderr, f"a traceback instead of a message: {where}"
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, f"expected one line on stderr: {where}"
        assert ERROR_LINE.match(lines[0]), f"not a 'tenant-mcp: error: ...' line: {where}"
        return lines[0]


class ForkRunner:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._count = 0
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _FORK_SERVER],
            cwd=ROOT,
            env=clean_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def __call__(self, *argv: str, cwd: Path | None = None, timeout: float = 30, **env: str) -> Run:
        with self._lock:
            self._count += 1
            out, err = self.workdir / f"{self._count}.out", self.workdir / f"{self._count}.err"
            request = {
                "argv": list(argv),
                "cwd": str(cwd or ROOT),
                "env": clean_env(**env),
                "stdout": str(out),
                "stderr": str(err),
                "timeout": timeout,
            }
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline()
        assert answer, "the fork server died"
        rc = json.loads(answer)["rc"]
        assert rc != "timeout", f"{list(argv)} did not finish within {timeout}s: {err.read_text()}"
        return Run(list(argv), rc, out.read_text(), err.read_text())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkRunner]:
    runner = ForkRunner(tmp_path_factory.mktemp("cli-output"))
    yield runner
    runner.close()


@dataclass
class DB:
    dir: Path
    url: str
    path: Path

    @property
    def data_dir(self) -> Path:
        return self.dir / "cp_data"


@pytest.fixture
def db(tmp_path: Path) -> DB:
    return DB(tmp_path, f"sqlite:///{tmp_path}/cp.db", tmp_path / "cp.db")


def real_cli(*argv: str, cwd: Path = ROOT, timeout: float = 60) -> Run:
    proc = subprocess.run(
        [sys.executable, "-m", "tenant_mcp.cli", *argv],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(list(argv), proc.returncode, proc.stdout, proc.stderr)


def _run_async(coro: Any) -> Any:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def add_notes(db: DB, slug: str, titles: list[str]) -> Path:
    """Create the tenant's data file the way the framework does (DatabasePool, the notes app's
    migrations) and put notes in it. Returns the file's path."""
    from example_servers.notes import app

    async def go() -> Path:
        async with ControlPlane(db.url) as cp:
            tenant = await cp.require_tenant(slug)
            data_dir = cp.data_dir
        pool = DatabasePool(data_dir, [migration_sql("sqlite", m) for m in app._migrations])
        try:
            rows = [(new_id(), title, f"body of {title}") for title in titles]
            async with pool.lease(tenant.id) as handle:
                await handle.run(
                    lambda conn: conn.executemany(
                        "INSERT INTO notes (id, title, body) VALUES (?, ?, ?)", rows
                    )
                )
        finally:
            await pool.aclose()
        return pool.path(tenant.id)

    return _run_async(go())


def add_audit_events(db: DB, slug: str, n: int) -> None:
    async def go() -> None:
        async with ControlPlane(db.url) as cp:
            tenant = await cp.require_tenant(slug)
            events = [
                AuditEvent(
                    at=f"2025-01-01T00:00:0{i}.000Z",
                    tenant_id=tenant.id,
                    principal="key:abc",
                    method="tools/call",
                    target=f"tool{i}",
                    outcome="ok",
                    reason=None,
                    duration_ms=1.0,
                    arguments=None,
                )
                for i in range(n)
            ]
            await cp.write_audit(events)

    _run_async(go())


def _secret(key: dict[str, str]) -> str:
    """The secret part of `tmk_<key id>_<secret>` (the secret itself may contain '_')."""
    prefix = f"tmk_{key['key_id']}_"
    assert key["key"].startswith(prefix), key
    return key["key"][len(prefix) :]


def db_files(db: DB) -> list[Path]:
    return sorted(p for p in db.dir.iterdir() if p.name.startswith("cp.db"))


# -- tenants ---------------------------------------------------------------------------------------


def test_tenant_create_list_suspend_activate_text_and_json(cli: ForkRunner, db: DB) -> None:
    text = cli("tenant", "create", "acme", "--name", "Acme Corp", "--plan", "pro", "--db", db.url).ok()
    assert "acme" in text.stdout and "pro" in text.stdout, text.stdout
    created = cli("tenant", "create", "globex", "--db", db.url, "--json").json()
    assert {k: created[k] for k in ("slug", "name", "plan", "status")} == {
        "slug": "globex", "name": "globex", "plan": "free", "status": "active",
    }, "defaults: name = slug, plan free, active"  # fmt: skip
    assert re.fullmatch(r"[0-9a-f]{32}", created["id"]), created

    listed = cli("tenant", "list", "--db", db.url, "--json").json()
    assert [(t["slug"], t["name"], t["plan"], t["status"]) for t in listed] == [
        ("acme", "Acme Corp", "pro", "active"),
        ("globex", "globex", "free", "active"),
    ]
    table = cli("tenant", "list", "--db", db.url).ok().stdout.splitlines()
    assert table[0].split() == ["SLUG", "NAME", "PLAN", "STATUS", "CREATED"], table
    assert table[1].startswith("acme ") and "Acme Corp" in table[1] and " pro " in table[1], table
    assert table[2].startswith("globex ") and " free " in table[2], table

    suspended = cli("tenant", "suspend", "acme", "--db", db.url).ok().stdout
    assert "acme" in suspended and "suspended" in suspended, suspended
    statuses = {t["slug"]: t["status"] for t in cli("tenant", "list", "--db", db.url, "--json").json()}
    assert statuses == {"acme": "suspended", "globex": "active"}, "suspend must touch only its tenant"
    again = cli("tenant", "suspend", "acme", "--db", db.url, "--json").json()
    assert (again["slug"], again["status"]) == ("acme", "suspended"), "suspending twice is harmless"
    assert "suspended" in cli("tenant", "list", "--db", db.url).ok().stdout

    activated = cli("tenant", "activate", "acme", "--db", db.url, "--json").json()
    assert (activated["slug"], activated["plan"], activated["status"]) == ("acme", "pro", "active")
    assert "active" in cli("tenant", "activate", "acme", "--db", db.url).ok().stdout
    statuses = {t["slug"]: t["status"] for t in cli("tenant", "list", "--db", db.url, "--json").json()}
    assert statuses == {"acme": "active", "globex": "active"}


def test_empty_tenant_list(cli: ForkRunner, db: DB) -> None:
    assert cli("tenant", "list", "--db", db.url, "--json").json() == []
    assert cli("tenant", "list", "--db", db.url).ok().stdout.split() == [
        "SLUG",
        "NAME",
        "PLAN",
        "STATUS",
        "CREATED",
    ]


def test_database_url_from_the_environment(cli: ForkRunner, db: DB) -> None:
    cli("tenant", "create", "acme", TENANT_MCP_DATABASE_URL=db.url).ok()
    assert [t["slug"] for t in cli("tenant", "list", "--db", db.url, "--json").json()] == ["acme"]


# -- keys ------------------------------------------------------------------------------------------


def test_key_create_json_has_exactly_the_documented_fields(cli: ForkRunner, db: DB) -> None:
    cli("tenant", "create", "acme", "--db", db.url).ok()
    data = cli("key", "create", "acme", "--scopes", "a,b", "--label", "L", "--json", "--db", db.url).json()
    assert set(data) == {"tenant", "key_id", "key", "scopes", "items"}, data
    assert data["items"] is None, "no allow-list unless --tools is given"
    assert data["tenant"] == "acme" and data["scopes"] == ["a", "b"], data
    assert data["key"].startswith("tmk_"), data
    assert data["key"].startswith(f"tmk_{data['key_id']}_"), "the key id is the public part of the key"

    text = cli("key", "create", "acme", "--db", db.url).ok().stdout.splitlines()
    assert text[0].startswith("tmk_"), "text mode prints the key first"
    assert "only time" in text[1], text
    other = cli("key", "create", "acme", "--db", db.url, "--json").json()
    assert other["scopes"] == [] and len({data["key"], text[0], other["key"]}) == 3


def test_key_list_never_shows_the_key_or_its_digest(cli: ForkRunner, db: DB) -> None:
    cli("tenant", "create", "acme", "--db", db.url).ok()
    made = [
        cli(
            "key", "create", "acme", "--scopes", "notes:export", "--label", "laptop", "--json", "--db", db.url
        ).json(),
        cli("key", "create", "acme", "--json", "--db", db.url).json(),
    ]
    listed = cli("key", "list", "acme", "--json", "--db", db.url).json()
    table = cli("key", "list", "acme", "--db", db.url).ok().stdout
    assert sorted(k["key_id"] for k in listed) == sorted(k["key_id"] for k in made)
    by_id = {k["key_id"]: k for k in listed}
    first = by_id[made[0]["key_id"]]
    assert (first["tenant"], first["scopes"], first["label"], first["revoked_at"]) == (
        "acme", ["notes:export"], "laptop", None,
    )  # fmt: skip
    for key in made:
        secret = _secret(key)
        digest = hashlib.sha256(key["key"].encode()).hexdigest()
        for shown in (json.dumps(listed), table):
            assert secret not in shown, "key list shows a key's secret"
            assert digest not in shown, "key list shows a key's digest"
    assert all("digest" not in k and "key" not in k for k in listed), listed


def test_plaintext_key_is_not_stored_in_the_control_plane(cli: ForkRunner, db: DB) -> None:
    cli("tenant", "create", "acme", "--db", db.url).ok()
    # A second connection stays open while the key is created, so the CLI's close does not
    # checkpoint and delete the -wal file: the new row is then still in the WAL, where we look too.
    holder = sqlite3.connect(db.path)
    try:
        holder.execute("SELECT count(*) FROM tenants").fetchone()
        key = cli("key", "create", "acme", "--label", "L", "--json", "--db", db.url).json()
        files = db_files(db)
        blobs = {p.name: p.read_bytes() for p in files}
    finally:
        holder.close()
    secret = _secret(key)
    assert len(secret) >= 40
    assert "cp.db-wal" in blobs, f"sanity: expected a WAL file among {list(blobs)}"
    assert key["key_id"].encode() in blobs["cp.db-wal"], "sanity: the new key's row is in the WAL"
    for name, blob in blobs.items():
        assert secret.encode() not in blob, f"the key's secret is stored in {name}"
        assert key["key"].encode() not in blob, f"the plaintext key is stored in {name}"
    after = b"".join(p.read_bytes() for p in db_files(db))  # checkpointed into the main file by now
    assert key["key_id"].encode() in after and secret.encode() not in after


def test_key_revoke(cli: ForkRunner, db: DB) -> None:
    cli("tenant", "create", "acme", "--db", db.url).ok()
    kept = cli("key", "create", "acme", "--json", "--db", db.url).json()
    gone = cli("key", "create", "acme", "--json", "--db", db.url).json()
    text = cli("key", "revoke", gone["key_id"], "--db", db.url).ok().stdout
    assert gone["key_id"] in text and "revoked" in text, text
    listed = {k["key_id"]: k for k in cli("key", "list", "acme", "--json", "--db", db.url).json()}
    assert listed[gone["key_id"]]["revoked_at"], "a revoked key shows revoked_at"
    assert listed[kept["key_id"]]["revoked_at"] is None, "revoking one key must not revoke another"
    assert "revoked" in cli("key", "list", "acme", "--db", db.url).ok().stdout

    again = cli("key", "revoke", gone["key_id"], "--json", "--db", db.url).json()
    assert again == {"key_id": gone["key_id"], "revoked_at": listed[gone["key_id"]]["revoked_at"]}, (
        "revoking twice keeps the first revocation time"
    )


# -- audit -----------------------------------------------------------------------------------------


def test_audit(cli: ForkRunner, db: DB) -> None:
    cli("tenant", "create", "acme", "--db", db.url).ok()
    cli("tenant", "create", "globex", "--db", db.url).ok()
    assert cli("audit", "acme", "--json", "--db", db.url).json() == []
    header = cli("audit", "acme", "--db", db.url).ok().stdout.split()
    assert header == ["AT", "PRINCIPAL", "METHOD", "TARGET", "OUTCOME", "REASON"]

    add_audit_events(db, "acme", 3)
    events = cli("audit", "acme", "--json", "--db", db.url).json()
    assert [e["target"] for e in events] == ["tool2", "tool1", "tool0"], "newest first"
    assert [e["target"] for e in cli("audit", "acme", "--limit", "1", "--json", "--db", db.url).json()] == [
        "tool2"
    ]
    assert cli("audit", "globex", "--json", "--db", db.url).json() == [], "one tenant's events only"
    assert "tool2" in cli("audit", "acme", "--db", db.url).ok().stdout

    for bad in ("0", "-1"):
        line = cli("audit", "acme", "--limit", bad, "--db", db.url).clean_error()
        assert "limit" in line, line


# -- delete and export -----------------------------------------------------------------------------


def test_tenant_delete_needs_yes_then_removes_tenant_keys_and_data(cli: ForkRunner, db: DB) -> None:
    for slug in ("acme", "globex"):
        cli("tenant", "create", slug, "--db", db.url).ok()
    acme_key = cli("key", "create", "acme", "--json", "--db", db.url).json()
    globex_key = cli("key", "create", "globex", "--json", "--db", db.url).json()
    acme_file = add_notes(db, "acme", [f"note {SECRET}"])
    globex_file = add_notes(db, "globex", ["globex note"])
    add_audit_events(db, "acme", 2)
    assert acme_file.exists() and acme_file.parent == db.data_dir, acme_file

    line = cli("tenant", "delete", "acme", "--db", db.url).clean_error()
    assert "--yes" in line, line
    assert [t["slug"] for t in cli("tenant", "list", "--db", db.url, "--json").json()] == ["acme", "globex"]
    assert [k["key_id"] for k in cli("key", "list", "acme", "--json", "--db", db.url).json()] == [
        acme_key["key_id"]
    ]
    assert acme_file.exists(), "delete without --yes removed the data file"
    assert len(cli("audit", "acme", "--json", "--db", db.url).json()) == 2

    out = cli("tenant", "delete", "acme", "--yes", "--json", "--db", db.url).json()
    assert out == {"deleted": "acme"}
    assert [t["slug"] for t in cli("tenant", "list", "--db", db.url, "--json").json()] == ["globex"]
    assert not list(db.data_dir.glob(acme_file.name + "*")), "acme's data files (db, -wal, -shm) remain"
    cli("key", "revoke", acme_key["key_id"], "--db", db.url).clean_error()  # the key is gone
    cli("key", "list", "acme", "--db", db.url).clean_error()

    conn = sqlite3.connect(db.path)
    try:
        acme_id = acme_file.name.split(".")[0]
        left = {
            table: conn.execute(f"SELECT count(*) FROM {table} WHERE tenant_id = ?", (acme_id,)).fetchone()[0]
            for table in ("api_keys", "audit_events")
        }
    finally:
        conn.close()
    assert left == {"api_keys": 0, "audit_events": 0}, f"rows of the deleted tenant remain: {left}"

    # globex is untouched.
    assert globex_file.exists(), "deleting acme removed globex's data"
    assert [k["key_id"] for k in cli("key", "list", "globex", "--json", "--db", db.url).json()] == [
        globex_key["key_id"]
    ]
    # The slug is free again, and the new tenant starts with nothing.
    cli("tenant", "create", "acme", "--db", db.url).ok()
    export = db.dir / "acme-again.json"
    cli("tenant", "export", "acme", "-o", str(export), "--db", db.url).ok()
    assert json.loads(export.read_text())["tables"] == {}, "a re-created tenant sees the old tenant's data"

    cli("tenant", "create", "empty", "--db", db.url).ok()  # no data file at all: still deletable
    cli("tenant", "delete", "empty", "--yes", "--db", db.url).ok()


def test_a_late_audit_batch_of_a_deleted_tenant_writes_nothing_and_fails_nothing(
    cli: ForkRunner, db: DB
) -> None:
    """Events of a deleted tenant's last calls reach the writer after the deletion: they are
    dropped, while the batch's other events are written (and no row of the tenant re-appears)."""
    for slug in ("acme", "globex"):
        cli("tenant", "create", slug, "--db", db.url).ok()
    ids = {t["slug"]: t["id"] for t in cli("tenant", "list", "--db", db.url, "--json").json()}
    cli("tenant", "delete", "acme", "--yes", "--drain-seconds", "0", "--db", db.url).ok()

    def event(tenant_id: str | None) -> AuditEvent:
        return AuditEvent(at="2025-01-01T00:00:00.000Z", tenant_id=tenant_id, principal=None, method="tools/call",
                          target="t", outcome="ok", reason=None, duration_ms=1.0, arguments=None)  # fmt: skip

    async def go() -> None:
        async with ControlPlane(db.url) as cp:
            await cp.write_audit([event(ids["acme"]), event(ids["globex"]), event(None)])

    _run_async(go())
    conn = sqlite3.connect(db.path)
    try:
        rows = conn.execute("SELECT tenant_id FROM audit_events").fetchall()
    finally:
        conn.close()
    assert sorted(rows, key=str) == sorted([(ids["globex"],), (None,)], key=str), rows


def test_names_match_their_pattern_in_full() -> None:
    from tenant_mcp.auth.apikeys import generate, parse_key_id
    from tenant_mcp.errors import TenantMCPError
    from tenant_mcp.storage.database import check_identifier

    key = generate()
    assert parse_key_id(key.key) == key.key_id
    assert parse_key_id(key.key + "\n") is None
    assert check_identifier("notes") == "notes"
    for bad in ("notes\n", "notes ", "\nnotes"):
        with pytest.raises(TenantMCPError):
            check_identifier(bad)


def test_tenant_export(cli: ForkRunner, db: DB) -> None:
    cli("tenant", "create", "acme", "--name", "Acme Corp", "--plan", "pro", "--db", db.url).ok()
    cli("tenant", "create", "globex", "--db", db.url).ok()
    key = cli(
        "key", "create", "acme", "--scopes", "notes:export", "--label", "L", "--json", "--db", db.url
    ).json()
    add_notes(db, "acme", [f"first {SECRET}", "second"])
    add_notes(db, "globex", ["globex only"])

    target = db.dir / "out" / "acme.json"
    target.parent.mkdir()
    summary = cli("tenant", "export", "acme", "-o", str(target), "--json", "--db", db.url).json()
    assert summary["tenant"] == "acme" and summary["rows"] == {"notes": 2}, summary
    raw = target.read_text()
    data = json.loads(raw)
    assert {k: data["tenant"][k] for k in ("slug", "name", "plan", "status")} == {
        "slug": "acme", "name": "Acme Corp", "plan": "pro", "status": "active",
    }  # fmt: skip
    assert [k["key_id"] for k in data["keys"]] == [key["key_id"]]
    assert data["keys"][0]["scopes"] == ["notes:export"] and data["keys"][0]["label"] == "L"
    assert "digest" not in raw, "the export contains key digests"
    assert _secret(key) not in raw, "the export contains a key's secret"
    assert hashlib.sha256(key["key"].encode()).hexdigest() not in raw
    notes = data["tables"]["notes"]
    assert sorted(n["title"] for n in notes) == sorted([f"first {SECRET}", "second"])
    assert all({"id", "title", "body", "created_at"} <= set(n) for n in notes), notes
    assert "globex only" not in raw, "another tenant's rows in the export"

    # Default file name, in the working directory; text output names the file.
    text = cli("tenant", "export", "globex", "--db", db.url, cwd=db.dir).ok().stdout
    default = db.dir / "globex-export.json"
    assert "globex-export.json" in text and default.exists(), text
    assert [n["title"] for n in json.loads(default.read_text())["tables"]["notes"]] == ["globex only"]


# -- user mistakes ---------------------------------------------------------------------------------

MISTAKES: list[Any] = [
    pytest.param(["tenant", "suspend", "nobody"], "nobody", id="suspend-unknown"),
    pytest.param(["tenant", "activate", "nobody"], "nobody", id="activate-unknown"),
    pytest.param(["tenant", "delete", "nobody", "--yes"], "nobody", id="delete-unknown"),
    pytest.param(["tenant", "export", "nobody"], "nobody", id="export-unknown"),
    pytest.param(["key", "create", "nobody"], "nobody", id="key-create-unknown"),
    pytest.param(["key", "list", "nobody"], "nobody", id="key-list-unknown"),
    pytest.param(["audit", "nobody"], "nobody", id="audit-unknown"),
    pytest.param(["tenant", "create", "acme"], "already exists", id="duplicate-slug"),
    pytest.param(["tenant", "create", "Bad Slug!"], "slug", id="invalid-slug"),
    pytest.param(["tenant", "create", "Acme"], "slug", id="uppercase-slug"),
    pytest.param(["tenant", "create", "-acme"], None, id="leading-hyphen"),
    pytest.param(["tenant", "create", "x", "--plan", ""], "plan", id="empty-plan"),
    # `$` matches before a trailing newline: a second "acme" that the leak guard would merge.
    pytest.param(["tenant", "create", "acme\n"], "slug", id="slug-trailing-newline"),
    pytest.param(["tenant", "create", "\nacme"], "slug", id="slug-leading-newline"),
    pytest.param(["tenant", "create", "acme\t"], "slug", id="slug-trailing-tab"),
    # Names are leak-guard markers too: one that normalises to another tenant's slug or name.
    pytest.param(["tenant", "create", "other", "--name", "ACME"], "name", id="name-is-another-slug"),
    pytest.param(["tenant", "create", "other", "--name", " acme\n"], "name", id="name-padded"),
    pytest.param(["tenant", "create", "other", "--name", "a\x00b\x1bc"], "name", id="name-control-chars"),
    pytest.param(["key", "create", "acme", "--label", "laptop\n"], "label", id="label-newline"),
    pytest.param(["key", "create", "acme", "--scopes", "a b"], "scope", id="scope-with-space"),
    pytest.param(["key", "revoke", "0123456789ab"], "0123456789ab", id="unknown-key-id"),
    pytest.param(["serve", "nomodule:app"], "nomodule", id="serve-no-module"),
    pytest.param(["serve", "example_servers.notes"], "MODULE:ATTR", id="serve-no-attr"),
    pytest.param(["serve", "example_servers.notes:nope"], "has no attribute 'nope'", id="serve-missing-attr"),
    pytest.param(["serve", "example_servers.notes:Any"], "not a TenantMCP", id="serve-not-an-app"),
]
BAD_DATABASES: list[Any] = [
    pytest.param("postgresql://x", "PostgreSQL", id="postgresql"),
    pytest.param("mysql://x", "sqlite", id="mysql"),
    pytest.param("sqlite:///no/such/dir/cp.db", "does not exist", id="missing-dir"),
]


@pytest.mark.parametrize(("argv", "mentions"), MISTAKES)
def test_user_mistakes_are_one_clean_line(
    cli: ForkRunner, db: DB, argv: list[str], mentions: str | None
) -> None:
    cli("tenant", "create", "acme", "--db", db.url).ok()
    if argv == ["tenant", "create", "-acme"]:
        argv = ["tenant", "create", "--db", db.url, "--", "-acme"]
    else:
        argv = [*argv, "--db", db.url]
    line = cli(*argv).clean_error()
    if mentions:
        assert mentions in line, line
    assert [t["slug"] for t in cli("tenant", "list", "--db", db.url, "--json").json()] == ["acme"]


@pytest.mark.parametrize(("url", "mentions"), BAD_DATABASES)
@pytest.mark.parametrize(
    "argv",
    [
        ["tenant", "list"],
        ["tenant", "create", "acme"],
        ["key", "revoke", "0123456789ab"],
        ["audit", "acme"],
        ["serve", "example_servers.notes:app", "--transport", "stdio"],
        pytest.param(["serve", "example_servers.notes:app", "--port", "0"]),
        ["demo", "--port", "0"],
    ],
    ids=["tenant-list", "tenant-create", "key-revoke", "audit", "serve-stdio", "serve-http", "demo"],
)
def test_unsupported_database_urls_are_one_clean_line(
    cli: ForkRunner, argv: list[str], url: str, mentions: str, tmp_path: Path
) -> None:
    line = cli(
        *argv, "--db", url, cwd=tmp_path, TENANT_MCP_API_KEY="tmk_0123456789ab_" + "A" * 43
    ).clean_error()
    assert mentions in line, line
    assert list(tmp_path.iterdir()) == [], "a refused URL created files"


def test_argparse_mistakes_exit_2_without_traceback(cli: ForkRunner, db: DB) -> None:
    for argv in (
        [],
        ["tenant"],
        ["tenant", "create"],
        ["key", "create"],
        ["audit", "acme", "--limit", "many"],
        ["serve", "example_servers.notes:app", "--transport", "carrier-pigeon"],
        ["nonsense"],
    ):
        run = cli(*argv)
        assert run.rc == 2, f"{argv}: exit {run.rc}"
        assert "Traceback" not in run.stderr and "error:" in run.stderr, f"{argv}: {run.stderr}"
    assert not db.path.exists()


HELP = [
    [],
    ["tenant"],
    ["tenant", "create"],
    ["tenant", "list"],
    ["tenant", "suspend"],
    ["tenant", "activate"],
    ["tenant", "delete"],
    ["tenant", "export"],
    ["key"],
    ["key", "create"],
    ["key", "list"],
    ["key", "revoke"],
    ["audit"],
    ["serve"],
    ["demo"],
]


@pytest.mark.parametrize("command", HELP, ids=lambda c: "-".join(c) or "top")
def test_help(cli: ForkRunner, command: list[str], tmp_path: Path) -> None:
    run = cli(*command, "--help", cwd=tmp_path).ok()
    assert run.stdout.startswith("usage: tenant-mcp"), run.stdout[:200]
    assert run.stderr == ""
    assert list(tmp_path.iterdir()) == [], "--help created files (a database?)"
    if command and command[-1] in ("create", "list", "suspend", "activate", "delete", "export", "revoke"):
        assert "--db" in run.stdout and "--json" in run.stdout, run.stdout
    if command in (["serve"], ["demo"]):  # they print nothing to parse: no --json that means nothing
        assert "--db" in run.stdout and "--json" not in run.stdout.replace("--json-response", ""), run.stdout
    if command == ["tenant", "delete"]:
        assert "--yes" in run.stdout
    if command == []:
        for group in ("tenant", "key", "audit", "serve", "demo"):
            assert group in run.stdout


def test_fork_runner_matches_real_processes(cli: ForkRunner, tmp_path: Path) -> None:
    """The fork server gives the same exit code and bytes as `python -m tenant_mcp.cli`."""
    url = f"sqlite:///{tmp_path}/cp.db"
    cli("tenant", "create", "acme", "--plan", "pro", "--db", url).ok()
    commands = [
        ["tenant", "list", "--db", url, "--json"],
        ["tenant", "suspend", "nobody", "--db", url],
    ]
    with ThreadPoolExecutor(len(commands)) as pool:
        real = list(pool.map(lambda argv: real_cli(*argv), commands))
    for argv, process in zip(commands, real, strict=True):
        forked = cli(*argv)
        assert (forked.rc, forked.stdout, forked.stderr) == (process.rc, process.stdout, process.stderr), argv


# -- demo ------------------------------------------------------------------------------------------


class Demo:
    """`tenant-mcp demo` in the background, its stdout collected by a thread."""

    def __init__(self, db_url: str, port: int) -> None:
        self.port = port
        env = clean_env()
        # As after the Quickstart: the venv is not activated, its scripts are not on PATH.
        venv_bin = Path(TENANT_MCP).parent
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if Path(p) != venv_bin)
        self.proc = subprocess.Popen(
            [TENANT_MCP, "demo", "--port", str(port), "--db", db_url],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.stderr = ""
        self._out = threading.Thread(target=self._read_stdout, daemon=True)
        self._err = threading.Thread(target=self._read_stderr, daemon=True)
        self._out.start()
        self._err.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def wait_ready(self, timeout: float = 60) -> str:
        """Wait for the banner's last line and for /healthz; returns the printed text."""
        deadline = time.monotonic() + timeout
        while not any("Serving until Ctrl-C." in line for line in self.lines):
            assert self.proc.poll() is None, f"demo exited {self.proc.returncode}: {''.join(self.lines)}"
            assert time.monotonic() < deadline, f"demo printed no banner: {''.join(self.lines)}"
            time.sleep(0.05)
        while True:
            assert self.proc.poll() is None, f"demo exited {self.proc.returncode}"
            try:
                if httpx2.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            assert time.monotonic() < deadline, "demo did not start serving"
            time.sleep(0.05)
        return "".join(self.lines)

    def interrupt(self) -> int:
        if not interrupt(self.proc):
            raise AssertionError("demo did not stop on SIGINT")
        self._out.join(5)
        self._err.join(5)
        return self.proc.returncode


def parse_banner(text: str) -> tuple[dict[str, str], dict[str, Any]]:
    keys = dict(re.findall(r"^\s+(\w+)\s+key: (tmk_\S+)$", text, re.MULTILINE))
    start = text.index("claude_desktop_config.json")
    start = text.index("{", start)
    depth, end = 0, start
    for end, char in enumerate(text[start:], start):  # noqa: B007
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            break
    return keys, json.loads(text[start : end + 1])


async def _whoami(url: str, key: str) -> str:
    async with mcp_client(url, key) as client:
        result = await client.call_tool("whoami", {})
        assert not result.is_error, result
        return str(result.structured_content["tenant"])


async def _create_note(url: str, key: str) -> int:
    async with mcp_client(url, key) as client:
        result = await client.call_tool("create_note", {"title": "from http", "body": SECRET})
        assert not result.is_error, result
        return int(result.structured_content["id"])


async def _desktop_notes(entry: dict[str, Any], cwd: Path) -> list[int]:
    params = StdioServerParameters(command=entry["command"], args=entry["args"], env=entry["env"], cwd=cwd)
    async with Client(params) as client:
        result = await client.call_tool("list_notes", {})
        assert not result.is_error, result
        return [int(n["id"]) for n in result.structured_content["result"]]


def test_demo(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path}/demo.db"
    port = free_port()
    demo = Demo(db_url, port)
    try:
        text = demo.wait_ready()
        keys, desktop = parse_banner(text)
        assert set(keys) == {"acme", "globex"}, text
        assert set(desktop) == {"mcpServers"}, desktop
        servers = desktop["mcpServers"]
        assert set(servers) == {"notes-acme", "notes-globex"}, servers
        for slug, server in (("acme", servers["notes-acme"]), ("globex", servers["notes-globex"])):
            assert server["env"] == {"TENANT_MCP_API_KEY": keys[slug]}, server
            assert server["args"][:4] == ["serve", "example_servers.notes:app", "--transport", "stdio"], (
                server
            )
            db_arg = server["args"][server["args"].index("--db") + 1]
            assert Path(db_arg[len("sqlite:///") :]).resolve() == (tmp_path / "demo.db").resolve(), db_arg
            assert Path(server["command"]).is_absolute() and os.access(server["command"], os.X_OK), server
        assert f"http://127.0.0.1:{port}/mcp" in text

        url = f"http://127.0.0.1:{port}/mcp"
        assert asyncio.run(_whoami(url, keys["acme"])) == "acme"
        # The printed Python snippet runs as a script, as printed.
        snippet = text.split("Python (mcp SDK), as a script:\n", 1)[1].split("\nOAuth-only", 1)[0]
        script = tmp_path / "snippet.py"
        script.write_text(textwrap.dedent(snippet))
        ran = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0 and "acme" in ran.stdout, ran.stderr[-2000:]
        assert asyncio.run(_whoami(url, keys["globex"])) == "globex"
        note_id = asyncio.run(_create_note(url, keys["acme"]))
        # The printed desktop entry works as printed, from a directory that is not the repo (a
        # desktop assistant sets no working directory), and sees what acme did over HTTP.
        seen = asyncio.run(_desktop_notes(servers["notes-acme"], cwd=tmp_path))
        assert seen == [note_id], f"acme over stdio sees {seen}, expected its HTTP note {note_id}"
    finally:
        rc = demo.interrupt()
    assert rc in (0, 130), f"demo exited {rc} on SIGINT: {demo.stderr}"
    assert "Traceback" not in demo.stderr, demo.stderr

    # A second run on the same database: the tenants exist already; it must still start.
    again = Demo(db_url, free_port())
    try:
        keys2, _ = parse_banner(again.wait_ready())
        assert set(keys2) == {"acme", "globex"} and keys2["acme"] != keys["acme"]
        assert asyncio.run(_whoami(f"http://127.0.0.1:{again.port}/mcp", keys2["acme"])) == "acme"
        # The first run's keys were revoked: one valid demo key per tenant at a time.
        old = httpx2.post(
            f"http://127.0.0.1:{again.port}/mcp",
            headers={
                "Authorization": f"Bearer {keys['acme']}",
                "Accept": "application/json, text/event-stream",
            },
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            timeout=10,
        )
        assert old.status_code == 401
    finally:
        rc = again.interrupt()
    assert rc in (0, 130), f"second demo exited {rc}: {again.stderr}"
    assert "Traceback" not in again.stderr, again.stderr

    tenants = Tenants(db_url)
    listed = tenants.run(lambda admin: admin.list_tenants())
    assert [(t.slug, t.plan) for t in listed] == [("acme", "pro"), ("globex", "free")], (
        "demo duplicated tenants"
    )


def test_demo_with_its_port_taken_says_so_before_printing_keys(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "tenant_mcp.cli", "demo", "--port", str(port), "--db", f"sqlite:///{tmp_path}/d.db"],
            cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2 and f"cannot serve on 127.0.0.1:{port}" in done.stderr, done
    assert "tmk_" not in done.stdout and "Traceback" not in done.stderr


def test_an_app_that_declares_a_tenant_parameter_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad_app.py"
    bad.write_text(
        "from tenant_mcp import TenantContext, TenantMCP\napp = TenantMCP('x')\n\n@app.tool()\n"
        "async def t(tenant_id: str, ctx: TenantContext) -> str:\n    return ''\n"
    )
    done = subprocess.run([sys.executable, "-m", "tenant_mcp.cli", "serve", f"{bad}:app"], cwd=ROOT,
                          env=clean_env(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert (
        done.returncode == 2
        and "takes a parameter 'tenant_id'" in done.stderr
        and "Traceback" not in done.stderr
    )


# Where an option's environment name is not its own name.
ENV_NAMES = {"--db": "DATABASE_URL", "--data-db": "DATA_URL"}


def test_every_serve_option_reads_the_environment_as_its_help_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve --help` promises TENANT_MCP_<NAME> for every option; each one is read from there."""
    import argparse

    from tenant_mcp.cli import build_parser

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    assert "TENANT_MCP_<NAME>" in serve.format_help()
    options = [a for a in serve._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    expected: dict[str, Any] = {}
    for action in options:
        flag = action.option_strings[-1]
        name = ENV_NAMES.get(flag, flag.lstrip("-").replace("-", "_").upper())
        value = action.choices[-1] if action.choices else "1" if action.nargs == 0 else "7"
        monkeypatch.setenv(f"TENANT_MCP_{name}", str(value))
        expected[action.dest] = True if action.nargs == 0 else (action.type or str)(value)
    args = build_parser().parse_args(["serve", "app:app"])
    assert {dest: getattr(args, dest) for dest in expected} == expected
