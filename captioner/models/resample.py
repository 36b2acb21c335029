"""Preprocessing with numpy alone: PIL image → normalised array ``(3, crop, crop)``, the same numbers as
:class:`captioner.models.transforms.ImageTransform` (and torchvision's ``v2`` pipeline) to the bit, so that
captioning with ONNX Runtime never imports PyTorch (about two seconds of a cold start on a small machine).

The resize is PyTorch's antialiased uint8 kernel (which follows Pillow's resampling, but with PyTorch's filters): a
horizontal then a vertical pass, each output pixel a weighted sum of the input pixels under the filter scaled to the
reduction, with the weights normalised, rounded to 16-bit fixed point and the sum rounded and clamped to 0..255.
``tests/test_resample.py`` compares it with :class:`~captioner.models.transforms.ImageTransform` on real and random
images, upscaling included.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from captioner.config import Preprocess

FILTER_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}  # half-widths of the filters at scale 1


def check_interpolation(mode: str) -> None:
    """Raise ``ValueError`` unless ``mode`` is an interpolation the preprocessing implements."""
    if mode not in FILTER_SUPPORT:
        raise ValueError(f"interpolation must be bilinear or bicubic, got {mode!r}")


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """``(width, height)`` after resizing the shorter side to ``size``, the longer one scaled and truncated (as
    torchvision's ``Resize``)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def crop_origin(width: int, height: int, crop: int, size: int) -> tuple[int, int]:
    """The ``(top, left)`` of the center ``crop`` x ``crop`` of a resized ``width`` x ``height`` image.

    Raises:
        ValueError: the image (resized to ``size``) is smaller than the crop.
    """
    top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
    if top < 0 or left < 0:
        raise ValueError(f"resize {size} leaves the image smaller than the crop {crop}")
    return top, left


def _filter(x: np.ndarray, mode: str) -> np.ndarray:
    """The antialiasing filter: triangle (bilinear) or Keys' cubic with a = -0.5 (bicubic, as PyTorch's
    antialiased kernel and Pillow use)."""
    x = np.abs(x)
    if mode == "bilinear":
        return np.clip(1.0 - x, 0.0, None)
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


@lru_cache(maxsize=64)
def resample_weights(in_size: int, out_size: int, mode: str) -> tuple[np.ndarray, np.ndarray, int]:
    """The fixed-point weights of one pass.

    Returns:
        ``(first, weights, precision)``: each output pixel's first input pixel ``(out,)``, its integer weights
        ``(out, taps)`` (zero past its window), and the number of fractional bits they carry.
    """
    scale = in_size / out_size
    support = FILTER_SUPPORT[mode] * (scale if scale >= 1.0 else 1.0)
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    centers = scale * (np.arange(out_size) + 0.5)
    first = np.maximum((centers - support + 0.5).astype(np.int64), 0)  # truncation, as C's cast
    last = np.minimum((centers + support + 0.5).astype(np.int64), in_size)
    taps = int((last - first).max())
    offsets = np.arange(taps)
    inside = offsets[None, :] < (last - first)[:, None]  # (out, taps)
    weights = _filter((first[:, None] + offsets[None, :] - centers[:, None] + 0.5) * invscale, mode) * inside
    total = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, total, out=weights, where=total != 0)
    precision = _precision(float(weights.max()))
    scaled = weights * (1 << precision)
    fixed = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)
    return first, fixed, precision


