"""The fused teacher-forced recurrence (captioner.models.fused_lstm) computes what the step-by-step loop computes: the same
logits, attention weights and gradients of every parameter and of the image features (float64, tight tolerance),
with and without the context gate, with the attention penalty, with dropout, and for captions of shared images."""

import pytest
import torch
from conftest import WORDS, tiny_config

from captioner.models.attention import AttentionDecoder, doubly_stochastic_penalty
from captioner.vocab import Vocabulary

L, C = 9, 20


def _decoder(gate: bool, init: str, dropout: float) -> AttentionDecoder:
    torch.manual_seed(5)
    vocab = Vocabulary(WORDS)
    config = tiny_config(len(vocab), inject="attention", encoder_dim=C, feature_locations=L, attention_dim=10,
                         attention_gate=gate, attention_init=init, dropout=dropout)
    return AttentionDecoder(config).double().train()


def _tokens(vocab_size: int, lengths: list[int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    tokens = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, n in enumerate(lengths):
        tokens[row, :n] = torch.randint(4, vocab_size, (n,), generator=g)
    tokens[:, 0] = 2
    return tokens


def _run(decoder: AttentionDecoder, fused: bool, feats, tokens, image_index, penalty: bool):
    """Logits, weights and the gradients of a loss over both, by one path."""
    decoder.zero_grad(set_to_none=True)
    feats = feats.clone().requires_grad_(True)
    decoder._fused_recurrence = lambda: fused  # choose the path
    torch.manual_seed(11)  # the same dropout masks for both paths
    logits, weights = decoder(feats, tokens, image_index=image_index, return_attention=True)
    target = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2), dtype=logits.dtype)
    loss = (logits * target).sum() + (doubly_stochastic_penalty(weights) if penalty else 0)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in decoder.named_parameters() if p.grad is not None}
    return logits.detach(), weights.detach(), grads, feats.grad


@pytest.mark.parametrize("gate, init, dropout, penalty", [
    (True, "mean", 0.0, False), (False, "zeros", 0.0, True), (True, "mean", 0.4, True),
])
def test_fused_recurrence_matches_the_step_by_step_loop(gate, init, dropout, penalty):
    decoder = _decoder(gate, init, dropout)
    tokens = _tokens(decoder.config.vocab_size, [7, 3, 7, 1, 5, 2])
    feats = torch.randn(3, L, C, dtype=torch.float64)
    image_index = torch.tensor([0, 0, 1, 2, 2, 1])  # two captions per image: context gradients add up
    fused = _run(decoder, True, feats, tokens, image_index, penalty)
    loop = _run(decoder, False, feats, tokens, image_index, penalty)
    assert torch.allclose(fused[0], loop[0], atol=1e-12) and torch.allclose(fused[1], loop[1], atol=1e-12)
    assert fused[2].keys() == loop[2].keys()
    for name in loop[2]:
        assert torch.allclose(fused[2][name], loop[2][name], atol=1e-10), name
    assert torch.allclose(fused[3], loop[3], atol=1e-10)


def test_the_fused_path_is_taken_only_where_it_applies():
    decoder = _decoder(True, "mean", 0.0)
    assert decoder._fused_recurrence()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not decoder._fused_recurrence()  # mixed precision keeps the loop
    vocab = Vocabulary(WORDS)
    for overrides in (dict(cell="gru"), dict(num_layers=2)):
        config = tiny_config(len(vocab), inject="attention", encoder_dim=C, feature_locations=L, attention_dim=10,
                             **overrides)
        assert not AttentionDecoder(config)._fused_recurrence()


def test_packed_logits_are_the_padded_ones_at_real_positions_and_give_the_same_loss():
    decoder = _decoder(True, "mean", 0.0).eval()
    tokens = _tokens(decoder.config.vocab_size, [7, 3, 7, 1, 5, 2])
    targets = torch.roll(tokens, -1, dims=1) * (tokens != 0)  # any ids where the inputs are real, 0 elsewhere
    feats, image_index = torch.randn(3, L, C, dtype=torch.float64), torch.tensor([0, 0, 1, 2, 2, 1])
    padded = decoder(feats, tokens, image_index=image_index)  # (B, T, V)
    logits, positions = decoder(feats, tokens, image_index=image_index, packed=True)
    assert logits.shape == (int((tokens != 0).sum()), decoder.config.vocab_size)
    assert sorted(positions.tolist()) == torch.nonzero(tokens.reshape(-1)).squeeze(1).tolist()
    assert torch.equal(logits, padded.reshape(-1, padded.shape[-1])[positions])
    loss = torch.nn.CrossEntropyLoss(ignore_index=0, label_smoothing=0.1)
    assert torch.allclose(loss(logits, targets.reshape(-1)[positions]),
                          loss(padded.reshape(-1, padded.shape[-1]), targets.reshape(-1)), atol=1e-12)
