"""What ``Captioner.caption()`` returns: a :class:`Caption` per image, with its n-best list and, on request, the
attention of each word; and the :class:`GenerationConfig` its keyword settings describe."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from captioner.generation import GenerationConfig, Hypothesis
from captioner.vocab import Vocabulary

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass
class Caption:
    """One image's caption.

    Attributes:
        text: the caption ("a dog runs on the grass"); ``str(caption)`` gives it too.
        log_prob: the sum of its tokens' log-probabilities (``<end>`` included when emitted).
        score: the search's ranking score (``log_prob`` with the length penalty applied).
        words: its words, one per generated token.
        confidence: the calibrated probability that the caption is right, for models with a confidence model
            (the embedded default has one); else None.
        tags: the image tags guided decoding asked the caption to contain (words); None when not guided.
        attention: with ``return_attention=True``, the attention weights over the feature map's locations when each
            word was generated, ``(len(words), L)``, rows summing to 1; else None.
        n_best: the search's best captions, best first (this one included), as many as ``n_best`` asked for.
    """

    text: str
    log_prob: float
    score: float
    words: list[str]
    confidence: float | None = None
    tags: list[str] | None = None
    attention: torch.Tensor | None = None
    n_best: list[Caption] = dataclasses.field(default_factory=list, repr=False)

    def __str__(self) -> str:
        return self.text

    @classmethod
    def from_hypothesis(cls, hyp: Hypothesis, vocab: Vocabulary) -> Caption:
        """One hypothesis as a caption (without an n-best list)."""
        tags = None if hyp.tags is None else [getattr(tag, "word", str(tag)) for tag in hyp.tags]
        return cls(text=vocab.decode(hyp.tokens), log_prob=float(hyp.log_prob), score=float(hyp.score),
                   words=[vocab.decode([t]) for t in hyp.tokens], confidence=hyp.confidence, tags=tags,
                   attention=hyp.attention)

    @classmethod
    def from_hypotheses(cls, hyps: list[Hypothesis], vocab: Vocabulary) -> Caption:
        """An image's hypotheses (best first) as its best caption carrying the n-best list."""
        n_best = [cls.from_hypothesis(hyp, vocab) for hyp in hyps]
        best = dataclasses.replace(n_best[0], n_best=n_best)
        n_best[0] = best
        return best


def generation_config(config: GenerationConfig | None, settings: dict[str, Any]) -> GenerationConfig:
    """``config`` (default: ``GenerationConfig()``) with the keyword ``settings`` applied.

    Raises:
        ValueError: a setting :class:`GenerationConfig` does not have, or a value it refuses.
    """
    if config is not None and not isinstance(config, GenerationConfig):
        raise ValueError(f"config must be a GenerationConfig, got {type(config).__name__}")
    names = {f.name for f in dataclasses.fields(GenerationConfig)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise ValueError(f"unknown caption setting(s) {', '.join(unknown)}; the settings are GenerationConfig's "
                         f"fields: {', '.join(sorted(names))}")
    return dataclasses.replace(config or GenerationConfig(), **settings)
