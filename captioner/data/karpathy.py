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
    Problems,
    image_name,
    register_format,
    split_name_clashes,
    take_caption,
)
from captioner.data.coco import load_json
from captioner.data.problems import shorten


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
    return sorted({img["split"] for img in load_json(path)["images"]
                   if isinstance(img, dict) and isinstance(img.get("split"), str) and img["split"]})


def load_karpathy(path: Path, split: str, images: Path | None, problems: Problems) -> CaptionSet:
    data = load_json(path)
    if not _looks_like_karpathy(data):
        raise DatasetError(f"{path}: not a Karpathy split file (images[] with filename, split, sentences[])")
    root = images or (path.parent / "images" if (path.parent / "images").is_dir() else path.parent)
    items, first_split = [], {}
    for n, img in enumerate(data["images"]):
        where = f"{path}: images[{n}]"
        if not isinstance(img, dict) or "filename" not in img or not isinstance(img.get("sentences"), list):
            problems.error(where, "needs 'filename' and a 'sentences' list")
            continue
        if isinstance(img.get("split"), str):
            first_split.setdefault(img["split"], where)
        if img.get("split") != split:
            continue
        name = image_name("/".join(str(p) for p in (img.get("filepath") or "", img["filename"]) if p), where,
                          problems)
        errors = problems.counts["error"]
        kept = [c for k, s in enumerate(img["sentences"])
                if (c := _sentence(s, f"{where}.sentences[{k}]", problems)) is not None]
        if name is None or not kept:
            if name is not None and problems.counts["error"] == errors:
                problems.warning(where, f"image {shorten(name)} has no usable sentence; left out")
            continue
        items.append(ImageItem(name, (root / name).resolve(), kept, image_id=img.get("cocoid", img.get("imgid"))))
    split_name_clashes({s: w for s, w in first_split.items() if s.casefold() == split.casefold()}, problems)
    if split not in first_split:
        raise DatasetError(f"{path}: no image in split {shorten(split)} (available: "
                           f"{', '.join(karpathy_splits(path))})")
    return CaptionSet(root=path, split=split, items=items)


def _sentence(sentence: Any, where: str, problems: Problems) -> str | None:
    if isinstance(sentence, dict) and "raw" in sentence:
        return take_caption(sentence["raw"], where, problems)
    if isinstance(sentence, dict) and isinstance(sentence.get("tokens"), list):
        return take_caption(" ".join(str(t) for t in sentence["tokens"]), where, problems)
    problems.error(where, "needs 'raw' text or a 'tokens' list")
    return None


def audit_karpathy(path: Path, problems: Problems) -> None:
    """Images without a split are in no split: one warning each."""
    for n, img in enumerate(load_json(path)["images"]):
        if isinstance(img, dict) and not (isinstance(img.get("split"), str) and img["split"]):
            problems.warning(f"{path}: images[{n}]", f"no 'split' ({shorten(img.get('split'))}): in no split, "
                             "never used; give it one (train, val, test, restval)")


register_format(DatasetFormat("karpathy", is_karpathy, load_karpathy, karpathy_splits,
                              "Karpathy split JSON (dataset_coco.json ...): images[] with split and sentences[]",
                              audit=audit_karpathy))
