"""The isolation kit: provisions tenants, attacks the app as another tenant, reports findings."""

from __future__ import annotations

import contextlib
import functools
import json
import re
import secrets
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio

from tenant_mcp.admin import Admin
from tenant_mcp.app import TenantMCP
from tenant_mcp.transports.http import HTTPOptions

_MISSING = "tenant-mcp-kit-missing-item"


@dataclass(frozen=True)
class Finding:
    kind: str  # "leak", "distinguishable", "override accepted"
    item: str
    detail: str


@dataclass
class IsolationReport:
    findings: list[Finding] = field(default_factory=list)
    calls: int = 0
    budget: int = 0  # calls allowed for exact tries of harvested ids and URIs
    exact: int = 0  # exact tries made
    skipped: int = 0  # exact tries left out once the budget was spent

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def coverage(self) -> str:
        text = f"{self.exact} exact tries of harvested ids and URIs, budget {self.budget}"
        return text + (f", {self.skipped} left out" if self.skipped else ": none left out")

    @property
    def text(self) -> str:
        if self.ok:
            return f"isolation holds ({self.calls} calls as another tenant; {self.coverage})"
        lines = [f"{len(self.findings)} isolation problem(s) in {self.calls} calls ({self.coverage}):"]
        lines += [f"- [{f.kind}] {f.item}: {f.detail}" for f in self.findings]
        return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _serving(app: TenantMCP, port: int) -> Iterator[str]:
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app.http_app(HTTPOptions(port=port)), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the app did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        thread.join(30)


def _load(app: TenantMCP | str) -> TenantMCP:
    if isinstance(app, TenantMCP):
        return app
    from tenant_mcp.cli import load_app

    return load_app(app)


class _Arguments:
    """Arguments for a JSON schema: values that carry a tenant's markers or another tenant's ids."""

    def __init__(self, strings: list[str], numbers: list[int]) -> None:
        self.strings = strings or ["kit-value"]
        self.numbers = numbers or [1]

    def value(self, schema: dict[str, Any], i: int) -> Any:
        kind = schema.get("type")
        if "enum" in schema:
            return schema["enum"][i % len(schema["enum"])]
        if kind == "integer" or kind == "number":
            return self.numbers[i % len(self.numbers)]
        if kind == "boolean":
            return bool(i % 2)
        if kind == "array":
            return [self.value(schema.get("items", {}), i + k) for k in range(2)]
        if kind == "object":
            return {name: self.value(sub, i) for name, sub in schema.get("properties", {}).items()}
        return self.strings[i % len(self.strings)]

    def for_schema(self, schema: dict[str, Any], i: int) -> dict[str, Any]:
        return {name: self.value(sub, i) for name, sub in schema.get("properties", {}).items()}


