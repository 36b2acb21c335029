"""The training loop: teacher forcing, cross-entropy ignoring ``<pad>``, Adam, gradient-norm clipping, and every
epoch a validation loss plus BLEU-4 and CIDEr-D (coco-caption's, from :mod:`captioner.metrics`) of free-running
greedy captions on a fixed validation subset; the best model (``select_by``) is saved as a model directory in
``<out>/model``.

Run directory layout: ``train_config.json``, ``model_config.json``, ``log.csv`` (step/epoch/loss/val metrics),
``summary.json`` and ``model/`` (the best model so far).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from captioner import encoders
from captioner.checkpoint import CsvLog, atomic_write_text, files_sha256
from captioner.config import ModelConfig, TrainConfig, to_json
from captioner.data import CaptionSet, load_dataset
from captioner.data.base import report_bad_images
from captioner.data.batching import bucket_batches, caption_pairs, iterate_batches
from captioner.evaluate import caption_vectors
from captioner.features import image_features
from captioner.generate import GenerationConfig
from captioner.metrics import score_captions
from captioner.model import Captioner
from captioner.vocab import Vocabulary

logger = logging.getLogger(__name__)

LOG_FIELDS = ["step", "epoch", "loss", "grad_norm", "val_loss", "val_bleu4", "val_cider", "elapsed_s"]
DRY_RUN_IMAGES, DRY_RUN_BATCHES = 16, 2


@dataclass
class Split:
    """A split ready for training: its captions and cached image vectors."""

    data: CaptionSet
    features: torch.Tensor  # (N, D)
    image_index: list[int] = field(default_factory=list)  # caption → image row
    captions: list[list[int]] = field(default_factory=list)  # encoded captions


@dataclass
class TrainResult:
    """What a run produced."""

    model_dir: Path
    best: dict
    history: list[dict]
    timings: dict


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU runs are then repeatable)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(cfg: TrainConfig, model_cfg: ModelConfig | None = None) -> TrainResult:
    """Train a captioner on a dataset; see the module docstring for what is written.

    Args:
        cfg: training settings.
        model_cfg: architecture (vocabulary size and encoder fields are filled in here).
    """
    start = time.perf_counter()
    seed_everything(cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    train_set, val_set = _load_splits(cfg)
    vocab = Vocabulary.build(train_set.captions(), cfg.min_count)
    model = Captioner(_complete_model_config(model_cfg or ModelConfig(), len(vocab)), vocab)
    to_json(cfg, out / "train_config.json")
    to_json(model.config, out / "model_config.json")
    t0 = time.perf_counter()
    train_split = _prepare(model, train_set, cfg)
    val_split = _prepare(model, val_set, cfg) if val_set is not None else None
    timings = {"features_s": time.perf_counter() - t0}
    seed_everything(cfg.seed + 1)  # building the encoder on a cache miss draws random numbers: reseed after it
    result = _fit(model, train_split, val_split, cfg, out, timings)
    result.timings["total_s"] = time.perf_counter() - start
    atomic_write_text(out / "summary.json", json.dumps(_summary(result, cfg, vocab), indent=2) + "\n")
    return result


def _load_splits(cfg: TrainConfig) -> tuple[CaptionSet, CaptionSet | None]:
    train_set = load_dataset(cfg.data, cfg.train_split, cfg.data_format, cfg.images)
    val_set = load_dataset(cfg.data, cfg.val_split, cfg.data_format, cfg.images) if cfg.val_split else None
    if cfg.dry_run:
        train_set = train_set.subset(DRY_RUN_IMAGES)
        val_set = val_set.subset(DRY_RUN_IMAGES // 2) if val_set is not None else None
    elif val_set is not None and cfg.val_max_images:
        val_set = val_set.subset(cfg.val_max_images)
    if not len(train_set):
        raise ValueError(f"{cfg.data}: split {cfg.train_split!r} has no images")
    return train_set, val_set


def _complete_model_config(model_cfg: ModelConfig, vocab_size: int) -> ModelConfig:
    spec = encoders.get_spec(model_cfg.encoder)
    return dataclasses.replace(
        model_cfg, vocab_size=vocab_size, encoder_dim=spec.out_dim, preprocess=spec.preprocess
    )


def _prepare(model: Captioner, data: CaptionSet, cfg: TrainConfig) -> Split:
    """Encode a split's images (through the cache) and its captions; unreadable images are skipped and counted."""
    feats, failed = image_features(model, [item.path for item in data.items], cache_dir=cfg.cache_dir)
    report_bad_images(data, {str(data.items[i].path): reason for i, reason in failed.items()}, cfg.on_bad_image)
    index, captions = caption_pairs(data, model.vocab, cfg.max_caption_len, skip=set(failed))
    if not captions:
        raise ValueError(f"{data.root}: split {data.split!r} has no usable captions")
    return Split(data=data, features=feats, image_index=index, captions=captions)


