"""The caption decoder: word embedding + recurrent cell + linear head to the vocabulary.

With ``inject="every_step"`` (the default) the image vector is projected and concatenated to the word embedding
at every time step, so the recurrent cell's input-to-hidden weights W_ih have columns for the image and the image
reaches every gate at every step. With ``inject="init_only"`` the image only sets the initial hidden state (kept for
comparison: the image then reaches later steps only through the recurrent state). With ``inject="attention"`` the
input at every step is ``[embedding ; attention context]`` instead (:mod:`captioner.attention`).

Every decoder has the same interface, which :func:`captioner.generate.generate` relies on:

- ``start(features) -> (context, state)``: per-image context (batch dimension 0) and initial recurrent state
  (batch dimension 1; None means zeros), computed once per caption;
- ``step(tokens, context, state) -> DecoderStep(logits, state, attention)``: one token per row;
- ``forward(features, tokens, image_index=None) -> logits``: teacher forcing.

The search needs only ``config``, ``start`` and ``step`` (:class:`StepDecoder`), which is how the ONNX Runtime
backend (:class:`captioner.onnx_backend.OrtDecoder`) shares the search with these modules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, Union

import torch
from torch import nn

from captioner.config import ModelConfig

State = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]  # GRU/RNN: (L, B, H); LSTM: (h, c)

_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class DecoderStep(NamedTuple):
    """What one decoding step gives.

    Attributes:
        logits: next-token scores ``(B, V)`` (an ensemble gives mean log-probabilities instead).
        state: the new recurrent state.
        attention: attention weights over the image locations ``(B, L)``; None for pooled-vector decoders.
    """

    logits: torch.Tensor
    state: Any
    attention: torch.Tensor | None


class StepDecoder(Protocol):
    """What :func:`captioner.generate.generate` needs of a decoder: PyTorch decoders, ensembles and the ONNX Runtime
    adapter all have it.

    Attributes:
        config: the model configuration (the search reads ``config.attention``).
    """

    config: ModelConfig

    def start(self, features: torch.Tensor) -> tuple[Any, Any]:
        """Features ``(B, D)`` or ``(B, L, C)`` → ``(context, state)``: context tensors have rows on dimension 0,
        state tensors on dimension 1 (None: zeros)."""

    def step(self, tokens: torch.Tensor, context: Any, state: Any) -> DecoderStep:
        """Ids ``(B,)`` → :class:`DecoderStep` with logits ``(B, V)``."""


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask is drawn with ``torch.rand`` on the CPU, about 3 times faster there than the
    Bernoulli kernel ``nn.Dropout`` uses (same keep probability and ``1 / (1 - p)`` scaling); elsewhere, and in
    eval mode, exactly ``nn.Dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not 0 < self.p < 1 or x.device.type != "cpu":
            return super().forward(x)
        keep = (torch.rand_like(x) >= self.p).to(x.dtype).mul_(1 / (1 - self.p))  # (...) 0 or 1/(1-p)
        return x * keep


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], tree: Any) -> Any:
    """Apply ``fn`` to every tensor of a context or state (a tensor, None, or nested tuples of them)."""
    if tree is None:
        return None
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    items = [map_tensors(fn, item) for item in tree]
    return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)  # NamedTuple or tuple/list


def select_context(context: Any, index: torch.Tensor) -> Any:
    """Rows ``index`` ``(B',)`` of a per-image context (batch dimension 0)."""
    return map_tensors(lambda t: t.index_select(0, index), context)


def reorder_state(state: Any, index: torch.Tensor) -> Any:
    """Select batch rows of a recurrent state (beam search): ``index`` is ``(B',)`` into the batch dimension 1."""
    return map_tensors(lambda t: t.index_select(1, index), state)


def initial_state(linear: nn.Linear, features: torch.Tensor, config: ModelConfig) -> State:
    """The recurrent state an image sets: ``tanh(linear(features))`` cut into ``(layers, B, H)`` pieces.

    Args:
        linear: maps ``(B, D)`` to ``(B, S * layers * H)`` with S = 2 for an LSTM (h and c), else 1.
        features: image vectors ``(B, D)``.
        config: supplies the cell type, layers and hidden width.
    """
    flat = torch.tanh(linear(features))  # (B, S*L*H)
    parts = flat.view(features.shape[0], -1, config.num_layers, config.hidden_dim).permute(1, 2, 0, 3)  # (S, L, B, H)
    return (parts[0].contiguous(), parts[1].contiguous()) if config.cell == "lstm" else parts[0].contiguous()


def state_width(config: ModelConfig) -> int:
    """Output width of the linear layer that maps an image to the initial state (see :func:`initial_state`)."""
    return (2 if config.cell == "lstm" else 1) * config.num_layers * config.hidden_dim


class Decoder(nn.Module):
    """Generates caption-token logits from a pooled image vector.

    Args:
        config: model configuration (vocabulary size, widths, cell type, injection mode).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.every_step = config.inject == "every_step"
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=0)
        self.dropout = Dropout(config.dropout)
        rnn_input = config.embed_dim
        if self.every_step:
            self.image_proj = nn.Sequential(
                nn.Linear(config.encoder_dim, config.image_proj_dim), nn.ReLU(), Dropout(config.dropout)
            )
            rnn_input += config.image_proj_dim
        else:
            self.init_state = nn.Linear(config.encoder_dim, state_width(config))
        self.rnn = _CELLS[config.cell](
            rnn_input,
            config.hidden_dim,
            num_layers=config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(config.hidden_dim, config.vocab_size)

    def start(self, features: torch.Tensor) -> tuple[torch.Tensor | None, State | None]:
        """Prepare the per-image context once per caption.

        Args:
            features: image vectors ``(B, D)``.

        Returns:
            ``(image, state)``: the projected image ``(B, P)`` fed at every step (None for ``init_only``) and the
            initial recurrent state (None means zeros).
        """
        if self.every_step:
            return self.image_proj(features), None  # (B, P)
        return None, initial_state(self.init_state, features, self.config)

    def run(
        self, tokens: torch.Tensor, image: torch.Tensor | None, state: State | None
    ) -> tuple[torch.Tensor, State]:
        """Run the recurrent cell over a sequence of input tokens.

        Args:
            tokens: input token ids ``(B, T)``.
            image: projected image ``(B, P)`` from :meth:`start`, or None.
            state: recurrent state from :meth:`start` or a previous call.

        Returns:
            ``(logits, state)`` with logits ``(B, T, V)``.
        """
        x = self.dropout(self.embed(tokens))  # (B, T, E)
        if image is not None:
            x = torch.cat([x, image.unsqueeze(1).expand(-1, x.shape[1], -1)], dim=2)  # (B, T, E+P)
        out, state = _run_rnn(self.rnn, x, state)  # (B, T, H)
        return self.head(self.dropout(out)), state  # (B, T, V)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor,
                image_index: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits.

        Args:
            features: image vectors ``(N, D)``.
            tokens: input ids ``(B, T)``, starting with ``<start>``.
            image_index: ``(B,)`` row of ``features`` for each caption (None: ``N == B``, one image per caption).

        Returns:
            Logits ``(B, T, V)``; position t predicts token t+1.
        """
        image, state = self.start(features)
        if image_index is not None:
            image, state = select_context(image, image_index), reorder_state(state, image_index)
        logits, _ = self.run(tokens, image, state)
        return logits

    def step(self, tokens: torch.Tensor, image: torch.Tensor | None, state: State | None) -> DecoderStep:
        """One decoding step: ids ``(B,)`` → logits ``(B, V)`` and the new state."""
        logits, state = self.run(tokens.unsqueeze(1), image, state)
        return DecoderStep(logits.squeeze(1), state, None)


def build_decoder(config: ModelConfig) -> nn.Module:
    """The decoder a configuration describes: :class:`Decoder` for pooled vectors, or an attention decoder."""
    if config.attention:
        from captioner.attention import AttentionDecoder

        return AttentionDecoder(config)
    return Decoder(config)


def _run_rnn(rnn: nn.Module, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
    """``rnn(x, state)``, in fp32 under CPU autocast: oneDNN has no reduced-precision LSTM kernel on CPUs without
    bf16 instructions, so with ``--precision bf16`` on the CPU the embedding, projections and output layer run in
    bf16 and the recurrent layer in fp32."""
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return rnn(x, state)
    if state is not None:
        state = tuple(s.float() for s in state) if isinstance(state, tuple) else state.float()
    with torch.autocast("cpu", enabled=False):
        return rnn(x.float(), state)