def _variations(
    schema: dict[str, Any], strings: list[str], numbers: list[int], count: int
) -> list[dict[str, Any]]:
    """Property-based variations of another tenant's values (hypothesis, deterministic)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    text = st.sampled_from(strings or ["x"]) | st.builds(
        lambda s, t: s + t, st.sampled_from(strings or ["x"]), st.text(max_size=3)
    )
    ints = st.sampled_from(numbers or [1]) | st.integers(min_value=0, max_value=1000)

    def strategy(node: dict[str, Any]) -> Any:
        kind = node.get("type")
        if "enum" in node:
            return st.sampled_from(node["enum"])
        if kind in ("integer", "number"):
            return ints
        if kind == "boolean":
            return st.booleans()
        if kind == "array":
            return st.lists(strategy(node.get("items", {})), max_size=3)
        if kind == "object":
            return st.fixed_dictionaries({k: strategy(v) for k, v in node.get("properties", {}).items()})
        return text

    out: list[dict[str, Any]] = []

    @settings(max_examples=count, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(strategy({"type": "object", "properties": schema.get("properties", {})}))
    def collect(example: dict[str, Any]) -> None:
        out.append(example)

    collect()
    return out


class _Adds(Protocol):
    def add(self, value: Any, /) -> None: ...


def _harvest(value: Any, strings: _Adds, numbers: _Adds) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        numbers.add(value)
    elif isinstance(value, str):
        if 3 <= len(value) <= 200:
            strings.add(value)
        with contextlib.suppress(ValueError):
            _harvest(json.loads(value), strings, numbers)
    elif isinstance(value, dict):
        for v in value.values():
            _harvest(v, strings, numbers)
    elif isinstance(value, list):
        for v in value:
            _harvest(v, strings, numbers)


def _text(result: Any) -> str:
    return json.dumps(result.model_dump(mode="json", by_alias=True, exclude={"meta"}), sort_keys=True)


def _fill(template: str, value: str) -> str:
    """A URI from a template with every variable set to `value` (taken literally, backslashes too)."""
    return re.sub(r"\{[^}]+\}", lambda _: value, template)


def _distinct(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for case in cases:
        seen.setdefault(json.dumps(case, sort_keys=True, default=str), case)
    return list(seen.values())


def _catalogue_access(app: TenantMCP) -> tuple[str, list[str]]:
    """The plan and scopes that see the whole catalogue (the first plan any tool names)."""
    tools = [item for item in app.items() if item.kind == "tool"]
    scopes = sorted({s for item in tools for s in item.scopes})
    plans = sorted({p for item in tools for p in (item.plans or ())})
    return (plans[0] if plans else "free"), scopes


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every client (building one reads the CA bundle: ~40 ms each)."""
    return ssl.create_default_context()


