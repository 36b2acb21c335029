"""Constrained beam search (Anderson et al. 2017, "Guided Open Vocabulary Image Captioning with Constrained Beam
Search"): captions that contain given words or phrases, batched over images. The one implementation, for every
backend: its bookkeeping runs on numpy arrays; the decoder's context and state stay whatever the decoder keeps
(numpy arrays for ONNX Runtime, tensors on the model's device for PyTorch through
:class:`captioner.generation.tensor_rows.TensorDecoder`), moved only through the decoder's ``take_context``,
``take_state`` and ``put_state`` (:class:`ArrayRows` for tuples of arrays).

For C constraints (words or short phrases, as token ids) the search keeps a beam of K hypotheses for each state of
a finite-state machine (:mod:`captioner.generation.constraint_states`): each of the 2^C sets of constraints already
met, and for a phrase of n words also "in the middle of it, k words written". At every step each beam is extended
as in plain beam search (the finished ones carried along with ``<pad>`` at no cost); writing the first token of an
unmet constraint moves to the state that includes it (or opens the phrase, whose next tokens are then forced). Each
state's beam keeps the K best of everything that lands in it. The answer comes from the fullest set reached, its
finished captions ranked first.

Images whose constraints have the same lengths share one state machine (a *group*); every group's rows (images x
states x beams) go through one decoder step per time step, and an image leaves as soon as its answer is settled (no
running hypothesis can beat its n-th finished one). Each step runs the decoder on the rows that can still matter only
(not finished, score not -inf), and keeps each row's best few free tokens (the beam size plus the most tokens a state
can block) rather than the whole vocabulary per state; the context stays one copy per image. Without constraints
there is one state and the search is plain beam search step for step (tests/test_guided.py checks they agree).
Tokens past ``plain_vocab`` (words added for tags) can only be written as constraint tokens, and log-probabilities
are normalised over the plain vocabulary, so the known words keep exactly the probabilities the plain model gives
them. A constraint may forbid some tokens right before it (a tag phrase that carries its own article, "an envelope",
must not follow "a"), or have to open the caption.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from captioner.arrays import is_tensor
from captioner.generation.array_search import block_repeats, collect, log_probs, masked_logits, top_k
from captioner.generation.config import GenerationConfig, Hypothesis
from captioner.generation.constraint_states import Constraint, normalise, search_states, transitions
from captioner.generation.tags import Tag, constrained_config, tag_constraint
from captioner.vocab import Vocabulary

NEG = np.float32(-np.inf)


def constrained_search(decoder, features: np.ndarray, vocab: Vocabulary, config: GenerationConfig,
                       constraints: list[list[Constraint | list[int]]],
                       plain_vocab: int | None = None) -> list[list[Hypothesis]]:
    """Caption a batch of images so that each caption contains every constraint of its image that fits.

    Args:
        decoder: the decoder (extended with rows for added words when there are any): a PyTorch decoder (given
            tensor features), or one that takes and gives numpy arrays, with the row operations of
            :class:`ArrayRows` (its own, or those defaults).
        features: image features ``(B, D)`` or ``(B, L, C)``: a tensor for a PyTorch decoder, else an array.
        vocab: the (extended) vocabulary.
        config: beam size, max length, length penalty, n-best, repetition guard.
        constraints: each image's constraints (:class:`Constraint` or token-id lists; duplicates and empty ones
            ignored).
        plain_vocab: size of the model's own vocabulary (None: all of ``vocab``).

    Returns:
        For each image, the n best hypotheses of the fullest set of met constraints reached.
    """
    if is_tensor(features) and not hasattr(decoder, "take_state"):  # a PyTorch decoder: its tensors stay on device
        from captioner.generation.tensor_rows import TensorDecoder

        decoder = TensorDecoder(decoder, features.device)
    search = _Batch(decoder, features, vocab, config, [normalise(c) for c in constraints], plain_vocab or len(vocab))
    for _ in range(config.max_length):
        if search.step():
            break
    search.finish_all()
    return search.results


def tag_search(extend: Callable[[Vocabulary], Any], features, vocab: Vocabulary, config: GenerationConfig,
               tags: list[list[Tag]]) -> list[list[Hypothesis]]:
    """The constrained search for each image's tags (:func:`captioner.generation.tags.tag_constraint`), as a beam
    (greedy decoding: one beam, :func:`captioner.generation.tags.constrained_config`).

    Args:
        extend: the decoder with rows for ``vocab``'s extra words, asked for once the constraints have added the tag
            words ``vocab`` lacked.
        features, vocab, config: as :func:`constrained_search` takes them.
        tags: each image's tags.
    """
    constraints = [[tag_constraint(vocab, tag) for tag in image] for image in tags]  # may add words to vocab
    return constrained_search(extend(vocab), features, vocab, constrained_config(config), constraints,
                              plain_vocab=len(vocab))


class _Group:
    """Images whose constraints have the same lengths: one state machine, ``(B, S, K)`` rows."""

    def __init__(self, lengths: tuple[int, ...], images: list[int], constraints: list, k: int) -> None:
        self.lengths, self.images, self.k = lengths, list(images), k
        self.states = search_states(lengths)
        self.into = transitions(lengths, self.states)
        n, count, longest = len(images), len(lengths), max(lengths, default=1)
        tokens = [[list(c.tokens) + [0] * (longest - len(c.tokens)) for c in cs] for cs in constraints]
        self.tokens = np.array(tokens, dtype=np.int64).reshape(n, count, longest)
        widest = max((len(c.forbid_before) for cs in constraints for c in cs), default=0)
        forbid = [[list(c.forbid_before) + [-1] * (widest - len(c.forbid_before)) for c in cs] for cs in constraints]
        self.forbid = np.array(forbid, dtype=np.int64).reshape(n, count, widest)
        self.at_start = np.array([[c.at_start for c in cs] for cs in constraints], dtype=bool).reshape(n, count)
        self.scores = np.full((n, len(self.states), k), NEG, dtype=np.float32)
        self.scores[:, 0, 0] = 0.0  # one empty hypothesis per image, no constraint met

    @property
    def rows_per_image(self) -> int:
        return len(self.states) * self.k

    def candidates(self, target: int, top: tuple[np.ndarray, np.ndarray], forced: _Forced, done: np.ndarray,
                   last: np.ndarray | None) -> tuple[np.ndarray, int | None, np.ndarray, np.ndarray]:
        """The extensions landing in state ``target``: scores ``(B, N)`` (the free source's ``K * W`` best free
        tokens first), the free source or None, and the forced extensions' parents and tokens ``(B, N - K * W)``."""
        k, batch = self.k, len(self.images)
        scores = self.scores.reshape(batch, -1)  # (B, S*K)
        values, parents, tokens, free = [], [], [], None
        for source, kind, arg in self.into[target]:
            rows = slice(source * k, (source + 1) * k)
            if kind == "free":
                part = scores[:, rows, None] + top[0][:, rows]  # (B, K, W)
                if arg:  # first tokens of unmet one-token constraints: written only by moving to their state
                    blocked = self.tokens[:, arg, 0]  # (B, n)
                    part[(top[1][:, rows, :, None] == blocked[:, None, None, :]).any(axis=3)] = NEG
                values.insert(0, part.reshape(batch, -1))
                free = source
                continue
            c, position = arg
            token = np.repeat(self.tokens[:, c, position][:, None], k, axis=1)  # (B, K)
            value = scores[:, rows] + forced(rows, token)
            value[done[:, rows]] = NEG
            if position == 0 and last is not None:  # not the first word: tokens it may not follow, openers only
                if self.forbid.shape[2]:
                    value[(last[:, rows, None] == self.forbid[:, c, None, :]).any(axis=2)] = NEG
                value[self.at_start[:, c]] = NEG
            values.append(value)
            parents.append(np.repeat(np.arange(source * k, (source + 1) * k)[None], batch, axis=0))
            tokens.append(token)
        empty = np.zeros((batch, 0), dtype=np.int64)
        return (np.concatenate(values, axis=1), free, np.concatenate(parents, axis=1) if parents else empty,
                np.concatenate(tokens, axis=1) if tokens else empty)

    def step(self, logp: np.ndarray | None, top: tuple[np.ndarray, np.ndarray] | None, forced: _Forced,
             done: np.ndarray, last: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Every state's K best extensions: each new row's parent within its image's block and its token, both
        ``(B, S*K)`` (one state: plain beam search's step over ``logp`` ``(B, K, V)``)."""
        k, batch = self.k, len(self.images)
        if len(self.states) == 1:
            vocab_size = logp.shape[2]
            best, index = top_k((self.scores.reshape(-1, k, 1) + logp).reshape(batch, -1), k)  # (B, K)
            self.scores = best[:, None]
            return index // vocab_size, index % vocab_size
        width, images = top[0].shape[2], np.arange(batch)[:, None]
        best, parents, tokens = [], [], []
        for target in range(len(self.states)):
            values, free, forced_parent, forced_token = self.candidates(target, top, forced, done, last)
            value, index = top_k(values, k)  # (B, K)
            if free is None:
                parent, token = forced_parent[images, index], forced_token[images, index]
            else:
                free_tokens = top[1][:, free * k : (free + 1) * k].reshape(batch, -1)  # (B, K*W)
                is_free, rest = index < k * width, np.maximum(index - k * width, 0)
                parent = index // width + free * k
                token = free_tokens[images, np.minimum(index, k * width - 1)]
                if forced_parent.shape[1]:
                    parent = np.where(is_free, parent, forced_parent[images, rest])
                    token = np.where(is_free, token, forced_token[images, rest])
            best.append(value)
            parents.append(parent)
            tokens.append(token)
        self.scores = np.stack(best, axis=1)  # (B, S, K)
        return np.concatenate(parents, axis=1), np.concatenate(tokens, axis=1)

    def can_stop(self, done: np.ndarray, config: GenerationConfig) -> np.ndarray:
        """Images ``(B,)`` whose answer is settled (see the PyTorch search's ``_Group.can_stop``)."""
        stop = done.all(axis=1)
        if config.length_penalty != 0:
            return stop
        batch = len(self.images)
        full, done_full = self.scores[:, -1], done.reshape(batch, len(self.states), self.k)[:, -1]
        finished = -np.sort(-np.where(done_full, full, NEG), axis=1)[:, config.n_best - 1]  # (B,)
        running = np.where(done, NEG, self.scores.reshape(batch, -1)).max(axis=1)  # (B,)
        return stop | (finished >= running)

    def result(self, b: int, history: np.ndarray, vocab: Vocabulary, config: GenerationConfig) -> list[Hypothesis]:
        """Image ``b``'s n best of its fullest state reached (no phrase open); ``history``: its rows ``(S*K, t)``."""
        k, scores = self.k, self.scores[b]
        closed = [s for s, (_, open_phrase) in enumerate(self.states) if open_phrase is None]
        order = sorted(closed, key=lambda s: -len(self.states[s][0]))
        pick = next(s for s in order if np.isfinite(scores[s]).any())
        hyps = collect(history[pick * k : (pick + 1) * k], scores[pick : pick + 1], vocab, config)[0]
        if len(self.states) == 1:  # plain beam search, exactly
            return hyps
        return [h for h in hyps if h.log_prob > NEG] or hyps[:1]  # a state may hold fewer than K

    def keep(self, keep: np.ndarray) -> None:
        """Keep only the images ``keep`` (bool ``(B,)``)."""
        self.images = [i for i, k in zip(self.images, keep.tolist()) if k]
        self.tokens, self.scores, self.forbid = self.tokens[keep], self.scores[keep], self.forbid[keep]
        self.at_start = self.at_start[keep]


class _Forced:
    """The log-probabilities of forced tokens in a group's rows: those of the rows run this step, -inf for the
    others. ``positions``: each row's place among the rows run ``(B, S*K)`` (-1: not run); ``log_probs``: the rows
    run, ``(table, offset)`` as :meth:`_Batch._log_probs` gives them."""

    def __init__(self, positions: np.ndarray, log_probs: tuple[np.ndarray, np.ndarray]) -> None:
        self.positions, (self.table, self.offset) = positions, log_probs

    def __call__(self, rows: slice, token: np.ndarray) -> np.ndarray:
        """Log-probabilities ``(B, K)`` of ``token`` ``(B, K)`` in ``rows`` of each image's block."""
        where = self.positions[:, rows]  # (B, K)
        if not self.table.shape[0]:
            return np.full(where.shape, NEG, dtype=np.float32)
        run = np.maximum(where, 0)
        return np.where(where < 0, NEG, self.table[run, token] - self.offset[run, 0])


class ArrayRows:
    """Row operations on a decoder's context (arrays with rows on axis 0) and state (arrays with rows on axis 1),
    for decoders that keep tuples of numpy arrays (ONNX Runtime's)."""

    @staticmethod
    def take_context(context: tuple, index: np.ndarray) -> tuple:
        return tuple(c[index] for c in context)

    @staticmethod
    def take_state(state: tuple, index: np.ndarray) -> tuple:
        return tuple(s[:, index] for s in state)

    @staticmethod
    def put_state(state: tuple, index: np.ndarray, rows: tuple, size: int) -> tuple:
        """``state`` (``size`` rows) with rows ``index`` replaced by ``rows``."""
        for old, new in zip(state, rows):
            old[:, index] = new
        return state


class _Batch:
    """Every image's search: groups side by side, one context per image (rows point at theirs)."""

    def __init__(self, decoder, features, vocab: Vocabulary, config: GenerationConfig, constraints: list,
                 plain_vocab: int) -> None:
        self.decoder, self.vocab, self.config, self.plain = decoder, vocab, config, plain_vocab
        self.rows = decoder if hasattr(decoder, "take_state") else ArrayRows
        self.results: list[list[Hypothesis] | None] = [None] * features.shape[0]
        by_lengths: dict[tuple[int, ...], list[int]] = {}
        for i, cs in enumerate(constraints):
            by_lengths.setdefault(tuple(len(c.tokens) for c in cs), []).append(i)
        self.groups = [_Group(lengths, images, [constraints[i] for i in images], config.beam_size)
                       for lengths, images in sorted(by_lengths.items())]
        self.width = config.beam_size + max(len(g.lengths) for g in self.groups)  # free tokens kept per row
        order = np.array([i for g in self.groups for i in g.images], dtype=np.int64)
        repeats = np.array([g.rows_per_image for g in self.groups for _ in g.images], dtype=np.int64)
        self.context, state = decoder.start(features[order])  # one per image
        self.row_image = np.repeat(np.arange(len(order)), repeats)  # (N,)
        self._selected: tuple[np.ndarray, tuple] | None = None  # the last rows' context, reused while unchanged
        self.state = self.rows.take_state(state, self.row_image)
        total = int(repeats.sum())
        self.tokens = np.full(total, vocab.start_id, dtype=np.int64)
        self.history = np.empty((total, 0), dtype=np.int64)
        self.done = np.zeros(total, dtype=bool)

    def _log_probs(self, logits: np.ndarray, index: np.ndarray | None) -> tuple[np.ndarray, tuple]:
        """Log-probabilities of the rows run, normalised over the plain vocabulary: for writing freely ``(n, V)``
        (added words excluded, repetition guard applied), and for forced tokens as ``(table, offset)``: the
        log-probability of token t in row r is ``table[r, t] - offset[r]`` over the whole (extended) vocabulary."""
        if logits.shape[1] == self.plain:  # nothing added: exactly what plain beam search computes
            table = log_probs(logits, self.vocab)
            offset = np.zeros((len(table), 1), dtype=np.float32)
            logp = table
        else:
            table = masked_logits(logits, self.vocab)
            known = table[:, : self.plain]
            top = known.max(axis=1, keepdims=True)
            offset = top + np.log(np.exp(known - top).sum(axis=1, keepdims=True))  # (n, 1)
            logp = known - offset
        if self.config.no_repeat_ngram:  # the n-gram guard applies to the words written freely
            history = self.history if index is None else self.history[index]
            logp = block_repeats(logp.copy() if logp is table else logp, history, self.config.no_repeat_ngram)
        return logp, (table, offset)

    def _rows(self, source: np.ndarray, fill, index: np.ndarray | None, rows: slice) -> np.ndarray:
        """A group's ``rows`` of ``source`` (one row per row run), the rows not run filled with ``fill``."""
        if index is None:
            return source[rows].copy()
        run = (index >= rows.start) & (index < rows.stop)
        part = np.full((rows.stop - rows.start, source.shape[1]), fill, dtype=source.dtype)
        part[index[run] - rows.start] = source[run]
        return part

    def _dense_tokens(self, logp: np.ndarray, index: np.ndarray | None, rows: slice) -> np.ndarray:
        """A one-state group's rows, every free token ``(n, V)``: finished rows continue with ``<pad>`` at no cost."""
        done, part = self.done[rows], self._rows(logp, NEG, index, rows)
        part[done] = NEG
        part[done, self.vocab.pad_id] = 0.0
        return part

    def _best_tokens(self, top: tuple[np.ndarray, np.ndarray], index: np.ndarray | None,
                     rows: slice) -> tuple[np.ndarray, np.ndarray]:
        """A group's rows, their ``W`` best free tokens, values and ids ``(n, W)``; finished rows: ``<pad>``."""
        done, pad = self.done[rows], self.vocab.pad_id
        values, tokens = self._rows(top[0], NEG, index, rows), self._rows(top[1], pad, index, rows)
        values[done] = NEG
        values[done, 0] = 0.0
        tokens[done] = pad
        return values, tokens

    def step(self) -> bool:
        """One decoder step for every row of every group; True when every image has its answer."""
        plain = all(len(g.states) == 1 for g in self.groups)
        index, logits = self._decode(plain)
        logp, forced = self._log_probs(logits, index)  # (n, V), ((n, V'), (n, 1))
        top = None if plain else top_k(logp, min(self.width, logp.shape[1]))  # (n, W) each
        positions = np.full(len(self.tokens), -1, dtype=np.int64)
        positions[slice(None) if index is None else index] = np.arange(logits.shape[0])
        last = self.history[:, -1] if self.history.shape[1] else None
        parents, tokens, start = [], [], 0
        for group in self.groups:
            n, rows = len(group.images), group.rows_per_image
            span = slice(start, start + n * rows)
            if len(group.states) == 1:
                dense, best = self._dense_tokens(logp, index, span).reshape(n, rows, -1), None
            else:
                dense, best = None, tuple(t.reshape(n, rows, -1) for t in self._best_tokens(top, index, span))
            parent, token = group.step(dense, best, _Forced(positions[span].reshape(n, rows), forced),
                                       self.done[span].reshape(n, rows),
                                       None if last is None else last[span].reshape(n, rows))
            parents.append((parent + (np.arange(n)[:, None] * rows + start)).reshape(-1))
            tokens.append(token.reshape(-1))
            start += n * rows
        parent, self.tokens = np.concatenate(parents), np.concatenate(tokens)
        self.history = np.concatenate([self.history[parent], self.tokens[:, None]], axis=1)
        self.state = self.rows.take_state(self.state, parent)
        self.done = self.done[parent] | (self.tokens == self.vocab.end_id)
        return self._retire()

    def _context(self, index: np.ndarray | None) -> tuple:
        """The context of the rows ``index`` (None: all), selected from the images' (reused while the same)."""
        images = self.row_image if index is None else self.row_image[index]
        if self._selected is None or not np.array_equal(self._selected[0], images):
            self._selected = (images, self.rows.take_context(self.context, images))
        return self._selected[1]

    def _decode(self, plain: bool) -> tuple[np.ndarray | None, np.ndarray]:
        """The rows run this step (None: all) and their logits ``(n, V)``: finished rows and rows of score -inf are
        not run (their state stays), unless no image has a constraint (every row, as plain beam search runs)."""
        scores = np.concatenate([g.scores.reshape(-1) for g in self.groups])  # (N,) in row order
        alive = ~self.done & (scores > NEG)
        if plain or alive.all():
            logits, self.state, _ = self.decoder.step(self.tokens, self._context(None), self.state)
            return None, logits
        index = np.flatnonzero(alive)
        logits, state, _ = self.decoder.step(self.tokens[index], self._context(index),
                                             self.rows.take_state(self.state, index))
        self.state = self.rows.put_state(self.state, index, state, len(self.tokens))
        return index, logits

    def _retire(self, everything: bool = False) -> bool:
        """Take the settled images (all, with ``everything``) out of the search; True when none is left."""
        keep_rows, start = [], 0
        for group in self.groups:
            n, rows = len(group.images), group.rows_per_image
            done = self.done[start : start + n * rows].reshape(n, rows)
            stop = np.ones(n, dtype=bool) if everything else group.can_stop(done, self.config)
            history = self.history[start : start + n * rows].reshape(n, rows, -1)
            for b in np.flatnonzero(stop).tolist():
                self.results[group.images[b]] = group.result(b, history[b], self.vocab, self.config)
            keep_rows.append(np.repeat(~stop, rows))
            group.keep(~stop)
            start += n * rows
        self.groups = [g for g in self.groups if g.images]
        keep = np.concatenate(keep_rows) if keep_rows else np.zeros(0, dtype=bool)
        if not keep.all():
            self.row_image = self.row_image[keep]  # the images' context stays as it is
            self.state = self.rows.take_state(self.state, np.flatnonzero(keep))
            self.tokens, self.history, self.done = self.tokens[keep], self.history[keep], self.done[keep]
        return not self.groups

    def finish_all(self) -> None:
        """Answer every image still searching (cut at ``max_length``)."""
        if self.groups:
            self._retire(everything=True)


__all__ = ["ArrayRows", "Constraint", "constrained_search", "search_states", "tag_search", "transitions"]
