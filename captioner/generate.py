"""The one caption search, used by the CLI, evaluation, validation during training, self-critical training and the
server.

Three methods, all batched over images: ``greedy``, ``beam`` (vectorised over images × beams, n-best with
log-probabilities, length normalisation) and ``sample`` (temperature, top-k, several samples per image). Generation
never emits ``<pad>``, ``<start>`` or ``<unk>``: their logits are masked, so a caption is always made of real words.
Any decoder with the interface of :mod:`captioner.decoder` (:class:`~captioner.decoder.StepDecoder`) works:
pooled-vector, attention and ensembles (whose per-step "logits" are mean log-probabilities), and the ONNX Runtime
adapter of :mod:`captioner.onnx_backend`, which runs exported graphs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from captioner.config import check_no_repeat_ngram
from captioner.decoder import StepDecoder, map_tensors, reorder_state
from captioner.vocab import Vocabulary

METHODS = ("greedy", "beam", "sample")


@dataclass
class GenerationConfig:
    """How to search.

    Attributes:
        method: ``greedy``, ``beam`` or ``sample``.
        beam_size: beams per image (``beam``); 1 gives the greedy result.
        max_length: maximum generated tokens, ``<end>`` included.
        length_penalty: beams are ranked by ``log_prob / length ** length_penalty`` (0: plain log-probability).
        n_best: hypotheses returned per image: the best ``n_best`` beams (at most ``beam_size``), or ``n_best``
            independent samples; greedy search returns one.
        temperature: logits are divided by this before sampling.
        top_k: sample only among the k most likely tokens (0: all).
        seed: seed for sampling (None: torch's global generator).
        return_attention: give each hypothesis the attention weights of its words (attention models only).
        no_repeat_ngram: never generate an n-gram of this size twice in one caption ("a red shirt and a red
            shirt" with 2); 0 turns the guard off; None (default) uses the model's own setting
            (``ModelConfig.no_repeat_ngram``, 0 for models that have none, so they caption as they always did).
        guided: tag-guided decoding: the encoder's ImageNet tags whose probability reaches ``tag_threshold`` (at
            most ``max_tags``) must appear in the caption (constrained beam search, :mod:`captioner.guided`).
        tags: words every image's caption must contain (guided decoding with given tags instead of the
            encoder's).
        tag_threshold: the probability an image tag needs (summed over the ImageNet classes that map to its word).
        max_tags: at most this many tags per image.
    """

    method: str = "beam"
    beam_size: int = 3
    max_length: int = 20
    length_penalty: float = 0.0
    n_best: int = 1
    temperature: float = 1.0
    top_k: int = 0
    seed: int | None = None
    return_attention: bool = False
    no_repeat_ngram: int | None = None
    guided: bool = False
    tags: tuple[str, ...] | None = None
    tag_threshold: float = 0.1
    max_tags: int = 2

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.beam_size < 1 or self.max_length < 1 or self.n_best < 1:
            raise ValueError("beam_size, max_length and n_best must be at least 1")
        if self.method == "beam" and self.n_best > self.beam_size:
            raise ValueError(f"n_best ({self.n_best}) cannot exceed beam_size ({self.beam_size})")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.no_repeat_ngram is not None:
            check_no_repeat_ngram(self.no_repeat_ngram)
        if not 0 < self.tag_threshold <= 1:
            raise ValueError(f"tag_threshold is a probability in (0, 1], got {self.tag_threshold}")
        if self.max_tags < 1:
            raise ValueError(f"max_tags must be at least 1, got {self.max_tags}")
        if (self.guided or self.tags) and self.method == "sample":
            raise ValueError("guided decoding searches (beam or greedy); it cannot sample")


@dataclass
class Hypothesis:
    """One generated caption.

    Attributes:
        tokens: generated ids, without ``<start>`` and ``<end>``.
        log_prob: sum of the log-probabilities of the tokens, ``<end>`` included when emitted.
        score: the ranking score (``log_prob`` with the length penalty applied).
        finished: True when the caption ended with ``<end>`` (False: cut at ``max_length``).
        attention: with ``GenerationConfig.return_attention``, the attention weights over the image locations when
            each token was generated, ``(len(tokens), L)``, each row summing to 1; else None.
    """

    tokens: list[int]
    log_prob: float
    score: float
    finished: bool
    attention: torch.Tensor | None = None


@torch.inference_mode()
def generate(
    decoder: StepDecoder, features: torch.Tensor, vocab: Vocabulary, config: GenerationConfig | None = None
) -> list[list[Hypothesis]]:
    """Caption a batch of images.

    Args:
        decoder: the trained decoder or ensemble (put in eval mode by the caller), or an ONNX Runtime adapter.
        features: image vectors ``(B, D)``, or feature maps ``(B, L, D)`` for an attention decoder.
        vocab: the vocabulary (for the special-token ids).
        config: search settings (default: beam search, beam 3).

    Returns:
        For each image, its hypotheses best first (``n_best`` of them; samples in the order drawn).
    """
    config = config or GenerationConfig()
    if features.shape[0] == 0:
        return []
    if config.return_attention and not decoder.config.attention:
        raise ValueError("return_attention needs a model that attends (inject 'attention'); this model reads one "
                         f"pooled image vector (inject {decoder.config.inject!r})")
    config = with_model_defaults(config, decoder)
    if config.method == "beam":
        return _beam_search(decoder, features, vocab, config)
    return _left_to_right(decoder, features, vocab, config)


def with_model_defaults(config: GenerationConfig, decoder: StepDecoder) -> GenerationConfig:
    """``config`` with what it leaves to the model filled in: ``no_repeat_ngram=None`` becomes the decoder's own
    setting (0 for models that have none)."""
    if config.no_repeat_ngram is None:
        return dataclasses.replace(config, no_repeat_ngram=getattr(decoder.config, "no_repeat_ngram", 0))
    return config


def masked_log_probs(logits: torch.Tensor, vocab: Vocabulary, temperature: float = 1.0) -> torch.Tensor:
    """Log-softmax over the vocabulary with ``<pad> <start> <unk>`` masked out: ``(N, V)`` → ``(N, V)``."""
    logits = logits.float() / temperature
    logits[:, [vocab.pad_id, vocab.start_id, vocab.unk_id]] = float("-inf")
    return torch.log_softmax(logits, dim=-1)


def repeat_mask(history: torch.Tensor, n: int, vocab_size: int) -> torch.Tensor | None:
    """Tokens that would repeat an n-gram: those that followed an earlier occurrence of each row's last ``n - 1``
    tokens.

    Args:
        history: tokens generated so far ``(N, t)``.
        n: n-gram size (0: no guard).
        vocab_size: V.

    Returns:
        ``(N, V)`` bool, True where a token is banned; None when nothing can repeat yet.
    """
    t = history.shape[1]
    if n < 2 or t < n:  # an n-gram needs an earlier (n-1)-gram with a token after it
        return None
    windows = history.unfold(1, n - 1, 1)[:, :-1]  # (N, t-n+1, n-1): earlier (n-1)-grams
    follow = history[:, n - 1 :]  # (N, t-n+1): the token after each
    hits = (windows == history[:, -(n - 1) :].unsqueeze(1)).all(dim=2)
    counts = torch.zeros(history.shape[0], vocab_size, device=history.device)
    return counts.scatter_add_(1, follow, hits.float()) > 0


def _block_repeats(logp: torch.Tensor, history: torch.Tensor, n: int) -> torch.Tensor:
    """``logp`` ``(N, V)`` with the tokens that would repeat an n-gram set to ``-inf``."""
    banned = repeat_mask(history, n, logp.shape[1])
    return logp if banned is None else logp.masked_fill(banned, float("-inf"))


def _length_score(log_prob: torch.Tensor, length: torch.Tensor, penalty: float) -> torch.Tensor:
    """Length-normalised score ``log_prob / length ** penalty`` (lengths count ``<end>``)."""
    if penalty == 0:
        return log_prob
    return log_prob / length.clamp(min=1).float().pow(penalty)


def _left_to_right(
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
            logp = logits = _block_repeats(logp, out[:, :t], config.no_repeat_ngram)
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
    hyps = [_hypothesis(row, float(lp), config.length_penalty, vocab, None if weights is None else weights[i])
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


def _hypothesis(row: list[int], log_prob: float, penalty: float, vocab: Vocabulary,
                attention: torch.Tensor | None = None) -> Hypothesis:
    """Cut a generated row at ``<end>`` and wrap it (``attention``: the row's weights per step ``(T, L)``)."""
    finished = vocab.end_id in row
    tokens = row[: row.index(vocab.end_id)] if finished else [t for t in row if t != vocab.pad_id]
    length = torch.tensor(len(tokens) + int(finished))
    score = float(_length_score(torch.tensor(log_prob), length, penalty))
    weights = attention[: len(tokens)].cpu() if attention is not None else None
    return Hypothesis(tokens=tokens, log_prob=log_prob, score=score, finished=finished, attention=weights)


def _beam_search(
    decoder: StepDecoder, features: torch.Tensor, vocab: Vocabulary, config: GenerationConfig
) -> list[list[Hypothesis]]:
    """Beam search over all images × beams at once.

    Finished beams stay in their slot with a frozen score (they are extended with ``<pad>`` at log-probability 0),
    so the tensors keep the shape ``(B * K, ...)`` and no Python loop runs over beams.
    """
    batch, k, device = features.shape[0], config.beam_size, features.device
    context, state = decoder.start(features)
    context, state = repeat_rows(context, state, k)  # (B*K, ...)
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: only the first may expand at step 0
    tokens = torch.full((batch * k,), vocab.start_id, dtype=torch.long, device=device)
    history = torch.empty((batch * k, 0), dtype=torch.long, device=device)
    attention = None  # (B*K, t, L) with return_attention
    done = torch.zeros(batch * k, dtype=torch.bool, device=device)
    offsets = (torch.arange(batch, device=device) * k).unsqueeze(1)  # (B, 1)
    for _ in range(config.max_length):
        logits, state, alpha = decoder.step(tokens, context, state)
        logp = masked_log_probs(logits, vocab)  # (B*K, V)
        if config.no_repeat_ngram:
            logp = _block_repeats(logp, history, config.no_repeat_ngram)
        logp[done] = float("-inf")
        logp[done, vocab.pad_id] = 0.0  # a finished beam continues only with <pad>, at no cost
        vocab_size = logp.shape[1]
        candidates = (scores.view(-1, 1) + logp).view(batch, k * vocab_size)  # (B, K*V)
        scores, flat = candidates.topk(k, dim=1)  # (B, K)
        parent = (flat // vocab_size + offsets).view(-1)  # (B*K,) rows of the previous step
        tokens = (flat % vocab_size).view(-1)  # (B*K,)
        history = torch.cat([history.index_select(0, parent), tokens.unsqueeze(1)], dim=1)  # (B*K, t)
        if config.return_attention:
            step_alpha = alpha.float().index_select(0, parent).unsqueeze(1)  # (B*K, 1, L): what the parent read
            attention = step_alpha if attention is None else torch.cat(
                [attention.index_select(0, parent), step_alpha], dim=1)
        state = reorder_state(state, parent)
        done = done.index_select(0, parent) | (tokens == vocab.end_id)
        if bool(done.all()) or (config.length_penalty == 0 and _settled(scores, done.view(batch, k), config.n_best)):
            break
    return _collect_beams(history, scores, done, vocab, config, attention)


def _settled(scores: torch.Tensor, done: torch.Tensor, n_best: int) -> bool:
    """True when no image's n best can change any more: each image's ``n_best``-th best finished beam scores at
    least as high as its best unfinished one. Without a length penalty an extension only lowers a score, so the
    remaining steps could not change what is returned (they would only extend beams that lose).

    Args:
        scores: beam log-probabilities ``(B, K)``.
        done: which beams have ended ``(B, K)``.
    """
    finished = scores.masked_fill(~done, float("-inf")).topk(n_best, dim=1).values[:, -1]  # (B,)
    running = scores.masked_fill(done, float("-inf")).max(dim=1).values  # (B,)
    return bool((finished >= running).all())


def _collect_beams(
    history: torch.Tensor, scores: torch.Tensor, done: torch.Tensor, vocab: Vocabulary, config: GenerationConfig,
    attention: torch.Tensor | None = None,
) -> list[list[Hypothesis]]:
    """Rank each image's beams by the length-normalised score and keep the n best."""
    batch, k = scores.shape
    lengths = (history != vocab.pad_id).sum(dim=1).view(batch, k)  # (B, K), <end> included
    ranked = _length_score(scores, lengths, config.length_penalty)  # (B, K)
    ranked = ranked.masked_fill(torch.isinf(scores), float("-inf"))
    order = ranked.argsort(dim=1, descending=True)[:, : config.n_best]  # (B, n)
    rows, log_probs = history.tolist(), scores.tolist()
    results = []
    for b, beams in enumerate(order.tolist()):
        results.append([
            _hypothesis(rows[b * k + j], log_probs[b][j], config.length_penalty, vocab,
                        None if attention is None else attention[b * k + j])
            for j in beams
        ])
    return results
