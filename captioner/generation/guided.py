"""Tag-guided captioning: each image's tags (:mod:`captioner.generation.tags`) become constraints of a constrained
beam search (:mod:`captioner.generation.constrained`), so that the caption names what the encoder recognises even
where the decoder's training captions never did.

A tag word the decoder never saw gets an id outside the vocabulary proper (:meth:`Vocabulary.add_extra`) and, in an
inference copy of the decoder (:func:`extend_decoder`), an embedding row and an output row: the mean of the rows of
the known tag words of the same coarse group (animal, food, object, ...), so that guided decoding can write it;
plain decoding never uses the copy.
"""

from __future__ import annotations

import copy
import dataclasses
import weakref

import torch
from torch import nn

from captioner.generation.config import GenerationConfig, Hypothesis
from captioner.generation.constrained import constrained_search
from captioner.generation.tags import Tag, constraint_ids, word_groups
from captioner.models.vocab_rows import append_rows, single_decoders
from captioner.vocab import Vocabulary

NEW_ROW_INIT = "group"  # how added words' rows start: "group" or "all" (docs/ablation.md measured both)

_EXTENDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # decoder -> (extra words, extended copy)


def extend_decoder(decoder: nn.Module, vocab: Vocabulary, init: str | None = None) -> nn.Module:
    """A copy of ``decoder`` (or of each member of an ensemble) with an embedding and an output row for each of
    ``vocab.extra``: the mean of the rows of the known tag words of its group (``init="group"``; all known tag words
    when none shares it), or of all known tag words (``init="all"``)."""
    init = init or NEW_ROW_INIT
    if init not in ("group", "all"):
        raise ValueError(f"init must be 'group' or 'all', got {init!r}")
    extended = copy.deepcopy(decoder)
    groups = word_groups()
    known: dict[str, list[int]] = {}
    for word, group in groups.items():
        if word in vocab.stoi:
            known.setdefault(group, []).append(vocab.stoi[word])
    every = [i for ids in known.values() for i in ids]
    sources = [(known.get(groups.get(token, "object")) if init == "group" else None) or every for token in vocab.extra]
    size = len(vocab) + len(vocab.extra)
    with torch.no_grad():
        for member in single_decoders(extended):
            embed, head = member.embed.weight, member.head
            append_rows(member, torch.stack([embed[ids].mean(dim=0) for ids in sources]),
                        torch.stack([head.weight[ids].mean(dim=0) for ids in sources]),
                        torch.stack([head.bias[ids].mean() for ids in sources]))
            member.config = dataclasses.replace(member.config, vocab_size=size)
    extended.config = dataclasses.replace(extended.config, vocab_size=size)
    return extended


def guided_decoder(decoder: nn.Module, vocab: Vocabulary) -> nn.Module:
    """``decoder`` extended with rows for ``vocab``'s extra words (kept, and rebuilt when words are added)."""
    if not vocab.extra:
        return decoder
    if not isinstance(decoder, nn.Module):
        raise ValueError("guided decoding needs rows for the tag words this model never learned "
                         f"({', '.join(vocab.extra[:3])}), which this backend cannot add; use the PyTorch backend")
    cached = _EXTENDED.get(decoder)
    if cached is None or cached[0] != len(vocab.extra):
        cached = (len(vocab.extra), extend_decoder(decoder, vocab).eval())
        _EXTENDED[decoder] = cached
    return cached[1]


@torch.inference_mode()
def guided_search(decoder, features: torch.Tensor, vocab: Vocabulary, config: GenerationConfig,
                  tags: list[list[Tag]]) -> list[list[Hypothesis]]:
    """Captions that contain each image's tags, image by image; each hypothesis carries its image's tags.

    Args:
        decoder: the model's decoder (the search extends a copy when tag words are new to it).
        features: image features ``(B, D)`` or ``(B, L, C)``.
        vocab: the model's vocabulary (tag words it lacks are added as extra ids).
        config: a beam (or greedy) search, with the model's defaults already filled in.
        tags: each image's tags.
    """
    constraints = [[constraint_ids(vocab, tag.word) for tag in image] for image in tags]
    extended = guided_decoder(decoder, vocab)
    if config.method != "beam":  # greedy: one beam, as greedy search ranks (no length penalty, one caption)
        config = dataclasses.replace(config, beam_size=1, length_penalty=0.0, n_best=1)
    results = []
    for i in range(features.shape[0]):
        hyps = constrained_search(extended, features[i : i + 1], vocab, config, constraints[i],
                                  plain_vocab=len(vocab))
        results.append([dataclasses.replace(h, tags=list(tags[i])) for h in hyps])
    return results
