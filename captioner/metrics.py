"""Caption metrics on plain strings (no torch, no model), so they can score anyone's captions.

BLEU-1..4 here is nltk's ``corpus_bleu``: corpus-level modified n-gram precision with uniform weights, brevity
penalty against the closest reference length, **no smoothing** (a corpus with no matching 4-gram scores 0).
Text is tokenized with :func:`captioner.vocab.tokenize` (lowercase, punctuation dropped) on both sides.
Scores are fractions in [0, 1].
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


def corpus_bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """nltk corpus BLEU-1..4.

    Args:
        predictions: one caption per image.
        references: for each image, its reference captions.

    Returns:
        ``{"bleu1": ..., "bleu2": ..., "bleu3": ..., "bleu4": ...}``, fractions in [0, 1].
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
