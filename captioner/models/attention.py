"""The attention decoder: at every step a soft attention over the encoder's feature map gives the image context that
is concatenated to the word embedding, so the image still enters the recurrent cell through W_ih at every step.

This is the soft ("deterministic") attention of Show, Attend and Tell (Xu et al. 2015), with Bahdanau's additive
scores. For an image with feature-map locations ``f_1 .. f_L`` (``(L, C)``, row by row):

- ``v_i = dropout(relu(W_v f_i))`` projects each location once per caption (``(L, P)``), ``k_i = W_k v_i`` are its
  attention keys (``(L, A)``);
- at step t, with the previous top-layer hidden state ``h``: ``e_ti = w · sigmoid(k_i + W_q h)``,
  ``alpha_t = softmax(e_t)`` over the L locations, ``z_t = beta_t * sum_i alpha_ti v_i`` with the gate
  ``beta_t = sigmoid(W_b h)`` (optional);
- the cell's input is ``[embed(w_t) ; z_t]``; the mean of the feature map sets the initial state (optional).

The score uses a sigmoid where Bahdanau writes ``w · tanh(u)``: the two are the same family of functions, because
``tanh(u) = 2 sigmoid(2u) - 1`` (doubling ``W_k``, ``W_q`` and ``w`` turns one into the other, and the constant
``-sum(w)`` it leaves is the same for every location, so the softmax ignores it). The sigmoid is chosen because it is
about 3.5 times faster than tanh on CPU here, and this is the largest element-wise operation of every step
(``(B, L, A)``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from captioner.config import ModelConfig
from captioner.models.base import DecoderStep, Dropout, initial_state, map_tensors, select_context, state_width
from captioner.models.fused_lstm import Weights, attention_lstm

_CELLS = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}


class AttentionContext(NamedTuple):
    """What the attention reads at every step, computed once per image.

    Attributes:
        values: projected locations ``(B, L, P)``.
        keys: their attention keys ``(B, L, A)``.
    """

    values: torch.Tensor
    keys: torch.Tensor


class SoftAttention(nn.Module):
    """Additive attention over a set of locations, queried by a hidden state.

    Args:
        value_dim: width ``P`` of the values (the projected locations).
        query_dim: width ``H`` of the query (the hidden state).
        hidden_dim: width ``A`` of the scoring layer.
        gate: scale the context by ``sigmoid(W_b h)`` (one gate per value channel).
    """

    def __init__(self, value_dim: int, query_dim: int, hidden_dim: int, gate: bool = True) -> None:
        super().__init__()
        self.key = nn.Linear(value_dim, hidden_dim)
        self.query = nn.Linear(query_dim, hidden_dim, bias=False)  # the key's bias already shifts every score
        self.score = nn.Linear(hidden_dim, 1, bias=False)  # a constant added to every score changes no weight
        self.gate = nn.Linear(query_dim, value_dim) if gate else None

    def forward(self, context: AttentionContext, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: context with values ``(B, L, P)``, keys ``(B, L, A)``; query ``(B, H)``.

        Returns:
            ``(z, alpha)``: the (gated) context ``(B, P)`` and the attention weights ``(B, L)``, which sum to 1.
        """
        energy = self.score(torch.sigmoid(context.keys + self.query(query).unsqueeze(1))).squeeze(2)  # (B, L)
        alpha = torch.softmax(energy, dim=1)  # (B, L)
        z = torch.bmm(alpha.unsqueeze(1), context.values).squeeze(1)  # (B, P)
        if self.gate is not None:
            z = torch.sigmoid(self.gate(query)) * z
        return z, alpha


