"""COCO captions JSON (``captions_train2014.json``, ``captions_val2017.json``, ...).

``images[]`` entries carry ``id`` and ``file_name``; ``annotations[]`` carry ``id``, ``image_id`` and ``caption``.
A path may be one such file (its only split is ``all``, unless image entries carry a ``split`` field) or a directory
with ``annotations/captions_<split>.json`` files (``captions_val2017.json`` is split ``val2017``). Images are looked
for in ``--images``, else ``images/`` beside the annotations or one level up, else a folder named after the split
(COCO's own ``train2017/`` layout).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any

from captioner.data.base import (
    CaptionSet,
    DatasetError,
    DatasetFormat,
    ImageItem,
    check_caption,
    first_dir,
    read_json,
    register_format,
    safe_image_name,
)

logger = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _cached_json(path: str, mtime: float, size: int) -> Any:
    return read_json(Path(path))


def load_json(path: Path) -> Any:
    """Parse a JSON file once per content version (detection and loading both need it)."""
    stat = path.stat()
    return _cached_json(str(path), stat.st_mtime, stat.st_size)


def _looks_like_coco(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("images"), list) and "annotations" in data


def _annotation_files(path: Path) -> dict[str, Path]:
    folder = path / "annotations" if (path / "annotations").is_dir() else path
    return {f.stem[len("captions_"):]: f for f in sorted(folder.glob("captions_*.json"))}


def is_coco(path: Path) -> bool:
    if path.is_dir():
        return bool(_annotation_files(path))
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        return _looks_like_coco(load_json(path))
    except DatasetError:
        return False


def coco_splits(path: Path) -> list[str]:
    if path.is_dir():
        return list(_annotation_files(path))
    data = load_json(path)
    tagged = {img.get("split") for img in data.get("images", []) if isinstance(img, dict) and img.get("split")}
    return ["all", *sorted(tagged)]


def load_coco(path: Path, split: str, images: Path | None = None) -> CaptionSet:
    """Load a COCO captions file (or one split of a directory of them)."""
    if path.is_dir():
        files = _annotation_files(path)
        if split not in files:
            raise DatasetError(f"{path}: no annotations/captions_{split}.json (available splits: "
                               f"{', '.join(files) or 'none'})")
        file, file_split = files[split], "all"
    else:
        file, file_split = path, split
    data = load_json(file)
    if not _looks_like_coco(data):
        raise DatasetError(f"{file}: not a COCO captions file (needs 'images' and 'annotations' lists)")
    entries = _image_entries(file, data["images"], file_split)
    all_ids = {img["id"] for img in data["images"]}
    captions = _captions_by_image(file, data["annotations"], all_ids)
    root = images or first_dir(
        [file.parent / "images", file.parent.parent / "images", file.parent.parent / split, file.parent / split],
        f"{file}")
    items = [ImageItem(name, (root / name).resolve(), captions[i], image_id=i) for i, name in entries if captions[i]]
    if len(items) < len(entries):
        logger.info("%s: %d image(s) without captions left out", file, len(entries) - len(items))
    return CaptionSet(root=path, split=split, items=items)


def _image_entries(file: Path, images: list, split: str) -> list[tuple[Any, str]]:
    """``(id, file_name)`` of the images in the split, checked."""
    entries, seen = [], set()
    for n, img in enumerate(images):
        where = f"{file}: images[{n}]"
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise DatasetError(f"{where}: needs 'id' and 'file_name'")
        image_id = img["id"]
        if not isinstance(image_id, (int, str)) or isinstance(image_id, bool):
            raise DatasetError(f"{where}: 'id' must be an integer or string, got {image_id!r}")
        if image_id in seen:
            raise DatasetError(f"{where}: duplicate image id {image_id!r}")
        seen.add(image_id)
        if split != "all" and img.get("split") != split:
            continue
        entries.append((image_id, safe_image_name(img["file_name"], f"{where} (id {image_id})")))
    if split != "all" and not entries:
        raise DatasetError(f"{file}: no image has split {split!r} (available: {', '.join(coco_splits(file))})")
    return entries


def _captions_by_image(file: Path, annotations: Any, known: set) -> dict[Any, list[str]]:
    """Captions grouped by image id; an annotation for an image the file does not list is an error."""
    if not isinstance(annotations, list):
        raise DatasetError(f"{file}: 'annotations' must be a list")
    captions: dict[Any, list[str]] = defaultdict(list)
    for n, ann in enumerate(annotations):
        where = f"{file}: annotations[{n}]"
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raise DatasetError(f"{where}: needs 'image_id' and 'caption'")
        where += f" (id {ann.get('id')})"
        if ann["image_id"] not in known:
            raise DatasetError(f"{where}: image_id {ann['image_id']!r} is not in the file's images")
        captions[ann["image_id"]].append(check_caption(ann["caption"], where))
    return captions


register_format(DatasetFormat("coco", is_coco, load_coco, coco_splits,
                              "COCO captions JSON (images[] + annotations[]) with --images DIR"))
