"""The one image loader used by training, captioning and evaluation.

It applies EXIF orientation, converts every mode to RGB (transparent images are composited on white), keeps
Pillow's decompression-bomb guard, and turns every failure into :class:`ImageLoadError` with a short reason.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


class ImageLoadError(Exception):
    """An image could not be read; ``str(err)`` is a one-line reason meant for users."""


def is_image_file(path: Path) -> bool:
    """True when the file name has an image extension (the content is checked only when loading)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def load_image(path: str | Path) -> Image.Image:
    """Read an image file as an RGB PIL image.

    Args:
        path: image file.

    Returns:
        A fully decoded RGB image with EXIF orientation applied.

    Raises:
        ImageLoadError: missing, empty, truncated, not an image, or larger than Pillow's decompression-bomb limit.
    """
    path = Path(path)
    if not path.exists():
        raise ImageLoadError("no such file")
    if path.is_dir():
        raise ImageLoadError("is a directory, not an image")
    if path.stat().st_size == 0:
        raise ImageLoadError("empty file (0 bytes)")
    return _decode(path)


def decode_image(data: bytes) -> Image.Image:
    """Decode an image held in memory (an upload) exactly as :func:`load_image` decodes a file.

    Raises:
        ImageLoadError: empty, truncated, not an image, or larger than Pillow's decompression-bomb limit.
    """
    if not data:
        raise ImageLoadError("empty file (0 bytes)")
    return _decode(io.BytesIO(data))


def _decode(source) -> Image.Image:
    """Open, fully decode, apply EXIF orientation and convert to RGB; every failure as :class:`ImageLoadError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                return to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(
            f"image too large for Pillow's decompression-bomb guard ({err}); raise PIL.Image.MAX_IMAGE_PIXELS "
            "if you trust the file"
        ) from None
    except UnidentifiedImageError:
        raise ImageLoadError("not an image file Pillow can read") from None
    except PermissionError:
        raise ImageLoadError("permission denied: this user cannot read the file") from None
    except OSError as err:
        raise ImageLoadError(f"unreadable or truncated image ({err})") from None


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
