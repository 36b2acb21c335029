"""Damaged image files (issue 26, items 1 and 9): every decode failure is an ``ImageLoadError`` with a one-line
reason, never another exception; corrupt EXIF is one log line naming the file, not a raw warning."""

import io
import logging
import random
import threading
import warnings

import numpy as np
import pytest
from badfiles import (
    bad_dimensions_tiff,
    broken_chunk_png,
    corrupt_exif_jpeg,
    photo,
    text_chunk_bomb_png,
    truncated_ihdr_png,
    unknown_variant_dds,
)
from PIL import Image, features

from captioner.images import ImageLoadError, decode_image, load_image

NAMED = {  # what Pillow raised before the loader caught it -> what the reason says
    "ztxt_bomb": (lambda: text_chunk_bomb_png("zTXt"), "ValueError: Decompressed data too large"),
    "itxt_bomb": (lambda: text_chunk_bomb_png("iTXt"), "ValueError: Decompressed data too large"),
    "truncated_ihdr": (truncated_ihdr_png, "ValueError: Truncated IHDR chunk"),
    "invalid_dimensions": (bad_dimensions_tiff, "ValueError: Invalid dimensions"),
    "broken_chunk_name": (broken_chunk_png, "SyntaxError: broken PNG file"),
    "unknown_pixel_format": (unknown_variant_dds, "NotImplementedError: Unknown pixel format flags"),
}


@pytest.mark.parametrize("case", sorted(NAMED))
@pytest.mark.parametrize("min_side", [None, 2])
def test_each_named_damage_is_a_load_error(case, min_side, tmp_path):
    make, reason = NAMED[case]
    data = make()
    if case.endswith("_bomb"):
        assert len(data) < 5000  # a 2 KB file that would inflate 2 MB of text
    path = tmp_path / f"{case}.png"
    path.write_bytes(data)
    for load in (lambda: load_image(path, min_side=min_side), lambda: decode_image(data, min_side=min_side)):
        with pytest.raises(ImageLoadError, match=reason) as info:
            load()
        assert "\n" not in str(info.value)


def test_corrupt_exif_is_one_log_line_naming_the_file(tmp_path, caplog):
    path = tmp_path / "corrupt_exif.jpg"
    path.write_bytes(corrupt_exif_jpeg())
    with warnings.catch_warnings(record=True) as raw:
        warnings.simplefilter("always")
        with caplog.at_level(logging.WARNING, logger="captioner.images"):
            image = load_image(path)
    assert image.size == (96, 64)  # read, and still turned upright by its orientation tag
    assert not raw  # before: "UserWarning: ... site-packages/PIL/TiffImagePlugin.py"
    lines = [r.getMessage() for r in caplog.records if r.name == "captioner.images"]
    assert len(lines) == 1 and str(path) in lines[0] and "\n" not in lines[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="captioner.images"):
        decode_image(corrupt_exif_jpeg(), min_side=20, name="upload.jpg")
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["upload.jpg"]


def test_decoding_in_threads_leaves_the_warning_filters_as_they_were():
    """The warnings recorder swaps process-wide state: decodes from the server's threads take turns."""
    filters, show = list(warnings.filters), warnings.showwarning
    data, errors = corrupt_exif_jpeg(), []

    def work():
        try:
            for _ in range(10):
                decode_image(data)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and warnings.filters == filters and warnings.showwarning is show


def _fixtures() -> dict[str, bytes]:
    """Small images in every format a user is likely to have, 48 x 40 so that min_side=8 reduces them."""
    rng = np.random.default_rng(0)
    base = np.asarray(photo(48, 40), np.int16)
    img = Image.fromarray(np.clip(base + rng.integers(-30, 30, base.shape), 0, 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    formats = {
        "png": ("PNG", img, {}), "png_palette": ("PNG", img.convert("P"), {"transparency": 0}),
        "png_alpha": ("PNG", img.convert("RGBA"), {"exif": exif.tobytes()}),
        "png_grey16": ("PNG", Image.fromarray(np.asarray(img.convert("L"), np.uint16) * 257), {}),
        "gif": ("GIF", img, {"save_all": True, "append_images": [img.rotate(90)]}),
        "tiff": ("TIFF", img, {}), "tiff_deflate": ("TIFF", img, {"compression": "tiff_deflate"}),
        "jpeg": ("JPEG", img, {"exif": exif.tobytes()}), "jpeg_progressive": ("JPEG", img, {"progressive": True}),
        "webp": ("WEBP", img, {}), "webp_lossless": ("WEBP", img, {"lossless": True}),
        "bmp": ("BMP", img, {}), "ppm": ("PPM", img, {}),
    }
    if features.check("avif"):
        formats["avif"] = ("AVIF", img, {})
    out = {}
    for name, (fmt, image, options) in formats.items():
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        out[name] = buffer.getvalue()
    return out


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """1-6 bytes changed (mostly in the headers), a truncation, or a 4-byte length field rewritten."""
    data = bytearray(data)
    kind = rng.random()
    if kind < 0.6:
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(min(len(data), 300) if rng.random() < 0.7 else len(data))] = rng.randrange(256)
    elif kind < 0.8:
        data = data[: rng.randrange(1, len(data))]
    else:  # a PNG chunk length, a TIFF offset, a GIF/BMP size: any 4 bytes as a big number
        at = rng.randrange(max(1, len(data) - 4))
        data[at : at + 4] = rng.choice([0, 1, 0xFFFF, 0x7FFFFFFF, rng.randrange(2**32)]).to_bytes(4, "big")
    return bytes(data)


def test_fuzzed_images_load_or_fail_with_a_load_error(tmp_path, monkeypatch):
    """300 seeded mutations: each decodes to an RGB image or raises ImageLoadError with a short one-line reason;
    nothing else escapes load_image or decode_image, with or without min_side."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2_000_000)  # a mutated header may claim any size: bound the work
    fixtures, rng = _fixtures(), random.Random(26)
    names, outcomes = sorted(fixtures), {"loaded": 0, "refused": 0}
    for i in range(300):
        data = _mutate(fixtures[names[i % len(names)]], rng)
        min_side = None if i % 2 else 8
        try:
            if i % 5 == 0:
                path = tmp_path / f"fuzz{i}.img"
                path.write_bytes(data)
                image = load_image(path, min_side=min_side)
            else:
                image = decode_image(data, min_side=min_side)
        except ImageLoadError as err:
            outcomes["refused"] += 1
            assert "\n" not in str(err) and 0 < len(str(err)) <= 300, str(err)
        else:
            outcomes["loaded"] += 1
            assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
    assert min(outcomes.values()) > 30, outcomes  # both outcomes are exercised
