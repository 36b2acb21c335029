"""Image files → image features with a model's encoder, through the feature cache when the encoder is frozen.

Pooled-vector models get ``(N, D)`` float32 vectors; attention models get their encoder's feature maps
``(N, L, D)``, cached and returned as float16 (half the memory; the decoder computes in float32).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import ImageOps
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from captioner.config import ModelConfig
from captioner.data.cache import FeatureCache, cache_missing, cached_features, default_cache_dir
from captioner.images import ImageLoadError, load_image
from captioner.models.factory import complete_config
from captioner.pipeline import Captioner

logger = logging.getLogger(__name__)


class _ImageFiles(Dataset):
    """Loads and preprocesses image files (decoded no larger than ``min_side`` needs); an unreadable file yields
    its error text instead of a tensor."""

    def __init__(self, paths: Sequence[Path], transform, min_side: int | None = None) -> None:
        self.paths, self.transform, self.min_side = list(paths), transform, min_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return i, self.transform(load_image(self.paths[i], min_side=self.min_side)), ""
        except ImageLoadError as err:
            return i, None, str(err)


def _collate(batch):
    return batch


def encode_files(
    model: Captioner, paths: Sequence[Path], batch_size: int = 32, num_workers: int = 1, progress: bool = True,
    mirror: bool = False,
) -> tuple[np.ndarray, dict[int, str]]:
    """Encode image files with ``model``'s encoder.

    Args:
        model: supplies the encoder and its preprocessing.
        paths: image files.
        batch_size: images per forward pass.
        num_workers: processes decoding images while the encoder runs (0: decode in this process).
        progress: show a tqdm bar.
        mirror: encode the images mirrored left-right (training augmentation).

    Returns:
        ``(features (N, *shape), failures)`` (see :func:`feature_layout`) where ``failures`` maps the index of each
        unreadable image to the reason; those rows are zeros.
    """
    shape, dtype = feature_layout(model)
    out = np.zeros((len(paths), *shape), dtype=dtype)
    failures: dict[int, str] = {}
    loader = DataLoader(
        _ImageFiles(paths, _Mirrored(model.transform) if mirror else model.transform, model.config.preprocess.resize),
        batch_size=batch_size,
        num_workers=num_workers if len(paths) > batch_size else 0,
        collate_fn=_collate,
    )
    for batch in tqdm(loader, desc="encoding images", unit="batch",
                      disable=None if progress else True, leave=False):
        failures.update({i: reason for i, _, reason in batch if reason})
        good = [(i, pixels) for i, pixels, reason in batch if not reason]
        if good:
            index = [i for i, _ in good]
            out[index] = model.encode(torch.stack([p for _, p in good])).cpu().numpy()
    return out, failures


def feature_layout(model: Captioner) -> tuple[tuple[int, ...], str]:
    """Shape and dtype of one image's features for ``model``: ``((D,), "float32")`` for a pooled vector,
    ``((L, D), "float16")`` for an attention model's feature map."""
    return model.config.feature_shape(), "float16" if model.config.attention else "float32"


