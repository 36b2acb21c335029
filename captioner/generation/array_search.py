"""Greedy and beam search on numpy arrays, for decoders that take and give them (the ONNX Runtime decoder), so
that captioning with ONNX Runtime runs without PyTorch.

The same searches as :mod:`captioner.generation.search`, step for step: the special-token mask, the n-gram guard,
finished beams frozen in their slots, images leaving the batch once settled, the n best ranked by the
length-normalised score. Scores are float32 as there; the two agree to rounding (``tests/test_array_search.py``
compares their captions and log-probabilities on random decoders). The decoder's context is a tuple of arrays with
rows on axis 0, its state a tuple of ``(layers, rows, H)`` arrays.
"""

from __future__ import annotations

import numpy as np

from captioner.generation.config import GenerationConfig, Hypothesis
from captioner.vocab import Vocabulary


def supports(config: GenerationConfig) -> bool:
    """True when these searches can do what ``config`` asks: beam or greedy search without attention weights."""
    return config.method in ("beam", "greedy") and not config.return_attention


def array_search(decoder, features: np.ndarray, vocab: Vocabulary,
                 config: GenerationConfig) -> list[list[Hypothesis]]:
    """The search ``config.method`` names (``beam`` or ``greedy``; see :func:`supports`) for features ``(B, ...)``."""
    if not supports(config):
        raise ValueError(f"the numpy search does beam and greedy search without attention, not {config.method!r}")
    if features.shape[0] == 0:
        return []
    if config.method == "greedy":
        return greedy(decoder, features, vocab, config)
    return beam(decoder, features, vocab, config)


def masked_logits(logits: np.ndarray, vocab: Vocabulary) -> np.ndarray:
    """A float32 copy of ``logits`` ``(N, V)`` with ``<pad> <start> <unk>`` at ``-inf``: never generated."""
    logits = logits.astype(np.float32, copy=True)
    logits[:, [vocab.pad_id, vocab.start_id, vocab.unk_id]] = -np.inf
    return logits


def log_probs(logits: np.ndarray, vocab: Vocabulary) -> np.ndarray:
    """Log-softmax over the vocabulary with ``<pad> <start> <unk>`` masked out: ``(N, V)`` → float32 ``(N, V)``."""
    logits = masked_logits(logits, vocab)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def block_repeats(logp: np.ndarray, history: np.ndarray, n: int) -> np.ndarray:
    """``logp`` ``(N, V)`` with the tokens that would repeat an n-gram of ``history`` ``(N, t)`` set to ``-inf``
    (in place)."""
    t = history.shape[1]
    if n < 2 or t < n:
        return logp
    windows = np.lib.stride_tricks.sliding_window_view(history, n - 1, axis=1)[:, :-1]  # (N, t-n+1, n-1)
    hits = (windows == history[:, None, t - n + 1 :]).all(axis=2)  # (N, t-n+1): earlier copies of the last n-1
    rows, where = np.nonzero(hits)
    banned = history[rows, where + n - 1]  # the token that followed each copy
    inside = banned < logp.shape[1]  # a word past these columns (an added tag word) has no column to ban
    logp[rows[inside], banned[inside]] = -np.inf
    return logp


def length_score(log_prob: np.ndarray, length: np.ndarray, penalty: float) -> np.ndarray:
    """``log_prob / length ** penalty`` in float32 (lengths count ``<end>``)."""
    if penalty == 0:
        return log_prob
    return np.float32(log_prob) / np.power(np.maximum(length, 1).astype(np.float32), np.float32(penalty))


def hypothesis(row: list[int], log_prob: float, penalty: float, vocab: Vocabulary) -> Hypothesis:
    """Cut a generated row at ``<end>`` and wrap it."""
    finished = vocab.end_id in row
    tokens = row[: row.index(vocab.end_id)] if finished else [t for t in row if t != vocab.pad_id]
    score = float(length_score(np.float32(log_prob), np.array(len(tokens) + int(finished)), penalty))
    return Hypothesis(tokens=tokens, log_prob=log_prob, score=score, finished=finished)


def greedy(decoder, features: np.ndarray, vocab: Vocabulary, config: GenerationConfig) -> list[list[Hypothesis]]:
    """The most probable token at every step, one row per image."""
    context, state = decoder.start(features)
    batch = features.shape[0]
    tokens = np.full(batch, vocab.start_id, dtype=np.int64)
    done = np.zeros(batch, dtype=bool)
    total = np.zeros(batch, dtype=np.float32)
    out = np.full((batch, config.max_length), vocab.pad_id, dtype=np.int64)
    for t in range(config.max_length):
        logits, state, _ = decoder.step(tokens, context, state)
        logp = block_repeats(log_probs(logits, vocab), out[:, :t], config.no_repeat_ngram or 0)
        tokens = np.where(done, vocab.pad_id, logp.argmax(axis=1))
        total += np.where(done, np.float32(0), logp[np.arange(batch), tokens])
        out[:, t] = tokens
        done |= tokens == vocab.end_id
        if done.all():
            break
    return [[hypothesis(row, float(lp), config.length_penalty, vocab)] for row, lp in zip(out.tolist(), total)]


