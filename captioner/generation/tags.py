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

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from captioner.arrays import as_array
from captioner.generation.constraint_states import Constraint
from captioner.vocab import Vocabulary


@dataclass(frozen=True)
class Tag:
    """A caption word for a photo, the summed probability of the ImageNet classes that map to it, and the phrase a
    caption carries it in.

    Attributes:
        word: the head noun ("cat", "coffee"): what a reference must name for the tag to be right.
        prob: the summed probability of its classes.
        phrase: the words a caption writes ("a cat", "a cup of coffee", "broccoli"); the word itself when empty.
        kind: ``count`` (the phrase carries its article), ``mass`` or ``plural`` (no article: none may precede it),
            or ``given`` (a word the caller asked for, placed as the decoder likes).
    """

    word: str
    prob: float
    phrase: str = ""
    kind: str = "given"

    @property
    def text(self) -> str:
        """What the caption must contain."""
        return self.phrase or self.word


@lru_cache(maxsize=1)
def tag_table() -> list[dict]:
    """The 1,000 ImageNet classes in head order: ``{"index", "category", "word", "phrase", "kind", "group",
    "synonyms", "rule"}`` each; dropped classes (parts, textures, misfires) have an empty word and phrase."""
    text = (resources.files("captioner.generation") / "imagenet_words.json").read_text(encoding="utf-8")
    return json.loads(text)["classes"]


@lru_cache(maxsize=1)
def tag_words() -> dict[str, dict]:
    """Each tag word's entry (its first class's): phrase, kind, group, synonyms."""
    words: dict[str, dict] = {}
    for entry in tag_table():
        if entry["word"]:
            words.setdefault(entry["word"], entry)
    return words


CLASS_FLOOR = 0.01  # classes below this probability do not add to their word's


def suppressed_words(calibration: dict | None) -> set[str]:
    """Tag words a model's calibration found unreliable: named by the references of fewer than ``min_precision``
    of the training images they were tagged on (at least ``min_count`` of them)."""
    if not calibration:
        return set()
    low, count = calibration["min_precision"], calibration["min_count"]
    return {w for w, (hits, fired) in calibration["words"].items() if fired >= count and hits / fired < low}


def tags_from_logits(logits, threshold: float, max_tags: int = 2, calibration: dict | None = None) -> list[list[Tag]]:
    """Each image's tags, most probable first.

    A word's probability is the sum over its classes of those at or above ``CLASS_FLOOR``: without the floor the
    long tail of a word with many classes adds up ("dog" has 118 breeds at ~0.001 each on any photo). Words the
    model's tag calibration found unreliable are left out.

    Args:
        logits: the encoder's ImageNet logits ``(B, 1000)``: a numpy array or a CPU tensor.
        threshold: the summed probability a word needs.
        max_tags: at most this many tags per image.
        calibration: the model's ``tag_calibration.json`` (None: every word may be used).
    """
    probs = softmax(as_array(logits, np.float32))  # (B, 1000)
    probs[probs < CLASS_FLOOR] = 0.0
    names, column, index = _word_columns()
    summed = np.zeros((probs.shape[0], len(names)), dtype=np.float32)  # (B, W): classes of a word summed
    np.add.at(summed, (slice(None), index), probs)
    summed[:, [column[w] for w in suppressed_words(calibration) | {""} if w in column]] = 0.0
    entries, out, count = tag_words(), [], min(max_tags, len(names))
    for row in summed:
        top = np.argsort(-row, kind="stable")[:count]
        out.append([Tag(names[i], float(row[i]), entries[names[i]]["phrase"], entries[names[i]]["kind"])
                    for i in top.tolist() if row[i] >= threshold and names[i]])
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis of float32 logits ``(B, C)``."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@lru_cache(maxsize=1)
def _word_columns() -> tuple[list[str], dict[str, int], np.ndarray]:
    """The tag words sorted (``""``, the dropped classes, first), each word's column, and each class's column
    ``(1000,)``."""
    words = [entry["word"] for entry in tag_table()]
    names = sorted(set(words))
    column = {w: i for i, w in enumerate(names)}
    return names, column, np.array([column[w] for w in words])


def tag_tokens() -> list[str]:
    """Every word a tag phrase can contain, sorted: the words guided decoding may need rows for."""
    return sorted({part for entry in tag_words().values() for part in (entry["phrase"] + " " + entry["word"]).split()})


