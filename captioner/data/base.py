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

logger = logging.getLogger(__name__)

MAX_CAPTION_WORDS = 100  # longer reference captions are cut to this many words (with a warning)


class DatasetError(ValueError):
    """Malformed or inconsistent dataset; the message names the file and the entry."""


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
        load: ``load(path, split, images) -> CaptionSet``; ``images`` overrides the images directory (None: the
            format's default place).
        splits: ``splits(path) -> list of split names``.
        description: one line for help texts.
    """

    name: str
    detect: Callable[[Path], bool]
    load: Callable[[Path, str, Path | None], CaptionSet]
    splits: Callable[[Path], list[str]]
    description: str = ""


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
        found = f"keys {sorted(map(str, data))[:6]}" if isinstance(data, dict) else f"a {type(data).__name__}"
        raise DatasetError(f"{path}: JSON with {found}, not a caption file: COCO captions need 'images' and "
                           "'annotations', Karpathy's split file 'images' with 'sentences'; see the README's data "
                           "section")
    raise DatasetError(f"{path}: not a dataset in any known format ({', '.join(FORMATS)}); see the README's data section")


def get_format(path: Path, name: str | None) -> DatasetFormat:
    if name is None:
        return detect_format(path)
    if name not in FORMATS:
        raise DatasetError(f"unknown dataset format {name!r}; known formats: {', '.join(FORMATS)}")
    return FORMATS[name]


def load_dataset(
    path: str | Path, split: str, fmt: str | None = None, images: str | Path | None = None
) -> CaptionSet:
    """Load one split of a dataset, detecting its format unless ``fmt`` is given.

    Args:
        path: dataset directory or file.
        split: split name.
        fmt: format name (None: detect from the path).
        images: images directory, for formats whose annotations live apart from the images (None: the default
            place for the format, e.g. ``images/`` beside the annotations).
    """
    path = Path(path)
    if images is not None and not Path(images).is_dir():
        raise DatasetError(f"--images {images}: no such directory")
    loader = get_format(path, fmt)
    images = Path(images) if images is not None else None
    parts = [loader.load(path, name, images) for name in split.split("+")]
    for part in parts:
        truncate_long_captions(part)
    if len(parts) == 1:
        return parts[0]
    merged: dict[str, ImageItem] = {}
    for part in parts:  # "train+restval": the union, first occurrence of an image wins
        for item in part.items:
            merged.setdefault(item.name, item)
    return CaptionSet(root=path, split=split, items=list(merged.values()))


def truncate_long_captions(data: CaptionSet, max_words: int = MAX_CAPTION_WORDS) -> int:
    """Cut captions longer than ``max_words`` words to that many, with one warning naming the first; returns how
    many were cut (a 10,000-word "caption" is a broken annotation, and would cost memory and time everywhere)."""
    cut, first = 0, None
    for item in data.items:
        for i, caption in enumerate(item.captions):
            words = caption.split()
            if len(words) > max_words:
                item.captions[i] = " ".join(words[:max_words])
                cut += 1
                first = first or f"image {item.name}, {len(words)} words"
    if cut:
        logger.warning("%s [%s]: %d caption(s) longer than %d words cut to %d (first: %s)", data.root, data.split,
                       cut, max_words, max_words, first)
    return cut


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
        raise DatasetError(f"{where}: image name must be a non-empty string, got {name!r}")
    posix = PurePosixPath(name.strip().replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or (posix.parts and ":" in posix.parts[0]):
        raise DatasetError(f"{where}: image name {name!r} must be a relative path inside the images directory")
    return str(posix)


def read_json(path: Path) -> Any:
    """Parse a JSON file; bad JSON becomes a :class:`DatasetError` with the line and column."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err})") from None


def check_caption(value: Any, where: str) -> str:
    """A caption read from a file must be a string."""
    if not isinstance(value, str):
        raise DatasetError(f"{where}: caption must be a string, got {type(value).__name__} {value!r}")
    return value.strip()


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