def _precision(largest: float) -> int:
    """The most fractional bits (< 22) with which the largest weight still fits a signed 16-bit integer."""
    precision = 0
    while precision < 22 and int(0.5 + largest * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    return precision


FLOAT32_EXACT = 1 << 24  # integers up to here are exact in float32
BLOCK = 32  # output pixels per band matrix: small dense products instead of one mostly-zero matrix


@lru_cache(maxsize=64)
def band_matrices(in_size: int, out_size: int, mode: str, start: int, stop: int) -> tuple[list, int, type]:
    """Output pixels ``start:stop`` of one pass as dense band matrices.

    Returns:
        ``[(out0, out1, in0, matrix), ...]`` (positions relative to ``start``; ``matrix`` ``(out1 - out0, in1 - in0)``
        holds the integer weights), the precision, and the float type in which every partial sum is an exact
        integer (float32 while ``255 * sum |weights|`` stays below 2**24, else float64).
    """
    first, weights, precision = resample_weights(in_size, out_size, mode)
    largest = 255 * int(np.abs(weights).sum(axis=1).max()) + (1 << precision)
    dtype = np.float32 if largest < FLOAT32_EXACT else np.float64
    taps, blocks = weights.shape[1], []
    for out0 in range(start, stop, BLOCK):
        out1 = min(out0 + BLOCK, stop)
        in0, in1 = int(first[out0]), min(int(first[out1 - 1]) + taps, in_size)
        matrix = np.zeros((out1 - out0, in1 - in0), dtype=dtype)
        for row in range(out0, out1):
            offset = int(first[row]) - in0
            width = min(taps, in1 - in0 - offset)
            matrix[row - out0, offset : offset + width] = weights[row, :width]
        blocks.append((out0 - start, out1 - start, in0, matrix))
    return blocks, precision, dtype


def _rows_needed(in_size: int, out_size: int, mode: str, start: int, stop: int) -> tuple[int, int]:
    """The input pixels that output pixels ``start:stop`` of a pass read."""
    blocks, _, _ = band_matrices(in_size, out_size, mode, start, stop)
    return blocks[0][2], max(in0 + matrix.shape[1] for _, _, in0, matrix in blocks)


def _resample(planes: np.ndarray, axis: int, in_size: int, out_size: int, mode: str, span: tuple[int, int],
              offset: int) -> np.ndarray:
    """Output pixels ``span`` of one pass over ``axis`` (1: rows, 2: columns) of integer-valued planes
    ``(3, h, w)`` whose first pixel on that axis is input pixel ``offset``; rounded and clamped as the fixed-point
    kernel does."""
    blocks, precision, dtype = band_matrices(in_size, out_size, mode, *span)
    planes = planes.astype(dtype, copy=False)
    shape = list(planes.shape)
    shape[axis] = span[1] - span[0]
    out = np.empty(shape, dtype=dtype)
    for out0, out1, in0, matrix in blocks:
        if axis == 2:  # (3, h, taps) @ (taps, outs)
            out[:, :, out0:out1] = planes[:, :, in0 - offset : in0 - offset + matrix.shape[1]] @ matrix.T
        else:  # (outs, taps) @ (3, taps, w)
            out[:, out0:out1] = matrix @ planes[:, in0 - offset : in0 - offset + matrix.shape[1]]
    out += dtype(1 << (precision - 1))
    out *= dtype(1.0 / (1 << precision))
    np.floor(out, out=out)  # the C kernel's arithmetic shift
    return np.clip(out, 0, 255, out=out)


def resize_crop(pixels: np.ndarray, size: int, crop: int, mode: str) -> np.ndarray:
    """Resize a uint8 image ``(H, W, 3)`` so that its shorter side is ``size`` (the longer one scaled and
    truncated), antialiased, and cut the center ``crop`` x ``crop``, as
    :class:`~captioner.models.transforms.ImageTransform` does (a horizontal, then a vertical pass; only the pixels
    the crop keeps are computed). Returns integer-valued float planes ``(3, crop, crop)``.

    Raises:
        ValueError: the resized image is smaller than the crop.
    """
    height, width = pixels.shape[:2]
    new_w, new_h = resized_size(width, height, size)
    top, left = crop_origin(new_w, new_h, crop, size)
    rows = (top, top + crop) if new_h == height else _rows_needed(height, new_h, mode, top, top + crop)
    planes = np.moveaxis(pixels[rows[0] : rows[1]], 2, 0).astype(np.float32)  # (3, rows, W)
    if new_w == width:
        planes = planes[:, :, left : left + crop]
    else:
        planes = _resample(planes, 2, width, new_w, mode, (left, left + crop), 0)
    if new_h == height:
        return planes
    return _resample(planes, 1, height, new_h, mode, (top, top + crop), rows[0])


class ArrayTransform:
    """PIL RGB image → normalised float32 array ``(3, crop, crop)``: resize the shorter side, center-crop, scale to
    [0, 1] and normalise, as a :class:`~captioner.config.Preprocess` records it."""

    def __init__(self, preprocess: Preprocess) -> None:
        check_interpolation(preprocess.interpolation)
        self.preprocess = preprocess
        self.mean = np.asarray(preprocess.mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(preprocess.std, dtype=np.float32).reshape(3, 1, 1)

    def __call__(self, image) -> np.ndarray:
        pixels = np.asarray(image, dtype=np.uint8).reshape(image.height, image.width, 3)
        planes = resize_crop(pixels, self.preprocess.resize, self.preprocess.crop, self.preprocess.interpolation)
        scaled = planes.astype(np.float32, copy=False) * np.float32(1.0 / 255)  # integer values, as uint8 gives
        return (scaled - self.mean) / self.std  # (3, crop, crop)
