"""Validation after every epoch: the teacher-forced loss, and BLEU-4 and CIDEr-D (coco-caption's) of free-running
greedy captions on the validation split; and which epoch's model is the best so far."""

from __future__ import annotations

import torch

from captioner.data.batching import iterate_batches
from captioner.evaluate import caption_vectors
from captioner.features import encode_files
from captioner.generation import GenerationConfig
from captioner.metrics import score_captions
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


def is_better(row: dict, best: dict, select_by: str, has_val: bool) -> bool:
    if not best or not has_val:
        return True  # the first epoch, or without validation the latest model
    if select_by == "loss":
        return row["val_loss"] < best["val_loss"]
    return row[f"val_{select_by}"] > best[f"val_{select_by}"]
