"""Combining trained models into one: an ensemble of their decoders, or checkpoint averaging.

The ensemble module itself is :class:`captioner.models.ensemble.DecoderEnsemble`; this module takes trained
:class:`captioner.pipeline.Captioner` models, checks that they can be combined and writes the combined model's card.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from captioner.models.ensemble import EnsembleError, average_states, check_compatible, member_states
from captioner.pipeline import Captioner


def combine(models: Sequence, names: Sequence[str], average: bool = False):
    """One model from several trained ones over the same encoder and vocabulary.

    Args:
        models: :class:`captioner.pipeline.Captioner` instances (plain models or ensembles; an ensemble contributes
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
    combined.confidence_model = None  # fit for one decoder's log-probabilities: calibrate the combined model anew
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
