"""The cross-entropy training step: teacher-forced logits of a batch of captions (packed to the real positions where
the decoder can), cross-entropy ignoring ``<pad>`` (plus the doubly stochastic attention penalty when asked for),
the distributed share of a global batch, and the optimisation step of :mod:`captioner.training.state`.

The step reads the run's :class:`~captioner.training.state.StepSettings` (clipping, attention penalty, mirrored
features, seed), never the whole training configuration.
"""

from __future__ import annotations

import torch
from PIL import ImageOps
from torch import nn

from captioner.data.batching import iterate_batches
from captioner.images import load_image
from captioner.models.attention import doubly_stochastic_penalty
from captioner.training import distributed
from captioner.training.optim import encoder_train_mode
from captioner.training.splits import mirror_draw
from captioner.training.state import Run, apply_gradients


def xe_step(run: Run, batch: list[int]) -> tuple[float, float, dict]:
    """One teacher-forced step on a batch of caption indices: ``(loss, gradient norm, extra log fields)``."""
    rows, inputs, targets = next(iterate_batches(run.train.image_index, run.train.captions, [batch]))
    value, norm = train_step(run, rows, inputs, targets)  # rows (B,), inputs and targets (B, T)
    return value, norm, {}


def teacher_forced(decoder: nn.Module, module: nn.Module, features: torch.Tensor, image_index: torch.Tensor,
                    inputs: torch.Tensor, targets: torch.Tensor, attention: bool):
    """Teacher-forced logits with their targets, ``(N, V)`` and ``(N,)``, and the attention weights ``(B, T, L)``
    when ``attention`` (else None). ``decoder`` is what is called (DDP's wrapper or the module itself); a decoder
    that packs its logits gives the real positions only, others ``(B * T, V)`` with padding (which the loss
    ignores)."""
    extra = {"packed": True} if getattr(module, "packs_logits", False) else {}
    if attention:
        logits, weights = decoder(features, inputs, image_index=image_index, return_attention=True, **extra)
    else:
        logits, weights = decoder(features, inputs, image_index=image_index, **extra), None
    if extra:
        logits, positions = logits  # (N, V), (N,)
        return logits, targets.reshape(-1).index_select(0, positions), weights
    return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), weights


def train_mode(run: Run) -> None:
    run.model.decoder.train()
    if run.trainable_encoder:
        encoder_train_mode(run.model, run.trainable_encoder, run.step_settings.train_bn)


def train_step(run: Run, rows: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """One optimisation step; returns the loss (cross-entropy, plus the attention penalty when asked for) and the
    gradient norm before clipping."""
    settings = run.step_settings
    # (B,) or None, drawn for the global batch
    mirror = mirror_draw(settings.flip_features, settings.seed, run.progress.step, len(rows))
    share = 1.0
    if run.dist.active:  # this process's captions of the global batch; see _shard_weight
        mine, empty = distributed.shard(run.dist, len(rows))
        share = _shard_weight(run, targets, mine, empty)
        rows, inputs, targets = rows[mine], inputs[mine], targets[mine]
        mirror = mirror[mine] if mirror is not None else None
    inputs, targets = inputs.to(run.device), targets.to(run.device)
    features, image_index = _train_features(run, rows, mirror)
    penalty = run.step_settings.attention_reg
    decoder = run.net or run.model.decoder
    with torch.autocast(device_type=run.device.type, dtype=run.amp_dtype or torch.float32,
                        enabled=run.amp_dtype is not None):
        logits, targets, weights = teacher_forced(decoder, run.model.decoder, features, image_index, inputs,
                                                   targets, bool(penalty))
        loss = run.loss_fn(logits.float(), targets)
        if weights is not None:
            loss = loss + penalty * doubly_stochastic_penalty(weights)  # weights (B, T, L)
    if not run.dist.active:
        return loss.item(), apply_gradients(run, loss)
    loss = loss * share
    norm = apply_gradients(run, loss)
    return distributed.reduce_mean(run.dist, loss), norm


def _shard_weight(run: Run, targets: torch.Tensor, mine: torch.Tensor, empty: bool) -> float:
    """Scale of a process's mean loss so that DDP's average of the processes' gradients is the gradient of the
    global batch's mean loss: ``world * own tokens / global tokens`` (0 for a process left without a caption).

    Args:
        targets: the global batch's target ids ``(B, T)``.
        mine: this process's rows of it ``(B_r,)``.
    """
    if empty:
        return 0.0
    pad = run.model.vocab.pad_id
    return run.dist.world * int((targets[mine] != pad).sum()) / max(int((targets != pad).sum()), 1)


def _train_features(run: Run, rows: torch.Tensor, mirror: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Image features of a batch and the feature row of each caption: cached features of each distinct image once
    (``(N, ...)`` with an image index ``(B,)``), or one row per caption ``(B, ...)`` (index None) when the images
    are mirrored per caption (``flip_features``, a seeded half) or computed by the (partly trainable) encoder."""
    if run.train.features is not None:
        if mirror is not None:
            return run.train.vectors(rows, mirror).to(run.device), None
        images, index = torch.unique(rows, return_inverse=True)
        return run.train.vectors(images).to(run.device), index.to(run.device)
    side = run.model.config.preprocess.resize
    images = [load_image(run.train.data.items[int(i)].path, min_side=side) for i in rows]
    if mirror is not None:
        images = [ImageOps.mirror(img) if flip else img for img, flip in zip(images, mirror.tolist())]
    pixels = torch.stack([run.model.transform(img) for img in images])  # (B, 3, H, W)
    return run.model.encoder(pixels.to(run.device).contiguous(memory_format=torch.channels_last)), None
