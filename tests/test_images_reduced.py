"""Decoding at the size the encoder needs (issue 26, item 3): ``load_image(path, min_side=...)``.

Ordinary photos decode exactly as before; a large image is decoded small (JPEG draft, PNG in bands, the rest reduced
right after decoding), with EXIF orientation, transparency on white and 16-bit rescaling as at full size, and the
decompression-bomb guard unchanged.
"""

import io
import itertools
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from reliability.badfiles import bomb_png, huge_png, photo

import captioner.images as images
from captioner.images import ImageLoadError, decode_image, load_image

REPO = Path(__file__).resolve().parents[1]


def _bytes(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """Noise over a gradient: rows that PNG's adaptive filtering encodes with every filter type."""
    rng = np.random.default_rng(seed)
    base = np.asarray(photo(width, height), dtype=np.int16)
    return Image.fromarray(np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8))


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def test_demo_photos_decode_pixel_for_pixel_as_before(shared_data):
    """The default encoder's 292-pixel side: every demo photo (short side 300-512) is below twice that."""
    photos = sorted((shared_data / "demo").glob("*.jpg"))
    assert photos
    for path in photos:
        assert _same(load_image(path, min_side=292), load_image(path)), path.name


def _png_cases() -> dict[str, bytes]:
    """Every PNG colour type and bit depth decoded in bands, with and without transparency."""
    img = _noise(53, 37)
    grey = img.convert("L")
    rgba = img.convert("RGBA")
    rgba.putalpha(grey)
    palette = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=200)
    small_palette = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=12)
    grey16 = Image.fromarray(np.asarray(grey, np.uint16) * 257 + 3)
    return {
        "rgb": _bytes(img, "PNG"), "rgba": _bytes(rgba, "PNG"), "grey": _bytes(grey, "PNG"),
        "grey_alpha": _bytes(Image.merge("LA", [grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]), "PNG"),
        "bilevel": _bytes(grey.convert("1"), "PNG"), "grey16": _bytes(grey16, "PNG"),
        "palette": _bytes(palette, "PNG"), "palette_transparent_index": _bytes(palette, "PNG", transparency=3),
        "palette_4bit": _bytes(small_palette, "PNG"), "palette_2bit": _bytes(small_palette, "PNG", bits=2),
        "palette_alpha_table": _bytes(rgba.convert("P", palette=Image.Palette.ADAPTIVE, colors=40), "PNG"),
    }


