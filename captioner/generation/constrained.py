"""Constrained beam search (Anderson et al. 2017, "Guided Open Vocabulary Image Captioning with Constrained Beam
Search"): captions that contain given words or phrases, batched over images.

For C constraints (words or short phrases, as token ids) the search keeps a beam of K hypotheses for each state of
a finite-state machine: each of the 2^C sets of constraints already met, and for a phrase of n words also "in the
middle of it, k words written" (1 <= k < n). At every step each beam is extended as in plain beam search (the
finished ones carried along with ``<pad>`` at no cost); writing the first token of an unmet constraint moves to the
state that includes it (or opens the phrase, whose next tokens are then forced). Each state's beam keeps the K best
of everything that lands in it. The answer comes from the fullest set reached (all constraints when they fit in
``max_length``), its finished captions ranked first.

Images are searched together: those whose constraints have the same lengths share one state machine (a *group*),
and every group's rows (images × states × beams) go through one decoder step per time step. An image leaves the
search as soon as its answer is settled (no running hypothesis can beat its n-th finished one), so a batch does not
run until its slowest image ends. Each step runs the decoder on the rows that can still matter only, computes
log-probabilities for those rows only, and keeps each row's best few free tokens (the beam size plus the most
tokens a state can block) rather than the whole vocabulary per state; the images' context (an attention model's
locations) stays one copy per image. The state machine itself is :mod:`captioner.generation.constraint_states`.
Without constraints there is one state and the search is
:func:`captioner.generation.search.beam_search` step for step (tests/test_guided.py checks they agree exactly).
Tokens past ``plain_vocab`` (words added for tags) can only be written as constraint tokens, and log-probabilities
are normalised over the plain vocabulary, so the known words keep exactly the probabilities the plain model gives
them. A constraint may forbid some tokens right before it (a tag phrase that carries its own article, "an envelope",
must not follow "a").
"""

from __future__ import annotations

import torch

from captioner.generation.config import GenerationConfig, Hypothesis
from captioner.generation.constraint_states import Constraint, normalise, search_states, transitions
from captioner.generation.logits import block_repeats, masked_log_probs
from captioner.generation.search import collect_beams
from captioner.models.base import StepDecoder, map_tensors, reorder_state, select_context
from captioner.vocab import Vocabulary

NEG = float("-inf")


def constrained_search(decoder: StepDecoder, features: torch.Tensor, vocab: Vocabulary, config: GenerationConfig,
                       constraints: list[list[Constraint | list[int]]],
                       plain_vocab: int | None = None) -> list[list[Hypothesis]]:
    """Caption a batch of images so that each caption contains every constraint of its image that fits.

    Args:
        decoder: the decoder (extended with rows for added words when there are any).
        features: image features ``(B, D)`` or ``(B, L, C)``.
        vocab: the (extended) vocabulary.
        config: beam size, max length, length penalty, n-best, repetition guard.
        constraints: each image's constraints (:class:`Constraint` or token-id lists; duplicates and empty ones
            ignored).
        plain_vocab: size of the model's own vocabulary (None: all of ``vocab``).

    Returns:
        For each image, the n best hypotheses of the fullest set of met constraints reached.
    """
    search = _Batch(decoder, features, vocab, config, [normalise(c) for c in constraints], plain_vocab or len(vocab))
    for _ in range(config.max_length):
        if search.step():
            break
    search.finish_all()
    return search.results