def word_groups() -> dict[str, str]:
    """Each tag word's coarse group (the first class that maps to it decides); the words of multi-word phrases
    ("cup" of "a cup of coffee") take their phrase's group."""
    groups: dict[str, str] = {}
    for word, entry in tag_words().items():
        groups.setdefault(word, entry["group"])
        for part in entry["phrase"].split():
            groups.setdefault(part, entry["group"])
    return groups


def constraint_ids(vocab: Vocabulary, word: str) -> list[int]:
    """A tag word (or phrase) as token ids; words the vocabulary lacks are added as extra ids
    (:meth:`Vocabulary.add_extra`)."""
    return [vocab.add_extra(part) for part in word.split()]


def article(word: str) -> str:
    """The indefinite article English gives ``word`` by its first sound ("an orange", "a unicycle", "an hour")."""
    if word.startswith(("hour", "honest", "heir", "honor", "honour")):
        return "an"
    sounds_like_you = ("uni", "use", "usu", "ute", "eu", "ewe", "one", "once", "ukulele", "urin")
    return "an" if word[:1] in tuple("aeiou") and not word.startswith(sounds_like_you) else "a"


def plural_forms(word: str) -> set[str]:
    """``word`` and the plural a reference may use instead ("bus" -> "buses", "bench" -> "benches")."""
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return {word, word + "es"}
    if word.endswith("y") and word[-2:-1] not in tuple("aeiou"):
        return {word, word[:-1] + "ies"}
    return {word, word + "s"}


def tag_named(word: str, tokens: set[str] | list[str]) -> bool:
    """True when text of these ``tokens`` names the tag ``word``: the word or one of its synonyms (any word of a
    multi-word one, e.g. "hot dog" -> "hot" and "dog"), singular or plural."""
    tokens = set(tokens)
    entry = tag_words().get(word, {})
    for name in [word, *entry.get("synonyms", [])]:
        parts = name.split()
        if all(plural_forms(part) & tokens for part in parts):
            return True
    return False


def names_tag(tag: Tag, words: list[str]) -> bool:
    """True when a caption of these ``words`` already says what ``tag`` asks for: a tag the caller gave, its exact
    words in a row; an image tag, its word (:func:`tag_named`: singular or plural, or a synonym)."""
    if tag.kind == "given":
        want = tag.text.split()
        return any(words[i : i + len(want)] == want for i in range(len(words) - len(want) + 1))
    return tag_named(tag.word, words)


def tag_constraint(vocab: Vocabulary, tag: Tag) -> Constraint:
    """The constraint a tag puts on the caption.

    - A word the caller gave: the word, placed freely.
    - A mass noun or a plural ("broccoli", "jeans"): the word, never right after "a" or "an".
    - A countable word the decoder knows whose phrase is just the word and its article ("dog"): the word, which the
      decoder may qualify ("a black dog", "two dogs" are its to write), never after the article it does not take
      ("a elephant").
    - A countable word the decoder never learned ("zebra"), or one whose phrase says more than the word ("a cup of
      coffee", not "a coffee"): the whole phrase with its article, never right after another article.
    """
    if tag.kind == "given":
        return Constraint(tuple(constraint_ids(vocab, tag.text)))
    word_ids = tuple(constraint_ids(vocab, tag.word))
    if tag.kind in ("mass", "plural"):
        return Constraint(word_ids, forbid_before=_ids(vocab, ("a", "an")))
    bare = tag.text in (tag.word, f"a {tag.word}", f"an {tag.word}")  # not "a cup of coffee": that phrase stays
    if all(i < len(vocab) for i in word_ids) and bare:
        wrong = "a" if article(tag.word.split()[0]) == "an" else "an"
        return Constraint(word_ids, forbid_before=_ids(vocab, (wrong,)))
    tokens = tuple(constraint_ids(vocab, tag.text))
    opens = word_groups().get(tag.word) in SUBJECT_FIRST
    return Constraint(tokens, forbid_before=_ids(vocab, ARTICLES), at_start=opens)


