"""Two fine-tuning folds of the developers' 156 captioned COCO photos (docs/ablation.md, "Fine-tuning defaults").

The photos of ``coco_mini`` (60) and ``coco_tiny`` (96) are pooled, shuffled (seed 0) and cut into two halves of 78.
Fold K is a caption folder (``OUT/foldK``, images linked) whose ``train`` (62) and ``val`` (16) splits come from one
half and whose ``test`` split is the other half's 78 photos: fine-tune on ``train``, select and stop early on
``val``, score on ``test``, which the run never sees.

Usage: python scripts/finetune_folds.py [--shared ../shared/data] [--out /tmp/ft]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SETS = (("coco_mini", "captions_mini.json"), ("coco_tiny", "captions_tiny.json"))


def captions(shared: Path) -> dict[Path, list[str]]:
    """Every photo of the two COCO sets with its captions (whitespace normalised)."""
    items: dict[Path, list[str]] = {}
    for name, annotations in SETS:
        data = json.loads((shared / name / "annotations" / annotations).read_text(encoding="utf-8"))
        files = {image["id"]: image["file_name"] for image in data["images"]}
        for entry in data["annotations"]:
            path = shared / name / "images" / files[entry["image_id"]]
            items.setdefault(path, []).append(" ".join(entry["caption"].split()))
    return items


def write_fold(root: Path, own: list[Path], other: list[Path], items: dict[Path, list[str]], val: int) -> None:
    """A caption folder: ``train``/``val`` from ``own``, ``test`` = ``other``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "splits").mkdir(exist_ok=True)
    lines = ["image\tcaption"]
    for path in own + other:
        link = root / "images" / path.name
        if not link.exists():
            link.symlink_to(path.resolve())
        lines += [f"{path.name}\t{caption}" for caption in items[path]]
    (root / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    splits = {"train": own[:-val], "val": own[-val:], "test": other}
    for split, paths in splits.items():
        (root / "splits" / f"{split}.txt").write_text("\n".join(p.name for p in paths) + "\n", encoding="utf-8")
    print(root, {split: len(paths) for split, paths in splits.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"), help="the developers' data folder")
    parser.add_argument("--out", type=Path, default=Path("/tmp/ft"), help="where fold1/ and fold2/ are written")
    parser.add_argument("--val", type=int, default=16, help="photos of each half used for validation")
    args = parser.parse_args()
    items = captions(args.shared)
    paths = sorted(items)
    random.Random(0).shuffle(paths)
    half = len(paths) // 2
    halves = [paths[:half], paths[half:]]
    for k in (0, 1):
        write_fold(args.out / f"fold{k + 1}", halves[k], halves[1 - k], items, args.val)


if __name__ == "__main__":
    main()
