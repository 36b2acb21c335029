"""The page and the API docs in a real browser: Debian's Chromium driven by Playwright (Playwright's own browser
download is not available here, so the system binary is used; .ci/run installs it). The browser's network is limited
to loopback: every request to another host is aborted and recorded, and the tests assert there were none."""

import os
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = Path("/usr/lib/chromium/chromium")  # the real binary, not the /usr/bin/chromium wrapper script
DEMO = ["astronaut.jpg", "coffee.jpg", "rocket.jpg"]

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
pytest.importorskip("uvicorn")
if not CHROMIUM.is_file():
    if os.environ.get("CAPTIONER_REQUIRE_BROWSER"):  # .ci/run sets it: CI must run this test, not skip it
        raise RuntimeError(f"no Chromium at {CHROMIUM} although CAPTIONER_REQUIRE_BROWSER is set")
    pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)", allow_module_level=True)


@pytest.fixture(scope="module")
def server_url():
    import uvicorn

    from captioner.models.files import resolve_model_dir
    from captioner.pipeline import Captioner
    from captioner.serving.connections import server_config
    from captioner.serving.server import create_app
    from captioner.serving.settings import ServeSettings, hosts_for

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = ServeSettings(allowed_hosts=hosts_for("127.0.0.1"))  # as captioner serve runs it
    app = create_app(Captioner.from_pretrained("default"), resolve_model_dir("default"), settings)
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def browser():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            browser.close()


def loopback_page(browser, **options):
    """A page whose network is loopback only: any other request is aborted and listed in ``page.left_loopback``."""
    context = browser.new_context(**options)
    left = []

    def only_loopback(route):
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            left.append(route.request.url)
            route.abort()

    context.route("**/*", only_loopback)
    page = context.new_page()
    page.left_loopback = left
    return page


def test_upload_demo_photos_and_see_their_captions(server_url, shared_data, tmp_path):
    photos = [shared_data / "demo" / name for name in DEMO]
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1400})
            page.goto(server_url)
            playwright_api.expect(page.locator("#model")).to_contain_text("efficientnet_lite2")
            page.set_input_files("#files", [str(p) for p in photos])  # choosing files starts the captioning
            captions = page.locator(".result .caption")
            playwright_api.expect(captions).to_have_count(len(photos), timeout=60_000)
            texts = captions.all_inner_texts()
            assert all(len(t.split()) >= 3 and not t.startswith("error") for t in texts), texts
            assert page.locator(".result table.beams tr").count() == len(photos) * 4  # header + 3 beams each
            shown = "(imgs) => imgs.every((i) => i.complete && i.naturalWidth > 0)"
            assert page.locator(".result img").evaluate_all(shown)
            playwright_api.expect(page.locator("#status")).to_contain_text(f"captioned {len(photos)} photo(s)")
            page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "serve.png").stat().st_size > 10_000


def test_a_file_that_is_not_an_image_is_shown_as_an_error(server_url, shared_data, tmp_path):
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a photo")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page()
            page.goto(server_url)
            page.set_input_files("#files", [str(shared_data / "demo" / "coffee.jpg"), str(notes)])
            playwright_api.expect(page.locator(".result")).to_have_count(2, timeout=60_000)
            playwright_api.expect(page.locator(".result.failed .caption")).to_contain_text("not an image")
            playwright_api.expect(page.locator("#status")).to_have_class("error")
        finally:
            browser.close()


def test_swagger_ui_lists_the_operations_offline(server_url, browser, tmp_path):
    """Issue 25: /docs loaded Swagger UI from a CDN and was blank offline; its assets now come from the server."""
    page = loopback_page(browser, viewport={"width": 1100, "height": 1400})
    page.goto(f"{server_url}/docs")
    caption = page.locator(".opblock-post .opblock-summary").filter(has_text="/api/caption")
    playwright_api.expect(caption).to_be_visible(timeout=30_000)
    playwright_api.expect(caption.locator(".opblock-summary-method")).to_have_text("POST")
    for path in ("/healthz", "/api/model"):
        playwright_api.expect(page.locator(".opblock-get .opblock-summary").filter(has_text=path)).to_be_visible()
    page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)
    assert page.left_loopback == [], page.left_loopback


def test_redoc_lists_the_operations_offline(server_url, browser):
    page = loopback_page(browser)
    page.goto(f"{server_url}/redoc")
    operation = page.get_by_role("heading", name="caption one or more photos (multipart field 'files')")
    playwright_api.expect(operation).to_be_visible(timeout=30_000)
    playwright_api.expect(page.get_by_text("/api/caption").first).to_be_attached()
    assert page.left_loopback == [], page.left_loopback
