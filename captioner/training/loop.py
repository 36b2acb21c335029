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
import shutil
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from captioner.config import ModelConfig, to_json
from captioner.data import CaptionSet
from captioner.data.batching import bucket_batches, image_batches
from captioner.devices import resolve_device
from captioner.features import feature_mean
from captioner.fileio import atomic_write_text, remove_temporaries
from captioner.models.factory import complete_config
from captioner.pipeline import Captioner
from captioner.runlog import LOG_FIELDS
from captioner.training import distributed, scst
from captioner.training.checkpoints import load_training_state
from captioner.training.config import TrainConfig, planned_epochs, recipe_model_config
from captioner.training.logs import CsvLog, NoLog
from captioner.training.optim import build_optimizer, build_scheduler, set_trainable
from captioner.training.report import EPOCH_LOG, epoch_line, fmt_row, model_card, plan_line, run_summary
from captioner.training.resume import check_same_settings, restore, save_state
from captioner.training.splits import Split, load_splits, prepare_split
from captioner.training.state import (
    DRY_RUN_BATCHES,
    Run,
    TrainResult,
    autocast_dtype,
    grad_scaler,
    is_scst,
    lr_of,
    seed_everything,
    total_epochs,
    xe_epochs,
)
from captioner.training.validation import Choice, compare, validate
from captioner.training.xe import train_mode, xe_step
from captioner.vocab import Vocabulary

logger = logging.getLogger(__name__)
epoch_logger = logging.getLogger(EPOCH_LOG)  # the plan and one line per epoch (the CLI shows them unless --quiet)


def train(cfg: TrainConfig, model_cfg: ModelConfig | None = None, resume: bool = False) -> TrainResult:
    """Train a captioner from scratch; see the module docstring for what is written.

    Args:
        cfg: training settings.
        model_cfg: architecture (vocabulary size and encoder fields are filled in here); None: the shipped
            default's recipe (:func:`captioner.training.config.recipe_model_config`).
        resume: continue the run in ``cfg.out`` from its ``training_state.pt``.
    """
    seed_everything(cfg.seed)
    train_set, val_set = load_splits(cfg)
    vocab = Vocabulary.build(train_set.captions(), cfg.min_count)
    model = Captioner(complete_config(model_cfg or recipe_model_config(), len(vocab), cfg.image_size), vocab)
    return fit(model, cfg, train_set, val_set, resume=resume)


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
    ctx = distributed.from_env()
    check_trainable(model, cfg, ctx)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if ctx.is_main:
        remove_temporaries(out)
    joined = ctx.active and not torch.distributed.is_initialized()
    run = build_run(model, cfg, out, train_set, val_set, card_extra or [], ctx)
    if resume:
        check_same_settings(out, run.cfg, model.config)
        restore(run, load_training_state(out))
    elif ctx.is_main:
        to_json(run.cfg, out / "train_config.json")  # with the epochs planned (epochs None: from the step budget)
        to_json(model.config, out / "model_config.json")
    _loop(run)
    run.timings["total_s"] = time.perf_counter() - start
    result = TrainResult(out / "model", run.progress.best, run.progress.history, run.timings)
    if ctx.is_main:
        summary = run_summary(result, run.cfg, model.vocab)
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if joined:
        distributed.teardown(ctx)
    return result


def check_trainable(model: Captioner, cfg: TrainConfig, ctx: distributed.DistContext = distributed.SINGLE) -> None:
    """Refuse settings the model (or a distributed job) cannot train with."""
    if ctx.active and (cfg.scst_epochs or cfg.unfreeze_encoder):
        raise ValueError("distributed training (torchrun) covers the cross-entropy training of the decoder on cached "
                         "features; run --scst-epochs and --unfreeze-encoder in one process (without torchrun)")
    if model.config.num_decoders > 1:
        raise ValueError(f"this model is an ensemble of {model.config.num_decoders} decoders, which cannot be "
                         "trained; train or fine-tune its members, then build the ensemble with captioner ensemble")
    if cfg.attention_reg and not model.config.attention:
        raise ValueError("--attention-reg penalises attention weights: it needs a model with --inject attention")


def build_run(model: Captioner, cfg: TrainConfig, out: Path, train_set: CaptionSet, val_set: CaptionSet | None,
               card_extra: list[str], ctx: distributed.DistContext = distributed.SINGLE) -> Run:
    device = distributed.setup(ctx, resolve_device(cfg.device))
    model.to(device)
    trainable = set_trainable(model, cfg)
    t0 = time.perf_counter()
    with distributed.main_first(ctx):  # rank 0 fills the feature cache, the others then read it
        train_split = prepare_split(model, train_set, cfg, live=bool(trainable), training=True)
        val_split = (prepare_split(model, val_set, cfg, live=bool(trainable), training=False)
                     if val_set is not None else None)
    if train_split.features is not None:  # the "no particular image" of captioner visualize, saved with the model
        model.image_mean = feature_mean(train_split.features, sorted(set(train_split.image_index)))
    seed_everything(cfg.seed + 1)  # building the encoder on a cache miss draws random numbers: reseed after it
    optimizer = build_optimizer(model, trainable, cfg)
    batches = len(xe_batches(train_split, cfg, torch.Generator()))
    auto, cfg = cfg.epochs is None, dataclasses.replace(cfg, epochs=planned_epochs(cfg, batches))
    batches = min(batches, DRY_RUN_BATCHES) if cfg.dry_run else batches
    scheduler = build_scheduler(optimizer, cfg, xe_epochs(cfg) * batches)
    amp_dtype = autocast_dtype(cfg.precision, device)
    run = Run(model, cfg, out, train_split, val_split, trainable, optimizer, scheduler,
              grad_scaler(amp_dtype, device), device, card_extra, amp_dtype=amp_dtype, dist=ctx,
              net=distributed.wrap(ctx, model.decoder, device),
              loss_fn=nn.CrossEntropyLoss(ignore_index=model.vocab.pad_id, label_smoothing=cfg.label_smoothing))
    run.timings["features_s"] = time.perf_counter() - t0
    if ctx.is_main:
        epoch_logger.info(plan_line(cfg, batches, train_split, val_split, auto))
    return run


