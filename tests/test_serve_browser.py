"""The page in a real browser: Debian's Chromium driven by Playwright (Playwright's own browser download is not
available here, so the system binary is used; .ci/run installs it)."""

import os
import socket
import threading
import time
from pathlib import Path

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
    from captioner.serving.server import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(Captioner.from_pretrained("default"), resolve_model_dir("default"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


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
