"""Constrained beam search (Anderson et al. 2017, "Guided Open Vocabulary Image Captioning with Constrained Beam
Search"): captions that contain given words.

For C constraints (words or short phrases, as token ids) the search keeps a beam of K hypotheses for each state of
a finite-state machine: each of the 2^C sets of constraints already met, and for a phrase of n words also "in the
middle of it, k words written" (1 <= k < n). At every step each beam is extended as in plain beam search (the
finished ones carried along with ``<pad>`` at no cost); writing the first token of an unmet constraint moves to the
state that includes it (or opens the phrase, whose next tokens are then forced). Each state's beam keeps the K best
of everything that lands in it. The answer comes from the fullest set reached (all constraints when they fit in
``max_length``), its finished captions ranked first.

Without constraints there is one set and the search is :func:`captioner.generation.search.beam_search` step for
step (tests/test_guided.py checks they agree exactly). Tokens past ``plain_vocab`` (words added for tags) can only
be written as constraint tokens, and log-probabilities are normalised over the plain vocabulary, so the known
words keep exactly the probabilities the plain model gives them.
"""

from __future__ import annotations

from itertools import combinations

import torch

from captioner.generation.config import GenerationConfig, Hypothesis
from captioner.generation.logits import block_repeats, masked_log_probs
from captioner.generation.search import collect_beams, repeat_rows, settled
from captioner.models.base import StepDecoder, reorder_state
from captioner.vocab import Vocabulary


def constrained_search(decoder: StepDecoder, features: torch.Tensor, vocab: Vocabulary, config: GenerationConfig,
                       constraints: list[list[int]], plain_vocab: int | None = None) -> list[Hypothesis]:
    """Caption one image so that it contains every constraint that fits.

    Args:
        decoder: the decoder (extended with rows for added words when there are any).
        features: the image's features ``(1, D)`` or ``(1, L, C)``.
        vocab: the (extended) vocabulary.
        config: beam size, max length, length penalty, n-best, repetition guard.
        constraints: token-id sequences that should appear (duplicates and empty ones ignored).
        plain_vocab: size of the model's own vocabulary (None: all of ``vocab``).

    Returns:
        The n best hypotheses of the fullest set of met constraints reached.
    """
    constraints = [tuple(c) for c in dict.fromkeys(tuple(c) for c in constraints if c)]
    search = _Search(decoder, features, vocab, config, constraints, plain_vocab or len(vocab))
    for _ in range(config.max_length):
        if search.step():
            break
    return search.result()


def search_states(constraints: list[tuple[int, ...]]) -> list[tuple[frozenset, tuple[int, int] | None]]:
    """The states of the search: each set of met constraints, alone or in the middle of a phrase ``(c, k)`` (its
    first k tokens written). The empty set comes first, the full set (no phrase open) last."""
    subsets = [frozenset(s) for n in range(len(constraints) + 1) for s in combinations(range(len(constraints)), n)]
    partial = [(met, (c, k)) for met in subsets for c in range(len(constraints)) if c not in met
               for k in range(1, len(constraints[c]))]
    return [(met, None) for met in subsets[:-1]] + partial + [(subsets[-1], None)]


def transitions(constraints: list[tuple[int, ...]], states: list) -> list[list[tuple[int, str, object]]]:
    """For each state, where its hypotheses come from: ``(source, "free", blocked tokens)`` (any token but those)
    or ``(source, "only", token)`` (that token, forced)."""
    index = {state: i for i, state in enumerate(states)}
    into: list[list] = [[] for _ in states]
    for source, (met, open_phrase) in enumerate(states):
        if open_phrase is None:
            unmet = [c for c in range(len(constraints)) if c not in met]
            blocked = [constraints[c][0] for c in unmet if len(constraints[c]) == 1]  # those meet c: other state
            into[source].append((source, "free", blocked))
            for c in unmet:
                target = (met | {c}, None) if len(constraints[c]) == 1 else (met, (c, 1))
                into[index[target]].append((source, "only", constraints[c][0]))
        else:
            c, k = open_phrase
            target = (met | {c}, None) if k + 1 == len(constraints[c]) else (met, (c, k + 1))
            into[index[target]].append((source, "only", constraints[c][k]))
    return into