class _Mirrored:
    """A transform applied to the left-right mirror image (a class, not a closure, so loader workers can pickle it)."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, image):
        return self.transform(ImageOps.mirror(image))


def encoder_cache_key(model: Captioner, mirror: bool = False) -> str:
    """What makes two encoders give the same features: name, weights, preprocessing, pooling (or the unpooled
    float16 map), and the mirror view (``avg`` pooling and the unmirrored view are left out of the key, so that
    caches written before those options existed stay valid)."""
    from captioner.models.encoders import get_spec

    spec = get_spec(model.config.encoder)
    if model.config.attention:
        pooling = "|map=float16"
    else:
        pooling = "" if model.config.pooling == "avg" else f"|pooling={model.config.pooling}"
    view = "|mirror" if mirror else ""
    backend = getattr(model, "feature_key_suffix", "")
    return f"{spec.name}|{spec.weights_id}|{model.config.preprocess.key()}{pooling}{view}{backend}"


class CachedRows:
    """The features of a list of images left in the feature cache's file and read when indexed, so a training run's
    memory does not grow with its data set (Flickr8k's train split is 1.3 GB of float16 feature maps; a batch reads
    a few MB, from the kernel's page cache after the first epoch).

    Indexing with a 1-D tensor or list of image rows gives a tensor ``(B, *shape)``; images the cache has no entry
    for (unreadable files) give zeros, as :func:`image_features` does.

    Args:
        cache: the feature cache holding every image that has a hash.
        hashes: each image's file hash, or None for an unreadable image.
    """

    def __init__(self, cache: FeatureCache, hashes: Sequence[str | None]) -> None:
        self.cache, self.hashes = cache, list(hashes)
        self.shape = (len(self.hashes), *cache.shape)

    def __len__(self) -> int:
        return len(self.hashes)

    def __getitem__(self, rows) -> torch.Tensor:
        rows = torch.as_tensor(rows).reshape(-1).tolist()
        out = np.zeros((len(rows), *self.cache.shape), dtype=self.cache.dtype)  # (B, *shape)
        present = [i for i, row in enumerate(rows) if self.hashes[row] is not None]
        self.cache.get([self.hashes[rows[i]] for i in present], out=out, at=present)
        return torch.from_numpy(out)


def feature_mean(features: torch.Tensor | CachedRows, rows: Sequence[int], chunk: int = 256) -> torch.Tensor:
    """The mean of ``features[rows]`` ``(D,)`` or ``(L, C)``, read ``chunk`` rows at a time (float64 sums)."""
    if not rows:
        raise ValueError("the mean of no images is undefined")
    total = torch.zeros(tuple(features.shape[1:]), dtype=torch.float64)
    for start in range(0, len(rows), chunk):
        total += features[torch.tensor(rows[start : start + chunk])].double().sum(dim=0)
    return (total / len(rows)).float()


def image_features(
    model: Captioner,
    paths: Sequence[Path],
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    batch_size: int = 32,
    progress: bool = True,
    mirror: bool = False,
    lazy: bool = False,
) -> tuple[torch.Tensor | CachedRows, dict[int, str]]:
    """Features ``(N, D)`` or ``(N, L, D)`` for image files, read from / added to the feature cache when the encoder
    is frozen (``mirror``: of the images mirrored left-right, cached separately).

    Args:
        lazy: with a cache, return :class:`CachedRows` (read when indexed) instead of reading every row now.

    Returns:
        ``(features, failures)`` as in :func:`encode_files`.
    """
    cache = None
    if use_cache and not model.config.encoder_weights_in_file:
        root = Path(cache_dir) if cache_dir else default_cache_dir()
        shape, dtype = feature_layout(model)
        cache = FeatureCache(root, encoder_cache_key(model, mirror), shape, dtype)

    def encode(todo: Sequence[Path]) -> tuple[np.ndarray, dict[int, str]]:
        return encode_files(model, todo, batch_size=batch_size, progress=progress and cache is None, mirror=mirror)

    if lazy and cache is not None:
        hashes, failures = cache_missing(paths, cache, encode, progress=progress)
        return CachedRows(cache, [None if i in failures else h for i, h in enumerate(hashes)]), failures
    feats, failures = cached_features(paths, cache, encode, progress=progress)
    return torch.from_numpy(feats), failures


def fill_cache(config: ModelConfig, paths: Sequence[Path], cache_dir: str | Path | None = None,
               mirror: bool = False, batch_size: int = 32, image_size: int = 0) -> dict:
    """Encode image files into the feature cache ahead of training (several runs then share one extraction); the
    features are appended a chunk at a time, so memory does not grow with the number of images.

    Args:
        config: the architecture the features are for (its encoder, pooling and injection decide the cache key).
        paths: image files.
        cache_dir: cache root (None: the user cache directory).
        mirror: cache the mirrored images' features (``--flip-features``) instead.
        batch_size: images per encoder forward pass.
        image_size: as ``train --image-size`` (0: the encoder's own preprocessing).

    Returns:
        ``{"images", "new", "unreadable", "key", "dir"}`` (``unreadable``: path → reason).
    """
    from captioner.vocab import Vocabulary

    vocab = Vocabulary()
    model = Captioner(complete_config(config, len(vocab), image_size), vocab)
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    shape, dtype = feature_layout(model)
    before = len(FeatureCache(root, encoder_cache_key(model, mirror), shape, dtype).index)
    _, failed = image_features(model, list(paths), cache_dir=root, batch_size=batch_size, mirror=mirror, lazy=True)
    cache = FeatureCache(root, encoder_cache_key(model, mirror), shape, dtype)  # re-read the published index
    return {"images": len(paths), "new": len(cache.index) - before,
            "unreadable": {str(paths[i]): reason for i, reason in failed.items()}, "key": cache.key,
            "dir": str(cache.dir)}
