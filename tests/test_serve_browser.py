"""The page and the API docs in a real browser: Debian's Chromium driven by Playwright (Playwright's own browser
download is not available here, so the system binary is used; .ci/run installs it). The browser's network is limited
to loopback: every request to another host is aborted and recorded, and the tests assert there were none.

The page (issue 28): many photos sent a few at a time with a progress bar, each shown from the local file with its
caption (editable), tags, confidence and needs-review mark, and the results downloaded as CSV, JSON Lines and COCO
JSON built in the browser. Some tests answer ``/api/caption`` themselves (``page.route``) to make the server's
refusals (503, 413, a pixel budget) and every kind of result happen on cue."""

import csv
import io
import json
import os
import re
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = Path("/usr/lib/chromium/chromium")  # the real binary, not the /usr/bin/chromium wrapper script
DEMO = ["astronaut.jpg", "coffee.jpg", "rocket.jpg"]
MIN_CONFIDENCE = 0.5

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
pytest.importorskip("uvicorn")
if not CHROMIUM.is_file():
    if os.environ.get("CAPTIONER_REQUIRE_BROWSER"):  # .ci/run sets it: CI must run this test, not skip it
        raise RuntimeError(f"no Chromium at {CHROMIUM} although CAPTIONER_REQUIRE_BROWSER is set")
    pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)", allow_module_level=True)


@pytest.fixture(scope="module")
def server_url():
    import uvicorn

    from captioner.generation.confidence import ConfidenceModel
    from captioner.models.files import resolve_model_dir
    from captioner.pipeline import Captioner
    from captioner.serving.connections import server_config
    from captioner.serving.server import create_app
    from captioner.serving.settings import ServeSettings, hosts_for

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = ServeSettings(allowed_hosts=hosts_for("127.0.0.1"), min_confidence=MIN_CONFIDENCE)  # as the CLI does
    model = Captioner.from_pretrained("default")
    # confidence = sigmoid(mean log-probability per token): a known confidence model, whatever the default ships
    model.confidence_model = ConfidenceModel(weights=[1.0, 0.0, 0.0, 0.0], mean=[0.0] * 4, scale=[1.0] * 4, bias=0.0)
    app = create_app(model, resolve_model_dir("default"), settings)
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