def _fit(model: Captioner, train_split: Split, val_split: Split | None, cfg: TrainConfig, out: Path,
         timings: dict) -> TrainResult:
    decoder = model.decoder
    optimizer = torch.optim.Adam(decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss(ignore_index=model.vocab.pad_id)
    log = CsvLog(out / "log.csv", LOG_FIELDS)
    history: list[dict] = []
    best: dict = {}
    step, epochs = 0, 1 if cfg.dry_run else cfg.epochs
    try:
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            step, train_loss = _train_epoch(decoder, optimizer, loss_fn, train_split, cfg, epoch, step, log)
            timings.setdefault("epoch_s", []).append(time.perf_counter() - t0)
            row = {"epoch": epoch, "step": step, "loss": train_loss}
            if val_split is not None:
                row.update(_validate(model, loss_fn, val_split, cfg))
            row["elapsed_s"] = time.perf_counter() - t0
            log.write(**row)
            history.append(row)
            logger.info("epoch %d: %s", epoch, _fmt_row(row))
            if _is_better(row, best, cfg.select_by, val_split is not None):
                best = dict(row)
                model.save_pretrained(out / "model", card=_card(model, cfg, row))
    finally:
        log.close()
    timings["captions_per_s"] = [len(train_split.captions) / s for s in timings.get("epoch_s", [])]
    return TrainResult(model_dir=out / "model", best=best, history=history, timings=timings)


def _train_epoch(decoder, optimizer, loss_fn, split: Split, cfg: TrainConfig, epoch: int, step: int,
                 log: CsvLog) -> tuple[int, float]:
    """One pass over the training captions; returns the new global step and the mean loss."""
    decoder.train()
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    batches = bucket_batches([len(c) for c in split.captions], cfg.batch_size, generator)
    if cfg.dry_run:
        batches = batches[:DRY_RUN_BATCHES]
    total, count = 0.0, 0
    bar = tqdm(iterate_batches(split.image_index, split.captions, batches), total=len(batches),
               desc=f"epoch {epoch}", unit="batch", leave=False)
    for rows, inputs, targets in bar:
        logits = decoder(split.features[rows], inputs)  # (B, T, V)
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = _clip(decoder, cfg.clip_norm)
        optimizer.step()
        step += 1
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value} at step {step}; lower --lr or use --clip-norm")
        total, count = total + value, count + 1
        if step % 50 == 0 or cfg.dry_run:
            log.write(step=step, epoch=epoch, loss=value, grad_norm=norm)
            bar.set_postfix(loss=f"{value:.3f}")
    return step, total / max(count, 1)


def _clip(module: nn.Module, clip_norm: float) -> float:
    """Clip the global gradient norm (0: no clipping); returns the norm before clipping."""
    max_norm = clip_norm if clip_norm > 0 else float("inf")
    return float(torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm))


@torch.no_grad()
def _validate(model: Captioner, loss_fn, split: Split, cfg: TrainConfig) -> dict:
    """Teacher-forced validation loss, and BLEU-4 and CIDEr-D (coco-caption's) of free-running greedy captions."""
    decoder = model.decoder.eval()
    total, tokens = 0.0, 0
    batches = [list(range(i, min(i + 256, len(split.captions)))) for i in range(0, len(split.captions), 256)]
    for rows, inputs, targets in iterate_batches(split.image_index, split.captions, batches):
        logits = decoder(split.features[rows], inputs)  # (B, T, V)
        n = int((targets != model.vocab.pad_id).sum())
        total += float(loss_fn(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))) * n
        tokens += n
    images = sorted(set(split.image_index))
    greedy = GenerationConfig(method="greedy", max_length=cfg.val_max_length)
    hyps = caption_vectors(model, split.features[images], greedy)
    preds = [model.vocab.decode(h.tokens) for h in hyps]
    scores = score_captions(preds, [split.data.items[i].captions for i in images])
    return {"val_loss": total / max(tokens, 1), "val_bleu4": scores["bleu4"], "val_cider": scores["cider"]}


def _is_better(row: dict, best: dict, select_by: str, has_val: bool) -> bool:
    if not best:
        return True
    if not has_val:
        return True  # without validation, keep the latest model
    if select_by == "loss":
        return row["val_loss"] < best["val_loss"]
    return row[f"val_{select_by}"] > best[f"val_{select_by}"]


def _fmt_row(row: dict) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def _card(model: Captioner, cfg: TrainConfig, row: dict) -> str:
    """Model card markdown: data, command, architecture and the validation figures of this epoch."""
    c = model.config
    data = Path(cfg.data)
    data_files = [p for p in [data / "captions.txt", *sorted((data / "splits").glob("*.txt"))] if p.is_file()]
    lines = [
        "# captioner model",
        "",
        f"- Encoder: `{c.encoder}` (frozen, {c.encoder_dim}-d pooled vector)",
        f"- Decoder: {c.cell.upper()}, {c.num_layers} layer(s), hidden {c.hidden_dim}, embedding {c.embed_dim}, "
        f"image projection {c.image_proj_dim}, injection `{c.inject}`, dropout {c.dropout}",
        f"- Vocabulary: {c.vocab_size} tokens (min count {cfg.min_count})",
        f"- Data: `{cfg.data}` (train split `{cfg.train_split}`, validation split `{cfg.val_split}`)",
        f"- Data sha256 (captions + split files): `{files_sha256(data_files) if data_files else 'n/a'}`",
        f"- Command: `{cfg.command or 'Python API: captioner.train.train(...)'}`",
        f"- Seed: {cfg.seed}; epochs {cfg.epochs}, batch {cfg.batch_size}, lr {cfg.lr}, clip-norm {cfg.clip_norm}",
        "",
        f"Selected at epoch {row['epoch']} by validation `{cfg.select_by}`: " + _fmt_row(row),
        "",
    ]
    return "\n".join(lines)


def _summary(result: TrainResult, cfg: TrainConfig, vocab: Vocabulary) -> dict:
    return {
        "model_dir": str(result.model_dir),
        "best": result.best,
        "history": result.history,
        "timings": result.timings,
        "vocab_size": len(vocab),
        "train_config": dataclasses.asdict(cfg),
    }
