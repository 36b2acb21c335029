"""A training run's settings: :class:`TrainConfig` (written to ``train_config.json`` in every run directory, so a
run can be reproduced from its own files) and :class:`FinetuneConfig` (what fine-tuning adds). Nothing here imports
torch; the command-line options of ``captioner train`` and ``finetune`` are built from these fields.

The defaults are the recipe that made the shipped default model (``scripts/train_default.sh``, docs/ablation.md §4):
``TrainConfig``'s own defaults for the schedule, and :data:`RECIPE_MODEL` for the architecture that ``captioner
train`` builds when no option says otherwise. ``ModelConfig``'s own defaults are not the recipe: they are what
``config.json`` files written before a field existed are read with, so they never change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from captioner.config import DEVICES, ModelConfig

SELECT_BY = ("cider", "bleu4", "loss")

NEAR_ZERO = 1e-4  # a BLEU-4 or CIDEr-D below this says nothing (no 4-gram matched): the validation loss decides
TIE = 1e-4  # two epochs whose BLEU-4 or CIDEr-D differ by no more than this are tied: the validation loss decides

# The architecture of the recipe that made the shipped default (scripts/train_default.sh): what `captioner train`
# builds when no option says otherwise. ModelConfig's own defaults stay those old config.json files are read with.
RECIPE_MODEL = {"encoder": "efficientnet_lite2", "inject": "attention", "attention_dim": 256, "attention_init": "mean",
                "attention_gate": True, "embed_dim": 256, "hidden_dim": 512, "image_proj_dim": 256, "dropout": 0.5,
                "cell": "lstm", "num_layers": 1, "pooling": "avg"}


def recipe_model_config() -> ModelConfig:
    """The architecture ``captioner train`` (and :func:`captioner.training.loop.train` without one) builds:
    ``ModelConfig`` with :data:`RECIPE_MODEL`, the shipped default's recipe (vocabulary and encoder widths are
    filled in when the model is built)."""
    return ModelConfig(**RECIPE_MODEL)


SCHEDULES = ("constant", "cosine", "plateau")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


FREEZABLE = ("embedding", "decoder", "head")


@dataclass
class TrainConfig:
    """A training run's settings; written to ``train_config.json`` in the run directory.

    Attributes:
        data: dataset path.
        data_format: dataset format name (None: detect).
        images: images directory override (None: the format's default place).
        out: run directory (best model in ``out/model``, log in ``out/log.csv``).
        train_split: split trained on.
        val_split: split validated on every epoch (None: no validation).
        epochs: passes over the training captions (cross-entropy); None: as many as ``steps`` optimiser steps
            take, at least one and at most ``max_epochs`` (fine-tuning's default, so a small data set gets enough
            steps and a large one is not passed over many times).
        steps: with ``epochs`` None, the cross-entropy budget in optimiser steps.
        max_epochs: with ``epochs`` None, the most epochs the budget may take (validation runs after each).
        batch_size: captions per optimisation step.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        clip_norm: maximum global gradient norm (0 disables clipping).
        min_count: words seen fewer times in the training captions map to ``<unk>``.
        max_caption_len: training captions are cut to this many words.
        seed: seeds python, numpy and torch; with it a CPU run is deterministic.
        val_max_images: validation uses the first N images of the split every epoch, a fixed subset (0: all).
        holdout: validate on N images held out of the training split (seeded) instead of ``val_split``, so the
            model is selected without looking at the validation split (0: use ``val_split``).
        extra_data: more caption datasets whose training splits are added to ``data``'s (after the held-out draw,
            which stays on ``data``), e.g. pseudo-captions of unlabelled photos (``captioner data pseudo-label``);
            each ``PATH`` or ``PATH:SPLIT`` (default split ``train``), format detected.
        holdout_seed: seed of the held-out draw (None: ``seed``); give the members of an ensemble one held-out set
            with different training seeds, so that the ensemble can be judged on images none of them trained on.
        label_smoothing: cross-entropy label smoothing (0: none).
        flip_features: augment the training images with their mirror images: each step takes the original or the
            mirrored image's vector with equal probability (both cached; see :mod:`captioner.training.splits`).
        tensorboard: also write the logged rows as TensorBoard scalars under ``out/tensorboard``.
        batch_by_image: cross-entropy batches hold whole images, all their captions together (about
            ``batch_size`` captions), so each image's features are projected once per step (what makes attention
            models fast); otherwise captions are batched by length across images.
        image_size: 0 keeps the encoder's own preprocessing; N resizes each image's shorter side to N and
            center-crops N x N (a square image is then seen whole; the encoders' own crops cut off its borders).
        attention_reg: weight of the doubly stochastic attention penalty ``sum_i (1 - sum_t alpha_ti)^2`` (Show,
            Attend and Tell), which asks every location to be looked at about once per caption (0: off).
        keep_epochs: also write each of the last K epochs' models to ``out/epochs/NNN`` (for checkpoint averaging
            with ``captioner ensemble --average``; 0: keep only the best model).
        val_max_length: maximum generated length during validation.
        select_by: ``cider``, ``bleu4`` or ``loss``: which validation figure picks the saved best model. When the
            figure is about zero (below :data:`NEAR_ZERO`, e.g. BLEU-4 on a tiny validation set) or tied within
            :data:`TIE` with the best epoch's, the lower validation loss decides; ``summary.json`` records which.
        cache_dir: feature-cache directory (None: the user cache directory).
        num_threads: torch CPU threads (0: torch's default).
        on_bad_image: ``skip`` unreadable images with a warning that counts them, or ``error``.
        schedule: learning-rate schedule: ``constant``, ``cosine`` (to 0 at the last step) or ``plateau`` (halve
            when the ``select_by`` figure stops improving).
        warmup_steps: linear warm-up steps (``constant`` and ``cosine``).
        patience: stop after this many epochs without a better ``select_by`` figure (0: never stop early).
        log_every: write the training loss and gradient norm to ``log.csv`` every N steps (1: the full trace).
        save_every: also write the resume state every N steps (0: only at the end of each epoch).
        max_nonfinite_steps: a step whose loss or gradient is NaN or infinite is skipped with a warning (the weights
            are not touched); this many such steps in a row stop the run.
        keep_checkpoints: resume states kept in ``checkpoints/`` besides the latest (the best model is always kept).
        freeze: parts of the decoder not trained: ``embedding``, ``decoder`` (recurrent cell and image projection),
            ``head`` (output layer).
        unfreeze_encoder: train the last N blocks of the encoder too (0: frozen encoder, cached features).
        encoder_lr: learning rate of the unfrozen encoder blocks (None: ``lr / 10``).
        train_bn: let the unfrozen blocks' BatchNorm layers update their statistics (default: kept in eval mode).
        device: ``cpu``, ``cuda``, ``mps`` or ``auto`` (CUDA, else MPS, else the CPU).
        precision: ``fp32``, ``bf16`` or ``fp16`` mixed precision (autocast; a gradient scaler with fp16 on CUDA;
            bf16 works on the CPU, fp16 does not), or ``auto``: fp16 on CUDA, fp32 elsewhere.
        scst_epochs: epochs of self-critical sequence training (CIDEr-D reward on sampled captions) after the
            ``epochs`` cross-entropy epochs, starting from the best cross-entropy model (0: none).
        scst_lr: learning rate of the self-critical epochs (constant).
        scst_samples: captions sampled per image; each one's baseline is the mean reward of the others.
        scst_batch_size: images per self-critical step (``scst_batch_size * scst_samples`` sampled captions).
        progress: show a progress bar per epoch on stderr when stderr is a terminal (``--quiet`` turns it off).
        dry_run: run two batches of everything, for smoke tests.
        command: the command line that started the run (recorded in the model card).
    """

    data: str = ""
    data_format: str | None = None
    images: str | None = None
    out: str = "runs/latest"
    train_split: str = "train"
    val_split: str | None = "val"
    epochs: int | None = 8
    steps: int = 300
    max_epochs: int = 40
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    clip_norm: float = 5.0
    min_count: int = 5
    max_caption_len: int = 30
    seed: int = 0
    val_max_images: int = 0
    holdout: int = 0
    holdout_seed: int | None = None
    extra_data: list[str] = field(default_factory=list)
    label_smoothing: float = 0.0
    flip_features: bool = False
    tensorboard: bool = False
    batch_by_image: bool = True
    image_size: int = 0
    attention_reg: float = 0.0
    keep_epochs: int = 0
    val_max_length: int = 20
    select_by: str = "cider"
    cache_dir: str | None = None
    num_threads: int = 0
    on_bad_image: str = "skip"
    schedule: str = "cosine"
    warmup_steps: int = 0
    patience: int = 3
    log_every: int = 50
    save_every: int = 0
    max_nonfinite_steps: int = 5
    keep_checkpoints: int = 2
    freeze: list[str] = field(default_factory=list)
    unfreeze_encoder: int = 0
    encoder_lr: float | None = None
    train_bn: bool = False
    device: str = "cpu"
    precision: str = "auto"
    scst_epochs: int = 0
    scst_lr: float = 5e-5
    scst_samples: int = 5
    scst_batch_size: int = 50
    progress: bool = True
    dry_run: bool = False
    command: str = ""

    def __post_init__(self) -> None:
        if self.select_by not in SELECT_BY:
            raise ValueError(f"select_by must be one of {SELECT_BY}, got {self.select_by!r}")
        if self.on_bad_image not in ("skip", "error"):
            raise ValueError(f"on_bad_image must be skip or error, got {self.on_bad_image!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.steps < 1 or self.max_epochs < 1:
            raise ValueError(f"steps ({self.steps}) and max_epochs ({self.max_epochs}) must be at least 1")
        if self.epochs is not None and (self.epochs < 0 or self.epochs + self.scst_epochs < 1):
            raise ValueError(f"nothing to train: epochs {self.epochs} and scst_epochs {self.scst_epochs}; train at "
                             "least 1 epoch (--epochs 0 only makes sense with --scst-epochs)")
        if self.scst_epochs < 0 or self.scst_samples < 2 or self.scst_batch_size < 1:
            raise ValueError("self-critical training needs scst_epochs >= 0, scst_samples >= 2 (the baseline is the "
                             "mean of the other samples) and scst_batch_size >= 1")
        if self.scst_epochs and self.unfreeze_encoder:
            raise ValueError("self-critical training works on cached image vectors: use it with a frozen encoder "
                             "(unfreeze_encoder 0), or fine-tune the encoder in a separate run first")
        unknown = sorted(set(self.freeze) - set(FREEZABLE))
        if unknown:
            raise ValueError(f"cannot freeze {unknown}; choose from {', '.join(FREEZABLE)}")


@dataclass
class FinetuneConfig:
    """What fine-tuning adds to a training run.

    Attributes:
        base: the model to start from: a model directory or ``default``.
        extend_vocab: append the new data's words seen at least ``TrainConfig.min_count`` times to the vocabulary
            (existing ids and weight rows stay bit-identical); without it unknown words map to ``<unk>``.
        also_eval: a dataset (e.g. the base model's validation data) evaluated before and after, to measure
            forgetting (None: skip).
        also_eval_split: its split.
        also_eval_format: its format (None: detect).
        eval_split: split of the new data measured before and after (None: the validation split).
        eval_max_images: evaluate at most this many images of each before/after set (0: all).
    """

    base: str = "default"
    extend_vocab: bool = False
    also_eval: str | None = None
    also_eval_split: str = "val"
    also_eval_format: str | None = None
    eval_split: str | None = None
    eval_max_images: int = 0


# fine-tuning's own defaults for these TrainConfig fields: a budget in optimiser steps rather than epochs (docs/
# ablation.md, "Fine-tuning defaults")
FINETUNE_OVERRIDES = {"epochs": None, "lr": 1e-3, "warmup_steps": 20, "patience": 10}


def finetune_defaults() -> TrainConfig:
    """The ``TrainConfig`` defaults of a fine-tuning run (``captioner finetune``): ``TrainConfig``'s, with
    :data:`FINETUNE_OVERRIDES`."""
    return TrainConfig(**FINETUNE_OVERRIDES)


def planned_epochs(cfg: TrainConfig, batches_per_epoch: int) -> int:
    """The cross-entropy epochs a run takes: ``cfg.epochs``, or with ``epochs`` None enough epochs of
    ``batches_per_epoch`` steps for ``cfg.steps`` steps, at least one and at most ``cfg.max_epochs``."""
    if cfg.epochs is not None:
        return cfg.epochs
    return min(cfg.max_epochs, max(1, -(-cfg.steps // max(batches_per_epoch, 1))))
