"""What a loader found wrong with a dataset, collected instead of stopping at the first problem.

Every entry of every dataset file is either used or reported here with its place (``file:line``, or the JSON entry)
and why. Three levels:

- ``error``: the entry cannot be read as the format says (no tab, an unterminated quote, an extra column, a name
  escaping the images directory, a NUL byte, an over-long line ...). Loaders refuse the data set
  (:class:`DatasetError` naming the first); ``data check`` lists it as an error.
- ``skipped``: the entry is well-formed but unusable (an empty caption). Loaders leave it out with a warning naming
  it; ``data check`` lists it as an error, so that a clean data set has none.
- ``warning``: used, but maybe not as the user meant (a caption cut to the word limit, an image listed twice, an
  image no split uses). Loaders log it; ``data check`` lists it as a warning.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

SHOWN_VALUE_CHARS = 80  # a value quoted in a message is cut to this many characters
LOGGED = 5  # warnings a loader logs one by one before summing up the rest

LEVELS = ("error", "skipped", "warning")


class DatasetError(ValueError):
    """Malformed or inconsistent dataset; the message names the file and the entry."""


def abbreviate(text: str, limit: int = SHOWN_VALUE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was (unquoted: for names and whole lines)."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def shorten(value: Any, limit: int = SHOWN_VALUE_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, saying how long it was, so that one message stays one short line.

    Args:
        value: what to quote (a file name, a caption ...).
        limit: characters kept.
    """
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value):,} characters)"
    if isinstance(value, (list, dict)) and len(value) > limit:
        return f"a {type(value).__name__} of {len(value):,} entries"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


@dataclass(frozen=True)
class Problem:
    """One problem of one entry.

    Attributes:
        where: the file and the entry (``captions.txt:12``, ``captions.json: annotations[3] (id 7)``).
        message: what is wrong and, where it helps, what to do.
        level: ``error``, ``skipped`` or ``warning`` (see the module docstring).
    """

    where: str
    message: str
    level: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class Problems:
    """The problems found while loading, in the order found; the same problem is kept once."""

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self.counts: Counter[str] = Counter()  # level → problems recorded
        self._seen: set[Problem] = set()

    def add(self, where: str, message: str, level: str) -> None:
        """Record a problem (a repeat of one already recorded is ignored)."""
        if level not in LEVELS:
            raise ValueError(f"problem level must be one of {LEVELS}, got {level!r}")
        problem = Problem(where, message, level)
        if problem not in self._seen:
            self._seen.add(problem)
            self.items.append(problem)
            self.counts[level] += 1

    def error(self, where: str, message: str) -> None:
        """The entry cannot be read as its format says: loaders refuse the data set."""
        self.add(where, message, "error")

    def skipped(self, where: str, message: str) -> None:
        """The entry is left out by loaders (with a warning); ``data check`` counts it as an error."""
        self.add(where, message, "skipped")

    def warning(self, where: str, message: str) -> None:
        """Used, but worth a look."""
        self.add(where, message, "warning")

    def extend(self, others: Iterable[Problem]) -> None:
        for problem in others:
            self.add(problem.where, problem.message, problem.level)

    def of_level(self, *levels: str) -> list[Problem]:
        return [p for p in self.items if p.level in levels]

    def raise_errors(self, source: str) -> None:
        """Raise :class:`DatasetError` naming the first error (and how many more there are), if there is one.

        Args:
            source: the dataset path, for the advice to run ``captioner data check``.
        """
        errors = self.of_level("error")
        if not errors:
            return
        more = (f" (and {len(errors) - 1} more error(s): `captioner data check {source}` lists them all)"
                if len(errors) > 1 else "")
        raise DatasetError(f"{errors[0]}{more}")

    def log(self, logger: logging.Logger, source: str) -> None:
        """Log what loaders left out or used with a warning: the first few one by one, then how many more."""
        shown = self.of_level("skipped", "warning")
        for problem in shown[:LOGGED]:
            action = " (left out)" if problem.level == "skipped" else ""
            logger.warning("%s%s", problem, action)
        if len(shown) > LOGGED:
            logger.warning("... and %d more problem(s) in %s: `captioner data check %s` lists them all",
                           len(shown) - LOGGED, source, source)
