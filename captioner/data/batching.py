"""Turning (image vector, caption) pairs into padded teacher-forcing batches with little padding."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from captioner.data.base import CaptionSet
from captioner.vocab import Vocabulary


def caption_pairs(
    dataset: CaptionSet, vocab: Vocabulary, max_len: int, skip: set[int] | frozenset[int] = frozenset()
) -> tuple[list[int], list[list[int]]]:
    """Every (image index, encoded caption) pair of a split.

    Args:
        dataset: the split.
        vocab: encodes captions as ``[<start>, ..., <end>]``.
        max_len: captions are cut to this many words.
        skip: image indices to leave out (unreadable images).

    Returns:
        ``(image_index, token_ids)`` as two parallel lists; empty captions are dropped.
    """
    images, captions = [], []
    for i, item in enumerate(dataset.items):
        if i in skip:
            continue
        for text in item.captions:
            ids = vocab.encode(text, max_len=max_len)
            if len(ids) > 2:
                images.append(i)
                captions.append(ids)
    return images, captions


def bucket_batches(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, window: int = 64
) -> list[list[int]]:
    """Shuffle, then group captions of similar length so padding is small; the batch order is shuffled too.

    The indices are shuffled, cut into windows of ``window * batch_size``, each window is sorted by length and cut
    into batches, and finally the batches are shuffled. Deterministic for a given generator state.

    Args:
        lengths: length of every caption.
        batch_size: captions per batch.
        generator: seeded torch generator.
        window: batches per sorting window (larger: less padding, less randomness).
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches = []
    span = window * batch_size
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[p] for p in perm]


def image_batches(image_index: Sequence[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Batches of whole images: the images are shuffled and each batch takes all the captions of the next images
    until it holds at least ``batch_size`` captions. Deterministic for a given generator state.

    Args:
        image_index: image row of every caption.
        batch_size: captions per batch (at least; a batch ends after the image that reaches it).
        generator: seeded torch generator.

    Returns:
        Lists of caption indices.
    """
    captions: dict[int, list[int]] = {}
    for i, image in enumerate(image_index):
        captions.setdefault(image, []).append(i)
    images = sorted(captions)
    batches, current = [], []
    for j in torch.randperm(len(images), generator=generator).tolist():
        current += captions[images[j]]
        if len(current) >= batch_size:
            batches.append(current)
            current = []
    return batches + ([current] if current else [])


def pad_batch(captions: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing inputs and targets.

    Args:
        captions: encoded captions ``[<start>, w1, ..., wn, <end>]``.

    Returns:
        ``(inputs, targets)``, both ``(B, T)`` with ``T = max(len) - 1``: inputs drop the last token, targets the
        first; padding is ``pad_id``.
    """
    longest = max(len(c) for c in captions)
    padded = torch.full((len(captions), longest), pad_id, dtype=torch.long)  # (B, T+1)
    for row, ids in enumerate(captions):
        padded[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return padded[:, :-1], padded[:, 1:]


def iterate_batches(
    image_index: Sequence[int], captions: Sequence[Sequence[int]], batches: list[list[int]], pad_id: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(image_rows (B,), inputs (B, T), targets (B, T))`` for each batch of caption indices."""
    for batch in batches:
        inputs, targets = pad_batch([captions[i] for i in batch], pad_id)
        yield torch.tensor([image_index[i] for i in batch], dtype=torch.long), inputs, targets