def make_photos(folder: Path, names: list[str], size=(320, 240)) -> list[Path]:
    """Small PNGs of coloured shapes, one per name, each different."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    paths = []
    for name in names:
        image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y = (int(rng.integers(0, side * 3 // 4)) for side in size)
            box = (x, y, *(corner + int(rng.integers(side // 8, side // 2)) for corner, side in zip((x, y), size)))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        paths.append(folder / name)
        image.save(paths[-1])
    return paths


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


PHOTO_NAMES = ["beach_001.png", "beach_002.png", "dog-17.png", "COCO_val2014_000000000139.png",
               'park, "morning" 12.png', "sunset.png"]
COCO_IDS = {"beach_001.png": 1, "beach_002.png": 2, "dog-17.png": 17, "COCO_val2014_000000000139.png": 139,
            'park, "morning" 12.png': 12}  # sunset.png has no number: left out, with a note
# WCAG contrast of each element's text on the background it is drawn on (the nearest ancestor's opaque colour)
CONTRASTS = """(nodes) => {
  const rgb = (text) => text.match(/[\\d.]+/g).map(Number);
  const lum = (c) => c.slice(0, 3).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; })
    .reduce((sum, v, i) => sum + [0.2126, 0.7152, 0.0722][i] * v, 0);
  const ground = (node) => {
    for (; node; node = node.parentElement) {
      const c = rgb(getComputedStyle(node).backgroundColor);
      if (c.length < 4 || c[3] > 0) return c;
    }
    return [255, 255, 255];
  };
  return nodes.filter((n) => n.offsetParent !== null && n.textContent.trim()).map((n) => {
    const [a, b] = [lum(rgb(getComputedStyle(n).color)), lum(ground(n))];
    return [n.className || n.tagName, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)];
  });
}"""


def sent_files(request) -> list[str]:
    """The file names of a multipart POST (as the browser sends them: '"' as %22)."""
    return re.findall(r'filename="([^"]*)"', request.post_data_buffer.decode("utf-8", "replace"))


def download(page, button: str, folder: Path) -> Path:
    with page.expect_download() as info:
        page.get_by_role("button", name=button).click()
    path = folder / info.value.suggested_filename
    info.value.save_as(path)
    return path


def test_caption_many_photos_edit_one_and_download_the_results(server_url, browser, tmp_path):
    photos = make_photos(tmp_path, PHOTO_NAMES)
    page = loopback_page(browser, viewport={"width": 1100, "height": 1400}, accept_downloads=True)
    sent = []
    page.on("request", lambda r: sent.append(sent_files(r)) if r.url.endswith("/api/caption") else None)
    page.goto(server_url)
    playwright_api.expect(page.locator("#model")).to_contain_text("efficientnet_lite2")
    playwright_api.expect(page.locator("#model")).to_contain_text(f"below {MIN_CONFIDENCE}")
    page.set_input_files("#files", [str(p) for p in photos])  # choosing files starts the captioning
    playwright_api.expect(page.locator("#progress-text")).to_have_text("6 / 6", timeout=180_000)
    assert page.locator("#progress").evaluate("(bar) => [bar.value, bar.max]") == [6, 6]
    cards = page.locator("#results .photo")
    playwright_api.expect(page.locator("#results .photo.done")).to_have_count(6)
    assert len(sent) >= 2 and all(len(names) <= 4 for names in sent), sent  # a few photos per request
    assert sorted(sum(sent, [])) == sorted(name.replace('"', "%22") for name in PHOTO_NAMES)

    for i in range(6):  # thumbnails from the local files (blob: URLs), not from the server
        cards.nth(i).scroll_into_view_if_needed()
    page.wait_for_function("[...document.querySelectorAll('img.thumb')].every((i) => i.complete && i.naturalWidth)")
    assert page.locator("img.thumb").evaluate_all("(imgs) => imgs.map((i) => i.src.slice(0, 5))") == ["blob:"] * 6
    shown = {}
    for i, name in enumerate(PHOTO_NAMES):
        card = cards.nth(i)
        playwright_api.expect(card.locator(".file")).to_contain_text(name)
        caption = page.get_by_label(f"Caption of {name}", exact=True).input_value()
        confidence = float(card.locator(".confidence strong").inner_text())
        assert caption.strip() and 0.0 <= confidence <= 1.0
        shown[name] = caption, confidence, card.locator(".mark.review").is_visible()
    assert page.locator("details.beams tr").count() == 6 * 4  # header + 3 beams each

    edited, new_caption = "beach_002.png", 'a "red" kite, over the sea'
    page.get_by_label(f"Caption of {edited}", exact=True).fill(new_caption)
    playwright_api.expect(cards.nth(1).locator(".mark.edited")).to_be_visible()
    playwright_api.expect(cards.nth(0).locator(".mark.edited")).to_be_hidden()
    playwright_api.expect(page.locator("#status")).to_contain_text("1 edited")
    expected = {name: new_caption if name == edited else shown[name][0] for name in PHOTO_NAMES}

    with open(download(page, "Download CSV", tmp_path), newline="", encoding="utf-8") as file:
        table = list(csv.reader(file))
    assert table[0] == ["image", "caption", "confidence"] and [row[0] for row in table[1:]] == PHOTO_NAMES
    for name, caption, confidence in table[1:]:
        assert caption == expected[name] and float(confidence) == pytest.approx(shown[name][1], abs=0.006)

    lines = download(page, "Download JSON Lines", tmp_path).read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert [row["image"] for row in rows] == PHOTO_NAMES
    for row in rows:
        assert {"image", "caption", "confidence", "needs_review", "tags", "edited"} <= set(row)
        assert row["caption"] == expected[row["image"]] and row["edited"] == (row["image"] == edited)
        assert row["needs_review"] == (row["confidence"] < MIN_CONFIDENCE) == shown[row["image"]][2]
        assert row["tags"] is None or all(set(tag) == {"word", "prob"} for tag in row["tags"])

    coco = json.loads(download(page, "Download COCO JSON", tmp_path).read_text(encoding="utf-8"))
    assert coco == [{"image_id": COCO_IDS[name], "caption": expected[name]} for name in PHOTO_NAMES
                    if name in COCO_IDS]
    playwright_api.expect(page.locator("#coco-note")).to_be_visible()
    playwright_api.expect(page.locator("#coco-note")).to_have_text(
        "Left out of the COCO results file: sunset.png (no number at the end of the name, which COCO takes as the "
        "image id).")

    undo = cards.nth(1).get_by_role("button", name="Undo edit")  # by keyboard
    undo.focus()
    page.keyboard.press("Enter")
    assert page.get_by_label(f"Caption of {edited}", exact=True).input_value() == shown[edited][0]
    playwright_api.expect(cards.nth(1).locator(".mark.edited")).to_be_hidden()

    texts = page.locator("button, .mark, .tag, #status, .note, .hint, .file, .confidence, label, summary, #model")
    low = [(what, round(ratio, 2)) for what, ratio in texts.evaluate_all(CONTRASTS) if ratio < 4.5]
    assert not low, low
    page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
    assert page.left_loopback == [], page.left_loopback


def _fake_result(name: str) -> dict:
    """An answer for m_N.png: no confidence for m_1, tags and a confident caption for m_2, needs review for others."""
    n = int(name[2:-4])
    return {"filename": name, "caption": f"caption {n}", "beams": [{"caption": f"caption {n}", "log_prob": -1.0}],
            "tags": [{"word": "dog", "prob": 0.8312}] if n == 2 else None,
            "confidence": {1: None, 2: 0.9}.get(n, 0.2), "needs_review": n not in (1, 2), "ms": 1.0}


def test_refusals_are_retried_and_every_kind_of_result_is_shown(server_url, browser, tmp_path):
    """The page answered by the test: the first request holding m_1 gets 503 (sent again after Retry-After), a
    request holding m_5 gets 413 (its photos sent again one by one), m_4 is over a shared pixel budget (sent again
    alone), m_3 is not an image, big_10.jpg is over the upload limit (never sent)."""
    names = [f"m_{n}.png" for n in range(1, 10)]
    photos = make_photos(tmp_path, names, size=(64, 48))
    big = tmp_path / "big_10.jpg"
    big.write_bytes(b"\xff" * (10 * 2**20 + 1))
    page = loopback_page(browser, viewport={"width": 1100, "height": 1400}, accept_downloads=True)
    sent = []

    def answer(route):
        files = sent_files(route.request)
        sent.append(files)
        if "m_1.png" in files and sum("m_1.png" in f for f in sent) == 1:
            return route.fulfill(status=503, headers={"Retry-After": "1"}, json={"detail": "busy"})
        if "m_5.png" in files and len(files) > 1:
            return route.fulfill(status=413, json={"detail": "upload too large"})
        errors = [{"filename": "m_3.png", "error": "not an image file Pillow can read"}] if "m_3.png" in files else []
        if "m_4.png" in files and len(files) > 1:
            errors.append({"filename": "m_4.png", "error": "2000x2000 image is over what is left of this request's "
                           "pixel budget; it was not decoded: send it in another request"})
        failed = {e["filename"] for e in errors}
        body = {"results": [_fake_result(name) for name in files if name not in failed]}
        if errors:
            body.update(detail=f"{len(errors)} files could not be read", errors=errors)
        route.fulfill(status=400 if errors else 200, json=body)

    page.route("**/api/caption", answer)
    page.goto(server_url)
    playwright_api.expect(page.locator("#model")).to_contain_text("efficientnet_lite2")  # the limits are known
    page.set_input_files("#files", [str(p) for p in photos] + [str(big)])
    playwright_api.expect(page.locator("#progress-text")).to_have_text("10 / 10", timeout=30_000)
    playwright_api.expect(page.locator("#status")).to_have_text("Captioned 8 of 10 photos; 2 failed; "
                                                                 "6 need review.")
    playwright_api.expect(page.locator("#status")).to_have_class("error")
    assert all(len(files) <= 4 for files in sent) and "big_10.jpg" not in sum(sent, [])
    first = [files for files in sent if "m_1.png" in files]
    assert first == [["m_1.png", "m_2.png", "m_3.png", "m_4.png"]] * 2  # refused with 503, then sent again
    assert all([name] in sent for name in ("m_5.png", "m_6.png", "m_7.png", "m_8.png", "m_4.png"))
    assert ["m_5.png", "m_6.png", "m_7.png", "m_8.png"] in sent  # 413, then one by one

    card = {name: page.locator(f'#results .photo[data-filename="{name}"]') for name in names + ["big_10.jpg"]}
    playwright_api.expect(card["m_1.png"].locator(".confidence")).to_contain_text("not available")
    playwright_api.expect(card["m_2.png"].locator(".tag")).to_have_text("dog 0.83")
    playwright_api.expect(card["m_2.png"].locator(".confidence strong")).to_have_text("0.90")
    for name in ("m_1.png", "m_2.png"):
        playwright_api.expect(card[name].locator(".mark.review")).to_have_count(0)
    for name in ("m_4.png", "m_5.png", "m_9.png"):
        playwright_api.expect(card[name].locator(".mark.review")).to_have_text("needs review")
    playwright_api.expect(card["m_3.png"].locator(".error")).to_contain_text("not an image")
    playwright_api.expect(card["big_10.jpg"].locator(".error")).to_contain_text("--max-upload-mb")
    assert card["m_3.png"].locator("textarea").count() == 0

    rows = [json.loads(line) for line in download(page, "Download JSON Lines", tmp_path).read_text().splitlines()]
    assert [row["image"] for row in rows] == names + ["big_10.jpg"]
    failed = {row["image"]: row for row in rows if "error" in row}
    assert set(failed) == {"m_3.png", "big_10.jpg"} and failed["m_3.png"]["caption"] is None
    assert rows[1]["tags"] == [{"word": "dog", "prob": 0.8312}] and rows[0]["confidence"] is None
    playwright_api.expect(page.locator("#coco-note")).to_contain_text("m_3.png, big_10.jpg (not captioned)")
    page.screenshot(path=str(tmp_path / "refusals.png"), full_page=True)
    page.get_by_role("button", name="Clear the list").click()
    playwright_api.expect(page.locator("#results .photo")).to_have_count(0)
    playwright_api.expect(page.locator("#downloads")).to_be_hidden()
    assert page.left_loopback == [], page.left_loopback


def test_request_planning_and_results_files(server_url, browser):
    """results.js's functions, called in the page: requests within the limits, answers matched to photos, CSV
    quoting, COCO image ids as captioner caption --out reads them."""
    page = loopback_page(browser)
    page.goto(server_url)
    batches = page.evaluate("""() => {
      const plan = (files, limits) => {
        const waiting = files.map(([name, size, alone]) => ({ file: { name, size }, alone: Boolean(alone) }));
        const out = [];
        while (waiting.length) out.push(takeBatch(waiting, limits).map((p) => p.file.name));
        return out;
      };
      const small = { perRequest: 4, maxBytes: 10000 };
      return [
        plan([["a", 1], ["b", 1], ["c", 1], ["d", 1], ["e", 1], ["f", 1]], small),
        plan([["a", 1], ["b", 1], ["b", 1], ["c", 5000], ["d", 5000], ["e", 1]], small),
        plan([["a", 1], ["b", 1, true], ["c", 1], ["d", 1]], small),
        plan([["a", 1], ["b", 1], ["c", 1]], { perRequest: 2, maxBytes: 10000 }),
      ];
    }""")
    assert batches == [[["a", "b", "c", "d"], ["e", "f"]],
                       [["a", "b"], ["b", "c"], ["d", "e"]],  # one name per request; bytes within the limit
                       [["a"], ["b"], ["c", "d"]],
                       [["a", "b"], ["c"]]]
    matched = page.evaluate("""() => matchAnswer(['a.png', 'x"y.png', 'c.png', 'd.png'],
      [{ filename: 'a.png', caption: 'A' }, { filename: 'd.png', caption: 'D' }],
      [{ filename: 'x%22y.png', error: 'bad' }, { filename: 'c.png', error: 'worse' }])""")
    assert matched == [{"result": {"filename": "a.png", "caption": "A"}}, {"error": "bad"}, {"error": "worse"},
                       {"result": {"filename": "d.png", "caption": "D"}}]

    captions = ["plain", "with, comma", 'with "quotes"', "two\nlines", "", None, "ünïcode ✓"]
    text = page.evaluate("""(captions) => toCsv(captions.map((caption, i) =>
      ({ image: `p, ${i}.jpg`, caption, confidence: i === 1 ? null : i / 10 })))""", captions)
    assert text.endswith("\r\n") and text.count("\r\n") == len(captions) + 1  # CRLF row ends; + the header
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == ["image", "caption", "confidence"]
    assert rows[1:] == [[f"p, {i}.jpg", caption or "", "" if i == 1 else f"{i / 10:.4f}"]
                        for i, caption in enumerate(captions)]

    ids = page.evaluate("""(names) => names.map(cocoImageId)""",
                        ["COCO_val2014_000000000139.jpg", "photo.jpg", "12.png", "a1b.png", "x 42.png", "img_5.",
                         ".123", "7", "archive.3.tar"])
    assert ids == [139, None, 12, None, 42, None, 123, 7, 3]  # the stem's trailing number, as pathlib's stem
    coco = page.evaluate("""() => toCoco([{ image: 'a_1.png', caption: 'x' }, { image: 'b_1.png', caption: 'y' },
      { image: 'c.png', caption: 'z' }, { image: 'd_2.png', caption: null }, { image: 'e_3.png', caption: 'w' }])""")
    assert json.loads(coco["text"]) == [{"image_id": 1, "caption": "x"}, {"image_id": 3, "caption": "w"}]
    assert [(p["image"], p["why"]) for p in coco["leftOut"]] == [
        ("b_1.png", "image id 1, as a_1.png"), ("c.png", "no number at the end of the name, which COCO takes as the "
                                                        "image id"),
        ("d_2.png", "not captioned")]


def test_upload_demo_photos_and_see_their_captions(server_url, shared_data, browser, tmp_path):
    photos = [shared_data / "demo" / name for name in DEMO]
    page = loopback_page(browser, viewport={"width": 1100, "height": 1400})
    page.goto(server_url)
    page.set_input_files("#files", [str(p) for p in photos])
    playwright_api.expect(page.locator("#results .photo.done")).to_have_count(len(photos), timeout=120_000)
    texts = [page.get_by_label(f"Caption of {name}", exact=True).input_value() for name in DEMO]
    assert all(len(t.split()) >= 3 for t in texts), texts
    playwright_api.expect(page.locator("#status")).to_have_text(re.compile(rf"^Captioned {len(photos)} of "))
    page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
    assert page.left_loopback == [], page.left_loopback


def test_a_dropped_file_that_is_not_an_image_is_shown_as_an_error(server_url, browser, tmp_path):
    photo = make_photos(tmp_path, ["good_1.png"])[0]
    page = loopback_page(browser)
    page.goto(server_url)
    dropped = page.evaluate_handle("""([bytes]) => {
      const files = new DataTransfer();
      files.items.add(new File([new Uint8Array(bytes)], 'good_1.png', { type: 'image/png' }));
      files.items.add(new File(['not a photo'], 'notes.jpg', { type: 'image/jpeg' }));
      return files;
    }""", [list(photo.read_bytes())])
    page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
    playwright_api.expect(page.locator("#progress-text")).to_have_text("2 / 2", timeout=60_000)
    playwright_api.expect(page.locator(".photo.failed .error")).to_contain_text("not an image")
    playwright_api.expect(page.locator(".photo.failed .thumb")).to_have_text("no preview")
    playwright_api.expect(page.locator(".photo.done textarea")).to_have_count(1)
    playwright_api.expect(page.locator("#status")).to_have_class("error")
    assert page.left_loopback == [], page.left_loopback


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
