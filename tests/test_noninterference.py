"""Noninterference checking (`tenant_mcp.testing.check_noninterference`) against real servers.

Servers that interfere without leaking any data (tests/servers/interfering.py) must be caught, each
with a minimal reproduction; so must the servers the isolation kit catches. The example servers,
and an honest server whose answers are random by nature, must pass.
"""

from __future__ import annotations

import pytest

from tenant_mcp.testing import check_noninterference

INTERFERING = [
    # app, the tool whose answers change, what changes, most steps a minimal script needs
    ("tests.servers.interfering:counter", "open_ticket", "ticket", 1),
    ("tests.servers.interfering:handles", "claim_handle", "is taken", 1),
    ("tests.servers.interfering:lru", "lookup", "cached", 1),
    ("tests.servers.interfering:limiter", "search", "rate limit exceeded", 4),  # the allowance is 4
]


@pytest.mark.parametrize(("app", "tool", "change", "most"), INTERFERING)
def test_interference_is_caught_with_a_minimal_reproduction(
    app: str, tool: str, change: str, most: int
) -> None:
    report = check_noninterference(app, seed=1, steps=60)
    assert not report.ok, report.text
    # both ways, and from C on another plan
    assert {(f.victim, f.other) for f in report.findings} == {("B", "A"), ("A", "B"), ("B", "C")}, report.text
    for finding in report.findings:
        assert finding.operation.startswith(f"tool {tool} "), report.text
        assert change in finding.difference, report.text
        # only the culprit's calls are left of the other tenant's 60 steps
        assert 1 <= len(finding.script) <= most, report.text
        assert all(f": tool {tool} " in line for line in finding.script), report.text
        assert finding.script_steps == 60
    assert "replay: check_noninterference(" in report.text
    assert "seed 1; 60 steps per script" in report.text


@pytest.mark.parametrize(
    ("app", "tools"),
    [
        ("tests.servers.leaky:app", {"profile_cached", "recall", "search_memory", "strict_lookup"}),
        ("tests.servers.idor:app", {"import_docs"}),  # ids from a counter shared by all tenants
        ("tests.servers.recent:app", {"recent_activity"}),
    ],
)
def test_the_leaks_the_isolation_kit_catches_are_interference_too(app: str, tools: set[str]) -> None:
    report = check_noninterference(app, seed=1, steps=60)
    assert not report.ok, report.text
    for finding in report.findings:
        assert finding.operation.split()[1] in tools, report.text
        assert len(finding.script) == 1, report.text


@pytest.mark.parametrize(
    ("app", "steps"), [("example_servers.notes:app", 200), ("example_servers.everything:app", 100)]
)
def test_example_servers_pass(app: str, steps: int) -> None:
    report = check_noninterference(app, seed=1, steps=steps)
    assert report.ok, report.text
    assert report.directions == [
        "B's view, A acting",
        "A's view, B acting",
        "B's view, C acting (on plan kit-minimal)",
    ]
    assert (
        report.runs == 10 and not report.incomplete
    )  # 2 baselines each for B and A; in turn and meanwhile x3
    assert report.calls > 3 * steps


def test_concurrent_runs_catch_request_state_kept_across_an_await() -> None:
    """Only a request running meanwhile sees the other tenant's name (sequential runs never do)."""
    report = check_noninterference("tests.servers.interfering:racy", seed=1, steps=40)
    assert not report.ok, report.text
    assert all(f.concurrent and f.operation == "tool greet {}" for f in report.findings), report.text
    assert "(concurrently)" in report.text
    assert check_noninterference("tests.servers.interfering:racy", seed=1, steps=40, concurrent=False).ok


def test_random_answers_are_compared_by_shape_only() -> None:
    """Random ids, timestamps and a dice roll are no interference: ids and timestamps are
    canonicalised; the roll is found random by the baselines, or marked by the developer."""
    found = check_noninterference("tests.servers.honest:app", seed=1, steps=120)
    assert found.ok, found.text
    assert found.found_random == {"roll"}
    assert "found random: roll" in found.text
    marked = check_noninterference("tests.servers.honest:app", seed=1, steps=120, nondeterministic=["roll"])
    assert marked.ok, marked.text
    assert marked.found_random == set() and marked.shape_only > 0


def test_the_same_seed_replays_the_same_reproduction() -> None:
    first = check_noninterference("tests.servers.interfering:counter", seed=7, steps=30)
    again = check_noninterference("tests.servers.interfering:counter", seed=7, steps=30)
    assert not first.ok
    assert [(f.step, f.operation, f.script) for f in first.findings] == [
        (f.step, f.operation, f.script) for f in again.findings
    ]


def test_the_time_budget_is_kept_and_stated() -> None:
    """Also: an app object is served from the module that defines it."""
    from example_servers.notes import app

    report = check_noninterference(app, seed=1, steps=200, seconds=3)
    assert report.target == "example_servers.notes:app"
    assert report.incomplete, report.text
    assert "INCOMPLETE: the time budget of 3 s ran out" in report.text
    assert report.elapsed < 20
