"""Decoder ensembles and checkpoint averaging over one encoder.

An ensemble model directory is an ordinary model directory whose ``config.json`` says ``"num_decoders": N``: its
``model.safetensors`` holds the N decoders as ``decoder.members.<i>.<parameter>`` (one file, one encoder, one
vocabulary). At every step the search (:mod:`captioner.generation`) gets the mean of the members' log-probabilities
(a renormalised geometric mean of their distributions) and searches over that, so greedy, beam and sampling all work
unchanged. An ensemble of one decoder is the plain model, exactly.

Checkpoint averaging is the cheaper alternative: the mean of the weights of several checkpoints of one run (e.g.
its last K epochs, ``captioner train --keep-epochs K``) is a single decoder, no slower than one model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from captioner.config import ModelConfig
from captioner.models.base import DecoderStep

# Fields that only describe the ensemble, not one decoder's architecture.
_NOT_ARCHITECTURE = ("num_decoders",)


class EnsembleError(ValueError):
    """Models that cannot be combined; the message names the field that differs."""


class DecoderEnsemble(nn.Module):
    """Several decoders of one architecture over the same image features.

    Args:
        config: the ensemble's configuration (``num_decoders`` is the number of members).
        members: the decoders, built by :func:`captioner.models.factory.build_decoder` from the members' config.
    """

    def __init__(self, config: ModelConfig, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) != config.num_decoders:
            raise ValueError(f"an ensemble of num_decoders={config.num_decoders} got {len(members)} members")
        self.config = config
        self.members = nn.ModuleList(members)
        self.plain_vocab: int | None = None  # with rows added for guided decoding: the vocabulary's own size

    @property
    def head(self) -> nn.Linear:
        """The first member's output layer (its weight tells the device and dtype)."""
        return self.members[0].head

    def start(self, features: torch.Tensor) -> tuple[tuple, tuple]:
        """Each member's context and initial state, as tuples."""
        starts = [member.start(features) for member in self.members]
        return tuple(c for c, _ in starts), tuple(s for _, s in starts)

    def step(self, tokens: torch.Tensor, context: tuple, state: tuple) -> DecoderStep:
        """One step of every member; the "logits" are the mean of their log-probabilities ``(B, V)``, the attention
        the mean of their attention weights (None unless every member attends)."""
        outs = [m.step(tokens, c, s) for m, c, s in zip(self.members, context, state)]
        states = tuple(o.state for o in outs)
        alphas = [o.attention for o in outs]
        attention = torch.stack(alphas).mean(dim=0) if all(a is not None for a in alphas) else None
        if len(outs) == 1:
            return DecoderStep(outs[0].logits, states, attention)  # one member: its own logits, unchanged
        logp = torch.stack([self._log_probs(o.logits.float()) for o in outs]).mean(dim=0)  # (B, V)
        return DecoderStep(logp, states, attention)

    def _log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """A member's log-probabilities ``(B, V)``, normalised over the vocabulary's own words: rows added for
        guided decoding (past ``plain_vocab``) are scored against those words and do not change their values."""
        plain = self.plain_vocab
        if plain is None or plain == logits.shape[-1]:
            return torch.log_softmax(logits, dim=-1)
        return logits - torch.logsumexp(logits[:, :plain], dim=-1, keepdim=True)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor,
                image_index: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced mean log-probabilities ``(B, T, V)`` (one member: its logits)."""
        outs = [m(features, tokens, image_index=image_index) for m in self.members]
        if len(outs) == 1:
            return outs[0]
        return torch.stack([torch.log_softmax(o.float(), dim=-1) for o in outs]).mean(dim=0)


def architecture(config: ModelConfig) -> dict:
    """The fields two decoders must share to be ensembled or averaged."""
    fields = dataclasses.asdict(config)
    for name in _NOT_ARCHITECTURE:
        fields.pop(name)
    return fields


def check_compatible(configs: Sequence[ModelConfig], vocabs: Sequence[list[str]], names: Sequence[str]) -> None:
    """Refuse models that do not share one encoder, vocabulary and decoder architecture.

    Raises:
        EnsembleError: naming the first model and field that differ from the first model.
    """
    first, first_vocab = architecture(configs[0]), vocabs[0]
    for config, vocab, name in zip(configs[1:], vocabs[1:], names[1:]):
        if vocab != first_vocab:
            raise EnsembleError(f"{name} has another vocabulary than {names[0]} ({len(vocab)} vs {len(first_vocab)} "
                                "tokens or different words): ensembled models must be trained on the same data "
                                "with the same --min-count")
        other = architecture(config)
        for key, value in first.items():
            if other[key] != value:
                raise EnsembleError(f"{name} differs from {names[0]} in {key} ({other[key]!r} vs {value!r}): "
                                    "ensembled models need the same encoder and decoder architecture")


def member_states(model: nn.Module) -> list[dict[str, torch.Tensor]]:
    """The state dicts of a model's decoders (one for a plain model, N for an ensemble)."""
    if isinstance(model.decoder, DecoderEnsemble):
        return [m.state_dict() for m in model.decoder.members]
    return [model.decoder.state_dict()]


def average_states(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of several state dicts of one architecture (float32 arithmetic; integer buffers are
    taken from the first)."""
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = torch.stack([s[key].float() for s in states]).mean(dim=0).to(first.dtype)
        else:
            out[key] = first.clone()
    return out
