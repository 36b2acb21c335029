"""Configuration dataclasses: the only way to describe a model or a training run.

``ModelConfig`` is saved as ``config.json`` beside the weights (a training run's settings are
:class:`captioner.training.config.TrainConfig`); the JSON round trip rejects unknown keys. Nothing here imports
torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
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
INTERPOLATIONS = ("bicubic", "bilinear")

# What a model directory's config.json may say: anything outside these is refused before a tensor is built (a
# hostile or mistyped config.json must not allocate gigabytes first). Generous for any model captioner trains.
MAX_WIDTH = 16384  # encoder_dim, embed_dim, image_proj_dim, hidden_dim, attention_dim
WHOLE_RANGES = {
    "vocab_size": (4, 1_000_000),  # the four special tokens at least
    "encoder_dim": (1, MAX_WIDTH), "embed_dim": (1, MAX_WIDTH), "image_proj_dim": (1, MAX_WIDTH),
    "hidden_dim": (1, MAX_WIDTH), "attention_dim": (1, MAX_WIDTH),
    "num_layers": (1, 16), "num_decoders": (1, 64), "feature_locations": (0, 65536),
    "no_repeat_ngram": (0, 1000), "max_tags": (1, 1000),
}
CHOICES = {"pooling": POOLINGS, "cell": CELL_TYPES, "inject": INJECT_MODES, "attention_init": ATTENTION_INITS}
FLAGS = ("encoder_weights_in_file", "attention_gate", "guided", "guided_fallback")
IMAGE_SIDES = (16, 4096)  # preprocess.resize and preprocess.crop


def shown(value: Any, limit: int = 80) -> str:
    """A value as JSON writes it (``"512"`` for a string), cut to ``limit`` characters: for one-line messages."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def check_whole(name: str, value: Any, low: int, high: int) -> None:
    """``value`` is a whole number (not a bool) from ``low`` to ``high``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, got {shown(value)}")


def is_real(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {shown(value)}")


def check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {shown(value)}")


def check_channels(name: str, value: Any, positive: bool) -> tuple[float, float, float]:
    """Three finite per-channel numbers (strictly positive when ``positive``), as a tuple."""
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(is_real(v) for v in value) or (
            positive and not all(v > 0 for v in value)):
        what = "positive finite numbers" if positive else "finite numbers"
        raise ValueError(f"{name} must be three {what} (one per RGB channel), got {shown(value)}")
    return tuple(value)


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

    def __post_init__(self) -> None:
        for name in ("resize", "crop"):
            check_whole(f"preprocess.{name}", getattr(self, name), *IMAGE_SIDES)
        if self.crop > self.resize:
            raise ValueError(f"preprocess.crop ({self.crop}) must not exceed preprocess.resize ({self.resize}): the "
                             "crop is taken from the image resized to that shorter side")
        object.__setattr__(self, "mean", check_channels("preprocess.mean", self.mean, positive=False))
        object.__setattr__(self, "std", check_channels("preprocess.std", self.std, positive=True))
        check_choice("preprocess.interpolation", self.interpolation, INTERPOLATIONS)

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
        guided_fallback: the model's default for ``GenerationConfig.guided_fallback``: guided decoding only for the
            images whose plain caption leaves one of their tags unnamed (False for models that have no setting: they
            guide every tagged image, as they always did).
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
    guided_fallback: bool = False
    tag_threshold: float = 0.1
    max_tags: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.preprocess, dict):
            check_keys(Preprocess, self.preprocess, "preprocess")
            self.preprocess = Preprocess(**self.preprocess)
        elif not isinstance(self.preprocess, Preprocess):
            raise ValueError(f"preprocess must be an object with {', '.join(_names(Preprocess))}, got "
                             f"{shown(self.preprocess)}")
        check_model_fields(self)

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


def check_model_fields(config: ModelConfig) -> None:
    """The type and range of every :class:`ModelConfig` field, and the rules between them (``preprocess`` checks
    itself). ``__post_init__`` calls this, so a config built in code and one read from ``config.json`` obey the same
    rules; a model directory's tensor shapes are checked against them by :mod:`captioner.models.files`.

    Raises:
        ValueError: naming the first field that is wrong, what it must be and what it is.
    """
    if not isinstance(config.encoder, str) or not config.encoder:
        raise ValueError(f"encoder must be the name of an encoder, got {shown(config.encoder)}")
    for name, (low, high) in WHOLE_RANGES.items():
        check_whole(name, getattr(config, name), low, high)
    for name, choices in CHOICES.items():
        check_choice(name, getattr(config, name), choices)
    for name in FLAGS:
        check_flag(name, getattr(config, name))
    if not is_real(config.dropout) or not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1), got {shown(config.dropout)}")
    check_no_repeat_ngram(config.no_repeat_ngram)
    check_tag_settings(config.tag_threshold, config.max_tags)
    if config.attention and config.pooling != "avg":
        raise ValueError("inject 'attention' reads the encoder's feature map itself: leave pooling at 'avg'")


def to_json(obj: Any, path: str | Path) -> None:
    """Write a dataclass as pretty, key-sorted JSON (stable bytes for the same config)."""
    text = json.dumps(dataclasses.asdict(obj), indent=2, sort_keys=True)
    Path(path).write_text(text + "\n", encoding="utf-8")


def from_json(cls: type[T], path: str | Path) -> T:
    """Read a dataclass written by :func:`to_json`; unknown keys, bad values and bad JSON are errors naming the file
    (and the key)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError as err:  # JSONDecodeError; RecursionError is not a ValueError
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    except RecursionError:
        raise ValueError(f"{path}: not valid JSON (nested too deeply)") from None
    return from_dict(cls, data, source=str(path))


def _names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]


def check_keys(cls: type, data: Any, source: str) -> None:
    """``data`` is a JSON object whose keys are all fields of ``cls`` (others signal a version mismatch)."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_names(cls)), key=str)
    if unknown:
        names = [k if len(k) <= 40 else f"{k[:40]}…" for k in map(str, unknown[:10])]
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise ValueError(f"{source}: unknown keys {names}{more}; was it written by a newer captioner?")


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build a dataclass from a dict, rejecting keys it does not know (they signal a version mismatch); an error
    names ``source`` (the file) and the field."""
    check_keys(cls, data, source)
    try:
        return cls(**data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: {err}") from None
