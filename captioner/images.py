"""The one image loader used by training, captioning, evaluation and the server.

It applies EXIF orientation, converts every mode to RGB (transparent images are composited on white, 16-bit ones
rescaled), keeps Pillow's decompression-bomb guard, and turns every failure to read a file into
:class:`ImageLoadError` with a short one-line reason (the caller adds the path).

**Decoding at the size the encoder needs.** With ``min_side`` (the encoder's resize side), an image whose shorter
side is at least twice ``min_side`` is decoded small, its shorter side kept ``>= min_side``:

- JPEG: ``Image.draft`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale (the full size is never allocated);
- non-interlaced PNG (8-bit and less, 16-bit grey): the rows are inflated a band at a time (a few MiB), each band
  converted to RGB and box-reduced (``Image.reduce``) at once, so the full-size image is never held;
- every other format (GIF, WebP, TIFF, BMP, 16-bit colour PNG, ...): Pillow cannot decode these small, so the
  image is decoded, converted and reduced at once, and only the reduced copy is kept.

then EXIF orientation is applied. Images below twice ``min_side`` (ordinary photos) decode as without it, exactly.

**Decompression-bomb guard.** Pillow's ``Image.MAX_IMAGE_PIXELS`` applies to the size a file declares, whether or not
it will be decoded small: inflating a 900-megapixel PNG costs seconds of CPU even when 300 pixels are kept, and a
limit that depended on the format would surprise. Users raise it for files they trust (``--max-image-pixels``).

**Warnings.** Pillow's complaints about a file it still reads (corrupt EXIF, ...) become one ``logging`` warning
naming the file. Recording warnings swaps process-wide state, so Pillow calls here take turns (the server's threads).
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import stat
import struct
import threading
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
import PIL
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

logger = logging.getLogger(__name__)
T = TypeVar("T")

# What Pillow raises for bad data. Each is listed because damaged files reach it (issue 26's fuzzing):
#   OSError: Pillow's documented failure (UnidentifiedImageError, "image file is truncated", decoder errors);
#   ValueError: checks on values read from the file ("Decompressed data too large" for a zTXt/iTXt chunk that
#     inflates past 1 MB, "Invalid dimensions", "Truncated IHDR chunk", "not enough image data" in QOI/DDS);
#   SyntaxError: Pillow's "broken PNG file" and "not a ... file" when a header or a chunk name is damaged;
#   NotImplementedError: a header naming a variant a plugin lacks (DDS "Unknown pixel format flags", BLP);
#   EOFError: plugins reading past the end; struct.error: short or mistyped fields (EXIF re-packing);
#   MemoryError: a header asking for more memory than there is;
#   DecompressionBombError, and DecompressionBombWarning made an error: the pixel-count guard.
_DATA_ERRORS = (OSError, ValueError, SyntaxError, NotImplementedError, EOFError, struct.error, MemoryError,
                Image.DecompressionBombError, Image.DecompressionBombWarning)
# These mean damaged data only when raised inside Pillow (a plugin indexing a table with a byte from the file, the
# AVIF decoder's RuntimeError "Failed to decode image"); raised anywhere else they are bugs and propagate.
_DATA_ERRORS_IN_PILLOW = (IndexError, KeyError, TypeError, AttributeError, ZeroDivisionError, OverflowError,
                          RuntimeError)
_PILLOW_DIR = os.path.dirname(PIL.__file__)
_WARNINGS_LOCK = threading.Lock()
_REASON_CHARS = 160  # the longest quoted error text in a reason

_TRANSPOSE = {  # EXIF orientation -> the transposition that shows the image upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# PNG raw modes decoded in bands, with their bits per pixel: those whose rows pack back to the same bytes (the
# next band's filters need the previous row as stored). 16-bit colour is cut to 8 bits when unpacked: not listed.
_PNG_BAND_BITS = {"1": 1, "L;2": 2, "L;4": 4, "L": 8, "P;1": 1, "P;2": 2, "P;4": 4, "P": 8, "I;16B": 16, "LA": 16,
                  "RGB": 24, "RGBA": 32}
_BAND_BYTES = 1 << 21  # PNG row data per band


class ImageLoadError(Exception):
    """An image could not be read; ``str(err)`` is a one-line reason meant for users."""


def is_image_file(path: Path) -> bool:
    """True when the file name has an image extension (the content is checked only when loading)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def load_image(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Read an image file as an RGB PIL image.

    Args:
        path: image file.
        min_side: the shorter side the caller needs (the encoder's resize side); an image at least twice as large
            is decoded at reduced size, its shorter side kept ``>= min_side``. None: full size.

    Returns:
        A fully decoded RGB image with EXIF orientation applied.

    Raises:
        ImageLoadError: missing, unreadable, empty, damaged, not an image, or larger than Pillow's
            decompression-bomb limit.
    """
    _check_min_side(min_side)
    path = Path(path)
    with _open_file(path) as fp:
        return _guarded(lambda: _read(fp, min_side), str(path))


def decode_image(data: bytes, min_side: int | None = None, name: str = "image data") -> Image.Image:
    """Decode an image held in memory (an upload) exactly as :func:`load_image` decodes a file.

    Args:
        data: the file's bytes.
        min_side: as for :func:`load_image`.
        name: names the image in the log line about Pillow's warnings (an upload's file name).

    Raises:
        ImageLoadError: empty, damaged, not an image, or larger than Pillow's decompression-bomb limit.
    """
    _check_min_side(min_side)
    if not data:
        raise ImageLoadError("empty file (0 bytes)")
    return _guarded(lambda: _read(io.BytesIO(data), min_side), name)


def declared_size(data: bytes) -> tuple[int, int] | None:
    """The (width, height) an image's header declares, read without decoding (for a pixel budget); None when the
    header cannot be read or exceeds the decompression-bomb limit (decoding then says why)."""
    def size() -> tuple[int, int]:
        with Image.open(io.BytesIO(data)) as img:
            return img.size

    try:
        return _guarded(size, None)
    except ImageLoadError:
        return None


def _check_min_side(min_side: int | None) -> None:
    if min_side is not None and (not isinstance(min_side, int) or min_side < 1):
        raise ValueError(f"min_side must be a positive integer or None, got {min_side!r}")


def _open_file(path: Path) -> BinaryIO:
    """Open a regular, non-empty file for reading; every failure (stat included) as :class:`ImageLoadError`."""
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise ImageLoadError("is a directory, not an image")
        if not stat.S_ISREG(info.st_mode):
            raise ImageLoadError("not a regular file (a device, pipe or socket), not an image")
        if info.st_size == 0:
            raise ImageLoadError("empty file (0 bytes)")
        return open(path, "rb")
    except OSError as err:
        raise ImageLoadError(_file_error(err, path)) from None
    except ValueError as err:  # os.stat: "embedded null byte"
        raise ImageLoadError(f"invalid file name ({_short(err)})") from None


def _file_error(err: OSError, path: Path) -> str:
    if isinstance(err, FileNotFoundError):
        return "no such file"
    if isinstance(err, PermissionError):
        return "permission denied: this user cannot read the file"
    if err.errno == errno.ENAMETOOLONG:
        return (f"file name too long for the file system ({len(os.fsencode(path.name))} bytes in its last part, "
                f"{len(os.fsencode(path))} in all; most systems allow 255 and 4096)")
    if isinstance(err, NotADirectoryError):
        return "no such file (a part of its folder path is a file)"
    if err.errno == errno.ELOOP:
        return "no such file (a loop of symbolic links)"
    return f"cannot read the file ({_short(err.strerror or err)})"


def _guarded(work: Callable[[], T], name: str | None) -> T:
    """``work()`` (Pillow's calls) under the warnings recorder, its failures as :class:`ImageLoadError`; Pillow's
    warnings are logged naming ``name`` when it succeeds."""
    result, reason = None, ""
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            result = work()
        except _DATA_ERRORS as err:
            reason = _reason(err)
        except _DATA_ERRORS_IN_PILLOW as err:
            if not _raised_in_pillow(err):
                raise
            reason = _reason(err)
    _pass_on_warnings(caught, None if reason else name)
    if reason:
        raise ImageLoadError(reason)
    return result


def _read(fp: BinaryIO, min_side: int | None) -> Image.Image:
    """Open, decode (small when ``min_side`` allows), convert to RGB and apply EXIF orientation."""
    with Image.open(fp) as img:
        factor = _reduction(img.size, min_side)
        if factor == 1:
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
        if img.format == "JPEG":
            img.draft(None, (min_side, min_side))  # libjpeg decodes at 1/2, 1/4 or 1/8; short side stays >= min_side
        if _decodes_in_bands(img):
            reduced, exif = _png_in_bands(img, fp, factor)
        else:
            img.load()
            reduced, exif = to_rgb(img), img.getexif()
        reduced = reduced.reduce(_reduction(reduced.size, min_side))  # by 1: a copy, not the file's own image
        orientation = exif.get(ExifTags.Base.Orientation)
        method = _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
        return reduced.transpose(method) if method is not None else reduced


def _reduction(size: tuple[int, int], min_side: int | None) -> int:
    """The integer factor to reduce by: 1 unless the shorter side is at least twice ``min_side``."""
    short = min(size)
    return short // min_side if min_side and short >= 2 * min_side else 1


def _decodes_in_bands(img: Image.Image) -> bool:
    """A single-frame, non-interlaced PNG whose rows :func:`_png_in_bands` can decode band by band."""
    tile = img.tile[0] if len(img.tile) == 1 else None
    return (img.format == "PNG" and tile is not None and tile.codec_name == "zip" and tile.args in _PNG_BAND_BITS
            and tile.extents == (0, 0, *img.size) and not img.info.get("interlace")
            and getattr(img, "n_frames", 1) == 1)


def _png_in_bands(img: ImageFile.ImageFile, fp: BinaryIO, factor: int) -> tuple[Image.Image, Image.Exif]:
    """Decode a PNG a band of rows at a time, each band converted to RGB and reduced by ``factor`` at once.

    Each band is handed to Pillow's PNG row decoder ("zip") behind one unfiltered copy of the previous band's last
    row, which the PNG filters of its first row refer to. The result equals ``to_rgb(full image).reduce(factor)``
    unless ``factor`` rows exceed ``_BAND_BYTES`` (a tiny ``min_side``): bands then reduce less, the caller the rest.

    Returns:
        The reduced RGB image and the file's EXIF (for the orientation).
    """
    (width, height), rawmode = img.size, img.tile[0].args
    row_bytes = (_PNG_BAND_BITS[rawmode] * width + 7) // 8
    factor = min(factor, max(1, _BAND_BYTES // row_bytes))
    rows = factor * max(1, _BAND_BYTES // (factor * row_bytes))
    stream = _IdatStream(fp, img.tile[0].offset)
    out = Image.new("RGB", (-(-width // factor), -(-height // factor)))
    previous = bytes(row_bytes)  # the filters see zeros above the first row
    for top in range(0, height, rows):
        n = min(rows, height - top)
        data = zlib.compress(b"\0" + previous + stream.read(n * (row_bytes + 1)), 0)  # filter 0: stored as is
        band = Image.frombytes(img.mode, (width, n + 1), data, "zip", rawmode)
        previous = band.crop((0, n, width, n + 1)).tobytes("raw", rawmode)
        if img.mode == "P":
            band.putpalette(img.palette)
        if "transparency" in img.info:
            band.info["transparency"] = img.info["transparency"]
        out.paste(to_rgb(band).reduce(factor, box=(0, 1, width, n + 1)), (0, top // factor))
    exif = Image.Exif()
    exif_bytes = img.info.get("exif") or stream.trailing_exif()
    if exif_bytes:
        exif.load(exif_bytes)
    return out, exif


class _IdatStream:
    """The zlib stream of a PNG's consecutive IDAT chunks, inflated a requested number of bytes at a time."""

    def __init__(self, fp: BinaryIO, offset: int) -> None:
        fp.seek(offset - 8)  # the header of the first IDAT chunk
        self.fp, self.left, self.after = fp, 0, b""
        self.inflater, self.tail = zlib.decompressobj(), b""
        self._start(fp.read(8))

    def _start(self, header: bytes) -> None:
        if len(header) == 8 and not header[4:].isalpha():  # as Pillow's reader says it
            raise SyntaxError(f"broken PNG file (chunk {header[4:]!r})")
        if len(header) == 8 and header[4:] == b"IDAT":
            self.left = int.from_bytes(header[:4], "big")
        else:
            self.left, self.after = -1, header  # no more image data; ``after`` begins the next chunk

    def _piece(self) -> bytes:
        """The next at most 64 KiB of IDAT data; b"" after the last IDAT chunk."""
        while self.left == 0:
            self.fp.read(4)  # the CRC that ends a chunk
            self._start(self.fp.read(8))
        if self.left < 0:
            return b""
        piece = self.fp.read(min(self.left, 1 << 16))
        if not piece:
            raise OSError("image file is truncated")
        self.left -= len(piece)
        return piece

    def read(self, size: int) -> bytes:
        """Exactly ``size`` inflated bytes, or OSError when the image data ends first."""
        out = bytearray()
        while len(out) < size:
            data = self.tail or self._piece()
            try:
                chunk = self.inflater.decompress(data, size - len(out))
            except zlib.error as err:
                raise OSError(f"broken PNG image data ({err})") from None
            if not data and not chunk:
                raise OSError("image file is truncated")
            self.tail = self.inflater.unconsumed_tail
            out += chunk
        return bytes(out)

    def trailing_exif(self) -> bytes | None:
        """The data of an eXIf chunk after the image data (Pillow reads one that comes before it at open)."""
        while self._piece():
            pass
        header = self.after
        while len(header) == 8 and header[4:] != b"IEND":
            length = int.from_bytes(header[:4], "big")
            if header[4:] == b"eXIf":
                return self.fp.read(length)
            self.fp.seek(length + 4, os.SEEK_CUR)
            header = self.fp.read(8)
        return None


def _raised_in_pillow(err: BaseException) -> bool:
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").startswith("PIL."):
            return True
        tb = tb.tb_next
    return False


def _reason(err: BaseException) -> str:
    """A one-line reason of bounded length for a decode failure."""
    if isinstance(err, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(pixels[1]):,} pixels, " if pixels else ""
        return (f"image too large for the decompression-bomb guard ({size}limit {Image.MAX_IMAGE_PIXELS:,}); pass "
                "--max-image-pixels N (or raise PIL.Image.MAX_IMAGE_PIXELS from Python) if you trust the file")
    if isinstance(err, UnidentifiedImageError):
        return "not an image file Pillow can read"
    if isinstance(err, MemoryError):
        return "not enough memory to decode this image"
    if isinstance(err, OSError):
        return f"unreadable or truncated image ({_short(err)})"
    kind = "struct.error" if isinstance(err, struct.error) else type(err).__name__
    return f"damaged or unsupported image data ({kind}: {_short(err)})"


def _short(text: object) -> str:
    """``text`` on one line, at most ``_REASON_CHARS`` characters."""
    line = " ".join(str(text).split()) or "no details"
    return line if len(line) <= _REASON_CHARS else line[: _REASON_CHARS - 1] + "…"


def _pass_on_warnings(caught: list[warnings.WarningMessage], name: str | None) -> None:
    """Pillow's complaints about a file it read become one log line naming it (none when it failed: the error
    says enough); other warnings recorded meanwhile (another thread's) are issued again."""
    complaints = []
    for w in caught:
        if issubclass(w.category, UserWarning) and w.filename.startswith((_PILLOW_DIR, __file__)):
            complaints.append(_short(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    if complaints and name is not None:
        logger.warning("%s: %s (the image was read anyway)", name, "; ".join(dict.fromkeys(complaints)))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency is composited on a white background."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    if img.mode.startswith("I") or img.mode == "F":
        return _high_depth_to_rgb(img)
    return img.convert("RGB")


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float images: rescale to 8 bits rather than clip everything above 255 to white."""
    arr = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max(initial=0.0)), 255.0)
    grey = np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


# Partially written images must be detected, never silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
