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
from captioner.generation.constrained import tag_search
from captioner.generation.search import plain_search
from captioner.generation.tags import Tag, guide, tag_tokens, word_groups
from captioner.models.base import reorder_state, select_context
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
    sources = [tuple((known.get(groups.get(token, "object")) if init == "group" else None) or every)
               for token in vocab.extra]
    distinct = list(dict.fromkeys(sources))  # a few groups for hundreds of words: one mean per group, not per word
    rows = torch.tensor([distinct.index(ids) for ids in sources], dtype=torch.long)
    size = len(vocab) + len(vocab.extra)
    with torch.no_grad():
        for member in single_decoders(extended):
            embed, head = member.embed.weight, member.head
            append_rows(member, torch.stack([embed[list(ids)].mean(dim=0) for ids in distinct])[rows],
                        torch.stack([head.weight[list(ids)].mean(dim=0) for ids in distinct])[rows],
                        torch.stack([head.bias[list(ids)].mean() for ids in distinct])[rows])
            member.config = dataclasses.replace(member.config, vocab_size=size)
    extended.config = dataclasses.replace(extended.config, vocab_size=size)
    if hasattr(extended, "plain_vocab"):  # an ensemble: its members' words keep their probabilities
        extended.plain_vocab = len(vocab)
    return extended


def add_tag_words(vocab: Vocabulary) -> list[str]:
    """Give every tag word the vocabulary lacks an extra id, in one fixed order (so that an export made ahead of
    time has the same ids); returns ``vocab.extra``."""
    for word in tag_tokens():
        vocab.add_extra(word)
    return vocab.extra


def guided_decoder(decoder, vocab: Vocabulary):
    """``decoder`` able to write ``vocab``'s extra words: a PyTorch decoder extended with rows for them (kept, and
    rebuilt when words are added), or a backend's own decoder that has them already (``with_extra_rows``)."""
    with_rows = getattr(decoder, "with_extra_rows", None)
    if with_rows is not None:
        return with_rows(vocab)
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
    """Captions that contain each image's tags (one batched constrained search); each hypothesis carries its
    image's tags.

    With ``config.guided_fallback`` every image is captioned plainly first, and only the images whose best plain
    caption leaves a tag unnamed (:func:`captioner.generation.tags.names_tag`) are searched again with constraints;
    the others keep their plain hypotheses.

    Args:
        decoder: the model's decoder (the search extends a copy when tag words are new to it).
        features: image features ``(B, D)`` or ``(B, L, C)``.
        vocab: the model's vocabulary (tag words it lacks are added as extra ids).
        config: a beam (or greedy) search, with the model's defaults already filled in.
        tags: each image's tags.
    """
    add_tag_words(vocab)

    def constrain(images: list[int]) -> list[list[Hypothesis]]:
        index = torch.tensor(images, device=features.device)
        return _constrained_search(decoder, features.index_select(0, index), vocab, config, [tags[i] for i in images])

    return guide(tags, vocab, config.guided_fallback, lambda: plain_search(decoder, features, vocab, config),
                 constrain)


def _constrained_search(decoder, features: torch.Tensor, vocab: Vocabulary, config: GenerationConfig,
                        tags: list[list[Tag]]) -> list[list[Hypothesis]]:
    """The constrained search of :func:`guided_search` for these images ``(B, ...)`` and their tags."""
    results = tag_search(lambda words: guided_decoder(decoder, words), features, vocab, config, tags)
    if config.return_attention:  # the extended copy the search ran (kept by guided_decoder)
        results = read_attention(guided_decoder(decoder, vocab), features, vocab, results)
    return results


def read_attention(decoder, features: torch.Tensor, vocab: Vocabulary,
                   results: list[list[Hypothesis]]) -> list[list[Hypothesis]]:
    """Each hypothesis with the attention its words were written with, read again by teaching the decoder its own
    caption (the constrained search keeps no weights; a step's weights depend only on the image and the words before
    it, so they are the search's).

    Args:
        decoder: the decoder the search ran (with the rows of any added tag word).
        features: the images' feature maps ``(B, L, C)``.
        results: each image's hypotheses.

    Returns:
        The hypotheses with ``attention`` ``(len(tokens), L)``.
    """
    flat = [(i, h) for i, hyps in enumerate(results) for h in hyps]
    longest = max((len(h.tokens) for _, h in flat), default=0)
    if not flat or longest == 0:
        empty = features.new_zeros((0, features.shape[1]))
        return [[dataclasses.replace(h, attention=empty) for h in hyps] for hyps in results]
    rows = torch.tensor([i for i, _ in flat], device=features.device)
    inputs = torch.full((len(flat), longest), vocab.pad_id, dtype=torch.long, device=features.device)
    for r, (_, h) in enumerate(flat):
        inputs[r, 0] = vocab.start_id
        inputs[r, 1 : len(h.tokens)] = torch.tensor(h.tokens[:-1], dtype=torch.long)
    context, state = decoder.start(features)
    context = select_context(context, rows)
    state = reorder_state(state, rows) if state is not None else None
    weights = []
    for t in range(longest):
        _, state, alpha = decoder.step(inputs[:, t], context, state)
        weights.append(alpha.float())
    weights = torch.stack(weights, dim=1)  # (N, T, L)
    read = [dataclasses.replace(h, attention=weights[r, : len(h.tokens)]) for r, (_, h) in enumerate(flat)]
    out, start = [], 0
    for hyps in results:
        out.append(read[start : start + len(hyps)])
        start += len(hyps)
    return out
