"""Shared fixtures: real servers in subprocesses, real databases, real clients.

`ServerProcess` starts `tenant-mcp serve` exactly as an operator would, on a free loopback port,
with its own SQLite control plane in a temporary directory. Tenants and keys are created through
the admin API (`tenant_mcp.Admin`), which the CLI uses too.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tenant_mcp.admin import Admin

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANT_MCP_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Tenants:
    """Tenants and keys in one control-plane database."""

    db_url: str
    keys: dict[str, str] = field(default_factory=dict)
    key_ids: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    def run(self, coro_fn: Any) -> Any:
        async def go() -> Any:
            async with Admin(self.db_url) as admin:
                return await coro_fn(admin)

        # A thread of its own, so this also works from inside an async test's running loop.
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, go()).result()

    def create(self, slug: str, *, plan: str = "free", name: str | None = None) -> str:
        async def go(admin: Admin) -> str:
            return (await admin.create_tenant(slug, name=name, plan=plan)).id

        self.ids[slug] = self.run(go)
        return self.ids[slug]

    def key(
        self, tenant: str, *, scopes: tuple[str, ...] = (), label: str = "", name: str | None = None
    ) -> str:
        async def go(admin: Admin) -> tuple[str, str]:
            record, key = await admin.create_key(tenant, scopes=scopes, label=label)
            return record.key_id, key

        key_id, key = self.run(go)
        self.keys[name or tenant] = key
        self.key_ids[name or tenant] = key_id
        return key

    def audit(self, tenant: str, limit: int = 200) -> list[dict[str, Any]]:
        async def go(admin: Admin) -> list[dict[str, Any]]:
            return await admin.audit_events(tenant, limit)

        return self.run(go)


def standard_tenants(db_url: str) -> Tenants:
    """acme (pro, key with notes:export), globex (free), and a second acme key."""
    t = Tenants(db_url)
    t.create("acme", plan="pro", name="Acme Corporation")
    t.create("globex", plan="free", name="Globex Industries")
    t.key("acme", scopes=("notes:export",))
    t.key("globex")
    t.key("acme", name="acme2")
    return t


class ServerProcess:
    def __init__(
        self,
        app: str,
        db_url: str,
        *args: str,
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
        wait: bool = True,
    ) -> None:
        self.port = free_port()
        env = dict(env or {})
        if db_url.startswith("postgresql://"):
            env.setdefault("TENANT_MCP_DATA_URL", data_url(db_url))
        self.env = env
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.base = f"http://127.0.0.1:{self.port}"
        args = tuple(a.replace("{port}", str(self.port)) for a in args)  # for flags that name the URL
        cmd = [sys.executable, "-m", "tenant_mcp.cli", "serve", app, "--port", str(self.port), "--db", db_url,
               "--log-level", "warning", *args]  # fmt: skip
        if log_dir is None:
            self.log = Path(db_url[len("sqlite:///") :]).with_suffix(f".{self.port}.log")
        else:
            self.log = log_dir / f"server.{self.port}.log"
        self._log_file = self.log.open("w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=clean_env(**env), stdout=self._log_file,
                                     stderr=subprocess.STDOUT)  # fmt: skip
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()}")
            try:
                if httpx2.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start: {self.log.read_text()}")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode


@asynccontextmanager
async def mcp_client(
    url: str, key: str | None, *, mode: str = "auto", message_handler: Any = None, **headers: str
) -> AsyncIterator[Client]:
    """The official SDK client over streamable HTTP with a bearer key."""
    h = dict(headers)
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    async with (
        httpx2.AsyncClient(headers=h, timeout=30) as hc,
        Client(
            streamable_http_client(url, http_client=hc),
            mode=mode,  # type: ignore[arg-type]
            message_handler=message_handler,
        ) as client,
    ):
        yield client


@dataclass
class Postgres:
    """A fresh PostgreSQL database: `owner` migrates (a superuser), `app` serves the control plane
    (a plain role) and `data` serves `ctx.db` (another plain role, with no access to the control plane)."""

    name: str
    owner: str
    app: str
    data: str

    def sql(self, query: str, *args: Any, as_app: bool = False) -> list[dict[str, Any]]:
        async def go() -> list[dict[str, Any]]:
            conn = await asyncpg.connect(self.app if as_app else self.owner)
            try:
                return [dict(r) for r in await conn.fetch(query, *args)]
            finally:
                await conn.close()

        return in_thread(go())

    def binding_key(self) -> bytes:
        """The key that binds data transactions to tenants (the owner may read it)."""
        return bytes(self.sql("SELECT key FROM tenant_mcp_rls.binding_key")[0]["key"])


def in_thread(coro: Any) -> Any:
    """Run a coroutine to completion on a loop of its own, also from inside an async test."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


PG_SERVER = os.environ.get("TENANT_MCP_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
APP_ROLE = "tenant_mcp_app"
DATA_ROLE = "tenant_mcp_data"


def data_url(control_url: str) -> str:
    """The `ctx.db` URL beside a test database's control-plane URL."""
    return control_url.replace(f"{APP_ROLE}@", f"{DATA_ROLE}@", 1)


@contextmanager
def postgres_database() -> Iterator[Postgres]:
    name = f"tm_{secrets.token_hex(6)}"

    async def admin(*statements: str) -> None:
        conn = await asyncpg.connect(f"{PG_SERVER}/test")
        try:
            for statement in statements:
                # Another test worker may have created the role first (either error, by timing).
                with suppress(asyncpg.DuplicateObjectError, asyncpg.UniqueViolationError):
                    await conn.execute(statement)
        finally:
            await conn.close()

    in_thread(
        admin(f"CREATE ROLE {APP_ROLE} LOGIN", f"CREATE ROLE {DATA_ROLE} LOGIN", f"CREATE DATABASE {name}")
    )
    host = PG_SERVER.split("@", 1)[1]
    app = f"postgresql://{APP_ROLE}@{host}/{name}"
    try:
        yield Postgres(name, f"{PG_SERVER}/{name}", app, data_url(app))
    finally:
        in_thread(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="module")
def notes_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('notes')}/control.db"


@pytest.fixture(scope="module")
def tenants(notes_db: str) -> Tenants:
    return standard_tenants(notes_db)


@pytest.fixture(scope="module")
def notes_server(notes_db: str, tenants: Tenants) -> Iterator[ServerProcess]:
    server = ServerProcess("example_servers.notes:app", notes_db)
    yield server
    server.stop()
