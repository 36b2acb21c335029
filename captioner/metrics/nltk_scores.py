"""nltk corpus BLEU on :func:`captioner.vocab.tokenize` tokens: the project's original BLEU.

:func:`nltk_bleu` is also importable under its historical name :func:`corpus_bleu`. Its numbers differ from
coco-caption's BLEU (:func:`captioner.metrics.coco.bleu`); see ``docs/metrics.md``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from captioner.vocab import tokenize

BLEU_WEIGHTS = {
    "bleu1": (1.0, 0, 0, 0),
    "bleu2": (0.5, 0.5, 0, 0),
    "bleu3": (1 / 3, 1 / 3, 1 / 3, 0),
    "bleu4": (0.25, 0.25, 0.25, 0.25),
}


def nltk_bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """nltk corpus BLEU-1..4 on :func:`captioner.vocab.tokenize` tokens (the project's original BLEU).

    nltk's ``corpus_bleu`` with uniform weights, brevity penalty against the closest reference length and **no
    smoothing** (``SmoothingFunction().method0``): a corpus without a single matching n-gram of some order scores
    ~0 for that BLEU (nltk substitutes the smallest float for the zero precision: ~1e-77 for BLEU-4). Tokens are
    :func:`captioner.vocab.tokenize`'s (lowercase, punctuation dropped, ``"dog's"`` one token), so the numbers
    differ from :func:`bleu`; see ``docs/metrics.md``.

    Args:
        predictions: one caption per image.
        references: for each image, its reference captions.

    Returns:
        ``{"bleu1": ..., "bleu2": ..., "bleu3": ..., "bleu4": ...}``, fractions in [0, 1].

    Raises:
        ValueError: different numbers of predictions and reference sets, no predictions, or an image without
            (non-empty) references.
    """
    from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference sets")
    if not predictions:
        raise ValueError("nothing to score: no predictions")
    hyps = [tokenize(p) for p in predictions]
    refs = [[tokenize(r) for r in refs] for refs in references]
    if any(not r for r in refs):
        raise ValueError("every image needs at least one reference caption")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns when some n-gram order has no match; the score is then 0
        return {name: float(nltk_corpus_bleu(refs, hyps, weights=w)) for name, w in BLEU_WEIGHTS.items()}


def corpus_bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Historical name of :func:`nltk_bleu` (nltk corpus BLEU-1..4, no smoothing); same arguments and result."""
    return nltk_bleu(predictions, references)
