"""Karpathy split files (``dataset_coco.json``, ``dataset_flickr8k.json``, ``dataset_flickr30k.json``).

``images[]`` entries carry ``filename``, optionally ``filepath`` (COCO: ``train2014``/``val2014``), ``split`` (train,
val, test, restval) and ``sentences[]`` with ``raw`` (and ``tokens``). Image files are ``<images>/<filepath>/
<filename>``; ``--images`` defaults to ``images/`` beside the JSON file, else the file's folder. Use the split
``train+restval`` (or ``--restval-to train``) for the usual Karpathy training set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from captioner.data.base import (
    CaptionSet,
    DatasetError,
    DatasetFormat,
    ImageItem,
    check_caption,
    register_format,
    safe_image_name,
)
from captioner.data.coco import load_json


def _looks_like_karpathy(data: Any) -> bool:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or "annotations" in data:
        return False
    first = data["images"][0] if data["images"] else {}
    return isinstance(first, dict) and "sentences" in first and "filename" in first


def is_karpathy(path: Path) -> bool:
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        return _looks_like_karpathy(load_json(path))
    except DatasetError:
        return False


def karpathy_splits(path: Path) -> list[str]:
    return sorted({img.get("split", "") for img in load_json(path)["images"] if isinstance(img, dict)} - {""})


def load_karpathy(path: Path, split: str, images: Path | None = None) -> CaptionSet:
    data = load_json(path)
    if not _looks_like_karpathy(data):
        raise DatasetError(f"{path}: not a Karpathy split file (images[] with filename, split, sentences[])")
    root = images or (path.parent / "images" if (path.parent / "images").is_dir() else path.parent)
    items = []
    for n, img in enumerate(data["images"]):
        where = f"{path}: images[{n}]"
        if not isinstance(img, dict) or "filename" not in img or "sentences" not in img:
            raise DatasetError(f"{where}: needs 'filename' and 'sentences'")
        if img.get("split") != split:
            continue
        rel = "/".join(p for p in (img.get("filepath") or "", img["filename"]) if p)
        name = safe_image_name(rel, where)
        captions = [_sentence(s, f"{where}.sentences[{k}]") for k, s in enumerate(img["sentences"])]
        items.append(ImageItem(name, (root / name).resolve(), [c for c in captions if c],
                               image_id=img.get("cocoid", img.get("imgid"))))
    if not items:
        raise DatasetError(f"{path}: no image in split {split!r} (available: {', '.join(karpathy_splits(path))})")
    return CaptionSet(root=path, split=split, items=items)


def _sentence(sentence: Any, where: str) -> str:
    if isinstance(sentence, dict) and "raw" in sentence:
        return check_caption(sentence["raw"], where)
    if isinstance(sentence, dict) and isinstance(sentence.get("tokens"), list):
        return " ".join(str(t) for t in sentence["tokens"])
    raise DatasetError(f"{where}: needs 'raw' text or a 'tokens' list")


register_format(DatasetFormat("karpathy", is_karpathy, load_karpathy, karpathy_splits,
                              "Karpathy split JSON (dataset_coco.json ...): images[] with split and sentences[]"))
