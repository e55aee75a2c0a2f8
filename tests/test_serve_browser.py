"""The web page in a real browser (Debian's Chromium, headless, driven by Playwright): drop a
photo, see the lineage, switch rank, type labels; it also fits a phone-sized screen."""
import os
import re
import shutil
from pathlib import Path

import pytest

from helpers import bio_mini_photo
from taxoclip.serve import ServeSettings, create_app
from test_serve import LiveServer

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (.ci/run installs Debian's package)")
# Chromium would otherwise phone home for updates and field trials: nothing leaves this machine.
QUIET = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run",
         "--disable-sync", "--disable-default-apps", "--disable-features=Translate,OptimizationHints",
         "--metrics-recording-only", "--no-pings"]


def _only_local(page, base: str, outside: list) -> None:
    """Let the page reach the test server only; note (and abort) anything else it asks for."""
    def route(r):
        if r.request.url.startswith(base):
            return r.continue_()
        outside.append(r.request.url)
        return r.abort()
    page.route("**/*", route)


@pytest.fixture(scope="module")
def page_server():
    srv = LiveServer(create_app(ServeSettings(precision="fp32")))
    yield srv
    srv.close()


@pytest.fixture
def leaf(request, tmp_path) -> tuple[Path, dict | None]:
    """A bio-mini apple leaf and its labels; without the corpus, a synthetic photo (no labels)."""
    try:
        root = request.getfixturevalue("bio_mini")
    except pytest.skip.Exception:
        return request.getfixturevalue("photos")[0], None
    data, rec = bio_mini_photo(root, "apple")
    photo = tmp_path / "apple-leaf.jpg"
    photo.write_bytes(data)
    return photo, rec


def test_page_identifies_a_dropped_photo_and_follows_rank_and_labels(page_server, leaf, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    photo, rec = leaf
    shot = Path(os.environ.get("TAXOCLIP_SCREENSHOT", tmp_path / "serve.png"))
    outside = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=QUIET)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            _only_local(page, page_server.url, outside)
            page.goto(page_server.url + "/")
            expect(page.locator("#model-line")).to_contain_text("taxoclip-mini")
            page.set_input_files("#files", str(photo))
            first = page.locator(".card .cand .name").first
            lineage = page.locator(".card .cand .lineage").first
            expect(lineage).to_have_text(re.compile(r"^([^›]+ › ){6}[^›]+$"), timeout=60_000)  # seven ranks
            if rec:
                expect(first).to_contain_text(rec["species"])
                expect(lineage).to_contain_text(rec["family"])
            page.select_option("#rank", "family")
            expect(lineage).to_have_text(re.compile(r"^([^›]+ › ){4}[^›]+$"), timeout=60_000)  # down to family
            if rec:
                expect(first).to_contain_text(rec["family"])
            page.fill("#labels", "apple leaf, a dog, a car")
            # the first labels load the text tower; then every candidate is one of them, with no lineage
            expect(first).to_have_text(re.compile(r"^(apple leaf|a dog|a car) [0-9.]+%$"), timeout=120_000)
            expect(page.locator(".card .cand")).to_have_count(3)
            if rec:
                expect(first).to_contain_text("apple leaf")
            page.fill("#labels", "")
            page.select_option("#rank", "species")
            expect(lineage).to_have_text(re.compile(r"^([^›]+ › ){6}[^›]+$"), timeout=60_000)
            page.screenshot(path=str(shot), full_page=True)
            page.set_viewport_size({"width": 390, "height": 844})  # a phone
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            expect(page.locator(".card img").first).to_be_visible()
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert outside == []


def test_page_shows_an_error_for_a_file_that_is_not_a_photo(page_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    bad = tmp_path / "notes.jpg"
    bad.write_text("just text")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=QUIET)
        try:
            page = browser.new_page()
            page.goto(page_server.url + "/")
            page.set_input_files("#files", str(bad))
            expect(page.locator(".card .error")).to_contain_text("not a JPEG", timeout=60_000)
        finally:
            browser.close()


def test_api_docs_page_renders_offline(page_server):
    """/docs shows every route from the package's own Swagger UI, with outside requests blocked."""
    from playwright.sync_api import expect, sync_playwright

    outside = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=QUIET)
        try:
            page = browser.new_page()
            _only_local(page, page_server.url, outside)
            page.goto(page_server.url + "/docs")
            for path in ("/v1/predict", "/v1/embed", "/v1/taxa", "/v1/models"):
                expect(page.locator(".opblock-summary-path", has_text=path).first).to_be_visible(timeout=30_000)
        finally:
            browser.close()
    assert outside == []
