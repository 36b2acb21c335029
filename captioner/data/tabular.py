"""Plain ``image,caption`` tables: CSV (with a header) or JSON Lines.

Columns/keys: ``image`` (path relative to the images directory) and ``caption``, optionally ``split``. Several rows
may name the same image. Without a ``split`` column the only split is ``all`` (``all`` also loads every row of a
table that has one). Images: ``--images``, else the table's folder. Every row is used or reported with its line:
a row with more or fewer fields than the header, an empty split, a quote left open, a caption over several lines.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from captioner.data.base import (
    CaptionSet,
    DatasetError,
    DatasetFormat,
    Problems,
    image_name,
    register_format,
    split_name_clashes,
)
from captioner.data.folder import build_items
from captioner.data.problems import shorten
from captioner.data.textfile import text_lines

SUFFIXES = (".csv", ".jsonl")
COLUMNS = ("image", "caption", "split")


def is_tabular(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SUFFIXES


def read_rows(path: Path, problems: Problems) -> list[tuple[str, dict[str, Any]]]:
    """``(where, row)`` pairs of the rows that have ``image`` and ``caption`` (and, when the table has a split
    column, a non-empty ``split``); ``where`` names the file and line. Other rows are recorded in ``problems``.

    Raises:
        DatasetError: a CSV header without the ``image`` and ``caption`` columns.
    """
    rows = _csv_rows(path, problems) if path.suffix.lower() == ".csv" else _jsonl_rows(path, problems)
    unknown: dict[str, str] = {}
    kept = []
    for where, row in rows:
        for key in row:
            if key not in COLUMNS:
                unknown.setdefault(key, where)
        if _row_is_complete(row, where, problems):
            kept.append((where, row))
    for key, where in unknown.items():
        problems.warning(where, f"{'column' if path.suffix.lower() == '.csv' else 'key'} {shorten(key)} is not used "
                         f"(known: {', '.join(COLUMNS)})")
    return kept


def _row_is_complete(row: dict[str, Any], where: str, problems: Problems) -> bool:
    missing = [key for key in ("image", "caption") if key not in row]
    if missing:
        problems.error(where, f"needs 'image' and 'caption' (missing: {', '.join(missing)})")
        return False
    if "split" in row and (not isinstance(row["split"], str) or not row["split"].strip()):
        problems.error(where, f"empty split ({shorten(row['split'])}); write the split's name (train, val ...) or "
                       "leave the split column out of the whole table")
        return False
    if "split" in row:
        row["split"] = row["split"].strip()
    return True


def _numbered_lines(path: Path, problems: Problems, numbers: list[int]) -> Iterator[str]:
    """The file's lines for :mod:`csv`, line breaks kept; the line number of each goes to ``numbers``."""
    for number, line in text_lines(path, problems):
        numbers.append(number)
        yield line + "\n"


def _csv_rows(path: Path, problems: Problems) -> Iterator[tuple[str, dict[str, Any]]]:
    numbers: list[int] = []
    reader = csv.reader(_numbered_lines(path, problems, numbers), strict=True)
    header = next(reader, None)
    if not header or not {"image", "caption"} <= set(header) or len(set(header)) < len(header):
        raise DatasetError(f"{path}: the header must name the columns 'image' and 'caption' (and optionally "
                           f"'split'), each once; found {shorten(','.join(header or []))}")
    while True:
        start = len(numbers)
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            where = f"{path}:{numbers[start] if start < len(numbers) else numbers[-1]}"
            hint = " (a quote opened here is never closed)" if "end of data" in str(err) else ""
            problems.error(where, f"not valid CSV: {err}{hint}; quote a caption that holds commas or quotes as "
                           '"like, ""this"""')
            continue
        where = f"{path}:{numbers[start]}"
        if numbers[-1] != numbers[start]:
            problems.error(where, f"a quoted field runs from line {numbers[start]} to line {numbers[-1]} (a quote "
                           "left open?); a caption is one line: close the quote")
        elif len(row) != len(header) and any(field.strip() for field in row):
            extra = " (a comma inside the caption? quote the caption)" if len(row) > len(header) else ""
            problems.error(where, f"expected {len(header)} fields ({', '.join(header)}), found {len(row)}{extra}")
        elif any(field.strip() for field in row):
            yield where, dict(zip(header, row))


def _jsonl_rows(path: Path, problems: Problems) -> Iterator[tuple[str, dict[str, Any]]]:
    for number, line in text_lines(path, problems):
        where = f"{path}:{number}"
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problems.error(where, f"not valid JSON ({err.msg} at column {err.colno})")
            continue
        except RecursionError:
            problems.error(where, "JSON nested too deeply to read")
            continue
        if not isinstance(row, dict):
            problems.error(where, f'expected an object {{"image": ..., "caption": ...}}, got {shorten(row)}')
            continue
        yield where, row


def tabular_splits(path: Path) -> list[str]:
    splits = {row["split"] for _, row in read_rows(path, Problems()) if "split" in row}
    return sorted(splits) if splits else ["all"]


def load_tabular(path: Path, split: str, images: Path | None, problems: Problems) -> CaptionSet:
    first_seen: dict[str, str] = {}
    names: dict[str, str] = {}
    captions: dict[str, list[tuple[str, Any]]] = {}
    for where, row in read_rows(path, problems):
        if "split" in row:
            first_seen.setdefault(row["split"], where)
            if split != "all" and row["split"] != split:
                continue
        name = image_name(row["image"], where, problems)
        if name is not None:
            names.setdefault(name, where)
            captions.setdefault(name, []).append((where, row["caption"]))
    split_name_clashes({n: w for n, w in first_seen.items() if n.casefold() == split.casefold()}, problems)
    if not names and split != "all" and split not in first_seen and not problems.counts["error"]:
        raise DatasetError(f"{path}: no rows in split {split!r} (available: {', '.join(tabular_splits(path))})")
    items = build_items(names, captions, images or path.parent, path.name, problems)
    return CaptionSet(root=path, split=split, items=items)


register_format(DatasetFormat("table", is_tabular, load_tabular, tabular_splits,
                              'CSV with header image,caption[,split] or JSONL {"image", "caption"[, "split"]}'))
