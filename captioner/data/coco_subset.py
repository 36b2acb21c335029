"""Reproducible COCO subsets, made from the annotation files alone (before any image is downloaded).

Select images by count (seeded), by category names (needs the ``instances_*.json`` file) or by an id list; split
them into train/val/test by ratios; write the subset as COCO captions files (``annotations/captions_<split>.json``),
as a caption folder (``captions.txt``, ``splits/``, ``images/`` linked when the images are at hand) and a
``manifest.json`` with the selection arguments and the SHA-256 of the annotation files and of every image found.
The same arguments and inputs give byte-identical output.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from captioner.data.base import DatasetError, read_json, safe_image_name
from captioner.data.convert import link_or_copy, one_line
from captioner.data.folder import HEADER
from captioner.fileio import file_sha256

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class SubsetSpec:
    """What to select.

    Attributes:
        count: number of images to draw (None: all that pass the other filters).
        categories: category names; an image qualifies if it has an instance of any of them (needs instances).
        ids: explicit image ids (others are left out).
        ratios: train/val/test shares (two or three numbers summing to 1).
        seed: seeds both the draw and the split.
    """

    count: int | None = None
    categories: list[str] | None = None
    ids: list[int] | None = None
    ratios: tuple[float, ...] = (0.8, 0.1, 0.1)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= len(self.ratios) <= 3 or any(r < 0 for r in self.ratios) or abs(sum(self.ratios) - 1) > 1e-6:
            raise DatasetError(f"split ratios must be 2 or 3 non-negative numbers summing to 1, got {self.ratios}")
        if self.count is not None and self.count < 1:
            raise DatasetError(f"--count must be at least 1, got {self.count}")


def select_images(captions: dict, spec: SubsetSpec, instances: dict | None = None) -> dict[str, list[int]]:
    """Pick image ids and split them.

    Args:
        captions: parsed COCO captions file.
        spec: the selection.
        instances: parsed COCO instances file (required with ``spec.categories``).

    Returns:
        ``{"train": [ids], "val": [ids], "test": [ids]}``, each sorted.
    """
    captioned = {a["image_id"] for a in captions["annotations"]}
    pool = sorted(img["id"] for img in captions["images"] if img["id"] in captioned)
    if spec.ids is not None:
        unknown = sorted(set(spec.ids) - set(pool))
        if unknown:
            raise DatasetError(f"{len(unknown)} requested id(s) have no captions in the file (first: {unknown[0]})")
        pool = sorted(set(spec.ids))
    if spec.categories:
        pool = sorted(set(pool) & _images_with_categories(instances, spec.categories))
    rng = random.Random(spec.seed)
    if spec.count is not None:
        if spec.count > len(pool):
            raise DatasetError(f"--count {spec.count} is more than the {len(pool)} images that qualify")
        pool = sorted(rng.sample(pool, spec.count))
    order = list(pool)
    rng.shuffle(order)
    cuts, start = {}, 0
    for i, name in enumerate(SPLITS[: len(spec.ratios)]):
        end = len(order) if i == len(spec.ratios) - 1 else start + round(spec.ratios[i] * len(order))
        cuts[name] = sorted(order[start:end])
        start = end
    return cuts


def _images_with_categories(instances: dict | None, names: list[str]) -> set[int]:
    if instances is None:
        raise DatasetError("selecting by --categories needs the instances file (--instances instances_*.json)")
    by_name = {c["name"]: c["id"] for c in instances.get("categories", [])}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        close = difflib.get_close_matches(unknown[0], by_name, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(by_name)[:20])} ..."
        raise DatasetError(f"unknown category {unknown[0]!r}{hint}")
    wanted = {by_name[n] for n in names}
    return {a["image_id"] for a in instances.get("annotations", []) if a.get("category_id") in wanted}


def make_subset(
    captions_path: Path, out: Path, spec: SubsetSpec, instances_path: Path | None = None,
    images: Path | None = None,
) -> dict:
    """Write a subset directory (see the module docstring); ``out`` must not exist.

    Returns:
        The manifest that was written.
    """
    out = Path(out)
    if out.exists():
        raise DatasetError(f"{out} already exists; choose a new output directory (nothing was written)")
    captions = read_json(captions_path)
    if not isinstance(captions, dict) or not {"images", "annotations"} <= set(captions):
        raise DatasetError(f"{captions_path}: not a COCO captions file (needs 'images' and 'annotations')")
    instances = read_json(instances_path) if instances_path else None
    splits = select_images(captions, spec, instances)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        manifest = _write_subset(tmp, captions, splits, images)
        manifest["selection"] = {**asdict(spec), "ratios": list(spec.ratios)}
        manifest["sources"] = {p.name: file_sha256(p) for p in (captions_path, instances_path) if p is not None}
        _dump(tmp / "manifest.json", manifest)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _write_subset(root: Path, captions: dict, splits: dict[str, list[int]], images: Path | None) -> dict:
    by_id = {img["id"]: img for img in captions["images"]}
    anns: dict[Any, list[dict]] = {}
    for ann in sorted(captions["annotations"], key=lambda a: (a["image_id"], a.get("id", 0))):
        anns.setdefault(ann["image_id"], []).append(ann)
    (root / "annotations").mkdir()
    (root / "splits").mkdir()
    (root / "images").mkdir()
    lines, entries = [HEADER], []
    for split, ids in splits.items():
        subset = {key: captions[key] for key in ("info", "licenses") if key in captions}
        subset["images"] = [by_id[i] for i in ids]
        subset["annotations"] = [a for i in ids for a in anns[i]]
        _dump(root / "annotations" / f"captions_{split}.json", subset)
        names = [safe_image_name(by_id[i]["file_name"], f"images id {i}") for i in ids]
        (root / "splits" / f"{split}.txt").write_text("".join(n + "\n" for n in names), encoding="utf-8")
        for image_id, name in zip(ids, names):
            lines += [f"{name}\t{one_line(a['caption'])}" for a in anns[image_id]]
            entries.append({"id": image_id, "file_name": name, "split": split,
                            "sha256": _place_image(images, name, root / "images" / name)})
    (root / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"images": entries, "counts": {s: len(ids) for s, ids in splits.items()},
            "images_present": sum(e["sha256"] is not None for e in entries)}


def _place_image(images: Path | None, name: str, target: Path) -> str | None:
    """Link the image into the subset when it is at hand; return its SHA-256 (None when not downloaded yet)."""
    source = images / name if images is not None else None
    if source is None or not source.is_file():
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    link_or_copy(source, target, copy=False)
    return file_sha256(source)


def _dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")

