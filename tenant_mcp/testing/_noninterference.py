"""Noninterference testing: what tenant B sees must not depend on what tenant A does.

The isolation kit looks for A's data in B's answers; this check finds the quieter leaks too (a
counter shared by all tenants, a unique name taken by another tenant, a global cache or rate limiter
that A fills or drains, an ordering effect), because it compares B's *whole view* with and without
A's activity:

1. a random script for each tenant (tool calls, resource reads, prompt gets, listings) with
   arguments drawn from the items' JSON schemas (hypothesis) over a small shared vocabulary, so
   the tenants' values collide, and values the tenant itself received earlier;
2. the victim's script runs twice on fresh servers with the other tenants idle (the baselines: what
   differs between them is honest non-determinism), then on a fresh server with the other tenant's
   script interleaved step by step, then with it running meanwhile (concurrently); directions:
   B's view with A acting, A's with B acting, B's with C (on another plan) acting;
3. observations are canonicalised (timestamps normalised, long values that differ between the
   baselines mapped to placeholders in order of first appearance, items marked or found random
   compared by shape only) and compared step by step;
4. on a difference, the other tenant's script is shrunk (delta debugging, bounded) to a minimal one
   that still changes the victim's view, and reported with the seed, the step and both observations.

Import it from `tenant_mcp.testing` (this module uses the kit's machinery from there).
"Fresh server" means a new process (`tenant-mcp serve`), so module-level state (the usual culprit)
starts empty in every run and each run is reproducible.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from tenant_mcp.admin import Admin
from tenant_mcp.app import TenantMCP
from tenant_mcp.testing._kit import _catalogue_access, _connect, _free_port, _harvest, _load, _request, _tls

# Small and shared by both tenants: interference mostly shows where their values collide.
_WORDS = ["alpha", "beta", "gamma", "delta", "alpha-1", "Beta", "kit", "x"]
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?")
_LISTINGS = ("tools", "resources", "resource templates", "prompts")
_OTHER_PLAN = "kit-minimal"  # tenant C's: a plan no item names, so C sees the least


@dataclass(frozen=True)
class _Ref:
    """A value the tenant received earlier in the same run: the `index`-th of that type (wrapping)."""

    kind: str  # "str", "int" or "any"
    index: int
    fallback: Any  # used while the tenant has received nothing of that type


@dataclass(frozen=True)
class _Op:
    kind: str  # "tool", "resource", "template", "prompt", "list"
    name: str  # tool or prompt name, resource URI, URI template, or what to list
    args: Any = None  # arguments, possibly holding _Ref


@dataclass(frozen=True)
class Interference:
    """One place where the victim's view changed because of the other tenant."""

    victim: str  # "B" or "A"
    other: str
    step: int  # the victim's step (0-based) whose observation changed
    operation: str  # that step, as sent
    difference: str  # where the two observations first differ: "path: alone -> together"
    alone: str  # the canonical observation with the other tenant idle
    together: str  # the canonical observation with the other tenant's minimal script interleaved
    script: list[str]  # the other tenant's minimal script, each line saying where it runs
    script_steps: int  # how long the other tenant's script was before shrinking
    victim_script: list[str]  # the victim's script up to and including `step`
    shrink_runs: int
    concurrent: bool = False  # found with the other tenant's script running meanwhile


