"""The native "caption folder" format.

```
DATASET/
  images/            image files (subdirectories allowed)
  captions.txt       UTF-8 TSV with the header line "image<TAB>caption", one caption per line
  splits/NAME.txt    one image name per line (relative to images/), e.g. train.txt, val.txt
```
This is the layout of the Flickr8k copy in ``../shared/data/flickr8k``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from captioner.data.base import (
    CaptionSet,
    DatasetError,
    DatasetFormat,
    ImageItem,
    register_format,
    safe_image_name,
)

HEADER = "image\tcaption"


def is_caption_folder(path: Path) -> bool:
    return path.is_dir() and (path / "captions.txt").is_file() and (path / "images").is_dir()


def read_captions(path: Path) -> dict[str, list[str]]:
    """Parse ``captions.txt``: image name → captions, in file order."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err})") from None
    if not lines or lines[0].strip() != HEADER:
        raise DatasetError(f"{path}: first line must be the header 'image<TAB>caption'")
    captions: dict[str, list[str]] = defaultdict(list)
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, caption = line.partition("\t")
        if not sep:
            raise DatasetError(f"{path}:{number}: expected 'image<TAB>caption', found no tab")
        captions[safe_image_name(name.strip(), f"{path}:{number}")].append(caption.strip())
    return captions


def list_folder_splits(path: Path) -> list[str]:
    split_dir = path / "splits"
    return sorted(p.stem for p in split_dir.glob("*.txt")) if split_dir.is_dir() else []


def load_caption_folder(path: Path, split: str, images: Path | None = None) -> CaptionSet:
    """Load one split of a caption folder.

    Raises:
        DatasetError: missing split file, or a split image without captions.
    """
    split_file = path / "splits" / f"{split}.txt"
    if not split_file.is_file():
        available = ", ".join(list_folder_splits(path)) or "none"
        raise DatasetError(f"{split_file}: no such split (available: {available})")
    captions = read_captions(path / "captions.txt")
    names = [
        safe_image_name(line.strip(), f"{split_file}:{number}")
        for number, line in enumerate(split_file.read_text(encoding="utf-8").splitlines(), start=1)
        if line.strip()
    ]
    missing = [n for n in names if n not in captions]
    if missing:
        raise DatasetError(
            f"{split_file}: {len(missing)} image(s) have no caption in captions.txt (first: {missing[0]})"
        )
    images = images or path / "images"
    items = [ImageItem(name=n, path=(images / n).resolve(), captions=list(captions[n])) for n in dict.fromkeys(names)]
    return CaptionSet(root=path, split=split, items=items)


register_format(
    DatasetFormat("folder", is_caption_folder, load_caption_folder, list_folder_splits,
                  "caption folder: images/, captions.txt (image<TAB>caption), splits/NAME.txt")
)
