"""The documentation site builds strictly and every page renders in a real browser without a
console error. A screenshot of the home page is kept in tests/artifacts/."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import ROOT, clean_env
from tests.test_oauth_browser import ARTIFACTS, CHROMIUM, FLAGS

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)],
        cwd=ROOT, env=clean_env(NO_MKDOCS_2_WARNING="1"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    pages = sorted(
        str(p.relative_to(out).parent) for p in out.glob("**/index.html") if "assets" not in p.parts
    )
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(out))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", pages
    server.shutdown()
    server.server_close()


async def test_every_page_renders_without_console_errors(site: tuple[str, list[str]]) -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Debian chromium is missing: .ci/run must install it")
        pytest.skip("Debian chromium is not installed (bash .ci/run installs it)")
    playwright_api = pytest.importorskip("playwright.async_api")
    base, pages = site
    assert {".", "security", "api", "deployment"} <= set(pages), pages
    errors: list[str] = []
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = await browser.new_page()
            page.on("console", lambda m: errors.append(f"{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            for path in pages:
                url = f"{base}/" if path == "." else f"{base}/{path}/"
                response = await page.goto(url)
                assert response is not None and response.status == 200, url
                assert await page.locator("h1").count() >= 1, url
            await page.goto(f"{base}/")
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "docs-home.png"), full_page=False)
        finally:
            await browser.close()
    assert errors == [], errors
