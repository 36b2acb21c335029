"""Configuration dataclasses: the only way to describe a model or a training run.

``ModelConfig`` is saved as ``config.json`` beside the weights (a training run's settings are
:class:`captioner.training.config.TrainConfig`); the JSON round trip rejects unknown keys. Nothing here imports
torch.
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
DEVICES = ("auto", "cpu", "cuda", "mps")


def check_no_repeat_ngram(value: int) -> int:
    """A repetition guard's n-gram size: 0 (off) or at least 2 (a 1-gram guard would ban every word once used)."""
    if value < 0 or value == 1:
        raise ValueError(f"no_repeat_ngram must be 0 (off) or at least 2, got {value}")
    return value


def check_tag_settings(threshold: float, max_tags: int) -> None:
    """A tag threshold is a probability in (0, 1]; at least one tag."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"tag_threshold is a probability in (0, 1], got {threshold!r}")
    if isinstance(max_tags, bool) or not isinstance(max_tags, int) or max_tags < 1:
        raise ValueError(f"max_tags must be a whole number of at least 1, got {max_tags!r}")


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
    """Everything needed to build a :class:`captioner.pipeline.Captioner` before loading its weights.

    Attributes:
        encoder: name in the encoder registry (``captioner.models.encoders.available_encoders()``).
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
        guided: the model's default for ``GenerationConfig.guided``: caption with tag-guided decoding unless told
            otherwise (False for models that have no setting, so they caption as they always did).
        tag_threshold: the model's default for ``GenerationConfig.tag_threshold``.
        max_tags: the model's default for ``GenerationConfig.max_tags``.
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
    guided: bool = False
    tag_threshold: float = 0.1
    max_tags: int = 2

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
        check_tag_settings(self.tag_threshold, self.max_tags)
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
