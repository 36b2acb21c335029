"""COCO captions JSON (``captions_train2014.json``, ``captions_val2017.json``, ...).

``images[]`` entries carry ``id`` and ``file_name``; ``annotations[]`` carry ``id``, ``image_id`` and ``caption``.
A path may be one such file (its only split is ``all``, unless image entries carry a ``split`` field) or a directory
with ``annotations/captions_<split>.json`` files (``captions_val2017.json`` is split ``val2017``). Images are looked
for in ``--images``, else ``images/`` beside the annotations or one level up, else a folder named after the split
(COCO's own ``train2017/`` layout).
"""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any

from captioner.data.base import (
    CaptionSet,
    DatasetError,
    DatasetFormat,
    ImageItem,
    Problems,
    first_dir,
    image_name,
    read_json,
    register_format,
    split_name_clashes,
    take_caption,
)
from captioner.data.problems import shorten


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
    tagged = {img["split"] for img in data.get("images", [])
              if isinstance(img, dict) and isinstance(img.get("split"), str) and img["split"]}
    return ["all", *sorted(tagged)]


def load_coco(path: Path, split: str, images: Path | None, problems: Problems) -> CaptionSet:
    """Load a COCO captions file (or one split of a directory of them), recording bad entries in ``problems``."""
    if path.is_dir():
        files = _annotation_files(path)
        if split not in files:
            raise DatasetError(f"{path}: no annotations/captions_{shorten(split)}.json (available splits: "
                               f"{', '.join(files) or 'none'})")
        file, file_split = files[split], "all"
    else:
        file, file_split = path, split
    data = load_json(file)
    if not _looks_like_coco(data):
        raise DatasetError(f"{file}: not a COCO captions file (needs 'images' and 'annotations' lists)")
    if not data["images"]:
        raise DatasetError(f"{file}: 'images' is empty: the file lists no image to caption")
    entries, known = _image_entries(file, data["images"], file_split, problems)
    captions = _captions_by_image(file, data["annotations"], known, problems)
    root = images or first_dir(
        [file.parent / "images", file.parent.parent / "images", file.parent.parent / split, file.parent / split],
        f"{file}")
    items = []
    for image_id, name, where in entries:
        errors = problems.counts["error"]
        kept = [c for w, raw in captions.get(image_id, []) if (c := take_caption(raw, w, problems)) is not None]
        if kept:
            items.append(ImageItem(name, (root / name).resolve(), kept, image_id=image_id))
        elif problems.counts["error"] == errors:  # (a caption that is an error has been reported already)
            problems.warning(where, f"image {shorten(name)} has no usable caption"
                             f"{'' if image_id in captions else ' (no annotation names it)'}; left out")
    return CaptionSet(root=path, split=split, items=items)


def _image_entries(file: Path, images: list, split: str, problems: Problems) -> tuple[list[tuple[Any, str, str]], set]:
    """``(id, file_name, where)`` of the images in the split, checked, and the ids of every image the file lists."""
    entries, seen, first_split = [], set(), {}
    for n, img in enumerate(images):
        where = f"{file}: images[{n}]"
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            problems.error(where, "needs 'id' and 'file_name'")
            if isinstance(img, dict) and isinstance(img.get("id"), (int, str)):
                seen.add(img["id"])  # its captions are not "of an unknown image": the entry itself is the error
            continue
        image_id = img["id"]
        if not isinstance(image_id, (int, str)) or isinstance(image_id, bool):
            problems.error(where, f"'id' must be an integer or string, got {shorten(image_id)}")
            continue
        if image_id in seen:
            problems.error(where, f"duplicate image id {shorten(image_id)}")
            continue
        seen.add(image_id)
        if isinstance(img.get("split"), str):
            first_split.setdefault(img["split"], where)
        if split != "all" and img.get("split") != split:
            continue
        where = f"{where} (id {shorten(image_id)})"
        name = image_name(img["file_name"], where, problems)
        if name is not None:
            entries.append((image_id, name, where))
    split_name_clashes({s: w for s, w in first_split.items() if s.casefold() == split.casefold()}, problems)
    if split != "all" and split not in first_split:
        raise DatasetError(f"{file}: no image has split {shorten(split)} (available: {', '.join(coco_splits(file))})")
    return entries, seen


def _captions_by_image(file: Path, annotations: Any, known: set, problems: Problems) -> dict[Any, list[tuple[str, Any]]]:
    """``(where, raw caption)`` pairs grouped by image id; an annotation for an image the file does not list is an
    error."""
    if not isinstance(annotations, list):
        raise DatasetError(f"{file}: 'annotations' must be a list, got {type(annotations).__name__}")
    captions: dict[Any, list[tuple[str, Any]]] = defaultdict(list)
    for n, ann in enumerate(annotations):
        where = f"{file}: annotations[{n}]"
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            problems.error(where, "needs 'image_id' and 'caption'")
            continue
        where += f" (id {shorten(ann.get('id'))})"
        image_id = ann["image_id"]
        if not isinstance(image_id, (int, str)) or isinstance(image_id, bool) or image_id not in known:
            problems.error(where, f"image_id {shorten(image_id)} is not in the file's images")
            continue
        captions[image_id].append((where, ann["caption"]))
    return captions


register_format(DatasetFormat("coco", is_coco, load_coco, coco_splits,
                              "COCO captions JSON (images[] + annotations[]) with --images DIR"))
