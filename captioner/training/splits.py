"""Data splits ready for training: loading (with a held-out part of the training split), encoding the captions,
caching the image vectors, and the flipped-image augmentation of those vectors.

With ``TrainConfig.flip_features`` the training split also caches the vectors of each image mirrored left-right;
every training step then takes, for each image of the batch, the original or the mirrored vector with equal
probability, from a generator seeded by the run's seed and step (a resumed run draws the same views). Validation
and captioning always use the original image.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from captioner.data import CaptionSet, DatasetError, load_dataset
from captioner.data.base import report_bad_images
from captioner.data.batching import caption_pairs
from captioner.features import CachedRows, image_features
from captioner.images import ImageLoadError, load_image
from captioner.pipeline import Captioner
from captioner.training.config import TrainConfig

DRY_RUN_IMAGES = 16


@dataclass
class Split:
    """A split ready for training: its encoded captions and, with a frozen encoder, its cached image vectors."""

    data: CaptionSet
    features: torch.Tensor | CachedRows | None  # (N, D) or (N, L, C); None when the encoder trains
    image_index: list[int] = field(default_factory=list)  # caption → image row
    captions: list[list[int]] = field(default_factory=list)  # encoded captions
    flipped: torch.Tensor | CachedRows | None = None  # of the mirrored images (flip_features), else None

    def vectors(self, rows: torch.Tensor, mirror: torch.Tensor | None = None) -> torch.Tensor:
        """Cached features ``(B, D)`` or ``(B, L, C)`` of image ``rows`` ``(B,)``; where ``mirror`` ``(B,)`` is True,
        those of the mirrored image (needs ``flipped``)."""
        feats = self.features[rows]  # (B, D) or (B, L, C)
        if mirror is None:
            return feats
        return torch.where(mirror.view(-1, *[1] * (feats.dim() - 1)), self.flipped[rows], feats)


def mirror_draw(flip_features: bool, seed: int, step: int, n: int) -> torch.Tensor | None:
    """Which of a step's ``n`` images to mirror ``(n,)`` bool, seeded by the run's ``seed`` and ``step``; None without
    ``flip_features``."""
    if not flip_features:
        return None
    generator = torch.Generator().manual_seed(seed * 7_919 + step)
    return torch.rand(n, generator=generator) < 0.5


def load_splits(cfg: TrainConfig) -> tuple[CaptionSet, CaptionSet | None]:
    """The training split and the (fixed) validation subset, cut down for a dry run."""
    train_set = load_dataset(cfg.data, cfg.train_split, cfg.data_format, cfg.images)
    held_out = bool(cfg.holdout)  # validation on held-back training images: no validation split is read
    val_set = _validation_split(cfg) if cfg.val_split and not held_out else None
    if held_out:
        train_set, val_set = hold_out(train_set, cfg.holdout, cfg.seed if cfg.holdout_seed is None else cfg.holdout_seed)
    for spec in cfg.extra_data:
        train_set = join(train_set, load_extra(spec))
    if cfg.dry_run:
        train_set = train_set.subset(DRY_RUN_IMAGES)
        val_set = val_set.subset(DRY_RUN_IMAGES // 2) if val_set is not None else None
    elif val_set is not None and cfg.val_max_images:
        val_set = val_set.subset(cfg.val_max_images)
    if not len(train_set):
        raise ValueError(f"{cfg.data}: split {cfg.train_split!r} has no images")
    return train_set, val_set


def _validation_split(cfg: TrainConfig) -> CaptionSet:
    """The validation split; when the data has none, the error says how to train without it."""
    try:
        return load_dataset(cfg.data, cfg.val_split, cfg.data_format, cfg.images)
    except DatasetError as err:
        raise DatasetError(f"{err}; validate on training images held back instead (--holdout N, e.g. a fifth of "
                           "them), name another split (--val-split), or train without validation (--val-split none)"
                           ) from None


def load_extra(spec: str) -> CaptionSet:
    """``PATH`` or ``PATH:SPLIT`` (default split ``train``) of ``TrainConfig.extra_data``."""
    path, _, split = spec.rpartition(":")
    if not path or "/" in split or not Path(path).exists():
        path, split = spec, "train"
    return load_dataset(path, split)


def join(first: CaptionSet, second: CaptionSet) -> CaptionSet:
    """The images of two caption sets, ``first``'s first (an image in both keeps ``first``'s captions).

    Raises:
        ValueError: the second set adds no image.
    """
    seen = {item.path for item in first.items}
    added = [item for item in second.items if item.path not in seen]
    if not added:
        raise ValueError(f"extra data {second.root} ({second.split}) adds no image to {first.root}")
    return CaptionSet(first.root, first.split, first.items + added)


def hold_out(data: CaptionSet, n: int, seed: int) -> tuple[CaptionSet, CaptionSet]:
    """Split ``n`` images (a seeded draw) off a training split: ``(rest, held_out)``, both in the original order."""
    if not 0 < n < len(data):
        raise ValueError(f"--holdout {n}: the training split has {len(data)} images; hold out fewer")
    chosen = set(random.Random(seed).sample(range(len(data)), n))
    rest = [item for i, item in enumerate(data.items) if i not in chosen]
    held = [item for i, item in enumerate(data.items) if i in chosen]
    return (CaptionSet(data.root, data.split, rest), CaptionSet(data.root, f"{data.split}-holdout", held))


def prepare_split(model: Captioner, data: CaptionSet, cfg: TrainConfig, live: bool, training: bool) -> Split:
    """Encode a split's captions and, with a frozen encoder, its images through the feature cache (plus the
    mirrored images of the training split with ``flip_features``); unreadable images are skipped and counted (or
    stop the run with ``on_bad_image="error"``).

    Args:
        model: supplies the vocabulary and the encoder.
        data: the split.
        cfg: training settings.
        live: the encoder trains (nothing is cached; every image is checked once so bad ones are known up front).
        training: this is the training split (the only one that is augmented).
    """
    feats, flipped, failed = None, None, {}
    paths = [item.path for item in data.items]
    if live:
        for i, path in enumerate(paths):
            try:
                load_image(path)
            except ImageLoadError as err:
                failed[i] = str(err)
    else:
        # read batch by batch; images not cached yet are encoded under a progress bar (on a terminal, unless quiet)
        feats, failed = image_features(model, paths, cache_dir=cfg.cache_dir, lazy=True, progress=cfg.progress)
        if training and cfg.flip_features:
            flipped, _ = image_features(model, paths, cache_dir=cfg.cache_dir, mirror=True, lazy=True,
                                        progress=cfg.progress)
    report_bad_images(data, {str(data.items[i].path): reason for i, reason in failed.items()}, cfg.on_bad_image)
    index, captions = caption_pairs(data, model.vocab, cfg.max_caption_len, skip=set(failed))
    if not captions:
        raise ValueError(f"{data.root}: split {data.split!r} has no usable captions")
    return Split(data=data, features=feats, image_index=index, captions=captions, flipped=flipped)
