"""The searches, batched over images: ``greedy``, ``beam`` (vectorised over images × beams, n-best with
log-probabilities, length normalisation) and ``sample`` (temperature, top-k, several samples per image).

Generation never emits ``<pad>``, ``<start>`` or ``<unk>``: their logits are masked, so a caption is always made of
real words. Any decoder with the contract of :mod:`captioner.models.base` (:class:`~captioner.models.base.StepDecoder`)
works: pooled-vector, attention and ensembles (whose per-step "logits" are mean log-probabilities), and the ONNX
Runtime adapter of :mod:`captioner.export.runtime`, which runs exported graphs. The entry point that chooses between
these and the constrained search is :func:`captioner.generation.generate`.
"""

from __future__ import annotations

import torch

from captioner.generation.config import GenerationConfig, Hypothesis
from captioner.generation.logits import block_repeats, length_score, masked_log_probs
from captioner.models.base import StepDecoder, map_tensors, reorder_state, select_context
from captioner.vocab import Vocabulary


def plain_search(
    decoder: StepDecoder, features: torch.Tensor, vocab: Vocabulary, config: GenerationConfig
) -> list[list[Hypothesis]]:
    """The search ``config.method`` names, without constraints: :func:`beam_search`, or :func:`left_to_right` for
    greedy decoding and sampling."""
    if config.method == "beam":
        return beam_search(decoder, features, vocab, config)
    return left_to_right(decoder, features, vocab, config)


