"""Rules applied to a step's logits, shared by every search: the special-token mask, the n-gram repetition ban and
the length-normalised score."""

from __future__ import annotations

import torch

from captioner.vocab import Vocabulary


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


def block_repeats(logp: torch.Tensor, history: torch.Tensor, n: int) -> torch.Tensor:
    """``logp`` ``(N, V)`` with the tokens that would repeat an n-gram set to ``-inf``."""
    banned = repeat_mask(history, n, logp.shape[1])
    return logp if banned is None else logp.masked_fill(banned, float("-inf"))


def length_score(log_prob: torch.Tensor, length: torch.Tensor, penalty: float) -> torch.Tensor:
    """Length-normalised score ``log_prob / length ** penalty`` (lengths count ``<end>``)."""
    if penalty == 0:
        return log_prob
    return log_prob / length.clamp(min=1).float().pow(penalty)
