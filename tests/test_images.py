import io

import numpy as np
import pytest
from PIL import Image

from captioner.images import ImageLoadError, load_image


def _save(img: Image.Image, path, fmt="PNG", **kw):
    img.save(path, format=fmt, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "1", "CMYK", "RGB", "I", "F"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    img = Image.new("RGB", (8, 6), (200, 100, 50)).convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I", "F") else "PNG"
    out = load_image(_save(img, tmp_path / f"x.{fmt.lower()}", fmt))
    assert out.mode == "RGB" and out.size == (8, 6)


def test_transparent_pixels_are_composited_on_white(tmp_path):
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0, 255))
    out = load_image(_save(img, tmp_path / "a.png"))
    assert out.getpixel((1, 1)) == (255, 255, 255) and out.getpixel((0, 0)) == (255, 0, 0)
    la = load_image(_save(Image.new("LA", (2, 2), (0, 0)), tmp_path / "la.png"))
    assert la.getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (2, 2), 0)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((1, 1), 1)
    img.info["transparency"] = 0
    out = load_image(_save(img, tmp_path / "p.png", transparency=0))
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (0, 255, 0)


def test_sixteen_bit_greyscale_is_rescaled_not_clipped(tmp_path):
    arr = np.full((4, 4), 32768, dtype=np.uint16)
    out = load_image(_save(Image.fromarray(arr), tmp_path / "g16.png"))
    assert out.getpixel((0, 0))[0] == 128


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (8, 4), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = load_image(_save(img, tmp_path / "r.jpg", "JPEG", exif=exif.tobytes()))
    assert out.size == (4, 8)


def test_bad_files_raise_one_line_errors(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    for name, reason in [("empty.jpg", "empty"), ("text.jpg", "not an image"), ("cut.jpg", "truncated"),
                         ("missing.jpg", "no such file")]:
        with pytest.raises(ImageLoadError, match=reason) as info:
            load_image(tmp_path / name)
        assert "\n" not in str(info.value)
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)


def test_decompression_bomb_guard_is_kept(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (64, 64)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageLoadError, match="decompression-bomb"):
        load_image(path)
