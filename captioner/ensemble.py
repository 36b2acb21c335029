"""Decoder ensembles and checkpoint averaging over one encoder.

An ensemble model directory is an ordinary model directory whose ``config.json`` says ``"num_decoders": N``: its
``model.safetensors`` holds the N decoders as ``decoder.members.<i>.<parameter>`` (one file, one encoder, one
vocabulary). At every step :func:`captioner.generate.generate` gets the mean of the members' log-probabilities
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
from captioner.decoder import DecoderStep, build_decoder

# Fields that only describe the ensemble, not one decoder's architecture.
_NOT_ARCHITECTURE = ("num_decoders",)


class EnsembleError(ValueError):
    """Models that cannot be combined; the message names the field that differs."""


class DecoderEnsemble(nn.Module):
    """Several decoders of one architecture over the same image features.

    Args:
        config: the members' configuration (``num_decoders`` of them are built).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        member = dataclasses.replace(config, num_decoders=1)
        self.members = nn.ModuleList(build_decoder(member) for _ in range(config.num_decoders))

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
        logp = torch.stack([torch.log_softmax(o.logits.float(), dim=-1) for o in outs]).mean(dim=0)  # (B, V)
        return DecoderStep(logp, states, attention)

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


def combine(models: Sequence, names: Sequence[str], average: bool = False):
    """One model from several trained ones over the same encoder and vocabulary.

    Args:
        models: :class:`captioner.model.Captioner` instances (plain models or ensembles; an ensemble contributes
            each of its decoders).
        names: how to call each model in errors (its directory).
        average: average the decoders' weights into one decoder (checkpoint averaging; the models should be
            checkpoints of one run) instead of keeping them side by side as an ensemble.

    Returns:
        A new ``Captioner`` with ``num_decoders`` = the number of decoders given (1 with ``average``).

    Raises:
        EnsembleError: the models differ in encoder, vocabulary or decoder architecture, or hold fine-tuned
            encoders (which one encoder cannot stand for).
    """
    from captioner.model import Captioner

    for model, name in zip(models, names):
        if model.config.encoder_weights_in_file:
            raise EnsembleError(f"{name} has a fine-tuned encoder of its own: decoders can only be combined over "
                                "the frozen pretrained encoder")
    check_compatible([m.config for m in models], [list(m.vocab.itos) for m in models], names)
    states = [state for model in models for state in member_states(model)]
    count = 1 if average else len(states)
    config = dataclasses.replace(models[0].config, num_decoders=count)
    combined = Captioner(config, models[0].vocab)
    combined.image_mean = models[0].image_mean  # the members read the same encoder's features
    combined.tag_calibration = models[0].tag_calibration
    if average:
        combined.decoder.load_state_dict(average_states(states))
    elif count == 1:
        combined.decoder.load_state_dict(states[0])
    else:
        for member, state in zip(combined.decoder.members, states):
            member.load_state_dict(state)
    return combined.eval()


def ensemble_card(combined, names: Sequence[str], average: bool) -> str:
    """Model-card markdown for a combined model: what it was made of and how."""
    c = combined.config
    how = ("the element-wise mean of their decoders' weights (checkpoint averaging): one decoder"
           if average else f"{c.num_decoders} decoders side by side; captions search the mean of their "
           "per-step log-probabilities")
    lines = ["# captioner model (combined)", "",
             f"- Made by `captioner ensemble{' --average' if average else ''}` from {len(names)} model(s): {how}.",
             f"- Encoder `{c.encoder}`, {c.cell.upper()} decoders (`{c.inject}`), hidden {c.hidden_dim}, "
             f"vocabulary {c.vocab_size}.", "", "## Sources", ""]
    lines += [f"- `{name}`" for name in names]
    return "\n".join(lines) + "\n"
