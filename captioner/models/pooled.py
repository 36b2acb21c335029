"""The pooled-vector decoder: word embedding + recurrent cell + linear head to the vocabulary.

With ``inject="every_step"`` (the default) the image vector is projected and concatenated to the word embedding
at every time step, so the recurrent cell's input-to-hidden weights W_ih have columns for the image and the image
reaches every gate at every step. With ``inject="init_only"`` the image only sets the initial hidden state (kept for
comparison: the image then reaches later steps only through the recurrent state). ``inject="attention"`` is
:mod:`captioner.models.attention`. The interface is the contract of :mod:`captioner.models.base`.
"""

from __future__ import annotations

import torch
from torch import nn

from captioner.config import ModelConfig
from captioner.models.base import DecoderStep, Dropout, State, initial_state, reorder_state, select_context, state_width

_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


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
