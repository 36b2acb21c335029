"""Caption metrics on plain strings (no torch, no model), so they can score anyone's captions.

Two families live here:

* **coco-caption metrics** -- BLEU-1..4, CIDEr-D and ROUGE-L computed the way the reference implementation
  (``pycocoevalcap``, the Python port of coco-caption) computes them, re-implemented without Java and without
  importing ``pycocoevalcap`` (it is a test dependency only; ``tests/test_metrics.py`` checks every number against
  it to 1e-6). Entry point: :func:`score_captions`; per-metric functions :func:`bleu`, :func:`cider`,
  :func:`rouge_l` take ``{image_id: caption}`` / ``{image_id: [reference, ...]}`` dicts.
* **nltk BLEU** -- :func:`nltk_bleu` (also importable under its historical name :func:`corpus_bleu`): nltk's
  ``corpus_bleu`` on :func:`captioner.vocab.tokenize` tokens, no smoothing.

Tokenization (:func:`coco_tokenize`) replaces coco-caption's Java step (Stanford CoreNLP 3.4.1 ``PTBTokenizer
-preserveLines -lowerCase``, then dropping the tokens in :data:`PUNCTUATIONS`) with a Python re-creation of its lexer;
its rules and known differences are described in :mod:`captioner.metrics.tokenizer`.

Modules: :mod:`~captioner.metrics.tokenizer` (:func:`coco_tokenize`, :data:`PUNCTUATIONS`),
:mod:`~captioner.metrics.coco` (:func:`bleu`, :func:`cider`, :func:`rouge_l`), :mod:`~captioner.metrics.nltk_scores`
(:func:`nltk_bleu`, :func:`corpus_bleu`, :data:`BLEU_WEIGHTS`); this package module holds the entry points
:func:`score_captions` and :func:`caption_stats` and re-exports all of the above.

Scales: BLEU and ROUGE-L are fractions in [0, 1]; CIDEr-D is on coco-caption's scale (x10, so roughly 0-10).
See ``docs/metrics.md`` for the formulas and their sources.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from captioner.metrics.coco import (
    Tokens,
    bleu,
    bleu_from_tokens,
    cider,
    cider_from_tokens,
    prepare_tokens,
    rouge_from_tokens,
    rouge_l,
)
from captioner.metrics.nltk_scores import BLEU_WEIGHTS, corpus_bleu, nltk_bleu
from captioner.metrics.tokenizer import PUNCTUATIONS, coco_tokenize

__all__ = [
    "BLEU_WEIGHTS",
    "PUNCTUATIONS",
    "Tokens",
    "bleu",
    "caption_stats",
    "cider",
    "coco_tokenize",
    "corpus_bleu",
    "nltk_bleu",
    "rouge_l",
    "score_captions",
]


def score_captions(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Score captions with coco-caption's BLEU-1..4, CIDEr-D and ROUGE-L (no METEOR/SPICE: they need Java).

    Args:
        predictions: one caption per image.
        references: for each image, in the same order, its reference captions (at least one).

    Returns:
        ``{"bleu1", "bleu2", "bleu3", "bleu4", "cider", "rouge_l"}``: BLEU and ROUGE-L are fractions in [0, 1],
        CIDEr-D is on coco-caption's x10 scale.

    Raises:
        ValueError: no predictions, different numbers of predictions and reference sets, or an image without
            references.
        TypeError: a caption that is not a string.
    """
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references must be sequences (one entry per image), not a single string")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference sets; "
                         "pass one reference list per prediction, in the same order")
    if len(predictions) == 0:
        raise ValueError("nothing to score: no predictions (pass one caption per image)")
    hyps, refs = prepare_tokens(dict(enumerate(predictions)), dict(enumerate(references)))
    scores = {f"bleu{k + 1}": value for k, value in enumerate(bleu_from_tokens(hyps, refs, 4))}
    scores["cider"] = float(np.mean(cider_from_tokens(hyps, refs)))
    scores["rouge_l"] = float(np.mean(rouge_from_tokens(hyps, refs)))
    return scores


def caption_stats(predictions: Sequence[str]) -> dict[str, float | int]:
    """Diversity statistics of generated captions (compared after :func:`coco_tokenize`).

    Args:
        predictions: one caption per image.

    Returns:
        ``identical_caption_rate``: share of images given the single most frequent caption (1/len for all-unique
        captions, 1.0 when every image gets the same caption); ``unique_captions``: number of distinct captions;
        ``vocab_used``: number of distinct tokens; ``mean_length``: mean number of tokens per caption.

    Raises:
        ValueError: if there are no predictions.
        TypeError: if a caption is not a string.
    """
    if isinstance(predictions, str):
        raise TypeError("caption_stats expects a sequence of captions, not a single string; wrap it in a list")
    if len(predictions) == 0:
        raise ValueError("caption_stats needs at least one caption")
    tokens = [tuple(coco_tokenize(caption)) for caption in predictions]
    counts = Counter(tokens)
    return {
        "identical_caption_rate": max(counts.values()) / len(tokens),
        "unique_captions": len(counts),
        "vocab_used": len({token for caption in tokens for token in caption}),
        "mean_length": sum(len(caption) for caption in tokens) / len(tokens),
    }
