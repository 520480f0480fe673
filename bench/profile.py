"""Who spends a server's CPU: tenant_mcp or the SDK stack below it, from a py-spy profile.

    py-spy record -r 250 -f raw -o server.raw -- python -m tenant_mcp.cli serve ...
    python -m bench.profile server.raw

Only the event-loop thread's busy samples count (idle `select` waits and the database threads
are left out). A sample is the framework's when its deepest tenant_mcp frame has not handed
over to the server or the SDK (uvicorn, the session manager, the next middleware, `Tool.run`); everything else
(uvicorn, h11, Starlette, the SDK's transport and dispatcher, pydantic, anyio) is the stack's.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

_OWN = ("(tenant_mcp/", "(example_servers/", "(bench/")
_HANDOVER = (
    "Server.serve (uvicorn/",
    "StreamableHTTPSessionManager.handle_request",
    "_on_request.<locals>._inner",
    "Tool.run",
    "RequestResponseCycle.send",  # uvicorn writing a response a tenant_mcp `send` wrapper passed on
)
_IDLE = ("EpollSelector.select", "_find_and_load", "load_app", "<frozen importlib")  # waits, start-up


_LIBRARIES = frozenset({"mcp", "mcp_types", "starlette", "uvicorn", "h11", "anyio", "pydantic", "pydantic_core",
                        "sse_starlette", "jwt", "cryptography", "opentelemetry", "tenant_mcp"})  # fmt: skip


def _library(frame: str) -> str | None:
    top = frame.rpartition("(")[2].split("/")[0]
    return top if top in _LIBRARIES else None


def summarise(path: Path, top: int = 12) -> str:
    total = 0
    own: Counter[str] = Counter()
    stack_owner: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack.startswith("Thread._bootstrap") or any(idle in stack for idle in _IDLE):
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        mine = [i for i, f in enumerate(frames)
                if any(o in f for o in _OWN) and "cli.py" not in f and not f.startswith("<module> ")]  # fmt: skip
        if mine and not any(h in f for f in frames[mine[-1] + 1 :] for h in _HANDOVER):
            own[frames[mine[-1]].split(" (")[0]] += n
            continue
        # The deepest library frame; stdlib below it (json, asyncio, ...) counts as that library's.
        libraries = [lib for lib in map(_library, frames) if lib is not None and lib != "tenant_mcp"]
        stack_owner[libraries[-1] if libraries else "asyncio event loop"] += n
    if not total:
        return "no event-loop samples"
    lines = [f"event-loop busy samples: {total}", f"tenant_mcp: {sum(own.values()) / total:.1%}"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    lines.append(f"the stack below (SDK, transport, server): {sum(stack_owner.values()) / total:.1%}")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in stack_owner.most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1])))
