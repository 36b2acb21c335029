"""How peaked and how mobile a decoder's attention is along a caption.

For the weights ``alpha_t`` of step t over the ``L`` locations of the feature map (``(T, L)``, rows summing to 1):

- *entropy* ``H_t = -sum_i alpha_ti log alpha_ti`` in nats: ``log L`` for uniform attention (4.39 for the default's
  9×9 map), 0 for attention on one location; the *entropy ratio* ``H_t / log L`` puts it on 0-1 (0 for a map of one
  location, where there is nothing to choose);
- *peak*: the weight of the top location (``1/L`` when uniform); a step *focuses* when its peak is above
  ``PEAK_SHARE`` (0.2: 16 times the uniform weight on a 9×9 map);
- *moves*: whether the top location changes from one word to the next, and by how many grid cells;
- *spread*: the total variation distance between a word's map and the mean map of its caption (0: every word of the
  caption attends the same way).

:func:`describe_attention` gives these for one caption (``captioner visualize``); :func:`survey` sums them up over
many captions, by step, for the measurement in docs/ablation.md.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from captioner.generation import GenerationConfig
from captioner.pipeline import Captioner


PEAK_SHARE = 0.2  # a step "focuses" when its top location holds more than this share of the weight


def entropy(weights: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each distribution over the last dimension, ``(..., L)`` -> ``(...)`` (0 log 0 = 0)."""
    w = weights.double().clamp_min(0)
    return -(w * torch.where(w > 0, w.log(), torch.zeros_like(w))).sum(dim=-1)


def entropy_ratio(weights: torch.Tensor) -> torch.Tensor:
    """Entropy over the uniform distribution's, ``(..., L)`` -> ``(...)`` in [0, 1]: 1 uniform, 0 one location (and 0
    for ``L = 1``)."""
    uniform = math.log(weights.shape[-1])
    h = entropy(weights)
    return h / uniform if uniform > 0 else torch.zeros_like(h)


def grid_side(locations: int) -> int | None:
    """The side of a square feature map of ``locations`` cells (9 for 81), None when it is not square."""
    side = math.isqrt(locations)
    return side if side * side == locations else None


