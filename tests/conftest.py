"""The fixtures the test files share; the helpers they are built from live in `tests/helpers.py`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import ServerProcess, Tenants, keyed_tenants, sqlite_url, standard_tenants


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The unit tests (tests/unit: no server process) first, so a broken pure piece is reported
    within seconds; the order of everything else is kept."""
    items.sort(key=lambda item: item.path.parent.name != "unit")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def notes_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('notes')}/control.db"


@pytest.fixture(scope="module")
def tenants(notes_db: str) -> Tenants:
    return standard_tenants(notes_db)


@pytest.fixture(scope="module")
def notes_server(notes_db: str, tenants: Tenants) -> Iterator[ServerProcess]:
    with ServerProcess("example_servers.notes:app", notes_db) as server:
        yield server


PROBE_TENANTS = ("acme", "globex", "initech", *(f"t{i}" for i in range(6)))


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Tenants]]:
    """`tests.servers.probe:app` (a module's own) with acme (pro), globex, initech and t0..t5 (free),
    one key each."""
    db = sqlite_url(tmp_path_factory, "probe")
    t = keyed_tenants(db, *PROBE_TENANTS, plans={"acme": "pro"})
    with ServerProcess("tests.servers.probe:app", db) as server:
        yield server, t
