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
run until its slowest image ends. Without constraints there is one state and the search is
:func:`captioner.generation.search.beam_search` step for step (tests/test_guided.py checks they agree exactly).
Tokens past ``plain_vocab`` (words added for tags) can only be written as constraint tokens, and log-probabilities
are normalised over the plain vocabulary, so the known words keep exactly the probabilities the plain model gives
them. A constraint may forbid some tokens right before it (a tag phrase that carries its own article, "an envelope",
must not follow "a").
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import torch

from captioner.generation.config import GenerationConfig, Hypothesis
from captioner.generation.logits import block_repeats, masked_log_probs
from captioner.generation.search import collect_beams
from captioner.models.base import StepDecoder, map_tensors, reorder_state, select_context
from captioner.vocab import Vocabulary

NEG = float("-inf")


@dataclass(frozen=True)
class Constraint:
    """Token ids that must appear together in the caption, tokens that may not come right before them, and whether
    they must open the caption."""

    tokens: tuple[int, ...]
    forbid_before: tuple[int, ...] = ()
    at_start: bool = False


def search_states(lengths: tuple[int, ...]) -> list[tuple[frozenset, tuple[int, int] | None]]:
    """The states of the search for constraints of these lengths: each set of met constraints, alone or in the
    middle of a phrase ``(c, k)`` (its first k tokens written). The empty set comes first, the full set last."""
    subsets = [frozenset(s) for n in range(len(lengths) + 1) for s in combinations(range(len(lengths)), n)]
    partial = [(met, (c, k)) for met in subsets for c in range(len(lengths)) if c not in met
               for k in range(1, lengths[c])]
    return [(met, None) for met in subsets[:-1]] + partial + [(subsets[-1], None)]


def transitions(lengths: tuple[int, ...], states: list) -> list[list[tuple[int, str, object]]]:
    """For each state, where its hypotheses come from: ``(source, "free", [c, ...])`` (any token but the first
    tokens of the unmet one-token constraints c) or ``(source, "only", (c, k))`` (token k of constraint c, forced)."""
    index = {state: i for i, state in enumerate(states)}
    into: list[list] = [[] for _ in states]
    for source, (met, open_phrase) in enumerate(states):
        if open_phrase is None:
            unmet = [c for c in range(len(lengths)) if c not in met]
            into[source].append((source, "free", [c for c in unmet if lengths[c] == 1]))
            for c in unmet:
                target = (met | {c}, None) if lengths[c] == 1 else (met, (c, 1))
                into[index[target]].append((source, "only", (c, 0)))
        else:
            c, k = open_phrase
            target = (met | {c}, None) if k + 1 == lengths[c] else (met, (c, k + 1))
            into[index[target]].append((source, "only", (c, k)))
    return into


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
    search = _Batch(decoder, features, vocab, config, [_normalise(c) for c in constraints], plain_vocab or len(vocab))
    for _ in range(config.max_length):
        if search.step():
            break
    search.finish_all()
    return search.results


