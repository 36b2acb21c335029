"""Caption a photo library: the photos of :mod:`captioner.library.inputs` in batches, each result written to the
results file (:mod:`captioner.library.results`) and, if asked, into the photo's metadata, a bad photo reported and
passed over, and a summary at the end.

The model is any captioner (PyTorch or ONNX Runtime); photos are decoded no larger than its encoder needs.
"""

from __future__ import annotations

import datetime
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from captioner.generation import GenerationConfig
from captioner.images import ImageLoadError, load_image
from captioner.library.inputs import collect_images, in_shard
from captioner.library.results import ResultsWriter, Row, coco_image_id, fingerprint
from captioner.version import __version__

logger = logging.getLogger(__name__)


@dataclass
class LibraryOptions:
    """How a run treats a library (``captioner caption``'s options).

    Attributes:
        out: the results file (None: rows go only to ``on_row``).
        fmt: its format.
        resume: skip the photos the results file already holds, unchanged since.
        metadata: ``embed`` (into the photo), ``sidecar`` (an XMP file beside it) or None.
        sidecar_name: ``append`` (``photo.jpg.xmp``) or ``replace`` (``photo.xmp``).
        overwrite_descriptions: replace descriptions a person wrote (default: keep them, skip the photo).
        keep_mtime: keep the photo's modification time when writing into it.
        min_confidence: captions below it are marked ``needs_review`` (None: none is).
        write_low_confidence: write those into the metadata too.
        shard: ``(K, N)``: caption every N-th photo of the sorted list, starting with the K-th.
        batch_size: photos per batch.
        show_tags: give every row its image's tags, plain captions too.
    """

    out: Path | None = None
    fmt: str = "jsonl"
    resume: bool = False
    metadata: str | None = None
    sidecar_name: str = "append"
    overwrite_descriptions: bool = False
    keep_mtime: bool = False
    min_confidence: float | None = None
    write_low_confidence: bool = False
    shard: tuple[int, int] | None = None
    batch_size: int = 16
    show_tags: bool = False


@dataclass
class Summary:
    """What a run did, photo by photo."""

    captioned: int = 0
    already_done: int = 0
    failed: int = 0
    needs_review: int = 0
    skipped_person: int = 0
    metadata_errors: int = 0
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"{self.captioned} captioned, {self.already_done} already done, {self.failed} failed, "
                f"{self.needs_review} need review, {self.skipped_person} skipped (a person's description kept)"
                + (f", {self.metadata_errors} metadata not written" if self.metadata_errors else ""))


