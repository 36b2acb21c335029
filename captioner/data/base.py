"""The one in-memory type every dataset format loads into, and the format registry.

A loader turns a path into a :class:`CaptionSet` for one split. Formats register a ``detect`` function (does this
path look like my format?) and a ``load`` function, so new formats (COCO JSON, Karpathy splits, Flickr official
files, CSV/JSONL) slot in without touching training or evaluation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from captioner.data.problems import DatasetError, Problems, shorten
from captioner.data.textfile import MAX_LINE_CHARS
from captioner.vocab import tokenize

logger = logging.getLogger(__name__)

MAX_CAPTION_WORDS = 100  # longer reference captions are cut to this many words (with a warning)
MAX_NAME_CHARS = 4096  # an image name longer than any file system's path limit is a broken entry
EMPTY_CAPTION = "empty caption"  # how every loader words it (data check counts these)


@dataclass
class ImageItem:
    """One image and its reference captions.

    Attributes:
        name: the image's name inside the dataset (its path relative to the images directory).
        path: absolute path of the image file.
        captions: reference captions, raw text.
        image_id: the dataset's own id for the image (COCO ``id``), when it has one.
    """

    name: str
    path: Path
    captions: list[str]
    image_id: int | str | None = None


@dataclass
class CaptionSet:
    """One split of a dataset.

    Attributes:
        root: the dataset path it was loaded from.
        split: split name (``train``, ``val``, ...).
        items: images with their captions, in the order the split lists them.
    """

    root: Path
    split: str
    items: list[ImageItem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[ImageItem]:
        return iter(self.items)

    def captions(self) -> Iterator[str]:
        """Every caption of every image."""
        for item in self.items:
            yield from item.captions

    def subset(self, n: int) -> CaptionSet:
        """The first ``n`` images (for dry runs and quick validation)."""
        return CaptionSet(self.root, self.split, self.items[:n])


@dataclass(frozen=True)
class DatasetFormat:
    """A registered dataset format.

    Attributes:
        name: the ``--format`` value.
        detect: ``detect(path) -> bool``.
        load: ``load(path, split, images, problems) -> CaptionSet``; ``images`` overrides the images directory
            (None: the format's default place). Every entry it reads is either used or recorded in ``problems``
            (a :class:`Problems`) with its place; it raises :class:`DatasetError` only when nothing of the split can
            be read (no such split, a file that is not the format at all).
        splits: ``splits(path) -> list of split names``.
        description: one line for help texts.
        audit: ``audit(path, problems)``, checks of the whole data set that loading one split cannot make (entries
            that no split uses); run by ``data check``. None: nothing to add.
    """

    name: str
    detect: Callable[[Path], bool]
    load: Callable[[Path, str, Path | None, Problems], CaptionSet]
    splits: Callable[[Path], list[str]]
    description: str = ""
    audit: Callable[[Path, Problems], None] | None = None


FORMATS: dict[str, DatasetFormat] = {}


def register_format(fmt: DatasetFormat) -> None:
    FORMATS[fmt.name] = fmt


def detect_format(path: Path) -> DatasetFormat:
    """Find the format of ``path``; raise :class:`DatasetError` saying which formats were tried."""
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    for fmt in FORMATS.values():
        if fmt.detect(path):
            return fmt
    if path.is_file() and path.suffix.lower() == ".json":
        data = read_json(path)  # bad JSON: its line and column
        found = f"keys {shorten(sorted(map(str, data))[:6])}" if isinstance(data, dict) else f"a {type(data).__name__}"
        raise DatasetError(f"{path}: JSON with {found}, not a caption file: COCO captions need 'images' and "
                           "'annotations', Karpathy's split file 'images' with 'sentences'; see the README's data "
                           "section")
    raise DatasetError(f"{path}: not a dataset in any known format ({', '.join(FORMATS)}); see the README's data section")


def get_format(path: Path, name: str | None) -> DatasetFormat:
    if name is None:
        return detect_format(path)
    if name not in FORMATS:
        raise DatasetError(f"unknown dataset format {shorten(name)}; known formats: {', '.join(FORMATS)}")
    return FORMATS[name]


def load_dataset(
    path: str | Path, split: str, fmt: str | None = None, images: str | Path | None = None,
    problems: Problems | None = None,
) -> CaptionSet:
    """Load one split of a dataset, detecting its format unless ``fmt`` is given.

    Args:
        path: dataset directory or file.
        split: split name; ``a+b`` joins splits.
        fmt: format name (None: detect from the path).
        images: images directory, for formats whose annotations live apart from the images (None: the default
            place for the format, e.g. ``images/`` beside the annotations).
        problems: None (training, evaluation): raise :class:`DatasetError` naming the first entry that cannot be
            read, and log a warning for each entry left out or changed. A :class:`Problems`: record every problem
            there and return what could be read (``data check``).
    """
    path = Path(path)
    if images is not None and not Path(images).is_dir():
        raise DatasetError(f"--images {images}: no such directory")
    loader = get_format(path, fmt)
    images = Path(images) if images is not None else None
    found = Problems() if problems is None else problems
    parts = []
    for name in split.split("+"):
        part = loader.load(path, name, images, found)
        if not part.items and not found.counts["error"]:
            found.error(str(path), f"split {shorten(name)} has no image with a usable caption")
        parts.append(part)
    data = parts[0] if len(parts) == 1 else _join(path, split, parts, found)
    if problems is None:
        found.raise_errors(str(path))
        found.log(logger, str(path))
    return data


def _join(path: Path, split: str, parts: list[CaptionSet], problems: Problems) -> CaptionSet:
    """``train+restval``: the union; an image in two of the splits is used once, as the first split has it."""
    merged: dict[str, ImageItem] = {}
    for part in parts:
        for item in part.items:
            first = merged.setdefault(item.name, item)
            if first is not item:
                problems.warning(str(path), f"image {shorten(item.name)} is in split {part.split!r} too; its "
                                 f"entry in the first split of {split!r} is used")
    return CaptionSet(root=path, split=split, items=list(merged.values()))


def list_splits(path: str | Path, fmt: str | None = None) -> list[str]:
    """Split names available in a dataset."""
    path = Path(path)
    return get_format(path, fmt).splits(path)


def safe_image_name(name: Any, where: str) -> str:
    """Check an image name from a dataset file: a non-empty relative path that stays inside the images directory.

    Args:
        name: the value read from the file.
        where: file and entry, for the error message (``"captions.json: image id 42"``).
    """
    if not isinstance(name, str) or not name.strip():
        raise DatasetError(f"{where}: image name must be a non-empty string, got {shorten(name)}")
    if len(name) > MAX_NAME_CHARS:
        raise DatasetError(f"{where}: image name {shorten(name)} is longer than any file system allows "
                           f"({MAX_NAME_CHARS:,} characters); a broken entry?")
    posix = PurePosixPath(name.strip().replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or (posix.parts and ":" in posix.parts[0]):
        raise DatasetError(f"{where}: image name {shorten(name)} must be a relative path inside the images directory")
    if "\0" in name:
        raise DatasetError(f"{where}: image name {shorten(name)} contains a NUL byte")
    return str(posix)


def image_name(name: Any, where: str, problems: Problems) -> str | None:
    """:func:`safe_image_name`, its error recorded in ``problems`` instead of raised (None: unusable)."""
    try:
        return safe_image_name(name, where)
    except DatasetError as err:
        problems.error(where, str(err).removeprefix(f"{where}: "))
        return None


def read_json(path: Path) -> Any:
    """Parse a JSON file (a UTF-8 byte-order mark is allowed); any failure is a :class:`DatasetError` naming the
    file, with the line and column of bad JSON."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start:,}); save it as UTF-8") from None
    except RecursionError:
        raise DatasetError(f"{path}: JSON nested too deeply to read (arrays or objects inside each other thousands "
                           "of levels deep); not a caption file") from None
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err.strerror or err}") from None