@dataclass
class NoninterferenceReport:
    seed: int
    steps: int  # per script
    seconds: float  # the time budget
    target: str
    findings: list[Interference] = field(default_factory=list)
    runs: int = 0
    calls: int = 0
    elapsed: float = 0.0
    directions: list[str] = field(default_factory=list)  # the directions checked, e.g. "B's view, A acting"
    shape_only: int = 0  # steps compared by shape only (marked, or found random)
    found_random: set[str] = field(default_factory=set)  # items the baselines showed to be random
    incomplete: str = ""  # why the check stopped early, if it did

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def budget(self) -> str:
        text = (
            f"seed {self.seed}; {self.steps} steps per script; {', '.join(self.directions) or 'no direction'}; "
            f"{self.runs} runs, {self.calls} calls in {self.elapsed:.1f} s of a {self.seconds:.0f} s budget; "
            f"{self.shape_only} steps compared by shape only"
        )
        if self.found_random:
            text += f" (found random: {', '.join(sorted(self.found_random))})"
        return text + (f"; INCOMPLETE: {self.incomplete}" if self.incomplete else "")

    @property
    def replay(self) -> str:
        return f"check_noninterference({self.target!r}, seed={self.seed}, steps={self.steps})"

    @property
    def text(self) -> str:
        if self.ok:
            return f"noninterference holds ({self.budget})"
        lines = [f"{len(self.findings)} interference(s) ({self.budget}):"]
        for f in self.findings:
            lines += [
                f"- tenant {f.victim}'s view changed by tenant {f.other}{' (concurrently)' if f.concurrent else ''} "
                f"at {f.victim}'s step {f.step}: "
                f"{f.operation}",
                f"    differs at {f.difference}",
                f"    {f.other} idle:   {f.alone}",
                f"    {f.other} acting: {f.together}",
                f"  {f.other}'s minimal script ({len(f.script)} of {f.script_steps} steps, "
                f"shrunk in {f.shrink_runs} runs):",
                *(f"    {line}" for line in f.script),
                f"  {f.victim}'s script up to step {f.step}:",
                *(f"    {line}" for line in f.victim_script),
            ]
        lines.append(f"replay: {self.replay}")
        return "\n".join(lines)


# --- scripts -----------------------------------------------------------------------------------


def _strategy(node: Any, root: dict[str, Any]) -> Any:
    """A hypothesis strategy for a JSON schema node, biased towards the shared vocabulary."""
    from hypothesis import strategies as st

    if not isinstance(node, dict):
        return st.sampled_from(_WORDS)
    if "$ref" in node:
        name = str(node["$ref"]).rsplit("/", 1)[-1]
        return _strategy(root.get("$defs", {}).get(name, {}), root)
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    for key in ("anyOf", "oneOf"):
        if key in node:
            options = [o for o in node[key] if o.get("type") != "null"] or node[key]
            return st.one_of([_strategy(o, root) for o in options])
    kind = node.get("type")
    if kind in ("integer", "number"):
        low = int(node.get("minimum", node.get("exclusiveMinimum", -2) + 1))
        high = max(low, int(node.get("maximum", node.get("exclusiveMaximum", low + 11) - 1)))
        return st.integers(low, min(high, low + 5)) | st.integers(low, high)
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        low = int(node.get("minItems", 0))
        high = max(low, min(int(node.get("maxItems", 3)), 3))
        return st.lists(_strategy(node.get("items", {}), root), min_size=low, max_size=high)
    if kind == "object" or "properties" in node:
        props = node.get("properties", {})
        required = set(node.get("required", ()))
        extra = node.get("additionalProperties")
        fixed = {k: _strategy(v, root) for k, v in props.items() if k in required}
        optional = {k: _strategy(v, root) for k, v in props.items() if k not in required}
        base = st.fixed_dictionaries(fixed, optional=optional)
        if isinstance(extra, dict) and not props:
            return st.dictionaries(
                st.sampled_from(["title", "body", "name"]), _strategy(extra, root), max_size=2
            )
        return base
    low, high = int(node.get("minLength", 0)), int(node.get("maxLength", 64))
    words = [w for w in _WORDS if low <= len(w) <= high]
    # At least 3 characters where allowed, so a search rarely matches a random id's digits by chance.
    size = min(max(low, 3), high)
    text = st.text(
        st.characters(codec="ascii", categories=["L", "N"]), min_size=size, max_size=max(size, min(high, 6))
    )
    return st.sampled_from(words) | text if words else text