class AttentionDecoder(nn.Module):
    """Generates caption-token logits from an image's feature map ``(B, L, C)``, attending at every step.

    Args:
        config: model configuration with ``inject="attention"``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.is_lstm = config.cell == "lstm"
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=0)
        self.dropout = Dropout(config.dropout)
        self.image_proj = nn.Sequential(
            nn.Linear(config.encoder_dim, config.image_proj_dim), nn.ReLU(), Dropout(config.dropout)
        )
        self.attention = SoftAttention(config.image_proj_dim, config.hidden_dim, config.attention_dim,
                                       config.attention_gate)
        self.init_state = (nn.Linear(config.encoder_dim, state_width(config))
                           if config.attention_init == "mean" else None)
        inputs = [config.embed_dim + config.image_proj_dim] + [config.hidden_dim] * (config.num_layers - 1)
        self.rnn = nn.ModuleList(_CELLS[config.cell](width, config.hidden_dim) for width in inputs)
        self.head = nn.Linear(config.hidden_dim, config.vocab_size)

    def start(self, features: torch.Tensor) -> tuple[AttentionContext, object]:
        """Project the locations once per caption and set the initial state.

        Args:
            features: feature maps ``(B, L, C)`` (any float dtype; float16 from the cache).

        Returns:
            ``(context, state)``: the :class:`AttentionContext` and the state, ``(layers, B, H)`` tensors
            (``(h, c)`` for an LSTM).
        """
        features = features.to(self.head.weight.dtype)
        values = self.image_proj(features)  # (B, L, P)
        context = AttentionContext(values, self.attention.key(values))  # keys (B, L, A)
        if self.init_state is not None:
            return context, initial_state(self.init_state, features.mean(dim=1), self.config)
        zeros = features.new_zeros(self.config.num_layers, features.shape[0], self.config.hidden_dim)
        return context, ((zeros, zeros.clone()) if self.is_lstm else zeros)

    def step(self, tokens: torch.Tensor, context: AttentionContext, state) -> DecoderStep:
        """One decoding step: ids ``(B,)`` → logits ``(B, V)``, the new state and the attention weights ``(B, L)``."""
        word_gates = self._word_gates(self.dropout(self.embed(tokens)))  # (B, G*H)
        top, state, alpha = self._recur(word_gates, self._context_weight(), context, state)
        return DecoderStep(self.head(self.dropout(top)), state, alpha)

    def _word_gates(self, embedded: torch.Tensor) -> torch.Tensor:
        """The word embedding's share of the first cell's input projection: ``W_ih[:, :E] e + b_ih``, for any
        leading shape ``(..., E)`` → ``(..., G*H)`` (G = 4 gates for an LSTM, 3 for a GRU, 1 for an RNN)."""
        cell = self.rnn[0]
        return nn.functional.linear(embedded, cell.weight_ih[:, : self.config.embed_dim], cell.bias_ih)

    def _context_weight(self) -> torch.Tensor:
        """The image-context columns of the first cell's W_ih, ``(G*H, P)``, as one contiguous tensor (taken once
        per caption batch, not once per step)."""
        return self.rnn[0].weight_ih[:, self.config.embed_dim:].contiguous()

    def _recur(self, word_gates: torch.Tensor, context_weight: torch.Tensor, context: AttentionContext,
               state) -> tuple[torch.Tensor, object, torch.Tensor]:
        """Attend with the previous top hidden state, then run the cells on ``[embed(w_t) ; z_t]``.

        The first cell's input projection ``W_ih [e ; z] + b_ih`` is computed as ``word_gates + W_ih[:, E:] z``: the
        same product split by columns, so teacher forcing can project every step's words in one matrix product.

        Args:
            word_gates: ``(B, G*H)`` from :meth:`_word_gates`.
            context_weight: ``W_ih[:, E:]`` from :meth:`_context_weight`.
            context: the images' :class:`AttentionContext` (B rows).
            state: ``(layers, B, H)`` tensors (``(h, c)`` for an LSTM).

        Returns:
            ``(h, state, alpha)``: the top layer's new hidden state ``(B, H)``, the new state, the weights ``(B, L)``.
        """
        top = state[0][-1] if self.is_lstm else state[-1]  # (B, H): h_{t-1} of the top layer
        z, alpha = self.attention(context, top)  # (B, P), (B, L)
        gates = word_gates + nn.functional.linear(z, context_weight)  # (B, G*H)
        new_h, new_c = [], []
        for layer, cell in enumerate(self.rnn):
            if layer:
                gates = nn.functional.linear(self.dropout(new_h[-1]), cell.weight_ih, cell.bias_ih)
            if self.is_lstm:
                h, c = _lstm_cell(gates, state[0][layer], state[1][layer], cell)
                new_c.append(c)
            else:
                step = _gru_cell if self.config.cell == "gru" else _rnn_cell
                h = step(gates, state[layer], cell)
            new_h.append(h)
        hidden = torch.stack(new_h)  # (layers, B, H)
        return new_h[-1], ((hidden, torch.stack(new_c)) if self.is_lstm else hidden), alpha

    packs_logits = True  # forward(..., packed=True) is available (captioner.training.xe uses it)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, image_index: torch.Tensor | None = None,
                return_attention: bool = False, packed: bool = False):
        """Teacher-forced logits.

        Rows are processed longest first and each step runs only the rows whose caption is still going, so padding
        costs nothing; the words' share of the input projection and the output layer run once over all steps.
        Positions after a caption's last token get zero logits (the loss ignores them).

        Args:
            features: feature maps ``(N, L, C)``.
            tokens: input ids ``(B, T)``, starting with ``<start>``, padded at the end with ``<pad>`` (id 0).
            image_index: ``(B,)`` row of ``features`` for each caption (None: ``N == B``); each image's locations
                are then projected once however many captions it has.
            return_attention: also return the attention weights.
            packed: return the logits of real positions only, ``(N, V)`` with N the captions' total length, and
                ``(N,)`` their positions in ``tokens.reshape(-1)`` (so the loss never sees padding, and no
                ``(B, T, V)`` tensor is built).

        Returns:
            Logits ``(B, T, V)`` (position t predicts token t+1), or with ``packed`` the pair ``(logits, positions)``;
            with ``return_attention`` also the weights ``(B, T, L)`` (zeros after a caption's end).
        """
        context, state = self.start(features)
        batch, steps = tokens.shape
        rows = image_index if image_index is not None else torch.arange(batch, device=tokens.device)
        positions = torch.arange(1, steps + 1, device=tokens.device)  # (T,)
        lengths = ((tokens != 0) * positions).amax(dim=1)  # (B,): up to the last non-<pad> token
        order = lengths.argsort(descending=True, stable=True)
        context = select_context(context, rows.index_select(0, order))
        state = map_tensors(lambda s: s.index_select(1, rows.index_select(0, order)), state)
        active = (lengths.unsqueeze(0) >= positions.unsqueeze(1)).sum(dim=1).tolist()  # rows still going at t
        active = [n for n in active if n]  # non-increasing: the steps up to the longest caption
        slots = torch.cat([torch.arange(n, device=tokens.device) * steps + t for t, n in enumerate(active)])
        real = tokens.index_select(0, order).reshape(-1).index_select(0, slots)  # (sum of lengths,) step by step
        word_gates = self._word_gates(self.dropout(self.embed(real)))  # (sum of lengths, G*H) step by step
        if self._fused_recurrence():
            hiddens, weights = self._run_fused(word_gates, active, context, state)
        else:
            hiddens, weights = self._run_steps(word_gates, active, context, state)
        logits = _aligned_linear(self.head, self.dropout(hiddens))  # (sum of lengths, V): one product for all steps
        return _unsort(logits, weights if return_attention else None, order, slots, (batch, steps), packed)


    def _fused_recurrence(self) -> bool:
        """Whether teacher forcing runs as one autograd node (:mod:`captioner.models.fused_lstm`): a one-layer LSTM
        outside autocast (mixed precision keeps the step-by-step loop, whose products autocast casts one by one)."""
        return (self.is_lstm and self.config.num_layers == 1
                and not torch.is_autocast_enabled(self.head.weight.device.type))

    def _run_fused(self, word_gates: torch.Tensor, active: list[int], context: AttentionContext,
                   state) -> tuple[torch.Tensor, torch.Tensor]:
        """The recurrence over packed steps in one autograd node: hidden states ``(N, H)``, weights ``(N, L)``."""
        cell, attention = self.rnn[0], self.attention
        gate = attention.gate
        weights = Weights(self._context_weight(), cell.weight_hh, cell.bias_hh, attention.query.weight,
                          attention.score.weight, gate.weight if gate is not None else None,
                          gate.bias if gate is not None else None)
        return attention_lstm(word_gates, active, context.keys, context.values, state[0][0], state[1][0], weights)

    def _run_steps(self, word_gates: torch.Tensor, active: list[int], context: AttentionContext,
                   state) -> tuple[torch.Tensor, torch.Tensor]:
        """The recurrence step by step under autograd (any cell and depth): hidden states ``(N, H)`` of the top
        layer and attention weights ``(N, L)``, packed step by step."""
        context_weight = self._context_weight()
        hiddens, alphas = [], []
        prefix, width = context, active[0]
        for n, gates in zip(active, word_gates.split(active)):
            if n != width:  # a slice of the previous slice: its gradient is the previous slice's size, not (B, ...)
                prefix, width = map_tensors(lambda s: s[:n], prefix), n
            h, state, alpha = self._recur(gates, context_weight, prefix, map_tensors(lambda s: s[:, :n], state))
            hiddens.append(h)  # rows past n have ended: later steps never need them
            alphas.append(alpha)
        return torch.cat(hiddens), torch.cat(alphas)


def _unsort(logits: torch.Tensor, weights: torch.Tensor | None, order: torch.Tensor, slots: torch.Tensor,
            shape: tuple[int, int], packed: bool):
    """:meth:`AttentionDecoder.forward`'s outputs from the step-by-step rows of the length-sorted batch.

    Args:
        logits: ``(S, V)`` for the S real positions, step by step; slot ``r * T + t`` is sorted row r, step t.
        weights: attention weights ``(S, L)``, or None.
        order: the sorted batch's rows in the original batch ``(B,)``.
        slots: each real position's slot ``(S,)``.
        shape: ``(B, T)``.
        packed: return ``(logits (S, V), positions (S,))`` instead of ``(B, T, V)`` logits.
    """
    batch, steps = shape
    unsort = order.argsort()
    if packed:
        out_logits = (logits, order.index_select(0, slots.div(steps, rounding_mode="floor")) * steps
                      + slots.remainder(steps))
    else:
        out = logits.new_zeros(batch * steps, logits.shape[1]).index_copy(0, slots, logits)
        out_logits = out.view(batch, steps, -1).index_select(0, unsort)  # (B, T, V)
    if weights is None:
        return out_logits
    weights = weights.new_zeros(batch * steps, weights.shape[1]).index_copy(0, slots, weights)
    return out_logits, weights.view(batch, steps, -1).index_select(0, unsort)  # (B, T, L)


def _aligned_linear(linear: nn.Linear, x: torch.Tensor, multiple: int = 64) -> torch.Tensor:
    """``linear(x)`` for many rows ``(N, in)`` → ``(N, out)``, with the output width padded to a multiple of 64 by
    zero rows on the CPU, where a vocabulary-sized width like 2431 makes the forward and backward products ~10%
    slower than an aligned one (the extra columns are cut off again; their gradients are zero)."""
    pad = -linear.out_features % multiple
    if not pad or x.device.type != "cpu":
        return linear(x)
    weight = torch.cat([linear.weight, linear.weight.new_zeros(pad, linear.in_features)])
    bias = torch.cat([linear.bias, linear.bias.new_zeros(pad)]) if linear.bias is not None else None
    return nn.functional.linear(x, weight, bias)[:, : linear.out_features]


def _lstm_cell(gates: torch.Tensor, h: torch.Tensor, c: torch.Tensor, cell: nn.LSTMCell):
    """``nn.LSTMCell`` given its input projection ``gates`` ``(B, 4H)`` = ``W_ih x + b_ih``: returns ``(h, c)``."""
    gates = gates + nn.functional.linear(h, cell.weight_hh, cell.bias_hh)
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _gru_cell(gates: torch.Tensor, h: torch.Tensor, cell: nn.GRUCell) -> torch.Tensor:
    """``nn.GRUCell`` given its input projection ``gates`` ``(B, 3H)`` = ``W_ih x + b_ih``."""
    r_in, z_in, n_in = gates.chunk(3, dim=1)
    r_h, z_h, n_h = nn.functional.linear(h, cell.weight_hh, cell.bias_hh).chunk(3, dim=1)
    r, z = torch.sigmoid(r_in + r_h), torch.sigmoid(z_in + z_h)
    return (1 - z) * torch.tanh(n_in + r * n_h) + z * h


def _rnn_cell(gates: torch.Tensor, h: torch.Tensor, cell: nn.RNNCell) -> torch.Tensor:
    """``nn.RNNCell`` (tanh) given its input projection ``gates`` ``(B, H)`` = ``W_ih x + b_ih``."""
    return torch.tanh(gates + nn.functional.linear(h, cell.weight_hh, cell.bias_hh))


def doubly_stochastic_penalty(weights: torch.Tensor) -> torch.Tensor:
    """Show, Attend and Tell's regulariser ``sum_i (1 - sum_t alpha_ti)^2``, averaged over the batch.

    Args:
        weights: attention weights ``(B, T, L)``, zeros after each caption's end.
    """
    return ((1.0 - weights.sum(dim=1)) ** 2).sum(dim=1).mean()

