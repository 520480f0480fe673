"""The isolation test kit (`tenant_mcp.testing`) on every example server, and on a deliberately
leaky one that it must catch."""

from __future__ import annotations

import pytest

from tenant_mcp.testing import check_isolation


@pytest.mark.parametrize(
    "app", ["example_servers.notes:app", "example_servers.everything:app", "tests.servers.probe:app"]
)
def test_example_servers_keep_tenants_apart(app: str) -> None:
    report = check_isolation(app)
    assert report.ok, report.text
    assert report.calls > 20


def test_the_kit_catches_the_leaky_server() -> None:
    report = check_isolation("tests.servers.leaky:app")
    caught = {finding.item for finding in report.findings if finding.kind == "leak"}
    assert caught == {
        "tool profile_cached",
        "tool recall",
        "tool search_memory",
        "tool shared_search",
        "tool strict_lookup",
    }, report.text
    assert "isolation problem" in report.text


def test_the_kit_tries_every_harvested_id() -> None:
    """An IDOR on one id among the 50 that A harvested: only an exact try of that id finds it."""
    report = check_isolation("tests.servers.idor:app")
    caught = {finding.item for finding in report.findings if finding.kind == "leak"}
    assert caught == {"tool get_doc"}, report.text
    assert "budget" in report.text


def test_the_kit_reads_while_the_other_tenants_data_is_fresh() -> None:
    """A bounded shared list: B's own writes would push A's entries out before B reads."""
    report = check_isolation("tests.servers.recent:app")
    caught = {finding.item for finding in report.findings if finding.kind == "leak"}
    assert caught == {"tool recent_activity"}, report.text