@pytest.mark.parametrize("case", sorted(_png_cases()))
def test_png_in_bands_equals_decoding_whole_then_reducing(case, monkeypatch):
    """Bands of a few rows (set tiny here, so that every band boundary and filter type is crossed) give exactly the
    image that decoding whole, converting to RGB and reducing gives."""
    data = _png_cases()[case]
    opened = Image.open(io.BytesIO(data))
    assert images._decodes_in_bands(opened)
    row_bytes = (images._PNG_BAND_BITS[opened.tile[0].args] * opened.width + 7) // 8
    for min_side, bands_of in itertools.product((3, 5, 7, 12, 18), (1, 3)):
        monkeypatch.setattr(images, "_BAND_BYTES", bands_of * (37 // min_side) * row_bytes)  # factor or 3x rows
        reduced = decode_image(data, min_side=min_side)
        assert _same(reduced, decode_image(data).reduce(37 // min_side)), min_side
        assert min_side <= min(reduced.size) < 2 * min_side


@pytest.mark.parametrize("fmt, options", [
    ("GIF", {}), ("WEBP", {"lossless": True}), ("TIFF", {}), ("TIFF", {"compression": "tiff_deflate"}),
    ("BMP", {}), ("PPM", {}),
])
def test_other_formats_are_reduced_right_after_decoding(fmt, options):
    data = _bytes(_noise(90, 61), fmt, **options)
    assert _same(decode_image(data, min_side=20), decode_image(data).reduce(3))


@pytest.mark.parametrize("bit_depth, interlace", [(16, 0), (8, 1)])
def test_pngs_not_read_in_bands_are_reduced_right_after_decoding(bit_depth, interlace):
    """16-bit colour (Pillow cuts it to 8 bits when unpacking rows) and interlaced PNGs are decoded whole."""
    pixels = np.random.default_rng(1).integers(0, 2**bit_depth, (40, 30, 3)).astype(np.uint16 if bit_depth == 16
                                                                                        else np.uint8)
    data = _raw_png(pixels, bit_depth, interlace)
    assert not images._decodes_in_bands(Image.open(io.BytesIO(data)))
    assert _same(decode_image(data, min_side=10), decode_image(data).reduce(3))
    assert _same(decode_image(data), Image.fromarray((pixels >> (bit_depth - 8)).astype(np.uint8)))


def _raw_png(pixels: np.ndarray, bit_depth: int, interlace: int) -> bytes:
    """An RGB PNG written by hand (Pillow writes neither 16-bit colour nor Adam7 interlacing)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    height, width, _ = pixels.shape
    big_endian = pixels.astype(">u2" if bit_depth == 16 else np.uint8)
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    subimages = [big_endian[y::dy, x::dx] for x, y, dx, dy in passes] if interlace else [big_endian]
    rows = b"".join(b"\0" + row.tobytes() for sub in subimages if sub.size for row in sub)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 2, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def test_a_large_jpeg_is_decoded_small_by_libjpeg():
    img = photo(1600, 1200).resize((1600, 1200))
    data = _bytes(img, "JPEG", quality=95)
    small = decode_image(data, min_side=100)
    assert small.size == (200, 150)  # scale 1/8 while decoding; 150 is not twice 100, so no further reduction
    reference = np.asarray(decode_image(data).resize(small.size, Image.Resampling.BOX), np.int16)
    assert np.abs(np.asarray(small, np.int16) - reference).mean() < 3
    assert decode_image(data, min_side=292).size == (400, 300)  # 1/4: 1/8 would leave 150 < 292
    assert decode_image(data, min_side=90).size == (200, 150)  # 1/8, then 150 < 180: kept
    assert decode_image(data, min_side=40).size == (67, 50)  # 1/8, then reduced 3x


@pytest.mark.parametrize("width, height, min_side", [(1000, 700, 292), (700, 1000, 100), (2000, 613, 300),
                                                     (4097, 999, 333), (640, 480, 292)])
def test_the_short_side_stays_at_least_min_side(width, height, min_side):
    img = photo(width, height)
    for data in (_bytes(img, "JPEG"), _bytes(img, "PNG")):
        short = min(decode_image(data, min_side=min_side).size)
        assert short >= min_side and (short < 2 * min_side or min(width, height) < 2 * min_side)


def _orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied_after_reduction(fmt, orientation):
    stored = photo(120, 80)  # 120 x 80 as stored: reduced 4x by min_side 20
    data = _bytes(stored, fmt, exif=_orientation(orientation))
    full, small = decode_image(data), decode_image(data, min_side=20)
    assert small.size == (full.width // 4, full.height // 4)
    if fmt != "JPEG":  # lossless: exactly the full-size result, reduced (the sides divide by 4)
        assert _same(small, full.reduce(4))


def test_exif_after_the_image_data_of_a_png_is_read_too():
    """Pillow writes eXIf before IDAT; other writers put it after, where the band reader looks for it."""
    stored = photo(120, 80)
    data = _bytes(stored, "PNG", exif=_orientation(6))
    start = data.index(b"eXIf") - 4
    length = int.from_bytes(data[start : start + 4], "big")
    chunk, rest = data[start : start + 12 + length], data[: start] + data[start + 12 + length :]
    end = rest.index(b"IEND") - 4
    moved = rest[:end] + chunk + rest[end:]
    assert decode_image(moved).size == (80, 120)
    assert _same(decode_image(moved, min_side=20), decode_image(moved).reduce(4))


def test_a_huge_png_is_never_held_at_full_size(monkeypatch):
    """The PNG is never loaded whole: the largest image Pillow makes is one band of rows (about 2 MiB)."""
    data = huge_png(3000, 2000)
    expected = decode_image(data).reduce(2000 // 292)
    made: list[tuple[int, int]] = []
    real_new, real_load = Image.new, ImageFile.ImageFile.load

    def new(mode, size, *args, **kwargs):
        made.append(tuple(size))
        return real_new(mode, size, *args, **kwargs)

    def load(self):
        made.append(self.size)
        return real_load(self)

    monkeypatch.setattr(Image, "new", new)  # Image.frombytes makes its image with Image.new
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    small = decode_image(data, min_side=292)
    assert small.size == (500, 334) and _same(small, expected)
    assert (3000, 2000) not in made and max(w * h for w, h in made) * 3 <= (1 << 21) + 6 * 3000 * 3


def test_bands_stay_small_when_min_side_is_tiny(monkeypatch):
    """A band holds at least ``factor`` rows only while they fit in ``_BAND_BYTES``: min_side=3 on a 3000-pixel-wide
    image reduces by ~700, which the bands do in part and the final reduction finishes."""
    data = huge_png(3000, 2000)
    made: list[tuple[int, int]] = []
    real_new = Image.new
    monkeypatch.setattr(Image, "new", lambda mode, size, *a, **k: made.append(tuple(size)) or real_new(mode, size,
                                                                                                        *a, **k))
    small = decode_image(data, min_side=3)
    assert 3 <= min(small.size) < 6 and max(w * h for w, h in made) * 3 <= (1 << 21) + 3 * 3000


def test_a_truncated_or_damaged_png_read_in_bands_is_a_load_error():
    data = huge_png(1000, 1000)
    with pytest.raises(ImageLoadError, match="truncated"):
        decode_image(data[: len(data) // 2], min_side=100)
    damaged = bytearray(data)
    damaged[data.index(b"IDAT") + 40] ^= 0xFF  # inside the zlib stream
    with pytest.raises(ImageLoadError):
        decode_image(bytes(damaged), min_side=100)


def test_the_decompression_bomb_guard_is_kept_with_min_side(monkeypatch):
    """Decoding small does not lift the guard: the declared pixel count is checked as before."""
    with pytest.raises(ImageLoadError, match="decompression-bomb"):
        decode_image(bomb_png(), min_side=292)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageLoadError, match="decompression-bomb"):
        decode_image(_bytes(photo(64, 64), "JPEG"), min_side=8)


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_peak_memory_is_bounded_by_the_target_size(tmp_path):
    """A 6000 x 6000 PNG (144 MB as a Pillow RGB image) raises a child process's peak RSS by a few MB."""
    path = tmp_path / "huge.png"
    path.write_bytes(huge_png(6000, 6000))
    script = (
        "import resource, sys\n"
        "from captioner.images import load_image\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "image = load_image(sys.argv[1], min_side=292)\n"
        "print(image.size, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path)], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.split()
    assert int(out[-1]) < 60, out  # MB; decoding whole: about 290
