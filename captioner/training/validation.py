"""Validation after every epoch: the teacher-forced loss, and BLEU-4 and CIDEr-D (coco-caption's) of free-running
greedy captions on the validation split; and which epoch's model is the best so far (:func:`compare`: the
``select_by`` figure, or the validation loss where that figure is about zero or tied)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from captioner.data.batching import iterate_batches
from captioner.evaluate import caption_vectors
from captioner.features import encode_files
from captioner.generation import GenerationConfig
from captioner.metrics import score_captions
from captioner.training.config import NEAR_ZERO, TIE
from captioner.training.state import Run
from captioner.training.xe import teacher_forced


@torch.no_grad()
def validate(run: Run) -> dict:
    """Teacher-forced validation loss, and BLEU-4 and CIDEr-D (coco-caption's) of free-running greedy captions."""
    model, split = run.model, run.val
    features = split.features
    if features is None:  # the encoder is training: encode the validation images with its current weights
        features = torch.from_numpy(encode_files(model, [i.path for i in split.data.items], progress=False)[0])
    decoder = model.decoder.eval()
    total, tokens = 0.0, 0
    batches = [list(range(i, min(i + 256, len(split.captions)))) for i in range(0, len(split.captions), 256)]
    for rows, inputs, targets in iterate_batches(split.image_index, split.captions, batches):
        images, index = torch.unique(rows, return_inverse=True)  # each image's features once
        logits, targets, _ = teacher_forced(decoder, decoder, features[images].to(run.device), index.to(run.device),
                                             inputs.to(run.device), targets.to(run.device), False)
        n = int((targets != model.vocab.pad_id).sum())
        total += float(run.loss_fn(logits, targets)) * n
        tokens += n
    images = sorted(set(split.image_index))
    greedy = GenerationConfig(method="greedy", max_length=run.cfg.val_max_length)
    hyps = caption_vectors(model, features[images], greedy)
    preds = [model.vocab.decode(h.tokens) for h in hyps]
    scores = score_captions(preds, [split.data.items[i].captions for i in images])
    return {"val_loss": total / max(tokens, 1), "val_bleu4": scores["bleu4"], "val_cider": scores["cider"]}


@dataclass(frozen=True)
class Choice:
    """One epoch compared with the best so far.

    Attributes:
        better: this epoch's model replaces the best one.
        by: the criterion that decided: the ``select_by`` figure (``cider``, ``bleu4``), or ``loss`` (asked for, or
            the fallback when the figure is about zero or tied).
        reason: the comparison in words, for the log and ``summary.json``.
    """

    better: bool
    by: str
    reason: str


NAMES = {"cider": "CIDEr-D", "bleu4": "BLEU-4", "loss": "loss"}


def compare(row: dict, best: dict, select_by: str, has_val: bool) -> Choice:
    """Whether the epoch of ``row`` beats ``best`` (the best epoch's row so far, empty at first) on ``select_by``.

    A BLEU-4 or CIDEr-D below :data:`NEAR_ZERO` in both epochs (no 4-gram matched, as on a tiny validation set early
    on) or within :data:`TIE` of each other says nothing about which model is better: the lower validation loss
    decides then. Without validation the latest epoch is kept.
    """
    if not has_val:
        return Choice(True, "latest", "no validation: the latest epoch is kept")
    if not best:
        return Choice(True, select_by, "the first epoch")
    name = NAMES[select_by]
    if select_by != "loss":
        new, old = row[f"val_{select_by}"], best[f"val_{select_by}"]
        if max(new, old) < NEAR_ZERO:
            why = f"{name} is about zero ({new:.3g} vs {old:.3g} at epoch {best['epoch']})"
        elif abs(new - old) <= TIE:
            why = f"{name} is tied ({new:.4f} vs {old:.4f} at epoch {best['epoch']})"
        else:
            return Choice(new > old, select_by, f"{name} {new:.4f} vs {old:.4f} at epoch {best['epoch']}")
        better = row["val_loss"] < best["val_loss"]
        return Choice(better, "loss", f"{why}: the validation loss decides ({row['val_loss']:.4f} vs "
                                      f"{best['val_loss']:.4f})")
    new, old = row["val_loss"], best["val_loss"]
    return Choice(new < old, "loss", f"validation loss {new:.4f} vs {old:.4f} at epoch {best['epoch']}")

