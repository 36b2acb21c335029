"""The numpy preprocessing of the ONNX Runtime path gives the PyTorch transform's numbers to the bit (issue 27: the
default caption path runs without PyTorch): on real photos and random images of every shape, downscaled and
upscaled, bicubic and bilinear, and where the float32 sums would no longer be exact (float64 then)."""

import numpy as np
import pytest
from PIL import Image

from captioner.config import Preprocess
from captioner.models import resample
from captioner.models.resample import ArrayTransform
from captioner.models.transforms import ImageTransform

SHAPES = [(100, 150), (292, 300), (300, 292), (291, 500), (1000, 1001), (17, 900), (900, 17), (292, 292),
          (261, 1000), (480, 640)]
SETTINGS = [(292, 260, "bicubic"), (256, 224, "bilinear"), (260, 260, "bicubic"), (224, 224, "bilinear")]


def _images(shared_data=None) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SHAPES]
    images.append(Image.fromarray(np.kron(rng.integers(0, 2, (20, 30, 1)) * 255, np.ones((16, 16, 3))).astype(
        np.uint8)))  # hard black-and-white edges: where the cubic filter over- and undershoots, then clamps
    if shared_data is not None:
        images += [Image.open(p).convert("RGB") for p in sorted((shared_data / "demo").glob("*.jpg"))]
    return images


def _pairs(resize: int, crop: int, mode: str):
    preprocess = Preprocess(resize=resize, crop=crop, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                            interpolation=mode)
    return ImageTransform(preprocess), ArrayTransform(preprocess)


@pytest.mark.parametrize("resize, crop, mode", SETTINGS)
def test_the_numpy_transform_gives_the_torch_transforms_numbers(resize, crop, mode, shared_data):
    torch_transform, array_transform = _pairs(resize, crop, mode)
    for image in _images(shared_data):
        want = torch_transform(image).numpy()
        got = array_transform(image)
        assert got.dtype == np.float32 and got.shape == (3, crop, crop)
        assert np.array_equal(got, want), (image.size, float(np.abs(got - want).max()))


def test_float64_sums_where_float32_would_not_be_exact(monkeypatch):
    monkeypatch.setattr(resample, "FLOAT32_EXACT", 0)
    resample.band_matrices.cache_clear()
    try:
        torch_transform, array_transform = _pairs(292, 260, "bicubic")
        _, precision, dtype = resample.band_matrices(640, 437, "bicubic", 88, 348)
        assert dtype is np.float64
        for image in _images():
            assert np.array_equal(array_transform(image), torch_transform(image).numpy())
    finally:
        resample.band_matrices.cache_clear()
