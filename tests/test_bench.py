"""The benchmark harness runs and writes its report. No timing assertions: speed is measured in
`python -m bench`, not asserted in tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT, clean_env


def test_bench_quick_runs_and_writes_json(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(output.read_text())
    assert [r["target"] for r in report["results"]] == [
        "1",
        "1",
        "1",
        "2",
        "3",
        "4",
        "5",
        "19",
        "19",
        "15",
        "-",
    ]
    assert all(r["rps_a"] > 0 and r["rps_b"] > 0 for r in report["results"])
    assert report["memory"]["bytes_per_private_tool"] > 0
    assert "| target | comparison |" in run.stdout
