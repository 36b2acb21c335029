"""The native "caption folder" format.

```
DATASET/
  images/            image files (subdirectories allowed)
  captions.txt       UTF-8 TSV with the header line "image<TAB>caption", one caption per line
  splits/NAME.txt    one image name per line (relative to images/), e.g. train.txt, val.txt
```
This is the layout of the Flickr8k copy in ``../shared/data/flickr8k``. A byte-order mark is allowed at the start of
each file; blank lines are ignored; every other line is used or reported with its line number.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from captioner.data.base import (
    CaptionSet,
    DatasetError,
    DatasetFormat,
    ImageItem,
    Problems,
    image_name,
    register_format,
    split_name_clashes,
    take_caption,
)
from captioner.data.problems import shorten
from captioner.data.textfile import text_lines

HEADER = "image\tcaption"


def is_caption_folder(path: Path) -> bool:
    return path.is_dir() and (path / "captions.txt").is_file() and (path / "images").is_dir()


def read_captions(path: Path, problems: Problems) -> dict[str, list[tuple[str, str]]]:
    """Parse ``captions.txt``: image name → ``(where, raw caption)`` pairs, in file order.

    Raises:
        DatasetError: the file cannot be read, or its first line is not the header.
    """
    lines = text_lines(path, problems)
    first = next(lines, None)
    if first is None or first[1].strip() != HEADER:
        found = f", found {shorten(first[1])} on line {first[0]}" if first else ", found an empty file"
        raise DatasetError(f"{path}: first line must be the header 'image<TAB>caption'{found}")
    captions: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for number, line in lines:
        where = f"{path}:{number}"
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            problems.error(where, "expected 'image<TAB>caption', found no tab" if len(fields) == 1 else
                           f"expected 'image<TAB>caption', found {len(fields)} tab-separated fields (a tab inside "
                           "the caption? replace it with a space)")
            continue
        name = image_name(fields[0].strip(), where, problems)
        if name is not None:
            captions[name].append((where, fields[1]))
    return captions


def read_name_list(path: Path, problems: Problems) -> dict[str, str]:
    """A split file, one image name per line: name → where it is listed (``file:line``), in file order; a name
    listed twice is used once, with a warning."""
    names: dict[str, str] = {}
    for number, line in text_lines(path, problems):
        where = f"{path}:{number}"
        if not line.strip():
            continue
        name = image_name(line.strip(), where, problems)
        if name is None:
            continue
        if name in names:
            problems.warning(where, f"image {shorten(name)} is listed again (first at {names[name]}); used once")
            continue
        names[name] = where
    return names


def list_folder_splits(path: Path) -> list[str]:
    split_dir = path / "splits"
    return sorted(p.stem for p in split_dir.glob("*.txt")) if split_dir.is_dir() else []


def load_caption_folder(path: Path, split: str, images: Path | None, problems: Problems) -> CaptionSet:
    """Load one split of a caption folder, recording every bad line in ``problems``.

    Raises:
        DatasetError: no such split, or ``captions.txt`` cannot be read.
    """
    split_file = path / "splits" / f"{split}.txt"
    if not split_file.is_file():
        available = ", ".join(list_folder_splits(path)) or "none"
        raise DatasetError(f"{split_file}: no such split (available: {available})")
    split_name_clashes({p.stem: str(p) for p in sorted((path / "splits").glob("*.txt"))
                        if p.stem.casefold() == split.casefold()}, problems, "split file")
    captions = read_captions(path / "captions.txt", problems)
    items = build_items(read_name_list(split_file, problems), captions, images or path / "images", "captions.txt",
                        problems)
    return CaptionSet(root=path, split=split, items=items)


def build_items(
    names: dict[str, str], captions: dict[str, list[tuple[str, str]]], root: Path, source: str, problems: Problems
) -> list[ImageItem]:
    """The items of a split from the names it lists and the caption lines read for each name.

    Args:
        names: image name → where the split lists it.
        captions: image name → ``(where, raw caption)`` pairs.
        root: the images directory.
        source: the captions file's name, for messages.
        problems: where unlisted images, bad captions and images left without a caption are recorded.
    """
    items = []
    for name, where in names.items():
        if name not in captions:
            problems.error(where, f"image {shorten(name)} has no caption in {source}; add its captions or remove it "
                           "from the split")
            continue
        errors = problems.counts["error"]
        kept = [c for w, raw in captions[name] if (c := take_caption(raw, w, problems)) is not None]
        if not kept:
            if problems.counts["error"] == errors:  # (a caption that is an error has been reported already)
                problems.warning(where, f"image {shorten(name)}: none of its captions is usable; left out")
            continue
        items.append(ImageItem(name=name, path=(root / name).resolve(), captions=kept))
    return items


def audit_caption_folder(path: Path, problems: Problems) -> None:
    """Captions of images that no split file lists are never used: one warning per such image."""
    listed: set[str] = set()
    for split in list_folder_splits(path):
        listed.update(read_name_list(path / "splits" / f"{split}.txt", Problems()))
    for name, entries in read_captions(path / "captions.txt", Problems()).items():
        if name not in listed:
            problems.warning(entries[0][0], f"image {shorten(name)} is in no split file (splits/*.txt); its "
                             f"{len(entries)} caption(s) are not used")


register_format(
    DatasetFormat("folder", is_caption_folder, load_caption_folder, list_folder_splits,
                  "caption folder: images/, captions.txt (image<TAB>caption), splits/NAME.txt",
                  audit=audit_caption_folder)
)