def _ids(vocab: Vocabulary, words: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(vocab.stoi[w] for w in words if w in vocab.stoi)


def constrained_config(config):
    """The search a constrained search runs for ``config``: its own beam, or for greedy decoding one beam ranked as
    greedy search ranks (no length penalty, one caption)."""
    if config.method == "beam":
        return config
    return dataclasses.replace(config, beam_size=1, length_penalty=0.0, n_best=1)


def missing_tags(results: list[list], tags: list[list[Tag]], vocab: Vocabulary) -> list[int]:
    """The images whose best caption leaves one of their tags unnamed (:func:`names_tag`): those guided decoding
    as a fallback searches again with constraints.

    Args:
        results: each image's hypotheses, best first (anything with ``tokens``).
        tags: each image's tags.
        vocab: the vocabulary the tokens are ids of.
    """
    return [i for i, (hyps, image) in enumerate(zip(results, tags))
            if not all(names_tag(tag, vocab.decode(hyps[0].tokens).split()) for tag in image)]


def search_tags(config, tags: list[list[Tag]] | None, count: int) -> list[list[Tag]]:
    """The tags a guided search of ``count`` images constrains: ``config.tags`` for every image when given, else
    each image's own ``tags``.

    Raises:
        ValueError: neither is there for every image.
    """
    if config.tags:
        return [[Tag(word, 1.0) for word in config.tags] for _ in range(count)]
    if tags is None or len(tags) != count:
        raise ValueError("guided decoding needs each image's tags: caption through a model "
                         "(Captioner.caption_features) or give GenerationConfig(tags=...)")
    return tags


def guide(tags: list[list[Tag]], vocab: Vocabulary, fallback: bool, plain: Callable[[], list],
          constrain: Callable[[list[int]], list]) -> list[list]:
    """Guided decoding's answers, whatever the backend: with ``fallback`` every image's ``plain()`` hypotheses,
    except those whose best caption misses a tag (:func:`missing_tags`), which ``constrain(images)`` searches again;
    without it, ``constrain`` for every image. Each hypothesis carries its image's tags.

    Args:
        tags: each image's tags.
        vocab: the vocabulary the tokens are ids of.
        fallback: guide as a fallback (``GenerationConfig.guided_fallback``).
        plain: the plain search of every image.
        constrain: the constrained search of the images at these positions, in that order.
    """
    results: list = [None] * len(tags)
    todo = list(range(len(tags)))
    if fallback:
        results = plain()
        todo = missing_tags(results, tags, vocab)
    if todo:
        for i, hyps in zip(todo, constrain(todo)):
            results[i] = hyps
    return [[dataclasses.replace(h, tags=list(image)) for h in hyps] for hyps, image in zip(results, tags)]


ARTICLES = ("a", "an", "the")
SUBJECT_FIRST: frozenset[str] = frozenset()  # groups whose unknown words must open the caption (none: measured
# in docs/ablation.md, the decoder then continues "a zebra in a white shirt ...")
COMMON_MASS = frozenset({"water", "snow", "grass", "sand", "food", "dirt", "mud", "hair", "coffee", "broccoli"})
TAG_VERBS = frozenset({"brake", "swing", "slide", "switch", "lock", "drill", "spray", "iron", "plow", "pump", "file",
                       "pick", "scale", "stole", "swab", "fan", "screw", "nail", "hook"})
PREPOSITIONS = frozenset({"on", "over", "in", "at", "with", "into", "onto", "under", "near", "by", "behind"})


def ungrammatical_slots(caption: str) -> list[str]:
    """The places where a caption puts a word where English cannot have it: "a <mass noun or plural>" ("sitting on a
    coffee"), an article that does not fit the next word ("a envelope"), and "<preposition> a <verb>" ("riding on
    a brake"). Returns the offending word pairs or triples (empty: none found)."""
    mass = COMMON_MASS | {w for w, e in tag_words().items() if e["kind"] in ("mass", "plural")}
    words, found = caption.lower().split(), []
    for i in range(len(words) - 1):
        first, second = words[i], words[i + 1]
        if first in ("a", "an"):
            two = " ".join(words[i + 1 : i + 3])
            if second in mass or two in mass:
                found.append(f"{first} {second}")
            elif first != article(second):
                found.append(f"{first} {second}")
            elif second in TAG_VERBS and i > 0 and words[i - 1] in PREPOSITIONS:
                found.append(f"{words[i - 1]} {first} {second}")
    return found