def _normalise(constraints: list) -> tuple[Constraint, ...]:
    """Distinct non-empty constraints, shortest first (the state machine depends only on their lengths)."""
    items = [c if isinstance(c, Constraint) else Constraint(tuple(c)) for c in constraints]
    unique = list({c.tokens: c for c in items if c.tokens}.values())
    return tuple(sorted(unique, key=lambda c: len(c.tokens)))


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

    def candidates(self, target: int, logp: torch.Tensor, forced: torch.Tensor, done: torch.Tensor,
                   last: torch.Tensor | None) -> tuple[torch.Tensor, int | None, torch.Tensor, torch.Tensor]:
        """The extensions that land in state ``target``: their scores ``(B, N)``, laid out as every token of one
        state's rows written freely (``K * V`` columns, first, when there is such a source), then one forced token
        per row of each state that leads here; returns ``(scores, free source state or None, forced parents,
        forced tokens)``, the last two ``(B, N - K * V)`` (parent rows within the image's block).

        Args:
            logp, forced: this group's log-probabilities for writing freely and for forced tokens ``(B, S*K, V)``.
            done: finished rows ``(B, S*K)``.
            last: each row's last token ``(B, S*K)`` (None at the first step).
        """
        k, batch = self.k, len(self.images)
        scores = self.scores.view(batch, -1)  # (B, S*K)
        values, parents, tokens, free = [], [], [], None
        for source, kind, arg in self.into[target]:
            rows = slice(source * k, (source + 1) * k)
            if kind == "free":
                part = scores[:, rows, None] + logp[:, rows]  # (B, K, V)
                if arg:
                    blocked = self.tokens[:, arg, 0]  # (B, n): first tokens of unmet one-token constraints
                    part = part.scatter(2, blocked.unsqueeze(1).expand(-1, k, -1), NEG)
                values.insert(0, part.view(batch, -1))
                free = source
                continue
            c, position = arg
            token = self.tokens[:, c, position].view(batch, 1).expand(-1, k)  # (B, K)
            value = (scores[:, rows] + forced[:, rows].gather(2, token.unsqueeze(2)).squeeze(2))
            value = value.masked_fill(done[:, rows], NEG)
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

    def step(self, logp: torch.Tensor, forced: torch.Tensor, done: torch.Tensor,
             last: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Choose every state's K best extensions; returns each new row's parent within its image's block and its
        token, both ``(B, S*K)``."""
        k, vocab_size = self.k, logp.shape[2]
        if len(self.states) == 1:  # no constraints: plain beam search's step
            values = (self.scores.view(-1, k, 1) + logp).view(len(self.images), -1)  # (B, K*V)
            top, index = values.topk(k, dim=1)
            self.scores = top.unsqueeze(1)  # (B, 1, K)
            return index // vocab_size, index % vocab_size
        best, parents, tokens = [], [], []
        for target in range(len(self.states)):
            values, free, forced_parent, forced_token = self.candidates(target, logp, forced, done, last)
            top, index = values.topk(k, dim=1)  # (B, K)
            width = k * vocab_size if free is not None else 0
            rest = (index - width).clamp(min=0)  # the forced columns' own index
            is_free = index < width
            if forced_parent.shape[1]:
                parent = torch.where(is_free, index // vocab_size + (free or 0) * k, forced_parent.gather(1, rest))
                token = torch.where(is_free, index % vocab_size, forced_token.gather(1, rest))
            else:
                parent, token = index // vocab_size + free * k, index % vocab_size
            best.append(top)
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


class _Batch:
    """Every image's search: groups of images with one state machine each, their rows side by side."""

    def __init__(self, decoder, features, vocab, config, constraints, plain_vocab) -> None:
        self.decoder, self.vocab, self.config, self.plain = decoder, vocab, config, plain_vocab
        self.results: list[list[Hypothesis] | None] = [None] * features.shape[0]
        by_lengths: dict[tuple[int, ...], list[int]] = {}
        for i, cs in enumerate(constraints):
            by_lengths.setdefault(tuple(len(c.tokens) for c in cs), []).append(i)
        device = features.device
        self.groups = [_Group(lengths, images, [constraints[i] for i in images], config.beam_size, device)
                       for lengths, images in sorted(by_lengths.items())]
        order = torch.tensor([i for g in self.groups for i in g.images], device=device)
        repeats = torch.tensor([g.rows_per_image for g in self.groups for _ in g.images], device=device)
        context, state = decoder.start(features.index_select(0, order))
        rows = torch.repeat_interleave(torch.arange(len(order), device=device), repeats)  # each row's image
        self.context = select_context(context, rows)
        self.state = reorder_state(state, rows) if state is not None else None
        total = int(repeats.sum())
        self.tokens = torch.full((total,), vocab.start_id, dtype=torch.long, device=device)
        self.history = torch.empty((total, 0), dtype=torch.long, device=device)
        self.done = torch.zeros(total, dtype=torch.bool, device=device)

    def _log_probs(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities normalised over the plain vocabulary ``(N, V)``: for writing freely (added words
        excluded, repetition guard and finished captions applied) and for forced constraint tokens."""
        if logits.shape[1] == self.plain:  # nothing added: exactly what plain beam search computes
            forced = masked_log_probs(logits, self.vocab)
        else:
            logits = logits.float().clone()
            logits[:, [self.vocab.pad_id, self.vocab.start_id, self.vocab.unk_id]] = NEG
            forced = logits - torch.logsumexp(logits[:, : self.plain], dim=1, keepdim=True)
        logp = forced.clone()
        logp[:, self.plain :] = NEG
        if self.config.no_repeat_ngram:
            logp = block_repeats(logp, self.history, self.config.no_repeat_ngram)
        logp[self.done] = NEG
        logp[self.done, self.vocab.pad_id] = 0.0  # a finished caption continues with <pad>, at no cost
        return logp, forced

    def step(self) -> bool:
        """One decoder step for every row of every group; True when every image has its answer."""
        logits = self._decode()
        logp, forced = self._log_probs(logits)  # (N, V) each
        last = self.history[:, -1] if self.history.shape[1] else None
        parents, tokens, start = [], [], 0
        for group in self.groups:
            n, rows = len(group.images), group.rows_per_image

            def view(t: torch.Tensor) -> torch.Tensor:  # this group's rows, one block per image
                return t[start : start + n * rows].view(n, rows, *t.shape[1:])

            parent, token = group.step(view(logp), view(forced), view(self.done),
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

    def _decode(self) -> torch.Tensor:
        """The step's logits ``(N, V)`` for the rows that can still matter: a finished row only continues with
        ``<pad>`` and a row of score -inf (a state not reached yet, or fewer hypotheses than beams) only gives -inf
        scores, whatever the decoder says, so neither is run; their logits are zeros and their state stays. The same
        captions, fewer rows: most of a constrained search's rows are such early on and once the full state
        finishes. Without any constraint every row is run, as plain beam search does."""
        scores = torch.cat([g.scores.reshape(-1) for g in self.groups]).to(self.done.device)  # (N,) in row order
        alive = ~self.done & (scores > NEG)
        plain = all(len(g.states) == 1 for g in self.groups)  # run as plain beam search runs, to the last bit
        if plain or bool(alive.all()):
            logits, self.state, _ = self.decoder.step(self.tokens, self.context, self.state)
            return logits
        index = torch.nonzero(alive).flatten()
        state = map_tensors(lambda t: t.index_select(1, index), self.state) if self.state is not None else None
        part, state, _ = self.decoder.step(self.tokens[index], select_context(self.context, index), state)
        logits = part.new_zeros((len(self.tokens), part.shape[1]))
        logits[index] = part
        if self.state is None:  # None means zeros: the rows not run keep zeros
            self.state = map_tensors(lambda t: t.new_zeros((t.shape[0], len(self.tokens), *t.shape[2:])), state)
        self.state = _scatter_rows(self.state, state, index)
        return logits

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
            self.context = select_context(self.context, index)
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
