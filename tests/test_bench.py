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
        [sys.executable, "-m", "bench", "--quick", "--only", "2,15", "--output", str(output)],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(output.read_text())
    assert [r["target"] for r in report["results"]] == ["2", "15", "15"]
    otlp = next(r for r in report["results"] if r["b"] == "telemetry on, OTLP")
    assert otlp["rps_b"] > 0
    # Every request of the OTLP server left a span that reached the local collector stand-in.
    assert report["otlp"]["spans_received"] >= report["otlp"]["requests"] > 0
    assert all(r["rps_a"] > 0 and r["rps_b"] > 0 for r in report["results"])
    assert all(r["p99_ms_a"] >= r["p50_ms_a"] > 0 for r in report["results"])
    assert report["memory"]["bytes_per_private_tool"] > 0
    assert "| target | comparison |" in run.stdout


def test_bench_has_a_comparison_for_every_target(tmp_path: Path) -> None:
    """Every target is in the full run (the run above is a subset, to keep the suite fast)."""
    from bench.__main__ import comparisons
    from bench.provision import Plane

    plane = Plane("sqlite:///x.db", "key", ["other"])
    listed = comparisons(
        plane, plane, plane, (tmp_path / "jwt.pem", "token"), 10, plane, [plane] * 6, "http://sink"
    )
    targets = [c.target for c in listed]
    assert targets.count("1") == 3 and targets.count("17.2") == 6
    assert {"2", "3", "4", "5", "15", "17.5", "19", "17.4", "-"} <= set(targets)


def test_bench_paired_mode_loads_both_servers_at_once_on_one_cpu(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--paired", "--only", "5,3", "--output", str(output)],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(output.read_text())
    # Two distinct servers are paired; one server under two loads (target 3) cannot be.
    assert {r["target"]: r["method"] for r in report["results"]} == {"3": "alternating", "5": "paired"}
    paired = next(r for r in report["results"] if r["method"] == "paired")
    assert all(
        round_["requests"] > 0 and round_["cpu_ms"] > 0
        for side in paired["rounds"].values()
        for round_ in side
    )
    assert "(paired)" in run.stdout
