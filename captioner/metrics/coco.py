"""coco-caption's BLEU-1..4, CIDEr-D and ROUGE-L, computed the way the reference implementation does.

Re-implemented after ``pycocoevalcap`` (the Python port of coco-caption) without Java and without importing it (it
is a test dependency only; ``tests/test_metrics.py`` checks every number against it to 1e-6). :func:`bleu`,
:func:`cider` and :func:`rouge_l` take ``{image_id: caption}`` / ``{image_id: [reference, ...]}`` dicts and
tokenize with :func:`captioner.metrics.tokenizer.coco_tokenize`; the ``_*_from_tokens`` functions score already
tokenized captions (used by :func:`captioner.metrics.score_captions`, which tokenizes once for all three).

Scales: BLEU and ROUGE-L are fractions in [0, 1]; CIDEr-D is on coco-caption's scale (x10, so roughly 0-10).
See ``docs/metrics.md`` for the formulas and their sources.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from captioner.metrics.tokenizer import cached_coco_tokens

# ---------------------------------------------------------------------------------------------------------------
# Shared input handling
# ---------------------------------------------------------------------------------------------------------------

Tokens = tuple[str, ...]


def prepare_tokens(
    preds: Mapping[Hashable, str], refs: Mapping[Hashable, Sequence[str]]
) -> tuple[list[Tokens], list[list[Tokens]]]:
    """Check ``{id: caption}`` / ``{id: [reference, ...]}`` inputs and tokenize them with :func:`coco_tokenize`."""
    if not preds:
        raise ValueError("nothing to score: no predictions (pass {image_id: caption, ...})")
    missing = [key for key in preds if key not in refs]
    extra = [key for key in refs if key not in preds]
    if missing or extra:
        raise ValueError(f"predictions and references must cover the same image ids: {len(missing)} predictions "
                         f"have no references (e.g. {missing[:3]}), {len(extra)} reference sets have no prediction "
                         f"(e.g. {extra[:3]}); score the intersection or fill in the gaps")
    hyps, ref_tokens = [], []
    for key, caption in preds.items():
        candidates = refs[key]
        if not isinstance(caption, str):
            raise TypeError(f"prediction for image {key!r} must be a string, got {type(caption).__name__}; "
                            "use '' for an empty caption")
        if isinstance(candidates, str):
            raise TypeError(f"references for image {key!r} must be a list of strings, got one string; "
                            f"wrap it in a list: [{candidates!r}]")
        if len(candidates) == 0:
            raise ValueError(f"image {key!r} has no reference captions; give it at least one reference or leave "
                             "it out of both predictions and references")
        hyps.append(cached_coco_tokens(caption))
        ref_tokens.append([cached_coco_tokens(_check_reference(key, ref)) for ref in candidates])
    return hyps, ref_tokens


def _check_reference(key: Hashable, ref: object) -> str:
    """Return ``ref`` if it is a string, else raise a TypeError naming the image."""
    if not isinstance(ref, str):
        raise TypeError(f"reference captions of image {key!r} must be strings, got {type(ref).__name__}: {ref!r}")
    return ref


class _Grams(NamedTuple):
    """Distinct n-grams of one order in a scored corpus, with their counts per sentence.

    N-grams are dense integer ids (``0 .. size - 1``); the candidate of image ``i`` owns the keys
    ``i * size + gram`` (sorted), the flat list of references owns ``(ref_sent, ref_gram)`` rows.
    """

    hyp_key: np.ndarray
    hyp_count: np.ndarray
    ref_sent: np.ndarray
    ref_gram: np.ndarray
    ref_count: np.ndarray
    size: int


def _gram_ids(sentences: list[Tokens], n: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """For k = 1..n: the sentence index and dense n-gram id of every k-gram occurrence, and the number of ids."""
    vocab: dict[str, int] = {}
    ids = np.array([vocab.setdefault(t, len(vocab)) for s in sentences for t in s], dtype=np.int64)
    owner = np.repeat(np.arange(len(sentences), dtype=np.int64), [len(s) for s in sentences])
    start, gram, size = np.arange(len(ids)), ids, len(vocab)
    out = [(owner, gram, size)]
    for k in range(2, n + 1):
        keep = start + k - 1 < len(ids)
        keep[keep] = owner[start[keep] + k - 1] == owner[start[keep]]
        start, prev = start[keep], gram[keep]
        uniq, gram = np.unique(prev * (len(vocab) + 1) + ids[start + k - 1], return_inverse=True)
        size = len(uniq)
        out.append((owner[start], gram.reshape(-1), size))
    return out


def _corpus_grams(hyps: list[Tokens], refs: list[list[Tokens]], n: int) -> tuple[list[_Grams], np.ndarray]:
    """Count the 1..n-grams of every candidate and reference; also return the image index of each reference."""
    sentences = list(hyps) + [ref for ref_list in refs for ref in ref_list]
    ref_image = np.repeat(np.arange(len(refs)), [len(ref_list) for ref_list in refs])
    tables = []
    for owner, gram, size in _gram_ids(sentences, n):
        size = max(size, 1)
        keys, counts = np.unique(owner * size + gram, return_counts=True)
        sent, gram_of = keys // size, keys % size
        is_hyp = sent < len(hyps)
        tables.append(_Grams(keys[is_hyp], counts[is_hyp], sent[~is_hyp] - len(hyps), gram_of[~is_hyp],
                             counts[~is_hyp], size))
    return tables, ref_image


def _lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``keys`` in ``sorted_keys`` (clipped to a valid index) and whether each was found."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return pos, sorted_keys[pos] == keys


# ---------------------------------------------------------------------------------------------------------------
# BLEU (Papineni et al. 2002) as coco-caption computes it
# ---------------------------------------------------------------------------------------------------------------


def _clipped_matches(grams: _Grams, ref_image: np.ndarray) -> int:
    """Sum over images of min(count in the candidate, max count in one reference) over n-grams of one order."""
    ref_key = ref_image[grams.ref_sent] * grams.size + grams.ref_gram
    order = np.argsort(ref_key, kind="stable")
    keys, counts = ref_key[order], grams.ref_count[order]
    if len(keys) == 0:
        return 0
    first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    keys, max_counts = keys[first], np.maximum.reduceat(counts, first)
    pos, found = _lookup(keys, grams.hyp_key)
    return int(np.minimum(grams.hyp_count, max_counts[pos])[found].sum())


def bleu_from_tokens(hyps: list[Tokens], refs: list[list[Tokens]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n exactly as pycocoevalcap's ``BleuScorer.compute_score(option="closest")``.

    Clipped n-gram matches and candidate n-gram counts are summed over the corpus; the reference length of an image
    is the reference length closest to the candidate's (the shorter one on a tie); the brevity penalty uses the
    summed lengths. A zero count is kept just above zero by coco-caption's constants (numerators + 1e-15,
    denominators + 1e-9), so "no matching 4-gram" gives a tiny positive BLEU-4, not 0.
    """
    tiny, small = 1e-15, 1e-9
    tables, ref_image = _corpus_grams(hyps, refs, n)
    correct = [_clipped_matches(grams, ref_image) for grams in tables]
    hyp_len = np.array([len(hyp) for hyp in hyps], dtype=np.int64)
    ref_len = np.array([len(ref) for ref_list in refs for ref in ref_list], dtype=np.int64)
    guess = [int(np.maximum(0, hyp_len - k).sum()) for k in range(n)]
    base = int(ref_len.max()) + 1  # rank references by (distance to the candidate's length, length)
    rank = np.abs(ref_len - hyp_len[ref_image]) * base + ref_len
    first_ref = np.r_[0, np.cumsum([len(ref_list) for ref_list in refs])[:-1]]
    test_total, ref_total = int(hyp_len.sum()), int((np.minimum.reduceat(rank, first_ref) % base).sum())
    scores, product = [], 1.0
    for k in range(n):
        product *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_total + tiny) / (ref_total + small)
    if ratio < 1:
        scores = [score * math.exp(1 - 1 / ratio) for score in scores]
    return scores


