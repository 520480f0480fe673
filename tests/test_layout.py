"""The package's layering, checked: no import cycles (TYPE_CHECKING imports count), nothing below
the composition root imports `tenant_mcp.app`, and the SDK's private surface is reached only from
`tenant_mcp/_sdk.py`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tenant_mcp"
# May import the app: the package's front door, the CLI, the test kit.
COMPOSITION = {
    "tenant_mcp",
    "tenant_mcp.cli",
    "tenant_mcp.testing._kit",
    "tenant_mcp.testing._noninterference",
}
# Private names of the SDK's objects the framework needs; only `_sdk.py` may touch them (our own
# objects' attributes of the same names, `self._connection`, are ours).
SDK_PRIVATE = re.compile(
    r"(?<!self)\._(lowlevel_server|session_owners|admit_session|connection|request_context|mcp_server|input_params"
    r"|subscriptions|handle_list_\w+|tool_input_schema|server_instances|request_handlers)\b"
)


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycles() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_composition_imports_the_app() -> None:
    importers = {name for name, deps in _graph().items() if "tenant_mcp.app" in deps}
    assert importers <= COMPOSITION, importers - COMPOSITION


def test_the_sdk_private_surface_is_reached_from_one_module() -> None:
    reaches = [
        f"{path.relative_to(PACKAGE.parent)}:{number}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "_sdk.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if SDK_PRIVATE.search(line)
    ]
    assert reaches == []
