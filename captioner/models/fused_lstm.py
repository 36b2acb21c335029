"""Teacher-forced recurrence of the one-layer attention LSTM as one autograd node, with its backward written out.

Run step by step under autograd, every step of :class:`captioner.models.attention.AttentionDecoder` leaves a dozen small
nodes behind: slices of the attention context whose backward zero-fills and copies a tensor of the batch's context
size, weight-gradient products with as few rows as the step has captions, separate passes for each element-wise
operation. This module runs the same mathematics (the docstring of :mod:`captioner.models.attention`) over all steps in
one :class:`torch.autograd.Function`:

- forward: per step, one product ``h @ [W_hh ; W_q ; W_b]^T`` for everything the previous hidden state feeds, the
  additive attention, the gated context, the LSTM cell; it keeps what the backward needs;
- backward: back-propagation through time with the context gradients accumulated in place into one buffer per
  tensor, and every weight gradient deferred to one large matrix product over all steps' rows.

Captions are packed longest first (``counts[t]`` rows are still going at step t, non-increasing), as
:meth:`AttentionDecoder.forward` orders them. Gradients equal the step-by-step loop's (tested in float64).
"""

from __future__ import annotations

from itertools import accumulate
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable


class Weights(NamedTuple):
    """The parameters the recurrence uses.

    Attributes:
        w_ctx: the image-context columns of the cell's W_ih ``(4H, P)``.
        w_hh: the cell's W_hh ``(4H, H)``; ``b_hh`` ``(4H,)`` its bias.
        w_query: the attention query ``(A, H)``; ``w_score`` the score vector ``(1, A)``.
        w_gate: the context gate ``(P, H)`` and ``b_gate`` ``(P,)`` (None: no gate).
    """

    w_ctx: torch.Tensor
    w_hh: torch.Tensor
    b_hh: torch.Tensor
    w_query: torch.Tensor
    w_score: torch.Tensor
    w_gate: torch.Tensor | None
    b_gate: torch.Tensor | None


