"""Plain ``image,caption`` tables: CSV (with a header) or JSON Lines.

Columns/keys: ``image`` (path relative to the images directory) and ``caption``, optionally ``split``. Several rows
may name the same image. Without a ``split`` column the only split is ``all``. Images: ``--images``, else the
table's folder.
"""

from __future__ import annotations

import csv
import json
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

SUFFIXES = (".csv", ".jsonl")


def is_tabular(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SUFFIXES


def read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(where, row)`` pairs, ``where`` naming the file and line for error messages."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err})") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
            raise DatasetError(f"{path}: the header must name the columns 'image' and 'caption'")
        return [(f"{path}:{n}", row) for n, row in enumerate(reader, start=2)]
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path}:{n}: not valid JSON ({err.msg})") from None
    return rows


def tabular_splits(path: Path) -> list[str]:
    splits = {row.get("split") for _, row in read_rows(path) if isinstance(row, dict) and row.get("split")}
    return sorted(splits) if splits else ["all"]


def load_tabular(path: Path, split: str, images: Path | None = None) -> CaptionSet:
    root = images or path.parent
    captions: dict[str, list[str]] = {}
    for where, row in read_rows(path):
        if not isinstance(row, dict) or "image" not in row or "caption" not in row:
            raise DatasetError(f"{where}: needs 'image' and 'caption'")
        if split != "all" and row.get("split") != split:
            continue
        captions.setdefault(safe_image_name(row["image"], where), []).append(check_caption(row["caption"], where))
    if not captions:
        raise DatasetError(f"{path}: no rows in split {split!r} (available: {', '.join(tabular_splits(path))})")
    items = [ImageItem(name, (root / name).resolve(), caps) for name, caps in captions.items()]
    return CaptionSet(root=path, split=split, items=items)


register_format(DatasetFormat("table", is_tabular, load_tabular, tabular_splits,
                              'CSV with header image,caption[,split] or JSONL {"image", "caption"[, "split"]}'))
