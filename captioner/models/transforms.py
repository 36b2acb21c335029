"""Preprocessing: PIL image → normalised tensor, as a :class:`captioner.config.Preprocess` records it.

Written with torch alone (no torchvision), so that captioning never imports torchvision.
"""

from __future__ import annotations

import platform
from collections.abc import Callable

import numpy as np
import torch

from captioner.config import Preprocess
from captioner.models.resample import check_interpolation, crop_origin, resized_size


def make_transform(preprocess: Preprocess) -> Callable:
    """The transform for a :class:`Preprocess`: PIL RGB image → normalised tensor ``(3, crop, crop)``."""
    return ImageTransform(preprocess)


class ImageTransform:
    """Resize the shorter side to ``resize`` (antialiased bilinear or bicubic), center-crop ``crop`` x ``crop``,
    scale to [0, 1] and normalise: the arithmetic of torchvision's ``v2`` pipeline (PILToTensor, Resize, CenterCrop,
    ToDtype(scale=True), Normalize), to the bit (``tests/test_encoders.py`` compares them), written with torch alone
    so that captioning does not import torchvision (about a second of every cold start). A class, so that loader
    workers can pickle it."""

    def __init__(self, preprocess: Preprocess) -> None:
        check_interpolation(preprocess.interpolation)
        self.preprocess = preprocess
        self.mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(preprocess.std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image) -> torch.Tensor:
        height, width = image.height, image.width
        pixels = torch.as_tensor(np.array(image, dtype=np.uint8, copy=True)).view(height, width, 3)
        pixels = self._resize(pixels.permute(2, 0, 1))  # (3, H, W) uint8, channels-last in memory
        crop = self.preprocess.crop
        top, left = crop_origin(pixels.shape[2], pixels.shape[1], crop, self.preprocess.resize)
        pixels = pixels[:, top : top + crop, left : left + crop]
        return pixels.to(torch.float32).mul_(1.0 / 255).sub(self.mean).div(self.std)  # (3, crop, crop)

    def _resize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Shorter side to ``resize`` (the longer one scaled and truncated), uint8 in and out ``(3, h, w)``."""
        _, height, width = pixels.shape
        new_w, new_h = resized_size(width, height, self.preprocess.resize)
        if (new_h, new_w) == (height, width):
            return pixels
        batch = pixels.reshape(1, 3, height, width)
        mode = self.preprocess.interpolation
        uint8 = mode == "bicubic" or torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or (
            platform.machine() in ("aarch64", "arm64"))  # where torch has antialiased uint8 kernels
        out = torch.nn.functional.interpolate(batch if uint8 else batch.float(), size=[new_h, new_w], mode=mode,
                                              align_corners=False, antialias=True)
        if not uint8:
            out = out.round_().to(torch.uint8)
        return out.reshape(3, new_h, new_w)