def _loop(run: Run) -> None:
    """Epochs of training and validation from the current position until the end or early stopping."""
    cfg, progress = run.cfg, run.progress
    epochs = total_epochs(cfg)
    log = _open_log(run)
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


def _open_log(run: Run):
    """``log.csv`` (and with ``tensorboard`` the same rows as TensorBoard scalars) on rank 0; nothing elsewhere."""
    if not run.dist.is_main:
        return NoLog()
    csv_log = CsvLog(run.out / "log.csv", LOG_FIELDS)
    if not run.cfg.tensorboard:
        return csv_log
    from captioner.training.logs import Logs, TensorBoardLog

    try:
        return Logs(csv_log, TensorBoardLog(run.out / "tensorboard"))
    except Exception:
        csv_log.close()
        raise


def _epoch_batches(run: Run, epoch: int) -> list[list[int]]:
    if is_scst(run.cfg, epoch):
        batches = scst.epoch_batches(run, epoch)
        return batches[:DRY_RUN_BATCHES] if run.cfg.dry_run else batches
    batches = xe_batches(run.train, run.cfg, torch.Generator().manual_seed(run.cfg.seed * 1000 + epoch))
    return batches[:DRY_RUN_BATCHES] if run.cfg.dry_run else batches


def xe_batches(split: Split, cfg: TrainConfig, generator: torch.Generator) -> list[list[int]]:
    """One cross-entropy epoch's batches of caption indices: whole images (``batch_by_image``) or length buckets."""
    if cfg.batch_by_image:
        return image_batches(split.image_index, cfg.batch_size, generator)
    return bucket_batches([len(c) for c in split.captions], cfg.batch_size, generator)


def _train_epoch(run: Run, log: CsvLog) -> float:
    """The rest of the current epoch's batches (cross-entropy or self-critical); returns the mean loss of the
    batches run now."""
    progress, cfg = run.progress, run.cfg
    batches = _epoch_batches(run, progress.epoch)
    if is_scst(cfg, progress.epoch):
        step, label = scst.epoch_step(run), f"epoch {progress.epoch} (scst)"
    else:
        train_mode(run)
        step, label = (lambda batch: xe_step(run, batch)), f"epoch {progress.epoch}"
    total, count = 0.0, 0
    todo = batches[progress.batch :]
    # disable=None: no bar when stderr is not a terminal (a log file would get one line per batch)
    bar = tqdm(todo, desc=label, unit="batch", leave=False,
               disable=None if run.dist.is_main and cfg.progress else True)
    for batch in bar:
        value, norm, extra = step(batch)
        progress.batch, progress.step = progress.batch + 1, progress.step + 1
        if math.isfinite(value) and math.isfinite(norm):  # skipped steps changed nothing: left out of the mean
            total, count = total + value, count + 1
        if progress.step % cfg.log_every == 0 or cfg.dry_run:
            log.write(step=progress.step, epoch=progress.epoch, loss=value, grad_norm=norm, lr=lr_of(run), **extra)
            bar.set_postfix(loss=f"{value:.3f}")
        if cfg.save_every and progress.step % cfg.save_every == 0 and progress.batch < len(batches):
            save_state(run)
    return total / max(count, 1)


def _end_epoch(run: Run, log: CsvLog, train_loss: float, seconds: float) -> bool:
    """Validate, log, keep the best model, step the schedule, save the state; True when training should stop."""
    progress, cfg = run.progress, run.cfg
    row = {"epoch": progress.epoch, "step": progress.step, "loss": train_loss, "lr": lr_of(run)}
    if run.val is not None:
        row.update(validate(run))
    row["elapsed_s"] = seconds
    log.write(**row)
    progress.history.append(row)
    if cfg.keep_epochs and run.dist.is_main:
        keep_epoch_model(run, row)
    choice = compare(row, progress.best, cfg.select_by, run.val is not None)
    _report_epoch(run, row, choice)
    if choice.better:
        progress.best, progress.bad_epochs = {**row, "selected_by": choice.by, "selection": choice.reason}, 0
        if run.dist.is_main:
            run.model.save_pretrained(run.out / "model", card=model_card(run, progress.best))
    else:
        progress.bad_epochs += 1
    scst_phase = is_scst(cfg, progress.epoch)
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


def _report_epoch(run: Run, row: dict, choice: Choice) -> None:
    """The epoch's line (the CLI's, on stderr) and the log's details (``-v``)."""
    if not run.dist.is_main:
        return
    epoch_logger.info(epoch_line(row, total_epochs(run.cfg), is_scst(run.cfg, row["epoch"]), choice))
    logger.info("epoch %d: %s; %s by %s", row["epoch"], fmt_row(row), "kept" if choice.better else "not kept",
                choice.reason)


def keep_epoch_model(run: Run, row: dict) -> None:
    """Write this epoch's model to ``out/epochs/NNN`` and remove those older than the last ``keep_epochs``."""
    folder = run.out / "epochs"
    run.model.save_pretrained(folder / f"{run.progress.epoch:03d}", card=model_card(run, row))
    for old in sorted(p for p in folder.iterdir() if p.name.isdigit())[: -run.cfg.keep_epochs]:
        shutil.rmtree(old)
