"""What the decoder does while it writes a caption: its recurrent cells, its next-token distributions, where it
attends, and how much each step depends on the image.

The caption is searched as ``captioner caption`` searches it; then the decoder reads it again one token at a time
(:func:`trace`), which gives at each step exactly the state and distribution the search saw on that path. The
*image sensitivity* of a step is the total variation distance between the next-token distribution with the
photo's features and with the training images' mean features, the two runs reading the same words: with the image
fed through W_ih at every step it stays high; with an ``init_only`` model it fades as the state forgets the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from captioner.generation import GenerationConfig
from captioner.generation.logits import masked_log_probs
from captioner.pipeline import Captioner


@dataclass
class Trace:
    """The decoder's course along one caption, one row per step (step t reads token t and predicts token t+1).

    Attributes:
        hidden: top-layer hidden state after each step ``(T, H)``.
        cell: top-layer LSTM cell state ``(T, H)`` (None for a GRU or plain RNN).
        log_probs: next-token log-probabilities ``(T, V)`` (``<pad> <start> <unk>`` masked, as in the search).
        attention: attention weights over the image locations ``(T, L)`` (None without attention).
    """

    hidden: torch.Tensor
    cell: torch.Tensor | None
    log_probs: torch.Tensor
    attention: torch.Tensor | None


def _top(state) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Top layer's ``(h, c)`` of the first row from a state ``(layers, B, H)`` (or ``(h, c)`` of them)."""
    if isinstance(state, tuple):
        return state[0][-1, 0], state[1][-1, 0]
    return state[-1, 0], None


@torch.inference_mode()
def trace(model: Captioner, features: torch.Tensor, inputs: list[int]) -> Trace:
    """Run the decoder over ``inputs`` (``<start>`` and the caption's tokens) for one image.

    Args:
        model: a single-decoder model.
        features: the image's features ``(1, D)`` or ``(1, L, C)``.
        inputs: token ids read at steps 0..T-1.
    """
    decoder = model.decoder.eval()
    context, state = decoder.start(features.to(model.device))
    hidden, cells, log_probs, attention = [], [], [], []
    for token in inputs:
        step = decoder.step(torch.tensor([token], device=model.device), context, state)
        state = step.state
        h, c = _top(state)
        hidden.append(h.float().cpu())
        cells.append(c.float().cpu() if c is not None else None)
        log_probs.append(masked_log_probs(step.logits, model.vocab)[0].cpu())
        if step.attention is not None:
            attention.append(step.attention[0].float().cpu())
    return Trace(torch.stack(hidden), torch.stack(cells) if cells[0] is not None else None,
                 torch.stack(log_probs), torch.stack(attention) if attention else None)


def image_sensitivity(real: Trace, baseline: Trace) -> dict[str, torch.Tensor]:
    """Per step, how far apart the next-token distributions with the photo and with the baseline image are:
    ``{"tv": (T,), "kl": (T,)}`` (total variation in [0, 1]; KL(photo || baseline) in nats)."""
    p, q = real.log_probs.exp(), baseline.log_probs.exp()  # (T, V)
    tv = 0.5 * (p - q).abs().sum(dim=1)
    kl = (p * (real.log_probs - baseline.log_probs)).nan_to_num(0.0, posinf=0.0, neginf=0.0).sum(dim=1)
    return {"tv": tv, "kl": kl}


def pick_cells(real: Trace, baseline: Trace | None, count: int = 12) -> list[dict]:
    """The cells to show: the ``count`` most active (largest mean |h|) and, with a baseline, the ``count`` most
    image-sensitive (largest mean |h_photo - h_baseline|) not already chosen, as ``{"cell", "why", "score"}``."""
    count = min(count, real.hidden.shape[1])
    activity = real.hidden.abs().mean(dim=0)  # (H,)
    chosen = [{"cell": int(i), "why": "active", "score": float(activity[i])} for i in activity.topk(count).indices]
    if baseline is not None:
        taken = {c["cell"] for c in chosen}
        sensitivity = (real.hidden - baseline.hidden).abs().mean(dim=0)  # (H,)
        ranked = [int(i) for i in sensitivity.argsort(descending=True) if int(i) not in taken][:count]
        chosen += [{"cell": i, "why": "image", "score": float(sensitivity[i])} for i in ranked]
    return chosen


def describe(model: Captioner, image, baseline_features: torch.Tensor | None, config: GenerationConfig,
             cells: int = 12) -> dict:
    """Caption ``image`` and gather everything ``captioner visualize`` draws.

    Args:
        model: a single-decoder model.
        image: a PIL image.
        baseline_features: the mean image's features ``(D,)`` or ``(L, C)`` (None: no sensitivity is measured).
        config: the search's settings.
        cells: how many cells of each kind to pick.

    Returns:
        ``{"caption", "words", "tokens", "pixels", "trace", "baseline", "sensitivity", "cells", "top5", "prob"}``:
        tensors for the renderer (``pixels``: the model's view of the photo, ``(3, H, W)`` in [0, 1]).
    """
    if model.config.num_decoders > 1:
        raise ValueError("visualize follows one decoder's cells; this model is an ensemble of "
                         f"{model.config.num_decoders}: pass one of its member models instead")
    pixels = model.transform(image)  # (3, H, W) normalised
    features = model.encode(pixels.unsqueeze(0))  # (1, D) or (1, L, C)
    best = model.caption_features(features, config)[0][0]
    vocab = model.vocab
    outputs = list(best.tokens) + ([vocab.end_id] if best.finished else [])
    inputs = [vocab.start_id] + list(best.tokens)
    inputs = inputs[: len(outputs)]
    real = trace(model, features, inputs)
    base = None
    if baseline_features is not None:
        base = trace(model, baseline_features.unsqueeze(0).to(features.dtype), inputs)
    probs = real.log_probs.exp()  # (T, V)
    top = probs.topk(5, dim=1)
    std = torch.tensor(model.config.preprocess.std).view(3, 1, 1)
    mean = torch.tensor(model.config.preprocess.mean).view(3, 1, 1)
    return {
        "caption": vocab.decode(best.tokens), "tokens": outputs, "words": [vocab.itos[t] for t in outputs],
        "prob": [float(probs[t, tok]) for t, tok in enumerate(outputs)],
        "top5": [[(vocab.itos[int(i)], float(p)) for p, i in zip(top.values[t], top.indices[t])]
                 for t in range(len(outputs))],
        "pixels": (pixels * std + mean).clamp(0, 1), "trace": real, "baseline": base,
        "sensitivity": image_sensitivity(real, base) if base is not None else None,
        "cells": pick_cells(real, base, cells),
    }
