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

import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch
from PIL import ImageOps
from torch import nn
from tqdm.auto import tqdm

from captioner import distributed, scst
from captioner.attention import doubly_stochastic_penalty
from captioner.checkpoint import CsvLog, atomic_write_text, load_training_state, remove_temporaries
from captioner.config import ModelConfig, TrainConfig, to_json
from captioner.data import CaptionSet
from captioner.data.batching import bucket_batches, image_batches, iterate_batches
from captioner.evaluate import caption_vectors
from captioner.features import encode_files, feature_mean
from captioner.generate import GenerationConfig
from captioner.images import load_image
from captioner.metrics import score_captions
from captioner.model import Captioner, complete_config, resolve_device
from captioner.optim import build_optimizer, build_scheduler, encoder_train_mode, set_trainable
from captioner.resume import restore, save_state
from captioner.runreport import fmt_row, model_card, run_summary
from captioner.runstate import (
    DRY_RUN_BATCHES, LOG_FIELDS, Run, TrainResult, apply_gradients, autocast_dtype, grad_scaler, is_scst, lr_of,
    seed_everything, total_epochs, xe_epochs,
)
from captioner.splits import Split, load_splits, mirror_draw, prepare_split
from captioner.vocab import Vocabulary

logger = logging.getLogger(__name__)


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
    model = Captioner(complete_config(model_cfg or ModelConfig(), len(vocab), cfg.image_size), vocab)
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
    run = _build_run(model, cfg, out, train_set, val_set, card_extra or [], ctx)
    if resume:
        restore(run, load_training_state(out))
    elif ctx.is_main:
        to_json(cfg, out / "train_config.json")
        to_json(model.config, out / "model_config.json")
    _loop(run)
    run.timings["total_s"] = time.perf_counter() - start
    result = TrainResult(out / "model", run.progress.best, run.progress.history, run.timings)
    if ctx.is_main:
        atomic_write_text(out / "summary.json", json.dumps(run_summary(result, cfg, model.vocab), indent=2) + "\n")
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


def _build_run(model: Captioner, cfg: TrainConfig, out: Path, train_set: CaptionSet, val_set: CaptionSet | None,
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
    epochs = xe_epochs(cfg)
    scheduler = build_scheduler(optimizer, cfg, epochs * (min(batches, DRY_RUN_BATCHES) if cfg.dry_run else batches))
    amp_dtype = autocast_dtype(cfg.precision, device)
    run = Run(model, cfg, out, train_split, val_split, trainable, optimizer, scheduler,
              grad_scaler(amp_dtype, device), device, card_extra, amp_dtype=amp_dtype, dist=ctx,
              net=distributed.wrap(ctx, model.decoder, device),
              loss_fn=nn.CrossEntropyLoss(ignore_index=model.vocab.pad_id, label_smoothing=cfg.label_smoothing))
    run.timings["features_s"] = time.perf_counter() - t0
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
        return _NoLog()
    csv_log = CsvLog(run.out / "log.csv", LOG_FIELDS)
    if not run.cfg.tensorboard:
        return csv_log
    from captioner.tblog import Logs, TensorBoardLog

    try:
        return Logs(csv_log, TensorBoardLog(run.out / "tensorboard"))
    except Exception:
        csv_log.close()
        raise


class _NoLog:
    """The log of a distributed job's ranks other than 0 (rank 0 writes ``log.csv``)."""

    def write(self, **row) -> None:
        pass

    def close(self) -> None:
        pass


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
        _train_mode(run)
        step, label = (lambda batch: _xe_step(run, batch)), f"epoch {progress.epoch}"
    total, count = 0.0, 0
    todo = batches[progress.batch :]
    # disable=None: no bar when stderr is not a terminal (a log file would get one line per batch)
    bar = tqdm(todo, desc=label, unit="batch", leave=False, disable=None if run.dist.is_main else True)
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


def _xe_step(run: Run, batch: list[int]) -> tuple[float, float, dict]:
    """One teacher-forced step on a batch of caption indices: ``(loss, gradient norm, extra log fields)``."""
    rows, inputs, targets = next(iterate_batches(run.train.image_index, run.train.captions, [batch]))
    value, norm = _train_step(run, rows, inputs, targets)  # rows (B,), inputs and targets (B, T)
    return value, norm, {}


def _teacher_forced(decoder: nn.Module, module: nn.Module, features: torch.Tensor, image_index: torch.Tensor,
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


def _train_mode(run: Run) -> None:
    run.model.decoder.train()
    if run.trainable_encoder:
        encoder_train_mode(run.model, run.trainable_encoder, run.cfg.train_bn)


def _train_step(run: Run, rows: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """One optimisation step; returns the loss (cross-entropy, plus the attention penalty when asked for) and the
    gradient norm before clipping."""
    mirror = mirror_draw(run.cfg, run.progress.step, len(rows))  # (B,) or None, drawn for the global batch
    share = 1.0
    if run.dist.active:  # this process's captions of the global batch; see _shard_weight
        mine, empty = distributed.shard(run.dist, len(rows))
        share = _shard_weight(run, targets, mine, empty)
        rows, inputs, targets = rows[mine], inputs[mine], targets[mine]
        mirror = mirror[mine] if mirror is not None else None
    inputs, targets = inputs.to(run.device), targets.to(run.device)
    features, image_index = _train_features(run, rows, mirror)
    penalty = run.cfg.attention_reg
    decoder = run.net or run.model.decoder
    with torch.autocast(device_type=run.device.type, dtype=run.amp_dtype or torch.float32,
                        enabled=run.amp_dtype is not None):
        logits, targets, weights = _teacher_forced(decoder, run.model.decoder, features, image_index, inputs,
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
    images = [load_image(run.train.data.items[int(i)].path) for i in rows]
    if mirror is not None:
        images = [ImageOps.mirror(img) if flip else img for img, flip in zip(images, mirror.tolist())]
    pixels = torch.stack([run.model.transform(img) for img in images])  # (B, 3, H, W)
    return run.model.encoder(pixels.to(run.device).contiguous(memory_format=torch.channels_last)), None


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
    if cfg.keep_epochs and run.dist.is_main:
        keep_epoch_model(run, row)
    if _is_better(row, progress.best, cfg.select_by, run.val is not None):
        progress.best, progress.bad_epochs = dict(row), 0
        if run.dist.is_main:
            run.model.save_pretrained(run.out / "model", card=model_card(run, row))
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


def keep_epoch_model(run: Run, row: dict) -> None:
    """Write this epoch's model to ``out/epochs/NNN`` and remove those older than the last ``keep_epochs``."""
    folder = run.out / "epochs"
    run.model.save_pretrained(folder / f"{run.progress.epoch:03d}", card=model_card(run, row))
    for old in sorted(p for p in folder.iterdir() if p.name.isdigit())[: -run.cfg.keep_epochs]:
        shutil.rmtree(old)


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
        images, index = torch.unique(rows, return_inverse=True)  # each image's features once
        logits, targets, _ = _teacher_forced(decoder, decoder, features[images].to(run.device), index.to(run.device),
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


def _is_better(row: dict, best: dict, select_by: str, has_val: bool) -> bool:
    if not best or not has_val:
        return True  # the first epoch, or without validation the latest model
    if select_by == "loss":
        return row["val_loss"] < best["val_loss"]
    return row[f"val_{select_by}"] > best[f"val_{select_by}"]


if __name__ == "__main__":  # torchrun --nproc_per_node N -m captioner.train --data ... --out ...
    import sys

    from captioner.cli.main import main

    sys.exit(main(["train", *sys.argv[1:]]))
