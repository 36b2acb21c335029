"""The decoder contract every decoder, ensemble and runtime backend shares, and the helpers its parts use.

Every decoder has the same interface, which the searches of :mod:`captioner.generation` rely on:

- ``start(features) -> (context, state)``: per-image context (batch dimension 0) and initial recurrent state
  (batch dimension 1; None means zeros), computed once per caption;
- ``step(tokens, context, state) -> DecoderStep(logits, state, attention)``: one token per row;
- ``forward(features, tokens, image_index=None) -> logits``: teacher forcing.

The search needs only ``config``, ``start`` and ``step`` (:class:`StepDecoder`), which is how the ONNX Runtime
backend (:class:`captioner.export.runtime.OrtDecoder`) shares the search with the PyTorch modules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, Union

import torch
from torch import nn

from captioner.config import ModelConfig

State = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]  # GRU/RNN: (L, B, H); LSTM: (h, c)


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
    """What :func:`captioner.generation.generate` needs of a decoder: PyTorch decoders, ensembles and the ONNX Runtime
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
