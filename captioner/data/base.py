"""The one in-memory type every dataset format loads into, and the format registry.

A loader turns a path into a :class:`CaptionSet` for one split. Formats register a ``detect`` function (does this
path look like my format?) and a ``load`` function, so new formats (COCO JSON, Karpathy splits, Flickr official
files, CSV/JSONL) slot in without touching training or evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path


class DatasetError(ValueError):
    """Malformed or inconsistent dataset; the message names the file and the entry."""


@dataclass
class ImageItem:
    """One image and its reference captions.

    Attributes:
        name: the image's name inside the dataset (its path relative to the images directory).
        path: absolute path of the image file.
        captions: reference captions, raw text.
    """

    name: str
    path: Path
    captions: list[str]


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
        load: ``load(path, split) -> CaptionSet``.
        splits: ``splits(path) -> list of split names``.
    """

    name: str
    detect: Callable[[Path], bool]
    load: Callable[[Path, str], CaptionSet]
    splits: Callable[[Path], list[str]]


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
    raise DatasetError(f"{path}: not a dataset in any known format ({', '.join(FORMATS)}); see the README's data section")


def get_format(path: Path, name: str | None) -> DatasetFormat:
    if name is None:
        return detect_format(path)
    if name not in FORMATS:
        raise DatasetError(f"unknown dataset format {name!r}; known formats: {', '.join(FORMATS)}")
    return FORMATS[name]


def load_dataset(path: str | Path, split: str, fmt: str | None = None) -> CaptionSet:
    """Load one split of a dataset, detecting its format unless ``fmt`` is given.

    Args:
        path: dataset directory or file.
        split: split name.
        fmt: format name (None: detect from the path).
    """
    path = Path(path)
    return get_format(path, fmt).load(path, split)


def list_splits(path: str | Path, fmt: str | None = None) -> list[str]:
    """Split names available in a dataset."""
    path = Path(path)
    return get_format(path, fmt).splits(path)
