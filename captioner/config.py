"""Configuration dataclasses: the only way to describe a model or a training run.

``ModelConfig`` is saved as ``config.json`` beside the weights; ``TrainConfig`` is written into every run
directory so that a run can be reproduced from its own files. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

INJECT_MODES = ("every_step", "init_only", "attention")
CELL_TYPES = ("lstm", "gru", "rnn")
POOLINGS = ("avg", "avgmax")
ATTENTION_INITS = ("mean", "zeros")
POOLING_LABELS = {"avg": "mean", "avgmax": "mean+max"}  # for model cards
SELECT_BY = ("cider", "bleu4", "loss")
SCHEDULES = ("constant", "cosine", "plateau")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
FREEZABLE = ("embedding", "decoder", "head")


def check_no_repeat_ngram(value: int) -> int:
    """A repetition guard's n-gram size: 0 (off) or at least 2 (a 1-gram guard would ban every word once used)."""
    if value < 0 or value == 1:
        raise ValueError(f"no_repeat_ngram must be 0 (off) or at least 2, got {value}")
    return value


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing that a set of encoder weights expects.

    Attributes:
        resize: length of the shorter side after resizing.
        crop: side of the square center crop taken after resizing.
        mean: per-channel mean subtracted after scaling pixels to [0, 1].
        std: per-channel standard deviation divided by after subtracting the mean.
        interpolation: ``bicubic`` or ``bilinear``.
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"

    def key(self) -> str:
        """A stable string that identifies this preprocessing (used in feature-cache keys)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


@dataclass
class ModelConfig:
    """Everything needed to build a :class:`captioner.model.Captioner` before loading its weights.

    Attributes:
        encoder: name in the encoder registry (``captioner.encoders.available_encoders()``).
        encoder_dim: width of the pooled image vector the encoder produces.
        pooling: how the encoder's feature map becomes a vector: ``avg`` (spatial mean) or ``avgmax`` (mean and
            max concatenated: twice as wide).
        preprocess: preprocessing the encoder's weights expect.
        encoder_weights_in_file: True when ``model.safetensors`` holds the encoder's weights too (a fine-tuned
            encoder); False when the encoder's pretrained weights are loaded from their package.
        vocab_size: number of tokens, special tokens included.
        embed_dim: word-embedding width.
        image_proj_dim: width of the projected image vector concatenated to each word embedding.
        hidden_dim: recurrent hidden-state width.
        num_layers: stacked recurrent layers.
        dropout: dropout on embeddings, image projection and the recurrent output.
        cell: ``lstm``, ``gru`` or ``rnn``.
        inject: ``every_step`` (the pooled image vector concatenated to the input at every step, through W_ih),
            ``init_only`` (the pooled vector only sets the initial hidden state) or ``attention`` (the encoder's
            spatial feature map is kept; at every step a soft attention over its locations gives the context that
            is concatenated to the input, through W_ih).
        feature_locations: ``attention`` only: locations ``h * w`` of the encoder's feature map (the image is given
            as ``(L, encoder_dim)``, cached as float16); 0 for the pooled-vector modes.
        attention_dim: ``attention`` only: width of the additive attention's hidden layer.
        attention_gate: ``attention`` only: scale the context by a sigmoid gate computed from the previous hidden
            state (Show, Attend and Tell's beta).
        attention_init: ``attention`` only: ``mean`` (the mean of the feature map sets the initial state, as in
            Show, Attend and Tell) or ``zeros``.
        num_decoders: decoders over the one encoder; more than one is an ensemble (built by ``captioner
            ensemble``, inference only: their per-step log-probabilities are averaged).
        no_repeat_ngram: the model's default for ``GenerationConfig.no_repeat_ngram``: captions never repeat an
            n-gram of this size (0: no guard; older model directories have none and caption as before).
    """

    encoder: str = "efficientnet_lite0"
    encoder_dim: int = 1280
    pooling: str = "avg"
    preprocess: Preprocess = field(default_factory=Preprocess)
    encoder_weights_in_file: bool = False
    vocab_size: int = 4
    embed_dim: int = 256
    image_proj_dim: int = 256
    hidden_dim: int = 512
    num_layers: int = 1
    dropout: float = 0.5
    cell: str = "lstm"
    inject: str = "every_step"
    feature_locations: int = 0
    attention_dim: int = 256
    attention_gate: bool = True
    attention_init: str = "mean"
    num_decoders: int = 1
    no_repeat_ngram: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.preprocess, dict):
            pre = dict(self.preprocess)
            pre["mean"], pre["std"] = tuple(pre["mean"]), tuple(pre["std"])
            self.preprocess = Preprocess(**pre)
        if self.cell not in CELL_TYPES:
            raise ValueError(f"cell must be one of {CELL_TYPES}, got {self.cell!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        check_no_repeat_ngram(self.no_repeat_ngram)
        if self.inject not in INJECT_MODES:
            raise ValueError(f"inject must be one of {INJECT_MODES}, got {self.inject!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.attention_init not in ATTENTION_INITS:
            raise ValueError(f"attention_init must be one of {ATTENTION_INITS}, got {self.attention_init!r}")
        if self.num_decoders < 1:
            raise ValueError(f"num_decoders must be at least 1, got {self.num_decoders}")
        if self.attention and self.pooling != "avg":
            raise ValueError("inject 'attention' reads the encoder's feature map itself: leave pooling at 'avg'")

    @property
    def attention(self) -> bool:
        """True when the decoder attends over the encoder's spatial feature map."""
        return self.inject == "attention"

    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one image's features as the decoder reads them: ``(encoder_dim,)`` or ``(L, encoder_dim)``."""
        if not self.attention:
            return (self.encoder_dim,)
        if self.feature_locations < 1:
            raise ValueError("an attention model needs feature_locations (the feature map's h * w)")
        return (self.feature_locations, self.encoder_dim)


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
        epochs: passes over the training captions.
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
        holdout_seed: seed of the held-out draw (None: ``seed``); give the members of an ensemble one held-out set
            with different training seeds, so that the ensemble can be judged on images none of them trained on.
        label_smoothing: cross-entropy label smoothing (0: none).
        flip_features: augment the training images with their mirror images: each step takes the original or the
            mirrored image's vector with equal probability (both cached; see :mod:`captioner.splits`).
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
        select_by: ``cider``, ``bleu4`` or ``loss``: which validation figure picks the saved best model.
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
        dry_run: run two batches of everything, for smoke tests.
        command: the command line that started the run (recorded in the model card).
    """

    data: str = ""
    data_format: str | None = None
    images: str | None = None
    out: str = "runs/latest"
    train_split: str = "train"
    val_split: str | None = "val"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 4e-4
    weight_decay: float = 0.0
    clip_norm: float = 5.0
    min_count: int = 5
    max_caption_len: int = 30
    seed: int = 0
    val_max_images: int = 0
    holdout: int = 0
    holdout_seed: int | None = None
    label_smoothing: float = 0.0
    flip_features: bool = False
    tensorboard: bool = False
    batch_by_image: bool = False
    image_size: int = 0
    attention_reg: float = 0.0
    keep_epochs: int = 0
    val_max_length: int = 20
    select_by: str = "bleu4"
    cache_dir: str | None = None
    num_threads: int = 0
    on_bad_image: str = "skip"
    schedule: str = "constant"
    warmup_steps: int = 0
    patience: int = 0
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
        if self.epochs < 0 or self.epochs + self.scst_epochs < 1:
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


def to_json(obj: Any, path: str | Path) -> None:
    """Write a dataclass as pretty, key-sorted JSON (stable bytes for the same config)."""
    text = json.dumps(dataclasses.asdict(obj), indent=2, sort_keys=True)
    Path(path).write_text(text + "\n", encoding="utf-8")


def from_json(cls: type[T], path: str | Path) -> T:
    """Read a dataclass written by :func:`to_json`; unknown keys are an error that names them."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return from_dict(cls, data, source=str(path))


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build a dataclass from a dict, rejecting keys it does not know (they signal a version mismatch)."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown}; was it written by a newer captioner?")
    return cls(**data)
