"""Caption search: :class:`GenerationConfig` and :class:`Hypothesis`, the searches (greedy, beam, sampling), the
logits rules they share, constrained beam search, image tags and tag-guided decoding, behind one entry point,
:func:`generate`, that every backend uses.

This package never sees a :class:`captioner.pipeline.Captioner`: it drives any decoder with the contract of
:mod:`captioner.models.base` over image features, and takes image tags as data (the backend computes them from its
encoder's ImageNet head with :func:`tags_from_logits`).

Names are imported on first use, so that ``GenerationConfig`` (which the command line builds its options from) does
not import torch.
"""

from __future__ import annotations

import importlib

_WHERE = {"METHODS": "config", "GenerationConfig": "config", "Hypothesis": "config", "generate": "core",
          "Tag": "tags", "tags_from_logits": "tags"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"captioner.generation.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'captioner.generation' has no attribute {name!r}")
