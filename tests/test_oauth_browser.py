"""The sign-in page in a real headless browser (Debian's Chromium driven by Playwright): a person
reads who is asking, pastes a key, approves, and the browser lands on the client's redirect URI
with a code and the original state. A screenshot of the page is kept in tests/artifacts/."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest

from tests.helpers import ServerProcess, Tenants
from tests.test_oauth import REDIRECT, ManualFlow

pytestmark = pytest.mark.anyio
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# Flags for a sandboxed, offline machine: no background network, no GPU, a fresh profile.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Tenants]]:
    db = f"sqlite:///{tmp_path_factory.mktemp('browser')}/cp.db"
    t = Tenants(db)
    t.create("acme", name="Acme Corporation")
    t.key("acme", scopes=("notes:export",))
    s = ServerProcess("example_servers.notes:app", db, "--oauth-issuer", "http://127.0.0.1:{port}")
    yield s, t
    s.stop()


async def test_consent_page_in_a_real_browser(server: tuple[ServerProcess, Tenants]) -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Debian chromium is missing: .ci/run must install it")
        pytest.skip("Debian chromium is not installed (bash .ci/run installs it)")
    playwright_api = pytest.importorskip("playwright.async_api")
    s, t = server
    async with httpx2.AsyncClient(timeout=30) as http:
        flow = ManualFlow(s, http)
        await flow.register()
        url = flow.authorize_url()

    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = await browser.new_page()
            landed: list[str] = []

            async def callback(route: object) -> None:
                landed.append(route.request.url)  # type: ignore[attr-defined]
                await route.fulfill(status=200, body="signed in")  # type: ignore[attr-defined]

            await page.route(f"{REDIRECT}**", callback)
            await page.goto(url)
            assert await page.title() == "Authorize access"
            body = await page.inner_text("main")
            assert "Manual" in body and REDIRECT in body
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "oauth-consent.png"), full_page=True)
            # the key field is reachable by its label, as a screen reader would find it
            await page.get_by_label("Sign in with one of your tenant's API keys").fill(t.keys["acme"])
            await page.get_by_role("button", name="Approve").click()
            await page.wait_for_url(f"{REDIRECT}**")
        finally:
            await browser.close()
    query = parse_qs(urlsplit(landed[0]).query)
    assert query["state"] == ["st-123"] and query["code"][0]
    async with httpx2.AsyncClient(timeout=30) as http:
        flow.http = http
        token = await flow.exchange(query["code"][0])
    assert token.status_code == 200, token.text