def attention_lstm(word_gates: torch.Tensor, counts: list[int], keys: torch.Tensor, values: torch.Tensor,
                   h0: torch.Tensor, c0: torch.Tensor, weights: Weights) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the attention LSTM over packed teacher-forced steps.

    Args:
        word_gates: the words' share of the input projection, ``W_ih[:, :E] e + b_ih``, packed step by step
            ``(N, 4H)`` with ``N = sum(counts)``.
        counts: rows still going at each step (non-increasing).
        keys: attention keys ``(B, L, A)``; values ``(B, L, P)`` (rows in the packed order).
        h0: initial hidden state ``(B, H)``; c0 the initial cell state ``(B, H)``.
        weights: the :class:`Weights`.

    Returns:
        ``(hidden, alpha)``: each step's new hidden state ``(N, H)`` and attention weights ``(N, L)``, packed.
    """
    gated = weights.w_gate is not None
    w_gate = weights.w_gate if gated else weights.w_query.new_zeros(0, weights.w_query.shape[1])
    b_gate = weights.b_gate if gated else weights.w_query.new_zeros(0)
    return _AttentionLSTM.apply(word_gates, keys, values, h0, c0, weights.w_ctx, weights.w_hh, weights.b_hh,
                                weights.w_query, weights.w_score, w_gate, b_gate, tuple(counts), gated)


class _Saved(NamedTuple):
    """What the forward keeps for the backward, packed step by step like the outputs (N rows)."""

    h_prev: torch.Tensor  # (N, H): the hidden state each step started from
    c_prev: torch.Tensor  # (N, H): the cell state each step started from
    alpha: torch.Tensor  # (N, L): attention weights (an output)
    context: torch.Tensor  # (N, P): sum_i alpha_i v_i, before the gate
    gate: torch.Tensor  # (N, P): the context gate (empty without one)
    acts: torch.Tensor  # (N, 4H): i, f, g, o after their non-linearities
    c_tanh: torch.Tensor  # (N, H): tanh of the new cell state
    hidden: torch.Tensor  # (N, H): the new hidden state (an output)

    @classmethod
    def empty(cls, rows: int, keys: torch.Tensor, values: torch.Tensor, h0: torch.Tensor, gated: bool) -> "_Saved":
        hidden, locations, width = h0.shape[1], keys.shape[1], values.shape[2]
        new = h0.new_empty
        return cls(new(rows, hidden), new(rows, hidden), new(rows, locations),
                   new(rows, width), new(rows, width if gated else 0), new(rows, 4 * hidden), new(rows, hidden),
                   new(rows, hidden))


class _AttentionLSTM(torch.autograd.Function):
    """See :func:`attention_lstm`; the saved per-step tensors are packed like the outputs."""

    @staticmethod
    def forward(ctx, word_gates, keys, values, h0, c0, w_ctx, w_hh, b_hh, w_query, w_score, w_gate, b_gate,
                counts, gated):
        hidden_dim, attn_dim = w_hh.shape[1], w_query.shape[0]
        w_prev = torch.cat([w_hh, w_query, w_gate])  # (4H + A + P', H): everything h_{t-1} feeds, one product
        saved = _Saved.empty(word_gates.shape[0], keys, values, h0, gated)
        h, c, start, sigs = h0, c0, 0, []
        for n in counts:
            rows, h, c = slice(start, start + n), h[:n], c[:n]
            start += n
            saved.h_prev[rows], saved.c_prev[rows] = h, c
            proj = h @ w_prev.t()  # (n, 4H + A + P')
            sig = (keys[:n] + proj[:, 4 * hidden_dim: 4 * hidden_dim + attn_dim].unsqueeze(1)).sigmoid_()
            sigs.append(sig)  # (n, L, A): one tensor per step, so the allocator reuses their memory between batches
            alpha = saved.alpha[rows]
            energy = torch.bmm(w_score.expand(n, 1, attn_dim), sig.transpose(1, 2)).squeeze(1)  # (n, L)
            torch.softmax(energy, dim=1, out=alpha)  # (n, L)
            context = torch.bmm(alpha.unsqueeze(1), values[:n], out=saved.context[rows].unsqueeze(1)).squeeze(1)
            z = context
            if gated:
                gate = torch.sigmoid(proj[:, 4 * hidden_dim + attn_dim:] + b_gate, out=saved.gate[rows])
                z = gate * context  # (n, P)
            pre = torch.addmm(word_gates[rows] + b_hh, z, w_ctx.t()).add_(proj[:, : 4 * hidden_dim])  # (n, 4H)
            acts = saved.acts[rows]
            torch.sigmoid(pre[:, : 2 * hidden_dim], out=acts[:, : 2 * hidden_dim])  # i, f
            torch.tanh(pre[:, 2 * hidden_dim: 3 * hidden_dim], out=acts[:, 2 * hidden_dim: 3 * hidden_dim])  # g
            torch.sigmoid(pre[:, 3 * hidden_dim:], out=acts[:, 3 * hidden_dim:])  # o
            i, f, g, o = acts.chunk(4, dim=1)
            c = torch.addcmul(f * c, i, g)
            h = torch.mul(o, torch.tanh(c, out=saved.c_tanh[rows]), out=saved.hidden[rows])
        ctx.counts, ctx.gated = counts, gated
        ctx.save_for_backward(keys, values, w_ctx, w_prev, w_score, h0, c0, *saved, *sigs)
        return saved.hidden, saved.alpha

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hidden, grad_alpha):
        keys, values, w_ctx, w_prev, w_score, h0, c0, *rest = ctx.saved_tensors
        saved, sigs = _Saved(*rest[: len(_Saved._fields)]), rest[len(_Saved._fields):]
        grads = _bptt(ctx.counts, ctx.gated, grad_hidden, grad_alpha, keys, values, w_ctx, w_prev, w_score,
                      saved.h_prev, saved.c_prev, sigs, saved.alpha, saved.context, saved.gate, saved.acts,
                      saved.c_tanh, h0, c0)
        return grads + (None, None)


def _bptt(counts, gated, grad_hidden, grad_alpha, keys, values, w_ctx, w_prev, w_score, h_prev, c_prev, sigs, alpha,
          context, gate, acts, c_tanh, h0, c0) -> tuple:
    """Back-propagation through time for :class:`_AttentionLSTM` (its inputs' gradients, in order)."""
    hidden_dim = c_prev.shape[1]
    batch = h0.shape[0]
    d_keys, d_values = torch.zeros_like(keys), torch.zeros_like(values)
    d_h, d_c = h0.new_zeros(batch, hidden_dim), c0.new_zeros(batch, hidden_dim)
    d_prev = h_prev.new_empty(h_prev.shape[0], w_prev.shape[0])  # (N, 4H + A + P'): what h_{t-1} fed, per row
    d_w_score = keys.new_zeros(keys.shape[2])  # (A,)
    grad_alpha = grad_alpha if grad_alpha is not None else alpha.new_zeros(alpha.shape)
    grad_hidden = grad_hidden if grad_hidden is not None else h_prev.new_zeros(h_prev.shape)
    ends = list(accumulate(counts, initial=0))
    for t in reversed(range(len(counts))):
        n, rows = counts[t], slice(ends[t], ends[t + 1])
        _cell_backward(grad_hidden[rows] + d_h[:n], d_c, n, acts[rows], c_prev[rows], c_tanh[rows], d_prev[rows])
        d_z = d_prev[rows, : 4 * hidden_dim] @ w_ctx  # (n, P)
        d_ctx = d_z * gate[rows] if gated else d_z
        if gated:
            d_prev[rows, w_prev.shape[0] - gate.shape[1]:] = d_z * context[rows] * gate[rows] * (1 - gate[rows])
        d_values[:n].addcmul_(alpha[rows].unsqueeze(2), d_ctx.unsqueeze(1))  # (n, L, P) += alpha^T d_ctx
        # (n, L); bmm with the values transposed is ~10x faster on CPU than values @ d_ctx, the same product
        d_alpha = torch.bmm(d_ctx.unsqueeze(1), values[:n].transpose(1, 2)).squeeze(1) + grad_alpha[rows]
        a = alpha[rows]
        d_e = a * (d_alpha - (a * d_alpha).sum(dim=1, keepdim=True))  # softmax backward, (n, L)
        s = sigs[t]  # (n, L, A)
        d_w_score += torch.bmm(d_e.unsqueeze(1), s).sum(dim=0)[0]  # score vector: sum of d_e * s
        slope = torch.addcmul(s, s, s, value=-1)  # (n, L, A): the sigmoid's derivative s (1 - s)
        d_keys[:n].addcmul_(slope, d_e.unsqueeze(2))  # keys: d_e * slope (times w once, after the loop)
        d_query = torch.bmm(d_e.unsqueeze(1), slope).squeeze(1)  # (n, A)
        d_prev[rows, 4 * hidden_dim: 4 * hidden_dim + s.shape[2]] = d_query * w_score
        d_h[:n] = d_prev[rows] @ w_prev  # (n, H): to h_{t-1}
    d_keys.mul_(w_score)  # the score vector's share of every key's gradient, once for all steps
    return _weight_grads(d_prev, d_w_score, d_keys, d_values, d_h, d_c, w_ctx, w_prev, h_prev, context,
                         gate, hidden_dim, gated)


def _cell_backward(d_h: torch.Tensor, d_c_carry: torch.Tensor, n: int, acts: torch.Tensor, c_prev: torch.Tensor,
                   c_tanh: torch.Tensor, out: torch.Tensor) -> None:
    """The LSTM cell's backward for one step: writes the pre-activation gradients ``(n, 4H)`` into ``out[:, :4H]``
    and the gradient of ``c_{t-1}`` into ``d_c_carry[:n]``."""
    i, f, g, o = acts.chunk(4, dim=1)
    d_c = d_h * o * (1 - c_tanh * c_tanh) + d_c_carry[:n]  # (n, H)
    hidden = i.shape[1]
    out[:, :hidden] = d_c * g * i * (1 - i)
    out[:, hidden: 2 * hidden] = d_c * c_prev * f * (1 - f)
    out[:, 2 * hidden: 3 * hidden] = d_c * i * (1 - g * g)
    out[:, 3 * hidden: 4 * hidden] = d_h * c_tanh * o * (1 - o)
    d_c_carry[:n] = d_c * f


def _weight_grads(d_prev, d_w_score, d_keys, d_values, d_h, d_c, w_ctx, w_prev, h_prev, context, gate,
                  hidden_dim, gated) -> tuple:
    """The gradients of the inputs of :class:`_AttentionLSTM` from the per-row ones, each weight's in one product
    over all steps' rows."""
    d_pre = d_prev[:, : 4 * hidden_dim]  # (N, 4H)
    z = context * gate if gated else context
    d_w_prev = d_prev.t() @ h_prev  # (4H + A + P', H)
    attn = d_w_score.shape[0]
    d_gate_pre = d_prev[:, 4 * hidden_dim + attn:]
    return (d_pre, d_keys, d_values, d_h, d_c, d_pre.t() @ z, d_w_prev[: 4 * hidden_dim], d_pre.sum(dim=0),
            d_w_prev[4 * hidden_dim: 4 * hidden_dim + attn], d_w_score.unsqueeze(0), d_w_prev[4 * hidden_dim + attn:],
            d_gate_pre.sum(dim=0))
