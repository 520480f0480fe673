"""The outbound leak guard's matching (`tenant_mcp.audit.leakguard.LeakGuard`): markers normalised
once, found case-insensitively on token boundaries, counted only against other tenants (a secret
against its own tenant too), reflected requests forgiven, and redaction that removes exactly the
marker. The guard at work in a server is tested in test_leakguard."""

from __future__ import annotations

from typing import Any

import pytest

from tenant_mcp.audit.leakguard import MIN_MARKER_LENGTH, Hit, LeakGuard, serialize
from tenant_mcp.errors import TenantMCPError

A, B, C = "t-acme", "t-globex", "t-initech"


@pytest.fixture
def guard() -> LeakGuard:
    g = LeakGuard("redact")
    g.add(A, "acme", "slug")
    g.add(A, "  Acme Corporation ", "name")
    g.add(B, "globex", "slug")
    g.add(B, "ACCT-7731", "identifier")
    return g


def found(g: LeakGuard, payload: Any, to: str, *, sent: Any = None) -> list[str]:
    text = serialize(payload)
    return [text[h.start : h.end] for h in g.scan(text, to, sent=sent)]


def test_markers_are_matched_case_insensitively_on_token_boundaries(guard: LeakGuard) -> None:
    assert found(guard, "GLOBEX and acct-7731", A) == ["GLOBEX", "acct-7731"]
    assert found(guard, "globex-plan, (globex), globex.", A) == ["globex"] * 3
    assert found(guard, "globexy, myglobex, globex_2, 2globex", A) == []  # inside longer words
    assert found(guard, {"globex": 1}, A) == ["globex"]  # keys are text too


def test_only_other_tenants_markers_count(guard: LeakGuard) -> None:
    assert found(guard, "acme and Acme Corporation", A) == []
    assert found(guard, "acme and Acme Corporation", B) == ["acme", "Acme", "Acme Corporation"]
    assert found(guard, "acme, globex", C) == ["acme", "globex"]


def test_hits_name_the_owner_and_kind(guard: LeakGuard) -> None:
    text = serialize("ref ACCT-7731")
    assert guard.scan(text, A) == [Hit(owner=B, kind="identifier", start=5, end=14)]


def test_a_marker_the_caller_sent_is_no_leak(guard: LeakGuard) -> None:
    assert found(guard, "Unknown tool: globex", A, sent={"name": "globex"}) == []
    assert found(guard, "globex and ACCT-7731", A, sent={"q": "GLOBEX"}) == ["ACCT-7731"]


def test_a_secret_is_withheld_from_its_own_tenant_too(guard: LeakGuard) -> None:
    guard.add_secret(A, "sk-live-4f9a")
    guard.add_secret(A, "abc")  # too short to match safely: left out, no error
    assert found(guard, "token sk-live-4f9a", A) == ["sk-live-4f9a"]
    assert [h.kind for h in guard.scan(serialize("sk-live-4f9a"), B)] == ["secret"]
    # A marker that later becomes the same tenant's secret is withheld from it from then on.
    guard.add_secret(A, "Acme Corporation")
    assert [(h.owner, h.kind) for h in guard.scan(serialize("Acme Corporation"), A)] == [(A, "secret")]


def test_one_marker_of_two_tenants_counts_only_for_a_third(guard: LeakGuard) -> None:
    guard.add(B, "acme", "identifier")  # globex registered acme's slug as its own identifier
    assert found(guard, "acme", A) == []
    assert found(guard, "acme", B) == []
    assert found(guard, "acme", C) == ["acme"]


def test_markers_are_normalised_and_refused_when_too_short(guard: LeakGuard) -> None:
    before = guard.marker_count
    guard.add(A, "ACME", "slug")  # the same marker again
    guard.add(A, " acme corporation", "name")
    assert guard.marker_count == before
    with pytest.raises(TenantMCPError, match=f"at least {MIN_MARKER_LENGTH} characters"):
        guard.add(A, "  ab  ", "identifier")
    with pytest.raises(TenantMCPError, match="unknown leak guard policy"):
        LeakGuard("warn")  # type: ignore[arg-type]


def test_redaction_replaces_exactly_the_markers_and_keeps_the_payload_valid(guard: LeakGuard) -> None:
    payload = {"notes": ["Acme Corporation owes globex", "globexy stays"], "acme": 1}
    hits = guard.scan(serialize(payload), C)
    assert guard.redact(payload, hits) == {
        "notes": ["[redacted] owes [redacted]", "globexy stays"],  # "Acme" inside the name: one span
        "[redacted]": 1,
    }


@pytest.mark.parametrize(
    "payload",
    [
        "\u0130 globex",  # İ: str.lower() makes it two characters
        "\u0130\u0130\u0130 owes ACCT-7731 to globex",
        {"\u0130stanbul": "globex"},
    ],
)
def test_text_that_lowercases_longer_hides_no_marker(guard: LeakGuard, payload: Any) -> None:
    text = serialize(payload)
    hits = guard.scan(text, A)
    assert [text[h.start : h.end].lower() for h in hits] == [
        m for m in ("acct-7731", "globex") if m in text.lower()
    ]
    redacted = serialize(guard.redact(payload, hits))
    assert "globex" not in redacted.lower() and "7731" not in redacted
    assert "\u0130" in redacted


def test_a_marker_with_a_dotted_capital_i_matches_as_written() -> None:
    g = LeakGuard()
    g.add(B, "\u0130stanbul Textiles", "name")
    assert found(g, "supplier: \u0130stanbul Textiles", A) == ["\u0130stanbul Textiles"]
    assert found(g, "supplier: ISTANBUL TEXTILES", A) == ["ISTANBUL TEXTILES"]


def test_markers_added_one_by_one_and_in_bulk_are_all_found() -> None:
    g = LeakGuard()
    g.add_many([(B, f"bulk-{i:05d}", "identifier") for i in range(3000)] + [(B, "ab", "identifier")])
    for i in range(2100):  # past the size at which the small automaton is folded into the main one
        g.add(C, f"late-{i:05d}", "canary")
    assert g.marker_count == 3000 + 2100
    assert found(g, "bulk-00000 bulk-02999 late-00000 late-02099 ab", A) == [
        "bulk-00000", "bulk-02999", "late-00000", "late-02099",
    ]  # fmt: skip