def top_moves(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """For consecutive steps of ``(T, L)`` weights: whether the top location changed ``(T-1,)`` and how far it moved
    in grid cells ``(T-1,)`` (None when the map is not square)."""
    top = weights.argmax(dim=1)  # (T,)
    changed = top[1:] != top[:-1]
    side = grid_side(weights.shape[1])
    if side is None:
        return changed, None
    rows, cols = (top // side).double(), (top % side).double()
    return changed, torch.hypot(rows[1:] - rows[:-1], cols[1:] - cols[:-1])


def spread(weights: torch.Tensor) -> torch.Tensor:
    """Total variation distance ``(T,)`` between each step's map and the mean map of the ``T`` steps."""
    return 0.5 * (weights.double() - weights.double().mean(dim=0, keepdim=True)).abs().sum(dim=1)


def describe_attention(weights: torch.Tensor, peak_share: float = PEAK_SHARE) -> dict:
    """Per-step and per-caption facts of one caption's attention ``(T, L)`` (T >= 1), JSON-ready.

    Returns:
        ``{"locations", "uniform_entropy", "entropy", "entropy_ratio", "peak", "top", "mean_entropy_ratio",
        "focused_steps", "top_changes", "mean_top_move", "mean_spread"}``: lists have one value per step (``top``:
        the top location's index), ``focused_steps`` counts the steps whose peak is above ``peak_share``,
        ``top_changes`` the steps whose top location differs from the previous step's, ``mean_top_move`` is in grid
        cells (None for a single step or a map that is not square).
    """
    if weights.dim() != 2 or not len(weights):
        raise ValueError(f"attention weights must be (T, L) with T >= 1, not {tuple(weights.shape)}")
    h, ratio = entropy(weights), entropy_ratio(weights)
    peak, top = weights.max(dim=1)
    changed, moved = top_moves(weights)
    return {
        "locations": weights.shape[1], "uniform_entropy": math.log(weights.shape[1]),
        "entropy": [float(v) for v in h], "entropy_ratio": [float(v) for v in ratio],
        "peak": [float(v) for v in peak], "top": [int(i) for i in top],
        "mean_entropy_ratio": float(ratio.mean()), "focused_steps": int((peak > peak_share).sum()),
        "top_changes": int(changed.sum()),
        "mean_top_move": float(moved.mean()) if moved is not None and len(moved) else None,
        "mean_spread": float(spread(weights).mean()),
    }


def attention_maps(model: Captioner, features: torch.Tensor, config: GenerationConfig,
                   batch_size: int = 128) -> list[torch.Tensor]:
    """Caption feature maps ``(N, L, C)`` with ``config`` and return each best caption's attention ``(T_i, L)``, one
    row per word (the ``<end>`` step left out), as the search saw it.

    Every search gives the weights with ``return_attention``: plain searches record them as they go, guided decoding
    reads its captions again with the decoder it ran (:func:`captioner.generation.guided.read_attention`).

    Raises:
        ValueError: the model does not attend (a pooled-vector model).
    """
    if not model.config.attention:
        raise ValueError("the model has no attention: it reads one pooled vector per image")
    config = dataclasses.replace(config, return_attention=True, n_best=1)
    maps = []
    for start in range(0, features.shape[0], batch_size):
        maps += [hyps[0].attention.float() for hyps in model.caption_features(features[start: start + batch_size],
                                                                              config)]
    return maps


def _by_step(maps: list[torch.Tensor], min_captions: int, peak_share: float) -> dict[str, list]:
    """Mean entropy, entropy ratio and focused share at each step position of ``[(T_i, L)]``, up to the first step
    reached by fewer than ``min_captions`` captions."""
    by_step: dict[str, list] = {"entropy": [], "entropy_ratio": [], "focused_share": [], "captions": []}
    for t in range(max(len(m) for m in maps)):
        rows = [m[t] for m in maps if len(m) > t]
        if len(rows) < min_captions:
            break
        stacked = torch.stack(rows)  # (N_t, L)
        by_step["entropy"].append(float(entropy(stacked).mean()))
        by_step["entropy_ratio"].append(float(entropy_ratio(stacked).mean()))
        by_step["focused_share"].append(float((stacked.max(dim=1).values > peak_share).double().mean()))
        by_step["captions"].append(len(rows))
    return by_step


def survey(maps: list[torch.Tensor], min_captions: int = 20, peak_share: float = PEAK_SHARE) -> dict:
    """Attention facts over many captions ``[(T_i, L)]``: over all word steps, and by step (steps reached by at least
    ``min_captions`` captions).

    Returns:
        ``{"captions", "steps", "locations", "uniform_entropy", "mean_entropy", "mean_entropy_ratio",
        "focused_share", "mean_peak", "top_change_share", "mean_top_move", "mean_spread", "image_spread",
        "mean_map_entropy_ratio", "by_step": {"entropy": [...], "entropy_ratio": [...], "focused_share": [...],
        "captions": [...]}, "mean_map", "peaks"}``. Shares are over all word steps (``top_change_share``: over the
        steps after a caption's first; None when no caption has two words). ``mean_spread`` is the mean total
        variation distance between a word's map and its caption's mean map (does the model look elsewhere as it
        writes?); ``image_spread`` the mean total variation distance between a caption's mean map and the mean of all
        the captions' mean maps (does where it looks depend on the photo?); ``mean_map_entropy_ratio`` the entropy
        ratio of the mean map itself (how spread a fixed prior, e.g. towards the photo's centre, already is).
        ``mean_map`` ``(L,)`` (the mean over all word steps) and ``peaks`` ``(S,)`` (every step's top weight) are
        tensors, for a figure.

    Raises:
        ValueError: no caption has a word.
    """
    maps = [m.double() for m in maps if len(m)]
    if not maps:
        raise ValueError("no attention to survey: every caption is empty")
    locations = maps[0].shape[1]
    steps = torch.cat(maps)  # (S, L)
    h, peaks = entropy(steps), steps.max(dim=1).values
    moves = [top_moves(m) for m in maps if len(m) > 1]
    changed = torch.cat([c for c, _ in moves]).double() if moves else None
    moved = [d for _, d in moves if d is not None]
    caption_means = torch.stack([m.mean(dim=0) for m in maps])  # (N, L)
    mean_map = steps.mean(dim=0)  # (L,)
    return {
        "captions": len(maps), "steps": len(steps), "locations": locations, "uniform_entropy": math.log(locations),
        "mean_entropy": float(h.mean()), "mean_entropy_ratio": float(entropy_ratio(steps).mean()),
        "focused_share": float((peaks > peak_share).double().mean()), "mean_peak": float(peaks.mean()),
        "top_change_share": float(changed.mean()) if changed is not None else None,
        "mean_top_move": float(torch.cat(moved).mean()) if moved else None,
        "mean_spread": float(torch.cat([spread(m) for m in maps]).mean()),
        "image_spread": float(spread(caption_means).mean()),
        "mean_map_entropy_ratio": float(entropy_ratio(mean_map)),
        "by_step": _by_step(maps, min_captions, peak_share), "mean_map": mean_map.float(), "peaks": peaks.float(),
    }
