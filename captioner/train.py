"""The training loop: teacher forcing, cross-entropy ignoring ``<pad>``, Adam, gradient-norm clipping, a
learning-rate schedule, and every epoch a validation loss plus BLEU-4 and CIDEr-D (coco-caption's) of free-running
greedy captions on a fixed validation subset; the best model (``select_by``) is saved as a model directory in
``<out>/model``, with early stopping after ``patience`` epochs without improvement.

A run can be resumed exactly: ``<out>/training_state.pt`` holds the weights, optimizer, scheduler, grad scaler,
random states and loop position, written atomically every ``save_every`` steps and at each epoch's end. On the
CPU with a seed, a run killed and resumed ends with the same weights as one never interrupted.

Run directory: ``train_config.json``, ``model_config.json``, ``log.csv``, ``summary.json``, ``model/`` (best),
``training_state.pt`` and ``checkpoints/`` (the last few states).
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
from PIL import ImageOps
from torch import nn
from tqdm.auto import tqdm

from captioner import encoders, scst
from captioner.checkpoint import CsvLog, atomic_write_text, load_training_state
from captioner.config import ModelConfig, TrainConfig, to_json
from captioner.data import CaptionSet
from captioner.data.batching import bucket_batches, iterate_batches
from captioner.evaluate import caption_vectors
from captioner.features import encode_files
from captioner.generate import GenerationConfig
from captioner.images import load_image
from captioner.metrics import score_captions
from captioner.model import Captioner, resolve_device
from captioner.optim import build_optimizer, build_scheduler, encoder_train_mode, set_trainable
from captioner.resume import restore, save_state
from captioner.runreport import fmt_row, model_card, run_summary
from captioner.splits import Split, load_splits, mirror_draw, prepare_split
from captioner.vocab import Vocabulary

logger = logging.getLogger(__name__)

LOG_FIELDS = ["step", "epoch", "loss", "grad_norm", "lr", "val_loss", "val_bleu4", "val_cider", "elapsed_s",
              "reward"]
DRY_RUN_BATCHES = 2


@dataclass
class Progress:
    """Where the loop is; saved in the training state."""

    epoch: int = 1
    batch: int = 0  # batches of ``epoch`` already done
    step: int = 0
    best: dict = field(default_factory=dict)
    bad_epochs: int = 0
    history: list = field(default_factory=list)


@dataclass
class Run:
    """Everything one training run works with."""

    model: Captioner
    cfg: TrainConfig
    out: Path
    train: Split
    val: Split | None
    trainable_encoder: list
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    device: torch.device
    card_extra: list[str]
    progress: Progress = field(default_factory=Progress)
    loss_fn: nn.Module = field(default_factory=lambda: nn.CrossEntropyLoss(ignore_index=0))
    timings: dict = field(default_factory=dict)
    reward: object = None  # SCST reward (built when self-critical training starts)
    log_fields: list[str] = field(default_factory=lambda: list(LOG_FIELDS))

    @property
    def amp(self) -> bool:
        return self.device.type == "cuda"


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


def train(cfg: TrainConfig, model_cfg: ModelConfig | None = None, resume: bool = False) -> TrainResult:
    """Train a captioner from scratch; see the module docstring for what is written.

    Args:
        cfg: training settings.
        model_cfg: architecture (vocabulary size and encoder fields are filled in here).
        resume: continue the run in ``cfg.out`` from its ``training_state.pt``.
    """
    seed_everything(cfg.seed)
    train_set, val_set = load_splits(cfg)
    vocab = Vocabulary.build(train_set.captions(), cfg.min_count)
    model = Captioner(_complete_model_config(model_cfg or ModelConfig(), len(vocab)), vocab)
    return fit(model, cfg, train_set, val_set, resume=resume)


def _complete_model_config(model_cfg: ModelConfig, vocab_size: int) -> ModelConfig:
    spec = encoders.get_spec(model_cfg.encoder)
    return dataclasses.replace(model_cfg, vocab_size=vocab_size, preprocess=spec.preprocess,
                               encoder_dim=encoders.pooled_dim(spec.out_dim, model_cfg.pooling))


def fit(model: Captioner, cfg: TrainConfig, train_set: CaptionSet, val_set: CaptionSet | None,
        resume: bool = False, card_extra: list[str] | None = None) -> TrainResult:
    """Train ``model`` on ``train_set`` (shared by ``train`` and ``finetune``).

    Args:
        model: the model to train (its vocabulary encodes the captions).
        cfg: training settings.
        train_set: training split.
        val_set: validation split (None: no validation; the last epoch's model is kept).
        resume: continue from ``cfg.out/training_state.pt``.
        card_extra: lines added to the model card (e.g. the base model and the words added).
    """
    start = time.perf_counter()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    run = _build_run(model, cfg, out, train_set, val_set, card_extra or [])
    if resume:
        restore(run, load_training_state(out))
    else:
        to_json(cfg, out / "train_config.json")
        to_json(model.config, out / "model_config.json")
    _loop(run)
    run.timings["total_s"] = time.perf_counter() - start
    result = TrainResult(out / "model", run.progress.best, run.progress.history, run.timings)
    atomic_write_text(out / "summary.json", json.dumps(run_summary(result, cfg, model.vocab), indent=2) + "\n")
    return result


def _build_run(model: Captioner, cfg: TrainConfig, out: Path, train_set: CaptionSet, val_set: CaptionSet | None,
               card_extra: list[str]) -> Run:
    device = resolve_device(cfg.device)
    model.to(device)
    trainable = set_trainable(model, cfg)
    t0 = time.perf_counter()
    train_split = prepare_split(model, train_set, cfg, live=bool(trainable), training=True)
    val_split = (prepare_split(model, val_set, cfg, live=bool(trainable), training=False)
                 if val_set is not None else None)
    seed_everything(cfg.seed + 1)  # building the encoder on a cache miss draws random numbers: reseed after it
    optimizer = build_optimizer(model, trainable, cfg)
    batches = len(bucket_batches([len(c) for c in train_split.captions], cfg.batch_size, torch.Generator()))
    epochs = xe_epochs(cfg)
    scheduler = build_scheduler(optimizer, cfg, epochs * (min(batches, DRY_RUN_BATCHES) if cfg.dry_run else batches))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    run = Run(model, cfg, out, train_split, val_split, trainable, optimizer, scheduler, scaler, device, card_extra,
              loss_fn=nn.CrossEntropyLoss(ignore_index=model.vocab.pad_id, label_smoothing=cfg.label_smoothing))
    run.timings["features_s"] = time.perf_counter() - t0
    return run


def _loop(run: Run) -> None:
    """Epochs of training and validation from the current position until the end or early stopping."""
    cfg, progress = run.cfg, run.progress
    epochs = total_epochs(cfg)
    log = CsvLog(run.out / "log.csv", LOG_FIELDS)
    try:
        while progress.epoch <= epochs:
            t0 = time.perf_counter()
            train_loss = _train_epoch(run, log)
            run.timings.setdefault("epoch_s", []).append(time.perf_counter() - t0)
            if _end_epoch(run, log, train_loss, time.perf_counter() - t0):
                break
    finally:
        log.close()
    run.timings["captions_per_s"] = [len(run.train.captions) / s for s in run.timings.get("epoch_s", [])]


def xe_epochs(cfg: TrainConfig) -> int:
    """Cross-entropy epochs (one in a dry run)."""
    return min(cfg.epochs, 1) if cfg.dry_run else cfg.epochs


def total_epochs(cfg: TrainConfig) -> int:
    """Cross-entropy epochs plus self-critical epochs (one of each in a dry run)."""
    return xe_epochs(cfg) + (min(cfg.scst_epochs, 1) if cfg.dry_run else cfg.scst_epochs)


def _is_scst(cfg: TrainConfig, epoch: int) -> bool:
    return epoch > xe_epochs(cfg)


def _epoch_batches(run: Run, epoch: int) -> list[list[int]]:
    if _is_scst(run.cfg, epoch):
        batches = scst.epoch_batches(run, epoch)
        return batches[:DRY_RUN_BATCHES] if run.cfg.dry_run else batches
    generator = torch.Generator().manual_seed(run.cfg.seed * 1000 + epoch)
    batches = bucket_batches([len(c) for c in run.train.captions], run.cfg.batch_size, generator)
    return batches[:DRY_RUN_BATCHES] if run.cfg.dry_run else batches


def _train_epoch(run: Run, log: CsvLog) -> float:
    """The rest of the current epoch's batches (cross-entropy or self-critical); returns the mean loss of the
    batches run now."""
    progress, cfg = run.progress, run.cfg
    batches = _epoch_batches(run, progress.epoch)
    if _is_scst(cfg, progress.epoch):
        step, label = scst.epoch_step(run), f"epoch {progress.epoch} (scst)"
    else:
        _train_mode(run)
        step, label = (lambda batch: _xe_step(run, batch)), f"epoch {progress.epoch}"
    total, count = 0.0, 0
    todo = batches[progress.batch :]
    bar = tqdm(todo, desc=label, unit="batch", leave=False)
    for batch in bar:
        value, norm, extra = step(batch)
        progress.batch, progress.step = progress.batch + 1, progress.step + 1
        total, count = total + value, count + 1
        if progress.step % cfg.log_every == 0 or cfg.dry_run:
            log.write(step=progress.step, epoch=progress.epoch, loss=value, grad_norm=norm, lr=lr_of(run), **extra)
            bar.set_postfix(loss=f"{value:.3f}")
        if cfg.save_every and progress.step % cfg.save_every == 0 and progress.batch < len(batches):
            save_state(run)
    return total / max(count, 1)


def _xe_step(run: Run, batch: list[int]) -> tuple[float, float, dict]:
    """One teacher-forced step on a batch of caption indices: ``(loss, gradient norm, extra log fields)``."""
    rows, inputs, targets = next(iterate_batches(run.train.image_index, run.train.captions, [batch]))
    value, norm = _train_step(run, rows, inputs, targets)
    return value, norm, {}


def _train_mode(run: Run) -> None:
    run.model.decoder.train()
    if run.trainable_encoder:
        encoder_train_mode(run.model, run.trainable_encoder, run.cfg.train_bn)


def _train_step(run: Run, rows: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """One optimisation step; returns the loss and the gradient norm before clipping."""
    inputs, targets = inputs.to(run.device), targets.to(run.device)
    with torch.autocast(device_type=run.device.type, dtype=torch.float16, enabled=run.amp):
        logits = run.model.decoder(_train_features(run, rows), inputs)  # (B, T, V)
        loss = run.loss_fn(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
    return loss.item(), apply_gradients(run, loss)


def apply_gradients(run: Run, loss: torch.Tensor) -> float:
    """Backpropagate ``loss``, clip the global gradient norm, step the optimizer and the per-step schedule.

    Returns:
        The gradient norm before clipping.
    """
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"training loss became {value} at step {run.progress.step + 1}; lower --lr or "
                                 "use --clip-norm")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    max_norm = run.cfg.clip_norm if run.cfg.clip_norm > 0 else float("inf")
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if not _is_scst(run.cfg, run.progress.epoch) and not isinstance(
            run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        run.scheduler.step()  # the schedule covers the cross-entropy epochs; SCST runs at a constant scst_lr
    return norm


def _train_features(run: Run, rows: torch.Tensor) -> torch.Tensor:
    """Image vectors ``(B, D)`` for a batch: cached, or computed by the (partly trainable) encoder; with
    ``flip_features`` a seeded half of the images are mirrored."""
    mirror = mirror_draw(run.cfg, run.progress.step, len(rows))  # (B,) or None
    if run.train.features is not None:
        return run.train.vectors(rows, mirror).to(run.device)
    images = [load_image(run.train.data.items[int(i)].path) for i in rows]
    if mirror is not None:
        images = [ImageOps.mirror(img) if flip else img for img, flip in zip(images, mirror.tolist())]
    pixels = torch.stack([run.model.transform(img) for img in images])  # (B, 3, H, W)
    return run.model.encoder(pixels.to(run.device).contiguous(memory_format=torch.channels_last))


def lr_of(run: Run) -> float:
    return float(run.optimizer.param_groups[0]["lr"])


def _end_epoch(run: Run, log: CsvLog, train_loss: float, seconds: float) -> bool:
    """Validate, log, keep the best model, step the schedule, save the state; True when training should stop."""
    progress, cfg = run.progress, run.cfg
    row = {"epoch": progress.epoch, "step": progress.step, "loss": train_loss, "lr": lr_of(run)}
    if run.val is not None:
        row.update(_validate(run))
    row["elapsed_s"] = seconds
    log.write(**row)
    progress.history.append(row)
    logger.info("epoch %d: %s", progress.epoch, fmt_row(row))
    if _is_better(row, progress.best, cfg.select_by, run.val is not None):
        progress.best, progress.bad_epochs = dict(row), 0
        run.model.save_pretrained(run.out / "model", card=model_card(run, row))
    else:
        progress.bad_epochs += 1
    scst_phase = _is_scst(cfg, progress.epoch)
    if isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and run.val is not None and not scst_phase:
        run.scheduler.step(row["val_loss"] if cfg.select_by == "loss" else row[f"val_{cfg.select_by}"])
    progress.epoch, progress.batch = progress.epoch + 1, 0
    stop = bool(cfg.patience and progress.bad_epochs >= cfg.patience)
    if stop:
        logger.info("early stop: %d epoch(s) without a better validation %s", progress.bad_epochs, cfg.select_by)
        if cfg.scst_epochs and not scst_phase:  # end the cross-entropy phase only: self-critical training follows
            progress.epoch, stop = xe_epochs(cfg) + 1, False
    save_state(run)
    return stop


@torch.no_grad()
def _validate(run: Run) -> dict:
    """Teacher-forced validation loss, and BLEU-4 and CIDEr-D (coco-caption's) of free-running greedy captions."""
    model, split = run.model, run.val
    features = split.features
    if features is None:  # the encoder is training: encode the validation images with its current weights
        features = torch.from_numpy(encode_files(model, [i.path for i in split.data.items], progress=False)[0])
    decoder = model.decoder.eval()
    total, tokens = 0.0, 0
    batches = [list(range(i, min(i + 256, len(split.captions)))) for i in range(0, len(split.captions), 256)]
    for rows, inputs, targets in iterate_batches(split.image_index, split.captions, batches):
        logits = decoder(features[rows].to(run.device), inputs.to(run.device))  # (B, T, V)
        targets = targets.to(run.device)
        n = int((targets != model.vocab.pad_id).sum())
        total += float(run.loss_fn(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))) * n
        tokens += n
    images = sorted(set(split.image_index))
    greedy = GenerationConfig(method="greedy", max_length=run.cfg.val_max_length)
    hyps = caption_vectors(model, features[images], greedy)
    preds = [model.vocab.decode(h.tokens) for h in hyps]
    scores = score_captions(preds, [split.data.items[i].captions for i in images])
    return {"val_loss": total / max(tokens, 1), "val_bleu4": scores["bleu4"], "val_cider": scores["cider"]}


def _is_better(row: dict, best: dict, select_by: str, has_val: bool) -> bool:
    if not best or not has_val:
        return True  # the first epoch, or without validation the latest model
    if select_by == "loss":
        return row["val_loss"] < best["val_loss"]
    return row[f"val_{select_by}"] > best[f"val_{select_by}"]