class _Search:
    """The state of one image's constrained search: S states × K beams as rows ``(S*K, ...)``."""

    def __init__(self, decoder, features, vocab, config, constraints, plain_vocab) -> None:
        self.decoder, self.vocab, self.config, self.plain = decoder, vocab, config, plain_vocab
        self.states = search_states(constraints)
        self.into = transitions(constraints, self.states)
        k, device = config.beam_size, features.device
        rows = len(self.states) * k
        context, state = decoder.start(features)
        self.context, self.state = repeat_rows(context, state, rows)
        self.scores = torch.full((len(self.states), k), float("-inf"), device=device)
        self.scores[0, 0] = 0.0  # one empty hypothesis, no constraint met
        self.tokens = torch.full((rows,), vocab.start_id, dtype=torch.long, device=device)
        self.history = torch.empty((rows, 0), dtype=torch.long, device=device)
        self.done = torch.zeros(rows, dtype=torch.bool, device=device)

    def _log_probs(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities normalised over the plain vocabulary ``(S*K, V)``: for writing freely (added words
        excluded, repetition guard and finished captions applied) and for forced constraint tokens."""
        if logits.shape[1] == self.plain:  # nothing added: exactly what plain beam search computes
            forced = masked_log_probs(logits, self.vocab)
        else:
            logits = logits.float().clone()
            logits[:, [self.vocab.pad_id, self.vocab.start_id, self.vocab.unk_id]] = float("-inf")
            forced = logits - torch.logsumexp(logits[:, : self.plain], dim=1, keepdim=True)
        logp = forced.clone()
        logp[:, self.plain :] = float("-inf")
        if self.config.no_repeat_ngram:
            logp = block_repeats(logp, self.history, self.config.no_repeat_ngram)
        logp[self.done] = float("-inf")
        logp[self.done, self.vocab.pad_id] = 0.0  # a finished caption continues with <pad>, at no cost
        return logp, forced

    def step(self) -> bool:
        """One step for every state's beam; True when the search can stop."""
        logits, self.state, _ = self.decoder.step(self.tokens, self.context, self.state)
        logp, forced = self._log_probs(logits)  # (S*K, V) each
        k, vocab_size = self.config.beam_size, logp.shape[1]
        new_scores, parents, tokens = [], [], []
        for target in range(len(self.states)):
            best, flat = self._candidates(target, logp, forced).view(-1).topk(k)
            new_scores.append(best)
            parents.append(flat // vocab_size)
            tokens.append(flat % vocab_size)
        parent, token = torch.cat(parents), torch.cat(tokens)
        self.scores = torch.stack(new_scores)  # (S, K)
        self.history = torch.cat([self.history.index_select(0, parent), token.unsqueeze(1)], dim=1)
        self.state = reorder_state(self.state, parent)
        self.done = self.done.index_select(0, parent) | (token == self.vocab.end_id)
        self.tokens = token
        return self._can_stop()

    def _candidates(self, target: int, logp: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
        """Scores of every (row, token) extension that lands in state ``target``; ``-inf`` elsewhere ``(S*K, V)``."""
        k = self.config.beam_size
        scores = self.scores.view(-1, 1)  # (S*K, 1)
        cand = torch.full_like(logp, float("-inf"))
        for source, kind, tokens in self.into[target]:
            rows = slice(source * k, (source + 1) * k)
            if kind == "free":
                part = scores[rows] + logp[rows]
                part[:, tokens] = float("-inf")
                cand[rows] = part
            else:
                value = scores[rows, 0] + forced[rows, tokens]
                cand[rows, tokens] = value.masked_fill(self.done[rows], float("-inf"))
        return cand

    def _can_stop(self) -> bool:
        """All finished, or (no length penalty) nothing can beat the full state's n-th finished caption any more:
        every extension only lowers a score, and every future full caption grows from a running row."""
        if bool(self.done.all()):
            return True
        if self.config.length_penalty != 0:
            return False
        full, done_full = self.scores[-1:], self.done.view(len(self.states), -1)[-1:]
        if len(self.states) == 1:
            return settled(full, done_full, self.config.n_best)
        finished = full.masked_fill(~done_full, float("-inf")).topk(self.config.n_best, dim=1).values[0, -1]
        return bool(finished >= self.scores.view(-1).masked_fill(self.done, float("-inf")).max())

    def result(self) -> list[Hypothesis]:
        """The n best of the fullest state reached (no phrase open): the captions covering the most constraints,
        ranked as plain beam search ranks them (a caption cut at ``max_length`` when none finished in time)."""
        k = self.config.beam_size
        done = self.done.view(len(self.states), k)
        closed = [s for s, (_, open_phrase) in enumerate(self.states) if open_phrase is None]
        order = sorted(closed, key=lambda s: -len(self.states[s][0]))
        pick = next(s for s in order if bool(torch.isfinite(self.scores[s]).any()))
        rows = slice(pick * k, (pick + 1) * k)
        hyps = collect_beams(self.history[rows], self.scores[pick : pick + 1], done[pick : pick + 1], self.vocab,
                              self.config)[0]
        if len(self.states) == 1:  # plain beam search, exactly
            return hyps
        return [h for h in hyps if h.log_prob > float("-inf")] or hyps[:1]  # a state may hold fewer than K
