"""``captioner data convert``: any supported format → the native caption folder (images linked or copied)."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from captioner.data.base import CaptionSet, DatasetError, list_splits, load_dataset
from captioner.data.folder import HEADER

logger = logging.getLogger(__name__)


def convert_to_folder(
    src: str | Path, out: str | Path, fmt: str | None = None, images: str | Path | None = None,
    splits: list[str] | None = None, copy: bool = False,
) -> dict:
    """Write a caption folder holding the given splits of ``src``.

    Images are hard-linked (copied when linking is impossible, or with ``copy=True``) — never moved. The folder is
    built beside ``out`` and renamed into place, so a failure leaves nothing half-written; an existing ``out`` is
    never overwritten.

    Returns:
        Counts: ``{"images", "captions", "linked", "copied", "splits": {name: n_images}}``.
    """
    out = Path(out)
    if out.exists():
        raise DatasetError(f"{out} already exists; choose a new output directory (nothing was written)")
    sets = [load_dataset(src, name, fmt, images) for name in (splits or list_splits(src, fmt))]
    _check_images_exist(sets)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        stats = _write_folder(sets, tmp, copy)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def _check_images_exist(sets: list[CaptionSet]) -> None:
    missing = [item for data in sets for item in data.items if not item.path.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} image file(s) missing (first: {missing[0].path}); nothing was written")


def _write_folder(sets: list[CaptionSet], root: Path, copy: bool) -> dict:
    (root / "images").mkdir()
    (root / "splits").mkdir()
    lines, done, linked, copied = [HEADER], {}, 0, 0
    for data in sets:
        for item in data.items:
            if item.name in done:
                if done[item.name] != item.path:
                    raise DatasetError(f"two different files are both named {item.name!r}: {done[item.name]} and "
                                       f"{item.path}")
                continue
            done[item.name] = item.path
            target = root / "images" / item.name
            target.parent.mkdir(parents=True, exist_ok=True)
            was_linked = link_or_copy(item.path, target, copy)
            linked, copied = linked + was_linked, copied + (not was_linked)
            lines += [f"{item.name}\t{one_line(c)}" for c in item.captions]
        (root / "splits" / f"{data.split.replace('+', '_')}.txt").write_text(
            "".join(f"{item.name}\n" for item in data.items), encoding="utf-8")
    (root / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"images": len(done), "captions": len(lines) - 1, "linked": linked, "copied": copied,
            "splits": {data.split: len(data) for data in sets}}


def link_or_copy(src: Path, dst: Path, copy: bool) -> bool:
    """Hard-link ``src`` to ``dst`` (True), or copy it when linking is impossible or not wanted (False)."""
    if not copy:
        try:
            os.link(src, dst)
            return True
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOTSUP):
                raise
    shutil.copy2(src, dst)
    return False


def one_line(caption: str) -> str:
    return re.sub(r"[\t\r\n]+", " ", caption)  # tabs and newlines would break the TSV; keep everything else