def check_caption(value: Any, where: str) -> str:
    """A caption read from a file must be a string."""
    if not isinstance(value, str):
        raise DatasetError(f"{where}: caption must be a string, got {type(value).__name__} {shorten(value)}")
    return value.strip()


def take_caption(value: Any, where: str, problems: Problems) -> str | None:
    """A reference caption read from a file, checked; None when it cannot be used (recorded in ``problems``).

    Not a string, over :data:`MAX_LINE_CHARS` characters (never split into words: memory stays bounded) or holding
    a NUL byte: an error. Empty, or without a word: left out. Over :data:`MAX_CAPTION_WORDS` words: cut to that
    many, with a warning.

    Args:
        value: the value read from the file.
        where: file and entry (``captions.txt:12``).
        problems: where problems are recorded.
    """
    if not isinstance(value, str):
        problems.error(where, f"caption must be a string, got {type(value).__name__} {shorten(value)}")
        return None
    if len(value) > MAX_LINE_CHARS:
        problems.error(where, f"a caption of {len(value):,} characters, over the limit of {MAX_LINE_CHARS:,}; a "
                       "broken annotation? fix or remove it")
        return None
    if "\0" in value:
        problems.error(where, f"caption {shorten(value)} contains a NUL byte; remove it")
        return None
    text = value.strip()
    if not tokenize(text):
        problems.skipped(where, EMPTY_CAPTION if not text else f"{EMPTY_CAPTION} (no words in {shorten(text)})")
        return None
    words = text.split()
    if len(words) > MAX_CAPTION_WORDS:
        problems.warning(where, f"a caption of {len(words):,} words; cut to the first {MAX_CAPTION_WORDS}")
        text = " ".join(words[:MAX_CAPTION_WORDS])
    return text


def split_name_clashes(first_seen: dict[str, str], problems: Problems, what: str = "split") -> None:
    """Split names are case-sensitive, so two that differ only in case (``Train``, ``train``) would quietly be two
    splits: record an error naming where each was first seen.

    Args:
        first_seen: split name → where it first appears (``data.csv:2``).
        problems: where the clash is recorded.
        what: what the names are, for the message.
    """
    by_folded: dict[str, str] = {}
    for name, where in first_seen.items():
        other = by_folded.setdefault(name.casefold(), name)
        if other != name:
            problems.error(where, f"{what} {shorten(name)} differs from {what} {shorten(other)} (first at "
                           f"{first_seen[other]}) only in case; {what} names are case-sensitive: use one spelling")


def first_dir(candidates: list[Path], what: str) -> Path:
    """The first existing directory among candidates, else an error saying to pass ``--images``."""
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise DatasetError(f"cannot find the images of {what} (looked in {tried}); pass --images DIR")


def report_bad_images(data: CaptionSet, failures: dict[str, str], policy: str) -> None:
    """Warn about (``policy="skip"``) or stop on (``"error"``) unreadable images of a split, naming the first.

    Args:
        data: the split.
        failures: image path or name → reason.
        policy: ``skip`` or ``error``.
    """
    if not failures:
        return
    name, reason = next(iter(failures.items()))
    message = f"split {data.split}: {len(failures)} of {len(data)} image(s) unreadable (first: {name}: {reason})"
    if policy == "error":
        raise DatasetError(message + "; fix or remove them, or use --on-bad-image skip")
    logger.warning("%s; skipped", message)