@contextlib.asynccontextmanager
async def _connect(url: str, key: str) -> AsyncIterator[Any]:
    """The official SDK client over streamable HTTP, as one tenant."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30, verify=_tls()) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
    ):
        yield client


async def _request(client: Any, kind: str, name: str, args: dict[str, Any], seconds: float) -> str:
    """One tool call, resource read or prompt get; its answer as JSON text (an error is an answer)."""
    from mcp.shared.exceptions import MCPError

    try:
        with anyio.fail_after(seconds):
            if kind == "tool":
                return _text(await client.call_tool(name, args))
            if kind == "resource":
                return _text(await client.read_resource(name))
            return _text(await client.get_prompt(name, {k: str(v) for k, v in args.items()}))
    except MCPError as exc:
        return json.dumps({"code": exc.error.code, "message": exc.error.message, "data": exc.error.data})
    except TimeoutError:
        return json.dumps({"timeout": seconds})


def _opt_in_items(app: TenantMCP) -> list[str]:
    """Items the app registers with `per_tenant=True`, as catalogue policies name them."""
    return [item.key for item in app.items() if item.per_tenant]


class IsolationKit:
    def __init__(
        self,
        app: TenantMCP | str,
        *,
        variations: int = 8,
        budget: int = 5000,
        call_timeout: float = 10.0,
    ) -> None:
        self.app = _load(app)
        self.variations = variations
        self.call_timeout = call_timeout
        self.report = IsolationReport(budget=budget)

    async def _provision(self, admin: Admin) -> dict[str, dict[str, str]]:
        rich_plan, scopes = _catalogue_access(self.app)
        tenants: dict[str, dict[str, str]] = {}
        for label, plan, key_scopes in (
            ("a", rich_plan, scopes),
            ("b", rich_plan, scopes),
            ("c", "kit-minimal", []),
        ):
            slug = f"kit-{label}-{secrets.token_hex(3)}"
            tenant = await admin.create_tenant(
                slug, name=f"Kit Tenant {label.upper()} {secrets.token_hex(3)}", plan=plan
            )
            _, key = await admin.create_key(slug, scopes=key_scopes)
            if label != "c":  # policies on: the rich tenants get every per_tenant=True item too
                for item in _opt_in_items(self.app):
                    await admin.set_item_policy(slug, item, "enabled")
            canary = await admin.plant_canary(slug)
            tenants[label] = {
                "slug": slug,
                "name": tenant.name,
                "key": key,
                "canary": canary,
                "token": f"kit{label}{secrets.token_hex(6)}",
            }
        return tenants

    def _client(self, url: str, key: str) -> contextlib.AbstractAsyncContextManager[Any]:
        return _connect(url, key)

    async def _call(
        self, client: Any, kind: str, name: str, args: dict[str, Any], *, attack: bool = True
    ) -> str:
        """One request; `attack=False` for A's own calls, which the report does not count."""
        if attack:
            self.report.calls += 1
        return await _request(client, kind, name, args, self.call_timeout)

    def _find(self, finding: Finding) -> None:
        if finding not in self.report.findings:
            self.report.findings.append(finding)

    def _check(self, item: str, text: str, victim: dict[str, str], seen: set[str], sent: str = "") -> None:
        lowered = (
            text.replace(sent, "").lower() if sent else text.lower()
        )  # an echo of the request is no leak
        for label, marker in (("slug", victim["slug"]), ("name", victim["name"]), ("canary", victim["canary"]),
                              ("written value", victim["token"]), *(("harvested value", v) for v in seen)):  # fmt: skip
            if marker.lower() in lowered:
                self._find(Finding("leak", item, f"another tenant's {label} reached the caller"))
                return
        if "withheld because it contained data of another tenant" in text:
            self._find(Finding("leak", item, "the leak guard caught another tenant's data"))

    async def run(self) -> IsolationReport:
        with tempfile.TemporaryDirectory(prefix="tenant-mcp-kit-") as tmp:
            saved = (self.app.database_url, self.app.leak_guard)
            self.app.database_url = f"sqlite:///{Path(tmp) / 'kit.db'}"
            self.app.leak_guard = "report"
            try:
                async with Admin(self.app.database_url) as admin:
                    tenants = await self._provision(admin)
                with _serving(self.app, _free_port()) as url:
                    await self._attack(url, tenants)
            finally:
                self.app.database_url, self.app.leak_guard = saved
        return self.report

    async def _attack(self, url: str, tenants: dict[str, dict[str, str]]) -> None:
        a, b, c = tenants["a"], tenants["b"], tenants["c"]
        strings: set[str] = set()
        numbers: set[int] = set()
        fresh = _Arguments([f"{a['token']} {a['canary']}", a["token"]], [1, 2])
        async with self._client(url, a["key"]) as as_a, self._client(url, b["key"]) as as_b:
            tools = (await as_a.list_tools()).tools
            resources = [r.uri for r in (await as_a.list_resources()).resources]
            templates = [t.uri_template for t in (await as_a.list_resource_templates()).resource_templates]
            prompts = (await as_a.list_prompts()).prompts
            # Fresh values, then the ids they produced (reads, updates), then fresh values again so
            # A's marked data exists even where the middle round deleted what it found.
            for round_ in range(3):
                seed = fresh if round_ != 1 else _Arguments(sorted(strings), sorted(numbers) or [1])
                for tool in tools:
                    args = seed.for_schema(tool.input_schema, round_)
                    answer = await self._call(as_a, "tool", tool.name, args, attack=False)
                    _harvest(json.loads(answer), strings, numbers)
            for uri in resources:
                _harvest(
                    json.loads(await self._call(as_a, "resource", uri, {}, attack=False)), strings, numbers
                )
            markers = [a["slug"], a["name"], a["canary"], a["token"]]
            own = {s for s in strings if any(m.lower() in s.lower() for m in markers)}
            harvested_uris = sorted(s for s in strings if "://" in s)
            # B attacks with A's ids and URIs but never with A's markers, so any marker in an answer
            # to B came out of A's data, not out of B's own request (a URI is checked minus itself).
            strings -= own
            attack_strings, attack_numbers = sorted(strings), sorted(numbers)
            values = [*map(str, attack_numbers), *(s for s in attack_strings if "/" not in s)]
            surfaces = len(tools) + len(resources) + len(templates) + len(prompts) + 1
            share = max(1, self.report.budget // surfaces)

            async def write_as_a() -> None:
                """A writes marked data again, so B's next call reads it while it is fresh."""
                for tool in tools:
                    await self._call(
                        as_a, "tool", tool.name, fresh.for_schema(tool.input_schema, 0), attack=False
                    )

            for tool in tools:
                schema = tool.input_schema
                exact = _distinct(
                    [
                        _Arguments(attack_strings, attack_numbers).for_schema(schema, i)
                        for i in range(max(len(attack_strings), len(attack_numbers), 1))
                    ]
                )
                cases = [
                    *self._spend(exact, share),
                    *_variations(schema, attack_strings, attack_numbers, self.variations),
                ]
                await write_as_a()
                for args in cases:
                    self._check(f"tool {tool.name}", await self._call(as_b, "tool", tool.name, args), a, own)
                override = await self._call(as_b, "tool", tool.name, {**cases[0], "tenant_id": a["slug"]})
                if "server sets the tenant" not in override:
                    self._find(Finding("override accepted", f"tool {tool.name}", "tenant_id was not refused"))
            groups = [[uri] for uri in resources]
            groups += [[_fill(t, v) for v in values] for t in templates]
            groups.append(harvested_uris)
            for group in filter(None, groups):
                await write_as_a()
                for uri in self._spend(group, share):
                    answer = await self._call(as_b, "resource", uri, {})
                    self._check(f"resource {uri}", answer, a, own, sent=uri)
            for prompt in prompts:
                names = [arg.name for arg in prompt.arguments or []]
                exact = _distinct([{n: v for n in names} for v in values or ["x"]])
                await write_as_a()
                for args in self._spend(exact, share):
                    self._check(
                        f"prompt {prompt.name}", await self._call(as_b, "prompt", prompt.name, args), a, own
                    )
            await self._completions(
                as_b, templates, prompts, attack_strings + [str(n) for n in attack_numbers], a, own
            )
        await self._hidden_like_missing(url, c, tools)

    def _spend(self, tries: list[Any], share: int) -> list[Any]:
        """The exact tries one surface may make: all of them, unless they pass its share of the budget."""
        allowed = tries[:share]
        self.report.exact += len(allowed)
        self.report.skipped += len(tries) - len(allowed)
        return allowed

    async def _completions(self, client: Any, templates: list[str], prompts: list[Any], values: list[str],
                           victim: dict[str, str], own: set[str]) -> None:  # fmt: skip
        from mcp_types import PromptReference, ResourceTemplateReference

        refs: list[tuple[Any, list[str]]] = [
            (ResourceTemplateReference(type="ref/resource", uri=t), re.findall(r"\{([^}]+)\}", t))
            for t in templates
        ]
        refs += [
            (PromptReference(type="ref/prompt", name=p.name), [a.name for a in p.arguments or []])
            for p in prompts
        ]
        for ref, names in refs:
            for name in names:
                for prefix in {v[:3] for v in values[:10]} | {""}:
                    self.report.calls += 1
                    with contextlib.suppress(Exception):
                        result = await client.complete(ref, {"name": name, "value": prefix})
                        leaked = [v for v in result.completion.values if v in values]
                        if leaked:
                            self._find(
                                Finding("leak", f"completion {name}", "completed to another tenant's value")
                            )
                            return

    async def _hidden_like_missing(self, url: str, c: dict[str, str], tools: list[Any]) -> None:
        async with self._client(url, c["key"]) as client:
            visible = {t.name for t in (await client.list_tools()).tools}
            missing = (await self._call(client, "tool", _MISSING, {})).replace(_MISSING, "X")
            for tool in tools:
                if tool.name not in visible:
                    hidden = (await self._call(client, "tool", tool.name, {})).replace(tool.name, "X")
                    if hidden != missing:
                        self._find(Finding("distinguishable", f"tool {tool.name}",
                                           "a hidden tool answers differently from a missing one"))  # fmt: skip


def check_isolation(app: TenantMCP | str, *, variations: int = 8, budget: int = 5000) -> IsolationReport:
    """Run the kit against `app` (a `TenantMCP` or "module:attr") and return its report.

    `budget` bounds the calls B makes with exact harvested ids and URIs (shared evenly among the
    surfaces); the report says how many it made and how many it left out.
    """
    return anyio.run(IsolationKit(app, variations=variations, budget=budget).run)
