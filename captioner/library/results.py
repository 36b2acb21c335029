"""Results files of a captioning run over a photo library, written as the run goes, and resumable.

A run appends each batch's rows to a *journal* beside the results file (``.NAME.journal.jsonl``: every field of
every row, with each photo's size and modification time), flushed to disk, and then to the results file itself in
the format chosen by its extension or ``--format``:

- ``.jsonl``: one object per photo (``image``, ``caption``, ``log_prob``, ``confidence``, ``needs_review``, ``tags``
  when guided, ``error`` for failures, ``metadata`` when photos were written to);
- ``.csv``: header ``image,caption,confidence``, RFC 4180 quoting (failures: an empty caption);
- ``.tsv``: the same columns separated by tabs;
- ``.json``: the COCO results format ``[{"image_id": int, "caption": str}]``, image ids from the file names' trailing
  numbers (``000000139.jpg`` -> 139), written atomically when the run ends.

The journal is the record: resuming reads it (a last line cut by a kill is dropped, so that photo is captioned
again), rebuilds the results file from it, and skips the photos it holds whose size and modification time are
unchanged, so a run killed at any moment and resumed lists every photo exactly once. Paths are written as they were
given (relative stays relative).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from captioner.fileio import atomic_write_text

FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv", ".json": "json"}
HEADER = ("image", "caption", "confidence")


class ResultsError(ValueError):
    """A results file that cannot be written or resumed; the message says what to do."""


@dataclass
class Row:
    """One photo's result.

    Attributes:
        image: the path as given.
        caption: the caption (None: it failed, or a person's description was kept).
        log_prob: the caption's log-probability.
        confidence: the calibrated probability that the caption is right, in [0, 1].
        needs_review: the confidence is below the run's ``--min-confidence``.
        tags: the image tags the caption was guided by (``[{"word", "prob"}]``), or None.
        error: why the photo could not be captioned, or None.
        metadata: what happened to the photo's metadata (``written``, ``updated``, ``skipped``: a person's
            description was kept, or ``error: ...``), or None when none was written.
        size, mtime_ns: the photo's file size and modification time after the run (for resuming).
    """

    image: str
    caption: str | None = None
    log_prob: float | None = None
    confidence: float | None = None
    needs_review: bool = False
    tags: list[dict] | None = None
    error: str | None = None
    metadata: str | None = None
    size: int | None = field(default=None, repr=False)
    mtime_ns: int | None = field(default=None, repr=False)

    def public(self) -> dict:
        """The row as a results file shows it (no bookkeeping fields, no empty optional ones)."""
        row = {"image": self.image, "caption": self.caption, "log_prob": self.log_prob,
               "confidence": self.confidence, "needs_review": self.needs_review}
        for key in ("tags", "error", "metadata"):
            if getattr(self, key) is not None:
                row[key] = getattr(self, key)
        return row


def format_of(path: str | Path, explicit: str | None = None) -> str:
    """The results format: ``explicit`` (``jsonl``, ``csv``, ``tsv``, ``json``), else the file's extension.

    Raises:
        ResultsError: an unknown format or extension.
    """
    if explicit:
        if explicit not in FORMATS.values():
            raise ResultsError(f"unknown results format {explicit!r}; choose one of {', '.join(FORMATS.values())}")
        return explicit
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ResultsError(f"{path}: cannot tell the results format from the extension {suffix or '(none)'!r}; "
                           f"name the file .jsonl, .csv, .tsv or .json, or pass --format")
    return FORMATS[suffix]


_TRAILING_NUMBER = re.compile(r"(\d+)$")


def coco_image_id(image: str) -> int:
    """The COCO image id a file name carries: its stem's trailing number (``COCO_val2014_000000000139.jpg`` -> 139).

    Raises:
        ResultsError: the name has no trailing number.
    """
    match = _TRAILING_NUMBER.search(Path(image).stem)
    if not match:
        raise ResultsError(f"{image}: the COCO results format needs an image id, the trailing number of the file "
                           "name (e.g. 000000000139.jpg), and this name has none; use --format jsonl, csv or tsv")
    return int(match.group(1))


def fingerprint(path: str | Path) -> tuple[int, int] | None:
    """A photo's ``(size, mtime_ns)``, or None when it cannot be read."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def journal_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.journal.jsonl")


def read_journal(path: Path) -> list[Row]:
    """The rows a journal holds, the last occurrence of each photo winning; a last line cut by a kill is dropped
    and the file truncated to the rows before it.

    Raises:
        ResultsError: a line before the last is damaged (not written by captioner).
    """
    if not path.is_file():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(path, "r+b") as handle:  # repair the torn last line, never parse half of one
            handle.truncate(len(complete))
    rows: dict[str, Row] = {}
    for number, line in enumerate(complete.decode("utf-8").splitlines(), 1):
        try:
            row = Row(**json.loads(line))
        except (ValueError, TypeError) as err:
            raise ResultsError(f"{path}:{number}: not a captioner journal line ({err}); remove the file to start "
                               "over") from None
        rows.pop(row.image, None)
        rows[row.image] = row
    return list(rows.values())


