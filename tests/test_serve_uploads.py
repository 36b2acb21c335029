"""Issue 26 items 1 and 3, the server's part: a bad upload never gives 500, whatever Pillow raises; memory is bounded
by pixels (a per-request budget checked on the sizes the files declare, before decoding; photos decoded at the size
the encoder needs and preprocessed one at a time before they are queued) and the captions are those of
``caption_images`` on the same photos."""

import io
import struct
import zlib
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from conftest import WORDS, tiny_config  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from captioner.generation import GenerationConfig  # noqa: E402
from captioner.images import decode_image  # noqa: E402
from captioner.serving import uploads  # noqa: E402
from captioner.serving.server import create_app  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, *extra: bytes, pixels: bool = True) -> bytes:
    """A black RGB PNG (or only its header, ``pixels=False``) with ``extra`` chunks before the image data."""
    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    data = zlib.compress(b"".join(b"\0" + b"\0" * 3 * width for _ in range(height))) if pixels else b"\0" * 16
    return head + b"".join(extra) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def photo(name: str = "coffee.jpg"):
    return ("files", (name, (SAMPLES / name).read_bytes(), "image/jpeg"))


@pytest.fixture(scope="module")
def tiny_model():
    """One tiny model for the module (its encoder is built once: seconds)."""
    import torch

    from captioner.pipeline import Captioner
    from captioner.vocab import Vocabulary

    torch.manual_seed(0)
    vocab = Vocabulary(WORDS)
    return Captioner(tiny_config(len(vocab)), vocab).eval()


@pytest.fixture
def app(tiny_model):
    return create_app(tiny_model, warm_up=False)


def test_a_png_whose_text_chunk_expands_past_pillows_limit_is_named_not_a_500(app):
    """A 5 KB PNG whose zTXt chunk decompresses past 1 MB: Pillow raises ValueError ('Decompressed data too
    large'), which escaped the loader's errors, gave 500 and lost the good photo's caption."""
    bomb_text = chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"a" * 4 * 2**20, 9))
    assert len(png(8, 8, bomb_text)) < 10_000
    with TestClient(app) as client:
        response = client.post("/api/caption", files=[photo(), ("files", ("text.png", png(8, 8, bomb_text)))],
                               data={"max_length": "5"})
    assert response.status_code == 400
    body = response.json()
    assert [r["filename"] for r in body["results"]] == ["coffee.jpg"]
    assert [e["filename"] for e in body["errors"]] == ["text.png"] and body["errors"][0]["error"]


def mutations(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``count`` small PNG/GIF/TIFF/JPEG/WebP/QOI files with 1-6 bytes changed (seeded), as ``(name, bytes)``."""
    import random

    rng, base, fixtures = random.Random(seed), Image.linear_gradient("L").resize((32, 24)).convert("RGB"), {}
    for fmt in ("PNG", "GIF", "TIFF", "JPEG", "WEBP", "QOI"):
        out = io.BytesIO()
        base.save(out, fmt)
        fixtures[fmt] = out.getvalue()
    files = []
    for i in range(count):
        fmt = rng.choice(sorted(fixtures))
        data = bytearray(fixtures[fmt])
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        files.append((f"fuzz{i}.{fmt.lower()}", bytes(data)))
    return files


def test_fuzzed_uploads_never_give_500_and_every_file_is_answered(app):
    """Fuzzed PNG/GIF/TIFF/QOI... made Pillow raise ValueError, SyntaxError, NotImplementedError: the answer was 500
    and the good photos' captions were lost. Now every file is in ``results`` or in ``errors``."""
    files = mutations(64)
    with TestClient(app) as client:
        for start in range(0, len(files), 32):
            batch = files[start : start + 32]
            response = client.post("/api/caption", files=[("files", f) for f in batch], data={"max_length": "3"})
            assert response.status_code in (200, 400), response.text
            body = response.json()
            answered = [r["filename"] for r in body["results"]] + [e["filename"] for e in body.get("errors", [])]
            assert sorted(answered) == sorted(name for name, _ in batch)
            assert all(e["error"] for e in body.get("errors", []))


def test_a_programming_error_is_not_passed_off_as_a_bad_upload(app):
    """Only decoding failures are the file's fault: an error in our own preprocessing stays a 500."""
    def broken(image):
        raise TypeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        app.state.uploads.transform = broken
        assert client.post("/api/caption", files=[photo()]).status_code == 500


def test_files_over_the_request_pixel_budget_are_refused_by_name_without_decoding(tiny_model, monkeypatch):
    """A 9000x9000 PNG is 240 KB and was decoded at full size (243 MB each) before queueing; now what the headers
    declare is counted against the request's budget and a file over it is never decoded."""
    decoded = []

    def decode(data: bytes, **options):
        decoded.append(Image.open(io.BytesIO(data)).size)
        return decode_image(data, **options)

    monkeypatch.setattr(uploads, "decode_image", decode)
    small = png(200, 200)  # 40,000 pixels each
    files = [("files", (f"small{i}.png", small)) for i in range(3)] + [
        ("files", ("huge.png", png(9000, 9000, pixels=False)))]
    with TestClient(create_app(tiny_model, warm_up=False, max_request_megapixels=0.1)) as client:
        response = client.post("/api/caption", files=files, data={"max_length": "5"})
    assert response.status_code == 400
    body = response.json()
    assert [r["filename"] for r in body["results"]] == ["small0.png", "small1.png"]
    errors = {e["filename"]: e["error"] for e in body["errors"]}
    assert set(errors) == {"small2.png", "huge.png"}
    assert "what is left of this request's pixel budget" in errors["small2.png"]
    assert "9000x9000" in errors["huge.png"] and "--max-request-megapixels" in errors["huge.png"]
    assert all("not decoded" in e for e in errors.values())
    assert decoded == [(200, 200), (200, 200)]  # neither the third small file nor the huge one was decoded


def test_server_captions_equal_caption_images(tiny_model):
    """Uploads are preprocessed before they are queued (the photo is dropped at once): the captions are still
    exactly those of ``caption_images`` on the same photos."""
    names = ["coffee.jpg", "rocket.jpg", "astronaut.jpg"]
    side = tiny_model.config.preprocess.resize
    expected = tiny_model.caption_images([decode_image((SAMPLES / n).read_bytes(), min_side=side) for n in names],
                                         GenerationConfig(beam_size=3, max_length=8, n_best=3))
    with TestClient(create_app(tiny_model, warm_up=False)) as client:
        results = client.post("/api/caption", files=[photo(n) for n in names],
                              data={"beam_size": "3", "max_length": "8"}).json()["results"]
    for result, hypotheses in zip(results, expected):
        assert [b["caption"] for b in result["beams"]] == [tiny_model.vocab.decode(h.tokens) for h in hypotheses]
        assert [b["log_prob"] for b in result["beams"]] == [round(float(h.log_prob), 4) for h in hypotheses]
