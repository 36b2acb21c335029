"""The state of one training run, shared by the loop (:mod:`captioner.training.loop`), the cross-entropy step
(:mod:`captioner.training.xe`), self-critical training (:mod:`captioner.training.scst`), resuming
(:mod:`captioner.training.resume`) and the run's reports (:mod:`captioner.training.report`): ``Run``,
``Progress`` and the step's own narrow settings (:class:`StepSettings`), the phase arithmetic and the one
optimisation step they all take. Those modules import this one, never each other's loops, so the dependencies point
one way.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from captioner.pipeline import Captioner
from captioner.runlog import LOG_FIELDS
from captioner.training.config import TrainConfig
from captioner.training.distributed import SINGLE, DistContext
from captioner.training.splits import Split

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class StepSettings:
    """What an optimisation step needs to know of the run's configuration, and nothing more.

    Attributes:
        clip_norm: maximum global gradient norm (0: no clipping).
        max_nonfinite_steps: NaN/inf steps in a row that stop the run.
        attention_reg: weight of the doubly stochastic attention penalty (0: off).
        flip_features: each step draws mirrored or original features per caption.
        train_bn: unfrozen encoder blocks update their BatchNorm statistics.
        seed: the run's seed (the mirror draw of each step is seeded from it).
        xe_epochs: cross-entropy epochs; later epochs are self-critical (their learning rate is constant).
    """

    clip_norm: float
    max_nonfinite_steps: int
    attention_reg: float
    flip_features: bool
    train_bn: bool
    seed: int
    xe_epochs: int

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> StepSettings:
        return cls(clip_norm=cfg.clip_norm, max_nonfinite_steps=cfg.max_nonfinite_steps,
                   attention_reg=cfg.attention_reg, flip_features=cfg.flip_features, train_bn=cfg.train_bn,
                   seed=cfg.seed, xe_epochs=xe_epochs(cfg))


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
    amp_dtype: torch.dtype | None = None  # autocast's dtype for the training forward (None: fp32)
    dist: DistContext = SINGLE  # this process's place in a torchrun job
    net: nn.Module | None = None  # the decoder in DistributedDataParallel (None: one process)
    nonfinite_steps: int = 0  # NaN/inf steps skipped in a row
    step_settings: StepSettings | None = None  # None: taken from cfg

    def __post_init__(self) -> None:
        if self.step_settings is None:
            self.step_settings = StepSettings.from_config(self.cfg)


@dataclass
class TrainResult:
    """What a run produced."""

    model_dir: Path
    best: dict
    history: list[dict]
    timings: dict


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a training precision on a device (None: plain fp32).

    ``auto`` is fp16 on CUDA (with a gradient scaler) and fp32 elsewhere; ``bf16`` works everywhere; ``fp16``
    needs a GPU (CUDA or MPS): on the CPU it is refused with a pointer to bf16.
    """
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cpu":
        raise ValueError("--precision fp16 needs a GPU; on the CPU use --precision bf16 (or fp32)")
    return torch.float16


def grad_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16 on CUDA (bf16 has fp32's range and needs none)."""
    return torch.amp.GradScaler("cuda", enabled=dtype == torch.float16 and device.type == "cuda")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU runs are then repeatable)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def xe_epochs(cfg: TrainConfig) -> int:
    """Cross-entropy epochs (one in a dry run)."""
    return min(cfg.epochs, 1) if cfg.dry_run else cfg.epochs


def total_epochs(cfg: TrainConfig) -> int:
    """Cross-entropy epochs plus self-critical epochs (one of each in a dry run)."""
    return xe_epochs(cfg) + (min(cfg.scst_epochs, 1) if cfg.dry_run else cfg.scst_epochs)


def is_scst(cfg: TrainConfig, epoch: int) -> bool:
    """True when ``epoch`` is one of the self-critical epochs."""
    return epoch > xe_epochs(cfg)


def apply_gradients(run: Run, loss: torch.Tensor) -> float:
    """Backpropagate ``loss``, clip the global gradient norm, step the optimizer and the per-step schedule.

    A step whose loss or gradient norm is NaN or infinite leaves the weights and the optimizer untouched (see
    :func:`skip_nonfinite`). The backward pass runs either way, so that in a distributed job every process makes the
    same choice: a NaN gradient anywhere is NaN everywhere after DDP's all-reduce.

    Returns:
        The gradient norm before clipping.
    """
    value = loss.item()
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    clip = run.step_settings.clip_norm
    max_norm = clip if clip > 0 else float("inf")
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    if math.isfinite(value) and (math.isfinite(norm) or run.scaler.is_enabled()):  # fp16's scaler skips inf itself
        run.nonfinite_steps = 0
        run.scaler.step(run.optimizer)
    else:
        skip_nonfinite(run, value, norm)
    run.scaler.update()
    if run.progress.epoch <= run.step_settings.xe_epochs and not isinstance(
            run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        run.scheduler.step()  # the schedule covers the cross-entropy epochs; SCST runs at a constant scst_lr
    return norm


def skip_nonfinite(run: Run, value: float, norm: float) -> None:
    """Drop this step's gradients with a warning; stop the run after ``max_nonfinite_steps`` such steps in a row."""
    run.optimizer.zero_grad(set_to_none=True)
    run.nonfinite_steps += 1
    step, limit = run.progress.step + 1, run.step_settings.max_nonfinite_steps
    what = f"loss {value}" if not math.isfinite(value) else f"gradient norm {norm}"
    logger.warning("step %d: %s; step skipped, weights unchanged (%d in a row; the run stops at %d)", step, what,
                   run.nonfinite_steps, limit)
    if run.nonfinite_steps >= limit:
        raise FloatingPointError(
            f"the loss or the gradients were NaN/inf for {limit} steps in a row (up to step {step}); stopping. "
            f"The weights were not changed by those steps: {run.out / 'training_state.pt'} and the best model are "
            "intact. Resume with --resume and a lower --lr or a --clip-norm, or check the data")


def lr_of(run: Run) -> float:
    """The learning rate of the first parameter group now."""
    return float(run.optimizer.param_groups[0]["lr"])
