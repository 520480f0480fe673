"""What the tests share: real servers in subprocesses, real databases, real clients.

`ServerProcess` starts `tenant-mcp serve` exactly as an operator would, on a free loopback port,
with its own SQLite control plane in a temporary directory. Tenants and keys are created through
the admin API (`tenant_mcp.Admin`), which the CLI uses too. The fixtures built from these live in
`conftest.py`.
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
from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import asyncpg
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tenant_mcp.admin import Admin

ROOT = Path(__file__).resolve().parent.parent


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
    """`tenant-mcp serve APP` on a free port; as a context manager, stopped on exit."""

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
            time.sleep(0.05)  # every start waits half of this on average
        self.stop()
        raise RuntimeError(f"server did not start: {self.log.read_text()}")

    def stop(self) -> int | None:
        interrupt(self.proc)
        self._log_file.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def interrupt(proc: subprocess.Popen[Any], timeout: float = 20) -> bool:
    """Stop `proc` as Ctrl-C would (SIGINT), killing it after `timeout` s; False if it had to be killed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return False
    return True


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


REDIS_URL = os.environ.get("TENANT_MCP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LEGACY = "2025-11-25"  # the protocol of stateful sessions spoken in raw HTTP
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


def sqlite_url(tmp_path_factory: pytest.TempPathFactory, name: str) -> str:
    """A control-plane URL in a fresh temporary directory."""
    return f"sqlite:///{tmp_path_factory.mktemp(name)}/cp.db"


def keyed_tenants(db_url: str, *slugs: str, plans: Mapping[str, str] | None = None) -> Tenants:
    """Each tenant of `slugs` (on `plans[slug]`, else free) with one key under its own name."""
    t = Tenants(db_url)
    for slug in slugs:
        t.create(slug, plan=(plans or {}).get(slug, "free"))
        t.key(slug)
    return t


def run_cli(
    *args: str,
    db: str | None = None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`tenant-mcp ARGS [--db DB]` in a subprocess with a clean environment, as an operator runs it."""
    cmd = [sys.executable, "-m", "tenant_mcp.cli", *args, *(("--db", db) if db else ())]
    return subprocess.run(cmd, cwd=ROOT, env=clean_env(**(env or {})), input=stdin, capture_output=True,
                          text=True, timeout=60, check=check)  # fmt: skip


def tool_result(result: Any) -> Any:
    """The `result` of a successful tool call's structured content."""
    assert not result.is_error, result.content
    return result.structured_content["result"]


def migrate_cli(app: str, pg: Postgres) -> subprocess.CompletedProcess[str]:
    return run_cli("migrate", app, "--db", pg.app, "--data-db", pg.data, "--migration-url", pg.owner)


@contextmanager
def migrated(app: str) -> Iterator[Postgres]:
    """A fresh PostgreSQL database migrated for `app` by the CLI."""
    with postgres_database() as pg:
        done = migrate_cli(app, pg)
        assert done.returncode == 0, done.stderr
        yield pg


K = TypeVar("K", bound=Hashable)


@asynccontextmanager
async def listening(
    listeners: Mapping[K, tuple[str, str]], **subscribe: Any
) -> AsyncIterator[dict[K, list[str]]]:
    """Each listener `(url, key)` connected and subscribed (`Client.listen(**subscribe)`) before the
    body runs; yields what each heard: a resource update's URI, or the event's type name."""
    seen: dict[K, list[str]] = {name: [] for name in listeners}

    async def listen(name: K, ready: anyio.Event) -> None:
        url, key = listeners[name]
        async with mcp_client(url, key) as c, c.listen(**subscribe) as sub:
            ready.set()
            async for event in sub:
                seen[name].append(getattr(event, "uri", type(event).__name__))

    async with anyio.create_task_group() as tg:
        for name in listeners:
            ready = anyio.Event()
            tg.start_soon(listen, name, ready)
            await ready.wait()
        yield seen
        tg.cancel_scope.cancel()


async def until(condition: Callable[[], object], *, within: float = 5.0, then: float = 0.0) -> None:
    """Poll until `condition()` holds (failing after `within` s), then wait `then` s more: the time
    a misrouted or duplicated event would need to arrive."""
    with anyio.fail_after(within):
        while not condition():
            await anyio.sleep(0.05)
    await anyio.sleep(then)


@asynccontextmanager
async def legacy_subscribers(
    url: str, keys: Mapping[str, str], uri: str
) -> AsyncIterator[tuple[dict[str, Client], dict[str, list[str]]]]:
    """A 2025-era (legacy) session per name in `keys`, each subscribed to `uri`; yields the clients
    and, per name, the URIs it was told were updated."""
    seen: dict[str, list[str]] = {name: [] for name in keys}
    async with AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(
                mcp_client(url, key, mode="legacy", message_handler=_resource_updates(seen[name]))
            )
            for name, key in keys.items()
        }
        for client in clients.values():
            await client.subscribe_resource(uri)
        yield clients, seen


def _resource_updates(into: list[str]) -> Callable[[Any], Any]:
    async def on_message(message: Any) -> None:
        root = getattr(message, "root", message)
        if getattr(root, "method", None) == "notifications/resources/updated":
            into.append(str(root.params.uri))

    return on_message
