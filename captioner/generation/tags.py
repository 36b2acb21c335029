"""Image tags from the encoder's own ImageNet head, and the words they add to a decoder's vocabulary.

The encoder was trained on ImageNet's 1,000 classes; its head still names them for any photo. Each class maps to a
short caption word (``imagenet_words.json``, built by ``scripts/build_tag_map.py``: "tabby" -> "cat", "espresso" ->
"coffee"). A photo's tags are the words whose classes' summed probability reaches ``tag_threshold`` (the 118 dog
breeds share their probability as "dog"), at most ``max_tags`` of them, most probable first.

A tag word the decoder never saw gets an id outside the vocabulary proper and, in a copy of the decoder, an embedding
row and an output row (:func:`captioner.generation.guided.extend_decoder`): the mean of the rows of the known tag
words of the same coarse group (animal, food, object, ...), so that guided decoding can write it; plain decoding never
uses the copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import torch

from captioner.vocab import Vocabulary


@dataclass(frozen=True)
class Tag:
    """A caption word for a photo and the summed probability of the ImageNet classes that map to it."""

    word: str
    prob: float


@lru_cache(maxsize=1)
def tag_table() -> list[dict]:
    """The 1,000 ImageNet classes in head order: ``{"index", "category", "word", "group", "rule"}`` each."""
    text = (resources.files("captioner.generation") / "imagenet_words.json").read_text(encoding="utf-8")
    return json.loads(text)["classes"]


CLASS_FLOOR = 0.01  # classes below this probability do not add to their word's


def suppressed_words(calibration: dict | None) -> set[str]:
    """Tag words a model's calibration found unreliable: named by the references of fewer than ``min_precision``
    of the training images they were tagged on (at least ``min_count`` of them)."""
    if not calibration:
        return set()
    low, count = calibration["min_precision"], calibration["min_count"]
    return {w for w, (hits, fired) in calibration["words"].items() if fired >= count and hits / fired < low}


def tags_from_logits(logits: torch.Tensor, threshold: float, max_tags: int = 2,
                     calibration: dict | None = None) -> list[list[Tag]]:
    """Each image's tags, most probable first.

    A word's probability is the sum over its classes of those at or above ``CLASS_FLOOR``: without the floor the
    long tail of a word with many classes adds up ("dog" has 118 breeds at ~0.001 each on any photo). Words the
    model's tag calibration found unreliable are left out.

    Args:
        logits: the encoder's ImageNet logits ``(B, 1000)``.
        threshold: the summed probability a word needs.
        max_tags: at most this many tags per image.
        calibration: the model's ``tag_calibration.json`` (None: every word may be used).
    """
    probs = torch.softmax(logits.float(), dim=1).cpu()  # (B, 1000)
    probs = probs.masked_fill(probs < CLASS_FLOOR, 0.0)
    skip = suppressed_words(calibration)
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
