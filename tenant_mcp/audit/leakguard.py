"""The outbound leak guard: catch other tenants' data in what leaves the server.

Scoping stops the leaks someone thought of. This catches the rest at the last moment: every
response and error about to go to tenant A is scanned for markers that belong to *other* tenants
(their slugs and names, identifiers the developer registers with `ctx.markers.add(...)`, and
canaries planted with `tenant-mcp canary plant`). A hit runs the configured policy:

- ``block``: the caller gets an error and nothing of the payload;
- ``redact``: each foreign marker is replaced by ``[redacted]``;
- ``report``: the payload goes out unchanged.

Every hit is audited as a ``leak`` event in both tenants' trails (the marker's kind and owner, never
the marker itself) and counted. A marker the caller sent in its own request is no hit: reflecting it
("Unknown tool: acme", an echo) tells the caller nothing it did not know, and counting it would let
any tenant test whether a string is another tenant's marker.

Matching uses one Aho-Corasick automaton (pyahocorasick), so the cost of a scan depends on the
payload, not on how many tenants or markers exist. New markers go into a small second automaton
that is folded into the main one once it grows, so adding a marker never rebuilds everything.
Matching is case-insensitive and only on token boundaries ("acme" does not match "acmeist"), a
tenant's own markers never count against it, and markers shorter than `MIN_MARKER_LENGTH` are
refused because they would match ordinary words.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import ahocorasick
import anyio

from tenant_mcp.errors import TenantMCPError

if TYPE_CHECKING:
    from tenant_mcp.controlplane import ControlPlane

Policy = Literal["block", "redact", "report"]
MarkerKind = Literal["slug", "name", "identifier", "canary", "secret"]
MIN_MARKER_LENGTH = 4
_MERGE_AT = 2048
_WORD = re.compile(r"\w")
logger = logging.getLogger("tenant_mcp.audit.leakguard")


@dataclass(frozen=True, slots=True)
class Hit:
    owner: str  # tenant id the marker belongs to
    kind: MarkerKind
    start: int
    end: int


def serialize(payload: Any) -> str:
    """The text that is scanned (and redacted): JSON without ASCII escaping, so names with accents
    are matched as written."""
    return json.dumps(payload, ensure_ascii=False)


def _owners(entry: str) -> dict[str, MarkerKind]:
    return {tenant: kind for tenant, _, kind in (part.partition("=") for part in entry.split(";"))}  # type: ignore[misc]


def _lower(text: str) -> str:
    """`text` in lower case, one character for one, so match offsets stay valid in the original.
    lower() keeps the length (casefold does not) except for one character: İ (U+0130) becomes
    i and a combining dot, which would shift every offset after it and hide the markers there."""
    lowered = text.lower()
    return lowered if len(lowered) == len(text) else text.replace("\u0130", "i").lower()


def _norm(value: str) -> str:
    return _lower(value.strip())


class LeakGuard:
    def __init__(self, policy: Policy = "block") -> None:
        if policy not in ("block", "redact", "report"):
            raise TenantMCPError(f"unknown leak guard policy {policy!r}: use block, redact or report")
        self.policy: Policy = policy
        # marker -> "tenant=kind;tenant=kind". Only strings, so CPython never tracks this dict for
        # garbage collection: with a million markers a tracked dict costs ~150 ms per full GC.
        self._owners: dict[str, str] = {}
        # STORE_LENGTH: the automata hold no Python objects, so the GC never walks a million of them.
        self._main = ahocorasick.Automaton(ahocorasick.STORE_LENGTH)
        self._delta = ahocorasick.Automaton(ahocorasick.STORE_LENGTH)
        self._delta_size = 0
        self.hits = 0  # leaks caught since start

    def add(self, tenant_id: str, value: str, kind: MarkerKind) -> None:
        marker = _norm(value)
        if len(marker) < MIN_MARKER_LENGTH:
            raise TenantMCPError(f"a leak marker needs at least {MIN_MARKER_LENGTH} characters")
        entry = self._owners.get(marker)
        if entry is not None and tenant_id in _owners(entry):
            if kind == "secret" and _owners(entry)[tenant_id] != "secret":  # now withheld from its owner too
                self._owners[marker] = ";".join(
                    f"{t}={'secret' if t == tenant_id else k}" for t, k in _owners(entry).items()
                )
            return
        self._owners[marker] = f"{entry};{tenant_id}={kind}" if entry else f"{tenant_id}={kind}"
        if entry is not None or marker in self._main:
            return  # already in an automaton; the owner table says who else holds it
        self._delta.add_word(marker)
        self._delta_size += 1
        if self._delta_size >= _MERGE_AT:
            self._merge()
        else:
            self._delta.make_automaton()

    def add_secret(self, tenant_id: str, value: str) -> None:
        """A secret value of the tenant: withheld from every response, its own tenant's included.
        Values too short to match safely are left out (they would hit ordinary words)."""
        if len(_norm(value)) >= MIN_MARKER_LENGTH:
            self.add(tenant_id, value, "secret")

    def add_many(self, items: list[tuple[str, str, MarkerKind]]) -> None:
        """Bulk load (startup): one rebuild for everything."""
        for tenant_id, value, kind in items:
            marker = _norm(value)
            if len(marker) >= MIN_MARKER_LENGTH:
                entry = self._owners.get(marker)
                if entry is None:
                    self._owners[marker] = f"{tenant_id}={kind}"
                elif tenant_id not in _owners(entry):
                    self._owners[marker] = f"{entry};{tenant_id}={kind}"
        self._merge()

    def _merge(self) -> None:
        main = ahocorasick.Automaton(ahocorasick.STORE_LENGTH)
        for marker in self._owners:
            main.add_word(marker)
        if len(main):
            main.make_automaton()
        self._main, self._delta, self._delta_size = main, ahocorasick.Automaton(ahocorasick.STORE_LENGTH), 0

    @property
    def marker_count(self) -> int:
        return len(self._owners)

    def _matches(self, text: str) -> Iterator[tuple[int, str]]:
        lowered = _lower(text)
        for automaton in (self._main, self._delta):
            if automaton.kind == ahocorasick.AHOCORASICK:
                for end, length in automaton.iter(lowered):
                    yield end, lowered[end - length + 1 : end + 1]

    def _tokens(self, text: str) -> Iterator[tuple[int, int, str]]:
        """(start, end, marker) of every marker in `text` that stands on token boundaries."""
        for end, marker in self._matches(text):
            start = end - len(marker) + 1
            if (start > 0 and _WORD.match(text[start - 1])) or (
                end + 1 < len(text) and _WORD.match(text[end + 1])
            ):
                continue  # inside a longer word
            yield start, end + 1, marker

    def scan(self, text: str, tenant_id: str, *, sent: Any = None) -> list[Hit]:
        """Foreign markers in `text`, which is about to be sent to `tenant_id`.

        `sent` is the caller's request: a marker it contains merely reflects what the caller
        already knew (an echo, "Unknown tool: <name>"), so it is no leak. Counting it would make
        the guard an oracle that tells whether any string is another tenant's marker. The request
        is serialised only when the response has hits.
        """
        hits = []
        for start, end, marker in self._tokens(text):
            owners = _owners(self._owners[marker])
            if owners.get(tenant_id) == "secret":  # a secret is withheld from its own tenant too
                hits.append((marker, Hit(owner=tenant_id, kind="secret", start=start, end=end)))
            elif tenant_id not in owners:
                owner, kind = next(iter(owners.items()))
                hits.append((marker, Hit(owner=owner, kind=kind, start=start, end=end)))
        if hits and sent is not None:
            reflected = {marker for _, _, marker in self._tokens(serialize(sent))}
            hits = [(marker, hit) for marker, hit in hits if marker not in reflected]
        return [hit for _, hit in hits]

    def redact(self, payload: Any, hits: list[Hit]) -> Any:
        """The payload with every foreign marker replaced (applied to its JSON text)."""
        spans: list[list[int]] = []
        for hit in sorted(hits, key=lambda h: h.start):  # overlapping markers ("acme" in "acme corp") merge
            if spans and hit.start <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], hit.end)
            else:
                spans.append([hit.start, hit.end])
        text = serialize(payload)
        for start, end in reversed(spans):
            text = text[:start] + "[redacted]" + text[end:]
        return json.loads(text)


class MarkerSync:
    """Keeps a guard in step with the control plane: every tenant's slug and name, and the
    identifiers and canaries registered for it, also when added by another process."""

    def __init__(self, guard: LeakGuard, control_plane: ControlPlane) -> None:
        self._guard = guard
        self._control_plane = control_plane
        self._last_tenant = 0
        self._last_marker = 0

    async def refresh(self) -> None:
        """Add what is new since the last refresh (two indexed range queries, however many tenants)."""
        items: list[tuple[str, str, MarkerKind]] = []
        for rowid, tenant_id, slug, name in await self._control_plane.tenant_names(self._last_tenant):
            self._last_tenant = rowid
            items += [(tenant_id, slug, "slug"), (tenant_id, name, "name")]
        for marker_id, tenant_id, kind, value in await self._control_plane.markers(self._last_marker):
            self._last_marker = marker_id
            items.append((tenant_id, value, kind))  # type: ignore[arg-type]
        items = [item for item in items if len(_norm(item[1])) >= MIN_MARKER_LENGTH]
        if len(items) > _MERGE_AT:
            self._guard.add_many(items)
        else:
            for tenant_id, value, kind in items:
                self._guard.add(tenant_id, value, kind)

    async def run(self, *, interval: float = 2.0, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        await self.refresh()
        task_status.started()
        while True:
            await anyio.sleep(interval)
            try:
                await self.refresh()
            except Exception:
                logger.exception("refreshing leak markers failed; keeping the current set")


class Markers:
    """`ctx.markers`: register values that identify the caller's tenant (account numbers, project
    codes, ...), so the guard catches them in any other tenant's responses."""

    def __init__(self, guard: LeakGuard | None, control_plane: ControlPlane, tenant_id: str) -> None:
        self._guard = guard
        self._control_plane = control_plane
        self._tenant_id = tenant_id

    async def add(self, value: str) -> None:
        if len(_norm(value)) < MIN_MARKER_LENGTH:
            raise TenantMCPError(f"a leak marker needs at least {MIN_MARKER_LENGTH} characters")
        await self._control_plane.add_marker(self._tenant_id, value, "identifier")
        if self._guard is not None:  # now, not at the next sync
            self._guard.add(self._tenant_id, value, "identifier")
