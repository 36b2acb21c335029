"""Files a training run writes: atomic text writes and the CSV log."""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def files_sha256(paths: Iterable[Path]) -> str:
    """One SHA-256 over several files (names and bytes), e.g. a dataset's caption and split files."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class CsvLog:
    """Appends rows to a CSV file with a fixed header, flushing each row (a killed run keeps its log).

    Args:
        path: the CSV file (created with its header if absent).
        fields: column names; missing values are written empty.
    """

    def __init__(self, path: str | Path, fields: list[str]) -> None:
        self.path, self.fields = Path(path), fields
        new = not self.path.exists()
        self._handle = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._handle, fieldnames=fields)
        if new:
            self._writer.writeheader()
            self._handle.flush()

    def write(self, **row) -> None:
        self._writer.writerow({k: _fmt(v) for k, v in row.items()})
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _fmt(value):
    return f"{value:.6g}" if isinstance(value, float) else value