def _examples(schema: dict[str, Any], count: int, seed: int) -> list[Any]:
    """`count` examples of a schema, the same for the same seed (hypothesis, generation only)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as fixed_seed

    out: list[Any] = []

    @fixed_seed(seed)
    @settings(max_examples=count, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(_strategy(schema, schema))
    def collect(example: Any) -> None:
        out.append(example)

    collect()
    return out or [{}]


def _with_refs(value: Any, rng: random.Random, kind: str | None = None) -> Any:
    """Some scalars replaced by references to values the tenant will have received by then."""
    if isinstance(value, dict):
        return {k: _with_refs(v, rng, kind) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_refs(v, rng, kind) for v in value]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return value
    scalar = kind or ("str" if isinstance(value, str) else "int")
    return _Ref(scalar, rng.randrange(1000), value) if rng.random() < 0.3 else value


class _Catalogue:
    def __init__(
        self, tools: list[Any], resources: list[str], templates: list[str], prompts: list[Any]
    ) -> None:
        self.tools, self.resources, self.templates, self.prompts = tools, resources, templates, prompts

    def pools(self, seed: int, size: int = 16) -> dict[tuple[str, str], list[Any]]:
        pools: dict[tuple[str, str], list[Any]] = {}
        for i, tool in enumerate(self.tools):
            pools["tool", tool.name] = _examples(tool.input_schema, size, seed + i)
        for template in self.templates:
            names = re.findall(r"\{([^}]+)\}", template)
            schema = {
                "type": "object",
                "properties": {n: {"type": "string"} for n in names},
                "required": names,
            }
            pools["template", template] = _examples(schema, size, seed)
        for prompt in self.prompts:
            args = prompt.arguments or []
            schema = {
                "type": "object",
                "properties": {a.name: {"type": "string"} for a in args},
                "required": [a.name for a in args if a.required],
            }
            pools["prompt", prompt.name] = _examples(schema, size, seed)
        return pools

    def script(self, rng: random.Random, pools: dict[tuple[str, str], list[Any]], steps: int) -> list[_Op]:
        choices: list[tuple[str, str]] = [
            *(("tool", t.name) for t in self.tools for _ in range(3)),  # tools do most of the work
            *(("resource", r) for r in self.resources),
            *(("template", t) for t in self.templates),
            *(("prompt", p.name) for p in self.prompts),
            *(("list", what) for what in _LISTINGS),
        ]
        ops = []
        for _ in range(steps):
            kind, name = rng.choice(choices)
            args = None
            if (kind, name) in pools:
                args = _with_refs(rng.choice(pools[kind, name]), rng, "any" if kind == "template" else None)
            ops.append(_Op(kind, name, args))
        return ops


# --- runs ----------------------------------------------------------------------------------------


def _target(app: TenantMCP | str) -> str:
    """The "module:attr" a fresh server process imports (an instance is looked up in its module)."""
    if isinstance(app, str):
        _load(app)  # fail here, with the CLI's message, if it does not name a TenantMCP
        return app
    # Where it is defined (its tools' module) first; never __main__, which a server cannot import.
    homes = {getattr(item.fn, "__module__", None) for item in app.items() if item.kind == "tool"}
    found = sorted(
        ((name not in homes, name, attr)
         for name, module in list(sys.modules.items()) if name != "__main__"
         for attr, value in list(getattr(module, "__dict__", {}).items())
         if value is app and not attr.startswith("__")),
    )  # fmt: skip
    if found:
        return f"{found[0][1]}:{found[0][2]}"
    raise ValueError("check_noninterference needs the app as 'module:attr' or an app defined at module level")


class _Server:
    """`tenant-mcp serve` in a new process, with its own control plane and tenants A and B.

    A new process per run, so module-level state (the usual culprit) starts empty every time and
    every run is reproducible. Started ahead of use (`_Checker` keeps one spare warming up while a
    run goes on): the interpreter's start is most of a run's cost.
    """

    def __init__(self, target: str, plan: str, scopes: list[str]) -> None:
        self.target, self.plan, self.scopes = target, plan, scopes
        self.tmp = Path(tempfile.mkdtemp(prefix="tenant-mcp-ni-"))
        self.keys: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.db_url = f"sqlite:///{self.tmp / 'ni.db'}"

    async def start(self) -> None:
        """Tenants A and B (on the plan and scopes that see everything) and C (on a plan of its own,
        without scopes) in a new control plane, then the server process (not waited for)."""
        db_url = self.db_url
        async with Admin(db_url) as admin:
            for label, plan, scopes in (("A", self.plan, self.scopes), ("B", self.plan, self.scopes),
                                        ("C", _OTHER_PLAN, [])):  # fmt: skip
                slug = f"tenant-{label.lower()}"
                await admin.create_tenant(slug, name=f"Tenant {label}", plan=plan)
                self.keys[label] = (await admin.create_key(slug, scopes=scopes))[1]
        self._spawn(db_url)

    def _spawn(self, db_url: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "tenant_mcp.cli", "serve", self.target, "--port", str(self.port),
               "--db", db_url, "--log-level", "warning"]  # fmt: skip
        with (self.tmp / "server.log").open("w") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603

    async def ready(self) -> None:
        import httpx2

        deadline = time.monotonic() + 60
        async with httpx2.AsyncClient(timeout=1, verify=_tls()) as http:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.tmp / "server.log").read_text()[-2000:]
                    if "address already in use" in log and time.monotonic() < deadline:
                        # the free port was taken meanwhile by someone else: another one
                        self.port = _free_port()
                        self.url = f"http://127.0.0.1:{self.port}/mcp"
                        self._spawn(self.db_url)
                        continue
                    raise RuntimeError(f"the app did not start: {log}")
                with contextlib.suppress(httpx2.HTTPError):
                    # Our key, so that another server that took the port meanwhile (401) is not ours.
                    answer = await http.get(self.url, headers={"Authorization": f"Bearer {self.keys['B']}"})
                    if answer.status_code != 401:
                        return
                await anyio.sleep(0.03)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class _Run:
    observations: list[Any]  # the victim's, one per victim step, expanded (JSON in strings parsed)
    sent: list[str]  # every step as sent, in order: "who: operation"
    victim_sent: list[str]
    complete: bool = True
    other_ops: list[tuple[int, _Op]] = field(default_factory=list)  # the other tenant's, values resolved


def _expand(value: Any) -> Any:
    """JSON inside strings parsed (tool results carry their JSON as text too), timestamps normalised."""
    if isinstance(value, str):
        if value[:1] in "{[":
            with contextlib.suppress(ValueError):
                return {"$json": _expand(json.loads(value))}
        return _TIME.sub("<time>", value)
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def _fill_each(template: str, args: dict[str, Any]) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: str(args.get(m.group(1), "")), template)


class _Ordered(dict[Any, None]):
    """Values in order of first appearance (`_harvest` adds to it like to a set)."""

    def add(self, value: Any) -> None:
        self.setdefault(value, None)


class _Values(_Ordered):
    """The strings a tenant received, less JSON text (whole answers: sent back, they carry every id
    and timestamp in them). The test is on structure, not content, so that each run of a script
    keeps the same values in the same order, whatever its random ids look like."""

    def add(self, value: Any) -> None:
        if value[:1] not in "{[":
            super().add(value)


class _Tenant:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.strings = _Values()
        self.numbers = _Ordered()

    def resolve(self, value: Any) -> Any:
        if isinstance(value, _Ref):
            pool = {"str": list(self.strings), "int": list(self.numbers)}.get(
                value.kind, [*self.numbers, *self.strings]
            )
            return pool[value.index % len(pool)] if pool else value.fallback
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        return value


class _Checker:
    def __init__(self, app: TenantMCP | str, *, seed: int, steps: int, seconds: float, shrink_runs: int,
                 nondeterministic: Collection[str], call_timeout: float, concurrent: bool) -> None:  # fmt: skip
        self.target = _target(app)
        self.app = _load(self.target)
        self.seed, self.steps, self.shrink_limit = seed, steps, shrink_runs
        self.nondeterministic = set(nondeterministic)
        self.concurrent = concurrent
        self.call_timeout = call_timeout
        self.report = NoninterferenceReport(seed=seed, steps=steps, seconds=seconds, target=self.target)
        self.started = time.monotonic()
        self.catalogues: dict[str, _Catalogue] = {}
        self.spare: _Server | None = None

    def _left(self) -> float:
        return self.report.seconds - (time.monotonic() - self.started)

    @contextlib.asynccontextmanager
    async def _fresh(self) -> AsyncIterator[dict[str, _Tenant]]:
        """A fresh server with tenants A and B (same slugs every run, same plan, every scope)."""
        self.report.runs += 1
        server, self.spare = self.spare, None
        if server is None:
            server = _Server(self.target, *_catalogue_access(self.app))
            await server.start()
        try:
            self.spare = _Server(self.target, *_catalogue_access(self.app))  # warms up meanwhile
            await self.spare.start()
            await server.ready()
            async with contextlib.AsyncExitStack() as stack:
                tenants = {}
                for label, key in server.keys.items():
                    tenants[label] = _Tenant(await stack.enter_async_context(_connect(server.url, key)))
                    await self._discover(label, tenants[label].client)  # every run starts with these
                yield tenants
        finally:
            server.stop()

    async def _discover(self, label: str, client: Any) -> None:
        tools = (await client.list_tools()).tools
        resources = [r.uri for r in (await client.list_resources()).resources]
        templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
        prompts = (await client.list_prompts()).prompts
        self.catalogues.setdefault(label, _Catalogue(tools, resources, templates, prompts))

    async def _step(self, tenant: _Tenant, op: _Op) -> tuple[str, Any, _Op]:
        """One operation: what was sent (rendered), the answer (an error is an answer too), and the
        operation with the values it used in place of its references."""
        args = tenant.resolve(op.args)
        self.report.calls += 1
        if op.kind == "list":
            method = {"tools": "list_tools", "resources": "list_resources",
                      "resource templates": "list_resource_templates", "prompts": "list_prompts"}[op.name]  # fmt: skip
            with anyio.fail_after(self.call_timeout):
                result = await getattr(tenant.client, method)()
            answer = result.model_dump(mode="json", by_alias=True, exclude={"meta"})
            sent = f"list {op.name}"
        elif op.kind in ("resource", "template"):
            uri = op.name if op.kind == "resource" else _fill_each(op.name, args)
            answer = json.loads(await _request(tenant.client, "resource", uri, {}, self.call_timeout))
            sent = f"read {uri}"
        else:
            answer = json.loads(
                await _request(tenant.client, op.kind, op.name, args or {}, self.call_timeout)
            )
            sent = f"{op.kind} {op.name} {json.dumps(args, sort_keys=True)}"
        if op.name not in self.nondeterministic:  # random by nature: not worth sending back
            _harvest(answer, tenant.strings, tenant.numbers)
        return sent, answer, _Op(op.kind, op.name, args)

    async def _run(self, victim: str, script: list[_Op], other_label: str, other: list[tuple[int, _Op]],
                   tenants: dict[str, _Tenant] | None = None, *, concurrent: bool = False) -> _Run:  # fmt: skip
        """The victim's script, with the other tenant's steps run before the victim's step `at`
        (or, `concurrent`, all of them meanwhile, as fast as they go).

        Stops early (`complete` false) when the time budget runs out."""
        if tenants is None:
            async with self._fresh() as fresh:
                return await self._run(victim, script, other_label, other, fresh, concurrent=concurrent)
        run = _Run([], [], [])
        pending = sorted(other, key=lambda pair: pair[0])

        async def other_steps(until: int | None) -> None:
            while pending and (until is None or pending[0][0] <= until) and self._left() > 0:
                at, other_op = pending.pop(0)
                sent, _, resolved = await self._step(tenants[other_label], other_op)
                run.sent.append(f"{other_label}: {sent}")
                run.other_ops.append((at, resolved))

        async with anyio.create_task_group() as group:
            if concurrent:
                group.start_soon(other_steps, None)
            for i, op in enumerate(script):
                if self._left() <= 0:
                    run.complete = False
                    break
                if not concurrent:
                    await other_steps(i)
                sent, answer, _ = await self._step(tenants[victim], op)
                run.sent.append(f"{victim}: {sent}")
                run.victim_sent.append(sent)
                run.observations.append(_expand(answer))
        return run

    # --- canonicalisation ---

    @staticmethod
    def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
        if isinstance(value, dict):
            for k, v in value.items():
                yield from _Checker._leaves(v, (*path, k))
        elif isinstance(value, list):
            for v in value:
                yield from _Checker._leaves(v, (*path, "*"))
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            yield path, value

    def _volatile(self, first: _Run, second: _Run) -> set[tuple[int, tuple[Any, ...]]]:
        """Positions whose values differ between two runs of the same script (ids, random values)."""
        values = [{v for o in run.observations for _, v in self._leaves(o)} for run in (first, second)]
        positions: set[tuple[int, tuple[Any, ...]]] = set()
        for run, other in ((first, values[1]), (second, values[0])):
            for step, obs in enumerate(run.observations):
                # Ids are long: a small number or a short word that differs is an answer that differs.
                positions |= {
                    (step, path) for path, v in self._leaves(obs) if v not in other and len(str(v)) >= 4
                }
        return positions

    @staticmethod
    def _canonical(run: _Run, volatile: set[tuple[int, tuple[Any, ...]]]) -> list[Any]:
        """Values at volatile positions become placeholders in order of first appearance, everywhere."""
        found = _Ordered()
        for step, obs in enumerate(run.observations):
            for path, v in _Checker._leaves(obs):
                if (step, path) in volatile:
                    found.add(v)
        names: dict[Any, str] = {}

        def name(v: Any) -> str:
            return names.setdefault(v, f"<id{len(names) + 1}>")

        long = sorted((v for v in found if len(str(v)) >= 6), key=lambda v: -len(str(v)))

        def swap(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: swap(v) for k, v in value.items()}
            if isinstance(value, list):
                return [swap(v) for v in value]
            if isinstance(value, bool) or value is None:
                return value
            if value in found:
                return name(value)
            if isinstance(value, str):
                for v in long:
                    if str(v) in value:
                        value = value.replace(str(v), name(v))
            return value

        return [swap(obs) for obs in run.observations]

    @staticmethod
    def _shape(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: _Checker._shape(v) for k, v in value.items()}
        if isinstance(value, list):
            return sorted({json.dumps(_Checker._shape(v), sort_keys=True) for v in value})
        return type(value).__name__

    def _shape_only(self, script: list[_Op]) -> set[int]:
        return {i for i, op in enumerate(script) if op.name in self.nondeterministic}

    def _differs(self, canon: list[Any], baseline: list[Any], shape_only: set[int]) -> int | None:
        for step, (got, want) in enumerate(zip(canon, baseline, strict=False)):
            if step in shape_only:
                got, want = self._shape(got), self._shape(want)
            if got != want:
                return step
        return None

    # --- the check ---

    async def run(self) -> NoninterferenceReport:
        try:
            return await self._check()
        finally:
            if self.spare is not None:
                self.spare.stop()

    async def _check(self) -> NoninterferenceReport:
        rng = random.Random(self.seed)  # noqa: S311 (reproducible scripts, not secrets)
        async with self._fresh() as tenants:  # discovers the catalogues, then B's first baseline
            pools = self.catalogues["B"].pools(self.seed)
            scripts = {
                label: self.catalogues[label].script(rng, pools, self.steps) for label in ("B", "A", "C")
            }
            first = await self._run("B", scripts["B"], "A", [], tenants)
        baselines: dict[str, tuple[list[Any], set[tuple[int, tuple[Any, ...]]]] | None] = {}
        for victim, other in (("B", "A"), ("A", "B"), ("B", "C")):
            at = sorted(rng.randrange(self.steps + 1) for _ in range(self.steps))
            if self._left() <= 0 or self.report.incomplete:
                continue
            if victim not in baselines:
                baselines[victim] = await self._baselines(
                    victim, scripts[victim], first if victim == "B" else None
                )
            found = baselines[victim]
            if found is None:
                continue
            plan = f" (on plan {_OTHER_PLAN})" if other == "C" else ""
            self.report.directions.append(f"{victim}'s view, {other} acting{plan}")
            interleaved = list(zip(at, scripts[other], strict=True))
            self.report.shape_only += sum(op.name in self.nondeterministic for op in scripts[victim])
            for concurrent in (False, True) if self.concurrent else (False,):
                if self._left() > 0 and await self._look(
                    victim, other, scripts[victim], interleaved, *found, concurrent
                ):
                    break
        if self._left() <= 0 and not self.report.incomplete:
            self.report.incomplete = f"the time budget of {self.report.seconds:.0f} s ran out"
        self.report.elapsed = time.monotonic() - self.started
        return self.report

    async def _baselines(self, victim: str, script: list[_Op], first: _Run | None
                         ) -> tuple[list[Any], set[tuple[int, tuple[Any, ...]]]] | None:  # fmt: skip
        """The victim's script alone, canonicalised, and the positions of its random values.

        Two runs: what differs between them is honest non-determinism. The item of the first
        difference is found random: compared by shape only from then on, its answers are no longer
        sent back (they would make the later steps random too), and the two runs go again."""
        for _ in range(4):
            first = first or await self._run(victim, script, "A", [])
            second = await self._run(victim, script, "A", [])
            if not (first.complete and second.complete):
                self.report.incomplete = f"the time budget of {self.report.seconds:.0f} s ran out"
                return None
            volatile = self._volatile(first, second)
            baseline = self._canonical(first, volatile)
            again = self._canonical(second, volatile)
            step = self._differs(again, baseline, self._shape_only(script))
            if step is None:
                break
            # The first difference's item is random; later ones may only follow from it.
            self.nondeterministic.add(script[step].name)
            self.report.found_random.add(script[step].name)
            first = None
        return baseline, volatile

    async def _look(self, victim: str, other: str, script: list[_Op], interleaved: list[tuple[int, _Op]],
                    baseline: list[Any], volatile: set[tuple[int, tuple[Any, ...]]], concurrent: bool) -> bool:  # fmt: skip
        """Runs the victim's script with the other's; on a difference, shrinks and reports it."""

        def shape_only() -> set[int]:
            return self._shape_only(script)

        async def changed(others: list[tuple[int, _Op]], upto: int) -> tuple[int, list[Any], _Run] | None:
            run = await self._run(victim, script[: upto + 1], other, others, concurrent=concurrent)
            canon = self._canonical(run, volatile)
            step = self._differs(canon, baseline[: upto + 1], shape_only())
            return None if step is None else (step, canon, run)

        found = await changed(interleaved, len(script) - 1)
        for _ in range(3):  # a step that also changes with the other tenant idle is honest non-determinism
            if found is None:
                return False
            alone = await changed([], found[0])
            if alone is None:
                break
            self.nondeterministic.add(script[alone[0]].name)
            self.report.found_random.add(script[alone[0]].name)
            step = self._differs(found[1], baseline, shape_only())
            found = None if step is None else (step, found[1], found[2])
        if found is None:
            return False
        step = found[0]
        concrete = found[2].other_ops if concurrent else [p for p in found[2].other_ops if p[0] <= step]
        scripted = [p for p in interleaved if concurrent or p[0] <= step]
        minimal, runs = await self._shrink(concrete, scripted, step, script[step], changed)
        confirmed = await changed(minimal, step)
        runs += 1
        if confirmed is None:  # not reproducible once shrunk (timing?): report the whole script
            minimal, confirmed = interleaved, found
        step, canon, run = confirmed
        sent = [line[3:] for line in run.sent if line.startswith(f"{other}: ")]
        where = [("meanwhile" if concurrent else f"before {victim}'s step {at}") for at, _ in minimal]
        self.report.findings.append(
            Interference(
                victim=victim,
                other=other,
                step=step,
                operation=run.victim_sent[step],
                difference=_difference(baseline[step], canon[step]),
                alone=_brief(baseline[step]),
                together=_brief(canon[step]),
                script=[f"{w}: {line}" for w, line in zip(where, sent, strict=False)],
                script_steps=len(interleaved),
                victim_script=[f"{i}: {line}" for i, line in enumerate(run.victim_sent[: step + 1])],
                shrink_runs=runs,
                concurrent=concurrent,
            )
        )
        return True

    async def _shrink(self, concrete: list[tuple[int, _Op]], scripted: list[tuple[int, _Op]], step: int,
                      target: _Op, changed: Callable[[list[tuple[int, _Op]], int], Any]) -> tuple[list[tuple[int, _Op]], int]:  # fmt: skip
        """A minimal part of the other tenant's steps that still changes the victim's step `step`.

        Shrinks the steps with the values they actually used (so dropping one leaves the values of
        the others alone), falling back to the script's references when those do not reproduce
        (they used ids the other tenant had just received). First guess: only the steps on the
        same item as the victim's changed step; then delta debugging (ddmin), bounded by
        `shrink_runs` and the time budget."""
        runs = 0

        async def still(candidate: list[tuple[int, _Op]]) -> bool:
            nonlocal runs
            runs += 1
            return await changed(candidate, step) is not None

        items = concrete
        same = [p for p in items if (p[1].kind, p[1].name) == (target.kind, target.name)]
        if same and len(same) < len(items) and await still(same):
            items = same
        elif not await still(items):
            items = scripted
        n = 2
        while len(items) >= 2 and runs < self.shrink_limit and self._left() > 0:
            size = -(-len(items) // n)
            chunks = [items[i : i + size] for i in range(0, len(items), size)]
            for chunk in chunks:  # one chunk alone (the usual case: one or two steps suffice)
                if runs < self.shrink_limit and await still(chunk):
                    items, n = chunk, 2
                    break
            else:
                for k in range(len(chunks)):  # or everything but one chunk
                    rest = [p for j, c in enumerate(chunks) if j != k for p in c]
                    if runs < self.shrink_limit and len(chunks) > 2 and await still(rest):
                        items, n = rest, max(n - 1, 2)
                        break
                else:
                    if n >= len(items):
                        break
                    n = min(len(items), n * 2)
        return items, runs


def _difference(alone: Any, together: Any, path: str = "") -> str:
    """Where two observations first differ, and how: `path: alone -> together`."""
    if isinstance(alone, dict) and isinstance(together, dict) and alone.keys() == together.keys():
        for key in alone:
            if alone[key] != together[key]:
                return _difference(alone[key], together[key], f"{path}.{key}")
    elif isinstance(alone, list) and isinstance(together, list) and len(alone) == len(together):
        for i, (x, y) in enumerate(zip(alone, together, strict=True)):
            if x != y:
                return _difference(x, y, f"{path}[{i}]")
    return f"{path.lstrip('.') or '(the whole answer)'}: {_brief(alone, 200)} -> {_brief(together, 200)}"


def _brief(value: Any, limit: int = 600) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def check_noninterference(
    app: TenantMCP | str,
    *,
    seed: int | None = None,
    steps: int = 200,
    seconds: float = 300.0,
    shrink_runs: int = 40,
    nondeterministic: Collection[str] = (),
    call_timeout: float = 10.0,
    concurrent: bool = True,
) -> NoninterferenceReport:
    """Check that what each tenant sees does not depend on what the other tenant does.

    `app` is "module:attr" (or a TenantMCP defined at module level); every run serves it from a new
    process. `steps` is the length of each tenant's script, `seconds` the time budget (the report
    says when it ran out), `shrink_runs` bounds the runs spent minimising a reproduction.
    `nondeterministic` names tools, prompts or resource URIs whose answers vary by nature: they
    are compared by shape only. The same `seed` and `steps` replay the same scripts.
    """
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    checker = _Checker(app, seed=seed, steps=steps, seconds=seconds, shrink_runs=shrink_runs,
                       nondeterministic=nondeterministic, call_timeout=call_timeout, concurrent=concurrent)  # fmt: skip

    return anyio.run(checker.run)