def bleu(preds: Mapping[Hashable, str], refs: Mapping[Hashable, Sequence[str]], n: int = 4) -> dict[str, float]:
    """Corpus BLEU-1..n as coco-caption (pycocoevalcap ``Bleu(n)``) computes it, on :func:`coco_tokenize` tokens.

    Args:
        preds: ``{image_id: predicted caption}``.
        refs: ``{image_id: [reference caption, ...]}`` with the same ids, at least one reference each.
        n: highest n-gram order.

    Returns:
        ``{"bleu1": ..., "bleu<n>": ...}``, fractions in [0, 1].

    Raises:
        ValueError: no predictions, ids that differ between ``preds`` and ``refs``, an image without references,
            or ``n < 1``.
        TypeError: a caption that is not a string.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1 (the highest n-gram order), got {n}")
    hyps, ref_tokens = prepare_tokens(preds, refs)
    return {f"bleu{k + 1}": score for k, score in enumerate(bleu_from_tokens(hyps, ref_tokens, n))}


# ---------------------------------------------------------------------------------------------------------------
# CIDEr-D (Vedantam et al. 2015) as coco-caption computes it
# ---------------------------------------------------------------------------------------------------------------


def _cider_order(grams: _Grams, ref_image: np.ndarray, num_images: int) -> tuple[np.ndarray, ...]:
    """For one n-gram order: clipped TF-IDF dot product per reference, and candidate / reference vector norms.

    Document frequency = number of images whose reference set contains the n-gram; IDF = log(number of images) -
    log(max(1, df)); weight = count x IDF; the dot product sums min(candidate weight, reference weight) x reference
    weight over the n-grams they share.
    """
    image_of_ref = ref_image[grams.ref_sent]
    documents = np.unique(image_of_ref * grams.size + grams.ref_gram) % grams.size
    idf = math.log(float(num_images)) - np.log(np.maximum(1.0, np.bincount(documents, minlength=grams.size)))
    hyp_image, hyp_gram = grams.hyp_key // grams.size, grams.hyp_key % grams.size
    hyp_w, ref_w = grams.hyp_count * idf[hyp_gram], grams.ref_count * idf[grams.ref_gram]
    hyp_norm = np.sqrt(np.bincount(hyp_image, hyp_w**2, minlength=num_images))
    ref_norm = np.sqrt(np.bincount(grams.ref_sent, ref_w**2, minlength=len(ref_image)))
    pos, found = _lookup(grams.hyp_key, image_of_ref * grams.size + grams.ref_gram)
    shared = np.where(found, np.minimum(hyp_w[pos] if len(hyp_w) else 0.0, ref_w) * ref_w, 0.0)
    return np.bincount(grams.ref_sent, shared, minlength=len(ref_image)), hyp_norm, ref_norm


def cider_from_tokens(hyps: list[Tokens], refs: list[list[Tokens]], n: int = 4, sigma: float = 6.0) -> np.ndarray:
    """Per-image CIDEr-D exactly as pycocoevalcap's ``CiderScorer`` (its mean is the corpus score).

    IDF comes from the evaluated references (document = one image's reference set, log of the number of images as
    the reference length); candidate weights are clipped by the reference weights (``min(c, r) * r``); cosine
    similarity per order times a Gaussian length penalty exp(-delta^2 / (2 sigma^2)); mean over orders and
    references, times 10. The length is the number of bigrams (words - 1, 0 for an empty or one-word sentence):
    pycocoevalcap counts the term frequencies of order index 1 only, and we keep that.
    """
    tables, ref_image = _corpus_grams(hyps, refs, n)
    dots, hyp_norms, ref_norms = np.zeros((len(ref_image), n)), np.zeros((len(hyps), n)), np.zeros((len(ref_image), n))
    for k, grams in enumerate(tables):
        dots[:, k], hyp_norms[:, k], ref_norms[:, k] = _cider_order(grams, ref_image, len(hyps))
    denominator = hyp_norms[ref_image] * ref_norms
    cosine = np.divide(dots, denominator, out=dots.copy(), where=denominator != 0)
    lengths = [max(len(s) - 1, 0) if n >= 2 else 0 for s in [*hyps, *(ref for ref_list in refs for ref in ref_list)]]
    delta = np.array(lengths[: len(hyps)], dtype=float)[ref_image] - np.array(lengths[len(hyps):], dtype=float)
    penalised = cosine * np.exp(-(delta**2) / (2 * sigma**2))[:, None]
    per_image = np.stack([np.bincount(ref_image, penalised[:, k], minlength=len(hyps)) for k in range(n)], axis=1)
    return per_image.mean(axis=1) / np.bincount(ref_image, minlength=len(hyps)) * 10.0


def cider(preds: Mapping[Hashable, str], refs: Mapping[Hashable, Sequence[str]], n: int = 4,
          sigma: float = 6.0) -> float:
    """Corpus CIDEr-D as coco-caption (pycocoevalcap ``Cider``) computes it, on :func:`coco_tokenize` tokens.

    The IDF statistics come from ``refs`` themselves, so a score depends on which images are scored together; with
    a single image every IDF is log(1/1) = 0 and CIDEr-D is 0.

    Args:
        preds: ``{image_id: predicted caption}``.
        refs: ``{image_id: [reference caption, ...]}`` with the same ids, at least one reference each.
        n: highest n-gram order (coco-caption: 4).
        sigma: standard deviation of the Gaussian length penalty (coco-caption: 6).

    Returns:
        CIDEr-D on coco-caption's scale (x10; 0 for no overlap, typically 0-10 and at most 10 per n-gram order).

    Raises:
        ValueError: no predictions, ids that differ between ``preds`` and ``refs``, an image without references,
            ``n < 1`` or ``sigma <= 0``.
        TypeError: a caption that is not a string.
    """
    if n < 1 or sigma <= 0:
        raise ValueError(f"need n >= 1 and sigma > 0 (coco-caption: n=4, sigma=6), got n={n}, sigma={sigma}")
    hyps, ref_tokens = prepare_tokens(preds, refs)
    return float(np.mean(cider_from_tokens(hyps, ref_tokens, n, sigma)))


# ---------------------------------------------------------------------------------------------------------------
# ROUGE-L (Lin 2004) as coco-caption computes it
# ---------------------------------------------------------------------------------------------------------------


def _lcs_length(a: Tokens, b: Tokens) -> int:
    """Length of the longest common subsequence of two token sequences (bit-parallel, Hyyro 2004).

    Bit i of ``v`` tracks row i of the classic dynamic programme; the zero bits left at the end count the LCS.
    """
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_from_tokens(hyps: list[Tokens], refs: list[list[Tokens]], beta: float = 1.2) -> np.ndarray:
    """Per-image ROUGE-L exactly as pycocoevalcap's ``Rouge`` (its mean is the corpus score).

    Precision and recall of the LCS are maximised over the references separately, then combined as
    F = (1 + beta^2) P R / (R + beta^2 P). Like pycocoevalcap (which splits on " "), an empty sentence counts as
    one empty token, so an empty caption against an empty reference scores 1.
    """
    scores = np.zeros(len(hyps))
    for image, (hyp, ref_list) in enumerate(zip(hyps, refs)):
        cand = hyp or ("",)
        lcs = [_lcs_length(ref or ("",), cand) for ref in ref_list]
        prec = max(length / len(cand) for length in lcs)
        rec = max(length / len(ref or ("",)) for length, ref in zip(lcs, ref_list))
        if prec != 0 and rec != 0:
            scores[image] = (1 + beta**2) * prec * rec / (rec + beta**2 * prec)
    return scores


def rouge_l(preds: Mapping[Hashable, str], refs: Mapping[Hashable, Sequence[str]], beta: float = 1.2) -> float:
    """Mean sentence-level ROUGE-L as coco-caption (pycocoevalcap ``Rouge``) computes it.

    Args:
        preds: ``{image_id: predicted caption}``.
        refs: ``{image_id: [reference caption, ...]}`` with the same ids, at least one reference each.
        beta: recall weight of the F-measure (coco-caption: 1.2).

    Returns:
        ROUGE-L, a fraction in [0, 1].

    Raises:
        ValueError: no predictions, ids that differ between ``preds`` and ``refs``, or an image without references.
        TypeError: a caption that is not a string.
    """
    hyps, ref_tokens = prepare_tokens(preds, refs)
    return float(np.mean(rouge_from_tokens(hyps, ref_tokens, beta)))
