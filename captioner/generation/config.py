"""How to search: :class:`GenerationConfig`, and what a search returns: :class:`Hypothesis`.

``GenerationConfig`` is the one place that decides what its settings mean together (``beam_size=1`` is greedy
search; guided decoding cannot sample; a model's own defaults fill in what the config leaves open).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from captioner.config import check_no_repeat_ngram, check_tag_settings

if TYPE_CHECKING:
    import torch

METHODS = ("greedy", "beam", "sample")


@dataclass
class GenerationConfig:
    """How to search.

    Attributes:
        method: ``greedy``, ``beam`` or ``sample``; ``beam`` with ``beam_size=1`` is greedy search (the config says
            so: its ``method`` becomes ``greedy``).
        beam_size: beams per image (``beam``).
        max_length: maximum generated tokens, ``<end>`` included.
        length_penalty: beams are ranked by ``log_prob / length ** length_penalty`` (0: plain log-probability).
        n_best: hypotheses returned per image: the best ``n_best`` beams (at most ``beam_size``), or ``n_best``
            independent samples; greedy search returns one.
        temperature: logits are divided by this before sampling.
        top_k: sample only among the k most likely tokens (0: all).
        seed: seed for sampling (None: torch's global generator).
        return_attention: give each hypothesis the attention weights of its words (attention models only).
        no_repeat_ngram: never generate an n-gram of this size twice in one caption ("a red shirt and a red
            shirt" with 2); 0 turns the guard off; None (default) uses the model's own setting
            (``ModelConfig.no_repeat_ngram``, 0 for models that have none, so they caption as they always did).
        guided: tag-guided decoding: the encoder's ImageNet tags whose probability reaches ``tag_threshold`` (at
            most ``max_tags``) must appear in the caption (constrained beam search, :mod:`captioner.generation.guided`);
            None (default) uses the model's own setting (``ModelConfig.guided``: on for the embedded default, off for
            models that have none); sampling is never guided unless asked for, which is an error.
        guided_fallback: with ``guided``, caption every image plainly first and search again with its tags only
            where the plain caption does not name them all (:func:`captioner.generation.tags.names_tag`): the tags
            then fill in what the decoder missed without overruling a caption that already says it ("two dogs" stays
            rather than becoming "a dog"). None (default): the model's own setting (``ModelConfig.guided_fallback``:
            on for the embedded default, off for models that have none, which guide every tagged image).
        tags: words (or short phrases) every image's caption must contain: guided decoding with given tags instead of
            the encoder's; a single string is one tag.
        tag_threshold: the probability an image tag needs (summed over the ImageNet classes that map to its word);
            None: the model's own (``ModelConfig.tag_threshold``).
        max_tags: at most this many tags per image; None: the model's own (``ModelConfig.max_tags``).
    """

    method: str = "beam"
    beam_size: int = 3
    max_length: int = 20
    length_penalty: float = 0.0
    n_best: int = 1
    temperature: float = 1.0
    top_k: int = 0
    seed: int | None = None
    return_attention: bool = False
    no_repeat_ngram: int | None = None
    guided: bool | None = None
    guided_fallback: bool | None = None
    tags: tuple[str, ...] | None = None
    tag_threshold: float | None = None
    max_tags: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.tags, str):
            self.tags = (self.tags,)  # one tag, not its letters
        elif self.tags is not None:
            if not isinstance(self.tags, Iterable) or isinstance(self.tags, (bytes, dict)):
                raise ValueError(f"GenerationConfig.tags must be a word or a list of words, got {self.tags!r}")
            self.tags = tuple(self.tags)
        check_types(self)
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.beam_size < 1 or self.max_length < 1 or self.n_best < 1:
            raise ValueError("beam_size, max_length and n_best must be at least 1")
        if self.method == "beam" and self.n_best > self.beam_size:
            raise ValueError(f"n_best ({self.n_best}) cannot exceed beam_size ({self.beam_size})")
        if self.method == "beam" and self.beam_size == 1:
            self.method = "greedy"  # the one place where one beam means greedy search
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.no_repeat_ngram is not None:
            check_no_repeat_ngram(self.no_repeat_ngram)
        check_tag_settings(0.5 if self.tag_threshold is None else self.tag_threshold,
                           1 if self.max_tags is None else self.max_tags)
        if (self.guided or self.tags) and self.method == "sample":
            raise ValueError("guided decoding searches (beam or greedy); it cannot sample")


@dataclass
class Hypothesis:
    """One generated caption.

    Attributes:
        tokens: generated ids, without ``<start>`` and ``<end>``.
        log_prob: sum of the log-probabilities of the tokens, ``<end>`` included when emitted.
        score: the ranking score (``log_prob`` with the length penalty applied).
        finished: True when the caption ended with ``<end>`` (False: cut at ``max_length``).
        attention: with ``GenerationConfig.return_attention``, the attention weights over the image locations when
            each token was generated, ``(len(tokens), L)``, each row summing to 1; else None.
        tags: for guided decoding, the image's tags the caption was asked to contain (:class:`Tag` each); else None.
        confidence: the calibrated probability that the caption is right (:mod:`captioner.generation.confidence`),
            for models that have a confidence model; else None.
    """

    tokens: list[int]
    log_prob: float
    score: float
    finished: bool
    attention: torch.Tensor | None = None
    tags: list | None = None
    confidence: float | None = None


_INTEGERS = ("beam_size", "max_length", "n_best", "top_k", "seed", "no_repeat_ngram", "max_tags")
_NUMBERS = ("length_penalty", "temperature", "tag_threshold")
_FLAGS = ("return_attention", "guided", "guided_fallback")
_OPTIONAL = ("seed", "no_repeat_ngram", "max_tags", "tag_threshold", "guided", "guided_fallback")


def check_types(config: GenerationConfig) -> None:
    """Refuse a setting of the wrong type in one ``ValueError`` (``beam_size="3"``, ``guided="no"``, ``tags=5``);
    None is accepted where the field allows it."""
    kinds = {**dict.fromkeys(_INTEGERS, (numbers.Integral, "a whole number")),
             **dict.fromkeys(_NUMBERS, (numbers.Real, "a number")),
             **dict.fromkeys(_FLAGS, (bool, "True or False"))}
    for name, (kind, words) in kinds.items():
        value = getattr(config, name)
        if value is None and name in _OPTIONAL:
            continue
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ValueError(f"GenerationConfig.{name} must be {words}, got {value!r}")
    if not isinstance(config.method, str):
        raise ValueError(f"GenerationConfig.method must be one of {METHODS}, got {config.method!r}")
    if config.tags is not None and not all(isinstance(t, str) and t.strip() for t in config.tags):
        raise ValueError(f"GenerationConfig.tags must be a word or a list of words, got {config.tags!r}")


def with_model_defaults(config: GenerationConfig, decoder) -> GenerationConfig:
    """``config`` with what it leaves to the model (None) filled in from the decoder's configuration: the repetition
    guard (0 for models that have none), guided decoding (off for models that have no setting, and for sampling),
    the tag threshold and the number of tags."""
    model = decoder.config
    filled = {}
    if config.no_repeat_ngram is None:
        filled["no_repeat_ngram"] = getattr(model, "no_repeat_ngram", 0)
    if config.guided is None:
        filled["guided"] = bool(getattr(model, "guided", False)) and config.method != "sample"
    if config.guided_fallback is None:
        filled["guided_fallback"] = bool(getattr(model, "guided_fallback", False))
    if config.tag_threshold is None:
        filled["tag_threshold"] = getattr(model, "tag_threshold", 0.1)
    if config.max_tags is None:
        filled["max_tags"] = getattr(model, "max_tags", 2)
    return dataclasses.replace(config, **filled) if filled else config
