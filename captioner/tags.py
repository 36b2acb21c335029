"""Image tags from the encoder's own ImageNet head, and the words they add to a decoder's vocabulary.

The encoder was trained on ImageNet's 1,000 classes; its head still names them for any photo. Each class maps to a
short caption word (``imagenet_words.json``, built by ``scripts/build_tag_map.py``: "tabby" -> "cat", "espresso" ->
"coffee"). A photo's tags are the words whose classes' summed probability reaches ``tag_threshold`` (the 118 dog
breeds share their probability as "dog"), at most ``max_tags`` of them, most probable first.

A tag word the decoder never saw gets an id outside the vocabulary proper and, in a copy of the decoder, an embedding
row and an output row (:func:`extend_decoder`): the mean of the rows of the known tag words of the same coarse group
(animal, food, object, ...), so that guided decoding can write it; plain decoding never uses the copy.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import torch
from torch import nn

from captioner.vocab import Vocabulary


@dataclass(frozen=True)
class Tag:
    """A caption word for a photo and the summed probability of the ImageNet classes that map to it."""

    word: str
    prob: float


@lru_cache(maxsize=1)
def tag_table() -> list[dict]:
    """The 1,000 ImageNet classes in head order: ``{"index", "category", "word", "group", "rule"}`` each."""
    text = (resources.files("captioner") / "imagenet_words.json").read_text(encoding="utf-8")
    return json.loads(text)["classes"]


def imagenet_logits(model, features: torch.Tensor) -> torch.Tensor:
    """The encoder's ImageNet logits ``(B, 1000)`` for cached features (pooled ``(B, D)`` or maps ``(B, L, C)``)."""
    classifier = getattr(model.encoder, "classifier", None)
    if classifier is None:
        raise ValueError(f"the encoder {model.config.encoder!r} has no ImageNet head to tag images with; guided "
                         "decoding needs one (the EfficientNet-Lite encoders have it)")
    features = features.float().to(model.device)
    if features.dim() == 3:
        pooled = features.mean(dim=1)  # (B, C): what the head reads, the map's average
    else:
        pooled = features[:, : model.encoder.channels]  # avg (or the avg half of avgmax)
    with torch.inference_mode():
        return classifier(pooled)


CLASS_FLOOR = 0.01  # classes below this probability do not add to their word's


def suppressed_words(calibration: dict | None) -> set[str]:
    """Tag words a model's calibration found unreliable: named by the references of fewer than ``min_precision``
    of the training images they were tagged on (at least ``min_count`` of them)."""
    if not calibration:
        return set()
    low, count = calibration["min_precision"], calibration["min_count"]
    return {w for w, (hits, fired) in calibration["words"].items() if fired >= count and hits / fired < low}


def image_tags(model, features: torch.Tensor, threshold: float, max_tags: int = 2) -> list[list[Tag]]:
    """Each image's tags, most probable first.

    A word's probability is the sum over its classes of those at or above ``CLASS_FLOOR``: without the floor the
    long tail of a word with many classes adds up ("dog" has 118 breeds at ~0.001 each on any photo). Words the
    model's tag calibration (``model.tag_calibration``) found unreliable are left out.
    """
    probs = torch.softmax(imagenet_logits(model, features), dim=1).cpu()  # (B, 1000)
    probs = probs.masked_fill(probs < CLASS_FLOOR, 0.0)
    skip = suppressed_words(getattr(model, "tag_calibration", None))
    words = [entry["word"] for entry in tag_table()]
    names = sorted(set(words))
    column = {w: i for i, w in enumerate(names)}
    index = torch.tensor([column[w] for w in words])
    summed = torch.zeros(probs.shape[0], len(names)).index_add_(1, index, probs)  # (B, W): classes of a word summed
    if skip:
        summed[:, [column[w] for w in skip if w in column]] = 0.0
    out = []
    for row in summed:
        top = row.topk(max_tags)
        out.append([Tag(names[int(i)], float(p)) for p, i in zip(top.values, top.indices) if p >= threshold])
    return out


def word_groups() -> dict[str, str]:
    """Each tag word's coarse group (the first class that maps to it decides)."""
    groups: dict[str, str] = {}
    for entry in tag_table():
        groups.setdefault(entry["word"], entry["group"])
    return groups


def constraint_ids(vocab: Vocabulary, word: str) -> list[int]:
    """A tag word (or phrase) as token ids; words the vocabulary lacks are added as extra ids
    (:meth:`Vocabulary.add_extra`)."""
    return [vocab.add_extra(part) for part in word.split()]


NEW_ROW_INIT = "group"  # how added words' rows start: "group" or "all" (docs/ablation.md measured both)


def extend_decoder(decoder: nn.Module, vocab: Vocabulary, init: str | None = None) -> nn.Module:
    """A copy of ``decoder`` (or of each member of an ensemble) with an embedding and an output row for each of
    ``vocab.extra``: the mean of the rows of the known tag words of its group (``init="group"``; all known tag words
    when none shares it), or of all known tag words (``init="all"``)."""
    init = init or NEW_ROW_INIT
    extended = copy.deepcopy(decoder)
    groups = word_groups()
    known: dict[str, list[int]] = {}
    for word, group in groups.items():
        if word in vocab.stoi:
            known.setdefault(group, []).append(vocab.stoi[word])
    every = [i for ids in known.values() for i in ids]
    if init not in ("group", "all"):
        raise ValueError(f"init must be 'group' or 'all', got {init!r}")
    sources = [(known.get(groups.get(token, "object")) if init == "group" else None) or every for token in vocab.extra]
    members = getattr(extended, "members", None) or [extended]
    for member in members:
        _grow(member, sources)
        member.config = dataclasses.replace(member.config, vocab_size=len(vocab) + len(vocab.extra))
    extended.config = dataclasses.replace(extended.config, vocab_size=len(vocab) + len(vocab.extra))
    return extended


def _grow(decoder: nn.Module, sources: list[list[int]]) -> None:
    """Append one embedding row and one output row per entry of ``sources`` (the mean of those rows)."""
    with torch.no_grad():
        embed, head = decoder.embed.weight, decoder.head
        new_embed = torch.stack([embed[ids].mean(dim=0) for ids in sources])
        new_weight = torch.stack([head.weight[ids].mean(dim=0) for ids in sources])
        new_bias = torch.stack([head.bias[ids].mean() for ids in sources])
        decoder.embed = nn.Embedding.from_pretrained(torch.cat([embed, new_embed]), freeze=True, padding_idx=0)
        grown = nn.Linear(head.in_features, head.out_features + len(sources)).to(head.weight.device)
        grown.weight.copy_(torch.cat([head.weight, new_weight]))
        grown.bias.copy_(torch.cat([head.bias, new_bias]))
        decoder.head = grown