def top_k(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest values of each row ``(N, M)`` and their columns, largest first (ties: the lower column)."""
    rows = np.arange(values.shape[0])[:, None]
    if k == 1:
        best = values.argmax(axis=1)[:, None]
        return values[rows, best], best
    if k < values.shape[1]:
        part = np.argpartition(-values, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(values.shape[1]), values.shape)
    picked = values[rows, part]
    order = np.lexsort((part, -picked), axis=1)
    return picked[rows, order], part[rows, order]


def beam(decoder, features: np.ndarray, vocab: Vocabulary, config: GenerationConfig) -> list[list[Hypothesis]]:
    """Beam search over all images × beams at once; a settled image leaves the batch (see
    :func:`captioner.generation.search.beam_search`)."""
    k = config.beam_size
    search = _Beams(decoder, features, vocab, config)
    for _ in range(config.max_length):
        logits, state = search.decode(decoder)
        logp = log_probs(logits, vocab)  # (N*K, V)
        if config.no_repeat_ngram:
            block_repeats(logp, search.history, config.no_repeat_ngram)
        logp[search.done] = -np.inf
        logp[search.done, vocab.pad_id] = 0.0  # a finished beam continues only with <pad>, at no cost
        n, size = len(search.images), logp.shape[1]
        candidates = (search.scores.reshape(-1, 1) + logp).reshape(n, k * size)  # (N, K*V)
        search.scores, flat = top_k(candidates, k)  # (N, K)
        parent = (flat // size + (np.arange(n) * k)[:, None]).reshape(-1)
        search.advance(parent, (flat % size).reshape(-1), state)
        done = search.done.reshape(n, k)
        stop = done.all(axis=1)
        if config.length_penalty == 0:
            stop |= settled(search.scores, done, config.n_best)
        if search.retire(stop):
            break
    search.retire(np.ones(len(search.images), dtype=bool))
    return search.results


def settled(scores: np.ndarray, done: np.ndarray, n_best: int) -> np.ndarray:
    """Images ``(B,)`` whose ``n_best``-th best finished beam scores at least as high as the best unfinished one."""
    finished = -np.sort(-np.where(done, scores, -np.inf), axis=1)[:, n_best - 1]
    running = np.where(done, -np.inf, scores).max(axis=1)
    return finished >= running


class _Beams:
    """The images still searching: their rows ``(N * K, ...)``, and the answers of those that left."""

    def __init__(self, decoder, features: np.ndarray, vocab: Vocabulary, config: GenerationConfig) -> None:
        batch, k = features.shape[0], config.beam_size
        self.vocab, self.config, self.images = vocab, config, list(range(batch))
        self.results: list[list[Hypothesis] | None] = [None] * batch
        context, state = decoder.start(features)
        self.first: tuple | None = (context, state)  # step 0 runs once per image: its K beams are the same row
        self.context = tuple(np.repeat(c, k, axis=0) for c in context)  # (B*K, ...)
        self.state: tuple = ()
        self.scores = np.full((batch, k), -np.inf, dtype=np.float32)
        self.scores[:, 0] = 0.0  # all beams start identical: only the first may expand at step 0
        self.tokens = np.full(batch * k, vocab.start_id, dtype=np.int64)
        self.history = np.empty((batch * k, 0), dtype=np.int64)
        self.done = np.zeros(batch * k, dtype=bool)

    def decode(self, decoder) -> tuple[np.ndarray, tuple]:
        """One decoder step for every row: logits ``(N*K, V)`` and the new state. At the first step every beam of an
        image is the same row, so the decoder runs once per image and its outputs are repeated."""
        if self.first is None:
            logits, state, _ = decoder.step(self.tokens, self.context, self.state)
            return logits, state
        (context, state), self.first, k = self.first, None, self.config.beam_size
        logits, state, _ = decoder.step(self.tokens[::k], context, state)
        return np.repeat(logits, k, axis=0), tuple(np.repeat(s, k, axis=1) for s in state)

    def advance(self, parent: np.ndarray, tokens: np.ndarray, state: tuple) -> None:
        """Each new row's parent row ``(N*K,)`` and token ``(N*K,)``; ``state``: the step's new state."""
        self.tokens = tokens
        self.history = np.concatenate([self.history[parent], tokens[:, None]], axis=1)  # (N*K, t)
        self.state = tuple(s[:, parent] for s in state)
        self.done = self.done[parent] | (tokens == self.vocab.end_id)

    def retire(self, stop: np.ndarray) -> bool:
        """Answer the images ``stop`` (bool ``(N,)``) and take their rows out; True when none is left."""
        if not stop.any():
            return False
        k = self.config.beam_size
        rows = np.repeat(stop, k)
        answers = collect(self.history[rows], self.scores[stop], self.vocab, self.config)
        for image, hyps in zip((i for i, s in zip(self.images, stop.tolist()) if s), answers):
            self.results[image] = hyps
        self.images = [i for i, s in zip(self.images, stop.tolist()) if not s]
        if self.images:
            keep = ~rows
            self.context = tuple(c[keep] for c in self.context)
            self.state = tuple(s[:, keep] for s in self.state)
            self.scores, self.tokens = self.scores[~stop], self.tokens[keep]
            self.history, self.done = self.history[keep], self.done[keep]
        return not self.images


def collect(history: np.ndarray, scores: np.ndarray, vocab: Vocabulary,
            config: GenerationConfig) -> list[list[Hypothesis]]:
    """Rank each image's beams ``(B, K)`` by the length-normalised score and keep the n best."""
    batch, k = scores.shape
    lengths = (history != vocab.pad_id).sum(axis=1).reshape(batch, k)  # <end> included
    ranked = np.where(np.isinf(scores), -np.inf, length_score(scores, lengths, config.length_penalty))
    order = np.argsort(-ranked, axis=1, kind="stable")[:, : config.n_best]
    rows, log_probs_ = history.tolist(), scores.tolist()
    return [[hypothesis(rows[b * k + j], log_probs_[b][j], config.length_penalty, vocab) for j in beams]
            for b, beams in enumerate(order.tolist())]
