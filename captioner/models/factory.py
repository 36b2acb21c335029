"""The one factory: every decoder a configuration describes, and the configuration a vocabulary and an encoder
complete.

:func:`build_decoder` gives the pooled-vector :class:`~captioner.models.pooled.Decoder`, the
:class:`~captioner.models.attention.AttentionDecoder`, or for ``num_decoders > 1`` a
:class:`~captioner.models.ensemble.DecoderEnsemble` of members it built itself.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from captioner.config import ModelConfig
from captioner.models import encoders
from captioner.models.attention import AttentionDecoder
from captioner.models.ensemble import DecoderEnsemble
from captioner.models.pooled import Decoder


def build_decoder(config: ModelConfig) -> nn.Module:
    """The decoder ``config`` describes: one decoder, or an ensemble of ``config.num_decoders`` of them (each built
    from the same configuration with ``num_decoders=1``)."""
    if config.num_decoders > 1:
        member = dataclasses.replace(config, num_decoders=1)
        return DecoderEnsemble(config, [_single(member) for _ in range(config.num_decoders)])
    return _single(config)


def _single(config: ModelConfig) -> nn.Module:
    return AttentionDecoder(config) if config.attention else Decoder(config)


def complete_config(config: ModelConfig, vocab_size: int, image_size: int = 0) -> ModelConfig:
    """Fill in what the vocabulary and the encoder decide: sizes, preprocessing and, for attention, the feature
    map's locations.

    Args:
        config: the architecture.
        vocab_size: the vocabulary's size.
        image_size: 0 keeps the encoder's own preprocessing; N resizes the shorter side to N and center-crops N x N
            (the whole of a square image, where the encoder's own crop cuts its borders off).
    """
    spec = encoders.get_spec(config.encoder)
    preprocess = dataclasses.replace(spec.preprocess, resize=image_size, crop=image_size) if image_size else (
        spec.preprocess)
    if config.attention:
        return dataclasses.replace(config, vocab_size=vocab_size, preprocess=preprocess, encoder_dim=spec.out_dim,
                                   feature_locations=encoders.feature_locations(spec.name, preprocess.crop))
    return dataclasses.replace(config, vocab_size=vocab_size, preprocess=preprocess,
                               encoder_dim=encoders.pooled_dim(spec.out_dim, config.pooling))
