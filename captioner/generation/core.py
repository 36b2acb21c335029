"""The one entry point of caption search, for every backend (PyTorch and ONNX Runtime alike) and every caller
(CLI, evaluation, validation during training, self-critical training, the server)."""

from __future__ import annotations

import torch

from captioner.generation.config import GenerationConfig, Hypothesis, with_model_defaults
from captioner.generation.guided import guided_search
from captioner.generation.search import plain_search
from captioner.generation.tags import Tag, search_tags
from captioner.models.base import StepDecoder
from captioner.vocab import Vocabulary


@torch.inference_mode()
def generate(decoder: StepDecoder, features: torch.Tensor, vocab: Vocabulary, config: GenerationConfig | None = None,
             tags: list[list[Tag]] | None = None) -> list[list[Hypothesis]]:
    """Caption a batch of images.

    Args:
        decoder: the trained decoder or ensemble (put in eval mode by the caller), or an ONNX Runtime adapter.
        features: image vectors ``(B, D)``, or feature maps ``(B, L, D)`` for an attention decoder.
        vocab: the vocabulary (for the special-token ids; guided decoding adds tag words it lacks as extra ids).
        config: search settings (default: beam search, beam 3).
        tags: each image's tags for guided decoding (``config.guided``); the backend computes them from its
            encoder's ImageNet head. ``config.tags`` gives every image the same tags instead.

    Returns:
        For each image, its hypotheses best first (``n_best`` of them; samples in the order drawn).

    Raises:
        ValueError: attention asked of a model without attention, or guided decoding without tags.
    """
    config = config or GenerationConfig()
    if features.shape[0] == 0:
        return []
    if config.return_attention and not decoder.config.attention:
        raise ValueError("return_attention needs a model that attends (inject 'attention'); this model reads one "
                         f"pooled image vector (inject {decoder.config.inject!r})")
    config = with_model_defaults(config, decoder)
    if config.guided or config.tags:
        return guided_search(decoder, features, vocab, config, search_tags(config, tags, features.shape[0]))
    return plain_search(decoder, features, vocab, config)