def left_to_right(
    decoder: StepDecoder, features: torch.Tensor, vocab: Vocabulary, config: GenerationConfig
) -> list[list[Hypothesis]]:
    """Greedy decoding or sampling: one token per row per step (``n_best`` rows per image when sampling)."""
    copies = config.n_best if config.method == "sample" else 1
    context, state = decoder.start(features)
    context, state = repeat_rows(context, state, copies)
    batch, device = features.shape[0] * copies, features.device
    tokens = torch.full((batch,), vocab.start_id, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    total = torch.zeros(batch, device=device)
    out = torch.full((batch, config.max_length), vocab.pad_id, dtype=torch.long, device=device)
    attention = []
    generator = _generator(config, device)
    for t in range(config.max_length):
        logits, state, alpha = decoder.step(tokens, context, state)
        logp = masked_log_probs(logits, vocab)  # (B, V)
        if config.no_repeat_ngram:  # blocked tokens get -inf; the others keep the model's log-probabilities
            logp = logits = block_repeats(logp, out[:, :t], config.no_repeat_ngram)
        if config.method == "sample":
            tokens = _sample(logits, vocab, config, generator)
        else:
            tokens = logp.argmax(dim=-1)
        tokens = tokens.masked_fill(done, vocab.pad_id)
        total += logp.gather(1, tokens.unsqueeze(1)).squeeze(1).masked_fill(done, 0.0)
        out[:, t] = tokens
        if config.return_attention:
            attention.append(alpha.float())
        done |= tokens == vocab.end_id
        if bool(done.all()):
            break
    weights = torch.stack(attention, dim=1) if attention else None  # (B, t, L)
    hyps = [make_hypothesis(row, float(lp), config.length_penalty, vocab, None if weights is None else weights[i])
            for i, (row, lp) in enumerate(zip(out.tolist(), total))]
    return [hyps[i : i + copies] for i in range(0, batch, copies)]


def repeat_rows(context, state, k: int):
    """Repeat each image's context and state ``k`` times (beams or samples of one image are adjacent rows)."""
    if k == 1:
        return context, state
    return (map_tensors(lambda t: t.repeat_interleave(k, dim=0), context),
            map_tensors(lambda t: t.repeat_interleave(k, dim=1), state))


def _generator(config: GenerationConfig, device: torch.device) -> torch.Generator | None:
    if config.method != "sample" or config.seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(config.seed)
    return gen


def _sample(
    logits: torch.Tensor, vocab: Vocabulary, config: GenerationConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """Draw one token per row from the tempered, top-k-filtered distribution: ``(B, V)`` → ``(B,)``."""
    logp = masked_log_probs(logits, vocab, config.temperature)
    if 0 < config.top_k < logp.shape[1]:
        kth = logp.topk(config.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logp = logp.masked_fill(logp < kth, float("-inf"))
    return torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)


def make_hypothesis(row: list[int], log_prob: float, penalty: float, vocab: Vocabulary,
                attention: torch.Tensor | None = None) -> Hypothesis:
    """Cut a generated row at ``<end>`` and wrap it (``attention``: the row's weights per step ``(T, L)``)."""
    finished = vocab.end_id in row
    tokens = row[: row.index(vocab.end_id)] if finished else [t for t in row if t != vocab.pad_id]
    length = torch.tensor(len(tokens) + int(finished))
    score = float(length_score(torch.tensor(log_prob), length, penalty))
    weights = attention[: len(tokens)].cpu() if attention is not None else None
    return Hypothesis(tokens=tokens, log_prob=log_prob, score=score, finished=finished, attention=weights)


def beam_search(
    decoder: StepDecoder, features: torch.Tensor, vocab: Vocabulary, config: GenerationConfig
) -> list[list[Hypothesis]]:
    """Beam search over all images × beams at once.

    Finished beams stay in their slot with a frozen score (they are extended with ``<pad>`` at log-probability 0),
    so the tensors keep the shape ``(B * K, ...)`` and no Python loop runs over beams. An image whose answer is
    settled (:func:`settled_images`) leaves the batch at once, so the others' steps do not pay for it.
    """
    k = config.beam_size
    search = _BeamBatch(decoder, features, vocab, config)
    for _ in range(config.max_length):
        logits, search.state, alpha = decoder.step(search.tokens, search.context, search.state)
        logp = masked_log_probs(logits, vocab)  # (N*K, V)
        if config.no_repeat_ngram:
            logp = block_repeats(logp, search.history, config.no_repeat_ngram)
        logp[search.done] = float("-inf")
        logp[search.done, vocab.pad_id] = 0.0  # a finished beam continues only with <pad>, at no cost
        n, vocab_size = len(search.images), logp.shape[1]
        candidates = (search.scores.view(-1, 1) + logp).view(n, k * vocab_size)  # (N, K*V)
        search.scores, flat = candidates.topk(k, dim=1)  # (N, K)
        offsets = (torch.arange(n, device=flat.device) * k).unsqueeze(1)  # (N, 1)
        search.advance((flat // vocab_size + offsets).view(-1), (flat % vocab_size).view(-1), alpha)
        stop = search.done.view(n, k).all(dim=1)
        if config.length_penalty == 0:
            stop |= settled_images(search.scores, search.done.view(n, k), config.n_best)
        if search.retire(stop):
            break
    search.retire(torch.ones(len(search.images), dtype=torch.bool, device=search.done.device))
    return search.results


class _BeamBatch:
    """The images still searching: their rows ``(N * K, ...)``, and the answers of those that left."""

    def __init__(self, decoder: StepDecoder, features: torch.Tensor, vocab: Vocabulary, config: GenerationConfig):
        batch, k, device = features.shape[0], config.beam_size, features.device
        self.vocab, self.config, self.images = vocab, config, list(range(batch))
        self.results: list[list[Hypothesis] | None] = [None] * batch
        context, state = decoder.start(features)
        self.context, self.state = repeat_rows(context, state, k)  # (B*K, ...)
        self.scores = torch.full((batch, k), float("-inf"), device=device)
        self.scores[:, 0] = 0.0  # all beams start identical: only the first may expand at step 0
        self.tokens = torch.full((batch * k,), vocab.start_id, dtype=torch.long, device=device)
        self.history = torch.empty((batch * k, 0), dtype=torch.long, device=device)
        self.attention = None  # (N*K, t, L) with return_attention
        self.done = torch.zeros(batch * k, dtype=torch.bool, device=device)

    def advance(self, parent: torch.Tensor, tokens: torch.Tensor, alpha: torch.Tensor | None) -> None:
        """Each new row's parent row ``(N*K,)`` and token ``(N*K,)``; ``alpha``: the step's attention."""
        self.tokens = tokens
        self.history = torch.cat([self.history.index_select(0, parent), tokens.unsqueeze(1)], dim=1)  # (N*K, t)
        if self.config.return_attention:
            step_alpha = alpha.float().index_select(0, parent).unsqueeze(1)  # (N*K, 1, L): what the parent read
            self.attention = step_alpha if self.attention is None else torch.cat(
                [self.attention.index_select(0, parent), step_alpha], dim=1)
        self.state = reorder_state(self.state, parent)
        self.done = self.done.index_select(0, parent) | (tokens == self.vocab.end_id)

    def retire(self, stop: torch.Tensor) -> bool:
        """Answer the images ``stop`` (bool ``(N,)``) and take their rows out; True when none is left."""
        if not bool(stop.any()):
            return False
        k, n = self.config.beam_size, len(self.images)
        rows = stop.repeat_interleave(k)
        answers = collect_beams(self.history[rows], self.scores[stop], self.done[rows], self.vocab, self.config,
                                None if self.attention is None else self.attention[rows])
        for image, hyps in zip((i for i, s in zip(self.images, stop.tolist()) if s), answers):
            self.results[image] = hyps
        keep = torch.nonzero(~rows).flatten()
        self.images = [i for i, s in zip(self.images, stop.tolist()) if not s]
        if len(keep) < n * k:
            self.context = select_context(self.context, keep)
            self.state = reorder_state(self.state, keep)
            self.scores, self.tokens = self.scores[~stop], self.tokens[keep]
            self.history, self.done = self.history[keep], self.done[keep]
            self.attention = None if self.attention is None else self.attention[keep]
        return not self.images


def settled_images(scores: torch.Tensor, done: torch.Tensor, n_best: int) -> torch.Tensor:
    """Images ``(B,)`` whose n best can no longer change: the ``n_best``-th best finished beam scores at least as
    high as the best unfinished one. Without a length penalty an extension only lowers a score, so further steps
    could not change what is returned (they would only extend beams that lose).

    Args:
        scores: beam log-probabilities ``(B, K)``.
        done: which beams have ended ``(B, K)``.
    """
    finished = scores.masked_fill(~done, float("-inf")).topk(n_best, dim=1).values[:, -1]  # (B,)
    running = scores.masked_fill(done, float("-inf")).max(dim=1).values  # (B,)
    return finished >= running


def collect_beams(
    history: torch.Tensor, scores: torch.Tensor, done: torch.Tensor, vocab: Vocabulary, config: GenerationConfig,
    attention: torch.Tensor | None = None,
) -> list[list[Hypothesis]]:
    """Rank each image's beams by the length-normalised score and keep the n best."""
    batch, k = scores.shape
    lengths = (history != vocab.pad_id).sum(dim=1).view(batch, k)  # (B, K), <end> included
    ranked = length_score(scores, lengths, config.length_penalty)  # (B, K)
    ranked = ranked.masked_fill(torch.isinf(scores), float("-inf"))
    order = ranked.argsort(dim=1, descending=True)[:, : config.n_best]  # (B, n)
    rows, log_probs = history.tolist(), scores.tolist()
    results = []
    for b, beams in enumerate(order.tolist()):
        results.append([
            make_hypothesis(rows[b * k + j], log_probs[b][j], config.length_penalty, vocab,
                        None if attention is None else attention[b * k + j])
            for j in beams
        ])
    return results
