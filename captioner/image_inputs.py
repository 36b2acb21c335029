"""What the Python API accepts as an image, turned into the RGB PIL image the command line would have loaded.

``Captioner.caption(x)`` takes a path (``str`` or :class:`pathlib.Path`), the bytes of an image file, a PIL image of
any mode, a numpy array or a torch tensor, or a list of any of these. Files and bytes go through
:func:`captioner.images.load_image` / :func:`~captioner.images.decode_image`, the loader of ``captioner caption``
(EXIF orientation, every mode, the decompression-bomb guard, decoding at the size the encoder needs); PIL images get
the same orientation, mode conversion and pixel limit; arrays are read as pictures:

- numpy: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` (channels last), ``uint8`` (0-255), ``uint16``
  (0-65535), ``bool``, or float (0-1);
- torch: ``(H, W)`` or ``(C, H, W)`` with C in 1, 3, 4 (channels first, as torchvision's ``to_tensor`` gives them),
  ``uint8`` or float (0-1).

Anything else is a ``TypeError``; an array of the wrong shape or range a ``ValueError`` that says what is expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from captioner.images import ImageLoadError, decode_image, load_image, to_rgb

_CHANNELS = (1, 3, 4)


def is_batch(images: Any) -> bool:
    """True for a list or tuple of images (one result each), False for one image (one result)."""
    return isinstance(images, (list, tuple))


def as_rgb_image(image: Any, min_side: int | None = None) -> Image.Image:
    """One image of any accepted kind (see the module docstring) as a fully loaded RGB PIL image.

    Args:
        image: a path, bytes, a PIL image, a numpy array or a torch tensor.
        min_side: the shorter side the encoder resizes to; files are decoded no larger than needed for it.

    Raises:
        ImageLoadError: a file or bytes that cannot be read as an image (the message names the file).
        TypeError: not an image of any accepted kind.
        ValueError: an array whose shape, dtype or values are not a picture's.
    """
    if isinstance(image, (str, Path)):
        try:
            return load_image(image, min_side=min_side)
        except ImageLoadError as err:
            raise ImageLoadError(f"{image}: {err}") from None
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(bytes(image), min_side=min_side)
    if isinstance(image, Image.Image):
        return _from_pil(image)
    if isinstance(image, np.ndarray):
        return _from_pil(Image.fromarray(_channels_last_uint8(image, "numpy array")))
    if type(image).__module__.startswith("torch") and hasattr(image, "detach"):
        return _from_pil(Image.fromarray(_from_tensor(image)))
    raise TypeError(f"cannot caption a {type(image).__name__}: give a path, a pathlib.Path, the bytes of an image "
                    "file, a PIL image, a numpy array (H, W[, C]) or a torch tensor ([C,] H, W), or a list of them")


def _from_pil(image: Image.Image) -> Image.Image:
    """A PIL image the way the file loader leaves one: pixels within the decompression-bomb limit, EXIF orientation
    applied, RGB."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and image.width * image.height > 2 * limit:  # Pillow's own error threshold for files
        raise ImageLoadError(f"image too large for the decompression-bomb guard ({image.width}x{image.height} "
                             f"pixels, limit {limit:,}); raise PIL.Image.MAX_IMAGE_PIXELS if you trust it")
    try:
        image.load()
        image = ImageOps.exif_transpose(image) or image
    except (OSError, ValueError, SyntaxError) as err:  # a lazily opened file that turns out damaged
        raise ImageLoadError(f"cannot read the PIL image ({err})") from None
    return to_rgb(image)


def _from_tensor(tensor) -> np.ndarray:
    """A torch tensor ``(H, W)`` or ``(C, H, W)`` as a channels-last ``uint8`` array."""
    array = tensor.detach().cpu()
    if array.dim() == 3:
        if array.shape[0] not in _CHANNELS:
            raise ValueError(f"a torch tensor image is (C, H, W) with C in {_CHANNELS}, got shape "
                             f"{tuple(array.shape)} (a batch? give a list of tensors)")
        array = array.permute(1, 2, 0)
    elif array.dim() != 2:
        raise ValueError(f"a torch tensor image is (H, W) or (C, H, W), got shape {tuple(array.shape)}")
    if array.is_floating_point():
        array = array.float()
    return _channels_last_uint8(array.numpy(), "torch tensor")


def _channels_last_uint8(array: np.ndarray, what: str) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` pixels of any accepted dtype as ``uint8``, ``(H, W)`` or ``(H, W, 3|4)``."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in _CHANNELS):
        raise ValueError(f"a {what} image is (H, W) or (H, W, C) with C in {_CHANNELS} (channels last), got shape "
                         f"{array.shape}")
    if min(array.shape[:2]) < 1:
        raise ValueError(f"a {what} image needs at least one pixel, got shape {array.shape}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return (array.astype(np.float64) / 257.0).round().astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(f"a float {what} image holds values in [0, 1], got values from {np.nanmin(array):g} to "
                             f"{np.nanmax(array):g} (scale it, or give uint8 0-255)")
        return (array.astype(np.float64) * 255.0).round().astype(np.uint8)
    raise ValueError(f"a {what} image is uint8, uint16, bool or float (0-1), got {array.dtype}")