def library_paths(paths: list[str], shard: tuple[int, int] | None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The photos of this run in sorted order (this shard's share), and the arguments that name nothing usable."""
    found, problems = [], []
    for path, problem in collect_images(paths):
        (problems.append((path, problem)) if problem else found.append(path))
    found = sorted(dict.fromkeys(found), key=str)
    return [p for i, p in enumerate(found) if in_shard(i, shard)], problems


def caption_library(model, paths: list[str], config: GenerationConfig, options: LibraryOptions,
                    on_row: Callable[[Row], None] = lambda row: None) -> Summary:
    """Caption the photos ``paths`` name (see the module docstring); each row also goes to ``on_row`` as it is made.

    Raises:
        ResultsError: the results file cannot be written, or a name has no image id for COCO results.
    """
    photos, problems = library_paths(paths, options.shard)
    summary = Summary()
    for path, problem in problems:
        _fail(summary, on_row, Row(image=str(path), error=problem))
    if options.fmt == "json" and options.out is not None:
        for photo in photos:
            coco_image_id(str(photo))  # every name must carry an id: refuse before any work
    writer = ResultsWriter(options.out, options.fmt, options.resume) if options.out is not None else None
    try:
        todo = _not_done(photos, writer, summary)
        with _progress(len(todo), options.batch_size) as bar:
            for start in range(0, len(todo), options.batch_size):
                batch = todo[start : start + options.batch_size]
                rows = _caption_batch(model, batch, config, options, summary)
                if writer is not None:
                    writer.write(rows)
                for row in rows:
                    on_row(row)
                bar.update(len(batch))
    finally:
        if writer is not None:
            writer.close()
    return summary


class _NoProgress:
    """A progress bar that shows nothing."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, count: int) -> None:
        return None


def _progress(total: int, batch_size: int):
    """A tqdm progress bar over ``total`` photos on a terminal, for more than one batch; otherwise one that shows
    nothing, without importing tqdm (a tenth of a cold single-photo run)."""
    if total <= batch_size or not sys.stderr.isatty():
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="captioning", unit="photo", leave=False)


def _not_done(photos: list[Path], writer: ResultsWriter | None, summary: Summary) -> list[Path]:
    if writer is None:
        return photos
    todo = [p for p in photos if writer.done(str(p)) is None]
    summary.already_done = len(photos) - len(todo)
    return todo


def _fail(summary: Summary, on_row: Callable[[Row], None], row: Row) -> None:
    summary.failed += 1
    summary.failures.append(f"{row.image}: {row.error}")
    on_row(row)


def _caption_batch(model, batch: list[Path], config: GenerationConfig, options: LibraryOptions,
                   summary: Summary) -> list[Row]:
    """One batch: decode, caption, mark for review, write metadata; a row per photo, failures included."""
    side = model.config.preprocess.resize
    loaded, rows = [], {}
    for path in batch:
        try:
            loaded.append((path, load_image(path, min_side=side)))
        except ImageLoadError as err:
            rows[path] = Row(image=str(path), error=str(err))
            summary.failed += 1
            summary.failures.append(f"{path}: {err}")
    hyps, tags = _search(model, [image for _, image in loaded], config, options.show_tags)
    for (path, _), hyp, image_tags in zip(loaded, (h[0] for h in hyps), tags):
        rows[path] = _row(model, path, hyp, options, summary, image_tags)
    out = [rows[p] for p in batch]
    for row in out:
        row.size, row.mtime_ns = fingerprint(row.image) or (None, None)
    return out


def _search(model, images: list, config: GenerationConfig, show_tags: bool) -> tuple[list, list]:
    """Each image's hypotheses and tags (the tags guided decoding used; with ``show_tags`` plain captions' too)."""
    if not images:
        return [], []
    features = model.encode_images(images)  # (B, ...)
    hyps = model.caption_features(features, config)
    tags = [h[0].tags for h in hyps]
    if show_tags and any(t is None for t in tags):  # plain captions carry none: the classifier's, for the listing
        tags = model.image_tags(features, config)
    return hyps, tags


def _row(model, path: Path, hyp, options: LibraryOptions, summary: Summary, tags) -> Row:
    confidence = getattr(hyp, "confidence", None)
    review = options.min_confidence is not None and confidence is not None and confidence < options.min_confidence
    row = Row(image=str(path), caption=model.vocab.decode(hyp.tokens), log_prob=round(hyp.log_prob, 6),
              confidence=None if confidence is None else round(confidence, 4), needs_review=review,
              tags=None if tags is None else [{"word": t.word, "prob": round(t.prob, 4)} for t in tags])
    summary.captioned += 1
    summary.needs_review += review
    if options.metadata and (not review or options.write_low_confidence):
        row.metadata = _write_metadata(model, path, row, options, summary)
    return row


def _write_metadata(model, path: Path, row: Row, options: LibraryOptions, summary: Summary) -> str:
    """Write the caption into the photo (or its sidecar); the status for the results file."""
    from captioner.library.metadata import Provenance, write_caption

    provenance = Provenance(model=getattr(model, "name", model.config.encoder), version=__version__,
                            weights_sha256=model.weights_sha256(), confidence=row.confidence,
                            date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    result = write_caption(path, row.caption, provenance, mode=options.metadata, sidecar_name=options.sidecar_name,
                           overwrite_descriptions=options.overwrite_descriptions, keep_mtime=options.keep_mtime)
    if result.status == "skipped_person":
        summary.skipped_person += 1
        return "skipped: a person's description is kept"
    if result.status == "error":
        summary.metadata_errors += 1
        logger.error("%s: %s", path, result.message)
        return f"error: {result.message}"
    return result.status

