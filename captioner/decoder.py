"""The caption decoder: word embedding + recurrent cell + linear head to the vocabulary.

With ``inject="every_step"`` (the default) the image vector is projected and concatenated to the word embedding
at every time step, so the recurrent cell's input-to-hidden weights W_ih have columns for the image and the image
reaches every gate at every step. With ``inject="init_only"`` the image only sets the initial hidden state (kept for
comparison: the image then reaches later steps only through the recurrent state).
"""

from __future__ import annotations

from typing import Union

import torch
from torch import nn

from captioner.config import ModelConfig

State = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]  # GRU/RNN: (L, B, H); LSTM: (h, c)

_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class Decoder(nn.Module):
    """Generates caption-token logits from an image vector.

    Args:
        config: model configuration (vocabulary size, widths, cell type, injection mode).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.every_step = config.inject == "every_step"
        self.is_lstm = config.cell == "lstm"
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=0)
        self.dropout = nn.Dropout(config.dropout)
        rnn_input = config.embed_dim
        if self.every_step:
            self.image_proj = nn.Sequential(
                nn.Linear(config.encoder_dim, config.image_proj_dim), nn.ReLU(), nn.Dropout(config.dropout)
            )
            rnn_input += config.image_proj_dim
        else:
            n_states = 2 if self.is_lstm else 1
            self.init_state = nn.Linear(config.encoder_dim, n_states * config.num_layers * config.hidden_dim)
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
        cfg = self.config
        flat = torch.tanh(self.init_state(features))  # (B, S*L*H)
        parts = flat.view(features.shape[0], -1, cfg.num_layers, cfg.hidden_dim).permute(1, 2, 0, 3)  # (S, L, B, H)
        state = (parts[0].contiguous(), parts[1].contiguous()) if self.is_lstm else parts[0].contiguous()
        return None, state

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
        out, state = self.rnn(x, state)  # (B, T, H)
        return self.head(self.dropout(out)), state  # (B, T, V)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits.

        Args:
            features: image vectors ``(B, D)``.
            tokens: input ids ``(B, T)``, starting with ``<start>``.

        Returns:
            Logits ``(B, T, V)``; position t predicts token t+1.
        """
        image, state = self.start(features)
        logits, _ = self.run(tokens, image, state)
        return logits

    def step(
        self, tokens: torch.Tensor, image: torch.Tensor | None, state: State | None
    ) -> tuple[torch.Tensor, State]:
        """One decoding step: ids ``(B,)`` → logits ``(B, V)`` and the new state."""
        logits, state = self.run(tokens.unsqueeze(1), image, state)
        return logits.squeeze(1), state


def reorder_state(state: State, index: torch.Tensor) -> State:
    """Select batch rows of a recurrent state (beam search): ``index`` is ``(B',)`` into the batch dimension."""
    if isinstance(state, tuple):
        return tuple(s.index_select(1, index) for s in state)  # type: ignore[return-value]
    return state.index_select(1, index)
