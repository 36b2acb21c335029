"""Tokenizer and vocabulary.

The tokenizer needs no downloaded data: text is lowercased and split into runs of letters and digits, keeping
inner apostrophes (``"dog's"`` stays one token); every other character (punctuation, symbols) is dropped.
``tokenize("A dog's ball, 2 cats!") == ["a", "dog's", "ball", "2", "cats"]``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)

_TOKEN_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def tokenize(text: str) -> list[str]:
    """Split a caption into lowercase word tokens, dropping punctuation.

    Args:
        text: a caption in any casing.

    Returns:
        The list of tokens, possibly empty.
    """
    return _TOKEN_RE.findall(text.lower())


class Vocabulary:
    """Maps tokens to ids and back. Ids 0..3 are ``<pad> <start> <end> <unk>``, in that order."""

    def __init__(self, words: Sequence[str] = (), counts: dict[str, int] | None = None) -> None:
        self.itos: list[str] = list(SPECIAL_TOKENS)
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}
        self.counts: dict[str, int] = dict(counts or {})
        self.extra: list[str] = []  # words added for guided decoding only: not counted, not saved
        for word in words:
            self.add(word)

    pad_id, start_id, end_id, unk_id = 0, 1, 2, 3

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 5) -> Vocabulary:
        """Build a vocabulary of the words seen at least ``min_count`` times.

        Words are ordered by decreasing count, then alphabetically, so the same captions always give the same ids.
        """
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {min_count}")
        counter: Counter[str] = Counter()
        for caption in captions:
            counter.update(tokenize(caption))
        kept = sorted((w for w, c in counter.items() if c >= min_count), key=lambda w: (-counter[w], w))
        return cls(kept, {w: counter[w] for w in kept})

    def add(self, word: str) -> int:
        """Append ``word`` if it is new; return its id."""
        if word not in self.stoi:
            self.stoi[word] = len(self.itos)
            self.itos.append(word)
        return self.stoi[word]

    def add_extra(self, word: str) -> int:
        """The id of a word guided decoding may write although the model never learned it: ids from
        ``len(self)`` on, outside the vocabulary proper (``len``, ``encode`` and ``save`` ignore them)."""
        if word in self.stoi:
            return self.stoi[word]
        if word not in self.extra:
            self.extra.append(word)
        return len(self.itos) + self.extra.index(word)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        """Caption text → ``[<start>, w1, ..., wn, <end>]`` ids; unknown words become ``<unk>``.

        Args:
            text: the caption.
            max_len: keep at most this many words (before adding ``<start>``/``<end>``).
        """
        words = tokenize(text)[:max_len]
        return [self.start_id, *(self.stoi.get(w, self.unk_id) for w in words), self.end_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids → text: stops at ``<end>``, skips ``<pad>``/``<start>``, joins words with spaces."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id):
                continue
            if 0 <= i < len(self.itos):
                words.append(self.itos[i])
            else:
                extra = i - len(self.itos)
                words.append(self.extra[extra] if 0 <= extra < len(self.extra) else UNK)
        return " ".join(words)

    def to_dict(self) -> dict:
        return {"tokenizer": "lowercase-alnum-v1", "itos": self.itos, "counts": self.counts}

    def save(self, path: str | Path) -> None:
        """Write ``vocab.json``."""
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=0) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a ``vocab.json`` written by :meth:`save`."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        itos = data.get("itos") if isinstance(data, dict) else None
        if not isinstance(itos, list) or tuple(itos[:4]) != SPECIAL_TOKENS:
            raise ValueError(f"{path}: not a captioner vocabulary (expected 'itos' starting with {SPECIAL_TOKENS})")
        return cls(itos[4:], data.get("counts", {}))
