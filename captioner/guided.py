"""Tag-guided captioning: the encoder's ImageNet tags (:mod:`captioner.tags`) become constraints of a constrained
beam search (:mod:`captioner.constrained`), so that the caption names what the encoder recognises even where the
decoder's training captions never did."""

from __future__ import annotations

import torch

from captioner.constrained import constrained_search
from captioner.generate import GenerationConfig, Hypothesis, with_model_defaults
from captioner.tags import Tag, constraint_ids, extend_decoder, image_tags


def tags_for(model, features: torch.Tensor, config: GenerationConfig) -> list[list[Tag]]:
    """Each image's tags: ``config.tags`` for every image when given, else the encoder's confident ones."""
    if config.tags:
        return [[Tag(word, 1.0) for word in config.tags] for _ in range(features.shape[0])]
    return image_tags(model, features, config.tag_threshold, config.max_tags)


def guided_decoder(model):
    """The model's decoder extended with rows for its vocabulary's extra words (rebuilt when words are added)."""
    cached = getattr(model, "_guided", None)
    if cached is None or cached[0] != len(model.vocab.extra):
        decoder = extend_decoder(model.decoder, model.vocab) if model.vocab.extra else model.decoder
        cached = (len(model.vocab.extra), decoder.eval())
        model._guided = cached
    return cached[1]


@torch.inference_mode()
def guided_captions(model, features: torch.Tensor, config: GenerationConfig) -> list[list[Hypothesis]]:
    """Captions that contain each image's tags (see :func:`tags_for`), image by image.

    Args:
        model: a :class:`captioner.model.Captioner`.
        features: image features ``(B, D)`` or ``(B, L, C)``.
        config: a beam (or greedy) search with ``guided`` or ``tags`` set.
    """
    tags = tags_for(model, features, config)
    constraints = [[constraint_ids(model.vocab, tag.word) for tag in image] for image in tags]
    decoder = guided_decoder(model)
    search = config if config.method == "beam" else GenerationConfig(
        method="beam", beam_size=1, max_length=config.max_length, no_repeat_ngram=config.no_repeat_ngram)
    search = with_model_defaults(search, decoder)
    features = features.to(model.device)
    return [constrained_search(decoder, features[i : i + 1], model.vocab, search, constraints[i],
                               plain_vocab=len(model.vocab)) for i in range(features.shape[0])]