def render(rows: list[Row], fmt: str) -> str:
    """The text of a results file holding ``rows``."""
    if fmt == "json":
        coco = [{"image_id": coco_image_id(r.image), "caption": r.caption} for r in rows if r.caption is not None]
        return json.dumps(coco, indent=1, ensure_ascii=False) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r.public(), ensure_ascii=False) + "\n" for r in rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, dialect="excel" if fmt == "csv" else "excel-tab")
    for row in rows:
        writer.writerow([row.image, row.caption or "", "" if row.confidence is None else f"{row.confidence:.4f}"])
    return buffer.getvalue()


def header(fmt: str) -> str:
    """The first line of an empty results file of a line format."""
    if fmt not in ("csv", "tsv"):
        return ""
    buffer = io.StringIO()
    csv.writer(buffer, dialect="excel" if fmt == "csv" else "excel-tab").writerow(HEADER)
    return buffer.getvalue()


class ResultsWriter:
    """Writes a run's results file and journal (see the module docstring).

    Args:
        out: the results file.
        fmt: its format (:func:`format_of`).
        resume: continue from the journal (else both files start empty).
    """

    def __init__(self, out: str | Path, fmt: str, resume: bool = False) -> None:
        self.out, self.fmt, self._stale = Path(out), fmt, False
        self.journal = journal_path(self.out)
        self.rows = {r.image: r for r in read_journal(self.journal)} if resume else {}
        if not resume:
            self.journal.unlink(missing_ok=True)
        self._rewrite()  # from the journal: a torn or stale results file is replaced as a whole
        self._journal = open(self.journal, "a", encoding="utf-8")
        self._out = open(self.out, "a", encoding="utf-8", newline="") if fmt != "json" else None

    def done(self, image: str) -> Row | None:
        """The row of a photo already captioned and unchanged since (None: caption it)."""
        row = self.rows.get(image)
        if row is None or row.error is not None or (row.size, row.mtime_ns) != fingerprint(image):
            return None
        return row

    def write(self, rows: list[Row]) -> None:
        """Record a batch: the journal first (the record), then the results file; both flushed."""
        for row in rows:
            if row.image in self.rows and self.fmt != "json":
                self._stale = True
            self.rows[row.image] = row
            self._journal.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())
        if self._out is not None:
            self._out.write(render(rows, self.fmt))
            self._out.flush()

    def close(self) -> None:
        """Finish the results file (the COCO results are written now, atomically; a line file holding rows that a
        later row replaced is rewritten)."""
        self._journal.close()
        if self._out is not None:
            self._out.close()
        if self.fmt == "json" or self._stale:
            self._rewrite(final=True)

    def _rewrite(self, final: bool = False) -> None:
        rows = list(self.rows.values())
        if self.fmt == "json":
            if rows or final:
                atomic_write_text(self.out, render(rows, "json"))
            return
        atomic_write_text(self.out, header(self.fmt) + render(rows, self.fmt))


def read_results(path: Path) -> tuple[str, list]:
    """A results file's format and rows (:class:`Row` for the line formats, COCO dicts for ``.json``).

    Raises:
        ResultsError: unreadable, or not a results file of its format.
    """
    fmt = format_of(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ResultsError(f"cannot read {path}: {err}") from None
    try:
        if fmt == "json":
            return fmt, [{"image_id": int(r["image_id"]), "caption": str(r["caption"])} for r in json.loads(text)]
        if fmt == "jsonl":
            fields = {f for f in Row.__dataclass_fields__}
            return fmt, [Row(**{k: v for k, v in json.loads(line).items() if k in fields})
                         for line in text.splitlines() if line.strip()]
        reader = csv.reader(io.StringIO(text, newline=""), dialect="excel" if fmt == "csv" else "excel-tab")
        lines = list(reader)
        if not lines or tuple(lines[0]) != HEADER:
            raise ValueError(f"the first line must be the header {','.join(HEADER)}")
        return fmt, [Row(image=i, caption=c or None, confidence=float(p) if p else None) for i, c, p in lines[1:]]
    except (ValueError, KeyError, TypeError) as err:
        raise ResultsError(f"{path} is not a {fmt} results file ({err})") from None


def merge_results(inputs: list[Path], out: Path, fmt: str | None = None) -> int:
    """Join results files (the shards of one library) into ``out``, sorted by image; returns the number of rows.

    Raises:
        ResultsError: a photo in two files, COCO results mixed with other formats, or an unreadable input.
    """
    fmt = format_of(out, fmt)
    merged: dict = {}
    owner: dict = {}
    for path in inputs:
        kind, rows = read_results(Path(path))
        if (kind == "json") != (fmt == "json"):
            raise ResultsError(f"{path}: COCO results (.json) merge only into COCO results, and the others only "
                               "into jsonl, csv or tsv")
        for row in rows:
            key = row["image_id"] if kind == "json" else row.image
            if key in owner:
                raise ResultsError(f"{key} is in both {owner[key]} and {path}: give each shard once")
            owner[key], merged[key] = path, row
    ordered = [merged[key] for key in sorted(merged, key=str)]
    if fmt == "json":
        atomic_write_text(out, json.dumps(ordered, indent=1, ensure_ascii=False) + "\n")
    else:
        atomic_write_text(out, header(fmt) + render(ordered, fmt))
    return len(ordered)
