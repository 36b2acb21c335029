"""Uploads → the encoder's input, one file at a time, with memory bounded by pixels rather than by the number of
files: each file's declared size is read from its header (no decoding) and counted against the request's pixel
budget; a file within it is decoded at the size the encoder needs (``decode_image(min_side=preprocess.resize)``:
JPEG draft, PNG in bands, the rest reduced at once) and at once preprocessed to the ``(3, H, W)`` tensor the encoder
takes (the decoded photo is dropped), so a request of 32 huge PNGs never holds more than one decoded photo. Every
file that cannot be decoded is reported by name (``ImageLoadError``, whatever Pillow raised); the others go on."""

from __future__ import annotations

import asyncio
import ctypes
import sys
import time
from dataclasses import dataclass

import torch
from fastapi.concurrency import run_in_threadpool

from captioner.images import ImageLoadError, declared_size, decode_image


@dataclass
class Prepared:
    """One upload, ready for the model."""

    filename: str
    pixels: torch.Tensor  # (3, crop, crop), as the model's transform gives it
    seconds: float  # reading, decoding and preprocessing


class UploadReader:
    """Reads a request's uploads into :class:`Prepared` photos and per-file errors.

    Args:
        transform: PIL RGB image → ``(3, H, W)`` tensor (the model's ``transform``).
        min_side: the shorter side the transform resizes to (``config.preprocess.resize``): photos are decoded no
            smaller than that.
        max_pixels: pixels allowed per request, by the sizes the files declare.
        parallel: files decoded at once across all requests.
    """

    def __init__(self, transform, min_side: int, max_pixels: int, parallel: int = 1) -> None:
        self.transform, self.min_side, self.max_pixels, self.parallel = transform, min_side, max_pixels, parallel
        self._slots: asyncio.Semaphore | None = None

    async def read(self, files) -> tuple[list[Prepared], list[dict]]:
        """``files`` (FastAPI ``UploadFile``s) → ``([Prepared], [{"filename", "error"}])``, in upload order."""
        if self._slots is None:  # made on the server's event loop
            self._slots = asyncio.Semaphore(self.parallel)
        prepared, errors, left = [], [], self.max_pixels
        for upload in files:
            name = upload.filename or "(unnamed)"
            t0 = time.perf_counter()
            data = await upload.read()
            async with self._slots:
                pixels, used, error = await run_in_threadpool(self.prepare, data, left, name)
            del data
            if error is not None:
                errors.append({"filename": name, "error": error})
                continue
            left -= used
            prepared.append(Prepared(name, pixels, time.perf_counter() - t0))
        return prepared, errors

    def prepare(self, data: bytes, left: int, name: str) -> tuple[torch.Tensor | None, int, str | None]:
        """One file → ``(pixels, declared pixel count, None)``, or ``(None, 0, reason)`` when it cannot be decoded or
        exceeds the pixels ``left`` in the request's budget (then it is not decoded)."""
        size = declared_size(data)
        if size is not None and size[0] * size[1] > left:
            return None, 0, over_budget(size, left, self.max_pixels)
        try:
            image = decode_image(data, min_side=self.min_side, name=name)
        except ImageLoadError as err:
            return None, 0, str(err)
        try:
            return self.transform(image), size[0] * size[1] if size else image.width * image.height, None
        finally:
            image.close()
            del image
            release_memory()


def over_budget(size: tuple[int, int], left: int, budget: int) -> str:
    """Why a file was refused by the request's pixel budget, and what to do."""
    megapixels = size[0] * size[1] / 1e6
    if size[0] * size[1] > budget:
        return (f"{size[0]}x{size[1]} image ({megapixels:.1f} megapixels) is larger than a request may decode "
                f"({budget / 1e6:g} megapixels; captioner serve --max-request-megapixels); it was not decoded")
    return (f"{size[0]}x{size[1]} image ({megapixels:.1f} megapixels) is over what is left of this request's pixel "
            f"budget ({left / 1e6:.1f} of {budget / 1e6:g} megapixels); it was not decoded: send it in another request")


def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _malloc_trim()


def release_memory() -> None:
    """Hand freed heap memory back to the system. glibc keeps what decoding a huge photo freed in its arenas (the
    server stayed at 5 GB after one request of 8 such files); trimming returns it at once."""
    if _TRIM is not None:
        _TRIM(0)
