import pytest
import torch
from conftest import tiny_config

from captioner.models.pooled import Decoder


def test_lstm_parameter_count_matches_the_textbook_formula():
    cfg = tiny_config(50, embed_dim=16, image_proj_dim=12, hidden_dim=24)
    rnn = Decoder(cfg).rnn
    h, x = cfg.hidden_dim, cfg.embed_dim + cfg.image_proj_dim
    textbook = 4 * (h * (h + x) + h)  # W_ih, W_hh and one bias per gate
    assert sum(p.numel() for p in rnn.parameters()) == textbook + 4 * h  # PyTorch keeps a second bias b_hh
    assert rnn.weight_ih_l0.shape == (4 * h, x)  # W_ih has columns for the image


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_every_step_image_reaches_late_steps_through_w_ih(cell):
    torch.manual_seed(0)
    dec = Decoder(tiny_config(30, cell=cell)).eval()
    feats = torch.randn(2, dec.config.encoder_dim, requires_grad=True)
    tokens = torch.randint(4, 30, (2, 6))
    logits = dec(feats, tokens)  # (B, T, V)
    (grad,) = torch.autograd.grad(logits[:, 5].sum(), feats)
    assert grad.abs().sum() > 0
    # The recurrent cell's input at every step t is [embedding(w_t); projected image].
    seen = []
    hook = dec.rnn.register_forward_hook(lambda mod, inputs, out: seen.append(inputs[0].detach()))
    dec(feats, tokens)
    hook.remove()
    x = seen[0]  # (B, T, E+P)
    projected, _ = dec.start(feats)
    for t in range(tokens.shape[1]):
        assert torch.allclose(x[:, t, dec.config.embed_dim:], projected)
        assert torch.allclose(x[:, t, : dec.config.embed_dim], dec.embed(tokens[:, t]))
    # The image enters each step's input: a step run from a zero state still depends on it.
    image, _ = dec.start(feats)
    out_a = dec.step(tokens[:, 5], image, None)
    out_b = dec.step(tokens[:, 5], image * 0, None)
    assert not torch.allclose(out_a.logits, out_b.logits)
    # ...and only through W_ih's image columns: zero them and the image stops mattering.
    with torch.no_grad():
        dec.rnn.weight_ih_l0[:, dec.config.embed_dim:] = 0
    assert torch.allclose(dec(feats, tokens), dec(torch.randn_like(feats), tokens))


def test_init_only_image_flows_only_through_the_state():
    torch.manual_seed(0)
    dec = Decoder(tiny_config(30, inject="init_only")).eval()
    assert dec.rnn.weight_ih_l0.shape[1] == dec.config.embed_dim  # no image columns in W_ih
    feats = torch.randn(2, dec.config.encoder_dim, requires_grad=True)
    tokens = torch.randint(4, 30, (2, 6))
    (grad,) = torch.autograd.grad(dec(feats, tokens)[:, 5].sum(), feats)
    assert grad.abs().sum() > 0  # reaches step 5 through (h, c)
    image, state = dec.start(feats)
    assert image is None and state[0].shape == (1, 2, dec.config.hidden_dim)
    # The only image-dependent thing handed to the recurrence is the state: equal states give equal logits
    # whatever the image was.
    _, other_state = dec.start(torch.randn_like(feats))
    out_a = dec.step(tokens[:, 5], None, state)
    out_b = dec.step(tokens[:, 5], None, other_state)
    out_c = dec.step(tokens[:, 5], None, tuple(s.clone() for s in state))
    assert not torch.allclose(out_a.logits, out_b.logits) and torch.equal(out_a.logits, out_c.logits)


def test_multilayer_and_shapes():
    dec = Decoder(tiny_config(40, num_layers=2, dropout=0.3))
    logits = dec(torch.randn(3, dec.config.encoder_dim), torch.randint(0, 40, (3, 7)))
    assert logits.shape == (3, 7, 40)


def test_cpu_dropout_keeps_one_minus_p_scales_the_kept_and_is_identity_in_eval():
    from captioner.models.base import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.3)
    x = torch.ones(200_000, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient goes through the same mask and scale
    assert torch.equal(drop.eval()(x), x) and torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
