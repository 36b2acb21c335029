import builtins
import io
import os
import stat

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import captioner.images as images
from captioner.images import ImageLoadError, decode_image, load_image


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
    with pytest.raises(ImageLoadError, match="decompression-bomb") as info:
        load_image(path)
    assert "--max-image-pixels" in str(info.value) and "4,096 pixels" in str(info.value)  # what to do, and why


def test_a_name_too_long_for_the_file_system_is_a_load_error(tmp_path):
    """Issue 26, item 7: a 300-character file name raised OSError (ENAMETOOLONG) from exists()."""
    with pytest.raises(ImageLoadError, match="file name too long") as info:
        load_image(tmp_path / ("x" * 296 + ".jpg"))
    assert "300 bytes" in str(info.value)
    with pytest.raises(ImageLoadError, match="invalid file name"):
        load_image(str(tmp_path / "nul\0.jpg"))


def _deny(monkeypatch, where, function, path):
    def denied(file, *args, **kwargs):
        if os.fspath(file) == os.fspath(path):
            raise PermissionError(13, "Permission denied", str(file))
        return function(file, *args, **kwargs)

    monkeypatch.setattr(where, function.__name__, denied)


@pytest.mark.parametrize("call", ["stat", "open"])
def test_permission_problems_are_load_errors(tmp_path, monkeypatch, call):
    """A file in a folder this user cannot search fails in stat(), an unreadable file in open() (simulated: root
    passes permission checks)."""
    path = _save(Image.new("RGB", (4, 4)), tmp_path / "p.png")
    _deny(monkeypatch, *((os, os.stat) if call == "stat" else (builtins, builtins.open)), path)
    with pytest.raises(ImageLoadError, match="permission denied"):
        load_image(path)


def test_a_pipe_or_device_is_refused_without_being_opened(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (4, 4)), tmp_path / "fifo.png")
    real_stat = os.stat
    fifo = os.stat_result((stat.S_IFIFO | 0o644,) + tuple(real_stat(path))[1:])
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: fifo if os.fspath(p) == os.fspath(path) else real_stat(p))
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_image(path)  # opening a FIFO would wait for a writer forever


def test_errors_inside_pillow_are_load_errors_and_bugs_elsewhere_propagate(monkeypatch):
    """KeyError/IndexError/TypeError mean damaged data only when Pillow raises them (a plugin indexing a table with a
    byte from the file); raised by captioner's own code they are bugs and must not be hidden."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PNG")

    def damaged(self):
        raise KeyError(b"\xff" * 5000)

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load_end", damaged)  # called by Pillow's ImageFile.load
    with pytest.raises(ImageLoadError, match="KeyError") as info:
        decode_image(buffer.getvalue())
    assert "\n" not in str(info.value) and len(str(info.value)) < 250  # bounded, one line
    monkeypatch.undo()
    monkeypatch.setattr(images, "to_rgb", lambda img: {}["bug"])
    with pytest.raises(KeyError):
        decode_image(buffer.getvalue())


def test_min_side_must_be_a_positive_integer(tmp_path):
    path = _save(Image.new("RGB", (4, 4)), tmp_path / "p.png")
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="min_side"):
            load_image(path, min_side=bad)


def test_declared_size_reads_the_header_only(monkeypatch):
    """For a server's pixel budget: the size a file declares, under the same warning handling as decoding."""
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480)).save(buffer, "PNG")
    assert images.declared_size(buffer.getvalue()) == (640, 480)
    assert images.declared_size(b"not an image") is None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert images.declared_size(buffer.getvalue()) is None  # decoding would refuse it: the bomb message says why
