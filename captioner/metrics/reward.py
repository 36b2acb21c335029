"""CIDEr-D against a fixed corpus, one caption at a time: the reward of self-critical training.

coco-caption's CIDEr-D (:func:`captioner.metrics.cider`) takes its document frequencies from the references of
the images being scored, so a caption's score depends on the batch it is scored in. A reward must not: here the
document frequencies come once from a whole corpus (the training split's references, as in Rennie et al. 2017,
"Self-critical Sequence Training for Image Captioning"), and every candidate is scored against its own image's
references with those fixed statistics. The formula is otherwise coco-caption's: TF-IDF n-gram vectors for
n = 1..4, candidate weights clipped by the reference weights, cosine per order, Gaussian length penalty on the
bigram count (sigma 6), mean over orders and references, times 10. Scored on an image set with the corpus equal to
that set, the mean equals :func:`captioner.metrics.cider` (tested).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

Tokens = Sequence[str]


class _Vector(NamedTuple):
    """A sentence's TF-IDF vectors, one dict per n-gram order, their norms and its length in bigrams."""

    weights: list[dict[tuple[str, ...], float]]
    norms: list[float]
    length: int


def _ngram_counts(tokens: Tokens, n: int) -> Counter:
    """Counts of every 1..n-gram of a sentence, keyed by the n-gram tuple."""
    words = tuple(tokens)
    return Counter(words[i : i + k] for k in range(1, n + 1) for i in range(len(words) - k + 1))


class CiderD:
    """CIDEr-D of candidates against their image's references, with document frequencies fixed by a corpus.

    Args:
        references: for each image, its tokenized reference captions (at least one each); they are both what
            candidates are compared with and the corpus the document frequencies are counted over.
        n: highest n-gram order (coco-caption: 4).
        sigma: standard deviation of the Gaussian length penalty (coco-caption: 6).

    Raises:
        ValueError: no images, an image without references, ``n < 1`` or ``sigma <= 0``.
    """

    def __init__(self, references: Sequence[Sequence[Tokens]], n: int = 4, sigma: float = 6.0) -> None:
        if n < 1 or sigma <= 0:
            raise ValueError(f"need n >= 1 and sigma > 0 (coco-caption: n=4, sigma=6), got n={n}, sigma={sigma}")
        if not references:
            raise ValueError("CiderD needs the references of at least one image")
        self.n, self.sigma = n, sigma
        counts = []
        document_freq: Counter = Counter()
        for image, refs in enumerate(references):
            if not refs:
                raise ValueError(f"image {image} has no reference captions; leave it out or give it one")
            per_ref = [_ngram_counts(ref, n) for ref in refs]
            document_freq.update(set().union(*per_ref))
            counts.append(per_ref)
        self._log_images = math.log(float(len(references)))
        self._idf = {gram: self._log_images - math.log(df) for gram, df in document_freq.items()}
        self._refs = [[self._vector(c) for c in per_ref] for per_ref in counts]

    def __len__(self) -> int:
        return len(self._refs)

    def _vector(self, counts: Counter) -> _Vector:
        weights: list[dict[tuple[str, ...], float]] = [{} for _ in range(self.n)]
        length = 0
        for gram, count in counts.items():
            weights[len(gram) - 1][gram] = count * self._idf.get(gram, self._log_images)
            if len(gram) == 2:
                length += count
        norms = [math.sqrt(sum(w * w for w in order.values())) for order in weights]
        return _Vector(weights, norms, length)

    def _similarity(self, cand: _Vector, ref: _Vector) -> float:
        total = 0.0
        for k in range(self.n):
            ref_w = ref.weights[k]
            dot = 0.0
            for gram, weight in cand.weights[k].items():
                other = ref_w.get(gram)
                if other is not None:
                    dot += min(weight, other) * other
            if cand.norms[k] != 0 and ref.norms[k] != 0:
                dot /= cand.norms[k] * ref.norms[k]
            total += dot
        delta = cand.length - ref.length
        return total * math.exp(-(delta * delta) / (2 * self.sigma**2))

    def score(self, images: Sequence[int], candidates: Sequence[Tokens]) -> np.ndarray:
        """CIDEr-D of each candidate against the references of its image.

        Args:
            images: index (into ``references``) of the image each candidate describes.
            candidates: tokenized candidate captions, parallel to ``images``.

        Returns:
            Scores ``(N,)`` on coco-caption's x10 scale.
        """
        if len(images) != len(candidates):
            raise ValueError(f"{len(images)} image indices but {len(candidates)} candidates; pass one each")
        out = np.zeros(len(candidates))
        for row, (image, tokens) in enumerate(zip(images, candidates)):
            cand = self._vector(_ngram_counts(tokens, self.n))
            refs = self._refs[image]
            out[row] = sum(self._similarity(cand, ref) for ref in refs) / (self.n * len(refs)) * 10.0
        return out