class _Group:
    """Images whose constraints have the same lengths: one state machine, ``(B, S, K)`` rows in the batch."""

    def __init__(self, lengths: tuple[int, ...], images: list[int], constraints: list, k: int,
                 device: torch.device) -> None:
        self.lengths, self.images, self.k = lengths, list(images), k
        self.states = search_states(lengths)
        self.into = transitions(lengths, self.states)
        longest = max(lengths, default=1)
        tokens = [[list(c.tokens) + [0] * (longest - len(c.tokens)) for c in cs] for cs in constraints]
        self.tokens = torch.tensor(tokens, dtype=torch.long, device=device).view(len(images), len(lengths), longest)
        widest = max((len(c.forbid_before) for cs in constraints for c in cs), default=0)
        forbid = [[list(c.forbid_before) + [-1] * (widest - len(c.forbid_before)) for c in cs] for cs in constraints]
        self.forbid = torch.tensor(forbid, dtype=torch.long, device=device).view(len(images), len(lengths), widest)
        starts = [[c.at_start for c in cs] for cs in constraints]
        self.at_start = torch.tensor(starts, dtype=torch.bool, device=device).view(len(images), len(lengths))
        self.scores = torch.full((len(images), len(self.states), k), NEG, device=device)
        self.scores[:, 0, 0] = 0.0  # one empty hypothesis per image, no constraint met

    @property
    def rows_per_image(self) -> int:
        return len(self.states) * self.k

    def candidates(self, target: int, top: tuple[torch.Tensor, torch.Tensor], forced: ForcedLookup,
                   done: torch.Tensor, last: torch.Tensor | None) -> tuple[torch.Tensor, int | None, torch.Tensor,
                                                                         torch.Tensor]:
        """The extensions that land in state ``target``: their scores ``(B, N)``, laid out as the best free tokens
        of one state's rows (``K * W`` columns, first, when there is such a source), then one forced token per row of
        each state that leads here; returns ``(scores, free source state or None, forced parents, forced tokens)``,
        the last two ``(B, N - K * W)`` (parent rows within the image's block).

        Args:
            top: each row's W best tokens to write freely, values and ids ``(B, S*K, W)`` (W exceeds K by the most
                tokens a state can block, so the K best unblocked extensions of a state are among them).
            forced: the log-probability of a given token in given rows.
            done: finished rows ``(B, S*K)``.
            last: each row's last token ``(B, S*K)`` (None at the first step).
        """
        k, batch = self.k, len(self.images)
        scores = self.scores.view(batch, -1)  # (B, S*K)
        values, parents, tokens, free = [], [], [], None
        for source, kind, arg in self.into[target]:
            rows = slice(source * k, (source + 1) * k)
            if kind == "free":
                part = scores[:, rows, None] + top[0][:, rows]  # (B, K, W)
                if arg:  # first tokens of unmet one-token constraints: written only by moving to their state
                    blocked = self.tokens[:, arg, 0]  # (B, n)
                    part = part.masked_fill((top[1][:, rows, :, None] == blocked[:, None, None, :]).any(dim=3), NEG)
                values.insert(0, part.view(batch, -1))
                free = source
                continue
            c, position = arg
            token = self.tokens[:, c, position].view(batch, 1).expand(-1, k)  # (B, K)
            value = (scores[:, rows] + forced(rows, token)).masked_fill(done[:, rows], NEG)
            if position == 0 and last is not None:  # not the first word: tokens it may not follow, openers only
                if self.forbid.shape[2]:
                    value = value.masked_fill((last[:, rows, None] == self.forbid[:, c, None, :]).any(dim=2), NEG)
                value = value.masked_fill(self.at_start[:, c, None], NEG)
            values.append(value)
            parents.append(torch.arange(source * k, (source + 1) * k, device=value.device).expand(batch, -1))
            tokens.append(token)
        empty = scores.new_zeros((batch, 0), dtype=torch.long)
        return (torch.cat(values, dim=1), free, torch.cat(parents, dim=1) if parents else empty,
                torch.cat(tokens, dim=1) if tokens else empty)

    def step(self, logp: torch.Tensor | None, top: tuple[torch.Tensor, torch.Tensor] | None, forced: ForcedLookup,
             done: torch.Tensor, last: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Choose every state's K best extensions; returns each new row's parent within its image's block and its
        token, both ``(B, S*K)``.

        Args:
            logp: log-probabilities for writing freely ``(B, K, V)`` (one state: plain beam search's step).
            top, forced, done, last: as :meth:`candidates` takes them (several states).
        """
        k = self.k
        if len(self.states) == 1:  # no constraints: plain beam search's step
            vocab_size = logp.shape[2]
            values = (self.scores.view(-1, k, 1) + logp).view(len(self.images), -1)  # (B, K*V)
            best, index = values.topk(k, dim=1)
            self.scores = best.unsqueeze(1)  # (B, 1, K)
            return index // vocab_size, index % vocab_size
        width = top[0].shape[2]
        best, parents, tokens = [], [], []
        for target in range(len(self.states)):
            values, free, forced_parent, forced_token = self.candidates(target, top, forced, done, last)
            value, index = values.topk(k, dim=1)  # (B, K)
            if free is None:
                parent, token = forced_parent.gather(1, index), forced_token.gather(1, index)
            else:
                free_tokens = top[1][:, free * k : (free + 1) * k].reshape(len(self.images), -1)  # (B, K*W)
                is_free, rest = index < k * width, (index - k * width).clamp(min=0)
                parent = index // width + free * k
                token = free_tokens.gather(1, index.clamp(max=k * width - 1))
                if forced_parent.shape[1]:
                    parent = torch.where(is_free, parent, forced_parent.gather(1, rest))
                    token = torch.where(is_free, token, forced_token.gather(1, rest))
            best.append(value)
            parents.append(parent)
            tokens.append(token)
        self.scores = torch.stack(best, dim=1)  # (B, S, K)
        return torch.cat(parents, dim=1), torch.cat(tokens, dim=1)

    def can_stop(self, done: torch.Tensor, config: GenerationConfig) -> torch.Tensor:
        """Images ``(B,)`` whose answer is settled: all rows finished, or (no length penalty) the full state's n-th
        finished score beats every running row (every extension only lowers a score)."""
        stop = done.all(dim=1)
        if config.length_penalty != 0:
            return stop
        batch = len(self.images)
        full, done_full = self.scores[:, -1], done.view(batch, len(self.states), self.k)[:, -1]
        finished = full.masked_fill(~done_full, NEG).topk(config.n_best, dim=1).values[:, -1]  # (B,)
        running = self.scores.view(batch, -1).masked_fill(done, NEG).max(dim=1).values  # (B,)
        return stop | (finished >= running)

    def result(self, b: int, history: torch.Tensor, done: torch.Tensor, vocab: Vocabulary,
               config: GenerationConfig) -> list[Hypothesis]:
        """Image ``b``'s n best of its fullest state reached (no phrase open), ranked as plain beam search ranks.

        Args:
            history: the image's rows ``(S*K, t)``; done: ``(S*K,)``.
        """
        k, scores = self.k, self.scores[b]
        closed = [s for s, (_, open_phrase) in enumerate(self.states) if open_phrase is None]
        order = sorted(closed, key=lambda s: -len(self.states[s][0]))
        pick = next(s for s in order if bool(torch.isfinite(scores[s]).any()))
        rows = slice(pick * k, (pick + 1) * k)
        hyps = collect_beams(history[rows], scores[pick : pick + 1], done[rows].view(1, k), vocab, config)[0]
        if len(self.states) == 1:  # plain beam search, exactly
            return hyps
        return [h for h in hyps if h.log_prob > NEG] or hyps[:1]  # a state may hold fewer than K

    def keep(self, keep: torch.Tensor) -> None:
        """Keep only the images ``keep`` (bool ``(B,)``)."""
        self.images = [i for i, k in zip(self.images, keep.tolist()) if k]
        keep = keep.to(self.tokens.device)
        self.tokens, self.scores, self.forbid = self.tokens[keep], self.scores[keep], self.forbid[keep]
        self.at_start = self.at_start[keep]


class ForcedLookup:
    """The log-probabilities of forced tokens in a group's rows: those of the rows the decoder ran this step; -inf
    for the others (finished, or of score -inf: their forced extensions are never taken).

    Args:
        positions: each row's place among the rows run ``(B, S*K)`` (-1: not run).
        log_probs: the rows run, log-probabilities over the whole (extended) vocabulary ``(n, V')``.
    """

    def __init__(self, positions: torch.Tensor, log_probs: torch.Tensor) -> None:
        self.positions, self.log_probs = positions, log_probs

    def __call__(self, rows: slice, token: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``(B, K)`` of ``token`` ``(B, K)`` in ``rows`` of each image's block."""
        where = self.positions[:, rows]  # (B, K)
        if not self.log_probs.shape[0]:
            return torch.full(where.shape, NEG, device=where.device)
        return self.log_probs[where.clamp(min=0), token].masked_fill(where < 0, NEG)


class _Batch:
    """Every image's search: groups of images with one state machine each, their rows side by side. The context
    stays one per image (rows point at theirs), so rows cost only their recurrent state."""

    def __init__(self, decoder, features, vocab, config, constraints, plain_vocab) -> None:
        self.decoder, self.vocab, self.config, self.plain = decoder, vocab, config, plain_vocab
        self.results: list[list[Hypothesis] | None] = [None] * features.shape[0]
        by_lengths: dict[tuple[int, ...], list[int]] = {}
        for i, cs in enumerate(constraints):
            by_lengths.setdefault(tuple(len(c.tokens) for c in cs), []).append(i)
        device = features.device
        self.groups = [_Group(lengths, images, [constraints[i] for i in images], config.beam_size, device)
                       for lengths, images in sorted(by_lengths.items())]
        self.width = config.beam_size + max(len(g.lengths) for g in self.groups)  # free tokens kept per row
        order = torch.tensor([i for g in self.groups for i in g.images], device=device)
        repeats = torch.tensor([g.rows_per_image for g in self.groups for _ in g.images], device=device)
        self.context, state = decoder.start(features.index_select(0, order))  # one per image
        self.row_image = torch.repeat_interleave(torch.arange(len(order), device=device), repeats)  # (N,)
        self._selected: tuple[torch.Tensor, object] | None = None  # the last rows' context, reused while unchanged
        self.state = reorder_state(state, self.row_image) if state is not None else None
        total = int(repeats.sum())
        self.tokens = torch.full((total,), vocab.start_id, dtype=torch.long, device=device)
        self.history = torch.empty((total, 0), dtype=torch.long, device=device)
        self.done = torch.zeros(total, dtype=torch.bool, device=device)

    def _log_probs(self, logits: torch.Tensor, index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities of the rows run (``index``; None: all), normalised over the plain vocabulary
        ``(n, V)``: for writing freely (added words excluded, repetition guard applied) and for forced constraint
        tokens (every column)."""
        if logits.shape[1] == self.plain:  # nothing added: exactly what plain beam search computes
            forced = masked_log_probs(logits, self.vocab)
        else:
            logits = logits.float().clone()
            logits[:, [self.vocab.pad_id, self.vocab.start_id, self.vocab.unk_id]] = NEG
            forced = logits - torch.logsumexp(logits[:, : self.plain], dim=1, keepdim=True)
        logp = forced
        if self.config.no_repeat_ngram:  # over every column: a tag word written may be repeated by a known one
            history = self.history if index is None else self.history.index_select(0, index)
            logp = block_repeats(logp, history, self.config.no_repeat_ngram)
        return logp[:, : self.plain], forced

    def _rows(self, source: torch.Tensor, fill: float | int, index: torch.Tensor | None, rows: slice) -> torch.Tensor:
        """A group's ``rows`` of ``source`` (one row per row run, ``index``; None: every row was run), the rows not
        run filled with ``fill``; a new tensor."""
        if index is None:
            return source[rows].clone()
        run = (index >= rows.start) & (index < rows.stop)
        part = source.new_full((rows.stop - rows.start, source.shape[1]), fill)
        part[index[run] - rows.start] = source[run]
        return part

    def _dense_tokens(self, logp: torch.Tensor, index: torch.Tensor | None, rows: slice) -> torch.Tensor:
        """A one-state group's rows, every token to write freely ``(n, V)`` (plain beam search's step): finished rows
        continue with ``<pad>`` at no cost, rows not run have no token."""
        done, part = self.done[rows], self._rows(logp, NEG, index, rows)
        part[done] = NEG  # then <pad> at no cost
        part[done, self.vocab.pad_id] = 0.0
        return part

    def _best_tokens(self, top: tuple[torch.Tensor, torch.Tensor], index: torch.Tensor | None,
                     rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """A group's rows, their ``W`` best tokens to write freely, values and ids ``(n, W)`` out of ``top`` (those
        of the rows run): finished rows continue with ``<pad>`` at no cost, rows not run have none."""
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
        logp, forced = self._log_probs(logits, index)  # (n, V), (n, V')
        top = None if plain else logp.topk(min(self.width, logp.shape[1]), dim=1)  # (n, W) each
        positions = torch.full((len(self.tokens),), -1, dtype=torch.long, device=self.done.device)
        positions[slice(None) if index is None else index] = torch.arange(logits.shape[0], device=positions.device)
        last = self.history[:, -1] if self.history.shape[1] else None
        parents, tokens, start = [], [], 0
        for group in self.groups:
            n, rows = len(group.images), group.rows_per_image
            span = slice(start, start + n * rows)

            def view(t: torch.Tensor) -> torch.Tensor:  # this group's rows, one block per image
                return t[span].view(n, rows, *t.shape[1:])

            if len(group.states) == 1:
                dense, best = self._dense_tokens(logp, index, span).view(n, rows, -1), None
            else:
                dense, best = None, tuple(t.view(n, rows, -1) for t in self._best_tokens(top, index, span))
            parent, token = group.step(dense, best, ForcedLookup(view(positions), forced), view(self.done),
                                       None if last is None else view(last))
            offsets = torch.arange(n, device=parent.device).unsqueeze(1) * rows + start
            parents.append((parent + offsets).view(-1))
            tokens.append(token.view(-1))
            start += n * rows
        parent, self.tokens = torch.cat(parents), torch.cat(tokens)
        self.history = torch.cat([self.history.index_select(0, parent), self.tokens.unsqueeze(1)], dim=1)
        self.state = reorder_state(self.state, parent)
        self.done = self.done.index_select(0, parent) | (self.tokens == self.vocab.end_id)
        return self._retire()

    def _context(self, index: torch.Tensor | None):
        """The context of the rows ``index`` (None: all), selected from the images' (reused while the same)."""
        images = self.row_image if index is None else self.row_image.index_select(0, index)
        if self._selected is None or not torch.equal(self._selected[0], images):
            self._selected = (images, select_context(self.context, images))
        return self._selected[1]

    def _decode(self, plain: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The rows run this step (None: all) and their logits ``(n, V)``: the rows that can still matter. A
        finished row only continues with ``<pad>`` and a row of score -inf (a state not reached yet, or fewer
        hypotheses than beams) only gives -inf scores, whatever the decoder says, so neither is run and their state
        stays. The same captions, fewer rows: most of a constrained search's rows are such early on and once the
        full state finishes. Without any constraint every row is run, as plain beam search does."""
        scores = torch.cat([g.scores.reshape(-1) for g in self.groups]).to(self.done.device)  # (N,) in row order
        alive = ~self.done & (scores > NEG)
        if plain or bool(alive.all()):  # no constraint at all: every row, as plain beam search runs, to the last bit
            logits, self.state, _ = self.decoder.step(self.tokens, self._context(None), self.state)
            return None, logits
        index = torch.nonzero(alive).flatten()
        state = map_tensors(lambda t: t.index_select(1, index), self.state) if self.state is not None else None
        logits, state, _ = self.decoder.step(self.tokens[index], self._context(index), state)
        if self.state is None:  # None means zeros: the rows not run keep zeros
            self.state = map_tensors(lambda t: t.new_zeros((t.shape[0], len(self.tokens), *t.shape[2:])), state)
        self.state = _scatter_rows(self.state, state, index)
        return index, logits

    def _retire(self, everything: bool = False) -> bool:
        """Take the settled images (all, with ``everything``) out of the search; True when none is left."""
        keep_rows, start = [], 0
        for group in self.groups:
            n, rows = len(group.images), group.rows_per_image
            done = self.done[start : start + n * rows].view(n, rows)
            stop = torch.ones(n, dtype=torch.bool) if everything else group.can_stop(done, self.config).cpu()
            history = self.history[start : start + n * rows].view(n, rows, -1)
            for b in torch.nonzero(stop).flatten().tolist():
                self.results[group.images[b]] = group.result(b, history[b], done[b], self.vocab, self.config)
            keep_rows.append((~stop).repeat_interleave(rows))
            group.keep(~stop)
            start += n * rows
        self.groups = [g for g in self.groups if g.images]
        keep = torch.cat(keep_rows).to(self.done.device) if keep_rows else self.done.new_zeros(0)
        if not bool(keep.all()):
            index = torch.nonzero(keep).flatten()
            self.row_image = self.row_image.index_select(0, index)  # the images' context stays as it is
            self.state = map_tensors(lambda t: t.index_select(1, index), self.state)
            self.tokens, self.history, self.done = self.tokens[index], self.history[index], self.done[index]
        return not self.groups

    def finish_all(self) -> None:
        """Answer every image still searching (cut at ``max_length``)."""
        if self.groups:
            self._retire(everything=True)


def _scatter_rows(old, new, index: torch.Tensor):
    """``old`` recurrent state (tensors ``(layers, N, H)`` in nested tuples) with rows ``index`` replaced by ``new``'s
    rows ``(layers, len(index), H)``."""
    if old is None:
        return None
    if isinstance(old, torch.Tensor):
        return old.index_copy(1, index, new.to(old.dtype))
    items = [_scatter_rows(o, n, index) for o, n in zip(old, new)]
    return type(old)(*items) if hasattr(old, "_fields") else type(old)(items)


__all__ = ["Constraint", "constrained_search", "search_states", "transitions"]
